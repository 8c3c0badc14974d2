"""A custom quantizer, end to end: per-output-channel ternary weights stored as F16 in a GGUF.

BitNet ternarizes with one scale per tensor; this variant keeps one scale per output channel
(row): w ≈ s_row · t with t ∈ {−1, 0, 1}. It registers under a new name, so `bitconv hf2gguf
--quant ternary-per-channel` and `bitconv.convert(..., quant="ternary-per-channel")` use it, and it
stores the rounded weights as F16, which every GGUF runtime reads. Because it stores float values,
the same class also serves `to="onnx"` (float MatMul weights) and `to="safetensors",
format="rounded"` (a plain transformers checkpoint). (A plugin package would declare the class in
its `bitconv.quantizers` entry point group instead of registering on import.)

    .venv/bin/python examples/custom_quantizer.py --out demo-out
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType

import bitconv
from bitconv.quant.gguf_native import GGUFNativeQuantizer

ROOT = Path(__file__).resolve().parent.parent


@bitconv.register_quantizer("ternary-per-channel")
class PerChannelTernary(GGUFNativeQuantizer):
    """Per-row absmean ternarization, stored as F16 values s_row · t."""

    qtype = GGMLQuantizationType.F16  # the GGUF type the values are written as
    file_type = int(LlamaFileType.MOSTLY_F16)
    embedding_type = "f16"  # token_embd / output stay plain f16
    description = "ternary with one absmean scale per output channel, stored as f16"

    def quantize(self, w: np.ndarray, state: Any = None) -> bitconv.QuantizedTensor:
        # rows are independent, so the writer may hand us any chunk of rows (and does, in parallel)
        w = np.asarray(w, dtype=np.float32)
        scale = np.maximum(np.abs(w).mean(axis=-1, keepdims=True), np.float32(1e-5))
        codes = np.clip(np.rint(w / scale), -1, 1)
        return bitconv.QuantizedTensor((codes * scale).astype(np.float16))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo-out")
    ap.add_argument("--source", default=None, help="a checkpoint; default: build a tiny Qwen2 in --out")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    source = Path(args.source) if args.source else out / "qwen2-tiny"
    if not (source / "config.json").is_file():
        sys.path.insert(0, str(ROOT / "tests"))
        import fixtures  # the offline factory the tests use: real Qwen tokenizer, random weights

        fixtures.make_checkpoint(source, arch="qwen2", dtype="bf16", hidden=128, layers=2)
    result = bitconv.convert(source, to="gguf", quant="ternary-per-channel", out=out / "per-channel.gguf", force=True)
    print(f"wrote {result.output}: {result.type_counts}")

    # read the file back: every linear row holds one magnitude (its scale) and zeros
    import gguf

    reader = gguf.GGUFReader(result.output)
    checked = 0
    for t in reader.tensors:
        if t.name.startswith("blk.") and t.name.endswith(".weight") and len(t.shape) == 2:
            rows = np.asarray(t.data, dtype=np.float32).reshape(-1, int(t.shape[0]))
            for row in rows:
                mags = np.unique(np.abs(row[row != 0]))
                assert mags.size <= 1, (t.name, mags[:4])
            checked += 1
    print(f"{checked} linears: one magnitude per output channel")

    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama-cpp-python not installed: skipping the load check")
        return
    llm = Llama(model_path=str(result.output), n_ctx=64, logits_all=True, verbose=False)
    tokens = llm.tokenize(b"Hello", add_bos=False)
    llm.eval(tokens)
    last = np.asarray(llm.scores[len(tokens) - 1])
    assert np.isfinite(last).all() and last.std() > 0
    print(f"llama.cpp loaded it: next token {int(np.argmax(last))} (logits std {last.std():.3f})")


if __name__ == "__main__":
    main()
