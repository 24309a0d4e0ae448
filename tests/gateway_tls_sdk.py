"""The real OpenAI Python SDK against the mlx-cluster gateway over HTTPS, with
a client key.

Run by tests/tests/gateway_security.rs with the venv's python:

    python tests/gateway_tls_sdk.py BASE_URL MODEL API_KEY CA_PEM

BASE_URL is https://localhost:PORT/v1; the gateway's certificate is signed
by the test CA in CA_PEM. Prints one JSON object with what each call
returned; exits non-zero (with a traceback) if anything is unexpected.
"""

import json
import ssl
import sys

import openai


def client(base_url: str, api_key: str, ca: str | None) -> openai.OpenAI:
    verify = ssl.create_default_context(cafile=ca) if ca else True
    return openai.OpenAI(
        base_url=base_url,
        api_key=api_key,
        max_retries=0,
        timeout=60,
        # The SDK's own HTTP client class (whatever httpx it ships with).
        http_client=openai.DefaultHttpxClient(verify=verify),
    )


def main() -> None:
    base_url, model, api_key, ca = sys.argv[1:5]
    messages = [{"role": "user", "content": "Say something over TLS."}]
    out = {}

    good = client(base_url, api_key, ca)
    chat = good.chat.completions.create(model=model, messages=messages, max_tokens=8)
    assert chat.choices and chat.usage is not None and chat.usage.prompt_tokens > 0, chat
    out["chat_prompt_tokens"] = chat.usage.prompt_tokens

    chunks = 0
    for _ in good.chat.completions.create(
        model=model, messages=messages, max_tokens=8, stream=True
    ):
        chunks += 1
    assert chunks >= 2, chunks
    out["stream_chunks"] = chunks

    # A wrong key: the SDK's AuthenticationError (401 in OpenAI's shape).
    try:
        client(base_url, api_key + "-wrong", ca).chat.completions.create(
            model=model, messages=messages, max_tokens=1
        )
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as e:
        out["wrong_key"] = {"status": e.status_code, "code": e.code}

    # Without the test CA the certificate is not trusted.
    try:
        client(base_url, api_key, None).models.list()
        raise AssertionError("an untrusted certificate was accepted")
    except openai.APIConnectionError:
        out["untrusted"] = "refused"

    print(json.dumps(out))


if __name__ == "__main__":
    main()
