"""Reference ternary matmul (bitconv.accel.ternary) on the BitNet-2B-4T matrices, in one run:

* the Cython kernel (AVX2 when the CPU has it, OpenMP over output rows),
* its numpy fallback (bit-identical results),
* numpy float32 matmul on the dequantized matrix (what a float reference would do),

for batch 1 and 128 and 1 and 2 threads (each thread count in a fresh process, with OpenMP and
BLAS limited to it). Reports best-of-N times, the ratio vs numpy f32, and packed weight bytes per
second next to the bandwidth of a 1 GiB numpy copy measured in the same process.

    .venv/bin/python benchmarks/kernel.py                 # markdown table on stdout
    .venv/bin/python benchmarks/kernel.py --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SHAPES = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)]  # (M outputs, K inputs)
BATCHES = [1, 128]
#: weights cycle through copies at least this large, so each call streams its matrix from memory as
#: in a real forward pass (a single matrix would sit in the last-level cache between calls)
STREAM_BYTES = 96 << 20


def _best(fn, min_total: float = 0.4, max_runs: int = 200) -> float:
    fn()  # warm-up
    best, total, runs = float("inf"), 0.0, 0
    while (total < min_total or runs < 3) and runs < max_runs:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, total, runs = min(best, dt), total + dt, runs + 1
    return best


def _cycling(items: list, fn):
    """A call that uses the next copy each time."""
    state = {"i": 0}

    def call() -> None:
        state["i"] = (state["i"] + 1) % len(items)
        fn(items[state["i"]])

    return call


def _copy_bandwidth() -> float:
    """GB/s of a 1 GiB numpy copy (bytes copied per second)."""
    import numpy as np

    src = np.ones(1 << 28, dtype=np.float32)
    dst = np.empty_like(src)
    return src.nbytes / _best(lambda: np.copyto(dst, src), min_total=1.0, max_runs=5) / 1e9


def worker(threads: int) -> dict:
    import numpy as np

    from bitconv.accel import ternary
    from bitconv.quant.i2s import pack_i2s

    rng = np.random.default_rng(0)
    copy_gbs = _copy_bandwidth()
    rows = []
    for m, k in SHAPES:  # noqa: PLR1702
        codes = rng.integers(-1, 2, size=(m, k), dtype=np.int8)
        packed = [pack_i2s(codes).reshape(-1)]
        packed += [packed[0].copy() for _ in range(-(-STREAM_BYTES // packed[0].nbytes) - 1)]
        dense = [codes.astype(np.float32) * np.float32(0.0123)]
        dense += [dense[0].copy() for _ in range(-(-STREAM_BYTES // dense[0].nbytes) - 1)]
        del codes
        for n in BATCHES:
            x = rng.standard_normal((n, k), dtype=np.float32)
            xq, xs = ternary.quantize_activations(x)
            row = {"M": m, "K": k, "batch": n, "threads": threads}
            row["kernel_s"] = _best(_cycling(packed, lambda p: ternary.ternary_gemm(p, 0.0123, xq, xs, m, k)))
            row["numpy_fallback_s"] = _best(_cycling(
                packed, lambda p: ternary.ternary_gemm(p, 0.0123, xq, xs, m, k, use_extension=False)), min_total=0.2)
            row["numpy_f32_s"] = _best(_cycling(dense, lambda d: x @ d.T))
            row["packed_GBps"] = packed[0].nbytes / row["kernel_s"] / 1e9
            row["vs_numpy_f32"] = row["numpy_f32_s"] / row["kernel_s"]
            row["vs_fallback"] = row["numpy_fallback_s"] / row["kernel_s"]
            rows.append(row)
    cfg = {}
    try:
        from threadpoolctl import threadpool_info

        cfg["blas"] = [{k: i.get(k) for k in ("internal_api", "version", "num_threads")} for i in threadpool_info()]
    except ImportError:
        cfg["blas"] = "threadpoolctl not installed; see numpy.show_config()"
    return {"threads": threads, "copy_GBps": copy_gbs, "extension": ternary.HAVE_TERNARY_EXTENSION,
            "numpy": np.__version__, "config": cfg, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="thread counts, each in a fresh process (default 1,2)")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker)))
        return
    results = []
    for t in (int(x) for x in args.threads.split(",")):
        env = dict(os.environ, OMP_NUM_THREADS=str(t), OPENBLAS_NUM_THREADS=str(t), MKL_NUM_THREADS=str(t))
        proc = subprocess.run([sys.executable, __file__, "--worker", str(t)], env=env, capture_output=True,
                              text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print("| M×K | batch | threads | kernel | numpy fallback | numpy f32 (dequantized) | kernel vs f32 | "
          "packed weights GB/s | 1 GiB copy GB/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for res in results:
        for r in res["rows"]:
            print(f"| {r['M']}×{r['K']} | {r['batch']} | {r['threads']} | {r['kernel_s'] * 1e3:.3f} ms | "
                  f"{r['numpy_fallback_s'] * 1e3:.2f} ms | {r['numpy_f32_s'] * 1e3:.2f} ms | {r['vs_numpy_f32']:.1f}× | "
                  f"{r['packed_GBps']:.1f} | {res['copy_GBps']:.1f} |")
    print()
    for res in results:
        print(f"threads={res['threads']}: extension={res['extension']}, numpy {res['numpy']}, BLAS {res['config']['blas']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
