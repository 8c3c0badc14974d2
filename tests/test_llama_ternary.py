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


# --- Llama 3.1-style "llama3" RoPE frequency scaling -------------------------------------------
# The original context is tiny (real models: 8192) so that the 12-token prompt already turns through
# the scaled wavelengths: a file without the factors fails the logits test (checked below).
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


@pytest.fixture(scope="module")
def llama3_rope(tmp_path_factory) -> Path:
    return fixtures_llama_ternary.make_llama_ternary_checkpoint(
        tmp_path_factory.mktemp("llt-rope") / "llama-3.1-1.58", layers=1, rope_scaling=LLAMA3_ROPE)


def test_llama3_rope_identical_to_llamacpp_converter(llama3_rope, tmp_path):
    from llamacpp_oracle import read_gguf

    assert_identical_to_llamacpp_converter(llama3_rope, "tq2_0", tmp_path, extra_args=("--no-lazy",))
    # the factors are the first tensor, F32, one per frequency; no rope.scaling.* keys
    f = read_gguf(tmp_path / "ours.gguf")
    assert (f.tensors[0].name, f.tensors[0].type_name, f.tensors[0].shape) == ("rope_freqs.weight", "F32", (32,))
    factors = np.frombuffer(f.tensor_bytes(f.tensors[0]).tobytes(), dtype=np.float32)
    assert factors[0] == 1.0 and factors[-1] == 8.0 and ((factors > 1) & (factors < 8)).any()
    assert not [k for k in f.kv if ".rope.scaling." in k]


def test_llama3_rope_logits_match_ternary_reference(llama3_rope, tmp_path):
    pytest.importorskip("llama_cpp")
    out = tmp_path / "m.gguf"
    bitconv.convert(llama3_rope, "gguf", "f16", out, manifest=False)
    ref = fixtures_llama_ternary.ternary_weights_logits(llama3_rope, TOKENS)
    got = llama_last_logits(out, TOKENS)
    assert cos(got, ref) >= 0.9999
    assert int(np.argmax(got)) == int(np.argmax(ref))
    # negative control: against the same weights with plain RoPE the threshold fails (cos ≈ 0.9995)
    plain = fixtures_llama_ternary.ternary_weights_logits(
        llama3_rope, TOKENS, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    assert cos(got, plain) < 0.9999


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope"])
def test_unsupported_rope_scaling_is_one_line_error(llama3_rope, rope_type, tmp_path):
    import json

    from cli_helpers import assert_nothing_written, clone_checkpoint, error_line, run_cli

    src = clone_checkpoint(llama3_rope, tmp_path / "ckpt")
    cfg = json.loads((llama3_rope / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": rope_type, "factor": 4.0, "original_max_position_embeddings": 64}
    (src / "config.json").write_text(json.dumps(cfg))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = run_cli("hf2gguf", str(src), "-o", str(out_dir / "model.gguf"), "--quant", "tq2_0")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    message = error_line(proc)
    assert f"rope_scaling type {rope_type!r} is not supported" in message and "llama3" in message
    assert_nothing_written(out_dir, out_dir / "model.gguf")
    assert list(out_dir.iterdir()) == []
