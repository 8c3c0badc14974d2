"""quant/grid_blocks.py: an integer grid (codes, scales, zero points) written as q4_0 / q4_1 / q8_0
blocks, judged by gguf-py (its decoder, and its encoder where that must pick the same grid).

- Where every block spans its grid's full code range, gguf-py's own quantizer of the dequantized
  weights lands on the same scale, min and codes: the bytes must be identical (layout and nibble
  order pinned by ggml's reference, not by bitconv).
- Any grid that fits decodes through gguf-py exactly to the grid's weights (q4_0 / q8_0 with f16
  scales), or within the f16 rounding of the min (q4_1).
- What does not fit is refused in words.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from bitconv.quant.grid_blocks import encode, misfit
from bitconv.quant.schemes import IntGrid

QT = {"q4_0": gguf.GGMLQuantizationType.Q4_0, "q4_1": gguf.GGMLQuantizationType.Q4_1,
      "q8_0": gguf.GGMLQuantizationType.Q8_0}


def grid(bits: int, group: int, zeros: np.ndarray | int, rows: int = 6, k: int = 128, seed: int = 0,
         scale_dtype: str = "F16", full_span: bool = False) -> IntGrid:
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    codes = rng.integers(0, top + 1, size=(rows, k)).astype(np.uint8)
    if full_span:  # each 32-value block holds the smallest and the largest code
        codes[:, 0::32], codes[:, 1::32] = 0, top
    g = k // group
    scales = (rng.uniform(0.001, 0.1, size=(rows, g)) * rng.choice([1, -1], size=(rows, g)))
    scales = scales.astype(np.float16).astype(np.float32)  # the stored f16 scales, widened
    z = np.broadcast_to(np.float32(zeros), (rows, g)).astype(np.float32) if np.isscalar(zeros) \
        else np.asarray(zeros, np.float32)
    return IntGrid(bits, group, codes, scales, z, None, scale_dtype)


def decode(data: np.ndarray, qtype: str, shape: tuple[int, int]) -> np.ndarray:
    return gguf.quants.dequantize(data, QT[qtype]).reshape(shape)


@pytest.mark.parametrize("qtype,bits,zeros", [("q4_0", 4, 8), ("q8_0", 8, 128), ("q4_1", 4, "asym")])
def test_bytes_equal_gguf_py_where_it_picks_the_same_grid(qtype: str, bits: int, zeros: object) -> None:
    g = grid(bits, 32, zeros if zeros != "asym" else np.random.default_rng(1).integers(0, 16, (6, 4)),
             full_span=True)
    g.scales = np.abs(g.scales)  # gguf-py's scales are positive (a negative one is as exact, other bytes)
    if qtype == "q4_0":  # gguf-py's q4_0 scale is the block's largest magnitude / -8: code 0 must be it
        g.codes[:, 1::32] = 15
    if qtype == "q8_0":  # gguf-py's q8_0 scale is the block's largest magnitude / 127: no code 0 (−128)
        g.codes = np.maximum(g.codes, 1)
    assert misfit(g, qtype) is None
    ours = encode(g, qtype)
    ref = gguf.quants.quantize(g.dequantize(), QT[qtype])
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    assert np.array_equal(ours, ref)


@pytest.mark.parametrize("qtype,bits,group,zeros", [
    ("q4_0", 4, 32, 8), ("q4_0", 4, 128, 8), ("q4_0", 3, 64, "asym"), ("q4_0", 2, 32, "asym"),
    ("q8_0", 8, 32, 128), ("q8_0", 8, 64, 128), ("q8_0", 4, 32, "asym"), ("q8_0", 3, 128, "asym"),
])
def test_exact_decode(qtype: str, bits: int, group: int, zeros: object) -> None:
    """With f16 scales d = s and the stored integer is q − z (+ 8): the decode is the grid, exactly."""
    rows, k = 6, 128
    z = zeros if zeros != "asym" else np.random.default_rng(2).integers(0, 1 << bits, (rows, k // group))
    g = grid(bits, group, z, rows, k)
    assert misfit(g, qtype) is None
    assert np.array_equal(decode(encode(g, qtype), qtype, (rows, k)), g.dequantize())
    short = grid(bits, group, z, rows, k)  # K = 96 with groups of 64 or 128: the last group is short
    short.codes = np.ascontiguousarray(short.codes[:, :96])
    n_groups = -(-96 // group)
    short.scales, short.zeros = short.scales[:, :n_groups].copy(), short.zeros[:, :n_groups].copy()
    assert misfit(short, qtype) is None
    assert np.array_equal(decode(encode(short, qtype), qtype, (rows, 96)), short.dequantize())


@pytest.mark.parametrize("group", [32, 64, 128])
def test_q4_1_within_the_f16_rounding_of_the_min(group: int) -> None:
    """q4_1 stores m = f16(−s·z): per block the decode is off by at most half an f16 ulp of |s·z|
    (plus the float32 rounding of d·q + m in the decoder itself)."""
    rows, k = 6, 128
    z = np.random.default_rng(3).integers(0, 16, (rows, k // group))
    g = grid(4, group, z, rows, k)
    assert misfit(g, "q4_1") is None
    got = decode(encode(g, "q4_1"), "q4_1", (rows, k))
    want = g.dequantize()
    sz = np.abs(g.scales.astype(np.float64) * g.zeros)  # [rows, G]
    exponent = np.frexp(sz)[1]
    half_ulp16 = np.where(sz > 0, np.maximum(np.ldexp(1.0, exponent - 11), 2.0 ** -24) / 2, 0)
    bound = np.repeat(half_ulp16, group, axis=1) + np.spacing(np.abs(got)) / 2
    assert (np.abs(got.astype(np.float64) - want) <= bound).all()
    assert not np.array_equal(got, want)  # some min is not an f16: the bound is what is tested


def test_misfits_said_in_words() -> None:
    g = grid(4, 32, 8)
    assert misfit(g, "q4_k") is not None
    acted = IntGrid(4, 32, g.codes, g.scales, g.zeros, np.arange(128) % 4, "F16")
    assert "act-order" in (misfit(acted, "q4_0") or "")
    assert "groups of 16 of 128 columns" in (misfit(grid(4, 16, 8), "q4_0") or "")
    assert "zero points 7" in (misfit(grid(4, 32, 7), "q4_0") or "")  # 4-bit with zero 7: q − z reaches 8
    assert misfit(grid(4, 32, 7), "q4_1") is None and misfit(grid(4, 32, 7), "q8_0") is None
    assert "8-bit codes" in (misfit(grid(8, 32, 128), "q4_1") or "")
    assert "zero points 127" in (misfit(grid(8, 32, 127), "q8_0") or "")
    half = grid(4, 32, 8)
    half.zeros = half.zeros + 0.5
    assert "not integers" in (misfit(half, "q4_0") or "") and misfit(half, "q4_1") is None
    big = grid(4, 32, 8, scale_dtype="F32")
    big.scales = big.scales * 1e6
    assert "float16's range" in (misfit(big, "q4_0") or "")
    tiny = grid(4, 32, 8, scale_dtype="BF16")
    tiny.scales = np.full_like(tiny.scales, 2.0 ** -20 * 1.5)  # bf16-exact, below f16's normal range
    tiny.scales[0, 0] = 2.0 ** -20 * (1 + 2 ** -7)  # not an f16 subnormal
    assert "normal range" in (misfit(tiny, "q4_0") or "")
    bf16 = grid(4, 32, 8, scale_dtype="BF16")  # normal-range scales: rounded to f16, carried
    assert misfit(bf16, "q4_0") is None
