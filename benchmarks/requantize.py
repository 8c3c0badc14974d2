#!/usr/bin/env python3
"""Benchmark: ``bitconv quantize model-f16.gguf out.gguf q4_k_m`` vs llama.cpp's own
``llama_model_quantize`` (llama-cpp-python), both on all cores, same input, same invocation.

    python benchmarks/requantize.py --keep /tmp/qwen-bench            # synthetic Qwen2.5-1.5B shape
    python benchmarks/requantize.py --small --rounds 1                # quick smoke

The input is the f16 GGUF hf2gguf writes for the foundation benchmark's checkpoint
(benchmarks/convert.py: random bf16 weights, real Qwen tokenizer), written once. The two tools run
alternately, ``--rounds`` times each (the first round also warms the page cache); wall time, CPU
time and peak RSS of each process are measured in a fresh wrapper (benchmarks/convert.py's
``measure``). The outputs must be byte-identical; ratios are bitconv / llama.cpp.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convert as bench  # noqa: E402  (benchmarks/convert.py: checkpoint generator and measuring)

def main(argv: list[str] | None = None) -> int:
    ap = bench.quantize_arguments(__doc__)
    ap.add_argument("--keep", type=Path, help="generate the checkpoint and its f16 GGUF here (or reuse them)")
    ap.add_argument("--quant", default="q4_k_m")
    args = ap.parse_args(argv)

    from bitconv.quant.registry import get_quantizer

    ftype = get_quantizer(args.quant).file_type
    shape = bench.SMALL if args.small else bench.FULL
    with tempfile.TemporaryDirectory(prefix="bitconv-qbench-") as tmp:
        work = Path(tmp)
        base = args.keep or work
        model = bench.generate_checkpoint(base / "Qwen2.5-1.5B-synthetic", shape)
        f16 = base / f"{model.name}-f16.gguf"
        if not f16.is_file():
            made = bench.measure(bench.bitconv_command(model, "f16", f16) + ["--no-manifest"], None,
                                 work / "f16.log", args.timeout)
            if made.rc:
                print(bench.tail(made.log), file=sys.stderr)
                return 1
        ours, ref = work / "ours.gguf", work / "ref.gguf"
        runs: list[tuple[bench.Run, bench.Run]] = []
        for r in range(args.rounds):
            a = bench.measure([sys.executable, "-m", "bitconv", "quantize", str(f16), str(ours), args.quant,
                               "--no-manifest", "--quiet", "--force"], None, work / f"bitconv-{r}.log", args.timeout)
            b = bench.measure([*bench.llama_quantize_command(), str(f16), str(ref), str(ftype)], None,
                              work / f"llama-{r}.log", args.timeout)
            if a.rc or b.rc:
                print(bench.tail(a.log), bench.tail(b.log), file=sys.stderr)
                return 1
            if ours.read_bytes() != ref.read_bytes():
                print("outputs differ", file=sys.stderr)
                return 1
            runs.append((a, b))
            print(f"round {r}: bitconv {a.wall:.1f} s {a.maxrss_mib:.0f} MiB | llama_model_quantize {b.wall:.1f} s "
                  f"{b.maxrss_mib:.0f} MiB", file=sys.stderr)
        size = ours.stat().st_size
        print(f"\n| {args.quant} from f16 GGUF ({f16.stat().st_size / 1e9:.2f} GB), synthetic Qwen2.5-1.5B shape "
              "| wall s (rounds) | CPU s | peak RSS MiB |")
        print("|---|---|---|---|")
        for i, label in ((0, "bitconv quantize"), (1, "llama_model_quantize (llama-cpp-python 0.3.36)")):
            print(f"| {label} | {' / '.join(f'{p[i].wall:.1f}' for p in runs)} | "
                  f"{' / '.join(f'{p[i].cpu:.1f}' for p in runs)} | {max(p[i].maxrss_mib for p in runs):.0f} |")
        best_a, best_b = min(p[0].wall for p in runs), min(p[1].wall for p in runs)
        print(f"\noutputs byte-identical ({size / 1e9:.3f} GB); best wall ratio bitconv / llama.cpp: "
              f"{best_a / best_b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
