#!/usr/bin/env python3
"""Build a tiny random-weight Llama model directory that `mlx_lm.server` loads.

Usage:
    <venv>/bin/python scripts/make_tiny_model.py OUT_DIR [--force] [--ends-turns N]

Everything is made offline and deterministically (every random source is
seeded), so two runs with the same library versions give byte-identical
files:

* a byte-level BPE tokenizer (vocabulary 512) trained with the `tokenizers`
  package on text this script generates, saved as `tokenizer.json`, with
  `tokenizer_config.json` (ChatML-like Jinja chat template, bos/eos/pad
  tokens) and `special_tokens_map.json`;
* `config.json` for `model_type: llama` (hidden 64, 2 layers, 4 heads,
  2 KV heads, intermediate 128, untied embeddings);
* `model.safetensors`: weights of mlx_lm's own llama `Model`, randomly
  initialised by mlx under `mx.random.seed(SEED)`, written with mlx's
  safetensors writer (float32, about 0.5 MB).

The output head gives every special token and every token whose text is not
printable ASCII an all-zero row, so greedy decoding (mlx_lm.server's default,
temperature 0) only ever emits printable ASCII and never the end-of-sequence
token: a completion always runs to `max_tokens` (finish_reason "length").

With `--ends-turns N` the model instead ends every answer after N tokens
(fewer if its answer repeats itself sooner), like a chat model ending its
turn (finish_reason "stop"), whatever the prompt: the attention and MLP
output projections are zero, so each layer adds nothing to the residual
stream and the next token depends only on the current one; every chat
prompt ends with the same tokens (`<|im_start|>assistant\n`), so greedy
decoding follows one fixed chain of tokens, and the chain's (N+1)-th token
is added to `eos_token_id`. Prompt processing and the prompt cache work as
in the default model. Same tokenizer, same random initialisation.

Idempotent: OUT_DIR gets a marker file `.tiny-model-stamp` holding the
SHA-256 of this script; if OUT_DIR already exists with a matching stamp the
script prints "up to date" and exits 0. A stale or half-built OUT_DIR is
replaced (the model is built in a sibling temporary directory and renamed
into place). `--force` rebuilds regardless.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

SEED = 20261123
VOCAB_SIZE = 512
STAMP_NAME = ".tiny-model-stamp"

BOS = "<|bos|>"
EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [EOS, BOS, IM_START, IM_END, PAD]  # ids 0..4

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

MODEL_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-5,
    "vocab_size": VOCAB_SIZE,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "rope_traditional": False,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "torch_dtype": "float32",
}

WORDS = (
    "the a an of to in on for with from by at as is are was be been has have "
    "node cluster gateway router request response token tokens prompt cache "
    "model server health check backoff retry latency stream chunk usage load "
    "balance prefix session route weight healthy degraded offline probe "
    "kubernetes dns service endpoint slice watch event metric counter window "
    "apple silicon memory batch decode prefill attention layer head vector "
    "user assistant system message answer question hello world please thanks "
    "quick brown fox jumps over lazy dog one two three four five six seven "
    "eight nine ten red green blue small large fast slow new old good bad"
).split()


def script_hash() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def make_corpus(rng: random.Random, lines: int = 4000) -> list[str]:
    """Sentences of random words, with punctuation, digits and casing."""
    corpus = []
    for _ in range(lines):
        n = rng.randint(4, 16)
        words = [rng.choice(WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 9999)))
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:]
        sentence += rng.choice([".", ".", ".", "?", "!", ","])
        corpus.append(sentence)
    return corpus


def build_tokenizer(out: Path, rng: random.Random) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(make_corpus(rng), trainer=trainer)
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise SystemExit(
            f"tokenizer vocabulary is {tokenizer.get_vocab_size()}, expected {VOCAB_SIZE}"
        )
    ids = {tok: tokenizer.token_to_id(tok) for tok in SPECIAL_TOKENS}
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, ids[BOS])],
    )
    tokenizer.save(str(out / "tokenizer.json"))

    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_CONFIG["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
    }
    write_json(out / "tokenizer_config.json", tokenizer_config)
    write_json(
        out / "special_tokens_map.json",
        {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD},
    )
    return {"ids": ids, "tokenizer": tokenizer}


def clean_token_mask(tokenizer) -> list[bool]:
    """True for tokens whose decoded text is non-empty printable ASCII."""
    mask = []
    for i in range(VOCAB_SIZE):
        tok = tokenizer.id_to_token(i)
        if tok in SPECIAL_TOKENS:
            mask.append(False)
            continue
        text = tokenizer.decode([i], skip_special_tokens=False)
        mask.append(
            bool(text) and "\ufffd" not in text and all(" " <= c <= "~" for c in text)
        )
    return mask


def build_weights(out: Path, mask: list[bool], ends_turns: int | None = None, tokenizer=None):
    """Writes the weights; returns (parameter count, end-of-turn token or None)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    mx.random.seed(SEED)
    model = llama.Model(llama.ModelArgs.from_dict(MODEL_CONFIG))
    # Random init is fine for every layer; scale the output head so the
    # logits are spread out, then silence the tokens we never want emitted.
    keep = mx.array(mask, dtype=mx.float32)[:, None]
    model.lm_head.weight = model.lm_head.weight * 4.0 * keep
    end_token = None
    if ends_turns is not None:
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight = mx.zeros_like(layer.self_attn.o_proj.weight)
            layer.mlp.down_proj.weight = mx.zeros_like(layer.mlp.down_proj.weight)
        end_token = turn_end_token(model, tokenizer, ends_turns)
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    mx.save_safetensors(str(out / "model.safetensors"), weights, {"format": "mlx"})
    return sum(v.size for v in weights.values()), end_token


def turn_end_token(model, tokenizer, n: int) -> int:
    """The token that ends answers after (at most) `n` tokens: the model's
    next token depends only on the current one (see the module docs), and
    every answer starts after the generation prompt's last token."""
    import mlx.core as mx

    start = tokenizer.encode(IM_START + "assistant\n", add_special_tokens=False).ids[-1]
    chain = []
    token = start
    for _ in range(n + 1):
        token = int(mx.argmax(model(mx.array([[token]]))[0, -1]).item())
        chain.append(token)
    k = n
    while k > 0 and chain[k] in chain[:k]:
        k -= 1
    if k < 2:
        raise SystemExit(f"the greedy chain repeats too soon to end turns after {n} tokens")
    return chain[k]


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build(out: Path, ends_turns: int | None = None) -> None:
    rng = random.Random(SEED)
    tok = build_tokenizer(out, rng)
    ids = tok["ids"]
    mask = clean_token_mask(tok["tokenizer"])
    params, end_token = build_weights(out, mask, ends_turns, tok["tokenizer"])
    config = dict(MODEL_CONFIG)
    config["bos_token_id"] = ids[BOS]
    config["eos_token_id"] = [ids[EOS], ids[IM_END]]
    if end_token is not None:
        config["eos_token_id"].append(end_token)
    config["pad_token_id"] = ids[PAD]
    write_json(out / "config.json", config)
    ending = "" if end_token is None else f", answers end at token {end_token}"
    print(
        f"built tiny llama: {params} parameters, vocab {VOCAB_SIZE}, "
        f"{sum(mask)} emittable tokens{ending}",
        file=sys.stderr,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="model directory to create")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument(
        "--ends-turns",
        type=int,
        metavar="N",
        help="make a model whose answers end after N tokens (see the module docs)",
    )
    args = parser.parse_args()

    out: Path = args.out_dir
    digest = script_hash() + ("" if args.ends_turns is None else f" ends-turns {args.ends_turns}")
    stamp = out / STAMP_NAME
    if not args.force and stamp.is_file() and stamp.read_text().strip() == digest:
        print(f"{out}: up to date", file=sys.stderr)
        return 0

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    try:
        build(tmp, args.ends_turns)
        (tmp / STAMP_NAME).write_text(digest + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"{out}: built", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
