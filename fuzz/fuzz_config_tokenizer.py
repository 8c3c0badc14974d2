"""config.json and the tokenizer loaders: tokenizer.json (BPE), tokenizer_config.json,
added_tokens.json and the SentencePiece tokenizer.model protobuf reader.

The first input byte picks which file the rest of the input is; the other files of that target
are fixed, valid ones from the seeds.
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

from fuzz.common import JSON_TOKENS, SMALL_VOCAB, instrumented, json_patch, main, mode_prefixed, put, scratch, seed_dir

with instrumented(__name__ == "__main__"):
    from bitconv.convert.checkpoint import load_config
    from bitconv.convert.tokenizer import build_sentencepiece_vocab, build_vocab, read_sentencepiece_pieces
    from bitconv.errors import BitconvError

NAME = "config_tokenizer"
VOCAB = 512  # config vocab_size the BPE loader pads to (the cut fixture tokenizers hold ~340 ids)
FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "added_tokens.json",
         "sp:tokenizer_config.json")
#: byte-level mutations of each file, then structure-aware edits of each JSON one (`json_patch`)
MODES = FILES + tuple(f"patch:{f}" for f in FILES if f != "tokenizer.model")


@functools.cache
def _valid() -> dict[str, bytes]:
    tok = seed_dir() / "tokenizer"
    return {"tokenizer.json": (tok / "qwen.tokenizer.json").read_bytes(),
            "tokenizer_config.json": (tok / "qwen.tokenizer_config.json").read_bytes(),
            "tokenizer.model": (tok / "tokenizer.model").read_bytes(),
            "sp:tokenizer_config.json": (tok / "onebit.tokenizer_config.json").read_bytes(),
            "config.json": (tok / "config.json").read_bytes(),
            "added_tokens.json": (tok / "added_tokens.json").read_bytes()}


@functools.cache
def _docs(name: str) -> list[object]:
    """Seed documents a patch mode edits: both fixture tokenizers where there are two."""
    tok = seed_dir() / "tokenizer"
    files = {"tokenizer.json": ["qwen.tokenizer.json", "llama3.tokenizer.json"],
             "tokenizer_config.json": ["qwen.tokenizer_config.json", "llama3.tokenizer_config.json"],
             "sp:tokenizer_config.json": ["onebit.tokenizer_config.json"]}.get(name, [name])
    return [json.loads((tok / f).read_text()) for f in files]


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, body = MODES[data[0] % len(MODES)], data[1:]
    if mode.startswith("patch:"):
        mode = mode.removeprefix("patch:")
        body = json_patch(body, _docs(mode))
    valid = _valid()
    try:
        if mode == "config.json":
            load_config(put(scratch() / "config", {"config.json": body}))
        elif mode == "tokenizer.json":
            build_vocab(put(scratch() / "bpe", {"tokenizer.json": body}), VOCAB)
        elif mode == "tokenizer_config.json":
            build_vocab(put(scratch() / "bpe", {"tokenizer.json": valid["tokenizer.json"],
                                                "tokenizer_config.json": body}), VOCAB)
        elif mode == "tokenizer.model":
            folder = put(scratch() / "sp", {"tokenizer.model": body})
            read_sentencepiece_pieces(folder / "tokenizer.model")
            build_sentencepiece_vocab(folder, SMALL_VOCAB)
        else:
            files = {"tokenizer.model": valid["tokenizer.model"],
                     "tokenizer_config.json": valid["sp:tokenizer_config.json"]}
            files["added_tokens.json" if mode == "added_tokens.json" else "tokenizer_config.json"] = body
            build_sentencepiece_vocab(put(scratch() / "sp", files), SMALL_VOCAB)
    except BitconvError:
        pass


def seed_inputs(seeds: Path) -> list[bytes]:
    tok = seeds / "tokenizer"
    m = {name: i for i, name in enumerate(MODES)}
    out = [mode_prefixed(m["config.json"], (tok / "config.json").read_bytes()),
           mode_prefixed(m["tokenizer.model"], (tok / "tokenizer.model").read_bytes()),
           mode_prefixed(m["added_tokens.json"], (tok / "added_tokens.json").read_bytes()),
           mode_prefixed(m["sp:tokenizer_config.json"], (tok / "onebit.tokenizer_config.json").read_bytes())]
    out += [mode_prefixed(i, b"\0" * 16) for i, name in enumerate(MODES) if name.startswith("patch:")]
    for label in ("qwen", "llama3"):
        out.append(mode_prefixed(m["tokenizer.json"], (tok / f"{label}.tokenizer.json").read_bytes()))
        out.append(mode_prefixed(m["tokenizer_config.json"], (tok / f"{label}.tokenizer_config.json").read_bytes()))
    return out


if __name__ == "__main__":
    seed_dir()
    main(NAME, TestOneInput, seed_inputs, sys.argv[1:], max_len=65536, dictionary=JSON_TOKENS)
