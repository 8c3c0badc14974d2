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
