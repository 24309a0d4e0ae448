#!/usr/bin/env python3
"""Build a tiny random-weight Llama model as one GGUF file that llama.cpp's
`llama-server` loads.

Usage:
    <venv with gguf>/bin/python scripts/make_tiny_gguf.py OUT_FILE

Everything is made offline and deterministically (numpy's generator is
seeded), with the `gguf` package from PyPI (pinned in
`scripts/requirements-gguf.txt`):

* architecture `llama`: 2 blocks, embedding 64, 4 heads, 2 KV heads,
  feed-forward 128, context 4096, float32 weights (about 0.3 MB);
* a SentencePiece-style (`tokenizer.ggml.model = llama`) vocabulary of 357
  tokens: `<unk>`, `<s>`, `</s>`, `<|im_start|>`, `<|im_end|>`, the 256
  byte-fallback tokens `<0x00>`..`<0xFF>`, `▁` and the 95 printable ASCII
  characters — so any text tokenizes (roughly one token per character);
* a ChatML Jinja chat template (`tokenizer.chat_template`), so
  `/v1/chat/completions` works with `llama-server --jinja`.

The output head gives every control and byte token an all-zero row, as the
tiny MLX model does, so generated text is mostly printable ASCII.

The file is written to a temporary name beside OUT_FILE and renamed into
place, so a half-written model is never found under OUT_FILE.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

SEED = 20261130
N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
N_CTX = 4096

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def vocabulary(gguf):
    """(tokens, scores, types) of the tokenizer."""
    tokens, scores, types = [], [], []

    def add(text, kind, score=0.0):
        tokens.append(text)
        scores.append(score)
        types.append(kind)

    add("<unk>", gguf.TokenType.UNKNOWN)
    add("<s>", gguf.TokenType.CONTROL)
    add("</s>", gguf.TokenType.CONTROL)
    add("<|im_start|>", gguf.TokenType.CONTROL)
    add("<|im_end|>", gguf.TokenType.CONTROL)
    for byte in range(256):
        add(f"<0x{byte:02X}>", gguf.TokenType.BYTE)
    add("\u2581", gguf.TokenType.NORMAL, -1.0)
    for code in range(0x20, 0x7F):
        add(chr(code), gguf.TokenType.NORMAL, -2.0)
    return tokens, scores, types


def build(out: Path) -> None:
    import gguf

    rng = np.random.default_rng(SEED)
    tokens, scores, types = vocabulary(gguf)
    n_vocab = len(tokens)
    head_dim = N_EMBD // N_HEAD
    n_embd_kv = head_dim * N_HEAD_KV

    tmp = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name("mlx-cluster tiny random llama")
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def weight(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def ones(n):
        return np.ones((n,), dtype=np.float32)

    writer.add_tensor("token_embd.weight", weight(n_vocab, N_EMBD))
    for i in range(N_LAYER):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", ones(N_EMBD))
        writer.add_tensor(p + "attn_q.weight", weight(N_EMBD, N_EMBD))
        writer.add_tensor(p + "attn_k.weight", weight(n_embd_kv, N_EMBD))
        writer.add_tensor(p + "attn_v.weight", weight(n_embd_kv, N_EMBD))
        writer.add_tensor(p + "attn_output.weight", weight(N_EMBD, N_EMBD))
        writer.add_tensor(p + "ffn_norm.weight", ones(N_EMBD))
        writer.add_tensor(p + "ffn_gate.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(p + "ffn_up.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(p + "ffn_down.weight", weight(N_EMBD, N_FF))
    writer.add_tensor("output_norm.weight", ones(N_EMBD))
    head = weight(n_vocab, N_EMBD, scale=0.5)
    for index, kind in enumerate(types):
        if kind != gguf.TokenType.NORMAL:
            head[index, :] = 0.0
    writer.add_tensor("output.weight", head)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the .gguf file to write")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    build(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
