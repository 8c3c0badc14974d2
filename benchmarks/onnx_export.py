#!/usr/bin/env python3
"""Benchmark: ``bitconv hf2onnx`` vs onnxruntime-genai's model builder, and ONNX Runtime decode speed.

    python benchmarks/onnx_export.py                         # Qwen2.5-0.5B shape (~1 GB bf16 checkpoint in a temp dir)
    python benchmarks/onnx_export.py --keep /tmp/qwen05-bench  # generate once, reuse on later runs
    python benchmarks/onnx_export.py --small --runs 1          # quick smoke with a tiny shape
    python benchmarks/onnx_export.py --skip-export             # decode speed only
    python benchmarks/onnx_export.py --skip-decode --only bitconv

(Named ``onnx_export.py``, not ``onnx.py``, which would shadow the onnx package.)

Part 1, export: a synthetic Qwen2.5-0.5B-shaped checkpoint (Qwen2ForCausalLM, hidden 896,
intermediate 4864, 24 layers, 14/2 heads, vocab 151936, tied embeddings, random bf16 weights, the
real Qwen tokenizer; built and streamed to disk by benchmarks/convert.py's builder) is exported to
int4 by ``bitconv hf2onnx -q int4`` and by ``python -m onnxruntime_genai.models.builder -i DIR -o OUT
-p int4 -e cpu`` in the same invocation, the tools alternating run by run. Each run is measured in a
fresh wrapper process (convert.py's ``measure``: wall time, CPU seconds, peak RSS of the largest child
process, peak drop of free disk space).

Part 2, decode: ONNX Runtime (CPU EP, default threads) runs bitconv's f32, int4 and int2 graphs of the
same shape, each in a fresh process: batch 1, a 32-token prompt, then 64 greedy steps through the KV
cache (present → past); tokens/s = steps / decode seconds. The shape is not ternary-trained, so the
int2 graph is exported with ``--force-ternarize``: a speed-only measurement (its tokens are
meaningless). ``--genai`` also times onnxruntime-genai's own generator on bitconv's int4 folder and on
the builder's int4 folder (GroupQueryAttention graph, shared KV buffer).

The markdown at the end is meant for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import convert as cb  # noqa: E402  (benchmarks/convert.py: checkpoint builder, measure(), Run)

REPO = cb.REPO

QWEN05_FULL = cb.Shape(hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, vocab=cb.VOCAB,
                       shard_bytes=2_000_000_000)
QWEN05_SMALL = cb.Shape(hidden=128, intermediate=384, layers=2, heads=4, kv_heads=2, vocab=cb.VOCAB,
                        shard_bytes=2_000_000_000)
DECODE_QUANTS = ("f32", "int4", "int2")

# One decode measurement, run in a fresh process: session creation, a prompt, greedy steps via the cache.
_DECODE = r"""
import json, os, resource, sys, time
import numpy as np
import onnxruntime as ort
folder, prompt_len, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
so = ort.SessionOptions()
sess = ort.InferenceSession(os.path.join(folder, "model.onnx"), so, providers=["CPUExecutionProvider"])
t_load = time.perf_counter() - t0
names = [o.name for o in sess.get_outputs()]
past = {}
for i in sess.get_inputs():
    if i.name.startswith("past_key_values."):
        dt = np.float16 if i.type == "tensor(float16)" else np.float32
        past[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=dt)
rng = np.random.default_rng(0)
ids = [int(x) for x in rng.integers(1000, 30000, size=prompt_len)]
def step(tokens, start, past):
    feeds = {"input_ids": np.array([tokens], np.int64),
             "attention_mask": np.ones((1, start + len(tokens)), np.int64),
             "position_ids": np.arange(start, start + len(tokens), dtype=np.int64)[None]}
    feeds.update(past)
    outs = dict(zip(names, sess.run(names, feeds)))
    nxt = {n.replace("present.", "past_key_values."): v for n, v in outs.items() if n.startswith("present.")}
    return int(outs["logits"][0, -1].argmax()), nxt
t0 = time.perf_counter()
tok, past = step(ids, 0, past)
t_prompt = time.perf_counter() - t0
pos, out = prompt_len, [tok]
t0 = time.perf_counter()
for _ in range(steps):
    tok, past = step([tok], pos, past)
    pos += 1
    out.append(tok)
t_decode = time.perf_counter() - t0
def hwm_mib():  # VmHWM: this process's own peak (ru_maxrss is inherited across fork + exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"load_s": t_load, "prompt_s": t_prompt, "decode_s": t_decode, "steps": steps,
                  "tok_s": steps / t_decode, "prompt_tok_s": prompt_len / t_prompt,
                  "maxrss_mib": hwm_mib(), "tokens": out[:8]}))
"""

# The same through onnxruntime-genai's generator (its own KV-cache management).
_DECODE_GENAI = r"""
import json, resource, sys, time
import numpy as np
import onnxruntime_genai as og
folder, prompt_len, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
model = og.Model(folder)
t_load = time.perf_counter() - t0
rng = np.random.default_rng(0)
ids = np.array([int(x) for x in rng.integers(1000, 30000, size=prompt_len)], dtype=np.int32)
params = og.GeneratorParams(model)
params.set_search_options(max_length=prompt_len + steps + 1, do_sample=False)
gen = og.Generator(model, params)
t0 = time.perf_counter()
gen.append_tokens(ids)
gen.generate_next_token()
t_prompt = time.perf_counter() - t0
t0 = time.perf_counter()
n = 0
while n < steps and not gen.is_done():
    gen.generate_next_token()
    n += 1
t_decode = time.perf_counter() - t0
def hwm_mib():  # VmHWM: this process's own peak (ru_maxrss is inherited across fork + exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"load_s": t_load, "prompt_s": t_prompt, "decode_s": t_decode, "steps": n,
                  "tok_s": n / t_decode, "prompt_tok_s": prompt_len / t_prompt, "maxrss_mib": hwm_mib()}))
"""


def bitconv_cmd(model: Path, quant: str, out: Path, *extra: str) -> list[str]:
    script = Path(sys.executable).parent / "bitconv"
    base = [str(script)] if script.is_file() else [sys.executable, "-m", "bitconv"]
    return base + ["hf2onnx", str(model), "-q", quant, "-o", str(out), "--force", "--quiet", *extra]


def genai_cmd(model: Path, out: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model), "-o", str(out),
            "-p", "int4", "-e", "cpu", "-c", str(cache)]


def genai_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxruntime-genai")
    except PackageNotFoundError:
        return None


def folder_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0


def loadavg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def run_export(model_dir: Path, work: Path, runs: int, tools: list[str], timeout: float | None,
               env: dict[str, str]) -> tuple[dict[str, list[cb.Run]], list[str]]:
    results: dict[str, list[cb.Run]] = {t: [] for t in tools}
    notes: list[str] = []
    for i in range(runs):
        order = tools if i % 2 == 0 else list(reversed(tools))  # alternate: neither tool always runs first
        for tool in order:
            out = work / f"{tool}-int4-{i}"
            shutil.rmtree(out, ignore_errors=True)
            log = work / f"{tool}-int4-{i}.log"
            cmd = bitconv_cmd(model_dir, "int4", out) if tool == "bitconv" else \
                genai_cmd(model_dir, out, work / f"genai-cache-{i}")
            if i == 0:
                print(f"$ {' '.join(cmd)}", file=sys.stderr)
            print(f"load average before: {loadavg()}", file=sys.stderr)
            run = cb.measure(cmd, env, log, timeout)
            run = run._replace(out_bytes=folder_bytes(out))
            results[tool].append(run)
            status = "ok" if run.rc == 0 else f"FAILED rc={run.rc} (log {log})"
            print(f"{tool:8s} int4 run {i + 1}: {run.wall:7.1f} s  cpu {run.cpu:6.1f} s  peak RSS "
                  f"{run.maxrss_mib:7.0f} MiB  output {run.out_bytes / 1e9:5.2f} GB  peak disk "
                  f"{run.disk_peak / 1e9:5.2f} GB  {status}", file=sys.stderr)
            if run.rc != 0:
                err = [ln for ln in cb.tail(log, 4000).splitlines() if ln.strip()]
                print(cb.tail(log), file=sys.stderr)
                if i == 0:
                    notes.append(f"{tool} failed (rc={run.rc}): {err[-1] if err else '?'}")
            shutil.rmtree(work / f"genai-cache-{i}", ignore_errors=True)
            if i < runs - 1 or run.rc != 0:
                shutil.rmtree(out, ignore_errors=True)
    return results, notes


def decode_once(script: str, folder: Path, prompt: int, steps: int, env: dict[str, str],
                timeout: float | None) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", script, str(folder), str(prompt), str(steps)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="generate the checkpoint here (or reuse it) instead of a temp dir")
    ap.add_argument("--small", action="store_true", help="tiny shape for a quick smoke run")
    ap.add_argument("--runs", type=int, default=2, help="export runs per tool (default 2)")
    ap.add_argument("--only", choices=("bitconv", "genai"), help="export with just one tool")
    ap.add_argument("--skip-export", action="store_true", help="decode speed only")
    ap.add_argument("--skip-decode", action="store_true", help="export comparison only")
    ap.add_argument("--genai", action="store_true",
                    help="also time onnxruntime-genai's generator on bitconv's and the builder's int4 folders")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens (default 32)")
    ap.add_argument("--steps", type=int, default=64, help="greedy decode steps (default 64)")
    ap.add_argument("--rounds", type=int, default=2, help="decode measurements per graph, interleaved (default 2)")
    ap.add_argument("--workdir", type=Path, help="where the exports go (default: a temp dir, deleted)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per run")
    args = ap.parse_args(argv)

    shape = QWEN05_SMALL if args.small else QWEN05_FULL
    og_ver = genai_version()
    tools = [args.only] if args.only else ["bitconv", "genai"]
    notes: list[str] = []
    if "genai" in tools and og_ver is None:
        notes.append("onnxruntime-genai is not installed: bitconv measured alone")
        tools = [t for t in tools if t != "genai"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cleanup: list[Path] = []
    try:
        if args.keep:
            model_dir = args.keep.resolve()
        else:
            model_dir = Path(tempfile.mkdtemp(prefix="bitconv-bench-ckpt-")) / (
                "Qwen2.5-0.5B-tiny-synthetic" if args.small else "Qwen2.5-0.5B-synthetic")
            cleanup.append(model_dir.parent)
        cb.generate_checkpoint(model_dir, shape)
        ckpt_bytes = sum(f.stat().st_size for f in model_dir.glob("model*.safetensors"))
        work = args.workdir.resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bitconv-bench-onnx-"))
        if not args.workdir:
            cleanup.append(work)
        work.mkdir(parents=True, exist_ok=True)
        load_start = loadavg()

        export: dict[str, list[cb.Run]] = {}
        if not args.skip_export:
            export, n = run_export(model_dir, work, args.runs, tools, args.timeout, env)
            notes += n

        decode: dict[str, list[dict[str, Any]]] = {}
        sizes: dict[str, int] = {}
        if not args.skip_decode:
            folders: dict[str, Path] = {}
            for q in DECODE_QUANTS:
                out = work / f"decode-{q}"
                if q == "int4" and export.get("bitconv") and export["bitconv"][-1].rc == 0:
                    out = work / f"bitconv-int4-{args.runs - 1}"
                else:
                    extra = ("--force-ternarize",) if q == "int2" else ()
                    cmd = bitconv_cmd(model_dir, q, out, "--no-manifest", *extra)
                    print(f"$ {' '.join(cmd)}", file=sys.stderr)
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    if proc.returncode != 0:
                        notes.append(f"bitconv {q} export failed: {proc.stderr.strip()[-300:]}")
                        continue
                folders[q] = out
                sizes[q] = folder_bytes(out)
            jobs: list[tuple[str, str, Path]] = [(q, _DECODE, f) for q, f in folders.items()]
            if args.genai and og_ver is not None:
                if "int4" in folders:
                    jobs.append(("int4 (bitconv graph, onnxruntime-genai generator)", _DECODE_GENAI, folders["int4"]))
                gfold = work / f"genai-int4-{args.runs - 1}"
                if (gfold / "model.onnx").is_file():
                    jobs.append(("int4 (builder graph, onnxruntime-genai generator)", _DECODE_GENAI, gfold))
                    sizes["int4 (builder graph, onnxruntime-genai generator)"] = folder_bytes(gfold)
            for r in range(args.rounds):
                for label, script, folder in (jobs if r % 2 == 0 else list(reversed(jobs))):
                    print(f"decode {label} round {r + 1} (load {loadavg()})", file=sys.stderr)
                    res = decode_once(script, folder, args.prompt, args.steps, env, args.timeout)
                    print(f"  {json.dumps(res)}", file=sys.stderr)
                    decode.setdefault(label, []).append(res)
        load_end = loadavg()
        print_report(export, decode, sizes, tools, shape, ckpt_bytes, args, notes, og_ver, load_start, load_end)
        ok = all(r.rc == 0 for runs in export.values() for r in runs)
        return 0 if ok else 1
    finally:
        for p in cleanup:
            shutil.rmtree(p, ignore_errors=True)


def print_report(export: dict[str, list[cb.Run]], decode: dict[str, list[dict[str, Any]]], sizes: dict[str, int],
                 tools: list[str], s: cb.Shape, ckpt_bytes: int, args: argparse.Namespace, notes: list[str],
                 og_ver: str | None, load_start: str, load_end: str) -> None:
    import numpy
    import onnxruntime

    print()
    print(f"Checkpoint: synthetic Qwen2.5-0.5B shape{' (--small)' if args.small else ''}: Qwen2ForCausalLM, hidden "
          f"{s.hidden}, intermediate {s.intermediate}, {s.layers} layers, {s.heads}/{s.kv_heads} heads, "
          f"vocab {s.vocab}, "
          f"tied embeddings, bf16, {ckpt_bytes / 1e9:.2f} GB safetensors.  ")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; Python {platform.python_version()}, numpy "
          f"{numpy.__version__}, onnxruntime {onnxruntime.__version__}"
          + (f", onnxruntime-genai {og_ver}" if og_ver else "") + f". Load average (1/5/15 min) at start "
          f"{load_start}, at end {load_end}.  ")
    if export:
        print()
        print(f"Export to int4 ({args.runs} runs per tool, alternating; wall s of each run, CPU = user + sys; ratios "
              "use each tool's fastest run, peak RSS the max over runs):")
        print()
        if len(export) == 2:
            g, b = export["genai"], export["bitconv"]
            gt, gm = cb.fmt_runs(g)
            bt, bm = cb.fmt_runs(b)
            gok, bok = [r for r in g if r.rc == 0], [r for r in b if r.rc == 0]
            if gok and bok:
                speed = f"{min(r.wall for r in gok) / min(r.wall for r in bok):.2f}x"
                cpu = f"{min(r.cpu for r in gok) / max(min(r.cpu for r in bok), 1e-9):.2f}x"
                rss = f"{max(r.maxrss_mib for r in gok) / max(r.maxrss_mib for r in bok):.2f}x"
                size = f"{max(r.out_bytes for r in gok) / 1e9:.2f} / {max(r.out_bytes for r in bok) / 1e9:.2f}"
            else:
                speed = cpu = rss = size = "-"
            print("| tool | time (s) | CPU (s) | peak RSS (MiB) | speedup (builder / bitconv) | CPU ratio "
                  "| RSS ratio (builder / bitconv) | output GB (builder / bitconv) |")
            print("|---|---|---|---|---|---|---|---|")
            print(f"| onnxruntime-genai builder -p int4 -e cpu | {gt} | {cb.fmt_cpu(g)} | {gm} | | | | |")
            print(f"| bitconv hf2onnx -q int4 | {bt} | {cb.fmt_cpu(b)} | {bm} | {speed} | {cpu} | {rss} | {size} |")
        else:
            for tool, runs in export.items():
                t, m = cb.fmt_runs(runs)
                print(f"| {tool} int4 | {t} s | CPU {cb.fmt_cpu(runs)} s | {m} MiB |")
    if decode:
        print()
        print(f"ONNX Runtime decode, batch 1, {args.prompt}-token prompt then {args.steps} greedy steps through the KV "
              f"cache; best of {args.rounds} interleaved rounds, each a fresh process:")
        print()
        print("| graph | folder GB | session load (s) | prompt tok/s | decode tok/s | vs f32 | peak RSS (MiB) |")
        print("|---|---|---|---|---|---|---|")
        best: dict[str, dict[str, Any]] = {}
        for label, rs in decode.items():
            ok = [r for r in rs if "error" not in r]
            if ok:
                best[label] = max(ok, key=lambda r: r["tok_s"])
        f32 = best.get("f32", {}).get("tok_s")
        for label, rs in decode.items():
            if label not in best:
                print(f"| {label} | - | - | - | FAILED: {rs[0].get('error', '?')} | - | - |")
                continue
            r = best[label]
            ratio = f"{r['tok_s'] / f32:.2f}x" if f32 else "-"
            name = label + (" (--force-ternarize, speed only)" if label == "int2" else "")
            gb = f"{sizes[label] / 1e9:.2f}" if label in sizes else "-"
            ok = [x for x in rs if "error" not in x]
            print(f"| {name} | {gb} | {min(x['load_s'] for x in ok):.2f} | {r['prompt_tok_s']:.0f} | "
                  f"{r['tok_s']:.1f} | {ratio} | {max(x['maxrss_mib'] for x in ok):.0f} |")
    if notes:
        print()
        for n in notes:
            print(f"Note: {n}  ")


if __name__ == "__main__":
    sys.exit(main())
