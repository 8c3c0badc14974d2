"""sha256 of every artifact the determinism tests write, to prove a refactor changed no byte.

    python benchmarks/artifact_hashes.py --out before.json          # at the starting commit
    python benchmarks/artifact_hashes.py --compare before.json      # after: exit 1 on any difference

Uses only the public API (`bitconv.convert`) and the tests' fixture builders, so the same script
runs on both sides of a restructuring. The fixtures are seeded: the same folder names give the
same checkpoints, and the artifacts (GGUF of every type, ONNX of every type, every safetensors
layout) are converted with one thread into a scratch folder that is removed afterwards.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import bitconv  # noqa: E402
from bitconv.quant.registry import all_quantizers  # noqa: E402


def _files(result: Any) -> list[Path]:
    out = Path(result.output)
    if out.is_dir():
        return sorted(p for p in out.iterdir() if p.is_file() and p.name != "bitconv-manifest.json")
    return [out] + [Path(p) for p in (getattr(result, "kernel_config", None), getattr(result, "codegen", None)) if p]


def _jobs(root: Path) -> dict[str, Callable[[Path], Any]]:
    from fixtures import make_checkpoint
    from fixtures_bitnet import make_bitnet_checkpoint
    from fixtures_onebit import make_onebit_checkpoint

    onebit = make_onebit_checkpoint(root / "onebit")
    qwen2 = make_checkpoint(root / "qwen2", "qwen2", shards=2)
    moe = make_checkpoint(root / "moe", "qwen3moe")
    qwen3 = make_checkpoint(root / "qwen3", "qwen3")
    bitnet = make_bitnet_checkpoint(root / "bitnet", "master")
    qwen2_st = make_checkpoint(root / "qwen2st", "qwen2", hidden=128)

    def gguf(src: Path, quant: str) -> Callable[[Path], Any]:
        return lambda out: bitconv.convert(src, "gguf", quant, out.with_suffix(".gguf"), threads=1, manifest=False)

    def onnx(src: Path, quant: str) -> Callable[[Path], Any]:
        return lambda out: bitconv.convert(src, "onnx", quant, out, threads=1, manifest=False)

    def st(src: Path, fmt: str, quant: str | None = None, **kw: Any) -> Callable[[Path], Any]:
        return lambda out: bitconv.convert(src, "safetensors", out=out, format=fmt, quant=quant, threads=1,
                                           manifest=False, **kw)

    jobs: dict[str, Callable[[Path], Any]] = {}
    for q in (q.name for q in all_quantizers() if q.ggml_type is not None):
        jobs[f"onebit-{q}"] = gguf(onebit, q)
    jobs["qwen2-q4_k_m"] = gguf(qwen2, "q4_k_m")
    jobs["moe-q8_0"] = gguf(moe, "q8_0")
    for q in ("f32", "f16", "int8", "int4"):
        jobs[f"qwen3-onnx-{q}"] = onnx(qwen3, q)
    jobs["bitnet-onnx-int2"] = onnx(bitnet, "int2")
    jobs["bitnet-packed"] = st(bitnet, "bitnet-packed")
    jobs["ct-int4"] = st(qwen2_st, "compressed-tensors", "int4")
    jobs["ct-int8"] = st(qwen2_st, "compressed-tensors", "int8")
    jobs["bnb-nf4"] = st(qwen2_st, "bnb-nf4")
    jobs["bnb-int8"] = st(qwen2_st, "bnb-int8")
    jobs["rounded-f16"] = st(qwen2_st, "rounded", "f16", max_shard_size="1MB")
    return jobs


def artifact_hashes() -> dict[str, str]:
    root = Path(tempfile.mkdtemp(prefix="bitconv-hashes-"))
    try:
        hashes: dict[str, str] = {}
        for label, run in _jobs(root / "src").items():
            out = root / "out" / label
            out.parent.mkdir(parents=True, exist_ok=True)
            for f in _files(run(out)):
                hashes[f"{label}/{f.name}"] = hashlib.sha256(f.read_bytes()).hexdigest()
        return hashes
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", type=Path, help="write the hashes to this JSON file")
    g.add_argument("--compare", type=Path, help="compare with hashes recorded earlier")
    args = ap.parse_args()
    hashes = artifact_hashes()
    if args.out:
        args.out.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
        print(f"{len(hashes)} artifacts hashed -> {args.out}")
        return 0
    want = json.loads(args.compare.read_text())
    differ = sorted(k for k in set(want) | set(hashes) if want.get(k) != hashes.get(k))
    for k in differ:
        print(f"DIFFERS {k}: {want.get(k)} -> {hashes.get(k)}")
    print(f"{len(hashes)} artifacts, {len(differ)} differ from {args.compare}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
