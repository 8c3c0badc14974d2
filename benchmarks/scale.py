#!/usr/bin/env python3
"""Scale benchmark: does conversion cost grow linearly with model size, in bounded memory?

    python benchmarks/scale.py                       # checkpoints in /tmp/bitconv-scale (~31 GB of disk)
    python benchmarks/scale.py --workdir DIR --keep  # generate once, reuse on later runs
    python benchmarks/scale.py --small               # smoke: tiny shapes, seconds

Four synthetic checkpoints (random weights streamed to disk, never held in memory; never commit
them), two families at two sizes, each converted by ``bitconv hf2gguf --threads 2`` under GNU
``time -v``:

* q8_0 from bf16: Qwen2.5-1.5B shape (tied, vocab 151936) and Qwen2.5-7B shape (hidden 3584,
  intermediate 18944, 28 layers, 28/4 heads, vocab 152064, untied lm_head; ~15 GB);
* i2_s from transformers' packed ternary layout: Llama-architecture BitNet b1.58 models with a
  bitnet ``quantization_config`` (uint8 codes + ``weight_scale``), at the Qwen2.5-1.5B dimensions and
  at Llama3-8B-1.58's (hidden 4096, intermediate 14336, 32 layers, 32/8 heads, vocab 128256, untied;
  bf16 embeddings and lm_head).

Reported per run: input bytes, wall time, input bytes/s, CPU time and peak RSS ("Maximum resident
set size" of ``time -v``). Bounds (issue 8): peak RSS under 2 GiB for the large models, and their
input bytes/s at least 0.8x the small model's of the same quant type, measured in the same
invocation. ``--plot docs/scale.png`` draws throughput and peak RSS against input size.
The benchmark checks free disk space first and exits with a message when it is short.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import convert as bench  # noqa: E402  benchmarks/convert.py: streamed safetensors writer, shapes, Qwen config

GiB = 1024 ** 3
RSS_BOUND = 2 * GiB
THROUGHPUT_BOUND = 0.8


class Model(NamedTuple):
    key: str
    title: str
    family: str  # "qwen" (bf16 → q8_0) or "llama158" (packed ternary → i2_s)
    shape: bench.Shape
    tied: bool
    quant: str


QWEN_15B = bench.FULL
QWEN_7B = bench.Shape(hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, vocab=152064,
                      shard_bytes=4_000_000_000)
L158_SMALL = bench.Shape(hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, vocab=128256,
                         shard_bytes=4_000_000_000)
L158_8B = bench.Shape(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256,
                      shard_bytes=4_000_000_000)
TINY_QWEN = bench.Shape(hidden=256, intermediate=704, layers=2, heads=4, kv_heads=2, vocab=151936,
                        shard_bytes=48_000_000)
TINY_QWEN_L = bench.Shape(hidden=512, intermediate=1408, layers=4, heads=8, kv_heads=2, vocab=151936,
                          shard_bytes=48_000_000)
TINY_L158 = bench.Shape(hidden=256, intermediate=768, layers=2, heads=4, kv_heads=2, vocab=128256,
                        shard_bytes=48_000_000)
TINY_L158_L = bench.Shape(hidden=512, intermediate=1536, layers=4, heads=8, kv_heads=2, vocab=128256,
                          shard_bytes=48_000_000)


def models(small: bool) -> list[Model]:
    if small:
        return [Model("qwen-small", "tiny Qwen2", "qwen", TINY_QWEN, True, "q8_0"),
                Model("qwen-large", "small Qwen2, untied", "qwen", TINY_QWEN_L, False, "q8_0"),
                Model("l158-small", "tiny Llama 1.58", "llama158", TINY_L158, False, "i2_s"),
                Model("l158-large", "small Llama 1.58", "llama158", TINY_L158_L, False, "i2_s")]
    return [Model("qwen2.5-1.5b", "Qwen2.5-1.5B shape, bf16", "qwen", QWEN_15B, True, "q8_0"),
            Model("qwen2.5-7b", "Qwen2.5-7B shape, bf16", "qwen", QWEN_7B, False, "q8_0"),
            Model("llama158-1.5b", "Llama 1.58 at Qwen2.5-1.5B dims, packed", "llama158", L158_SMALL, False, "i2_s"),
            Model("llama3-8b-1.58", "Llama3-8B-1.58 shape, packed", "llama158", L158_8B, False, "i2_s")]


# --------------------------------------------------------------------------- checkpoints

def specs_for(m: Model) -> list[tuple[str, tuple[int, ...], str]]:
    s = m.shape
    if m.family == "qwen":
        specs = bench.tensor_specs(s)
    else:  # the BitNet layout minus the sub-norms: a plain Llama with packed linears
        specs = [sp for sp in bench.bitnet_tensor_specs(s, "bitnet-2b4t", "packed") if "_sub_norm" not in sp[0]]
    if not m.tied:
        specs.append(("lm_head.weight", (s.vocab, s.hidden), "embed" if m.family == "qwen" else "fanin"))
    return specs


def config_for(m: Model) -> dict[str, Any]:
    s = m.shape
    if m.family == "qwen":
        return {**bench.hub_config(s), "tie_word_embeddings": m.tied}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": s.hidden, "intermediate_size": s.intermediate, "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads, "vocab_size": s.vocab,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "rope_scaling": None,
        "bos_token_id": 128000, "eos_token_id": 128001, "tie_word_embeddings": m.tied, "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "bitnet", "linear_class": "bitlinear",
                                "quantization_mode": "offline"},
    }


def checkpoint_bytes(m: Model) -> int:
    return sum(bench._nbytes(shape, init) for _, shape, init in specs_for(m))


def output_estimate(m: Model) -> int:
    """Rough output size: q8_0 is 8.5 bits a weight; i2_s 2 bits for linears, f16 for the rest."""
    total = 0
    for _, shape, init in specs_for(m):
        n = int(np.prod(shape))
        total += {"packed": n * 4 // 4, "wscale": 0}.get(init, n * (17 // 8 if m.quant == "q8_0" else 2))
    return total


def generate(m: Model, out: Path, seed: int = 0) -> Path:
    """config, tokenizer and streamed safetensors shards in `out`; reused when complete."""
    want = json.dumps({"model": m.key, **m.shape._asdict(), "tied": m.tied}, sort_keys=True)
    if bench.reuse_or_clear(out, want):
        return out
    bench.write_weights(out, specs_for(m), m.shape.shard_bytes, seed, single_file=False, label=f"{m.key}: ")
    (out / "config.json").write_text(json.dumps(config_for(m), indent=2) + "\n")
    if m.family == "qwen":
        import fixtures  # the real Qwen tokenizer, built offline
        tok_dir = fixtures.qwen_tokenizer_files()
    else:
        import fixtures_bitnet  # the real Llama-3 tokenizer, built offline
        tok_dir = fixtures_bitnet.llama3_tokenizer_files()
    for f in tok_dir.iterdir():
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    bench.mark_complete(out, want)
    return out


# --------------------------------------------------------------------------- measuring

class Run(NamedTuple):
    model: str
    quant: str
    input_bytes: int
    output_bytes: int
    wall: float
    cpu: float
    maxrss: int  # bytes
    rc: int

    @property
    def throughput(self) -> float:
        return self.input_bytes / self.wall


def _time_v(log: str, key: str) -> str:
    m = re.search(rf"^\s*{re.escape(key)}: (.+)$", log, re.M)
    if not m:
        raise RuntimeError(f"no {key!r} in time -v output:\n{log[-2000:]}")
    return m.group(1).strip()


def _seconds(hms: str) -> float:
    parts = [float(p) for p in hms.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def convert(m: Model, src: Path, out: Path, threads: int) -> Run:
    bitconv = Path(sys.executable).parent / "bitconv"
    cmd = ["/usr/bin/time", "-v", str(bitconv), "hf2gguf", str(src), "-q", m.quant, "-o", str(out), "--force",
           "--quiet", "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stderr
    if proc.returncode != 0:
        print(log[-3000:], file=sys.stderr)
    rss = int(_time_v(log, "Maximum resident set size (kbytes)")) * 1024
    wall = _seconds(_time_v(log, "Elapsed (wall clock) time (h:mm:ss or m:ss)"))
    cpu = float(_time_v(log, "User time (seconds)")) + float(_time_v(log, "System time (seconds)"))
    size = out.stat().st_size if out.is_file() else 0
    return Run(m.key, m.quant, checkpoint_bytes(m), size, wall, cpu, rss, proc.returncode)


# --------------------------------------------------------------------------- report

def table(runs: list[Run], all_models: list[Model]) -> str:
    base = {m.family: m.key for m in reversed(all_models)}  # the first (small) model of each family
    by_key = {r.model: r for r in runs}
    lines = ["| model | quant | input (GB) | output (GB) | wall (s) | CPU (s) | input GB/s | vs small | "
             "peak RSS (MiB) |", "|---|---|---|---|---|---|---|---|---|"]
    for m in all_models:
        r = by_key.get(m.key)
        if r is None:
            continue
        ratio = r.throughput / by_key[base[m.family]].throughput if base[m.family] in by_key else float("nan")
        lines.append(f"| {m.title} | {r.quant} | {r.input_bytes / 1e9:.2f} | {r.output_bytes / 1e9:.2f} | "
                     f"{r.wall:.1f} | {r.cpu:.1f} | {r.throughput / 1e9:.3f} | {ratio:.2f}x | "
                     f"{r.maxrss / 2**20:.0f} |")
    return "\n".join(lines)


def verdicts(runs: list[Run], all_models: list[Model]) -> list[str]:
    by_key = {r.model: r for r in runs}
    out = []
    for family in ("qwen", "llama158"):
        fam = [m for m in all_models if m.family == family]
        small, large = by_key.get(fam[0].key), by_key.get(fam[1].key)
        if small is None or large is None:
            continue
        ratio = large.throughput / small.throughput
        out.append(f"{fam[1].key}: peak RSS {large.maxrss / 2**20:.0f} MiB "
                   f"({'under' if large.maxrss < RSS_BOUND else 'OVER'} 2 GiB); input bytes/s {ratio:.2f}x "
                   f"the {fam[0].key} run ({'meets' if ratio >= THROUGHPUT_BOUND else 'BELOW'} 0.8x)")
    return out


def plot(runs: list[Run], all_models: list[Model], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for family, label in (("qwen", "bf16 → q8_0 (Qwen2.5 shapes)"), ("llama158", "packed → i2_s (Llama 1.58 shapes)")):
        keys = [m.key for m in all_models if m.family == family]
        rs = [r for r in runs if r.model in keys]
        if not rs:
            continue
        x = [r.input_bytes / 1e9 for r in rs]
        ax1.plot(x, [r.throughput / 1e9 for r in rs], "o-", label=label)
        ax2.plot(x, [r.maxrss / 2**20 for r in rs], "o-", label=label)
    ax1.set_xlabel("checkpoint size (GB)")
    ax1.set_ylabel("input GB/s (2 threads)")
    ax1.set_ylim(bottom=0)
    ax1.set_title("throughput")
    ax2.set_xlabel("checkpoint size (GB)")
    ax2.set_ylabel("peak RSS (MiB)")
    ax2.axhline(2048, color="grey", linestyle="--", linewidth=1, label="2 GiB bound")
    ax2.set_ylim(bottom=0)
    ax2.set_title("peak memory")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.suptitle("bitconv hf2gguf --threads 2: cost against model size")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bitconv-scale"))
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints for later runs (outputs are removed)")
    ap.add_argument("--small", action="store_true", help="tiny shapes: a smoke run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated model keys")
    ap.add_argument("--plot", type=Path, default=None, help="write the scaling plot (PNG) here")
    ap.add_argument("--json", type=Path, default=None, help="write the runs as JSON here")
    args = ap.parse_args(argv)

    all_models = models(args.small)
    chosen = [m for m in all_models if not args.only or m.key in args.only.split(",")]
    args.workdir.mkdir(parents=True, exist_ok=True)
    need = 0
    for m in chosen:
        src = args.workdir / m.key
        have = (src / bench.COMPLETE_MARKER).is_file()
        need += (0 if have else checkpoint_bytes(m)) + output_estimate(m)
    free = shutil.disk_usage(args.workdir).free
    if free < need * 1.05:
        print(f"skipped: the scale benchmark needs about {need / 1e9:.1f} GB free in {args.workdir} "
              f"(checkpoints + outputs), {free / 1e9:.1f} GB is free", file=sys.stderr)
        return 0
    runs: list[Run] = []
    try:
        for m in chosen:
            src = generate(m, args.workdir / m.key)
            out = args.workdir / f"{m.key}-{m.quant}.gguf"
            r = convert(m, src, out, args.threads)
            runs.append(r)
            print(f"{m.key}: {r.quant} rc {r.rc}, {r.wall:.1f} s, {r.throughput / 1e9:.3f} GB/s, "
                  f"{r.maxrss / 2**20:.0f} MiB", file=sys.stderr)
            out.unlink(missing_ok=True)
            Path(str(out) + ".manifest.json").unlink(missing_ok=True)
    finally:
        if not args.keep:  # only what this run generated: the folder may hold other runs' checkpoints
            for m in chosen:
                shutil.rmtree(args.workdir / m.key, ignore_errors=True)
    print(table(runs, all_models))
    for line in verdicts(runs, all_models):
        print(line)
    if args.json:
        args.json.write_text(json.dumps([r._asdict() for r in runs], indent=2))
    if args.plot:
        plot(runs, all_models, args.plot)
    return 0 if all(r.rc == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
