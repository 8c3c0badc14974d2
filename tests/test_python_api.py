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
