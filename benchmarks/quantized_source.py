#!/usr/bin/env python3
"""Benchmark: a GPTQ-Int4 checkpoint as the source (issue 17), bitconv vs both anchors in one invocation.

    python benchmarks/quantized_source.py --keep /work/bench-gptq7b               # Qwen2.5-7B shape, 28 layers
    python benchmarks/quantized_source.py --keep /work/bench-gptq7b-4 --layers 4  # the same layers, fewer of them
    python benchmarks/quantized_source.py --small                                 # quick smoke

GGUF: ``bitconv hf2gguf -q q4_k_m`` (dequantize a slab, encode, in one pass) against llama.cpp's
``convert_hf_to_gguf.py --outtype f16`` (its ``dequant_model`` path for GPTQ) followed by
``llama_model_quantize(…, Q4_K_M)`` on all cores. ONNX: ``bitconv hf2onnx -q int4`` (the source's
int4 codes, scales and zero points repacked into MatMulNBits) against onnxruntime-genai's builder
``-p int4 -e cpu`` on the same folder (its GPTQ loader). Each process runs in benchmarks/convert.py's
measuring wrapper (wall, user+sys CPU, peak RSS of the largest process); the tools alternate per
round; ratios are bitconv / anchor on the best round of each.

The checkpoint is Qwen2.5-7B-Instruct-GPTQ-Int4's layout (hidden 3584, intermediate 18944, 28/4
heads, vocab 152064, untied; 4-bit, group 128, symmetric, v1 zero points, no act-order; f16 scales,
embeddings, norms and biases) with random codes and scales, streamed to disk tensor by tensor by
this script; the real Qwen tokenizer comes from tests/fixtures.py. ``--layers`` keeps every tensor's
shape and changes only their number (time per layer is what scales).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import convert as cb  # noqa: E402  (benchmarks/convert.py: measure(), llama_quantize_command(), Run)

FULL = dict(hidden=3584, intermediate=18944, heads=28, kv_heads=4, vocab=152064, layers=28)
SMALL = dict(hidden=256, intermediate=512, heads=4, kv_heads=2, vocab=152064, layers=2)
GROUP = 128
Q4_K_M = 15  # llama_ftype LLAMA_FTYPE_MOSTLY_Q4_K_M


def specs(s: dict[str, int]) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, kind) as the hub's GPTQ checkpoints hold them: the linears as qweight / qzeros /
    scales / g_idx, everything else f16."""
    h, kv = s["hidden"], s["kv_heads"] * (s["hidden"] // s["heads"])
    out: list[tuple[str, tuple[int, ...], str]] = [("model.embed_tokens.weight", (s["vocab"], h), "f16")]

    def linear(name: str, n: int, k: int) -> list[tuple[str, tuple[int, ...], str]]:
        return [(f"{name}.qweight", (k // 8, n), "qweight"), (f"{name}.qzeros", (k // GROUP, n // 8), "qzeros"),
                (f"{name}.scales", (k // GROUP, n), "scales"), (f"{name}.g_idx", (k,), "g_idx")]

    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,), "norm"), (p + "post_attention_layernorm.weight", (h,), "norm")]
        for proj, n in (("q_proj", h), ("k_proj", kv), ("v_proj", kv)):
            out += linear(p + "self_attn." + proj, n, h) + [(p + f"self_attn.{proj}.bias", (n,), "f16")]
        out += linear(p + "self_attn.o_proj", h, h)
        out += linear(p + "mlp.gate_proj", s["intermediate"], h) + linear(p + "mlp.up_proj", s["intermediate"], h)
        out += linear(p + "mlp.down_proj", h, s["intermediate"])
    return out + [("model.norm.weight", (h,), "norm"), ("lm_head.weight", (s["vocab"], h), "f16")]


_DT = {"qweight": ("I32", 4), "qzeros": ("I32", 4), "g_idx": ("I32", 4), "scales": ("F16", 2), "f16": ("F16", 2),
       "norm": ("F16", 2)}


def _values(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> Iterator[bytes]:
    """The tensor's bytes, a row chunk at a time (random codes; scales ~ a 0.02-std weight's)."""
    rows = shape[0] if len(shape) > 1 else 1
    per = max(1, (1 << 24) // max(1, int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])))
    for lo in range(0, rows, per):
        sub = (min(rows, lo + per) - lo, *shape[1:]) if len(shape) > 1 else shape
        n = int(np.prod(sub))
        if kind == "qweight":
            a = rng.integers(0, 2**32, size=n, dtype=np.uint32).view(np.int32)
        elif kind == "qzeros":
            a = np.full(n, 0x77777777, dtype=np.int32)  # v1: 7 stored for a zero point of 8 (symmetric)
        elif kind == "g_idx":
            a = (np.arange(n) // GROUP).astype(np.int32)
        elif kind == "scales":
            a = (rng.uniform(0.5, 1.5, size=n) * 0.006).astype(np.float16)
        elif kind == "norm":
            a = (1 + 0.1 * rng.standard_normal(n)).astype(np.float16)
        else:
            a = (0.02 * rng.standard_normal(n)).astype(np.float16)
        yield a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()


def write_checkpoint(out: Path, s: dict[str, int], seed: int = 0) -> Path:
    want = json.dumps({"gptq": s, "group": GROUP}, sort_keys=True)
    if cb.reuse_or_clear(out, want):
        return out
    import fixtures  # tests/fixtures.py: the real Qwen tokenizer, offline

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    table = specs(s)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, kind in table:
        nbytes = _DT[kind][1] * int(np.prod(shape))
        header[name] = {"dtype": _DT[kind][0], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = out / "model.safetensors.part"
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for _, shape, kind in table:
            for chunk in _values(rng, shape, kind):
                f.write(chunk)
    os.replace(tmp, out / "model.safetensors")
    cfg = {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
           "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": s["hidden"], "initializer_range": 0.02,
           "intermediate_size": s["intermediate"], "max_position_embeddings": 32768, "max_window_layers": s["layers"],
           "model_type": "qwen2", "num_attention_heads": s["heads"], "num_hidden_layers": s["layers"],
           "num_key_value_heads": s["kv_heads"], "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
           "sliding_window": 131072, "tie_word_embeddings": False, "torch_dtype": "float16",
           "transformers_version": "4.39.3", "use_cache": True, "use_sliding_window": False, "vocab_size": s["vocab"],
           "quantization_config": {"bits": 4, "group_size": GROUP, "damp_percent": 0.01, "desc_act": False,
                                   "sym": True, "true_sequential": True, "quant_method": "gptq",
                                   "static_groups": False, "model_name_or_path": None,
                                   "model_file_base_name": "model"}}
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for f in fixtures.qwen_tokenizer_files().iterdir():
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    cb.mark_complete(out, want)
    print(f"checkpoint: {offset / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def _bitconv(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "bitconv"
    return ([str(script)] if script.is_file() else [sys.executable, "-m", "bitconv"]) + list(args)


def _size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size


def _clear(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
        Path(str(p) + ".manifest.json").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="generate the checkpoint here (or reuse it)")
    ap.add_argument("--layers", type=int, help="decoder layers (default: 28, the 7B's)")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", choices=("gguf", "onnx"), help="one comparison")
    ap.add_argument("--timeout", type=float, default=7200)
    args = ap.parse_args(argv)
    shape = dict(SMALL if args.small else FULL)
    if args.layers:
        shape["layers"] = args.layers
    import llamacpp_oracle as oracle

    with tempfile.TemporaryDirectory(prefix="bitconv-qbench-", dir=args.keep.parent if args.keep else None) as tmp:
        work = Path(tmp)
        model = write_checkpoint(args.keep or work / "gptq", shape)
        if args.keep:
            model.mkdir(parents=True, exist_ok=True)
        largest = max(int(np.prod(sh)) for n, sh, k in specs(shape) if k == "f16") * 4
        jobs: dict[str, list[tuple[str, Callable[[int], list[tuple[list[str], dict[str, str] | None]]], Path]]] = {}
        ours_gguf, f16, ref_gguf = work / "ours.gguf", work / "ref-f16.gguf", work / "ref.gguf"
        ours_onnx, ref_onnx = work / "ours-onnx", work / "ref-onnx"
        if args.only != "onnx":
            cmd, env = oracle.reference_converter_command(model, "f16", f16)
            jobs["gguf"] = [
                ("bitconv hf2gguf -q q4_k_m", lambda r: [(_bitconv("hf2gguf", str(model), "-q", "q4_k_m", "-o",
                                                                    str(ours_gguf), "--force", "--quiet"), None)], ours_gguf),
                ("convert_hf_to_gguf f16 + llama_model_quantize Q4_K_M",
                 lambda r: [(cmd, env), ([*cb.llama_quantize_command(), str(f16), str(ref_gguf), str(Q4_K_M)], None)],
                 ref_gguf)]
        if args.only != "gguf":
            jobs["onnx"] = [
                ("bitconv hf2onnx -q int4", lambda r: [(_bitconv("hf2onnx", str(model), "-q", "int4", "-o", str(ours_onnx),
                                                                  "--force", "--quiet"), None)], ours_onnx),
                ("onnxruntime-genai builder -p int4 -e cpu",
                 lambda r: [([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model), "-o",
                              str(ref_onnx), "-p", "int4", "-e", "cpu", "-c", str(work / "genai-cache")], None)], ref_onnx)]
        results: dict[str, list[tuple[float, float, float, int]]] = {}
        for r in range(args.rounds):
            for kind, pair in jobs.items():
                for label, steps, out in pair:
                    _clear(out, f16)
                    runs = []
                    for i, (cmd_i, env_i) in enumerate(steps(r)):
                        run = cb.measure(cmd_i, env_i, work / f"{kind}-{r}-{i}.log", args.timeout)
                        if run.rc:
                            print(f"{label} failed:\n{cb.tail(run.log)}", file=sys.stderr)
                            return 1
                        runs.append(run)
                    size = _size(out)
                    _clear(out, f16)
                    results.setdefault(label, []).append((sum(x.wall for x in runs), sum(x.cpu for x in runs),
                                                          max(x.maxrss_mib for x in runs), size))
                    print(f"round {r}: {label}: {runs[0].wall if len(runs) == 1 else ' + '.join(f'{x.wall:.1f}' for x in runs)}"
                          f" s, {max(x.maxrss_mib for x in runs):.0f} MiB", file=sys.stderr)
        print(f"\nQwen2.5-7B-shaped GPTQ-Int4, {shape['layers']} layers, {_size(model / 'model.safetensors') / 1e9:.2f} GB; "
              f"load {' / '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
        print("| tool | wall s (rounds) | CPU s | peak RSS MiB | output GB |")
        print("|---|---|---|---|---|")
        for label, rows in results.items():
            print(f"| {label} | {' / '.join(f'{w:.1f}' for w, *_ in rows)} | {' / '.join(f'{c:.1f}' for _, c, *_ in rows)} "
                  f"| {max(m for _, _, m, _ in rows):.0f} | {rows[-1][3] / 1e9:.3f} |")
        for kind, pair in jobs.items():
            a, b = (min(w for w, *_ in results[label]) for label, _, _ in pair)
            print(f"\n{kind}: best wall bitconv / anchor {a / b:.2f} ({b / a:.1f}× faster)")
        print(f"RSS bound: 1 GiB + the largest tensor in float32 ({largest / 2**20:.0f} MiB) = {1024 + largest / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
