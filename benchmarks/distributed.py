"""`bitconv batch` on the local executor vs a two-node Ray cluster on this machine (issue 19).

    python benchmarks/distributed.py --keep /work/q15      # Qwen2.5-1.5B shape (3.1 GB bf16 checkpoint)
    python benchmarks/distributed.py --model qwen2.5-0.5b  # Qwen2.5-0.5B shape (1 GB; some jobs ~5 s)
    python benchmarks/distributed.py --small               # smoke: a tiny shape, seconds

The same 8 jobs (GGUF q8_0 / q4_k_m / q5_k_m / q6_k / q4_0, ONNX int4 / int8, compressed-tensors
int4), each single-threaded (`threads = 1`), run twice: by the local executor, one after another,
and by the Ray executor on a cluster of two one-CPU nodes (tests/ray_local_cluster.py: `ray start` twice
on 127.0.0.2). Times are the `bitconv batch` command's wall time, so Ray's own overhead is in
(connecting, planning each job for its memory request, scheduling, worker start-up, results);
the cluster's start is not. The outputs of both runs are compared byte for byte (manifests apart:
they record the thread count). Each job's seconds and node come from the JSON report.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import convert as cb  # noqa: E402  (benchmarks/convert.py: the streamed synthetic checkpoint builder)

QWEN15 = cb.FULL  # hidden 1536, 28 layers, vocab 151936: every job here takes 10 s or more single-threaded
QWEN05 = cb.Shape(hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, vocab=cb.VOCAB,
                  shard_bytes=2_000_000_000)
SMALL = cb.Shape(hidden=128, intermediate=384, layers=2, heads=4, kv_heads=2, vocab=cb.VOCAB,
                 shard_bytes=2_000_000_000)
JOBS = [("q8_0", "gguf", "q8_0"), ("q4_k_m", "gguf", "q4_k_m"), ("q5_k_m", "gguf", "q5_k_m"),
        ("q6_k", "gguf", "q6_k"), ("q4_0", "gguf", "q4_0"), ("onnx-int4", "onnx", "int4"),
        ("onnx-int8", "onnx", "int8"), ("ct-int4", "compressed-tensors", "int4")]


def jobs_toml(src: Path, out: Path, extra: str = "") -> str:
    text = extra + "[defaults]\nthreads = 1\n"
    for name, fmt, quant in JOBS:
        output = out / (f"{name}.gguf" if fmt == "gguf" else name)
        text += f'\n[[job]]\nname = "{name}"\nsource = "{src}"\nformat = "{fmt}"\nquant = "{quant}"\noutput = "{output}"\n'
    return text


TICK = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all processes, all cores), from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(f) - f[3] - f[4]) / TICK  # all but idle and iowait


def tree_cpu(roots: set[int]) -> dict[int, float]:
    """CPU seconds of each live process descending from `roots` (a cluster's nodes: their raylets,
    agents and workers, whatever process group Ray put them in)."""
    procs = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        procs[int(pid)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [r for r in roots if r in procs]
    while todo:
        pid = todo.pop()
        out[pid] = procs[pid][1]
        todo += children.get(pid, [])
    return out


class TreeSampler(threading.Thread):
    """Samples `tree_cpu` every 0.2 s: the workers of a Ray job exit with it (and nobody accounts for
    them), so each process counts with the most CPU it was seen with."""

    def __init__(self, roots: set[int]) -> None:
        super().__init__(daemon=True)
        self.roots, self.seen, self.done = roots, {}, threading.Event()
        self.start_cpu = sum(tree_cpu(roots).values())

    def run(self) -> None:
        while not self.done.wait(0.2):
            for pid, cpu in tree_cpu(self.roots).items():
                self.seen[pid] = max(cpu, self.seen.get(pid, 0.0))

    def stop(self) -> float:
        self.done.set()
        self.join()
        for pid, cpu in tree_cpu(self.roots).items():
            self.seen[pid] = max(cpu, self.seen.get(pid, 0.0))
        return sum(self.seen.values()) - self.start_cpu


def run_batch(toml: Path, *args: str, roots: set[int] = frozenset()) -> tuple[float, float, float, dict[str, Any]]:
    """Wall seconds, CPU seconds of the run (the command and, for Ray, the cluster's processes), CPU
    seconds of everything else on the machine meanwhile (other people's work), and the report."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, sampler = busy_seconds(), TreeSampler(set(roots))
    sampler.start()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bitconv", "batch", str(toml), "--json", *args], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime) + sampler.stop()
    others = busy_seconds() - busy0 - ours
    doc = json.loads(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"batch failed ({proc.returncode}): {json.dumps(doc)[:3000]}")
    return wall, ours, others, doc["result"]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith("manifest.json")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("qwen2.5-1.5b", "qwen2.5-0.5b"), default="qwen2.5-1.5b")
    ap.add_argument("--small", action="store_true", help="a tiny checkpoint (smoke run)")
    ap.add_argument("--keep", type=Path, help="build (or reuse) the checkpoint here instead of a temp dir")
    ap.add_argument("--work", type=Path, help="where outputs and the cluster's files go (default: a temp dir)")
    args = ap.parse_args(argv)
    from ray_local_cluster import LocalCluster

    shape = SMALL if args.small else QWEN05 if args.model == "qwen2.5-0.5b" else QWEN15
    tmp = Path(tempfile.mkdtemp(prefix="bcdist", dir=args.work))
    try:
        src = cb.generate_checkpoint(args.keep or tmp / "model", shape)
        for run in ("local", "ray"):
            (tmp / run).mkdir()
            (tmp / f"{run}.toml").write_text(jobs_toml(src, tmp / run))
        local_wall, local_cpu, local_others, local = run_batch(tmp / "local.toml")
        print(f"local executor: {local_wall:.1f} s wall, {local_cpu:.1f} CPU s", file=sys.stderr)
        cluster = LocalCluster(tmp / "cl")
        t0 = time.perf_counter()
        cluster.start()
        start_s = time.perf_counter() - t0
        try:
            ray_wall, ray_cpu, ray_others, ray = run_batch(tmp / "ray.toml", "--ray", cluster.address,
                                                           roots={p.pid for p in cluster.procs})
        finally:
            cluster.stop()
        same = files(tmp / "local") == files(tmp / "ray")
        per_node: dict[str, float] = {}
        for j in ray["jobs"]:
            per_node[j["node"]] = per_node.get(j["node"], 0.0) + j["seconds"]
        busiest = max(per_node.values())
        print(f"\nSynthetic {args.model} shape{' (--small)' if args.small else ''}: hidden {shape.hidden}, "
              f"{shape.layers} layers, vocab {shape.vocab}; {len(JOBS)} jobs, threads = 1 each")
        print("\n| job | local s | Ray s | Ray node | same bytes |")
        print("|---|---:|---:|---|---|")
        for lj, rj in zip(local["jobs"], ray["jobs"]):
            print(f"| {lj['name']} | {lj['seconds']:.1f} | {rj['seconds']:.1f} | {rj['node']} | "
                  f"{'yes' if lj['sha256'] == rj['sha256'] else 'NO'} |")
        print(f"\nlocal executor (one after another): {local_wall:.1f} s wall ({sum(j['seconds'] for j in local['jobs']):.1f} s "
              f"in jobs), {local_cpu:.1f} CPU s; other processes on the machine meanwhile: "
              f"{local_others / local_wall:.2f} cores on average")
        print(f"Ray, 2 nodes x 1 CPU: {ray_wall:.1f} s wall (cluster start {start_s:.1f} s, not counted); busiest node "
              f"{busiest:.1f} s in jobs; Ray's overhead (wall - busiest node's job time) {ray_wall - busiest:.1f} s; "
              f"{ray_cpu:.1f} CPU s (command, Ray's processes and workers); other processes meanwhile: "
              f"{ray_others / ray_wall:.2f} cores on average")
        print(f"throughput ratio (local wall / Ray wall): {local_wall / ray_wall:.2f}x; all outputs byte-identical: {same}")
        ideal = local_cpu / max(ray_cpu / 2, busiest * ray_cpu / sum(j["seconds"] for j in ray["jobs"]))
        print(f"CPU-bound estimate for two cores of its own (local CPU s / max(Ray CPU s / 2, busiest node's share)): "
              f"{ideal:.2f}x; Ray's CPU cost over the local run's: {ray_cpu / local_cpu:.2f}x")
        return 0 if same else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
