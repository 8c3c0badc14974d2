"""A GGUF vocabulary → Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json,
special_tokens_map.json, generation_config.json), without transformers: the reverse of tokenizer.py.

A byte-level BPE vocabulary (`tokenizer.ggml.model` "gpt2") becomes the tokenizer.json the model's
hub repo ships: a BPE model over the NORMAL tokens (in the byte alphabet) with the file's merges,
CONTROL tokens as special added tokens and USER_DEFINED ones as plain added tokens (both matched
whole, as llama.cpp does), the split regex `tokenizer.ggml.pre` names followed by ByteLevel, NFC for
the Qwen vocabularies (their tokenizer.json normalizes; llama.cpp does not, which differs only on
text that is not in NFC), `ignore_merges` where llama.cpp sets it (Llama 3), and BOS / EOS added by a
TemplateProcessing when the file's add_bos / add_eos flags say so. The `[PAD{id}]` fillers that
pad a vocabulary to the embedding's rows are left out, as the original tokenizer has no such
tokens. transformers' own GGUF tokenizer (AutoTokenizer.from_pretrained(dir, gguf_file=…)) is what
the tests compare against.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import gguf

from ..errors import TokenizerError
from .tokenizer import PRE_TOKENIZER_REGEXES

_REGEX_OF = {name: regex for regex, name in PRE_TOKENIZER_REGEXES.items()}
#: llama.cpp pre-tokenizer names that split text like one bitconv knows
PRE_ALIASES = {"llama3": "llama-bpe", "llama-v3": "llama-bpe", "falcon3": "llama-bpe", "smaug-bpe": "llama-bpe",
               "dbrx": "llama-bpe", "deepseek-r1-qwen": "qwen2", "megrez": "qwen2"}
#: GPT-2's own pre-tokenizer (llama.cpp's "default"): ByteLevel with its built-in regex
GPT2_PRES = ("default", "gpt2")
#: vocabularies whose hub tokenizer.json normalizes to NFC before splitting
NFC_PRES = ("qwen2", "qwen35")
#: vocabularies llama.cpp tokenizes with ignore_merges (a word that is a token is taken whole)
IGNORE_MERGES_PRES = ("llama-bpe",)
_PAD = re.compile(r"^\[PAD\d+\]$")
#: HF special token → its GGUF id key (tokenizer.ggml.<key>)
SPECIAL_ID_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}
TOKENIZER_OUTPUTS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def _byte_level() -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}


def _pre_tokenizer(pre: str) -> tuple[dict[str, Any], dict[str, Any] | None, bool]:
    """(pre_tokenizer, normalizer, ignore_merges) for llama.cpp's pre-tokenizer name."""
    if pre in GPT2_PRES:
        return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}, None, False
    name = PRE_ALIASES.get(pre, pre)
    regex = _REGEX_OF.get(name)
    if regex is None:
        known = sorted(set(_REGEX_OF) | set(PRE_ALIASES) | set(GPT2_PRES))
        raise TokenizerError(f"tokenizer.ggml.pre {pre!r}: bitconv cannot rebuild that pre-tokenizer as a "
                             f"tokenizer.json (known: {', '.join(known)})")
    split = {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
    pre_tok = {"type": "Sequence", "pretokenizers": [split, _byte_level()]}
    return pre_tok, ({"type": "NFC"} if name in NFC_PRES else None), name in IGNORE_MERGES_PRES


def _added(i: int, content: str, special: bool) -> dict[str, Any]:
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def _post_processor(bos: tuple[int, str] | None, eos: tuple[int, str] | None) -> dict[str, Any]:
    """ByteLevel, then BOS / EOS around each sequence when the GGUF says they are added."""
    if bos is None and eos is None:
        return _byte_level()

    def seq(which: str, type_id: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if bos is not None:
            items.append({"SpecialToken": {"id": bos[1], "type_id": type_id}})
        items.append({"Sequence": {"id": which, "type_id": type_id}})
        if eos is not None:
            items.append({"SpecialToken": {"id": eos[1], "type_id": type_id}})
        return items

    specials = {t: {"id": t, "ids": [i], "tokens": [t]} for i, t in (x for x in (bos, eos) if x is not None)}
    template = {"type": "TemplateProcessing", "single": seq("A", 0), "pair": seq("A", 0) + seq("B", 1),
                "special_tokens": specials}
    return {"type": "Sequence", "processors": [{**_byte_level(), "trim_offsets": False}, template]}


def _merges(meta: dict[str, Any]) -> list[list[str]]:
    merges = meta.get("tokenizer.ggml.merges")
    if not isinstance(merges, list) or not merges:
        raise TokenizerError("the GGUF's byte-level BPE vocabulary has no tokenizer.ggml.merges")
    out = []
    for m in merges:
        parts = m.split(" ") if isinstance(m, str) else []
        if len(parts) != 2 or not all(parts):
            raise TokenizerError(f"tokenizer.ggml.merges: malformed merge {m!r} (two tokens and one space expected)")
        out.append(parts)
    return out


def _special_id(meta: dict[str, Any], key: str, n: int) -> int | None:
    v = meta.get(f"tokenizer.ggml.{SPECIAL_ID_KEYS[key]}")
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < n:
        raise TokenizerError(f"tokenizer.ggml.{SPECIAL_ID_KEYS[key]} {v!r} is not a token id (the vocabulary has {n})")
    return v


def _chat_templates(meta: dict[str, Any]) -> Any:
    """The default template, or HF's list form when the GGUF also names others
    (`tokenizer.chat_template.<name>`)."""
    default = meta.get("tokenizer.chat_template")
    named = {k.split(".", 2)[2]: v for k, v in meta.items()
             if k.startswith("tokenizer.chat_template.") and isinstance(v, str)}
    if not named:
        return default if isinstance(default, str) else None
    items = ([{"name": "default", "template": default}] if isinstance(default, str) else [])
    return items + [{"name": k, "template": v} for k, v in named.items()]


def tokenizer_documents(meta: dict[str, Any], *, context_length: int | None = None) -> dict[str, dict[str, Any]]:
    """File name → JSON document of the Hugging Face tokenizer files the GGUF metadata describes."""
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise TokenizerError(f"tokenizer.ggml.model {model!r}: bitconv rebuilds byte-level BPE (gpt2) vocabularies "
                             "only" if model is not None else "the GGUF has no tokenizer (tokenizer.ggml.model)")
    tokens = meta.get("tokenizer.ggml.tokens")
    types = meta.get("tokenizer.ggml.token_type")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise TokenizerError("the GGUF has no token list (tokenizer.ggml.tokens)")
    if types is None:
        types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    if not isinstance(types, list) or len(types) != len(tokens):
        raise TokenizerError(f"tokenizer.ggml.token_type has {len(types) if isinstance(types, list) else 0} "
                             f"entries for {len(tokens)} tokens")
    pre = meta.get("tokenizer.ggml.pre", "default")
    pre_tok, normalizer, ignore_merges = _pre_tokenizer(str(pre))
    vocab: dict[str, int] = {}
    added: list[dict[str, Any]] = []
    for i, (tok, typ) in enumerate(zip(tokens, types)):
        if typ in (gguf.TokenType.NORMAL, gguf.TokenType.BYTE):
            vocab.setdefault(tok, i)
        elif typ == gguf.TokenType.USER_DEFINED:
            added.append(_added(i, tok, False))
        elif typ == gguf.TokenType.UNUSED and _PAD.match(tok):
            continue  # llama.cpp's filler up to the embedding's rows: not a token of the tokenizer
        else:  # CONTROL, UNKNOWN, other UNUSED tokens: whole, special
            added.append(_added(i, tok, True))
    n = len(tokens)
    ids = {k: _special_id(meta, k, n) for k in SPECIAL_ID_KEYS}
    names = {k: (tokens[i] if i is not None else None) for k, i in ids.items()}
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and ids["bos"] is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and ids["eos"] is not None
    tokenizer_json = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": normalizer,
        "pre_tokenizer": pre_tok,
        "post_processor": _post_processor((ids["bos"], names["bos"]) if add_bos else None,  # type: ignore[arg-type]
                                          (ids["eos"], names["eos"]) if add_eos else None),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": vocab, "merges": _merges(meta)},
    }
    config: dict[str, Any] = {
        "add_bos_token": add_bos, "add_eos_token": add_eos,
        "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                   "single_word", "special")} for a in added},
        **{f"{k}_token": names[k] for k in SPECIAL_ID_KEYS},
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if context_length:
        config["model_max_length"] = int(context_length)
    if (template := _chat_templates(meta)) is not None:
        config["chat_template"] = template
    special_map = {f"{k}_token": names[k] for k in SPECIAL_ID_KEYS if names[k] is not None}
    generation = {f"{k}_token_id": ids[k] for k in ("bos", "eos", "pad") if ids[k] is not None}
    return {"tokenizer.json": tokenizer_json, "tokenizer_config.json": config,
            "special_tokens_map.json": special_map, "generation_config.json": generation}


def write_tokenizer_files(meta: dict[str, Any], folder: Path, *, context_length: int | None = None) -> list[Path]:
    """Write the tokenizer files of `tokenizer_documents` into `folder`; returns their paths."""
    paths = []
    for name, doc in tokenizer_documents(meta, context_length=context_length).items():
        path = folder / name
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        paths.append(path)
    return paths
