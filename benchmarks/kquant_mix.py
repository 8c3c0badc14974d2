#!/usr/bin/env python3
"""Benchmark: ``bitconv hf2gguf --quant q4_k_m`` in one pass vs llama.cpp's two steps
(``convert_hf_to_gguf.py --outtype bf16`` — or f16 with ``--outtype f16`` — then ``llama_model_quantize``
to Q4_K_M); from a bf16 intermediate the two files must be byte-identical.

    python benchmarks/kquant_mix.py --keep /tmp/qwen-bench          # synthetic Qwen2.5-1.5B shape
    python benchmarks/kquant_mix.py --keep /tmp/qwen-bench --quant q5_k_m --rounds 1
    python benchmarks/kquant_mix.py --small                          # quick smoke

The checkpoint is the foundation benchmark's (benchmarks/convert.py: random bf16 weights, real
Qwen tokenizer). Both tools run alternately in the same invocation, ``--rounds`` times each (the
first round also warms the page cache); wall time, CPU time and peak RSS of every process are
measured in a fresh wrapper (benchmarks/convert.py's ``measure``). The two-step flow's wall time
is the sum of its steps and its peak RSS the larger one; the f16 intermediate file counts toward
its disk use. Ratios are bitconv / two-step from the same invocation.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convert as bench  # noqa: E402  (benchmarks/convert.py: checkpoint generator and measuring)

def main(argv: list[str] | None = None) -> int:
    ap = bench.quantize_arguments(__doc__)
    ap.add_argument("--keep", type=Path, help="generate the checkpoint here (or reuse it)")
    ap.add_argument("--quant", default="q4_k_m", help="bitconv mix name (default q4_k_m)")
    ap.add_argument("--outtype", default="bf16", choices=["bf16", "f16"],
                    help="the two-step flow's intermediate (bf16: the outputs must be byte-identical; f16 rounds "
                         "bf16 values below f16's normal range)")
    args = ap.parse_args(argv)

    import llamacpp_oracle as oracle

    from bitconv.quant.registry import get_quantizer

    q = get_quantizer(args.quant)
    if q.llama_ftype is None:
        ap.error(f"{args.quant} is not a llama-quantize file type")
    shape = bench.SMALL if args.small else bench.FULL
    with tempfile.TemporaryDirectory(prefix="bitconv-kbench-") as tmp:
        work = Path(tmp)
        model = bench.generate_checkpoint(args.keep or work / "Qwen2.5-1.5B-synthetic", shape)
        largest = max(int(np.prod(s)) * 4 for _, s, _ in bench.tensor_specs(shape))
        ours, f16, ref = work / "ours.gguf", work / f"{args.outtype}.gguf", work / "ref.gguf"
        rows: list[tuple[float, float, float, float]] = []  # bitconv wall, rss; two-step wall, rss
        cpu: list[tuple[float, float]] = []
        for r in range(args.rounds):
            ours.unlink(missing_ok=True)
            a = bench.measure(bench.bitconv_command(model, args.quant, ours) + ["--no-manifest"], None,
                              work / f"bitconv-{r}.log", args.timeout)
            if a.rc:
                print(bench.tail(a.log), file=sys.stderr)
                return 1
            ours_bytes = ours.stat().st_size
            cmd, env = oracle.reference_converter_command(model, args.outtype, f16)
            s1 = bench.measure(cmd, env, work / f"convert-{r}.log", args.timeout)
            s2 = bench.measure([*bench.llama_quantize_command(), str(f16), str(ref), str(q.llama_ftype)], None,
                               work / f"quantize-{r}.log", args.timeout)
            if s1.rc or s2.rc:
                print(bench.tail(s1.log), bench.tail(s2.log), file=sys.stderr)
                return 1
            ref_bytes = ref.stat().st_size
            f16_bytes = f16.stat().st_size
            same = ours.read_bytes() == ref.read_bytes()
            ours.unlink()
            if args.outtype == "bf16" and not same:
                print("bitconv's file differs from the two-step flow's", file=sys.stderr)
                return 1
            f16.unlink()
            ref.unlink()
            rows.append((a.wall, a.maxrss_mib, s1.wall + s2.wall, max(s1.maxrss_mib, s2.maxrss_mib)))
            cpu.append((a.cpu, s1.cpu + s2.cpu))
            print(f"round {r}: bitconv {a.wall:.1f} s {a.maxrss_mib:.0f} MiB | convert {args.outtype} {s1.wall:.1f} s "
                  f"{s1.maxrss_mib:.0f} MiB + quantize {s2.wall:.1f} s {s2.maxrss_mib:.0f} MiB", file=sys.stderr)
        best = min(rows, key=lambda t: t[0])
        best_ref = min(rows, key=lambda t: t[2])
        print(f"\n| {args.quant}, synthetic Qwen2.5-1.5B shape | wall s (rounds) | CPU s | peak RSS MiB | output |")
        print("|---|---|---|---|---|")
        print(f"| bitconv, one pass | {' / '.join(f'{t[0]:.1f}' for t in rows)} | "
              f"{' / '.join(f'{c[0]:.1f}' for c in cpu)} | {max(t[1] for t in rows):.0f} | {ours_bytes / 1e9:.3f} GB |")
        print(f"| convert_hf_to_gguf {args.outtype} + llama_model_quantize | {' / '.join(f'{t[2]:.1f}' for t in rows)} | "
              f"{' / '.join(f'{c[1]:.1f}' for c in cpu)} | {max(t[3] for t in rows):.0f} | {ref_bytes / 1e9:.3f} GB "
              f"(+ {f16_bytes / 1e9:.2f} GB {args.outtype} intermediate) |")
        print(f"\noutputs {'byte-identical' if same else 'not identical (f16 intermediate)'}")
        print(f"\nbest wall ratio bitconv / two-step: {best[0] / best_ref[2]:.2f}; "
              f"RSS budget 1 GiB + largest tensor (f32 {largest / 2**20:.0f} MiB) = {1024 + largest / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
