"""Same input + options → the same bytes, for every output format and quant type, whatever the thread
count, the slab size large tensors are read in, and the order the shards are listed and laid out in.

Each test converts a checkpoint once with one thread, then rewrites the checkpoint in place as
differently cut shards (the same tensors in the same order, an index whose entries are shuffled,
files written in reverse order) and converts again with two threads and tiny slabs (every tensor
is then read and encoded a few rows at a time); every output file must be byte-identical, and the
manifests must record the same inputs' tensors, options and outputs.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable

import pytest

import bitconv
from bitconv.formats import gguf_writer
from bitconv.formats.onnx import weights as onnx_weights
from bitconv.formats.safetensors import writer as st_writer
from bitconv.formats.manifest import manifest_path_for
from bitconv.quant.registry import all_quantizers
from fixtures import make_checkpoint
from fixtures_bitnet import make_bitnet_checkpoint
from fixtures_onebit import make_onebit_checkpoint

GGUF_TYPES = [q.name for q in all_quantizers() if q.ggml_type is not None]
TERNARY_TYPES = [q.name for q in all_quantizers() if q.ternary]


def reshard_in_place(root: Path, pieces: int = 2, seed: int = 0) -> None:
    """Cut each shard of the checkpoint into `pieces` files, keeping the order bitconv reads tensors
    in (shard files by name, names within a shard), as llama.cpp's converter does; the index lists
    its entries in random order and the files are written last-first."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    old = sorted(root.glob("*.safetensors"))
    groups: list[list[tuple[str, Any]]] = []
    for f in old:
        with safe_open(f, framework="pt") as st:
            tensors = [(name, st.get_tensor(name)) for name in sorted(st.keys())]
        per = -(-len(tensors) // pieces)
        groups += [tensors[i:i + per] for i in range(0, len(tensors), per)]
    for f in old:
        f.unlink()
    (root / "model.safetensors.index.json").unlink(missing_ok=True)
    names = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    for name, group in reversed(list(zip(names, groups))):
        save_file(dict(group), str(root / name), metadata={"format": "pt"})
    weight_map = [(t, name) for name, group in zip(names, groups) for t, _ in group]
    random.Random(seed).shuffle(weight_map)
    total = sum(int(t.numel() * t.element_size()) for group in groups for _, t in group)
    index = {"metadata": {"total_size": total}, "weight_map": dict(weight_map)}
    (root / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")


def tiny_slabs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large-tensor slabs of 4 KiB: every tensor is then read and encoded a few rows at a time."""
    monkeypatch.setattr(gguf_writer, "SLAB_BYTES", 4096)
    monkeypatch.setattr(onnx_weights, "SLAB_BYTES", 4096)
    monkeypatch.setattr(st_writer, "SLAB_BYTES", 4096)


def output_files(result: Any) -> dict[str, bytes]:
    """Every file a conversion wrote but its manifest (which names the input shards)."""
    out = Path(result.output)
    files = [out] + [Path(p) for p in (getattr(result, "kernel_config", None), getattr(result, "codegen", None)) if p]
    if out.is_dir():
        files = sorted(p for p in out.iterdir() if p.is_file() and p.name != "bitconv-manifest.json")
    return {p.name: p.read_bytes() for p in files}


def manifest_view(result: Any) -> dict[str, Any]:
    doc = json.loads(manifest_path_for(Path(result.output)).read_text())
    doc["options"].pop("threads")
    return {"options": doc["options"], "outputs": doc["outputs"], "version": doc["bitconv_version"]}


def assert_deterministic(src: Path, out: Path, jobs: dict[str, Callable[[Path, int], Any]],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    first = {}
    for label, run in jobs.items():
        r = run(out / f"a-{label}", 1)
        first[label] = (output_files(r), manifest_view(r))
    reshard_in_place(src)
    tiny_slabs(monkeypatch)
    differ = []
    for label, run in jobs.items():
        r = run(out / f"b-{label}", 2)
        files, manifest = output_files(r), manifest_view(r)
        want_files, want_manifest = first[label]
        renamed = {k.replace("b-", "a-", 1): v for k, v in files.items()}
        if renamed != want_files:
            differ.append(f"{label}: files differ "
                          f"({sorted(k for k in want_files if renamed.get(k) != want_files[k])})")
        elif [o["sha256"] for o in manifest["outputs"]] != [o["sha256"] for o in want_manifest["outputs"]]:
            differ.append(f"{label}: manifest outputs differ")
        elif manifest["options"] != want_manifest["options"]:
            differ.append(f"{label}: manifest options differ")
    assert not differ, differ


def gguf_job(src: Path, quant: str) -> Callable[[Path, int], Any]:
    return lambda out, threads: bitconv.convert(src, "gguf", quant, out.with_name(out.name + ".gguf"),
                                                threads=threads)


@pytest.mark.slow
def test_gguf_every_type_onebit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every GGUF type on the 1bitLLM-style fixture (small SentencePiece vocabulary; bf16 master
    weights, so ternary types take the absmean scale from a first pass over the slabs, the others
    store s·W_t)."""
    src = make_onebit_checkpoint(tmp_path / "onebit")
    reshard_in_place(src, 2, seed=1)  # two shards to start from
    jobs = {q: gguf_job(src, q) for q in GGUF_TYPES}
    assert_deterministic(src, tmp_path, jobs, monkeypatch)


@pytest.mark.slow
def test_gguf_qwen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Qwen2 (two shards from save_pretrained) and Qwen3-MoE (stacked experts) on the real vocabulary."""
    qwen2 = make_checkpoint(tmp_path / "qwen2", "qwen2", shards=2)
    moe = make_checkpoint(tmp_path / "moe", "qwen3moe")
    jobs = {"qwen2-q4_k_m": gguf_job(qwen2, "q4_k_m"), "moe-q8_0": gguf_job(moe, "q8_0")}
    first = {}
    for label, run in jobs.items():
        r = run(tmp_path / f"a-{label}", 1)
        first[label] = output_files(r)
    for src in (qwen2, moe):
        reshard_in_place(src)
    tiny_slabs(monkeypatch)
    for label, run in jobs.items():
        files = output_files(run(tmp_path / f"b-{label}", 2))
        assert list(files.values()) == list(first[label].values()), label


@pytest.mark.slow
def test_onnx_every_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    qwen = make_checkpoint(tmp_path / "qwen3", "qwen3")

    def onnx_job(src: Path, quant: str) -> Callable[[Path, int], Any]:
        return lambda out, threads: bitconv.convert(src, "onnx", quant, out, threads=threads)

    jobs = {q: onnx_job(qwen, q) for q in ("f32", "f16", "int8", "int4")}
    assert_deterministic(qwen, tmp_path, jobs, monkeypatch)


@pytest.mark.slow
def test_onnx_int2_and_bitnet_packed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_bitnet_checkpoint(tmp_path / "bitnet", "master")
    jobs = {
        "onnx-int2": lambda out, threads: bitconv.convert(src, "onnx", "int2", out, threads=threads),
        "bitnet-packed": lambda out, threads: bitconv.convert(src, "safetensors", out=out, format="bitnet-packed",
                                                              threads=threads),
    }
    assert_deterministic(src, tmp_path, jobs, monkeypatch)


@pytest.mark.slow
def test_safetensors_every_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    qwen = make_checkpoint(tmp_path / "qwen2", "qwen2", hidden=128)

    def st_job(fmt: str, quant: str | None = None, **kw: Any) -> Callable[[Path, int], Any]:
        return lambda out, threads: bitconv.convert(qwen, "safetensors", out=out, format=fmt, quant=quant,
                                                    threads=threads, **kw)

    jobs = {"ct-int4": st_job("compressed-tensors", "int4"), "ct-int8": st_job("compressed-tensors", "int8"),
            "bnb-nf4": st_job("bnb-nf4"), "bnb-int8": st_job("bnb-int8"),
            "rounded-f16": st_job("rounded", "f16", max_shard_size="1MB")}
    assert_deterministic(qwen, tmp_path, jobs, monkeypatch)


def test_every_type_is_covered() -> None:
    """A new quant type must join the tests above (the lists are read from the registry)."""
    assert {"i2_s", "tl1", "tl2", "tq1_0", "tq2_0"} <= set(TERNARY_TYPES) <= set(GGUF_TYPES)
    assert {"q8_0", "q4_k_m", "q2_k", "bf16"} <= set(GGUF_TYPES)
