"""compressed-tensors' pack-quantized scheme (symmetric int4 / int8 per group), both directions,
bit for bit as the compressed-tensors package computes it: the safetensors writer lays the codes
out, validate decodes them. Reading compressed-tensors checkpoints as a conversion source (every
format llm-compressor writes that bitconv reads) is compressed_source.py.

`round_to_dtype` reproduces torch's bf16/f16 arithmetic (an op computed in float32, rounded once).
"""
from __future__ import annotations

import numpy as np

#: torch.finfo(dtype).eps: calculate_qparams replaces a zero scale (an all-zero group) with it
_EPS = {"BF16": 2.0**-7, "F16": 2.0**-10, "F32": 2.0**-23}


def round_to_dtype(a: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values rounded (nearest even) to the source dtype and widened back: torch computes a
    bf16/f16 op in float32 and rounds the result, and a correctly rounded f32 quotient rounded again
    equals the correctly rounded bf16/f16 quotient (24 >= 2p + 2), so this reproduces it exactly."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "F32":
        return a
    if dtype == "F16":
        return a.astype(np.float16).astype(np.float32)
    bits = a.view(np.uint32)
    odd = bits >> np.uint32(16)
    odd &= np.uint32(1)
    odd += bits
    odd += np.uint32(0x7FFF)
    odd &= np.uint32(0xFFFF0000)
    return odd.view(np.float32)


def ct_quantize(w: np.ndarray, bits: int, group: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes int8 [rows, K], scales float32 [rows, K/group] holding `dtype` values) exactly as
    compressed-tensors computes them for a symmetric int group scheme (minmax observer +
    calculate_qparams + quantize): scale = max(|min(w, 0)|, max(w, 0)) / ((qmax - qmin) / 2), in the
    source dtype, 0 → eps; q = round_half_even(clamp(w / scale, qmin, qmax)) with w / scale rounded
    to the source dtype first (it is a bf16 op there)."""
    rows, k = w.shape
    g = np.asarray(w, dtype=np.float32).reshape(rows, k // group, group)
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    absmax = np.abs(g).max(axis=-1)  # = max(|min(w, 0)|, max(w, 0))
    scale = round_to_dtype(absmax / np.float32((qmax - qmin) / 2), dtype)
    scale[scale == 0] = np.float32(_EPS[dtype])
    x = round_to_dtype(g / scale[..., None], dtype)
    np.clip(x, qmin, qmax, out=x)
    return np.rint(x, out=x).astype(np.int8).reshape(rows, k), scale


def ct_dequantize(q: np.ndarray, scale: np.ndarray, dtype: str) -> np.ndarray:
    """What the package's decompression gives (q · scale in the source dtype), as float32."""
    rows, k = q.shape
    g = q.reshape(rows, scale.shape[1], -1).astype(np.float32) * scale[..., None].astype(np.float32)
    return round_to_dtype(g, dtype).reshape(rows, k)


def ct_pack(q: np.ndarray, bits: int) -> np.ndarray:
    """compressed-tensors' pack_to_int32 along the last dim: value + 2^(bits-1) at bit
    (i·bits mod 32) of word i·bits // 32, words little-endian; int32 [rows, ceil(K·bits/32)]. 4 and
    8 bits never straddle a byte, so the words are the bytes (two nibbles, low first) read as <u4."""
    per = 32 // bits
    rows, k = q.shape
    u = (q.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
    if k % per:
        u = np.pad(u, ((0, 0), (0, per - k % per)))
    if bits == 4:
        u = u[:, 0::2] | (u[:, 1::2] << np.uint8(4))
    return np.ascontiguousarray(u).view("<i4")


def ct_unpack(packed: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Inverse of `ct_pack`: int8 codes [rows, k]."""
    per = 32 // bits
    u = packed.view(np.uint32)[..., None] >> (np.arange(per, dtype=np.uint32) * np.uint32(bits))
    u = (u & np.uint32((1 << bits) - 1)).reshape(packed.shape[0], -1)[:, :k]
    return (u.astype(np.int32) - (1 << (bits - 1))).astype(np.int8)
