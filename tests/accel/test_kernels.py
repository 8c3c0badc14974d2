"""The C kernels give the same bytes as numpy / gguf-py (the reference) on every path."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from bitconv.accel import kernels

ext = pytest.importorskip("bitconv.accel._kernels", reason="C kernels not built")
Q8 = gguf.GGMLQuantizationType.Q8_0


def _all_kinds_of_floats(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = x[np.isfinite(x)]
    edges = np.array([0.0, -0.0, 65504, 65519.996, 65520, 65536, 2**-25, 2**-24, 1.5 * 2**-24, 2**-14,
                      2**-14 * (1 - 2**-11), 5.96e-8, 2.98e-8, -2.98e-8, 1e-30, -1e30], np.float32)
    small = (rng.standard_normal(200_000) * 1e-5).astype(np.float32)
    return np.concatenate([x, edges, small])


@pytest.mark.parametrize("simd", [True, False])
def test_f16_bits_match_numpy(simd):
    x = _all_kinds_of_floats(1_000_000, 1)
    out = np.empty(x.size, np.uint16)
    ext.f32_to_f16_bits(x, out, simd)
    ref = x.astype(np.float16).view(np.uint16)
    bad = np.nonzero(out != ref)[0]
    assert bad.size == 0, f"{bad.size} mismatches, first {x[bad[:3]]}"


def test_q8_0_matches_gguf_py():
    rng = np.random.default_rng(2)
    y = (rng.standard_normal((512, 256)) * 0.05).astype(np.float32)
    y[0] = 0
    y[1] = 1e30
    y[2] = -5
    y[3, :32] = np.float32(0.49999997) * 3 / 127
    y[4, :8] = [0.5, 1.5, 2.5, -0.5, 126.5, 127, -127, 3]
    y[5] = rng.standard_normal(256).astype(np.float32) * 1e-30  # subnormal scales
    with np.errstate(over="ignore"):
        ref = gguf.quants.quantize(y, Q8)
    assert np.array_equal(kernels.quantize_q8_0(y), ref)
    assert np.array_equal(kernels.quantize_q8_0(y, use_extension=False), ref)


def test_f16_dispatch_both_paths():
    x = np.random.default_rng(3).standard_normal((64, 96)).astype(np.float32)
    assert np.array_equal(kernels.to_f16(x).view(np.uint16), kernels.to_f16(x, use_extension=False).view(np.uint16))
    assert kernels.to_f16(x).shape == x.shape
