"""`make fuzz`: every harness in turn, each in its own process (libFuzzer owns it and exits), then
one line per harness: inputs tried, coverage, crashes. Exit status 1 when any harness crashed."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from fuzz.common import REPO, seed_dir

HARNESSES = ("safetensors", "gguf", "config_tokenizer", "batch")


def run_one(name: str, limit: list[str], extra: list[str]) -> dict[str, object]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", f"fuzz.fuzz_{name}", *limit, *extra], cwd=REPO,
                          capture_output=True, text=True, errors="replace")
    out = proc.stdout + proc.stderr
    runs = re.findall(r"stat::number_of_executed_units: (\d+)", out)
    cov = re.findall(r"cov: (\d+) ft: (\d+)", out)
    crashed = proc.returncode != 0 or "Test unit written to" in out
    return {"harness": name, "inputs": int(runs[-1]) if runs else 0, "edges": int(cov[-1][0]) if cov else 0,
            "features": int(cov[-1][1]) if cov else 0, "crashes": int(crashed), "seconds": time.perf_counter() - start,
            "tail": "\n".join(out.splitlines()[-40:]) if crashed else ""}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fuzz.run_all")
    ap.add_argument("--seconds", type=int, default=60, help="per harness (default 60)")
    ap.add_argument("--runs", type=int, default=None, help="per harness, instead of --seconds")
    ap.add_argument("--no-keep", action="store_true", help="do not grow build/fuzz/corpus/ (CI smoke)")
    ap.add_argument("--jobs", type=int, default=1, help="harnesses run at once (default 1: a core each)")
    ap.add_argument("harness", nargs="*", help=f"some of {', '.join(HARNESSES)} (default: all)")
    args = ap.parse_args(argv)
    unknown = set(args.harness) - set(HARNESSES)
    if unknown:
        ap.error(f"unknown harness(es) {', '.join(sorted(unknown))}; known: {', '.join(HARNESSES)}")
    seed_dir()  # built once, before the clocks start
    limit = ["--runs", str(args.runs)] if args.runs is not None else ["--seconds", str(args.seconds)]
    extra = ["--no-keep"] if args.no_keep else []
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda h: run_one(h, limit, extra), args.harness or HARNESSES))
    for r in results:
        if r["tail"]:
            print(f"--- {r['harness']} crashed:\n{r['tail']}", file=sys.stderr)
    print(f"{'harness':<18}{'inputs':>10}{'edges':>8}{'features':>10}{'crashes':>9}{'seconds':>9}")
    for r in results:
        print(f"{r['harness']:<18}{r['inputs']:>10}{r['edges']:>8}{r['features']:>10}{r['crashes']:>9}"
              f"{r['seconds']:>9.1f}")
    print(f"crashes: {sum(int(r['crashes']) for r in results)} (inputs under build/fuzz/crashes/)")
    return 1 if any(r["crashes"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
