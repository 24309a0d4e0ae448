"""The real Anthropic Python SDK against the mlx-cluster gateway's /v1/messages.

Run by tests/tests/gateway_anthropic.rs with the venv's python:

    python tests/gateway_anthropic_sdk.py text BASE_URL   # real mlx_lm.server nodes
    python tests/gateway_anthropic_sdk.py tools BASE_URL  # cluster-sim nodes

BASE_URL is the gateway's address (http://127.0.0.1:PORT, no /v1). Prints
one JSON object with what each call returned; exits non-zero (with a
traceback) if any call fails or returns something unexpected.
"""

import json
import sys

import anthropic

MODEL = "claude-opus-5-5"
SYSTEM = "You are the test of a gateway that runs Claude Code on local Macs. " * 4
# The conversation's own long first message (a few thousand tokens of the
# tiny model's tokenizer): the prefix a second turn must find in a cache.
DOCUMENT = "".join(
    f"Line {i}: the router sends each turn where its prefix is cached.\n" for i in range(200)
)


def node_of(raw) -> str:
    return raw.headers.get("x-mlx-cluster-node", "")


def text_of(message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def usage_of(usage) -> dict:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
    }


def text_checks(client: anthropic.Anthropic) -> dict:
    out = {}
    first = [{"role": "user", "content": DOCUMENT + "Summarise this log."}]

    # Non-streamed; the raw response tells which node answered.
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=64000, system=SYSTEM, messages=first
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant", message
    assert message.model == MODEL, message.model
    assert message.id.startswith("msg_"), message.id
    assert message.content and message.content[0].type == "text", message.content
    assert message.stop_reason == "max_tokens", message.stop_reason
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0, message.usage
    out["create"] = {
        "node": node_of(raw),
        "text": text_of(message),
        "stop_reason": message.stop_reason,
        "usage": usage_of(message.usage),
    }

    # The second turn of the conversation reads the first from the cache.
    second = first + [
        {"role": "assistant", "content": out["create"]["text"]},
        {"role": "user", "content": "Now one about routing."},
    ]
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=64000, system=SYSTEM, messages=second
    )
    turn2 = raw.parse()
    out["second_turn"] = {"node": node_of(raw), "usage": usage_of(turn2.usage)}
    assert turn2.usage.cache_read_input_tokens > 0, turn2.usage

    # Streamed, with the SDK's own accumulation of the events.
    kinds = []
    deltas = []
    with client.messages.stream(
        model=MODEL, max_tokens=64000, system=SYSTEM, messages=first
    ) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                deltas.append(event.delta.text)
        final = stream.get_final_message()
    assert kinds[0] == "message_start", kinds
    assert kinds[-1] == "message_stop", kinds
    assert "content_block_start" in kinds and "content_block_stop" in kinds, kinds
    assert text_of(final) == "".join(deltas), (text_of(final), deltas)
    assert final.stop_reason == "max_tokens", final.stop_reason
    out["stream"] = {
        "events": len(kinds),
        "text_deltas": len(deltas),
        "text": text_of(final),
        "usage": usage_of(final.usage),
    }

    # A stop sequence: a piece the model writes a few tokens in.
    stop = next(d for d in deltas[2:] if d.strip() and len(d) >= 2)
    stopped = client.messages.create(
        model=MODEL,
        max_tokens=64000,
        system=SYSTEM,
        messages=first,
        stop_sequences=[stop],
    )
    full = "".join(deltas)
    assert stopped.stop_reason == "stop_sequence", stopped
    assert stopped.stop_sequence == stop, stopped.stop_sequence
    assert full.startswith(text_of(stopped)) and len(text_of(stopped)) < len(full), (
        text_of(stopped),
        full,
    )
    out["stop_sequence"] = {"stop": stop, "text": text_of(stopped)}

    # count_tokens answers an estimate.
    counted = client.messages.count_tokens(model=MODEL, system=SYSTEM, messages=second)
    assert counted.input_tokens > 0, counted
    out["count_tokens"] = counted.input_tokens

    # A malformed request: the SDK's error, with the gateway's message.
    try:
        client.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=[{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}],
        )
    except anthropic.BadRequestError as e:
        out["error"] = {"status": e.status_code, "body": e.body}
    else:
        raise AssertionError("a malformed request succeeded")
    return out


TOOLS = [
    {
        "name": "read_file",
        "description": "Read a file of the project.",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "max_lines": {"type": "integer"}},
            "required": ["path", "max_lines"],
        },
    }
]


def tool_checks(client: anthropic.Anthropic) -> dict:
    out = {}
    ask = [{"role": "user", "content": "What is in notes.txt? sim:call read_file"}]

    message = client.messages.create(model=MODEL, max_tokens=512, tools=TOOLS, messages=ask)
    assert message.stop_reason == "tool_use", message
    call = next(b for b in message.content if b.type == "tool_use")
    assert call.name == "read_file", call
    assert call.input == {"path": "sim-path", "max_lines": 1}, call.input
    out["create"] = {"id": call.id, "input": call.input}

    # Streamed: the arguments arrive as input_json_delta pieces; the SDK
    # assembles them into the block's input.
    pieces = []
    with client.messages.stream(model=MODEL, max_tokens=512, tools=TOOLS, messages=ask) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                pieces.append(event.delta.partial_json)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use", final
    streamed = next(b for b in final.content if b.type == "tool_use")
    assert streamed.input == call.input, (streamed.input, call.input)
    assert len(pieces) >= 2, pieces
    assert json.loads("".join(pieces)) == call.input, pieces
    out["stream"] = {"pieces": len(pieces), "id": streamed.id}

    # The round trip: the tool's result goes back, the model answers text.
    follow = ask + [
        {"role": "assistant", "content": [b.model_dump() for b in final.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": streamed.id, "content": "buy milk"}
            ],
        },
    ]
    with client.messages.stream(model=MODEL, max_tokens=512, tools=TOOLS, messages=follow) as stream:
        answer = stream.get_final_message()
    assert answer.content and answer.content[0].type == "text", answer
    assert answer.stop_reason in ("end_turn", "max_tokens"), answer.stop_reason
    out["final"] = {"text": text_of(answer), "stop_reason": answer.stop_reason}
    return out


def main() -> None:
    mode, base_url = sys.argv[1], sys.argv[2]
    client = anthropic.Anthropic(
        base_url=base_url, api_key="sk-ant-dummy-never-forwarded", max_retries=0, timeout=120
    )
    checks = {"text": text_checks, "tools": tool_checks}[mode]
    print(json.dumps(checks(client)))


if __name__ == "__main__":
    main()
