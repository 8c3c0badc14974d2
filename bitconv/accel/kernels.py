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
