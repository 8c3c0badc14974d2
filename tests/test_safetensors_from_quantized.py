"""hf2st from a quantized checkpoint (GPTQ / AWQ / FP8 source): every safetensors format bitconv writes
is made from the dequantized weights, as from a float checkpoint holding them.

The float-source paths are judged against the packages elsewhere (tests/test_safetensors_ct.py: the
compressed-tensors package's own compression, byte for byte; tests/test_safetensors_bnb.py:
bitsandbytes'), so here each output from a quantized source must equal, file for file, the output
from `fixtures_quantized.float_copy` (the same float tensors, the linears as their dequantized
float32 weights); and transformers with the compressed-tensors package loads one of them and gives
the float copy's logits up to the int4 rounding.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fixtures_quantized as fq  # noqa: E402
from cli_helpers import run_cli  # noqa: E402

import bitconv  # noqa: E402

FORMATS = [("compressed-tensors", {"quant": "int4", "block_size": 32}), ("compressed-tensors", {"quant": "int8", "block_size": 64}),
           ("bnb-nf4", {}), ("bnb-int8", {})]


@pytest.fixture(scope="module")
def sources(checkpoint_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name → (quantized checkpoint, its float copy)."""
    root = tmp_path_factory.mktemp("st-from-quantized")
    qwen2 = checkpoint_factory("qwen2", "bf16", 1, "hub")
    qwen3 = checkpoint_factory("qwen3", "bf16", 2, "hub")
    made = {"gptq": fq.make_gptq(qwen2, root / "gptq", bits=4, group_size=32, sym=False, desc_act=True),
            "awq": fq.make_awq(qwen2, root / "awq", group_size=32),
            "fp8": fq.make_fp8(qwen3, root / "fp8")}
    return {k: (src, fq.float_copy(src, root / f"{k}-float", expected)) for k, (src, expected) in made.items()}


def _files(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.name != "bitconv-manifest.json"}


@pytest.mark.parametrize("source", ["gptq", "awq", "fp8"])
@pytest.mark.parametrize("fmt,opts", FORMATS, ids=[f"{f}-{o.get('quant', '')}" for f, o in FORMATS])
def test_same_files_as_from_the_float_copy(source: str, fmt: str, opts: dict, sources: dict, tmp_path: Path) -> None:
    src, flt = sources[source]
    a = bitconv.convert(src, to="safetensors", format=fmt, out=tmp_path / "q", **opts)
    b = bitconv.convert(flt, to="safetensors", format=fmt, out=tmp_path / "f", **opts)
    assert a.n_quantized == b.n_quantized == 14
    fa, fb = _files(tmp_path / "q"), _files(tmp_path / "f")
    assert list(fa) == list(fb)
    for name in fa:
        if name == "config.json":  # the source's quantization_config is replaced by the output's
            assert json.loads(fa[name]) == json.loads(fb[name])
        else:
            assert fa[name] == fb[name], name


def test_transformers_loads_compressed_tensors_from_gptq(sources: dict, tmp_path: Path) -> None:
    """The compressed-tensors re-layout of an act-order GPTQ checkpoint runs in transformers (with the
    compressed-tensors package) and stays within int8 rounding of the dequantized float model."""
    pytest.importorskip("compressed_tensors")
    import torch
    from transformers import AutoModelForCausalLM

    src, flt = sources["gptq"]
    proc = run_cli("hf2st", str(src), "--format", "compressed-tensors", "--quant", "int8", "--block-size", "32",
                   "-o", str(tmp_path / "ct"))
    assert proc.returncode == 0, proc.stderr
    ids = torch.tensor([[1, 22, 333, 4444, 151]])

    def logits(path: Path) -> np.ndarray:
        m = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            return m(ids).logits[0].float().numpy()

    got, want = logits(tmp_path / "ct"), logits(flt)
    cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    assert cos >= 0.9999, cos


def test_bitnet_packed_from_quantized_refused(sources: dict, tmp_path: Path) -> None:
    proc = run_cli("hf2st", str(sources["awq"][0]), "--format", "bitnet-packed", "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and "not a ternary" in proc.stderr and not (tmp_path / "o").exists(), proc.stderr
