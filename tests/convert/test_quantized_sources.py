"""GPTQ / AWQ / FP8 checkpoints as conversion sources (bitconv/convert/dequant.py, quant/gptq.py,
awq.py, fp8.py), end to end on tiny Qwen2 / Qwen3 checkpoints rewritten by the test packer
(tests/fixtures_quantized.py):

- the dequantized weights in the GGUF equal the packer's (codes, zero points, rounded scales), read a
  slab of rows at a time as well as whole;
- any GGUF type: the file equals converting a float checkpoint that holds those weights;
- byte identity with llama.cpp's convert_hf_to_gguf.py (slow): f16 / bf16 / q8_0 of GPTQ and FP8;
- inspect names the scheme; bad input gets one line, exit 2 and nothing written.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fixtures_quantized as fq  # noqa: E402
import quantized_checks as checks  # noqa: E402
from cli_helpers import read_gguf_tensors, run_cli  # noqa: E402
from turns import share  # noqa: E402

import bitconv  # noqa: E402

GGML_F32 = 0


@pytest.fixture(scope="module")
def qwen2(checkpoint_factory: Callable[..., Path]) -> Path:
    return checkpoint_factory("qwen2", "bf16", 1, "hub")


@pytest.fixture(scope="module")
def qwen3(checkpoint_factory: Callable[..., Path]) -> Path:
    return checkpoint_factory("qwen3", "bf16", 2, "hub")  # shared with the byte-identity matrix


@pytest.fixture(scope="module")
def qwen3moe(checkpoint_factory: Callable[..., Path]) -> Path:
    return checkpoint_factory("qwen3moe", "bf16", 3, "hub")  # experts one tensor per expert and projection


@pytest.fixture(scope="module")
def floats(qwen2: Path, qwen3: Path, qwen3moe: Path) -> dict[str, Path]:
    """The float checkpoint each packed fixture was made from, by the fixture name's suffix."""
    return {"qwen2": qwen2, "qwen3": qwen3, "qwen3moe": qwen3moe}


@pytest.fixture(scope="module")
def packed(qwen2: Path, qwen3: Path, qwen3moe: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """name → (checkpoint folder, expected float weights by HF name)."""
    root = tmp_path_factory.mktemp("quantized")
    return {
        # MoE: every expert's projections quantized, the router (mlp.gate) left float, as GPTQModel does
        "gptq-qwen3moe": fq.make_gptq(qwen3moe, root / "Qwen3MoE-GPTQ-Int4", bits=4, group_size=32, sym=True),
        "fp8-qwen3moe": fq.make_fp8(qwen3moe, root / "Qwen3MoE-FP8", block=(128, 128), scale_dtype="BF16"),
        "awq-qwen3moe": fq.make_awq(qwen3moe, root / "Qwen3MoE-AWQ", group_size=16),  # moe_intermediate 48
        # Qwen2.5-*-GPTQ-Int4 keys; asymmetric, act-order, v1 zero points, groups of 32 along K
        "gptq-qwen2": fq.make_gptq(qwen2, root / "Qwen2-GPTQ-Int4", bits=4, group_size=32, sym=False, desc_act=True),
        "gptq3-qwen3": fq.make_gptq(qwen3, root / "Qwen3-GPTQ-Int3", bits=3, group_size=64, sym=True),
        "awq-qwen2": fq.make_awq(qwen2, root / "Qwen2-AWQ", group_size=32),
        "fp8-qwen3": fq.make_fp8(qwen3, root / "Qwen3-FP8", block=(128, 128), scale_dtype="BF16"),
    }


def gguf_f32(path: Path) -> dict[str, np.ndarray]:
    return {n: np.frombuffer(data, np.float32).reshape(shape) for n, (t, shape, data) in read_gguf_tensors(path).items()
            if t == GGML_F32}


def gguf_name(hf: str) -> str:
    layer, module = hf.split(".")[2], hf.split(".")[-2]
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    return f"blk.{layer}.{names[module]}.weight"


@pytest.mark.parametrize("name", ["gptq-qwen2", "gptq3-qwen3", "awq-qwen2", "fp8-qwen3", "gptq-qwen3moe", "awq-qwen3moe"])
def test_dequantized_weights(name: str, packed: dict, floats: dict[str, Path]) -> None:
    """Each linear read whole and in slabs of rows that start and end anywhere = the packer's weights;
    the float tensors pass through as they are, in llama.cpp's order (GPTQ/AWQ: dequantized linears
    appended after the stored tensors; FP8: in the weight's place)."""
    from bitconv.convert.checkpoint import Checkpoint

    src, expected = packed[name]
    ck = Checkpoint.open(src)
    flt = Checkpoint.open(floats[name.rpartition("-")[2]])
    assert set(ck.tensors) == set(flt.tensors)
    for hf, want in expected.items():
        lt = ck.tensors[hf]
        assert (lt.dtype, lt.shape) == ("F32", want.shape)
        assert np.array_equal(lt.load(), want), hf
        n = want.shape[0]
        cuts = sorted({0, n, *np.random.default_rng(n).integers(1, n, size=3).tolist()})
        assert np.array_equal(np.concatenate([lt.load_rows(a, b) for a, b in zip(cuts, cuts[1:])]), want), hf
        if name.startswith("fp8"):  # not a uniform grid
            assert lt.grid is None
            continue
        grids = [lt.grid(a, b) for a, b in zip(cuts, cuts[1:])]  # the integer grid, in the same slabs
        assert np.array_equal(np.concatenate([g.dequantize() for g in grids]), want), hf
        assert all(g.codes.dtype == np.uint8 and int(g.codes.max()) < 2 ** g.bits for g in grids)
        assert (grids[0].g_idx is not None) == (name == "gptq-qwen2")  # act-order only there
    for n, lt in ck.tensors.items():
        if n not in expected:
            assert np.array_equal(lt.load_raw(), flt.tensors[n].load_raw()), n
    # the packed checkpoint is one file: its tensors come in name order
    plain = sorted(n for n in ck.tensors if n not in expected)
    assert list(ck.tensors) == (sorted(ck.tensors) if name.startswith("fp8") else plain + sorted(expected))


def test_gguf_streams_dequantized_linears(packed: dict, qwen2: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer reads a dequantized linear a slab of rows at a time (a linear's slab needs only its
    columns of qweight/qzeros/scales) and the f32 GGUF holds the packer's weights; for AWQ, which
    llama.cpp's converter does not read, also within half a step of the float weights."""
    src, expected = packed["awq-qwen2"]
    slabs = checks.record_slabs(monkeypatch, 1 << 15)  # gate/up/down: 48 KiB in f32, 2 slabs each
    out = tmp_path / "out.gguf"
    bitconv.convert(src, "gguf", "f32", out, manifest=False)
    got = gguf_f32(out)
    for hf, want in expected.items():
        assert np.array_equal(got[gguf_name(hf)], want), hf
    assert any(hi - lo < n for lo, hi, n in slabs), "no linear was read a slab at a time"
    from bitconv.convert.checkpoint import Checkpoint

    flt, g = Checkpoint.open(qwen2), 32
    for hf, want in expected.items():
        w = flt.tensors[hf].load()
        r = w.reshape(w.shape[0], -1, g)
        step = np.repeat((r.max(-1) - r.min(-1)) / 15, g, axis=1)
        assert (np.abs(want - w) <= step * 0.5 * 1.01 + 1e-6).all(), hf




@pytest.mark.parametrize("name", ["gptq-qwen2", "awq-qwen3moe"])
def test_any_type_is_dequantize_then_encode(name: str, packed: dict, tmp_path: Path) -> None:
    """-q q4_k_m from GPTQ / AWQ (MoE: experts stacked): the same tensors as from a float checkpoint of
    the dequantized weights."""
    src, expected = packed[name]
    flt = fq.float_copy(src, tmp_path / src.name, expected)
    ours = bitconv.convert(src, "gguf", "q4_k_m", tmp_path / "q.gguf", manifest=False)
    ref = bitconv.convert(flt, "gguf", "q4_k_m", tmp_path / "f.gguf", manifest=False)
    a, b = read_gguf_tensors(Path(ours.output)), read_gguf_tensors(Path(ref.output))
    assert list(a) == list(b) and a == b


def test_inspect(packed: dict) -> None:
    lines = {k: bitconv.inspect(packed[k][0]) for k in packed}
    gptq = lines["gptq-qwen2"]
    assert gptq.format == "gptq" and gptq.n_quantized == 14
    for phrase in ("gptq", "bits 4", "group size 32", "symmetric no", "act-order yes", "minus 1"):
        assert phrase in gptq.quantization, gptq.quantization
    assert "bits 3" in lines["gptq3-qwen3"].quantization and "symmetric yes" in lines["gptq3-qwen3"].quantization
    assert "awq" in lines["awq-qwen2"].quantization and "group size 32" in lines["awq-qwen2"].quantization
    fp8 = lines["fp8-qwen3"]
    assert fp8.n_quantized == 14 and "fp8" in fp8.quantization and "128×128 blocks" in fp8.quantization
    proc = run_cli("inspect", str(packed["awq-qwen2"][0]))
    assert proc.returncode == 0 and "awq, bits 4, group size 32" in proc.stdout, proc.stdout


# --- bad input ------------------------------------------------------------------------------------

L0 = "model.layers.0.self_attn.q_proj"










def _half_k(t: dict[str, Any]) -> None:
    """q_proj with K = 32 (config says 64): every part cut consistently."""
    t[f"{L0}.qweight"], t[f"{L0}.qzeros"] = t[f"{L0}.qweight"][:4].clone(), t[f"{L0}.qzeros"][:1].clone()
    t[f"{L0}.scales"], t[f"{L0}.g_idx"] = t[f"{L0}.scales"][:1].clone(), t[f"{L0}.g_idx"][:32].clone() * 0


BAD_API = [
    ("gptq-qwen2", {"bits": 5}, None, "bits 5 is not supported"),
    ("gptq-qwen2", {"checkpoint_format": "marlin"}, None, "checkpoint_format 'marlin'"),
    ("awq-qwen2", {"version": "gemv"}, None, "version 'gemv' is not supported"),
    ("fp8-qwen3", {"fmt": "e5m2"}, None, "fmt 'e5m2'"),
    ("gptq-qwen2", None, checks.drop(f"{L0}.scales"), f"{L0}.scales"),
    ("awq-qwen2", None, checks.drop(f"{L0}.qzeros"), f"{L0}.qzeros"),
    ("fp8-qwen3", None, checks.drop(f"{L0}.weight"), f"{L0}.weight"),
    ("gptq-qwen2", {"group_size": 16}, None, "down_proj.scales: shape (6, 64) disagrees"),
    ("awq-qwen2", None, checks.set_tensor(f"{L0}.scales", lambda a: a[:, :32]), "scales: shape (2, 32) disagrees"),
    ("fp8-qwen3", {"weight_block_size": [64, 64]}, None, "down_proj.weight_scale_inv: shape (1, 2) disagrees"),
    ("gptq-qwen2", None, _half_k, "shape (64, 32) disagrees with config.json"),
    ("gptq-qwen2", {"desc_act": True}, checks.drop(f"{L0}.g_idx"), "no model.layers.0.self_attn.q_proj.g_idx"),
    ("gptq-qwen2", {"quant_method": "bitsandbytes"}, None, "expects exactly one of load_in_4bit and load_in_8bit"),
    ("gptq-qwen2", None, checks.drop(f"{L0}.qweight"), f"{L0}.g_idx: a gptq g_idx without {L0}.qweight"),
    ("gptq-qwen2", None, lambda t: t.__setitem__(f"{L0}.weight", t[f"{L0}.scales"].clone()), "both a float"),
]


@pytest.mark.parametrize("base,qc,edit,phrase", BAD_API, ids=[c[3][:32] for c in BAD_API])
def test_bad_input_api(base: str, qc: Any, edit: Any, phrase: str, packed: dict, tmp_path: Path) -> None:
    checks.assert_refused(checks.variant(packed[base][0], tmp_path / "src", qc, edit), phrase, tmp_path)


@pytest.mark.parametrize("case", ["unknown-method", "g_idx-out-of-range"])
def test_bad_input_cli(case: str, packed: dict, tmp_path: Path) -> None:
    """One line on stderr, exit 2, nothing written — g_idx is checked when its linear is read, after
    the output file was started."""
    if case == "unknown-method":
        src, phrase = checks.variant(packed["gptq-qwen2"][0], tmp_path / "src", {"quant_method": "hqq"}), "unknown quant_method 'hqq'"
    else:
        name = "model.layers.1.mlp.down_proj.g_idx"
        src = checks.variant(packed["gptq-qwen2"][0], tmp_path / "src", None,
                       checks.set_tensor(name, checks.g_idx_out_of_range))
        phrase = f"{name}: group 6 out of range (the scales hold 6 groups)"
    checks.assert_refused_cli(src, phrase, tmp_path)


# --- byte identity with llama.cpp's converter ------------------------------------------------------

#: each run compares one output type per scheme (tests/turns.py: all three within three runs;
#: BITCONV_TEST_TURN=all for the whole matrix): llama.cpp's converter costs ~13 s a file here
IDENTITY = [(name, t) for i, name in enumerate(("gptq-qwen2", "fp8-qwen3", "gptq-qwen3moe", "fp8-qwen3moe"))
            for t in share(("f16", "bf16", "q8_0"), 1, i)]


@pytest.fixture(scope="module")
def references(packed: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """llama.cpp's GGUFs of the GPTQ and FP8 fixtures, all made by one converter process."""
    return checks.llamacpp_references(packed, IDENTITY, tmp_path_factory.mktemp("llamacpp-quantized"))


@pytest.mark.slow
@pytest.mark.parametrize("name,outtype", IDENTITY)
def test_identical_to_llamacpp_converter(name: str, outtype: str, packed: dict, references: dict,
                                         tmp_path: Path) -> None:
    checks.assert_identical_to_reference(packed[name][0], outtype, references[(name, outtype)], tmp_path)


@pytest.mark.parametrize("to,quant", [("gguf", "i2_s"), ("gguf", "tq2_0"), ("onnx", "int2")])
def test_ternary_outputs_refused(to: str, quant: str, packed: dict, tmp_path: Path) -> None:
    """A quantized non-ternary source is refused a ternary type as its float checkpoint would be."""
    from bitconv.errors import UsageError

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UsageError, match="not a ternary-trained model"):
        bitconv.convert(packed["gptq-qwen2"][0], to, quant, out / "m")
    assert list(out.iterdir()) == []
