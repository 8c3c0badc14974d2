"""The GGUF vocabulary of BitNet embedding models, by the rules of bitnet.cpp's
`utils/convert-bitnet-embedding-to-gguf.py` (which differ from llama.cpp's converter in details):

* tokens: ids missing from tokenizer.json are `[PAD{i}]` (UNUSED); added tokens are CONTROL when
  special or when they look special by the script's wider rule (`<…>` / `[…]`, so Qwen3's `<think>`
  is CONTROL), else USER_DEFINED with `▁` → space; merges, special ids, add_* flags and the chat
  template from gguf-py's SpecialVocab, as the script reads them (no n_vocab, no extra flags);
* Qwen3: EOS set to `<|endoftext|>` (the token the sentence-transformers tokenizer appends and the
  model pools) and `tokenizer.ggml.add_eos_token` true, written after the SpecialVocab keys.

The script round-trips non-normalized added tokens through transformers' encode/decode; for the
Qwen vocabulary that is the identity (checked against its output in tests/golden/bitnet_embedding).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import gguf

from ..errors import TokenizerError
from .tokenizer import (TOKENIZER_KINDS, GGUFVocab, _quiet_gguf, _special_vocab, detect_pre_tokenizer,
                        load_tokenizer_json, padded_tokens, padded_tokens_fast)

QWEN3_EOS = "<|endoftext|>"


def looks_special(token: str) -> bool:
    """The script's `_does_token_look_special`: `<…>`, `<|…|>` or `[…]`."""
    return bool(token) and token.startswith(("<|", "<", "[")) and token.endswith(("|>", ">", "]"))


@dataclass
class EmbeddingVocab(GGUFVocab):
    """A GGUFVocab that ends with `add_eos_token` true, where the script sets it."""

    add_eos: bool = True

    def add_to(self, w: gguf.GGUFWriter) -> None:
        super().add_to(w)
        if self.add_eos:
            with _quiet_gguf():  # an existing key keeps its place (gguf-py warns about the overwrite)
                w.add_add_eos_token(True)


def build_qwen3_embedding_vocab(root: Path, vocab_size: int, pre: str | None = None) -> EmbeddingVocab:
    data = load_tokenizer_json(root)
    model = data["model"]
    vocab = model.get("vocab")
    if model.get("type") != "BPE" or not isinstance(vocab, dict):
        raise TokenizerError("tokenizer.json: a BitNet embedding (Qwen3) model needs a byte-level BPE tokenizer")
    if set(map(type, vocab.values())) <= {int}:
        by_id: dict[int, str] = dict(zip(vocab.values(), vocab.keys()))
    else:
        by_id = {i: t for t, i in vocab.items() if isinstance(i, int)}
    added: dict[int, dict] = {}
    for tok in data.get("added_tokens") or []:
        if not (isinstance(tok, dict) and isinstance(tok.get("id"), int) and isinstance(tok.get("content"), str)):
            raise TokenizerError(f"tokenizer.json: malformed added token {tok!r:.80}")
        added[tok["id"]] = tok
        by_id[tok["id"]] = tok["content"]
    if by_id and max(by_id) >= vocab_size:
        raise TokenizerError(f"tokenizer has id {max(by_id)} but config.json vocab_size is {vocab_size}")

    def kind(i: int, token: str) -> tuple[str, int]:
        if i not in added:
            return token, gguf.TokenType.NORMAL
        if added[i].get("special") or looks_special(token):
            return token, gguf.TokenType.CONTROL
        return token.replace("\u2581", " "), gguf.TokenType.USER_DEFINED

    tokens, types = padded_tokens_fast(by_id, vocab_size, added, kind)
    special = _special_vocab(root, None, tokenizer_json=data)  # the script's has no vocabulary bound
    special.merges = _merges(model)  # as SpecialVocab(load_merges=True) reads them, from the parsed file
    eos = next((i for i, t in added.items() if t["content"] == QWEN3_EOS), None)
    if eos is None:
        raise TokenizerError(f"tokenizer.json has no {QWEN3_EOS} token: a BitNet embedding (Qwen3) model pools "
                             "the hidden state of that appended EOS")
    special.special_token_ids["eos"] = eos
    if not special.merges:
        raise TokenizerError("tokenizer.json has no BPE merges")
    with _quiet_gguf():
        pre_name = pre or detect_pre_tokenizer(data)
    return EmbeddingVocab("gpt2", pre_name, tokens, types, special)


def _merges(model: dict) -> list[str]:
    """tokenizer.json's merges as gguf-py's SpecialVocab lists them: "a b" strings kept, [a, b] pairs
    joined with a space after each space inside a part becomes U+0120."""
    merges = model.get("merges")
    if not isinstance(merges, list) or not merges:
        return []
    if isinstance(merges[0], str):
        return merges
    try:
        if set(map(len, merges)) == {2} and " " not in "".join(itertools.chain.from_iterable(merges)):
            return list(map(" ".join, merges))  # no space to encode: the same strings, in bulk
        g = chr(288)
        return [f"{a.replace(' ', g)} {b.replace(' ', g)}" for a, b in merges]
    except (ValueError, TypeError, AttributeError):  # not [a, b] string pairs
        raise TokenizerError("tokenizer.json: unknown merges format") from None


TOKENIZER_KINDS["qwen3-embedding"] = (lambda root: (root / "tokenizer.json").is_file(), "tokenizer.json",
                                      build_qwen3_embedding_vocab)


@dataclass
class GemmaEmbeddingVocab(GGUFVocab):
    """Gemma's pieces as the script writes them: `add_space_prefix` false between the token types
    and gguf-py's special-token keys."""

    def add_to(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_scores(self.scores or [])
        w.add_token_types(self.token_types)
        w.add_add_space_prefix(False)
        self.special.add_to_gguf(w, quiet=True)


def _is_byte_piece(token: str) -> bool:
    return len(token) == 6 and token.startswith("<0x") and token.endswith(">")


def build_gemma3_embedding_vocab(root: Path, vocab_size: int, pre: str | None = None) -> GemmaEmbeddingVocab:
    """The script's Gemma3 vocabulary from tokenizer.json: each id of the BPE model's vocabulary (an
    id only among the added tokens is padding, as there) typed CONTROL / USER_DEFINED (added: score
    −1000), BYTE (`<0xHH>`), UNKNOWN (`<unk>`) or NORMAL, whose score is minus the rank of the first
    merge that makes it (0 when none does; rank 0 gives −0.0, as `-float(0)` does)."""
    data = load_tokenizer_json(root)
    model = data["model"]
    vocab = model.get("vocab")
    if model.get("type") != "BPE" or not isinstance(vocab, dict):
        raise TokenizerError("tokenizer.json: a BitNet embedding (Gemma3) model needs Gemma's BPE (SentencePiece) "
                             "tokenizer")
    merges = model.get("merges") or []
    merge_scores: dict[str, float] = {}
    try:
        for rank, merge in enumerate(merges):
            piece = "".join(merge) if isinstance(merge, list) else "".join(merge.split(" ", 1))
            merge_scores.setdefault(piece, -float(rank))
    except (TypeError, AttributeError):
        raise TokenizerError("tokenizer.json: unknown merges format") from None
    by_id: dict[int, str] = {i: t for t, i in vocab.items() if isinstance(i, int)}
    if by_id and max(by_id) >= vocab_size:
        raise TokenizerError(f"tokenizer has id {max(by_id)} but config.json vocab_size is {vocab_size}")
    added: dict[int, bool] = {}
    for tok in data.get("added_tokens") or []:
        if not (isinstance(tok, dict) and isinstance(tok.get("id"), int)):
            raise TokenizerError(f"tokenizer.json: malformed added token {tok!r:.80}")
        added[tok["id"]] = bool(tok.get("special"))
    scores: dict[int, float] = {}

    def kind(i: int, token: str) -> tuple[str, int]:
        if i in added:
            scores[i] = -1000.0
            return token, gguf.TokenType.CONTROL if added[i] or looks_special(token) else gguf.TokenType.USER_DEFINED
        scores[i] = 0.0
        if _is_byte_piece(token):
            return token, gguf.TokenType.BYTE
        if token == "<unk>":
            return token, gguf.TokenType.UNKNOWN
        scores[i] = merge_scores.get(token, 0.0)
        return token, gguf.TokenType.NORMAL

    tokens, types = padded_tokens(by_id, vocab_size, kind)
    special = _special_vocab(root, None, tokenizer_json=data)
    return GemmaEmbeddingVocab("llama", "default", tokens, types, special,
                               [scores.get(i, -10000.0) for i in range(vocab_size)])


TOKENIZER_KINDS["gemma3-embedding"] = (lambda root: (root / "tokenizer.json").is_file(), "tokenizer.json",
                                       build_gemma3_embedding_vocab)
