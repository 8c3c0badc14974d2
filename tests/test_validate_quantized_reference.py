"""validate with a quantized checkpoint (GPTQ / AWQ / FP8) as --reference: its dequantized weights are
the reference, for a GGUF, an ONNX export and a safetensors re-layout. A reference whose dequantized
weights are not the artifact's (the AWQ checkpoint of the same float model, for a GGUF made from the
GPTQ one) fails per tensor, which it could not if validate compared against anything but the
dequantized weights; and the reference logits come from the dequantized weights, never from the
scheme's own kernels in transformers.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fixtures_quantized as fq  # noqa: E402

import bitconv  # noqa: E402


@pytest.fixture(scope="module")
def sources(checkpoint_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("validate-quantized")
    qwen2 = checkpoint_factory("qwen2", "bf16", 1, "hub")
    return {"gptq": fq.make_gptq(qwen2, root / "gptq", bits=4, group_size=32, sym=False, desc_act=True)[0],
            "awq": fq.make_awq(qwen2, root / "awq", group_size=32)[0],
            "fp8": fq.make_fp8(checkpoint_factory("qwen3", "bf16", 2, "hub"), root / "fp8")[0]}


def test_gguf_against_its_quantized_source(sources: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    bitconv.convert(sources["gptq"], "gguf", "q8_0", out, manifest=False)
    good = bitconv.validate(out, sources["gptq"])
    assert good.passed, good.to_dict()
    tensors = {t["name"]: t for t in good.to_dict()["tensors"]}
    assert tensors["blk.0.attn_q.weight"]["cos"] > 0.9999  # q8_0 of the dequantized weights, not of anything coarser
    other = bitconv.validate(out, sources["awq"])  # the same float model, another int4 grid
    assert not other.passed
    bad = {t["name"] for t in other.to_dict()["tensors"] if not t["ok"]}
    assert "blk.0.attn_q.weight" in bad


def test_onnx_and_safetensors_against_their_quantized_sources(sources: dict[str, Path], tmp_path: Path) -> None:
    onnx_dir = tmp_path / "onnx"
    bitconv.convert(sources["fp8"], "onnx", "int8", onnx_dir)
    report = bitconv.validate(onnx_dir, sources["fp8"])
    assert report.passed, report.to_dict()
    # transformers would run its FP8 kernels (activations quantized too): the dequantized weights are the reference
    assert report.logits is not None and report.logits.reference.startswith("numpy forward")
    st_dir = tmp_path / "ct"
    bitconv.convert(sources["awq"], to="safetensors", format="compressed-tensors", quant="int8", block_size=32, out=st_dir)
    report = bitconv.validate(st_dir, sources["awq"])
    assert report.passed, report.to_dict()
