"""TL1 / TL2 packers: bytes equal bitnet.cpp's own packer (golden files made from upstream's
converter, tests/golden/README.md), the per-tensor scale equals bitnet.cpp's converter's to the
bit (its torch arithmetic, reproduced in tests/independent.py), and an unpacker written from
FORMATS-TL.md alone recovers the codes and scale for random shapes and tilings."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitconv.errors import UsageError
from bitconv.quant.base import QuantizedTensor
from bitconv.quant.i2s import pack_i2s
from bitconv.quant.registry import get_quantizer
from bitconv.quant.tl import (TL1, TL2, KernelConfig, Tiling, choose_tl1_tiling, choose_tl2_tiling,
                              tl1_problems, tl2_nbytes, tl2_problems, unpack_tl1, unpack_tl2)
from bitconv.quant.ternary import TernaryScale, absmean_scale, converter_scale
from independent import bitnet_cpp_tl_weight
from independent import unpack_tl1 as ind_unpack_tl1
from independent import unpack_tl2 as ind_unpack_tl2

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _encode(q, codes: np.ndarray, scale: float) -> bytes:
    """What the writer does per tensor: quantize rows, assemble, append the trailer."""
    s = np.float32(scale)
    state = TernaryScale(inv=np.float32(1) / s, scale=s)
    body = q.assemble(q.quantize(codes.astype(np.float32) * s, state).data, state)
    return body.tobytes() + q.trailer(state)


def _golden(case: str) -> tuple[np.ndarray, np.float32, bytes, list[int] | None]:
    z = np.load(GOLDEN / "inputs.npz")
    tiling = [int(x) for x in z[f"{case}_tiling"]] if f"{case}_tiling" in z.files else None
    return z[f"{case}_codes"], np.float32(z[f"{case}_scale"]), (GOLDEN / f"{case}.bin").read_bytes(), tiling


@pytest.mark.parametrize("case", ["tl2_rem", "tl2_norem", "tl1_bm64", "tl1_bm32"])
def test_tl_bytes_equal_bitnet_cpp_packer(case):
    codes, scale, gold, (m, k, bm, bk, bmm) = _golden(case)
    cls = TL2 if case.startswith("tl2") else TL1
    q = cls(kernel_config=KernelConfig([Tiling(m, k, bm, bk, bmm)]))
    assert q.encoded_nbytes((m, k)) == len(gold)
    assert _encode(q, codes, scale) == gold


@pytest.mark.parametrize("case", ["tl2_rem", "tl2_norem", "tl1_bm64", "tl1_bm32"])
def test_tl_prepare_on_the_golden_master_weights_gives_the_golden_bytes(case):
    """The whole path the writer runs (prepare on master weights W = codes·2⁻⁵, as make_golden.py
    builds them, then quantize, assemble, trailer) gives upstream's bytes, scale included."""
    codes, scale, gold, (m, k, bm, bk, bmm) = _golden(case)
    q = (TL2 if case.startswith("tl2") else TL1)(kernel_config=KernelConfig([Tiling(m, k, bm, bk, bmm)]))
    w = codes.astype(np.float32) * np.float32(2.0 ** -5)
    state = q.prepare([w[i:i + 48] for i in range(0, m, 48)])
    assert state.scale == scale
    body = q.assemble(q.quantize(w, state).data, state)
    assert body.tobytes() + q.trailer(state) == gold


def _master(rng: np.random.Generator, shape: tuple[int, int], dtype: str) -> np.ndarray:
    """Master weights as a checkpoint holds them (bf16: float32 values bf16 can hold)."""
    w = (rng.standard_normal(shape, dtype=np.float32) * np.float32(rng.uniform(0.005, 0.05)))
    if dtype == "bf16":
        w = (w.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    return w.astype(np.float16) if dtype == "f16" else w


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_scale_equals_bitnet_cpp_converter_to_the_bit(threads):
    """Every tensor: the stored scale's bytes and the codes equal what bitnet.cpp's converter computes
    (tests/independent.py: its torch code, step by step) with that many torch threads. Some of these
    tensors have a float64-rounded mean an ulp away from torch's, so a shortcut would fail here."""
    pytest.importorskip("torch")
    import torch

    rng = np.random.default_rng(threads)
    off_by_ulps = 0
    shapes = [(128, 256), (256, 256), (768, 256), (256, 768), (64, 96), (3, 5), (1000, 40)]
    for dtype in ("bf16", "f32"):
        for shape in shapes * 3:
            w = _master(rng, shape, dtype)
            want_codes, want_scale = bitnet_cpp_tl_weight(
                torch.from_numpy(w).to(torch.bfloat16) if dtype == "bf16" else w, threads)
            q = TL2(torch_threads=threads)
            state = q.prepare([w[i:i + 100] for i in range(0, shape[0], 100)])
            assert np.asarray(want_scale).dtype == np.float32
            assert state.scale.tobytes() == want_scale.tobytes(), (dtype, shape)
            assert np.array_equal(q.quantize(w, state).data, want_codes), (dtype, shape)
            assert converter_scale([w], threads).scale.tobytes() == want_scale.tobytes()
            off_by_ulps += absmean_scale([w]).scale != want_scale
    assert off_by_ulps, "no tensor here tells torch's summation order from a float64 sum"


def test_f16_weights_keep_a_float32_scale():
    """bitnet.cpp's converter keeps f16 tensors f16, so its scale is float16 and it stops at its own
    `assert i2_scale.dtype == np.float32`; bitconv stores the float32 scale of the same arithmetic."""
    pytest.importorskip("torch")
    w = _master(np.random.default_rng(5), (256, 256), "f16")
    codes, scale = bitnet_cpp_tl_weight(w)
    assert np.asarray(scale).dtype == np.float16
    state = TL1().prepare([w])
    assert np.array_equal(TL1().quantize(w.astype(np.float32), state).data, codes)
    assert np.float16(state.scale) == scale and state.scale == converter_scale([w.astype(np.float32)]).scale


@pytest.mark.parametrize("peak,want_zero", [(0.0, True), (4.9e-6, True), (5.0e-6, True), (5.1e-6, False)])
def test_all_zero_codes_store_scale_zero(peak, want_zero):
    """mean|W| under 1e-5 is clamped: weights below 5e-6 all round to 0, and the converter stores
    max|0| = 0 as the scale, not 1e-5 (a code of ±1 stores f32(1 / 1e5))."""
    w = np.zeros((64, 256), np.float32)
    w[3, 7] = peak
    w[10, :5] = np.float32(1e-7)
    state = TL2().prepare([w])
    codes = TL2().quantize(w, state).data
    assert state.scale == (0.0 if want_zero else np.float32(1) / np.float32(1e5))
    assert codes.any() != want_zero
    if importlib.util.find_spec("torch"):
        assert state.scale.tobytes() == bitnet_cpp_tl_weight(w)[1].tobytes()


def test_torch_threads_must_be_positive():
    with pytest.raises(UsageError, match="torch_threads"):
        TL2(torch_threads=0)


@pytest.mark.parametrize("case", ["i2s_256x256", "i2s_128x768"])
def test_i2s_bytes_equal_bitnet_cpp_quantizer(case):
    codes, scale, gold, _ = _golden(case)
    q = get_quantizer("i2_s")
    assert _encode(q, codes, scale) == gold
    assert pack_i2s(codes).tobytes() == gold[:codes.size // 4]


@pytest.mark.parametrize("case", ["tl2_rem", "tl2_norem", "tl1_bm64", "tl1_bm32"])
def test_independent_unpacker_reads_the_golden_files(case):
    """The test unpacker agrees with upstream's bytes, so the property tests below check the layout."""
    codes, scale, gold, (m, k, bm, bk, bmm) = _golden(case)
    got, got_scale, rest = (ind_unpack_tl2(gold, m, k, bm, bk) if case.startswith("tl2")
                            else ind_unpack_tl1(gold, m, k, bm, bk, bmm))
    assert np.array_equal(got, codes) and got_scale == scale and set(rest) <= {0}


def _random_codes(rng: np.random.Generator, m: int, k: int) -> np.ndarray:
    codes = rng.integers(-1, 2, size=(m, k), dtype=np.int8)
    codes[rng.integers(0, m)] = 0  # an all-zero row
    c0 = int(rng.integers(0, k // 32)) * 32
    codes[:, c0:c0 + 32] = 0  # an all-zero column block
    return codes


@st.composite
def tl2_cases(draw):
    bm = 32 * draw(st.integers(1, 4))
    m = bm * draw(st.integers(1, 3))
    bk = 24 * draw(st.integers(1, 10))
    k3 = bk * draw(st.integers(1, 4))
    k2 = 32 * draw(st.integers(0, (bk - 1) // 32)) if bk > 32 else 0
    k = k3 + k2
    if k < 256:
        k3 += bk * (-(-(256 - k) // bk))
        k = k3 + k2
    return Tiling(m, k, bm, bk, 32), draw(st.integers(0, 2**31 - 1))


@settings(max_examples=40, deadline=None)
@given(tl2_cases(), st.sampled_from([1e-6, 0.0173, 3.5e4]))
def test_tl2_round_trip_random_tilings(case, scale):
    t, seed = case
    assert not tl2_problems(t), t
    codes = _random_codes(np.random.default_rng(seed), t.m, t.k)
    blob = _encode(TL2(kernel_config=KernelConfig([t])), codes, scale)
    assert len(blob) == tl2_nbytes(t.m, t.k)
    got, got_scale, rest = ind_unpack_tl2(blob, t.m, t.k, t.bm, t.bk)
    assert np.array_equal(got, codes) and got_scale == np.float32(scale) and set(rest) <= {0}
    assert np.array_equal(unpack_tl2(np.frombuffer(blob, np.uint8), t), codes)


@st.composite
def tl1_cases(draw):
    bmm = draw(st.sampled_from([32, 64]))
    bm = bmm * draw(st.integers(1, 3))
    m = bm * draw(st.integers(1, 3))
    by = 256 // bmm
    bk = by * draw(st.integers(1, 32))
    k = bk * draw(st.integers(1, 4))
    return Tiling(m, k, bm, bk, bmm), draw(st.integers(0, 2**31 - 1))


@settings(max_examples=40, deadline=None)
@given(tl1_cases(), st.sampled_from([1e-6, 0.5, 3.5e4]))
def test_tl1_round_trip_random_tilings(case, scale):
    t, seed = case
    assert not tl1_problems(t), t
    codes = _random_codes(np.random.default_rng(seed), t.m, max(t.k, 32))[:, :t.k]
    blob = _encode(TL1(kernel_config=KernelConfig([t])), codes, scale)
    assert len(blob) == t.m * t.k // 4 + 32
    got, got_scale, rest = ind_unpack_tl1(blob, t.m, t.k, t.bm, t.bk, t.bmm)
    assert np.array_equal(got, codes) and got_scale == np.float32(scale) and rest == bytes(28)
    assert np.array_equal(unpack_tl1(np.frombuffer(blob, np.uint8), t), codes)


def test_all_zero_tensor_and_dequantize():
    t = Tiling(64, 288, 64, 96, 32)
    q = TL2(kernel_config=KernelConfig([t]))
    blob = _encode(q, np.zeros((64, 288), np.int8), 0.25)
    deq = q.dequantize(QuantizedTensor(np.frombuffer(blob, np.uint8)), (64, 288))
    assert deq.shape == (64, 288) and not deq.any()
    codes = _random_codes(np.random.default_rng(1), 64, 288)
    blob = _encode(q, codes, 0.25)
    assert np.array_equal(q.dequantize(QuantizedTensor(np.frombuffer(blob, np.uint8)), (64, 288)), codes * 0.25)


@pytest.mark.parametrize("m,k", [(256, 256), (128, 256), (768, 256), (256, 768), (2560, 2560), (640, 2560),
                                 (6912, 2560), (2560, 6912), (3200, 8640), (8640, 3200), (4096, 14336),
                                 (1024, 4096), (3072, 9216), (96, 1000)])
def test_chosen_tilings_are_valid(m, k):
    t2 = choose_tl2_tiling(m, k)
    assert t2 is not None and not tl2_problems(t2)
    if k % 96 == 0 or k % 192 == 0:
        assert k % t2.bk == 0  # no two-part remainder when one is avoidable
    t1 = choose_tl1_tiling(m, k)
    assert t1 is not None and not tl1_problems(t1)


@pytest.mark.parametrize("m,k", [(100, 256), (256, 200), (256, 268)])
def test_untileable_shapes(m, k):
    assert choose_tl2_tiling(m, k) is None
    assert TL2().shape_error((m, k)).startswith("no tl2 tiling exists")


def test_tiling_constraints_are_reported():
    assert any("multiple of 24" in p for p in tl2_problems(Tiling(256, 256, 128, 64, 32)))
    assert any("K mod BK" in p for p in tl2_problems(Tiling(256, 256, 128, 120, 32)))
    assert any("bmm" in p for p in tl2_problems(Tiling(256, 256, 128, 96, 64)))
    assert any("BM=" in p for p in tl2_problems(Tiling(256, 256, 96, 96, 32)))
    assert any("at least 256" in p for p in tl2_problems(Tiling(256, 192, 128, 96, 32)))
    assert any("up to" in p for p in tl2_problems(Tiling(256, 1536, 128, 264, 32)))  # 16-bit accumulators
    assert any("256/bm" in p for p in tl1_problems(Tiling(256, 256, 128, 2, 64)))
    assert tl1_problems(Tiling(256, 256, 128, 64, 48)) == ["bm (bmm) must be 32 or 64, not 48"]


def test_kernel_config_round_trip(tmp_path):
    cfg = KernelConfig([Tiling(256, 256, 128, 96, 32), Tiling(768, 256, 256, 96, 32)])
    p = tmp_path / "kernel_config.ini"
    p.write_text(cfg.to_ini())
    back = KernelConfig.read(p)
    assert back.tilings == cfg.tilings
    # upstream codegen's ConfigParser output, keys as it writes them
    assert cfg.to_ini().startswith("[Kernels_0]\nm = 256\nk = 256\nbm = 128\nbk = 96\nbmm = 32\n\n[Kernels_1]\n")
    text = cfg.codegen_text("tl2", "tiny")
    assert "--BM 128,256 --BK 96,96 --bm 32,32" in text and '"tiny": [[256, 256], [768, 256]]' in text
    assert "-ub 1" in text


@pytest.mark.parametrize("content,phrase", [
    ("not an ini", "not a kernel_config.ini"),
    ("[Kernels_0]\nm = 256\nk = 256\nbm = 128\nbk = 96\n", "bmm"),
    ("[Kernels_0]\nm = 256\nk = 256\nbm = x\nbk = 96\nbmm = 32\n", "invalid literal"),
    ("", "no kernel sections"),
    ("[A]\nm=256\nk=256\nbm=128\nbk=96\nbmm=32\n[B]\nm=256\nk=256\nbm=64\nbk=96\nbmm=32\n", "two sections"),
])
def test_bad_kernel_config(tmp_path, content, phrase):
    p = tmp_path / "k.ini"
    p.write_text(content)
    with pytest.raises(UsageError, match=phrase):
        KernelConfig.read(p)


def test_missing_kernel_config_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read"):
        KernelConfig.read(tmp_path / "nope.ini")


def test_strict_config_names_the_missing_shape():
    q = TL2(kernel_config=KernelConfig([Tiling(256, 256, 128, 96, 32)], source="k.ini"))
    assert "k.ini has no section for m=128, k=256 (it has 256x256)" in q.shape_error((128, 256))
    bad = TL2(kernel_config=KernelConfig([Tiling(256, 256, 128, 64, 32)], source="k.ini"))
    assert "invalid" in bad.shape_error((256, 256))

