"""`bitconv validate`: passes on good artifacts of every GGUF type bitconv writes, fails (exit 3,
the bad tensor named) on deliberately corrupted ones, and its numpy reference forward matches
transformers."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import bitconv
import fixtures_bitnet as fb
from cli_helpers import run_cli, validate_fails
from fixtures_llama_ternary import make_llama_ternary_checkpoint
from fixtures_onebit import make_onebit_checkpoint
from independent import unpack_i2s

QWEN_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]
BITNET_TYPES = ["i2_s", "tl1", "tl2", "tq1_0", "tq2_0", "f16"]


@pytest.fixture(scope="module")
def bitnet(bitnet_packed: Path) -> Path:
    return bitnet_packed


@pytest.fixture(scope="module")
def i2s_file(bitnet: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("val-i2s") / "good.gguf"
    bitconv.convert(bitnet, "gguf", "i2_s", out, manifest=False)
    return out


def _ok(report: bitconv.ValidationReport) -> None:
    assert report.passed, report.verdict
    assert report.logits is not None and report.logits.ok
    assert all(t.ok for t in report.tensors) and len(report.tensors) > 0


@pytest.mark.parametrize("quant", QWEN_TYPES)
def test_qwen2_every_type_passes(checkpoint_factory, tmp_path, quant):
    ckpt = checkpoint_factory("qwen2", "bf16", 1, "hub")
    out = tmp_path / f"q-{quant}.gguf"
    bitconv.convert(ckpt, "gguf", quant, out, manifest=False)
    r = bitconv.validate(out, ckpt)
    _ok(r)
    assert r.logits.reference == "transformers float32"
    assert all(t.bytes_identical for t in r.tensors)  # deterministic: a fresh encoding gives the same bytes
    assert r.logits.cos >= bitconv.validate.__globals__["DEFAULT_MIN_COS"][quant]


@pytest.mark.parametrize("arch", ["qwen3", "qwen2moe", "qwen3moe"])
def test_other_qwen_architectures_pass(checkpoint_factory, tmp_path, arch):
    ckpt = checkpoint_factory(arch, "f32", 1, "tf5")
    reports = {}
    for quant in ("f32", "q8_0"):
        out = tmp_path / f"{arch}-{quant}.gguf"
        bitconv.convert(ckpt, "gguf", quant, out, manifest=False)
        reports[quant] = r = bitconv.validate(out, ckpt)
        _ok(r)
    # the f32 file: the numpy forward (attention, q/k norms, MoE routing) reproduces transformers
    r = reports["f32"]
    assert r.logits.top1 == 1.0 and r.logits.cos > 0.99999, r.logits


@pytest.mark.parametrize("quant", BITNET_TYPES)
def test_bitnet_every_type_passes(bitnet, tmp_path, quant):
    out = tmp_path / f"b-{quant}.gguf"
    bitconv.convert(bitnet, "gguf", quant, out, manifest=False)
    r = bitconv.validate(out, bitnet)
    _ok(r)
    if quant != "f16":
        assert all(t.codes_identical for t in r.tensors if t.type == quant)
    assert "BitLinear" in r.logits.reference


def test_onebit_and_llama_ternary_pass(tmp_path):
    onebit = make_onebit_checkpoint(tmp_path / "onebit")
    llama = make_llama_ternary_checkpoint(tmp_path / "llama")
    for ckpt, quant in ((onebit, "tq2_0"), (llama, "tq1_0")):
        out = tmp_path / f"{ckpt.name}.gguf"
        bitconv.convert(ckpt, "gguf", quant, out, manifest=False)
        r = bitconv.validate(out, ckpt)  # 1bitLLM has no transformers class: the numpy reference is the judge
        _ok(r)
        assert r.logits.top1 == 1.0


def test_lut_files_from_master_weights_pass(tmp_path):
    """tl1/tl2 from bf16 master weights store bitnet.cpp's converter's scale (torch's summation
    order), and validate's reference takes the mean the same way: every scale equals the
    reference's exactly, and re-encoding gives the file's bytes."""
    onebit = make_onebit_checkpoint(tmp_path / "onebit")
    master = fb.make_bitnet_checkpoint(tmp_path / "master", form="master")
    for ckpt, quant in ((onebit, "tl2"), (master, "tl1")):
        out = tmp_path / f"{ckpt.name}-{quant}.gguf"
        bitconv.convert(ckpt, "gguf", quant, out, manifest=False)
        r = bitconv.validate(out, ckpt)
        _ok(r)
        lut = [t for t in r.tensors if t.type == quant]
        assert len(lut) == 14 and all(t.codes_identical and t.bytes_identical for t in lut)
        assert all(t.scale == t.reference_scale for t in lut), [(t.name, t.scale, t.reference_scale) for t in lut]


def test_reference_forward_matches_transformers(bitnet):
    """bitconv's numpy forward (ternary kernel, int8 activations) vs transformers' BitLinear."""
    from bitconv.validate.logits import reference_hparams as _reference_hparams
    from bitconv.validate.sources import CheckpointWeights
    from bitconv.forward import ReferenceForward

    _, plan = bitconv.plan_gguf(bitnet, "i2_s")
    tokens = [128000, 791, 4062, 14198, 39935, 35308, 927]
    ours = ReferenceForward(_reference_hparams(plan, True), CheckpointWeights(plan)).run(tokens).logits[-1]
    ref = fb.bitnet_logits(bitnet, tokens, reference="bitlinear")
    cos = float(ours @ ref / np.linalg.norm(ours) / np.linalg.norm(ref))
    assert cos >= 0.9999, cos


# --- corrupted artifacts ---------------------------------------------------------------------

def _tensor(path: Path, name: str):
    return next(t for t in bitconv.inspect(path).tensors if t.name == name)


def _corrupt(src: Path, dst: Path, edit) -> Path:
    shutil.copy(src, dst)
    data = bytearray(dst.read_bytes())
    edit(data)
    dst.write_bytes(bytes(data))
    return dst


_fails = validate_fails


def test_flipped_codes_in_one_block(i2s_file, bitnet, tmp_path):
    t = _tensor(i2s_file, "blk.1.ffn_up.weight")

    def flip(data: bytearray) -> None:
        for j in range(t.offset + 64, t.offset + 96):  # one 128-value block
            data[j] ^= 0b01010101 if (data[j] & 0b11) != 0 else 0

    res = _fails(_corrupt(i2s_file, tmp_path / "flip.gguf", flip), bitnet, "blk.1.ffn_up.weight", "codes differ")
    bad = [t for t in res["tensors"] if not t["ok"]]
    assert [t["name"] for t in bad] == ["blk.1.ffn_up.weight"]


def test_wrong_scale(i2s_file, bitnet, tmp_path):
    t = _tensor(i2s_file, "blk.0.attn_v.weight")
    m, k = t.shape

    def rescale(data: bytearray) -> None:
        at = t.offset + m * k // 4
        s = np.frombuffer(bytes(data[at:at + 4]), np.float32)[0]
        data[at:at + 4] = np.float32(s * 1.01).tobytes()

    _fails(_corrupt(i2s_file, tmp_path / "scale.gguf", rescale), bitnet, "blk.0.attn_v.weight", "scale")


def test_swapped_tensors(i2s_file, bitnet, tmp_path):
    a, b = _tensor(i2s_file, "blk.0.ffn_gate.weight"), _tensor(i2s_file, "blk.0.ffn_up.weight")
    assert a.nbytes == b.nbytes

    def swap(data: bytearray) -> None:
        x, y = bytes(data[a.offset:a.offset + a.nbytes]), bytes(data[b.offset:b.offset + b.nbytes])
        data[a.offset:a.offset + a.nbytes], data[b.offset:b.offset + b.nbytes] = y, x

    res = _fails(_corrupt(i2s_file, tmp_path / "swap.gguf", swap), bitnet, "blk.0.ffn_gate.weight")
    assert {t["name"] for t in res["tensors"] if not t["ok"]} == {"blk.0.ffn_gate.weight", "blk.0.ffn_up.weight"}


def test_naive_sequential_i2s_packing(i2s_file, bitnet, tmp_path):
    """The mistake FORMATS.md warns about: four consecutive values per byte. It loads in bitnet.cpp
    and produces garbage; validate must catch it."""
    tensors = [t for t in bitconv.inspect(i2s_file).tensors if t.type_name == "I2_S"]

    def naive(data: bytearray) -> None:
        for t in tensors:
            m, k = t.shape
            codes, _, _ = unpack_i2s(bytes(data[t.offset:t.offset + t.nbytes]), m, k)
            c = (codes.reshape(-1, 4) + 1).astype(np.uint8)
            packed = (c[:, 0] << 6) | (c[:, 1] << 4) | (c[:, 2] << 2) | c[:, 3]
            data[t.offset:t.offset + m * k // 4] = packed.tobytes()

    res = _fails(_corrupt(i2s_file, tmp_path / "naive.gguf", naive), bitnet, "codes differ")
    assert sum(not t["ok"] for t in res["tensors"]) == len(tensors)
    assert res["logits"]["cos"] < 0.9


def test_missing_rope_base_fails_even_without_reference(i2s_file, tmp_path):
    def drop_key(data: bytearray) -> None:
        key = b"bitnet-25.rope.freq_base"
        at = bytes(data).index(key)
        data[at:at + len(key)] = b"bitnet-25.rope.freq_bXse"

    bad = _corrupt(i2s_file, tmp_path / "norope.gguf", drop_key)
    res = _fails(bad, None, "rope.freq_base")
    assert res["structural_only"] is True


def test_structural_only_pass_says_so(i2s_file):
    proc = run_cli("validate", i2s_file)
    assert proc.returncode == 0, proc.stderr
    assert "structural checks only" in proc.stdout and "no --reference" in proc.stdout


def test_cli_report_and_thresholds(i2s_file, bitnet):
    proc = run_cli("validate", i2s_file, "--reference", bitnet, "--no-transformers")
    assert proc.returncode == 0, proc.stderr
    assert "PASS" in proc.stdout and "numpy forward of the HF weights" in proc.stdout
    assert "hidden states per layer" in proc.stdout
    # an impossible threshold fails the logits check
    proc = run_cli("validate", i2s_file, "--reference", bitnet, "--min-cos", "i2_s=1.0000001", "--json")
    assert proc.returncode == 2 and "TYPE=VALUE" in proc.stdout
    help_text = run_cli("validate", "--help").stdout
    assert "q4_0=0.97" in help_text and "f16=0.9999" in help_text and "q4_k_m=0.95" in help_text


def test_unreadable_artifact_fails(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGUF" + bytes(100))
    res = _fails(bad, None, "FAIL")
    assert res["checks"][0]["ok"] is False
