"""The real OpenAI Python SDK against the mlx-cluster gateway.

Run by tests/tests/gateway_e2e.rs with the venv's python:

    python tests/gateway_openai_sdk.py BASE_URL MODEL

BASE_URL is the gateway's OpenAI base URL (http://127.0.0.1:PORT/v1).
Prints one JSON object with what each call returned; exits non-zero (with a
traceback) if any call fails or returns something unexpected.
"""

import json
import sys

import openai


def main() -> None:
    base_url, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=60)
    messages = [
        {"role": "system", "content": "You are a test of the mlx-cluster gateway."},
        {"role": "user", "content": "Say something."},
    ]
    out = {}

    # Non-streamed chat completion.
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=8)
    assert chat.choices, chat
    assert chat.choices[0].message.content is not None, chat
    assert chat.usage is not None and chat.usage.prompt_tokens > 0, chat.usage
    out["chat"] = {
        "content": chat.choices[0].message.content,
        "prompt_tokens": chat.usage.prompt_tokens,
        "cached_tokens": getattr(chat.usage.prompt_tokens_details, "cached_tokens", None)
        if chat.usage.prompt_tokens_details
        else None,
    }

    # Streamed chat completion, with the usage chunk.
    pieces = []
    usage = None
    chunks = 0
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta and choice.delta.content:
                pieces.append(choice.delta.content)
    assert chunks >= 2, chunks
    assert usage is not None and usage.prompt_tokens > 0, usage
    out["stream"] = {
        "chunks": chunks,
        "content": "".join(pieces),
        "prompt_tokens": usage.prompt_tokens,
        "cached_tokens": getattr(usage.prompt_tokens_details, "cached_tokens", None)
        if usage.prompt_tokens_details
        else None,
    }

    # Streamed without asking for usage: the gateway asks the node for it
    # (the router learns from every answer) and removes it again, so the
    # client sees the stream it asked for.
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, stream=True
    )
    usage_chunks = 0
    empty_choices = 0
    pieces = []
    chunks = 0
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage_chunks += 1
        if not chunk.choices:
            empty_choices += 1
        for choice in chunk.choices:
            if choice.delta and choice.delta.content:
                pieces.append(choice.delta.content)
    assert chunks >= 2 and pieces, chunks
    assert usage_chunks == 0 and empty_choices == 0, (usage_chunks, empty_choices)
    out["stream_no_usage"] = {"chunks": chunks, "usage_chunks": usage_chunks}

    # Text completion.
    completion = client.completions.create(model=model, prompt="Once upon a time", max_tokens=4)
    assert completion.choices and completion.choices[0].text is not None, completion
    out["completion"] = {
        "text": completion.choices[0].text,
        "prompt_tokens": completion.usage.prompt_tokens if completion.usage else None,
    }

    # Models listed by the gateway.
    out["models"] = [m.id for m in client.models.list().data]
    assert model in out["models"] or model == "default_model", out["models"]

    # An error in OpenAI's shape surfaces as the SDK's exception.
    try:
        client.chat.completions.create(model=model, messages="not a list", max_tokens=1)
    except openai.APIStatusError as e:
        out["error"] = {"status": e.status_code, "body": e.body}
    else:
        raise AssertionError("a malformed request succeeded")

    print(json.dumps(out))


if __name__ == "__main__":
    main()
