"""Llama-architecture ternary models (Llama3-8B-1.58 style, transformers' packed bitnet layout) →
tq1_0 / tq2_0 / f16 for mainline llama.cpp: byte-identical to llama.cpp's converter (q/k
permutation included) and judged by llama.cpp against the ternary-weights reference."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bitconv
import fixtures_llama_ternary
from runtimes import assert_identical_to_llamacpp_converter, cos, llama_last_logits

pytestmark = pytest.mark.slow
TOKENS = [128000, 9906, 1917, 11, 420, 374, 264, 1296, 315, 279, 1887, 13]


@pytest.fixture(scope="module")
def llama_ternary(tmp_path_factory) -> Path:
    return fixtures_llama_ternary.make_llama_ternary_checkpoint(tmp_path_factory.mktemp("llt") / "llama-1.58")


@pytest.mark.parametrize("quant", ["tq1_0", "tq2_0", "f16"])
def test_identical_to_llamacpp_converter(llama_ternary, quant, tmp_path):
    # the converter's lazy mode cannot dequantize packed bitnet weights (torch meta device)
    assert_identical_to_llamacpp_converter(llama_ternary, quant, tmp_path, extra_args=("--no-lazy",))


@pytest.mark.parametrize("quant,min_cos", [("tq1_0", 0.999), ("tq2_0", 0.999), ("f16", 0.9999)])
def test_llamacpp_logits_match_ternary_reference(llama_ternary, quant, min_cos, tmp_path):
    pytest.importorskip("llama_cpp")
    out = tmp_path / "m.gguf"
    result = bitconv.convert(llama_ternary, "gguf", quant, out, manifest=False)
    assert result.architecture == "LlamaForCausalLM"
    ref = fixtures_llama_ternary.ternary_weights_logits(llama_ternary, TOKENS)
    got = llama_last_logits(out, TOKENS)
    assert cos(got, ref) >= min_cos
    assert int(np.argmax(got)) == int(np.argmax(ref))
