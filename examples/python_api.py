"""bitconv from Python: what the CLI does, as function calls (the CLI is a thin layer over these).

    .venv/bin/python examples/python_api.py --out demo-out
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import bitconv

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo-out")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    source = out / "qwen2-tiny"
    if not (source / "config.json").is_file():
        sys.path.insert(0, str(ROOT / "tests"))
        import fixtures

        fixtures.make_checkpoint(source, arch="qwen2", dtype="bf16", hidden=128, layers=2)

    # the plan only: every tensor's type and size, nothing read or written
    plan = bitconv.convert(source, to="gguf", quant="q4_0", out=out / "q4.gguf", dry_run=True)
    print(f"plan: {plan.n_tensors} tensors, {plan.type_counts}, ≈{plan.output_bytes / 2**20:.1f} MiB")

    # convert, inspect, validate
    result = bitconv.convert(source, to="gguf", quant="q8_0", out=out / "q8.gguf", force=True)
    print(f"converted: {result.output} sha256 {result.sha256[:16]}… in {result.seconds:.1f} s")
    summary = bitconv.inspect(result.output)
    print(f"inspect: {summary.metadata['general.architecture']}, {len(summary.tensors)} tensors")
    report = bitconv.validate(result.output, source)
    print(f"validate: {report.verdict}")
    assert report.passed

    # the hardware presets
    for t in bitconv.targets.TARGETS.values():
        print(f"target {t.name}: {t.format} for {t.runtime}")

    # ONNX, when the onnx extra is installed
    try:
        onnx_result = bitconv.convert(source, to="onnx", quant="int8", out=out / "onnx-int8", force=True)
        print(f"onnx: {onnx_result.output} ({onnx_result.quant})")
    except bitconv.BitconvError as e:
        print(f"onnx skipped: {e}")


if __name__ == "__main__":
    main()
