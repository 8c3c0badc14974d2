"""Shared runner of the fuzz harnesses: seed corpora built from the test fixtures, a per-process
scratch folder, and the libFuzzer limits every parser must live within.

A harness module defines `NAME`, `TestOneInput(data)` and `seed_inputs(seeds)`. Only `BitconvError`
may escape a parser; anything else, a hang over 2 s or RSS over 512 MiB is a crash (libFuzzer
saves the input under build/fuzz/crashes/<harness>/). Everything generated lives under the
git-ignored build/fuzz/.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import json
import os
import re
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, ContextManager

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "fuzz"
TIMEOUT_S = 2
RSS_LIMIT_MB = 512
#: longest input libFuzzer builds: headers and metadata, not tensor data, are what the parsers read
MAX_LEN = 16384
#: bump when the seed recipe changes; the on-disk seed cache is keyed by it
SEEDS_VERSION = "v2"
SMALL_VOCAB = 64  # seeds' vocabulary: KB-sized GGUF files, not the fixtures' 151k tokens


@functools.cache
def scratch() -> Path:
    """A per-process folder the harness rewrites for every input: <memory fs or build/fuzz>/scratch/<pid>/
    (in memory, a busy disk does not set the pace). libFuzzer ends the process with exit(), past
    Python's atexit, so folders of processes that are gone are removed by the next one."""
    from bitconv.formats.atomic import pid_alive  # called from TestOneInput: after the instrumented imports

    shm = Path("/dev/shm")
    root = (shm / "bitconv-fuzz" if shm.is_dir() and os.access(shm, os.W_OK) else BUILD) / "scratch"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if old.name.isdigit() and not pid_alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    d = root / str(os.getpid())
    d.mkdir(exist_ok=True)
    atexit.register(shutil.rmtree, d, True)
    return d


def put(folder: Path, files: dict[str, bytes]) -> Path:
    """Make `folder` hold exactly `files` (name → bytes): leftovers of the previous input go."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.name not in files:
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


# --- seeds from the test fixtures ---------------------------------------------------------------

def _fixtures_on_path() -> None:
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


def _pb_fields(buf: bytes) -> list[tuple[int, int, bytes]]:
    """Top-level protobuf fields as (number, wire type, raw bytes of key + value)."""
    out, pos = [], 0

    def varint(p: int) -> tuple[int, int]:
        v = s = 0
        while True:
            b = buf[p]
            p += 1
            v |= (b & 0x7F) << s
            s += 7
            if not b & 0x80:
                return v, p

    while pos < len(buf):
        start = pos
        key, pos = varint(pos)
        wire = key & 7
        if wire == 0:
            _, pos = varint(pos)
        elif wire == 2:
            n, pos = varint(pos)
            pos += n
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        out.append((key >> 3, wire, buf[start:pos]))
    return out


def small_sentencepiece(model: bytes, n: int = SMALL_VOCAB) -> bytes:
    """The fixture's SentencePiece model cut to its first `n` pieces and trainer spec (the
    normalizer's 200 KB char map goes)."""
    kept, pieces = [], 0
    for field, _, raw in _pb_fields(model):
        if field == 1:
            pieces += 1
            if pieces > n:
                continue
        elif field == 3:
            continue
        kept.append(raw)
    return b"".join(kept)


def small_tokenizer_json(tok: dict, n: int = 320, merges: int = 64) -> dict:
    """A fixture tokenizer.json with its vocabulary cut to the first `n` ids (added tokens renumbered after)."""
    tok = json.loads(json.dumps(tok))
    model = tok["model"]
    model["vocab"] = {t: i for t, i in model["vocab"].items() if i < n}
    model["merges"] = model["merges"][:merges]
    for j, a in enumerate(tok.get("added_tokens") or []):
        a["id"] = n + j
    return tok


def _all_value_types_gguf(path: Path) -> None:
    """A header-sized GGUF with a key of every value type, nested arrays and tiny tensors (the
    converted seeds spend most of their bytes on tensor data the reader never looks at)."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    for i, (vtype, value) in enumerate([
            (gguf.GGUFValueType.UINT8, 7), (gguf.GGUFValueType.INT8, -7), (gguf.GGUFValueType.UINT16, 700),
            (gguf.GGUFValueType.INT16, -700), (gguf.GGUFValueType.UINT32, 32), (gguf.GGUFValueType.INT32, -32),
            (gguf.GGUFValueType.FLOAT32, 0.5), (gguf.GGUFValueType.BOOL, True), (gguf.GGUFValueType.STRING, "s"),
            (gguf.GGUFValueType.UINT64, 1 << 40), (gguf.GGUFValueType.INT64, -(1 << 40)),
            (gguf.GGUFValueType.FLOAT64, 0.25)]):
        w.add_key_value(f"t.{i}", value, vtype)
    w.add_array("a.ints", list(range(20)))
    w.add_array("a.floats", [0.5, 1.5])
    w.add_array("a.strings", [f"tok{i}" for i in range(20)])
    w.add_array("a.bools", [True, False])
    w.add_array("a.nested", [[1, 2], [3]])
    w.add_uint32("general.alignment", 32)
    w.add_tensor("a", np.zeros((2, 32), dtype=np.float32))
    w.add_tensor("b", np.zeros(32, dtype=np.float16))
    w.add_tensor("q", np.zeros((1, 34), dtype=np.uint8), raw_shape=(1, 34), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _build_seeds(out: Path) -> None:
    """Tiny 1bitLLM-style checkpoint (fixtures_onebit) with a 64-token vocabulary, converted by
    bitconv to several GGUF types; the Qwen and Llama 3 fixture tokenizers, cut down."""
    _fixtures_on_path()
    from safetensors.torch import load_file, save_file

    import bitconv
    from bitconv.errors import BitconvError
    from fixtures import qwen_tokenizer_files
    from fixtures_bitnet import llama3_tokenizer_files
    from fixtures_onebit import make_onebit_checkpoint

    work = Path(tempfile.mkdtemp(prefix="seeds-", dir=out.parent))
    try:
        ckpt = make_onebit_checkpoint(work / "onebit", dtype="bf16", hidden=128, intermediate=256, layers=1,
                                      heads=2, kv_heads=1)
        state = load_file(str(ckpt / "model.safetensors"))
        state = {k: (v[:SMALL_VOCAB] if "embed_tokens" in k else v) for k, v in state.items()}
        save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg["vocab_size"] = SMALL_VOCAB
        (ckpt / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        (ckpt / "tokenizer.model").write_bytes(small_sentencepiece((ckpt / "tokenizer.model").read_bytes()))
        shutil.rmtree(work / "onebit.hf", ignore_errors=True)

        gguf_dir = out / "gguf"
        gguf_dir.mkdir(parents=True)
        for quant in ("i2_s", "tl1", "q8_0"):
            dest = work / f"m-{quant}.gguf"
            try:
                bitconv.convert(str(ckpt), "gguf", quant, dest, manifest=False)
            except BitconvError:
                continue
            (gguf_dir / f"{quant}.gguf").write_bytes(dest.read_bytes())

        _all_value_types_gguf(gguf_dir / "all-value-types.gguf")

        st = out / "safetensors"
        st.mkdir()
        small = {k: v for k, v in state.items() if v.numel() <= 256}  # norms: a real header, little data
        save_file(small, str(st / "norms.safetensors"), metadata={"format": "pt"})
        save_file({k: v.float() for k, v in list(small.items())[:2]}, str(st / "two.safetensors"))
        names = sorted(small)
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in small.values())},
                 "weight_map": {n: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, n in enumerate(names)}}
        (st / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

        tok = out / "tokenizer"
        tok.mkdir()
        (tok / "config.json").write_bytes((ckpt / "config.json").read_bytes())
        (tok / "tokenizer.model").write_bytes((ckpt / "tokenizer.model").read_bytes())
        (tok / "onebit.tokenizer_config.json").write_bytes((ckpt / "tokenizer_config.json").read_bytes())
        for label, folder in (("qwen", qwen_tokenizer_files()), ("llama3", llama3_tokenizer_files())):
            (tok / f"{label}.tokenizer.json").write_text(
                json.dumps(small_tokenizer_json(json.loads((folder / "tokenizer.json").read_text()))))
            tc = json.loads((folder / "tokenizer_config.json").read_text())
            tc["added_tokens_decoder"] = dict(list((tc.get("added_tokens_decoder") or {}).items())[:8])
            (tok / f"{label}.tokenizer_config.json").write_text(json.dumps(tc))
        (tok / "added_tokens.json").write_text(json.dumps({"<extra_0>": 60, "<extra_1>": 61}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def seed_dir() -> Path:
    """The fixture-derived seed files (built once per checkout, ~15 s; cached under build/fuzz/)."""
    final = BUILD / f"seeds-{SEEDS_VERSION}"
    if (final / ".complete").is_file():
        return final
    BUILD.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".seeds-build-", dir=BUILD))
    try:
        _build_seeds(tmp)
        (tmp / ".complete").touch()
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_corpus(name: str, seed_inputs: Callable[[Path], list[bytes]]) -> Path:
    """build/fuzz/seeds-<v>/corpus/<name>/: the harness's seed inputs, one file each."""
    corpus = seed_dir() / "corpus" / name
    if not corpus.is_dir():
        tmp = corpus.with_name(corpus.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for i, data in enumerate(seed_inputs(seed_dir())):
            (tmp / f"seed-{i:03d}").write_bytes(data)
        tmp.rename(corpus)
    return corpus


def mode_prefixed(mode: int, data: bytes) -> bytes:
    return struct.pack("B", mode) + data


# --- structure-aware edits ---------------------------------------------------------------------

def fuzzed_json_value(fdp: Any, depth: int = 0) -> object:
    """A JSON value of a shape a parser may not expect: huge or negative ints, floats, deep nesting."""
    kind = fdp.ConsumeIntInRange(0, 10)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeIntInRange(-(1 << 64), 1 << 64)
    if kind == 3:
        return fdp.PickValueInList([0, -1, 1, 2**31, 2**63, 2**64, 10**30, 3, 8, 64])
    if kind == 4:
        return fdp.ConsumeRegularFloat()
    if kind == 5:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 16))
    if kind == 6:
        return fdp.PickValueInList(["", "F32", "BF16", "U8", "BPE", "Split", "Sequence", "ByteLevel", "..", "/",
                                    "gguf", "onnx", "q8_0", "bitnet-x86", "<|im_end|>", "a\x00b"])
    if kind == 7 and depth < 4:
        return [fuzzed_json_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if kind == 8 and depth < 4:
        return {fdp.ConsumeUnicodeNoSurrogates(4): fuzzed_json_value(fdp, depth + 1)
                for _ in range(fdp.ConsumeIntInRange(0, 3))}
    if kind == 9:  # nesting deeper than Python's recursion limit: spliced in as text by json_patch
        return f"\0DEEP{fdp.ConsumeIntInRange(0, 5000)}"
    return fdp.ConsumeIntInRange(0, 1 << 20)


def json_patch(data: bytes, docs: list[object]) -> bytes:
    """A valid seed document with a few values replaced or added at fuzzer-chosen places:
    byte mutations of JSON mostly break the syntax, these keep it and change the shapes."""
    import atheris

    fdp = atheris.FuzzedDataProvider(data)
    doc = json.loads(json.dumps(docs[fdp.ConsumeIntInRange(0, len(docs) - 1)]))
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        node, parent, key = doc, None, None
        for _ in range(fdp.ConsumeIntInRange(1, 6)):
            if isinstance(node, dict) and node:
                parent, key = node, fdp.PickValueInList(sorted(node))
            elif isinstance(node, list) and node:
                parent, key = node, fdp.ConsumeIntInRange(0, len(node) - 1)
            else:
                break
            node = parent[key]
        value = fuzzed_json_value(fdp)
        if parent is None:
            doc = value
        elif isinstance(parent, dict) and fdp.ConsumeBool():
            parent[fdp.ConsumeUnicodeNoSurrogates(8)] = value
        else:
            parent[key] = value
    return re.sub(r'"\\u0000DEEP(\d+)"', lambda m: "[" * int(m[1]) + "]" * int(m[1]), json.dumps(doc)).encode()


# --- running ------------------------------------------------------------------------------------

def instrumented(enabled: bool) -> ContextManager[object]:
    """Around a harness's imports: coverage-instrument bitconv (and gguf-py, whose SpecialVocab
    parses tokenizer files for bitconv) when the harness runs under libFuzzer, not when a test
    imports it."""
    if not enabled:
        return contextlib.nullcontext()
    import atheris

    return atheris.instrument_imports(include=["bitconv", "gguf"])


#: libFuzzer dictionary entries: JSON syntax and values that are edge cases for the readers
JSON_TOKENS = (b"{", b"}", b"[", b"]", b'"', b":", b",", b"null", b"true", b"false", b"-1", b"0", b"1e999",
               b"18446744073709551616", b"9223372036854775807", b"-0.0", b"\\u0000", b"\\ud800", b'"id"',
               b'"content"', b'"special"', b'"dtype"', b'"shape"', b'"data_offsets"', b'"weight_map"',
               b'"__metadata__"', b'"added_tokens"', b'"added_tokens_decoder"', b'"model"', b'"vocab"',
               b'"merges"', b'"pre_tokenizer"', b'"post_processor"', b'"processors"', b'"Sequence"',
               b'"quantization_config"', b'"config_groups"', b'"../x"', b'"/etc/passwd"')


def _dict_file(name: str, tokens: tuple[bytes, ...]) -> Path:
    path = BUILD / f"{name}.dict"

    def esc(t: bytes) -> str:
        return "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}" for b in t)

    BUILD.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f'"{esc(t)}"\n' for t in tokens))
    return path


def main(name: str, test_one_input: Callable[[bytes], None], seed_inputs: Callable[[Path], list[bytes]],
         argv: list[str] | None = None, max_len: int = MAX_LEN, dictionary: tuple[bytes, ...] = ()) -> None:
    """`python -m fuzz.fuzz_<x> [--seconds N | --runs N]`: libFuzzer over the seed corpus, with the
    2 s / 512 MiB limits; new coverage is kept in build/fuzz/corpus/<name>/, crashes in
    build/fuzz/crashes/<name>/."""
    import atheris

    ap = argparse.ArgumentParser(prog=f"fuzz.{name}")
    ap.add_argument("--seconds", type=int, default=60, help="run this long (default 60)")
    ap.add_argument("--runs", type=int, default=None, help="run this many inputs instead")
    ap.add_argument("--seed", type=int, default=1, help="libFuzzer -seed (deterministic smoke runs)")
    ap.add_argument("--no-keep", action="store_true", help="do not grow build/fuzz/corpus/ (CI smoke)")
    args, extra = ap.parse_known_args(argv)
    seeds = write_corpus(name, seed_inputs)
    crashes = BUILD / "crashes" / name
    crashes.mkdir(parents=True, exist_ok=True)
    # libFuzzer writes the inputs that add coverage to the first folder: never the seeds'
    if args.no_keep:
        shutil.rmtree(BUILD / "tmp" / name, ignore_errors=True)
        grown = BUILD / "tmp" / name
    else:
        grown = BUILD / "corpus" / name
    grown.mkdir(parents=True, exist_ok=True)
    dirs = [str(grown), str(seeds)]
    limit = [f"-runs={args.runs}"] if args.runs is not None else [f"-max_total_time={args.seconds}"]
    flags = [f"-timeout={TIMEOUT_S}", f"-rss_limit_mb={RSS_LIMIT_MB}", f"-max_len={max_len}", f"-seed={args.seed}",
             f"-artifact_prefix={crashes}/", "-print_final_stats=1", *limit, *extra]
    if dictionary:
        flags.append(f"-dict={_dict_file(name, dictionary)}")
    atheris.Setup([sys.argv[0], *flags, *dirs], test_one_input)
    atheris.Fuzz()
