"""Reference ternary matmul (BitNet b1.58 BitLinear) for `bitconv validate`: I2_S weights × int8
activations quantized per token, as transformers' BitNet and bitnet.cpp run it.

The compiled extension is used when it was built, numpy otherwise; both give bit-identical results
(the integer dot products are exact, and the few float32 steps run in the same order on both paths).
`BITCONV_NO_EXT=1` forces numpy.
"""
from __future__ import annotations

import operator
import os

import numpy as np

try:
    if os.environ.get("BITCONV_NO_EXT"):
        raise ImportError("disabled by BITCONV_NO_EXT")
    from . import _ternary as _ext
except ImportError:
    _ext = None

HAVE_TERNARY_EXTENSION = _ext is not None

GROUP = 128  # I2_S packs 128 values into 32 bytes
MAX_K = 1 << 22  # keeps the extension's int32 accumulators exact (3 * 128 * K < 2**31)
_F32_EXACT_K = 1 << 16  # numpy path: every partial sum is an integer <= 256 * K <= 2**24, exact in float32
_BLOCK_VALUES = 1 << 21  # weights decoded per numpy step (bounds the temporary float matrix to 8 MB)


def _array(a: object, dtype: type, ndim: int, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != dtype:
        raise ValueError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return np.ascontiguousarray(a)


def _dims(M: int, K: int) -> tuple[int, int]:
    M, K = operator.index(M), operator.index(K)
    if M < 1 or K < GROUP or K % GROUP or K > MAX_K:
        raise ValueError(f"M={M}, K={K}: need M >= 1 and K a positive multiple of {GROUP} (at most {MAX_K})")
    return M, K


def _payload(packed: object, M: int, K: int) -> np.ndarray:
    p = np.asarray(packed)
    if p.dtype != np.uint8:
        raise ValueError(f"packed must be uint8 I2_S bytes, got {p.dtype}")
    if p.size != M * K // 4:
        hint = " (pass the payload without its 32-byte scale trailer)" if p.size == M * K // 4 + 32 else ""
        raise ValueError(f"packed has {p.size} bytes; an [{M}, {K}] I2_S tensor has M*K/4 = {M * K // 4}{hint}")
    return np.ascontiguousarray(p).reshape(-1)


def _unpack_np(p: np.ndarray) -> np.ndarray:
    """Flat codes (value = bit pair - 1) of flat I2_S bytes, in row-major value order."""
    g = p.reshape(-1, 1, 32)
    pairs = (g >> np.array([6, 4, 2, 0], np.uint8).reshape(1, 4, 1)) & np.uint8(3)
    return (pairs.view(np.int8) - np.int8(1)).reshape(-1)


def quantize_activations(x: np.ndarray, *, use_extension: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-token absmax int8 of float32 x [n, K], exactly as transformers' BitNet in float32.

    act_scale = 127 / max(max|x_row|, 1e-5); q = clip(rint(x * act_scale), -128, 127) with
    round-half-to-even. transformers writes `127 / t`, which torch evaluates as
    `t.reciprocal() * 127` (Tensor.__rdiv__), so act_scale is computed the same way, with two float32
    roundings. Returns (q int8 [n, K], act_scale float32 [n]). Rows holding inf or NaN raise
    ValueError: their int8 codes would be undefined.
    """
    x = _array(x, np.float32, 2, "x")
    if x.shape[1] < 1:
        raise ValueError(f"x must have at least one column, got shape {x.shape}")
    if _ext is not None and use_extension:
        return _ext.quantize_activations(x)
    if x.shape[0] == 0:
        return np.empty(x.shape, np.int8), np.empty(0, np.float32)
    amax = np.abs(x).max(axis=1)
    bad = np.flatnonzero(~np.isfinite(amax))
    if bad.size:
        raise ValueError(f"quantize_activations: row {bad[0]} holds inf or NaN")
    scale = (np.float32(1) / np.maximum(amax, np.float32(1e-5))) * np.float32(127)
    q = np.clip(np.rint(x * scale[:, None]), -128, 127).astype(np.int8)
    return q, scale


def unpack_i2s(packed: np.ndarray, M: int, K: int, *, use_extension: bool = True) -> np.ndarray:
    """Ternary values int8 [M, K] in {-1, 0, 1} from an I2_S payload (M*K/4 bytes, no trailer)."""
    M, K = _dims(M, K)
    p = _payload(packed, M, K)
    if _ext is not None and use_extension:
        return _ext.unpack_i2s(p, M, K)
    return _unpack_np(p).reshape(M, K)


def ternary_gemm(packed: np.ndarray, w_scale: float, x_q: np.ndarray, act_scale: np.ndarray, M: int, K: int,
                 *, use_extension: bool = True) -> np.ndarray:
    """BitLinear output float32 [n, M] from I2_S weights [M, K] and quantize_activations' output.

    acc[t, m] = sum_k w[m, k] * x_q[t, k] is exact; then out = (float32(acc) / act_scale[t]) * w_scale,
    each step rounded to float32 in exactly this order, so every path gives the same bits. w_scale is
    the stored I2_S scale (mean|W|). transformers' packed BitLinear computes acc / (act_scale * inv)
    with inv = 1 / w_scale instead, which can differ in the last bit. Works for n = 1 (GEMV) and n > 1.
    """
    M, K = _dims(M, K)
    p = _payload(packed, M, K)
    x_q = _array(x_q, np.int8, 2, "x_q")
    act_scale = _array(act_scale, np.float32, 1, "act_scale")
    n = x_q.shape[0]
    if x_q.shape[1] != K:
        raise ValueError(f"x_q has shape {x_q.shape}; its second dimension must be K = {K}")
    if act_scale.shape[0] != n:
        raise ValueError(f"act_scale has {act_scale.shape[0]} entries; x_q has {n} rows")
    w = np.float32(w_scale)
    if _ext is not None and use_extension:
        return _ext.ternary_gemm(p, float(w), x_q, act_scale, M, K)
    out = np.empty((n, M), np.float32)
    # Integer products summed in floating point are exact while every partial sum is below 2**24
    # (float32) or 2**53 (float64), whatever order BLAS adds them in.
    acc_dtype = np.float32 if K <= _F32_EXACT_K else np.float64
    xf = x_q.astype(acc_dtype)
    rows = max(1, _BLOCK_VALUES // K)
    for m0 in range(0, M, rows):
        m1 = min(M, m0 + rows)
        w_blk = _unpack_np(p[m0 * K // 4:m1 * K // 4]).reshape(m1 - m0, K).astype(acc_dtype)
        acc = (xf @ w_blk.T).astype(np.float32)
        out[:, m0:m1] = acc / act_scale[:, None] * w
    return out
