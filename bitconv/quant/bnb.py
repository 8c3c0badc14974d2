"""bitsandbytes' NF4 (4-bit, blocks of 64) and LLM.int8 (row-wise absmax) weight schemes, both
directions, with the codes and statistics bitsandbytes' own CPU kernels give (tests compare them):
the safetensors writer lays them out as transformers saves a bnb model; validate and the
quantized-checkpoint sources decode them.
"""
from __future__ import annotations

import math

import numpy as np

#: quantize_4bit's blocksize as transformers calls it (BitsAndBytesConfig has no blocksize field)
BNB_BLOCK = 64
#: bitsandbytes.functional.get_4bit_type("nf4") (already within [-1, 1]), float32
NF4_CODE = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                     -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                     0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                     0.7229568362236023, 1.0], dtype=np.float32)
#: the default quantize_4bit kernel's bucket bounds: midpoints of the sorted code, in float32
NF4_BOUNDS = (NF4_CODE[:-1] + NF4_CODE[1:]) / np.float32(2)

def nf4_quantize(flat: np.ndarray, block: int = BNB_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(packed uint8 [ceil(n/2)], absmax float32 [ceil(n/block)]) of a flat run of weights, as
    bitsandbytes' quantize_4bit (the default/CPU kernel) computes them: blocks of `block` over the
    row-major flattened tensor (a last partial block gets its own absmax), scaled = clamp(x ·
    float32(1 / max(absmax, 1e-38)), -1, 1) (x / absmax for the partial block), code = the first
    NF4 midpoint ≥ scaled (torch.bucketize, right=False), two codes a byte, the first in the high nibble."""
    a = np.asarray(flat, dtype=np.float32).reshape(-1)
    n = a.size
    full = n - n % block
    g = a[:full].reshape(-1, block)
    absmax = np.abs(g).max(axis=1) if full else np.zeros(0, np.float32)
    inv = np.float32(1) / np.maximum(absmax, np.float32(1e-38))
    scaled = np.clip(g * inv[:, None], -1, 1).reshape(-1)
    if n % block:
        am = np.abs(a[full:]).max()
        absmax = np.append(absmax, am).astype(np.float32)
        scaled = np.concatenate([scaled, np.clip(a[full:] / max(am, np.float32(1e-38)), -1, 1)])
    if scaled.size % 2:
        scaled = np.append(scaled, np.float32(0))
    q = np.zeros(scaled.size, dtype=np.uint8)
    for b in NF4_BOUNDS:  # the number of bounds < scaled = searchsorted(side="left"), ~8x faster
        q += scaled > b
    return (q[0::2] << np.uint8(4)) | q[1::2], absmax.astype(np.float32)


def nf4_dequantize(packed: np.ndarray, absmax: np.ndarray, shape: tuple[int, ...],
                   block: int = BNB_BLOCK) -> np.ndarray:
    """dequantize_4bit (float32): code[nibble] · absmax of its block."""
    p = np.asarray(packed, dtype=np.uint8).reshape(-1)
    q = np.empty(p.size * 2, dtype=np.uint8)
    q[0::2], q[1::2] = p >> np.uint8(4), p & np.uint8(15)
    n = math.prod(shape)
    v = NF4_CODE[q[:n]] * np.repeat(np.asarray(absmax, np.float32), block)[:n]
    return v.reshape(shape)


def int8_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 [rows, K], SCB float32 [rows]) as Int8Params quantizes a weight: cast to float16,
    SCB = row absmax, q = round_half_even(x · float32(float32(1 / SCB) · 127)) (torch evaluates
    ``127.0 / SCB`` as reciprocal(SCB) · 127, which differs from the quotient in the last bit, and
    that decides exact-half ties); an all-zero row gives 0 codes
    (torch turns its NaN into 0 as well). Non-finite float16 values are refused by the caller."""
    b = np.asarray(w).astype(np.float16).astype(np.float32)
    scb = np.abs(b).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = b * ((np.float32(1) / scb) * np.float32(127.0))[:, None]  # torch's 127.0 / t is reciprocal(t) * 127
    x[scb == 0] = 0
    return np.rint(x).astype(np.int8), scb.astype(np.float32)


def int8_dequantize(q: np.ndarray, scb: np.ndarray) -> np.ndarray:
    """int8_vectorwise_dequant (float32): (q · SCB) · float32(1/127), in that order."""
    return (q.astype(np.float32) * np.asarray(scb, np.float32)[:, None]) * np.float32(7.874015718698502e-3)
