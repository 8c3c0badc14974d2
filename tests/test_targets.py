"""Hardware-target presets: the quant type each implies per model kind, and the refusals."""
from __future__ import annotations

import json

import pytest

import fixtures_bitnet
import fixtures_onebit
from cli_helpers import run_cli


@pytest.fixture(scope="module")
def relu2_bitnet(tmp_path_factory):
    return fixtures_bitnet.make_bitnet_checkpoint(tmp_path_factory.mktemp("t") / "b25", form="master")


@pytest.fixture(scope="module")
def silu_bitnet(tmp_path_factory):
    return fixtures_onebit.make_onebit_checkpoint(tmp_path_factory.mktemp("t") / "onebit")


def _dry(ckpt, *args):
    proc = run_cli("hf2gguf", str(ckpt), "--dry-run", "--json", *args)
    return proc.returncode, json.loads(proc.stdout)


def test_targets_listed():
    rows = json.loads(run_cli("targets", "--json").stdout)["result"]
    by = {r["name"]: r for r in rows}
    assert by["bitnet-x86"]["ternary_quant"] == "i2_s" and by["bitnet-x86"]["lut_quant"] == "tl2"
    assert by["bitnet-arm"]["ternary_quant"] == "tl1"
    assert by["llama.cpp"]["ternary_quant"] == "tq2_0" and by["llama.cpp"]["smallest_quant"] == "tq1_0"
    assert by["llama.cpp"]["other_quant"] == "q4_0"


@pytest.mark.parametrize("args,quant", [(("--target", "llama.cpp"), "tq2_0"),
                                        (("--target", "llama.cpp", "--smallest"), "tq1_0"),
                                        (("--target", "llama.cpp", "--quant", "f16"), "f16")])
def test_llamacpp_target_for_silu_bitnet(silu_bitnet, args, quant):
    code, obj = _dry(silu_bitnet, *args)
    assert code == 0 and obj["result"]["quant"] == quant


def test_llamacpp_target_refused_for_relu2_bitnet(relu2_bitnet):
    code, obj = _dry(relu2_bitnet, "--target", "llama.cpp")
    assert code == 2
    assert "relu2" in obj["error"]["message"] and "bitnet-x86" in obj["error"]["message"]


def test_bitnet_x86_target(relu2_bitnet, qwen2_checkpoint):
    code, obj = _dry(relu2_bitnet, "--target", "bitnet-x86")
    assert code == 0 and obj["result"]["quant"] == "i2_s" and obj["result"]["type_counts"]["i2_s"] == 14
    code, obj = _dry(qwen2_checkpoint, "--target", "bitnet-x86")
    assert code == 2 and "no preset for non-ternary models" in obj["error"]["message"]


def test_llamacpp_target_for_qwen(qwen2_checkpoint):
    code, obj = _dry(qwen2_checkpoint, "--target", "llama.cpp")
    assert code == 0 and obj["result"]["quant"] == "q4_0"


def test_unknown_target(qwen2_checkpoint):
    code, obj = _dry(qwen2_checkpoint, "--target", "tpu")
    assert code == 2 and "unknown target" in obj["error"]["message"]


def test_force_ternarize_a_non_ternary_model(checkpoint_factory, tmp_path):
    from independent import unpack_i2s
    from llamacpp_oracle import read_gguf

    ckpt = checkpoint_factory("qwen2", "f32", 1, "hub", hidden=128)
    out = tmp_path / "t.gguf"
    proc = run_cli("hf2gguf", str(ckpt), "-q", "i2_s", "-o", str(out))
    assert proc.returncode == 2 and "--force-ternarize" in proc.stderr and not out.exists()
    proc = run_cli("hf2gguf", str(ckpt), "-q", "i2_s", "-o", str(out), "--force-ternarize")
    assert proc.returncode == 0, proc.stderr
    g = read_gguf(out)
    i2s = [t for t in g.tensors if t.ggml_type == 36]
    assert len(i2s) == 14  # 7 linears x 2 layers; embeddings/output stay f16, norms and biases f32
    k, n = i2s[0].shape
    codes, scale, _ = unpack_i2s(g.tensor_bytes(i2s[0]), n, k)
    assert set(codes.ravel().tolist()) <= {-1, 0, 1} and scale > 0
