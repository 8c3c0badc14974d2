"""BitNet b1.58 ternary numerics, exactly as the references compute them (FORMATS.md).

Weights: inv = f32(1) / max(mean|W|, 1e-5) in float32; W_t = clip(rint(W · inv), −1, 1) (round half
to even); stored scale s = f32(1 / inv); dequantized weight = s · W_t. `W / mean` and `W · inv`
differ on near-ties: the multiply is what the references do.

The mean is torch's, to the bit: `converter_scale` takes torch's float32 sum in torch's own order
(bitconv/quant/torch_sum.py; a C pass when the extension is built, numpy otherwise: the same bits
with or without torch), as bitnet.cpp's converters, its preprocessing for i2_s, llama.cpp's
converter and transformers' WeightQuant compute it on one intra-op thread. Every ternary output
(i2_s, tl1/tl2, tq*, ONNX int2, bitnet-packed) and validate's references take it, so one checkpoint
gives the same codes and scale in every format. (`absmean_scale`, a float64 mean rounded once, is
kept to show the difference: the last bit of about half the scales.)

HF packed checkpoints (transformers `quant_method: "bitnet"`) store codes (value + 1) four per
uint8 along the output-row dimension: packed shape [ceil(N/4), K]; row r sits in packed row r mod R
at bit pair r div R. `weight_scale` is divided by (`bitlinear`) or multiplied with
(`autobitlinear`) the ternary values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..errors import QuantizationError
from .torch_sum import torch_sum_of_parts

EPS = np.float32(1e-5)
LINEAR_CLASSES = ("bitlinear", "autobitlinear")


@dataclass(frozen=True)
class TernaryScale:
    """Per-tensor statistic: `inv` multiplies weights before rounding, `scale` = 1/inv is stored."""

    inv: np.float32
    scale: np.float32


def absmean_scale(chunks: Iterable[np.ndarray]) -> TernaryScale:
    """The reference's per-tensor scale from a tensor given as row chunks (or one array)."""
    total = 0.0
    count = 0
    for c in chunks:
        total += float(np.abs(c).sum(dtype=np.float64))  # float64 accumulation, no float64 copy
        count += c.size
    if count == 0:
        raise QuantizationError("cannot ternarize an empty tensor")
    # torch reduces in float32 with an accurate cascade sum, then divides in float32: round the
    # (float64) sum once, then divide in float32, as it does
    mean = np.float32(np.float32(total) / np.float32(count))
    inv = np.float32(1.0) / np.maximum(mean, EPS)
    return TernaryScale(inv=np.float32(inv), scale=np.float32(np.float32(1.0) / inv))


def converter_scale(chunks: Iterable[np.ndarray], threads: int = 1, *, zero_if_all_zero: bool = True) -> TernaryScale:
    """The scale bitnet.cpp's converter stores for a tl1/tl2 tensor (utils/convert-hf-to-gguf-bitnet.py):
    `weight_quant` widens the weights to float32 (bf16 is widened before it is called, so its cast
    back is to float32), takes s = 1 / w.abs().mean().clamp(min=1e-5) in torch float32 and returns
    round(w·s).clamp(−1, 1) / s; `transform_to_tl1/tl2` stores max|x| of that: f32(1 / s), or 0 when
    every code is 0 (bitconv's `absmean_scale` would store 1/inv there).

    The mean is torch's float32 sum in torch's order divided by the count in float32, as a process
    with `threads` intra-op threads computes it: torch splits sums of more than 32768 values across
    its threads, so the converter's last bit depends on the machine that ran it (its default thread
    count is the number of cores; OMP_NUM_THREADS=1 gives the `threads=1` value, bitconv's default).

    f16 checkpoints: the converter keeps them f16, its scale comes out float16 and it stops at its own
    `assert i2_scale.dtype == np.float32`; bitconv stores this float32 scale for them too.
    `zero_if_all_zero=False`: 1/inv for a tensor whose codes are all 0 (a packed checkpoint stores
    1/s, which must stay finite)."""
    parts = [np.ascontiguousarray(c, dtype=np.float32).reshape(-1) for c in chunks]
    size = sum(p.size for p in parts)
    if size == 0:
        raise QuantizationError("cannot ternarize an empty tensor")
    total = torch_sum_of_parts(parts, threads, absolute=True)
    mean = np.float32(total / np.float32(size))
    inv = np.float32(np.float32(1.0) / np.maximum(mean, EPS))
    peak = max(max(np.float32(p.max()), -np.float32(p.min())) for p in parts if p.size)
    # rint(w·inv) is nonzero iff |w·inv| > 0.5 (0.5 rounds to even, 0), and w·inv grows with |w|
    # (written so that NaN weights keep a NaN scale, as the converter's max does)
    all_zero = bool(np.float32(peak * inv) <= np.float32(0.5))
    scale = np.float32(0.0) if all_zero and zero_if_all_zero else np.float32(np.float32(1.0) / inv)
    return TernaryScale(inv=inv, scale=scale)


def scale_for(chunks: Iterable[np.ndarray], known_scale: TernaryScale | None) -> TernaryScale:
    """The tensor's scale: the one a packed checkpoint fixes, else torch's absmean of its weights."""
    return converter_scale(chunks, 1, zero_if_all_zero=False) if known_scale is None else known_scale


def ternarize(w: np.ndarray, scale: TernaryScale) -> np.ndarray:
    """Codes in {−1, 0, 1} (int8) of float weights under a per-tensor scale."""
    x = np.asarray(w, dtype=np.float32) * scale.inv  # a fresh array: the rest works in place
    np.rint(x, out=x)
    np.clip(x, np.float32(-1), np.float32(1), out=x)
    return x.astype(np.int8)


def is_ternary_times_scale(w: np.ndarray, rtol: float = 1e-3) -> bool:
    """True when every nonzero |w| is one value: the tensor is already s · W_t (e.g. dequantized)."""
    a = np.abs(np.asarray(w, dtype=np.float32))
    nz = a[a > 0]
    return nz.size == 0 or bool(np.all(np.abs(nz - nz[0]) <= rtol * nz[0]))


# --- HF packed uint8 (transformers integrations/bitnet.py layout) --------------------------------

def unpack_hf_packed(packed: np.ndarray, n_rows: int | None = None) -> np.ndarray:
    """[R, K] uint8 → [4R (or n_rows), K] int8 codes in {−1, 0, 1}; codes of 3 are refused."""
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise QuantizationError(f"packed ternary weights must be a 2-D uint8 array, got {packed.dtype} {packed.shape}")
    parts = [(packed >> np.uint8(2 * i)) & np.uint8(3) for i in range(4)]
    codes = np.concatenate(parts, axis=0)
    if n_rows is not None:
        if not 4 * (packed.shape[0] - 1) < n_rows <= 4 * packed.shape[0]:
            raise QuantizationError(f"packed shape {packed.shape} cannot hold {n_rows} rows")
        codes = codes[:n_rows]
    if (codes == 3).any():
        raise QuantizationError("packed ternary weights hold code 3 (only 0, 1, 2 are valid)")
    return codes.astype(np.int8) - np.int8(1)


def pack_hf_packed(codes: np.ndarray) -> np.ndarray:
    """[N, K] codes in {−1, 0, 1} → [ceil(N/4), K] uint8, the inverse of `unpack_hf_packed`."""
    n, k = codes.shape
    r = -(-n // 4)
    padded = np.zeros((4 * r, k), dtype=np.uint8)
    padded[:n] = (codes + 1).astype(np.uint8)
    out = np.zeros((r, k), dtype=np.uint8)
    for i in range(4):
        out |= padded[i * r:(i + 1) * r] << np.uint8(2 * i)
    return out


def hf_weight_scale_to_scale(weight_scale: float, linear_class: str) -> TernaryScale:
    """The per-tensor scale a packed checkpoint's `weight_scale` fixes, keeping the stored number
    exact on the side it is stored on (bitlinear stores inv, autobitlinear stores s)."""
    if linear_class not in LINEAR_CLASSES:
        raise QuantizationError(f"unknown linear_class {linear_class!r}; expected one of {LINEAR_CLASSES}")
    ws = np.float32(weight_scale)
    if not np.isfinite(ws) or ws <= 0:
        raise QuantizationError(f"weight_scale {weight_scale} is not a positive finite number")
    other = np.float32(np.float32(1.0) / ws)
    return TernaryScale(inv=ws, scale=other) if linear_class == "bitlinear" else TernaryScale(inv=other, scale=ws)


def dequantize_codes(codes: np.ndarray, scale: TernaryScale) -> np.ndarray:
    """s · W_t in float32 as the references compute it: codes / inv."""
    return codes.astype(np.float32) / scale.inv
