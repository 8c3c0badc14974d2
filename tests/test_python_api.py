"""The public Python API: the examples run as documented, custom quantizers plug in, and a
plugin that fails is named in a one-line error with nothing written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bitconv
from bitconv.quant.gguf_native import GGUFNativeQuantizer
from bitconv.quant.registry import QUANT_TYPES
from cli_helpers import TMP_GLOB

ROOT = Path(__file__).resolve().parents[1]


def _run_example(name: str, out: Path) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), "--out", str(out)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_public_api_names():
    for name in ("convert", "inspect", "validate", "Quantizer", "register_quantizer", "register_arch", "targets"):
        assert name in bitconv.__all__ and hasattr(bitconv, name)


def test_python_api_example(tmp_path):
    out = _run_example("python_api.py", tmp_path)
    assert "validate: PASS" in out and "target bitnet-x86" in out


def test_custom_quantizer_example(tmp_path):
    out = _run_example("custom_quantizer.py", tmp_path)
    assert "14 linears: one magnitude per output channel" in out
    assert "llama.cpp loaded it" in out or "llama-cpp-python not installed" in out


@pytest.fixture()
def plugin():
    registered: list[str] = []

    def register(name: str, fn):
        cls = type(f"Plugin_{name.replace('-', '_')}", (GGUFNativeQuantizer,),
                   {"qtype": __import__("gguf").GGMLQuantizationType.F16, "quantize": fn,
                    "__module__": "my_plugin"})
        bitconv.register_quantizer(name)(cls)
        registered.append(name)
        return cls

    yield register
    for name in registered:
        QUANT_TYPES.pop(name, None)


def test_plugin_that_raises_is_named(qwen2_checkpoint, tmp_path, plugin):
    def boom(self, w, state=None):
        raise ValueError("my bug")

    plugin("boom-quant", boom)
    with pytest.raises(bitconv.BitconvError, match=r"quantizer 'boom-quant' \(my_plugin\..*\) failed: ValueError: my bug"):
        bitconv.convert(qwen2_checkpoint, "gguf", "boom-quant", tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(TMP_GLOB))


def test_plugin_with_wrong_shape_is_named(qwen2_checkpoint, tmp_path, plugin):
    def wrong(self, w, state=None):
        return bitconv.QuantizedTensor(np.zeros(7, np.float16))

    plugin("wrong-shape", wrong)
    with pytest.raises(bitconv.BitconvError, match=r"quantizer 'wrong-shape' returned shape"):
        bitconv.convert(qwen2_checkpoint, "gguf", "wrong-shape", tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(TMP_GLOB))


def test_plugin_rounding_reaches_onnx(qwen2_checkpoint, tmp_path, plugin):
    """A quantizer that stores its own rounded values (ggml F16) also exports to ONNX: every linear
    goes through it and becomes a float MatMul weight; onnxruntime then matches transformers running
    the same rounded weights."""
    pytest.importorskip("onnxruntime")
    import torch
    from transformers import AutoModelForCausalLM

    from test_onnx import ort_run, session

    def per_row_ternary(w: np.ndarray) -> np.ndarray:
        w = np.asarray(w, dtype=np.float32)
        scale = np.maximum(np.abs(w).mean(axis=-1, keepdims=True), np.float32(1e-5))
        return (np.clip(np.rint(w / scale), -1, 1) * scale).astype(np.float16)

    plugin("row-ternary-test", lambda self, w, state=None: bitconv.QuantizedTensor(per_row_ternary(w)))
    res = bitconv.convert(qwen2_checkpoint, to="onnx", quant="row-ternary-test", out=tmp_path / "onnx")
    assert res.quant == "row-ternary-test"
    ids = [9707, 1879, 11, 419, 374]
    got = ort_run(session(tmp_path / "onnx"), ids)[0][-1]
    model = AutoModelForCausalLM.from_pretrained(str(qwen2_checkpoint), dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and name.startswith("model.layers."):
                p.copy_(torch.from_numpy(per_row_ternary(p.numpy()).astype(np.float32)))
        want = model(torch.tensor([ids])).logits[0, -1].numpy()
    c = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))
    assert c >= 0.9999, f"cos {c:.6f}"
    with pytest.raises(bitconv.BitconvError, match="ONNX types"):
        bitconv.convert(qwen2_checkpoint, to="onnx", quant="q4_k", out=tmp_path / "x")


def test_plugin_rounding_reaches_safetensors(qwen2_checkpoint, tmp_path, plugin):
    """`--format rounded`: the checkpoint in its own layout, every decoder linear replaced by the
    plugin's values; transformers loads it as a plain model."""
    import torch
    from transformers import AutoModelForCausalLM

    def halves(w: np.ndarray) -> np.ndarray:  # round to multiples of 1/64: visible, deterministic
        return (np.round(np.asarray(w, np.float32) * 64) / 64).astype(np.float16)

    plugin("halves-test", lambda self, w, state=None: bitconv.QuantizedTensor(halves(w)))
    res = bitconv.convert(qwen2_checkpoint, to="safetensors", format="rounded", quant="halves-test",
                          out=tmp_path / "st")
    assert res.quant == "halves-test" and res.n_quantized == 14 and res.manifest
    got = AutoModelForCausalLM.from_pretrained(str(tmp_path / "st"), dtype=torch.float32).eval()
    want = AutoModelForCausalLM.from_pretrained(str(qwen2_checkpoint), dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in want.named_parameters():
            if p.ndim == 2 and name.startswith("model.layers."):
                p.copy_(torch.from_numpy(halves(p.numpy()).astype(np.float32)))
        for (n1, p1), (n2, p2) in zip(got.named_parameters(), want.named_parameters()):
            assert n1 == n2 and torch.equal(p1, p2), n1
        ids = torch.tensor([[9707, 1879, 11, 419]])
        assert torch.equal(got(ids).logits, want(ids).logits)
    with pytest.raises(bitconv.BitconvError, match="float weights"):
        bitconv.convert(qwen2_checkpoint, to="safetensors", format="rounded", quant="q4_k", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
