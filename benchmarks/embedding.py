#!/usr/bin/env python3
"""Benchmark: bitnet.cpp's ``utils/convert-bitnet-embedding-to-gguf.py`` vs ``bitconv hf2gguf`` on a
synthetic microsoft/bitnet-embedding-0.6b-shaped checkpoint (i2_s by default).

    python benchmarks/embedding.py --bitnet-git-dir /work/.mirror/microsoft+BitNet/repo --keep /tmp/emb06b
    python benchmarks/embedding.py --small --bitnet-git-dir …     # quick smoke with a tiny shape
    python benchmarks/embedding.py --only bitconv --keep /tmp/emb06b

Shape (bitnet-embedding-0.6b, docs/bitnet-embeddings-i2s-guide.md): Qwen3Model, hidden 1024, 28
layers, 16/8 heads of 128, intermediate 3072, vocab 151936, tied (no lm_head), a BitLinear RMSNorm
before each of the 7 projections; bf16 master weights (random, N(0, 1/K)), the real Qwen tokenizer
and sentence-transformers files (last-token pooling) from tests/fixtures_embedding.py; 1.2 GB.

The upstream script runs as its guide shows (``--outtype i2_s --outfile …``) with this venv's numpy,
torch, safetensors and transformers, and pip's gguf-py patched to name I2_S (a copy in the work
folder, on PYTHONPATH for its process only, as tests/golden/bitnet_embedding/make_golden.py does).
Each tool converts `--runs` times in a fresh wrapper process (wall time, peak RSS of the process);
the outputs of the last runs are compared byte for byte. bitconv's package is byte-compiled first, as
an installed package is (the upstream script's gguf-py copy is compiled on its first run). The
markdown table at the end is for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

import convert as bench  # noqa: E402  (benchmarks/convert.py: the streamed safetensors writer, measure())

FULL = dict(hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, intermediate=3072, vocab=151936)
SMALL = dict(hidden=256, layers=2, heads=4, kv_heads=2, head_dim=64, intermediate=768, vocab=151936)
PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")


def specs(s: dict[str, int]) -> list[tuple[str, tuple[int, ...], str]]:
    h, q, kv, ff = s["hidden"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"], s["intermediate"]
    shapes = {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
              "self_attn.o_proj": (h, q), "mlp.gate_proj": (ff, h), "mlp.up_proj": (ff, h), "mlp.down_proj": (h, ff)}
    out: list[tuple[str, tuple[int, ...], str]] = [("embed_tokens.weight", (s["vocab"], h), "embed"),
                                                   ("norm.weight", (h,), "norm")]
    for i in range(s["layers"]):
        p = f"layers.{i}."
        out += [(p + "input_layernorm.weight", (h,), "norm"), (p + "post_attention_layernorm.weight", (h,), "norm"),
                (p + "self_attn.q_norm.weight", (s["head_dim"],), "norm"),
                (p + "self_attn.k_norm.weight", (s["head_dim"],), "norm")]
        for proj in PROJ:
            out += [(p + proj + ".weight", shapes[proj], "fanin"), (p + proj + ".norm.weight", (shapes[proj][1],), "norm")]
    return sorted(out)


def config(s: dict[str, int]) -> dict[str, Any]:
    return {"architectures": ["Qwen3Model"], "model_type": "qwen3", "attention_bias": False, "attention_dropout": 0.0,
            "bos_token_id": 151643, "eos_token_id": 151643, "head_dim": s["head_dim"], "hidden_act": "silu",
            "hidden_size": s["hidden"], "initializer_range": 0.02, "intermediate_size": s["intermediate"],
            "max_position_embeddings": 32768, "max_window_layers": s["layers"], "num_attention_heads": s["heads"],
            "num_hidden_layers": s["layers"], "num_key_value_heads": s["kv_heads"], "rms_norm_eps": 1e-06,
            "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
            "torch_dtype": "bfloat16", "transformers_version": "4.51.3", "use_cache": True,
            "use_sliding_window": False, "vocab_size": s["vocab"]}


def generate(out: Path, s: dict[str, int]) -> Path:
    import fixtures_embedding as fe

    want = json.dumps(s, sort_keys=True)
    if (out / ".complete").is_file() and (out / ".complete").read_text() == want:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    bench._write_safetensors(out / "model.safetensors", specs(s), np.random.default_rng(0))
    (out / "config.json").write_text(json.dumps(config(s), indent=2, sort_keys=True) + "\n")
    for f in fe.embedding_tokenizer_files().iterdir():
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    fe._sentence_transformers_files(out, s["hidden"], "lasttoken", True)
    (out / ".complete").write_text(want)
    return out


def upstream(work: Path, git_dir: Path) -> tuple[Path, Path]:
    """The upstream script and a patched gguf-py copy (make_golden.py's), in `work`."""
    spec = importlib.util.spec_from_file_location("make_golden", ROOT / "tests/golden/bitnet_embedding/make_golden.py")
    mg = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mg)  # type: ignore[union-attr]
    script = work / "convert-bitnet-embedding-to-gguf.py"
    script.write_bytes(subprocess.run(["git", f"--git-dir={git_dir}", "show", f"HEAD:{mg.SCRIPT}"], check=True,
                                      capture_output=True).stdout)
    return script, mg.patched_gguf(work)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bitnet-git-dir", type=Path, help="microsoft/BitNet git dir (bare mirror) for the upstream script")
    ap.add_argument("--keep", type=Path, help="generate the checkpoint here and reuse it")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--quant", default="i2_s", choices=("i2_s", "f16"))
    ap.add_argument("--only", choices=("bitconv", "upstream"))
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    s = SMALL if args.small else FULL
    tmp = Path(tempfile.mkdtemp(prefix="bitconv-emb-bench-"))
    try:
        model = generate((args.keep or tmp / "ckpt") / "bitnet-embedding-0.6b", s)
        tools: dict[str, tuple[list[str], dict[str, str] | None]] = {}
        if args.only != "upstream":
            tools["bitconv"] = (bench.bitconv_command(model, args.quant, tmp / "bitconv.gguf"), None)
            tools["bitconv --no-manifest"] = (bench.bitconv_command(model, args.quant, tmp / "bitconv-nm.gguf")
                                              + ["--no-manifest"], None)
        if args.only != "bitconv":
            if args.bitnet_git_dir is None:
                ap.error("the upstream script needs --bitnet-git-dir (or pass --only bitconv)")
            script, gguf_dir = upstream(tmp, args.bitnet_git_dir)
            tools["upstream"] = ([sys.executable, str(script), str(model), "--outtype", args.quant, "--outfile",
                                  str(tmp / "upstream.gguf")], {"PYTHONPATH": str(gguf_dir), "PATH": "/usr/bin:/bin",
                                                                "HOME": str(tmp)})
        if "bitconv" in tools:  # as pip installs it: byte-compiled (PYTHONDONTWRITEBYTECODE=1 would compile every run)
            pkg = importlib.util.find_spec("bitconv").submodule_search_locations[0]  # type: ignore[union-attr]
            subprocess.run([sys.executable, "-m", "compileall", "-q", pkg], check=True, stdout=subprocess.DEVNULL)
        results: dict[str, list[Any]] = {}
        for r in range(args.runs):  # interleaved: a busy machine slows every tool alike
            for tool, (cmd, env) in tools.items():
                run = bench.measure(cmd, env, tmp / f"{tool.split()[0]}-{r}.log", None)
                if run.rc != 0:
                    print(bench.tail(run.log), file=sys.stderr)
                    raise SystemExit(f"{tool} failed (rc {run.rc})")
                results.setdefault(tool, []).append(run)
                print(f"{tool} run {r + 1}: {run.wall:.1f} s ({run.cpu:.1f} s CPU), peak RSS {run.maxrss_mib:.0f} MiB",
                      flush=True)
        same = None
        if "upstream" in tools and "bitconv" in tools:
            same = (tmp / "bitconv.gguf").read_bytes() == (tmp / "upstream.gguf").read_bytes()
        largest = max(int(np.prod(shape)) * 4 for _, shape, _ in specs(s))
        print("\n| tool | wall (s), runs | CPU (s), runs | peak RSS (MiB) |\n|---|---|---|---|")
        for tool, runs in results.items():
            print(f"| {tool} | {', '.join(f'{r.wall:.1f}' for r in runs)} | {', '.join(f'{r.cpu:.1f}' for r in runs)} "
                  f"| {max(r.maxrss_mib for r in runs):.0f} |")
        if "upstream" in results and "bitconv" in results:
            up = min(r.wall for r in results["upstream"])
            for tool in ("bitconv", "bitconv --no-manifest"):
                print(f"speed-up of {tool} (best wall of each): {up / min(r.wall for r in results[tool]):.1f}×")
            print(f"outputs byte-identical: {same}")
        budget = 1024 + largest / 2**20
        if "bitconv" in results:
            print(f"bitconv peak RSS budget (1 GiB + largest tensor in f32 {largest / 2**20:.0f} MiB): {budget:.0f} MiB")
        return 0 if same in (None, True) else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
