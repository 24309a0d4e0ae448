"""Agentic sessions through an OpenAI-compatible endpoint with the real OpenAI SDK.

Run by the real-node routing benchmark (`cargo xtask bench real-routing`) and
the simulator-calibration test with the venv's python:

    python scripts/agentic_client.py PLAN.json OUT.jsonl

PLAN.json (written by `cluster_tests::agentic`):

    {"base_url": "http://127.0.0.1:PORT/v1", "model": "...",
     "concurrency": 6,            # sessions running at once
     "lockstep": false,           # true: one request at a time, turn-major
                                  # (every session's turn 0, then turn 1, ...)
     "session_header": "x-session-id" | null,
     "timeout_s": 300,
     "sessions": [{"id": "s0", "start_s": 0.0, "system": "...",
                   "turns": [{"user": "...", "max_tokens": 48, "think_s": 0.4}]}]}

Each session runs its turns in order: the request carries the system
message, the whole history (the model's own earlier replies appended as
assistant messages) and the new user message; it is streamed with
`stream_options.include_usage`; after the reply the session "thinks" for the
turn's `think_s` before its next turn. At most `concurrency` sessions run at
once, in plan order, each not before its `start_s` (0 = as soon as a slot is
free).

OUT.jsonl gets one line per request: session, turn, start (seconds since the
run began), ttft (to the first content token), total, prompt_tokens,
cached_tokens, completion_tokens, prompt_chars (characters of every message
sent), node (the `x-mlx-cluster-node` response header when the router sends
one) and error (null when it succeeded). Exits non-zero only when the plan
cannot be read; failed requests are recorded.
"""

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai


def run_turn(client, plan, session, messages, turn, t0, out, lock):
    """Sends turn `turn` of `session` (history in `messages`, updated in
    place); returns whether it succeeded."""
    step = session["turns"][turn]
    headers = {}
    if plan.get("session_header"):
        headers[plan["session_header"]] = session["id"]
    messages.append({"role": "user", "content": step["user"]})
    record = {
        "session": session["id"],
        "turn": turn,
        "start": time.monotonic() - t0,
        "ttft": None,
        "total": None,
        "prompt_tokens": None,
        "cached_tokens": None,
        "completion_tokens": None,
        "prompt_chars": sum(len(m["content"]) for m in messages),
        "node": None,
        "error": None,
    }
    begin = time.monotonic()
    pieces = []
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=plan["model"],
            messages=messages,
            max_tokens=step["max_tokens"],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=headers,
        )
        record["node"] = raw.headers.get("x-mlx-cluster-node")
        for chunk in raw.parse():
            if chunk.usage is not None:
                usage = chunk.usage
                record["prompt_tokens"] = usage.prompt_tokens
                record["completion_tokens"] = usage.completion_tokens
                details = usage.prompt_tokens_details
                record["cached_tokens"] = (
                    (details.cached_tokens or 0) if details is not None else 0
                )
            for choice in chunk.choices:
                text = choice.delta.content if choice.delta else None
                if text:
                    if record["ttft"] is None:
                        record["ttft"] = time.monotonic() - begin
                    pieces.append(text)
        if record["prompt_tokens"] is None:
            record["error"] = "no usage in the stream"
    except Exception as e:  # recorded, the session goes on
        record["error"] = f"{type(e).__name__}: {e}"[:300]
    record["total"] = time.monotonic() - begin
    with lock:
        out.write(json.dumps(record) + "\n")
        out.flush()
    if record["error"] is not None:
        return False
    messages.append({"role": "assistant", "content": "".join(pieces)})
    return True


def run_session(client, plan, session, t0, out, lock):
    delay = session.get("start_s", 0.0) - (time.monotonic() - t0)
    if delay > 0:
        time.sleep(delay)
    messages = [{"role": "system", "content": session["system"]}]
    for turn, step in enumerate(session["turns"]):
        if not run_turn(client, plan, session, messages, turn, t0, out, lock):
            return
        think = step.get("think_s", 0.0)
        if think > 0 and turn + 1 < len(session["turns"]):
            time.sleep(think)


def run_lockstep(client, plan, t0, out, lock):
    histories = [[{"role": "system", "content": s["system"]}] for s in plan["sessions"]]
    alive = [True] * len(plan["sessions"])
    turns = max((len(s["turns"]) for s in plan["sessions"]), default=0)
    for turn in range(turns):
        for i, session in enumerate(plan["sessions"]):
            if alive[i] and turn < len(session["turns"]):
                alive[i] = run_turn(client, plan, session, histories[i], turn, t0, out, lock)


def main() -> None:
    plan_path, out_path = sys.argv[1], sys.argv[2]
    with open(plan_path, encoding="utf-8") as f:
        plan = json.load(f)
    client = openai.OpenAI(
        base_url=plan["base_url"],
        api_key="not-needed",
        max_retries=0,
        timeout=plan.get("timeout_s", 300),
    )
    lock = threading.Lock()
    t0 = time.monotonic()
    with open(out_path, "w", encoding="utf-8") as out:
        if plan.get("lockstep"):
            run_lockstep(client, plan, t0, out, lock)
            return
        with ThreadPoolExecutor(max_workers=max(1, plan["concurrency"])) as pool:
            futures = [
                pool.submit(run_session, client, plan, s, t0, out, lock)
                for s in plan["sessions"]
            ]
            for fut in futures:
                fut.result()


if __name__ == "__main__":
    main()
