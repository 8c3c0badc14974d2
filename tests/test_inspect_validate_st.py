"""`bitconv inspect` on safetensors checkpoints (bitnet-packed, compressed-tensors int4, sharded) and
ONNX export folders, from headers only; `bitconv validate` on safetensors checkpoints: passes on good
bitnet-packed / compressed-tensors folders against their checkpoints and fails (exit 3, the bad tensor
named) on corrupted copies: ternary codes flipped and a ternary weight_scale off by 1 %, an int4
weight_scale doubled (cos cannot see it: the relative error does).

Validation runs the numpy reference forward (no transformers): the tensors are the judge here, and
the transformers comparison is the GGUF and ONNX tests' business.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

import bitconv
import fixtures_bitnet as fb
from bitconv import api
from bitconv.errors import ArtifactError
from bitconv.validate import ST_MIN_COS
from cli_helpers import error_line, json_result, run_cli, validate_fails

GROUP = 32  # the tiny Qwen2's hidden size is 64: the default group of 128 does not divide it


@pytest.fixture(scope="module")
def qwen(checkpoint_factory: Callable[..., Path]) -> Path:
    return checkpoint_factory("qwen2", "bf16", 1, "hub")


@pytest.fixture(scope="module")
def bitnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fb.make_bitnet_checkpoint(tmp_path_factory.mktemp("ivst-src") / "model", form="master", dtype="bf16")


@pytest.fixture(scope="module")
def arts(qwen: Path, bitnet: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ivst")
    api.convert_safetensors(bitnet, "bitnet-packed", root / "packed")
    api.convert_safetensors(qwen, "compressed-tensors", root / "int4", quant="int4", block_size=GROUP)
    api.convert_safetensors(qwen, "compressed-tensors", root / "sharded", quant="int4", block_size=GROUP,
                            max_shard_size="1MB")
    return {"packed": root / "packed", "int4": root / "int4", "sharded": root / "sharded"}


def _corrupt(src: Path, dst: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """A copy of a single-file checkpoint folder with its tensors changed."""
    shutil.copytree(src, dst)
    f = dst / "model.safetensors"
    tensors = load_file(str(f))
    change(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})
    return dst


def _tensor(summary: Any, name: str) -> dict[str, Any]:
    return next(t for t in summary.tensors if t["name"] == name)


# --- inspect ------------------------------------------------------------------------------------------

def test_inspect_bitnet_packed(arts: dict[str, Path]) -> None:
    s = bitconv.inspect(arts["packed"])
    assert s.kind == "safetensors" and s.format == "bitnet-packed" and s.architecture == "BitNetForCausalLM"
    assert s.quantization_config == {"quant_method": "bitnet", "linear_class": "bitlinear",
                                     "quantization_mode": "offline"}
    assert "linear_class bitlinear" in s.quantization
    assert s.n_quantized == 14 and s.index is None and [sh["file"] for sh in s.shards] == ["model.safetensors"]
    q = _tensor(s, "model.layers.0.self_attn.q_proj.weight")
    assert q["dtype"] == "U8" and q["shape"] == [256 // 4, 256] and q["bytes"] == 64 * 256
    assert _tensor(s, "model.layers.0.self_attn.q_proj.weight_scale")["shape"] == [1]
    assert s.data_bytes == sum(t["bytes"] for t in s.tensors)
    assert s.shards[0]["bytes"] > s.data_bytes  # the file: header + data


def test_inspect_compressed_tensors_cli(arts: dict[str, Path]) -> None:
    doc = json_result(run_cli("inspect", arts["int4"], "--json"))
    assert doc["ok"] is True and doc["command"] == "inspect"
    r = doc["result"]
    assert r["kind"] == "safetensors" and r["format"] == "compressed-tensors" and r["n_quantized"] == 14
    w = r["quantization_config"]["config_groups"]["group_0"]["weights"]
    assert (w["num_bits"], w["group_size"]) == (4, GROUP)
    assert "int4 symmetric group 32" in r["quantization"] and "ignore lm_head" in r["quantization"]
    names = {t["name"]: t for t in r["tensors"]}
    packed = names["model.layers.0.mlp.down_proj.weight_packed"]
    assert packed["dtype"] == "I32" and packed["shape"] == [64, 192 * 4 // 32] and packed["bytes"] == 64 * 24 * 4
    assert names["model.layers.0.mlp.down_proj.weight_scale"]["shape"] == [64, 192 // GROUP]
    assert "model.layers.0.mlp.down_proj.weight" not in names
    # a lone .safetensors file: the same table, the format from its folder's config.json
    one = bitconv.inspect(arts["int4"] / "model.safetensors")
    assert one.format == "compressed-tensors" and one.tensors == r["tensors"]


def test_inspect_sharded(arts: dict[str, Path]) -> None:
    s = bitconv.inspect(arts["sharded"])
    whole = bitconv.inspect(arts["int4"])
    index = json.loads((arts["sharded"] / "model.safetensors.index.json").read_text())
    assert s.index == "model.safetensors.index.json" and len(s.shards) == len(set(index["weight_map"].values())) > 3
    assert sum(sh["n_tensors"] for sh in s.shards) == s.n_tensors == whole.n_tensors
    assert {t["name"]: index["weight_map"][t["name"]] for t in s.tensors} == index["weight_map"]
    strip = [{k: v for k, v in t.items() if k != "file"} for t in s.tensors]
    assert sorted(strip, key=lambda t: t["name"]) == sorted(({k: v for k, v in t.items() if k != "file"}
                                                             for t in whole.tensors), key=lambda t: t["name"])
    assert s.data_bytes == whole.data_bytes == index["metadata"]["total_size"]


def test_inspect_onnx(qwen: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    out = tmp_path / "onnx"
    api.convert_onnx(qwen, "int4", out, manifest=False)
    s = bitconv.inspect(out)
    assert s.kind == "onnx" and s.quant == "int4" and s.block_size == 32 and s.producer.startswith("bitconv")
    assert [i["name"] for i in s.inputs][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert s.outputs[0]["name"] == "logits" and s.outputs[0]["shape"][-1] == 151936
    assert {"domain": "com.microsoft", "version": 1} in s.opset
    nb = {n["weight"]: n for n in s.matmulnbits}
    assert len(nb) == 15 and nb["blk.0.ffn_down.weight.q4"] == {
        "node": nb["blk.0.ffn_down.weight.q4"]["node"], "weight": "blk.0.ffn_down.weight.q4", "K": 192, "N": 64,
        "bits": 4, "block_size": 32, "accuracy_level": 4}
    inits = {i["name"]: i for i in s.initializers}
    q = inits["blk.0.ffn_down.weight.q4"]
    assert q["dtype"] == "uint8" and q["bytes"] == 64 * (192 // 32) * 16 and q["location"] == "model.onnx.data"
    data = next(f for f in s.files if f["name"] == "model.onnx.data")
    assert s.initializer_bytes <= data["bytes"] and s.genai_config["type"] == "qwen2"
    proc = run_cli("inspect", out)
    assert proc.returncode == 0, proc.stderr
    for text in ("MatMulNBits", "blk.0.ffn_down.weight.q4", "past_key_values.0.key", "model.onnx.data", "int4"):
        assert text in proc.stdout, text


def test_inspect_unknown_path(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not an artifact bitconv reads"):
        bitconv.inspect(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 16)
    proc = run_cli("inspect", tmp_path)
    assert proc.returncode == 2 and "model.safetensors" in error_line(proc)


# --- validate ----------------------------------------------------------------------------------------

def _ok(r: bitconv.ValidationReport, quant: str) -> None:
    assert r.passed, r.verdict
    assert r.quant == quant and r.logits is not None and r.logits.ok and r.logits.min_cos == ST_MIN_COS[quant]
    assert r.tensors and all(t.ok for t in r.tensors), [t for t in r.tensors if not t.ok]
    assert all(t.bytes_identical for t in r.tensors), [t.name for t in r.tensors if not t.bytes_identical]
    assert len(r.layers) == 2 and all(c.ok for c in r.checks)


def test_validate_bitnet_packed(arts: dict[str, Path], bitnet: Path) -> None:
    r = bitconv.validate(arts["packed"], bitnet, use_transformers=False)
    _ok(r, "bitnet-packed")
    ternary = [t for t in r.tensors if t.type == "bitnet-packed"]
    assert len(ternary) == 14 and all(t.codes_identical and t.cos >= 0.999 for t in ternary)
    assert r.logits.cos > 0.99999  # the same ternary weights and scales: the same BitLinear forward


@pytest.mark.parametrize("which", ["int4", "sharded"])
def test_validate_compressed_tensors(arts: dict[str, Path], qwen: Path, which: str) -> None:
    r = bitconv.validate(arts[which], qwen, use_transformers=False)
    _ok(r, "int4")
    linears = [t for t in r.tensors if t.type == "int4"]
    assert len(linears) == 14 and all(t.codes_identical and t.cos >= ST_MIN_COS["int4"] for t in linears)
    assert {t.type for t in r.tensors} == {"int4", "bf16"}


def test_flipped_codes_and_scale_fail(arts: dict[str, Path], bitnet: Path, tmp_path: Path) -> None:
    codes, scale = "model.layers.1.self_attn.o_proj.weight", "model.layers.0.mlp.up_proj.weight_scale"

    def corrupt(t: dict[str, torch.Tensor]) -> None:
        w = t[codes].clone()
        w[:4] = (w[:4] & 0xFC) | (2 - (w[:4] & 3))  # code c → 2 − c in the low 2 bits of the first 4 rows
        t[codes] = w
        t[scale] = t[scale] * 1.01

    r = bitconv.validate(_corrupt(arts["packed"], tmp_path / "bad", corrupt), bitnet, use_transformers=False)
    assert not r.passed
    assert f"{codes}: " in r.verdict and "codes differ from re-ternarizing the reference (rows 0…3)" in r.verdict
    assert "model.layers.0.mlp.up_proj.weight: weight scale" in r.verdict
    bad = {t.name: t for t in r.tensors if not t.ok}
    assert set(bad) == {codes, "model.layers.0.mlp.up_proj.weight"}
    assert bad[codes].codes_differing > 0 and bad["model.layers.0.mlp.up_proj.weight"].codes_identical


def test_int4_scale_doubled_fails_cli(arts: dict[str, Path], qwen: Path, tmp_path: Path) -> None:
    name = "model.layers.1.mlp.down_proj.weight_scale"

    def double(t: dict[str, torch.Tensor]) -> None:
        t[name] = t[name] * 2

    res = validate_fails(_corrupt(arts["int4"], tmp_path / "bad", double), qwen,
                         "model.layers.1.mlp.down_proj.weight: rel err", "wrong scale?")
    bad = [t for t in res["tensors"] if not t["ok"]]
    assert [t["name"] for t in bad] == ["model.layers.1.mlp.down_proj.weight"]
    assert bad[0]["cos"] > 0.99  # cos alone would have passed it


@pytest.mark.parametrize("fmt,quant", [("bnb-nf4", "nf4"), ("bnb-int8", "int8")])
def test_validate_bitsandbytes(fmt: str, quant: str, qwen: Path, tmp_path: Path) -> None:
    """hf2st's bitsandbytes layouts validate through the source reader (one decoder with the
    conversions); an absmax / SCB scaled by 1.5 fails on that tensor's relative error."""
    out = tmp_path / fmt
    api.convert_safetensors(qwen, fmt, out)
    r = bitconv.validate(out, qwen, use_transformers=False)
    assert r.passed and r.quant == quant, r.verdict
    linears = [t for t in r.tensors if t.type == quant]
    assert len(linears) == 14 and all(t.ok for t in r.tensors)
    stat = "model.layers.1.mlp.down_proj." + ("weight.absmax" if quant == "nf4" else "SCB")

    def scale(t: dict[str, torch.Tensor]) -> None:
        t[stat] = t[stat] * 1.5

    bad = bitconv.validate(_corrupt(out, tmp_path / "bad", scale), qwen, use_transformers=False)
    assert not bad.passed and [t.name for t in bad.tensors if not t.ok] == ["model.layers.1.mlp.down_proj.weight"]
