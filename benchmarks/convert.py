#!/usr/bin/env python3
"""Benchmark: llama.cpp's convert_hf_to_gguf.py vs ``bitconv hf2gguf`` on a Qwen2.5-1.5B-shaped checkpoint.

    python benchmarks/convert.py                      # full size (~3.1 GB bf16 checkpoint in a temp dir)
    python benchmarks/convert.py --keep ~/qwen-bench  # generate once, reuse on later runs
    python benchmarks/convert.py --small              # quick smoke with a tiny shape
    python benchmarks/convert.py --quant q8_0 --only bitconv

The checkpoint is synthetic (random bf16 weights, real Qwen tokenizer from tests/fixtures.py)
and streamed to disk tensor by tensor, so generating it needs little memory; it is never
written into the repository unless you point ``--keep`` there.  Each tool converts each
outtype twice (the first run also warms the page cache); wall time and peak RSS are measured
per run in a fresh wrapper process (``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``: the
largest single process, so a multi-process tool's total is under-reported).  The markdown table
at the end is meant for BENCHMARKS.md.
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
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # fixtures.py (tokenizer), llamacpp_oracle.py
sys.path.insert(1, str(REPO))

QUANTS = ("f16", "q8_0")
COMPLETE_MARKER = ".bench-complete"
VOCAB = 151936


class Shape(NamedTuple):
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    shard_bytes: int


FULL = Shape(hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, vocab=VOCAB, shard_bytes=2_000_000_000)
# vocab must stay 151936: the Qwen tokenizer has 151665 entries and the converter pads up to vocab_size
SMALL = Shape(hidden=256, intermediate=704, layers=2, heads=4, kv_heads=2, vocab=VOCAB, shard_bytes=48_000_000)


# --------------------------------------------------------------------------- checkpoint


def tensor_specs(s: Shape) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, init) in Hugging Face order; tied embeddings -> no lm_head."""
    head_dim = s.hidden // s.heads
    kv = s.kv_heads * head_dim
    specs: list[tuple[str, tuple[int, ...], str]] = [("model.embed_tokens.weight", (s.vocab, s.hidden), "embed")]
    for i in range(s.layers):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (s.hidden,), "norm"),
            (p + "self_attn.q_proj.weight", (s.hidden, s.hidden), "matrix"),
            (p + "self_attn.q_proj.bias", (s.hidden,), "bias"),
            (p + "self_attn.k_proj.weight", (kv, s.hidden), "matrix"),
            (p + "self_attn.k_proj.bias", (kv,), "bias"),
            (p + "self_attn.v_proj.weight", (kv, s.hidden), "matrix"),
            (p + "self_attn.v_proj.bias", (kv,), "bias"),
            (p + "self_attn.o_proj.weight", (s.hidden, s.hidden), "matrix"),
            (p + "post_attention_layernorm.weight", (s.hidden,), "norm"),
            (p + "mlp.gate_proj.weight", (s.intermediate, s.hidden), "matrix"),
            (p + "mlp.up_proj.weight", (s.intermediate, s.hidden), "matrix"),
            (p + "mlp.down_proj.weight", (s.hidden, s.intermediate), "matrix"),
        ]
    specs.append(("model.norm.weight", (s.hidden,), "norm"))
    return specs


def hub_config(s: Shape) -> dict[str, Any]:
    """config.json in the key layout of Qwen/Qwen2.5-1.5B (hub, transformers 4.x)."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "hidden_act": "silu",
        "hidden_size": s.hidden,
        "initializer_range": 0.02,
        "intermediate_size": s.intermediate,
        "max_position_embeddings": 131072,
        "max_window_layers": s.layers,
        "model_type": "qwen2",
        "num_attention_heads": s.heads,
        "num_hidden_layers": s.layers,
        "num_key_value_heads": s.kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 131072,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": s.vocab,
    }


def _bf16_chunks(rng: np.random.Generator, n: int, init: str, chunk: int = 1 << 24) -> Iterator[bytes]:
    """Random bf16 values (as little-endian bytes), generated chunk by chunk."""
    scale = {"embed": 0.02, "matrix": 0.02, "bias": 0.1, "norm": 0.1}[init]
    done = 0
    while done < n:
        m = min(chunk, n - done)
        x = rng.standard_normal(m, dtype=np.float32)
        x *= np.float32(scale)
        if init == "norm":
            x += np.float32(1.0)
        yield (x.view(np.uint32) >> 16).astype("<u2").tobytes()
        done += m


def _write_safetensors(path: Path, specs: list[tuple[str, tuple[int, ...], str]], rng: np.random.Generator) -> None:
    """Stream a safetensors file: header first (offsets are known from the shapes), then data."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in specs:
        nbytes = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned, as safetensors writes it
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for _, shape, init in specs:
            for chunk in _bf16_chunks(rng, int(np.prod(shape)), init):
                f.write(chunk)
    os.replace(tmp, path)


def generate_checkpoint(out: Path, s: Shape, seed: int = 0) -> Path:
    """Write config, tokenizer and sharded bf16 safetensors (+ index) to ``out``; reuse if complete."""
    marker = out / COMPLETE_MARKER
    want = json.dumps(s._asdict(), sort_keys=True)
    if marker.is_file() and marker.read_text() == want:
        print(f"reusing checkpoint in {out}", file=sys.stderr)
        return out
    import fixtures  # tests/fixtures.py: the real Qwen tokenizer, built offline

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("model*.safetensors*"):
        old.unlink()
    specs = tensor_specs(s)
    shards: list[list[tuple[str, tuple[int, ...], str]]] = [[]]
    size = 0
    for spec in specs:
        nbytes = 2 * int(np.prod(spec[1]))
        if shards[-1] and size + nbytes > s.shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    rng = np.random.default_rng(seed)
    weight_map: dict[str, str] = {}
    t0 = time.perf_counter()
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        print(f"writing {fname} ({len(shard)} tensors)", file=sys.stderr)
        _write_safetensors(out / fname, shard, rng)
        weight_map.update({name: fname for name, _, _ in shard})
    total = sum(2 * int(np.prod(shape)) for _, shape, _ in specs)
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n"
    )
    (out / "config.json").write_text(json.dumps(hub_config(s), indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 151643, "do_sample": False, "eos_token_id": 151643, "max_new_tokens": 2048,
                    "transformers_version": "4.37.0"}, indent=2) + "\n"
    )
    for f in fixtures.qwen_tokenizer_files().iterdir():
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    marker.write_text(want)
    print(f"checkpoint: {total / 1e9:.2f} GB in {len(shards)} shard(s), {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


# --------------------------------------------------------------------------- measuring

# Runs one command and reports its wall time and peak RSS.  A fresh wrapper per measurement
# because RUSAGE_CHILDREN's ru_maxrss is a running maximum over all children ever waited for.
_WRAPPER = r"""
import json, resource, subprocess, sys, time
cmd, log = json.loads(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
with open(log, "wb") as fh:
    rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall": wall, "maxrss_kib": ru.ru_maxrss, "user": ru.ru_utime, "sys": ru.ru_stime}))
"""


class Run(NamedTuple):
    rc: int
    wall: float
    maxrss_mib: float
    cpu: float
    log: Path


def measure(cmd: list[str], env: dict[str, str] | None, log: Path, timeout: float | None) -> Run:
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, json.dumps(cmd), str(log)],
        capture_output=True, text=True, env=env, timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measurement wrapper failed: {proc.stderr[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    kib = r["maxrss_kib"] if sys.platform != "darwin" else r["maxrss_kib"] / 1024  # bytes on macOS
    return Run(r["rc"], r["wall"], kib / 1024, r["user"] + r["sys"], log)


def bitconv_command(model: Path, quant: str, out: Path) -> list[str]:
    script = Path(sys.executable).parent / "bitconv"
    base = [str(script)] if script.is_file() else [sys.executable, "-m", "bitconv"]
    return base + ["hf2gguf", str(model), "--quant", quant, "-o", str(out), "--force"]


def tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    except OSError:
        return ""


# --------------------------------------------------------------------------- main


def fmt_runs(runs: list[Run]) -> tuple[str, str]:
    ok = [r for r in runs if r.rc == 0]
    if not ok:
        return "FAILED", "-"
    return " / ".join(f"{r.wall:.1f}" for r in runs), f"{max(r.maxrss_mib for r in ok):.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="generate the checkpoint here (or reuse it) instead of a temp dir")
    ap.add_argument("--only", choices=("bitconv", "llamacpp"), help="run just one tool")
    ap.add_argument("--quant", default=",".join(QUANTS), help="comma-separated outtypes (default: f16,q8_0)")
    ap.add_argument("--small", action="store_true", help="tiny shape for a quick smoke run")
    ap.add_argument("--runs", type=int, default=2, help="runs per tool and outtype (default 2)")
    ap.add_argument("--workdir", type=Path, help="where the .gguf outputs go (default: a temp dir)")
    ap.add_argument("--check", action="store_true", help="compare bitconv's output with llama.cpp's (tests/llamacpp_oracle.py)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per conversion")
    args = ap.parse_args(argv)

    quants = [q.strip() for q in args.quant.split(",") if q.strip()]
    for q in quants:
        if q not in ("f32", "f16", "bf16", "q8_0"):
            ap.error(f"unsupported outtype {q!r}")
    shape = SMALL if args.small else FULL
    tools = [args.only] if args.only else ["llamacpp", "bitconv"]

    cleanup: list[Path] = []
    try:
        if args.keep:
            model_dir = args.keep.resolve()
        else:
            leaf = "Qwen2.5-tiny-synthetic" if args.small else "Qwen2.5-1.5B-synthetic"
            model_dir = Path(tempfile.mkdtemp(prefix="bitconv-bench-ckpt-")) / leaf
            cleanup.append(model_dir.parent)
        generate_checkpoint(model_dir, shape)
        ckpt_bytes = sum(f.stat().st_size for f in model_dir.glob("model*.safetensors"))
        work = args.workdir.resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bitconv-bench-out-"))
        if not args.workdir:
            cleanup.append(work)
        work.mkdir(parents=True, exist_ok=True)

        results: dict[tuple[str, str], list[Run]] = {}
        for quant in quants:
            kept: dict[str, Path] = {}
            for tool in tools:
                runs: list[Run] = []
                for i in range(args.runs):
                    out = work / f"{tool}-{quant}-{i}.gguf"
                    log = work / f"{tool}-{quant}-{i}.log"
                    if tool == "llamacpp":
                        import llamacpp_oracle as oracle

                        cmd, env = oracle.reference_converter_command(model_dir, quant, out)
                    else:
                        cmd, env = bitconv_command(model_dir, quant, out), None
                    if out.exists():
                        out.unlink()
                    run = measure(cmd, env, log, args.timeout)
                    runs.append(run)
                    status = "ok" if run.rc == 0 else f"FAILED rc={run.rc} (log {log})"
                    print(f"{tool:8s} {quant:5s} run {i + 1}: {run.wall:7.1f} s  peak RSS {run.maxrss_mib:7.0f} MiB  {status}",
                          file=sys.stderr)
                    if run.rc != 0:
                        print(tail(log), file=sys.stderr)
                    # keep only the newest output of each tool (disk: an f16 file is ~3 GB)
                    if run.rc == 0 and out.exists():
                        if tool in kept:
                            kept[tool].unlink(missing_ok=True)
                        kept[tool] = out
                results[(tool, quant)] = runs
            if args.check and len(kept) == 2:
                import llamacpp_oracle as oracle

                diffs = oracle.compare_gguf(kept["bitconv"], kept["llamacpp"])
                verdict = "identical tensors/tokenizer/hparams" if not diffs else oracle.format_diffs(diffs, 10)
                print(f"check {quant}: {verdict}", file=sys.stderr)
                fd = oracle.file_diff(kept["bitconv"], kept["llamacpp"])
                print(f"check {quant}: whole file: " + ("byte-identical" if fd is None else fd), file=sys.stderr)
            for p in kept.values():
                p.unlink(missing_ok=True)

        print_table(results, quants, tools, shape, ckpt_bytes, args)
        return 0 if all(r.rc == 0 for runs in results.values() for r in runs) else 1
    finally:
        for p in cleanup:
            shutil.rmtree(p, ignore_errors=True)


def _versions() -> str:
    out = [f"Python {platform.python_version()}"]
    for mod in ("numpy", "torch", "transformers"):
        try:
            out.append(f"{mod} {__import__(mod).__version__}")
        except Exception:
            pass
    try:
        import bitconv

        out.append(f"bitconv {getattr(bitconv, '__version__', '?')}")
    except Exception:
        pass
    return ", ".join(out)


def print_table(results: dict[tuple[str, str], list[Run]], quants: list[str], tools: list[str], s: Shape,
                ckpt_bytes: int, args: argparse.Namespace) -> None:
    name = "synthetic Qwen2.5-1.5B shape" if not args.small else "tiny smoke shape (--small)"
    print()
    print(f"Checkpoint: {name}: hidden {s.hidden}, intermediate {s.intermediate}, {s.layers} layers, "
          f"{s.heads}/{s.kv_heads} heads, vocab {s.vocab}, tied embeddings, bf16, {ckpt_bytes / 1e9:.2f} GB safetensors.  ")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}; {_versions()}.  ")
    print(f"llama.cpp = convert_hf_to_gguf.py from llama-cpp-python 0.3.36 sdist.  "
          f"Times are wall seconds of each of {args.runs} runs (first run cold-ish, later runs warm page cache); "
          f"ratios use the fastest run; peak RSS is the max over runs.")
    print()
    if len(tools) == 2:
        print("| outtype | llama.cpp time (s) | bitconv time (s) | speedup (llama.cpp / bitconv) "
              "| llama.cpp peak RSS (MiB) | bitconv peak RSS (MiB) | RSS ratio (llama.cpp / bitconv) |")
        print("|---|---|---|---|---|---|---|")
        for q in quants:
            lr, br = results[("llamacpp", q)], results[("bitconv", q)]
            lt, lm = fmt_runs(lr)
            bt, bm = fmt_runs(br)
            lok = [r for r in lr if r.rc == 0]
            bok = [r for r in br if r.rc == 0]
            if lok and bok:
                speed = f"{min(r.wall for r in lok) / min(r.wall for r in bok):.2f}x"
                rss = f"{max(r.maxrss_mib for r in lok) / max(r.maxrss_mib for r in bok):.2f}x"
            else:
                speed = rss = "-"
            print(f"| {q} | {lt} | {bt} | {speed} | {lm} | {bm} | {rss} |")
    else:
        label = "llama.cpp" if tools[0] == "llamacpp" else "bitconv"
        print(f"| outtype | {label} time (s) | {label} peak RSS (MiB) |")
        print("|---|---|---|")
        for q in quants:
            t, m = fmt_runs(results[(tools[0], q)])
            print(f"| {q} | {t} | {m} |")


if __name__ == "__main__":
    sys.exit(main())
