"""A tiktoken rank file (Qwen-1's `qwen.tiktoken`) → the tokens, types and merges of a GGUF
byte-level BPE vocabulary, without tiktoken and without the model's remote tokenizer code
(tokenizer.build_tiktoken_vocab adds the special ids and writes it as a `gpt2` vocabulary).

As llama.cpp's converter builds it (`_set_vocab_qwen`): each rank's bytes become a token in GPT-2's
byte → unicode spelling, id = rank; each multi-byte token's merge is the byte-pair encoding of its
bytes with only lower-ranked merges allowed, which leaves exactly two parts. The special tokens,
which live in the model's remote code on the hub, come from a table of the tiktoken files bitconv
knows (Qwen-1's: `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<|extra_0|>` … `<|extra_204|>`
from id 151643); they are CONTROL tokens, unused ids up to the config's vocab_size are `[PAD{i}]`.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import TokenizerError


@dataclass(frozen=True)
class TiktokenSpec:
    """What a model's remote tokenizer code adds to its tiktoken file."""

    special_tokens: tuple[str, ...]
    special_start: int  # the id of special_tokens[0]; the rest follow
    pattern: str  # the code's split regex (tiktoken's pat_str), one llama.cpp names (PRE_TOKENIZER_REGEXES)
    default_special: str  # bos / eos (when config.json names none) and unk

    @property
    def added(self) -> dict[str, int]:
        return {t: self.special_start + i for i, t in enumerate(self.special_tokens)}


#: tiktoken files bitconv knows, by file name
TIKTOKEN_FILES: dict[str, TiktokenSpec] = {
    "qwen.tiktoken": TiktokenSpec(  # Qwen (1): tokenization_qwen.py's SPECIAL_TOKENS
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>") + tuple(f"<|extra_{i}|>" for i in range(205)),
        151643,
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        "<|endoftext|>"),
}


def find_tiktoken_file(root: Path) -> Path | None:
    return next((root / n for n in TIKTOKEN_FILES if (root / n).is_file()), None)


def tiktoken_encode(path: Path, text: str) -> list[int]:
    """`text`'s ids as the model's own tokenizer code gives them (NFC, then tiktoken with every
    special token allowed); needs the `tiktoken` package."""
    import unicodedata

    import tiktoken

    spec = TIKTOKEN_FILES[path.name]
    enc = tiktoken.Encoding(path.stem, pat_str=spec.pattern, mergeable_ranks=vocab_and_merges(path)[0],
                            special_tokens=spec.added)
    return enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read ({e.strerror or e})") from e


def read_tiktoken_ranks(path: Path, raw: bytes | None = None) -> dict[bytes, int]:
    """Token bytes → rank, in file order (one `base64 rank` pair per line); `raw`: the file's bytes
    when already read."""
    raw = _read(path) if raw is None else raw
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (ValueError, binascii.Error):
            raise TokenizerError(f"{path}: line {n} is not `<base64 token> <rank>`") from None
        if not token or rank < 0 or token in ranks:
            raise TokenizerError(f"{path}: line {n}: empty or repeated token, or negative rank")
        ranks[token] = rank
    if not ranks:
        raise TokenizerError(f"{path}: no ranks")
    if len(set(ranks.values())) != len(ranks):
        raise TokenizerError(f"{path}: two tokens share a rank")
    return ranks


@functools.cache
def _byte_spelling() -> dict[int, str]:
    """GPT-2's byte → printable character table (transformers' `bytes_to_unicode`), keyed by the
    latin-1 code point of each byte, for str.translate."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def spell(token: bytes) -> str:
    """A token's bytes as byte-level BPE writes them (space → Ġ, …)."""
    return token.decode("latin-1").translate(_byte_spelling())


def merge_parts(ranks: dict[bytes, int], token: bytes, rank: int) -> list[bytes]:
    """The byte-pair encoding of `token` using only merges ranked below `rank`. For a real rank
    file that is two parts: the merge that makes `token`. Once two parts remain, the only merge left
    would make `token` itself, so the loop stops there."""
    get = ranks.get
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, at = rank, -1
        for i in range(len(parts) - 1):
            r = get(parts[i] + parts[i + 1])
            if r is not None and r < best:
                best, at = r, i
        if at < 0:
            break
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    return parts


#: the last rank file's (sha256, (ranks, vocab, merges))
_last: list[tuple[bytes, tuple[dict[bytes, int], dict[str, int], list[str]]]] = []


def vocab_and_merges(path: Path) -> tuple[dict[bytes, int], dict[str, int], list[str]]:
    """The ranks, the spelled vocabulary and the merges of a rank file. The last file's are kept (by
    content): converting one checkpoint to several types (a batch) merges its 151k ranks once.
    Callers must not modify what they get."""
    raw = _read(path)
    digest = hashlib.sha256(raw).digest()
    if _last and _last[0][0] == digest:
        return _last[0][1]
    ranks = read_tiktoken_ranks(path, raw)
    result = (ranks, *bpe_vocab_and_merges(ranks, path))
    _last[:] = [(digest, result)]
    return result


def bpe_vocab_and_merges(ranks: dict[bytes, int], path: Path) -> tuple[dict[str, int], list[str]]:
    """Spelled token → id, and the merges in file order (`"left right"`)."""
    vocab: dict[str, int] = {}
    merges: list[str] = []
    for token, rank in ranks.items():
        vocab[spell(token)] = rank
        if len(token) == 1:
            continue
        parts = merge_parts(ranks, token, rank)
        if len(parts) != 2:
            raise TokenizerError(f"{path}: rank {rank} ({token!r}) is not the merge of two lower-ranked tokens "
                                 "(not a BPE rank file)")
        merges.append(f"{spell(parts[0])} {spell(parts[1])}")
    return vocab, merges


@dataclass
class TiktokenVocab:
    """A rank file's GGUF vocabulary before padding: id → token (its spelled ranks and the spec's
    special tokens), the special ones, the merges, the id of the spec's default special token, and
    the split regex."""

    by_id: dict[int, str]
    special: frozenset[str]
    merges: list[str]
    default_special: int
    pattern: str


def tiktoken_vocab(path: Path, vocab_size: int) -> TiktokenVocab:
    """The vocabulary of `path` (a file TIKTOKEN_FILES names) with its special tokens."""
    spec = TIKTOKEN_FILES[path.name]
    ranks, vocab, merges = vocab_and_merges(path)
    top = max(ranks.values(), default=-1)
    last_special = spec.special_start + len(spec.special_tokens) - 1
    if max(top, last_special) >= vocab_size:
        raise TokenizerError(f"{path.name} has ids up to {max(top, last_special)} (its special tokens included) "
                             f"but config.json vocab_size is {vocab_size}")
    added = spec.added
    by_id = {i: t for t, i in {**vocab, **added}.items()}
    return TiktokenVocab(by_id, frozenset(added), list(merges), added[spec.default_special], spec.pattern)
