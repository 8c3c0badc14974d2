"""`bitconv validate` on ONNX exports (hf2onnx folders): passes on good Qwen2 f32/f16/int8/int4 and
BitNet int2 exports against their checkpoints, and fails (exit 3, the bad tensor named) on corrupted
ones: flipped 2-bit codes, a scaled scales initializer, a whole int8 initializer overwritten, a NaN
scale, a bad MatMulNBits block size, a missing genai_config.json.

int4 threshold: the ONNX issue's int4 logits cos ≥ 0.98 against the float model
(ONNX_MIN_COS["int4"]), with the int4 export's lm_head at int8; the corruption tests that need a
threshold name it explicitly.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cli_helpers import run_cli, validate_fails  # noqa: E402

import bitconv  # noqa: E402
from bitconv.validate import ONNX_MIN_COS, validate_onnx  # noqa: E402



@pytest.fixture(scope="module")
def qwen(qwen2_checkpoint: Path) -> Path:
    return qwen2_checkpoint


@pytest.fixture(scope="module")
def bitnet(bitnet_packed: Path) -> Path:
    return bitnet_packed


@pytest.fixture(scope="module")
def export(tmp_path_factory, qwen, bitnet):
    cache: dict[tuple[str, str], Path] = {}
    root = tmp_path_factory.mktemp("vonnx-out")

    def make(model: str, quant: str) -> Path:
        if (model, quant) not in cache:
            out = root / f"{model}-{quant}"
            bitconv.api.convert_onnx(bitnet if model == "bitnet" else qwen, quant, out, manifest=False)
            cache[model, quant] = out
        return cache[model, quant]

    return make


def _ok(r: bitconv.ValidationReport) -> None:
    assert r.passed, r.verdict
    assert r.logits is not None and r.logits.ok
    assert r.tensors and all(t.ok for t in r.tensors), [t for t in r.tensors if not t.ok]
    names = {c.name: c for c in r.checks}
    assert names["onnx.checker (full_check)"].ok and names["graph IO"].ok and names["genai_config.json"].ok
    assert names["KV cache"].ok
    assert "skipped for ONNX" in names["per-layer hidden states"].message
    assert r.layers == []


# --- good exports ------------------------------------------------------------------------------------

@pytest.mark.parametrize("quant", ["f32", "f16", "int8", "int4"])
def test_qwen2_exports_pass(export, qwen, quant):
    folder = export("qwen2", quant)
    r = bitconv.validate(folder, qwen)
    _ok(r)
    assert r.quant == quant and r.architecture == "Qwen2ForCausalLM"
    assert r.logits.reference == "transformers float32"
    assert r.logits.cos >= ONNX_MIN_COS[quant]
    assert all(t.bytes_identical for t in r.tensors), [t.name for t in r.tensors if not t.bytes_identical]
    types = {t.type for t in r.tensors}
    if quant in ("int8", "int4"):
        assert quant in types and "f16" in types  # linears + lm_head MatMulNBits, embedding f16 for Gather
        assert all(t.cos >= ONNX_MIN_COS[t.type] for t in r.tensors)  # every tensor meets the figure


def test_bitnet_int2_passes_with_identical_codes(export, bitnet):
    r = bitconv.validate(export("bitnet", "int2"), bitnet)
    _ok(r)
    assert r.quant == "int2" and "BitLinear" in r.logits.reference
    int2 = [t for t in r.tensors if t.type == "int2"]
    assert len(int2) == 14 and all(t.codes_identical and t.bytes_identical for t in int2)
    assert {t.type for t in r.tensors if t.name == "output.weight"} == {"int8"}  # lm_head int8 in int2 exports


def test_bitnet_f32_equals_bitlinear_reference(export, bitnet):
    r = validate_onnx(export("bitnet", "f32"), bitnet, use_transformers=False)
    _ok(r)
    assert r.logits.reference.startswith("numpy forward") and r.logits.cos > 0.99999 and r.logits.top1 == 1.0


def test_cli_model_file_structural_only_and_help(export):
    proc = run_cli("validate", export("qwen2", "int8") / "model.onnx")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "structural checks only" in proc.stdout and "MatMulNBits" in proc.stdout
    help_text = run_cli("validate", "--help").stdout
    assert "ONNX" in help_text and "int4=0.98" in help_text


# --- corrupted exports --------------------------------------------------------------------------------

def _copy(folder: Path, dst: Path) -> Path:
    shutil.copytree(folder, dst)
    return dst


def _location(folder: Path, init: str) -> tuple[int, int]:
    """(offset, length) of an initializer in model.onnx.data."""
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    t = next(t for t in model.graph.initializer if t.name == init)
    info = {e.key: e.value for e in t.external_data}
    assert info["location"] == "model.onnx.data"
    return int(info["offset"]), int(info["length"])


def _edit_data(folder: Path, init: str, edit) -> None:
    off, n = _location(folder, init)
    with open(folder / "model.onnx.data", "r+b") as f:
        f.seek(off)
        buf = np.frombuffer(f.read(n), dtype=np.uint8).copy()
        f.seek(off)
        f.write(edit(buf).tobytes())


_fails = validate_fails


def test_flipped_2bit_codes_named(export, bitnet, tmp_path):
    bad = _copy(export("bitnet", "int2"), tmp_path / "flip")
    _edit_data(bad, "blk.1.ffn_up.weight.q2", _flip_codes)
    res = _fails(bad, bitnet, "blk.1.ffn_up.weight", "codes differ")
    assert [t["name"] for t in res["tensors"] if not t["ok"]] == ["blk.1.ffn_up.weight"]


def _flip_codes(buf: np.ndarray) -> np.ndarray:
    """Swap 2-bit codes 1 and 3 (−1 ↔ +1) in the first 32 bytes (128 values)."""
    x = buf[:32]
    out = np.zeros_like(x)
    for shift in (0, 2, 4, 6):
        c = (x >> shift) & 3
        c = np.where(c == 1, 3, np.where(c == 3, 1, c)).astype(np.uint8)
        out |= c << shift
    assert not np.array_equal(out, x)
    buf[:32] = out
    return buf


def test_scaled_scales_initializer_named(export, qwen, tmp_path):
    bad = _copy(export("qwen2", "int4"), tmp_path / "scale")
    _edit_data(bad, "blk.0.attn_v.weight.scales",
               lambda b: (b.view(np.float32) * np.float32(1.5)).view(np.uint8))
    res = _fails(bad, qwen, "blk.0.attn_v.weight", "rel err", extra=("--min-cos", "int4=0.96"))
    assert [t["name"] for t in res["tensors"] if not t["ok"]] == ["blk.0.attn_v.weight"]


def test_overwritten_int8_initializer_named(export, qwen, tmp_path):
    bad = _copy(export("qwen2", "int8"), tmp_path / "int8")
    _edit_data(bad, "blk.1.ffn_down.weight.q8", lambda b: np.random.default_rng(0).integers(0, 256, b.size, np.uint8))
    res = _fails(bad, qwen, "blk.1.ffn_down.weight", "cos")
    assert [t["name"] for t in res["tensors"] if not t["ok"]] == ["blk.1.ffn_down.weight"]


def test_nan_scale_fails_without_reference(export, tmp_path):
    bad = _copy(export("qwen2", "int4"), tmp_path / "nan")

    def nan(b: np.ndarray) -> np.ndarray:
        f = b.view(np.float32).copy()
        f[5] = np.nan
        return f.view(np.uint8)

    _edit_data(bad, "blk.0.ffn_gate.weight.scales", nan)
    res = _fails(bad, None, "tensor values", "blk.0.ffn_gate.weight.scales", "NaN")
    assert res["structural_only"] is True


def test_bad_block_size_and_missing_genai_config(export, tmp_path):
    bad = _copy(export("qwen2", "int4"), tmp_path / "attrs")
    model = onnx.load(str(bad / "model.onnx"), load_external_data=False)
    node = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
    next(a for a in node.attribute if a.name == "block_size").i = 48
    onnx.save(model, str(bad / "model.onnx"))
    (bad / "genai_config.json").unlink()
    _fails(bad, None, "MatMulNBits attributes", "power of two", "genai_config.json: missing")
