"""The kernels that read a checkpoint's stored values (bf16 raw bits, float32) in one pass give the
numpy path's bits: numpy's float32 mean(|W|) (its pairwise summation order), I2_S codes and packing,
bf16 → f16; both the AVX2 and the portable C paths, on edge cases (NaN / Inf, zeros, tiny and odd
sizes, sums that overflow)."""
from __future__ import annotations

import numpy as np
import pytest

from bitconv.accel import kernels
from bitconv.convert.arch.bitnet_embedding import script_absmean_scale, script_absmean_scale_stored
from bitconv.convert.checkpoint import bf16_bits_to_f32
from bitconv.quant.floats import F16
from bitconv.quant.i2s import I2S
from bitconv.quant.ternary import TernaryScale

ext = pytest.importorskip("bitconv.accel._kernels", reason="C kernels not built")
SIMD = [True, False]
#: < 8, ≤ 128 (the 8-accumulator block), odd, around numpy's 8192 buffer, multi-million
SIZES = [1, 2, 5, 7, 8, 9, 15, 16, 17, 63, 64, 65, 127, 128, 129, 130, 255, 256, 257, 1000, 1001, 8191, 8192,
         8193, 16383, 65537, 100_003, 1 << 20, 3 * 1024 * 1024 + 13]


def _bf16(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _same(a: np.float32, b: np.float32) -> bool:
    return bool(np.float32(a).view(np.uint32) == np.float32(b).view(np.uint32)) or bool(np.isnan(a) and np.isnan(b))


def _values(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    x = (rng.standard_normal(n) * 0.02).astype(np.float32)
    if kind == "zeros":
        x[:] = 0
        x[::3] = -0.0
    elif kind == "mixed":  # magnitudes over many binades, subnormals included
        x *= np.float32(2.0) ** rng.integers(-140, 40, n).astype(np.float32)
    elif kind == "nan":
        x[n // 2] = np.nan
    elif kind == "inf":
        x[n - 1] = -np.inf
    elif kind == "overflow":  # finite values whose float32 sum is inf
        x[:] = np.float32(3e38)
    return x


@pytest.mark.parametrize("simd", SIMD)
@pytest.mark.parametrize("kind", ["normal", "zeros", "mixed", "nan", "inf", "overflow"])
def test_abs_sum_is_numpys(kind, simd):
    rng = np.random.default_rng(len(kind))
    for n in SIZES if kind in ("normal", "mixed") else [1, 7, 8, 129, 8193, 100_003]:
        x = _values(n, kind, rng)
        for src, values in ((x, x), (_bf16(x), bf16_bits_to_f32(_bf16(x)))):
            with np.errstate(over="ignore", invalid="ignore"):
                want = np.add.reduce(np.abs(values))
                mean = np.float32(np.mean(np.abs(values)))
            got = ext.abs_sum_pairwise(src, simd)
            assert _same(np.float32(got), want), (n, src.dtype, got, want)
            if simd:
                assert _same(kernels.numpy_abs_mean_stored(src, "BF16" if src.dtype == np.uint16 else "F32"), mean)


def test_abs_mean_stored_declines_what_it_cannot_read():
    assert kernels.numpy_abs_mean_stored(np.ones(8, np.float16), "F16") is None
    assert kernels.numpy_abs_mean_stored(np.zeros(0, np.uint16), "BF16") is None
    assert kernels.numpy_abs_mean_stored(np.ones(8, ">f4"), "F32") is None  # big-endian bytes


def _i2s_numpy(w: np.ndarray, inv: np.float32) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.asarray(I2S().quantize(w, TernaryScale(inv=inv, scale=np.float32(1) / inv)).data).reshape(-1)


@pytest.mark.parametrize("simd", SIMD)
@pytest.mark.parametrize("shape", [(1, 128), (3, 256), (5, 384), (7, 1152), (64, 1024)])
def test_i2s_codes_are_the_quantizers(shape, simd):
    rng = np.random.default_rng(shape[0])
    w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    flat = w.reshape(-1)
    # ties of rint at a power-of-two inv: p = ±0.5 (→ 0), ±1.5 (→ ±2 → clipped), one ulp around 0.5
    ties = np.array([0.125, -0.125, 0.375, -0.375, np.nextafter(np.float32(0.125), 1), 0, -0.0, 1e-30, 3e38,
                     -3e38, np.inf, -np.inf], np.float32)
    flat[:ties.size] = ties[:flat.size]
    for inv in (np.float32(4.0), script_absmean_scale(w.reshape(-1)[ties.size:]).inv, np.float32(1e5)):
        for src, values in ((w, w), (_bf16(w).reshape(shape), bf16_bits_to_f32(_bf16(w)).reshape(shape))):
            out = np.empty(w.size // 4, np.uint8)
            with np.errstate(over="ignore"):
                m = ext.ternary_i2s(src.reshape(-1), inv, out, simd)
            assert np.array_equal(out, _i2s_numpy(values, inv)), (inv, src.dtype)
            assert m == int(np.abs(values).reshape(-1).view(np.uint32).max())  # the Inf's bits
            assert kernels.i2s_stored(src, "BF16" if src.dtype == np.uint16 else "F32", inv) is None  # ±Inf: numpy's


@pytest.mark.parametrize("simd", SIMD)
def test_i2s_reports_nan_and_stored_path_declines(simd):
    w = (np.random.default_rng(9).standard_normal((2, 128)) * 0.05).astype(np.float32)
    w[1, 7] = np.nan
    out = np.empty(64, np.uint8)
    assert ext.ternary_i2s(w.reshape(-1), np.float32(4), out, simd) >= 0x7F800000
    assert kernels.i2s_stored(_bf16(w).reshape(2, 128), "BF16", np.float32(4)) is None
    assert I2S().quantize_stored(_bf16(w).reshape(2, 128), "BF16", TernaryScale(np.float32(4), np.float32(0.25))) is None
    with pytest.raises(ValueError):
        ext.ternary_i2s(w.reshape(-1)[:100], np.float32(4), np.empty(25, np.uint8))


@pytest.mark.parametrize("simd", SIMD)
def test_bf16_to_f16_every_bit_pattern(simd):
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    bits = np.concatenate([bits, bits[:13]])  # a tail that is not a multiple of 8
    out = np.empty(bits.size, np.uint16)
    assert ext.bf16_to_f16_bits(bits, out, simd) == 0x7FFF
    with np.errstate(over="ignore"):
        want = kernels.to_f16(bf16_bits_to_f32(bits)).view(np.uint16)
    finite = np.isfinite(bf16_bits_to_f32(bits))
    assert np.array_equal(out[finite], want[finite])
    assert np.array_equal(np.isnan(out.view(np.float16)), ~finite & np.isnan(bf16_bits_to_f32(bits)))
    small = bits[(bits & 0x7FFF) < 0x4780]
    out = np.empty(small.size, np.uint16)
    assert ext.bf16_to_f16_bits(small, out, simd) == 0x477F


def test_f16_stored_declines_overflow_and_nonfinite():
    x = (np.random.default_rng(4).standard_normal((4, 64)) * 100).astype(np.float32)
    raw = _bf16(x).reshape(x.shape)
    got = F16().quantize_stored(raw, "BF16")
    assert got is not None and np.array_equal(got.data.view(np.uint16), kernels.to_f16(bf16_bits_to_f32(raw)).view(np.uint16))
    assert got.data.shape == x.shape
    for bad in (65536.0, -1e6, np.inf, np.nan):  # bf16 has no value in [65280, 65536)
        y = x.copy()
        y[2, 3] = bad
        assert F16().quantize_stored(_bf16(y).reshape(x.shape), "BF16") is None
    y = x.copy()
    y[0, 0] = 65280.0  # the largest bf16 below 65520: f16 rounds it to 65280
    assert F16().quantize_stored(_bf16(y).reshape(x.shape), "BF16") is not None
    assert F16().quantize_stored(x, "F32") is None  # float32 keeps its own path


def test_quantize_stored_is_quantize():
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((33, 256)) * 0.03).astype(np.float32)
    raw = _bf16(w).reshape(w.shape)
    state = script_absmean_scale(bf16_bits_to_f32(raw))
    for src, dtype, values in ((raw, "BF16", bf16_bits_to_f32(raw)), (w, "F32", w)):
        fast = I2S().quantize_stored(src, dtype, state)
        assert fast is not None and fast.data.shape == (33, 64)
        assert np.array_equal(fast.data, I2S().quantize(values, state).data)

    class MyI2S(I2S):  # a plugin's own encoder is never bypassed
        name = "my-i2s-test"

        def quantize(self, w, state=None):
            return super().quantize(w, state)

    class MyF16(F16):
        name = "my-f16-test"

        def quantize(self, w, state=None):
            return super().quantize(w, state)

    assert MyI2S().quantize_stored(raw, "BF16", state) is None
    assert MyF16().quantize_stored(raw, "BF16") is None


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (128, 128), (1024, 3072 + 8)])
def test_script_scale_from_stored_values(shape):
    rng = np.random.default_rng(shape[0])
    for w in ((rng.standard_normal(shape) * 0.02).astype(np.float32), np.zeros(shape, np.float32),
              np.full(shape, 1e-7, np.float32)):
        raw = _bf16(w).reshape(shape)
        for src, dtype, values in ((raw, "BF16", bf16_bits_to_f32(raw)), (w, "F32", w)):
            want, got = script_absmean_scale(values), script_absmean_scale_stored(src, dtype)
            assert got is not None and _same(got.inv, want.inv) and _same(got.scale, want.scale)
    w = np.ones(shape, np.float32)
    w.reshape(-1)[0] = np.nan
    got = script_absmean_scale_stored(_bf16(w).reshape(shape), "BF16")
    assert got is not None and np.isnan(got.scale) and np.isnan(script_absmean_scale(w).scale)
