"""Dispatch for the GGUF encoders' hot loops: the C extension when it was built, numpy otherwise.

Both give identical bytes (tests run both and compare with gguf-py's reference); the extension is
only faster. `BITCONV_NO_EXT=1` forces numpy.
"""
from __future__ import annotations

import os

import numpy as np
from gguf import GGMLQuantizationType, quants

try:
    if os.environ.get("BITCONV_NO_EXT"):
        raise ImportError("disabled by BITCONV_NO_EXT")
    from . import _kernels as _ext
except ImportError:
    _ext = None

HAVE_EXTENSION = _ext is not None


def _flat_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1)


def to_f16(x: np.ndarray, *, use_extension: bool = True) -> np.ndarray:
    """float → float16, round to nearest even (numpy's astype(float16) bits for finite values)."""
    if _ext is None or not use_extension or x.dtype != np.float32:
        return x.astype(np.float16)
    src = _flat_f32(x)
    out = np.empty(src.shape, dtype=np.uint16)
    _ext.f32_to_f16_bits(src, out)
    return out.view(np.float16).reshape(x.shape)


def quantize_q8_0(x: np.ndarray, *, use_extension: bool = True) -> np.ndarray:
    """Q8_0 blocks (ggml's reference quantizer), shaped like gguf-py's output: [..., K/32*34] uint8."""
    if _ext is None or not use_extension:
        return quants.quantize(x, GGMLQuantizationType.Q8_0)
    src = _flat_f32(x)
    out = np.empty(src.size // 32 * 34, dtype=np.uint8)
    _ext.quantize_q8_0(src, out)
    return out.reshape(*x.shape[:-1], x.shape[-1] // 32 * 34)


#: GGML k-quant type → (bits, bytes per 256-value super-block) for the extension's quantize_k
K_QUANT_BITS = {GGMLQuantizationType.Q2_K: (2, 84), GGMLQuantizationType.Q3_K: (3, 110),
                GGMLQuantizationType.Q4_K: (4, 144), GGMLQuantizationType.Q5_K: (5, 176),
                GGMLQuantizationType.Q6_K: (6, 210)}


def quantize_k(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray | None:
    """k-quant super-blocks of x [..., K] (K a multiple of 256) with the extension, as
    [rows, K/256*block bytes] uint8; None when the extension is not built (the caller uses numpy)."""
    if _ext is None:
        return None
    bits, size = K_QUANT_BITS[qtype]
    src = _flat_f32(x)
    out = np.empty(src.size // 256 * size, dtype=np.uint8)
    _ext.quantize_k(bits, src, out)
    return out.reshape(-1, x.shape[-1] // 256 * size)


#: torch's one-thread float32 sum over the parts of a flat sequence (quant/torch_sum.py), or None
torch_serial_sum = _ext.torch_serial_sum if _ext is not None else None


# --- straight from stored values (bf16 as raw uint16 bits, or float32): no float32 copy -----------

#: float32 bits of the smallest NaN / Inf magnitude; bf16 bits of the smallest value f16 rounds to inf
_F32_NONFINITE, _BF16_F16_OVERFLOW = 0x7F800000, 0x4780


#: the stored-value kernels are in the built extension (an extension built before them lacks them)
_HAVE_STORED = _ext is not None and hasattr(_ext, "ternary_i2s")


def _stored_flat(raw: np.ndarray, stored_dtype: str) -> np.ndarray | None:
    """The flat contiguous values the stored-value kernels read (bf16 bits or float32), or None."""
    if not _HAVE_STORED or stored_dtype not in ("BF16", "F32"):
        return None
    want = np.uint16 if stored_dtype == "BF16" else np.float32
    if raw.dtype != want and raw.dtype != np.dtype(want).newbyteorder("<"):
        return None
    return np.ascontiguousarray(raw).reshape(-1)


def numpy_abs_mean_stored(raw: np.ndarray, stored_dtype: str) -> np.float32 | None:
    """`np.float32(np.mean(np.abs(w)))` of the float32 values of a stored tensor (the same bits:
    numpy's pairwise order, then its division by the count), read from bf16 bits or float32 in one
    pass; None without the extension or for other dtypes (the caller widens and asks numpy)."""
    flat = _stored_flat(raw, stored_dtype)
    if flat is None or flat.size == 0:
        return None
    total = np.float32(_ext.abs_sum_pairwise(flat))
    return np.float32(total / np.intp(flat.size))  # numpy's _mean: float32 sum / intp count, rounded to f32


def i2s_stored(raw: np.ndarray, stored_dtype: str, inv: np.float32) -> np.ndarray | None:
    """I2_S packed bytes (quant/i2s.py's) of clip(rint(w · inv), −1, 1) for a stored tensor whose
    size is a multiple of 128; None without the extension, for other dtypes, or when a value is NaN
    or ±Inf (the numpy path handles those as it always did)."""
    flat = _stored_flat(raw, stored_dtype)
    if flat is None or flat.size % 128:
        return None
    out = np.empty(flat.size // 4, dtype=np.uint8)
    if _ext.ternary_i2s(flat, np.float32(inv), out) >= _F32_NONFINITE:
        return None
    return out


def bf16_to_f16_stored(raw: np.ndarray) -> np.ndarray | None:
    """float16 (as `to_f16` of the widened values) of bf16 raw bits, in one pass; None without the
    extension or when a value is NaN / Inf or would overflow to inf in f16 (≥ 65520): the caller's
    checked numpy path then runs, and raises or converts as it always did."""
    flat = _stored_flat(raw, "BF16")
    if flat is None:
        return None
    out = np.empty(flat.shape, dtype=np.uint16)
    if _ext.bf16_to_f16_bits(flat, out) >= _BF16_F16_OVERFLOW:
        return None
    return out.view(np.float16).reshape(raw.shape)
