"""HF `tokenizer.json` (or SentencePiece's `tokenizer.model`, or Qwen-1's `qwen.tiktoken`) → GGUF
vocabulary, without transformers.

Tokens and token types follow llama.cpp's converter (`get_vocab_base`): ids missing from the
tokenizer become `[PAD{i}]` (UNUSED) up to the config's vocab_size, added tokens are CONTROL when
special (or when they look special, `<|…|>`), USER_DEFINED otherwise. Merges, special ids, add_bos /
add_eos and the chat template come from gguf-py's SpecialVocab, the converter's own reader.

llama.cpp identifies the pre-tokenizer by hashing token ids of a probe text; bitconv reads the
pre-tokenizer regex itself and names it, and refuses a regex it does not know rather than guessing.
"""
from __future__ import annotations

import gc
import json
import logging
import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import gguf
import numpy as np

from ..errors import TokenizerError
from .checkpoint import read_json_object

#: pre-tokenizer split regex (as in tokenizer.json) → llama.cpp's `tokenizer.ggml.pre` name
PRE_TOKENIZER_REGEXES: dict[str, str] = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    # Qwen3.5 (letters with their combining marks); as quoted in llama.cpp's src/llama-vocab.cpp
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+": "qwen35",
}


@dataclass
class GGUFVocab:
    model: str
    pre: str
    tokens: list[str]
    token_types: list[int]
    special: gguf.SpecialVocab
    scores: list[float] | None = None

    def add_to(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        w.add_token_types(self.token_types)
        self.special.add_to_gguf(w, quiet=True)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a vocabulary is parsed and built: its hundreds of thousands
    of new strings, lists and dicts form no cycles, yet would trigger full collections (≈ 0.2 s)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def _quiet_gguf() -> Iterator[None]:
    """gguf-py logs notes about tokenizer.json details it skips (e.g. the pair template of a
    TemplateProcessing post-processor); they are not actionable for a user of bitconv."""
    log = logging.getLogger("gguf")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _add_flags_from_tokenizer_config(root: Path, special: gguf.SpecialVocab) -> None:
    """add_<type>_token booleans of tokenizer_config.json that the post-processor did not decide,
    as llama.cpp's converter records them (the gguf wheel's SpecialVocab skips some)."""
    path = root / "tokenizer_config.json"
    if not path.is_file():
        return
    config = read_json_object(path, "", TokenizerError)
    for typ in special.special_token_types:
        flag = config.get(f"add_{typ}_token")
        if isinstance(flag, bool):
            special.add_special_token.setdefault(typ, flag)


class _ParsedJson:
    """Stands in for the `json` module inside gguf-py's vocab reader: a file bitconv has parsed
    already in this context (`_PARSED`: absolute path → object) is not parsed a second time (a Qwen
    tokenizer.json takes 0.2 s); every other call goes to `json`. SpecialVocab only reads the object."""

    def __getattr__(self, name: str) -> Any:
        return getattr(json, name)

    @staticmethod
    def load(fp: Any, **kwargs: Any) -> Any:
        parsed = _PARSED.get()
        name = getattr(fp, "name", None)
        if parsed and not kwargs and isinstance(name, str) and os.path.abspath(name) in parsed:
            return parsed[os.path.abspath(name)]
        return json.load(fp, **kwargs)


_PARSED: ContextVar[dict[str, Any] | None] = ContextVar("bitconv_parsed_json", default=None)
if getattr(gguf, "vocab", None) is not None and getattr(gguf.vocab, "json", None) is json:
    gguf.vocab.json = _ParsedJson()  # type: ignore[attr-defined]


def _special_vocab(root: Path, vocab_size: int | None, load_merges: bool = False,
                   tokenizer_json: dict[str, Any] | None = None) -> gguf.SpecialVocab:
    """gguf-py's SpecialVocab (llama.cpp's converter's reader of merges, special ids and the chat
    template); it trusts the files' shapes, so what it trips over is reported as a TokenizerError.
    `tokenizer_json`: root/tokenizer.json as bitconv parsed it (SpecialVocab reads that, not the file)."""
    token = _PARSED.set({os.path.abspath(root / "tokenizer.json"): tokenizer_json} if tokenizer_json else None)
    try:
        with _quiet_gguf():
            return gguf.SpecialVocab(root, load_merges=load_merges, n_vocab=vocab_size)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError, OSError) as e:
        text = str(e).splitlines()[0] if str(e) else ""
        raise TokenizerError(f"{root}: tokenizer files gguf-py cannot read ({type(e).__name__}: {text})") from e
    finally:
        _PARSED.reset(token)


def _looks_special(token: str) -> bool:
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _split_regexes(node: Any) -> list[str]:
    """Every Split regex in a (possibly nested) pre_tokenizer description."""
    if isinstance(node, dict):
        found = []
        if node.get("type") == "Split" and isinstance(node.get("pattern"), dict):
            regex = node["pattern"].get("Regex")
            if isinstance(regex, str):
                found.append(regex)
        for v in node.values():
            found.extend(_split_regexes(v))
        return found
    if isinstance(node, list):
        return [r for v in node for r in _split_regexes(v)]
    return []


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def detect_pre_tokenizer(tokenizer_json: dict[str, Any]) -> str:
    try:
        regexes = _split_regexes(tokenizer_json.get("pre_tokenizer"))
    except RecursionError:
        raise TokenizerError("tokenizer.json: pre_tokenizer is nested too deeply") from None
    for r in regexes:
        if r in PRE_TOKENIZER_REGEXES:
            return PRE_TOKENIZER_REGEXES[r]
    what = f"split regex {regexes[0]!r}" if regexes else "no split regex"
    raise TokenizerError(
        f"unknown pre-tokenizer ({what}); pass --pre NAME with llama.cpp's name for it "
        f"(known: {', '.join(sorted(set(PRE_TOKENIZER_REGEXES.values())))})")


def load_tokenizer_json(root: Path) -> dict[str, Any]:
    path = root / "tokenizer.json"
    data = read_json_object(path, f"no tokenizer.json in {root}: bitconv exports fast (BPE) tokenizers",
                            TokenizerError)
    if not isinstance(data.get("model"), dict):
        raise TokenizerError(f"{path}: no \"model\" section")
    return data


def padded_tokens(by_id: dict[int, str], vocab_size: int,
                  kind: Callable[[int, str], tuple[str, int]]) -> tuple[list[str], list[int]]:
    """Tokens and types for ids 0 … vocab_size − 1 as llama.cpp's converter pads them: an id no token
    holds is `[PAD{id}]`, UNUSED; `kind(id, token)` gives the others' spelling and type."""
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        token = by_id.get(i)
        token, t = (f"[PAD{i}]", gguf.TokenType.UNUSED) if token is None else kind(i, token)
        tokens.append(token)
        types.append(int(t))
    return tokens, types


def padded_tokens_fast(by_id: dict[int, str], vocab_size: int, special_ids: Iterable[int],
                       kind: Callable[[int, str], tuple[str, int]]) -> tuple[list[str], list[int]]:
    """`padded_tokens` where `kind(i, token)` is (token, NORMAL) for every id outside `special_ids`:
    those are taken in bulk, only the others call `kind` (a 150k vocabulary in a few ms)."""
    tokens: list[Any] = list(map(by_id.get, range(vocab_size)))
    types = [int(gguf.TokenType.NORMAL)] * vocab_size
    for i in [i for i, t in enumerate(tokens) if t is None]:
        tokens[i], types[i] = f"[PAD{i}]", int(gguf.TokenType.UNUSED)
    for i in special_ids:
        if 0 <= i < vocab_size and by_id.get(i) is not None:
            tokens[i], t = kind(i, by_id[i])
            types[i] = int(t)
    return tokens, types


def build_vocab(root: Path, vocab_size: int, pre: str | None = None) -> GGUFVocab:
    """The GGUF vocabulary of the tokenizer in `root`, padded to the model's `vocab_size`."""
    data = load_tokenizer_json(root)
    model = data["model"]
    if model.get("type") != "BPE":
        raise TokenizerError(f"tokenizer model {model.get('type')!r} is not supported yet (only byte-level BPE)")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise TokenizerError("tokenizer.json: model.vocab is not a token → id table")
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i for i in vocab.values()):
        raise TokenizerError("tokenizer.json: model.vocab maps a token to something other than an id ≥ 0")
    reverse: dict[int, str] = {i: t for t, i in vocab.items()}
    added: dict[int, dict[str, Any]] = {}
    added_tokens = data.get("added_tokens") or []
    if not isinstance(added_tokens, list):
        raise TokenizerError("tokenizer.json: added_tokens is not a list")
    for tok in added_tokens:
        if not (isinstance(tok, dict) and isinstance(tok.get("id"), int) and not isinstance(tok["id"], bool)
                and tok["id"] >= 0 and isinstance(tok.get("content"), str)):
            raise TokenizerError(f"tokenizer.json: malformed added token {_short(tok)}")
        added[tok["id"]] = tok
        reverse[tok["id"]] = tok["content"]
    if reverse and max(reverse) >= vocab_size:
        raise TokenizerError(f"tokenizer has id {max(reverse)} but config.json vocab_size is {vocab_size}")
    def kind(i: int, token: str) -> tuple[str, int]:
        if i not in added:
            return token, gguf.TokenType.NORMAL
        if added[i].get("special") or _looks_special(token):
            return token, gguf.TokenType.CONTROL
        return token.replace("\u2581", " "), gguf.TokenType.USER_DEFINED

    tokens, types = padded_tokens(reverse, vocab_size, kind)
    pre_name = pre or detect_pre_tokenizer(data)
    special = _special_vocab(root, vocab_size, load_merges=True, tokenizer_json=data)
    post = data.get("post_processor")
    processors = post.get("processors", []) if isinstance(post, dict) and post.get("type") == "Sequence" else [post]
    processors = processors if isinstance(processors, list) else []
    if any(isinstance(p, dict) and p.get("type") == "ByteLevel" for p in processors):
        # A ByteLevel post-processor adds no BOS/EOS of its own; llama.cpp's converter records that
        # explicitly (a TemplateProcessing beside it may still have set add_bos).
        special.add_special_token.setdefault("bos", False)
        special.add_special_token.setdefault("eos", False)
    _add_flags_from_tokenizer_config(root, special)
    if not special.merges:
        raise TokenizerError("tokenizer.json has no BPE merges")
    return GGUFVocab("gpt2", pre_name, tokens, types, special)


# --- SentencePiece (tokenizer.model), read without the sentencepiece package ------------------------

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise TokenizerError("tokenizer.model: truncated or corrupt protobuf")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of one protobuf message; unknown fields are skipped."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise TokenizerError("tokenizer.model: a field runs past the end of the file")
            yield field, wire, buf[pos:pos + n]
            pos += n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            if pos + n > len(buf):
                raise TokenizerError("tokenizer.model: a field runs past the end of the file")
            yield field, wire, buf[pos:pos + n]
            pos += n
        else:
            raise TokenizerError(f"tokenizer.model: unsupported protobuf wire type {wire}")


#: SentencePiece piece types (the proto's; GGUF token types share the numbers)
_PIECE_TYPES = frozenset(range(1, 7))


def read_sentencepiece_pieces(path: Path) -> list[tuple[str, float, int]]:
    """(piece, score, type) of every piece in a SentencePiece ModelProto; types are the proto's
    (NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6), which GGUF shares."""
    pieces = []
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read ({e.strerror or e})") from e
    for field, wire, value in _fields(raw):
        if field != 1 or wire != 2:
            continue
        piece, score, kind = "", 0.0, 1
        assert isinstance(value, bytes)
        for f, w, v in _fields(value):
            if f == 1 and w == 2:
                try:
                    piece = bytes(v).decode("utf-8")  # type: ignore[arg-type]
                except UnicodeDecodeError:
                    raise TokenizerError(f"{path}: piece {len(pieces)} is not UTF-8 text") from None
            elif f == 2 and w == 5:
                score = float(np.frombuffer(v, dtype="<f4")[0])  # type: ignore[arg-type]
            elif f == 3 and w == 0:
                kind = int(v)  # type: ignore[arg-type]
        if kind not in _PIECE_TYPES:
            raise TokenizerError(f"{path}: piece {len(pieces)} ({_short(piece)}) has unknown type {kind}")
        pieces.append((piece, score, kind))
    if not pieces:
        raise TokenizerError(f"{path}: no pieces (not a SentencePiece model?)")
    return pieces


def build_sentencepiece_vocab(root: Path, vocab_size: int) -> GGUFVocab:
    """tokenizer.model → a `llama` GGUF vocabulary, as llama.cpp's converter builds it: ids the model
    does not define are `[PAD{i}]` (UNUSED, score −10000); added tokens from added_tokens.json and
    tokenizer_config.json override pieces (score −1000)."""
    path = root / "tokenizer.model"
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for i, (piece, score, kind) in enumerate(read_sentencepiece_pieces(path)[:vocab_size]):
        tokens[i], scores[i], types[i] = piece, score, kind
    added_file = root / "added_tokens.json"
    if added_file.is_file():
        for text, i in read_json_object(added_file, "", TokenizerError).items():
            if isinstance(i, int) and 0 <= i < vocab_size:
                tokens[i], scores[i], types[i] = text, -1000.0, int(gguf.TokenType.USER_DEFINED)
    config_file = root / "tokenizer_config.json"
    if config_file.is_file():
        decoder = read_json_object(config_file, "", TokenizerError).get("added_tokens_decoder") or {}
        if not isinstance(decoder, dict):
            raise TokenizerError(f"{config_file}: added_tokens_decoder is not an id → token table")
        for key, data in decoder.items():
            if (not isinstance(data, dict) or not (key.isascii() and key.isdigit() and len(key) < 19)
                    or not isinstance(data.get("content", ""), str)):
                raise TokenizerError(
                    f"{config_file}: malformed added_tokens_decoder entry {_short(key)}: {_short(data)}")
            i, text = int(key), data.get("content", "")
            if not 0 <= i < vocab_size:
                continue
            if data.get("special") or _looks_special(text):
                types[i] = int(gguf.TokenType.CONTROL)
            else:
                text = text.replace("\u2581", " ")
                types[i] = int(gguf.TokenType.USER_DEFINED)
            tokens[i], scores[i] = text, -1000.0
    special = _special_vocab(root, vocab_size)
    _add_flags_from_tokenizer_config(root, special)
    return GGUFVocab("llama", "default", tokens, types, special, scores)


def _build_bpe(root: Path, vocab_size: int, pre: str | None) -> GGUFVocab:
    return build_vocab(root, vocab_size, pre=pre)


def _build_sentencepiece(root: Path, vocab_size: int, pre: str | None) -> GGUFVocab:
    return build_sentencepiece_vocab(root, vocab_size)


def build_tiktoken_vocab(root: Path, vocab_size: int, pre: str | None = None) -> GGUFVocab:
    """A tiktoken rank file (Qwen-1's qwen.tiktoken) → a `gpt2` GGUF vocabulary, as llama.cpp's
    converter builds it (tiktoken_vocab.py); bos / eos are the spec's default special token unless
    config.json names them, unk is it always."""
    from .tiktoken_vocab import TIKTOKEN_FILES, find_tiktoken_file, tiktoken_vocab

    path = find_tiktoken_file(root)
    if path is None:
        raise TokenizerError(f"no tiktoken file ({', '.join(TIKTOKEN_FILES)}) in {root}")
    tv = tiktoken_vocab(path, vocab_size)
    special = _special_vocab(root, vocab_size)
    special.merges = tv.merges
    if not special.special_token_ids:  # only when config.json names none, as llama.cpp's converter does
        special._set_special_token("bos", tv.default_special)
        special._set_special_token("eos", tv.default_special)
    special._set_special_token("unk", tv.default_special)
    tokens, types = padded_tokens(tv.by_id, vocab_size, lambda i, token: (
        token, gguf.TokenType.CONTROL if token in tv.special else gguf.TokenType.NORMAL))
    return GGUFVocab("gpt2", pre or PRE_TOKENIZER_REGEXES[tv.pattern], tokens, types, special)


def _has_tiktoken(root: Path) -> bool:
    from .tiktoken_vocab import find_tiktoken_file

    return find_tiktoken_file(root) is not None


#: tokenizer kind → (what the folder must hold, its description, the builder)
TOKENIZER_KINDS: dict[str, tuple[Any, str, Any]] = {
    "bpe": (lambda root: (root / "tokenizer.json").is_file(), "tokenizer.json", _build_bpe),
    "sentencepiece": (lambda root: (root / "tokenizer.model").is_file(), "tokenizer.model", _build_sentencepiece),
    "tiktoken": (_has_tiktoken, "qwen.tiktoken", build_tiktoken_vocab),
}


def export_vocab(root: Path, vocab_size: int, *, prefer: tuple[str, ...] = ("bpe", "sentencepiece"),
                 pre: str | None = None) -> GGUFVocab:
    """The GGUF vocabulary of a checkpoint, from the first tokenizer kind in `prefer` it ships."""
    for kind in prefer:
        present, _, build = TOKENIZER_KINDS[kind]
        if present(root):
            with _gc_paused():
                return build(root, vocab_size, pre)
    wanted = " or ".join(TOKENIZER_KINDS[k][1] for k in prefer)
    raise TokenizerError(f"no {wanted} in {root}")
