"""ONNX Runtime `MatMulNBits` (com.microsoft) block packing: int8 / int4 symmetric per block, and
ternary weights as exact 2-bit codes. Pure numpy, vectorized, no file I/O.

Layout (FORMATS.md, "ONNX Runtime MatMulNBits"): for a weight W [N, K] (row = output channel),
B is uint8 [N, n_blocks, block_size·bits/8] with n_blocks = ceil(K / block_size), codes packed low
bits first within a byte; scales [N, n_blocks] in the activations' dtype; no zero_points input, so
the op's default zero point 2^(bits−1) applies (the fast `accuracy_level=4` kernels need uint8 or
absent zero points). The last block of a row whose K the block size does not divide is padded with
the zero code.

- int8 / int4: symmetric as onnxruntime's own quantizer (and ggml's q4_0) does it: the value of
  largest magnitude m in a block becomes code 0 with scale = m / −2^(bits−1), so all 2^bits levels
  are used (−8..7 for int4); identical bytes to `quantize_matmul_{4,8}bits(is_symmetric=True)`.
- int2 (ternary): code = W_t + 2 ∈ {1, 2, 3} (default zero point 2), scale = the tensor's
  ternary scale s repeated per block, so dequantize(B) = s · W_t exactly.
- a quantized source's own grid (GPTQ / AWQ codes, scales and integer zero points): `from_grid`
  packs them as they are, with a uint8 zero_points input [N, ceil(n_blocks·bits/8)] (per row,
  `bits`-bit values low bits first, the row's last byte padded), so W = scale · (code − zero point)
  is the source's dequantized weight exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from ..errors import QuantizationError, UsageError
from ..threads import shared_pool

#: the bit widths ONNX Runtime's CPU MatMulNBits runs (1, 3, 5 are refused at session creation)
SUPPORTED_BITS = (2, 4, 8)
#: 2-bit fast kernels exist only for these block sizes (otherwise the op falls back to slow paths)
FAST_2BIT_BLOCKS = (32, 64, 128)


@dataclass
class NBitsTensor:
    """One weight in MatMulNBits form."""

    packed: np.ndarray  # uint8 [N, n_blocks, block_size * bits // 8]
    scales: np.ndarray  # float32 [N, n_blocks]
    bits: int
    block_size: int
    k: int  # the logical input dimension (before padding to whole blocks)
    #: uint8 [N, ceil(n_blocks·bits/8)] packed per-block zero points (None: the default 2^(bits−1))
    zero_points: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.packed.shape[0])

    @property
    def nbytes(self) -> int:
        zp = 0 if self.zero_points is None else self.zero_points.nbytes
        return int(self.packed.nbytes + self.scales.nbytes + zp)


def block_size_error(block_size: int) -> str | None:
    """Why ONNX Runtime refuses `block_size` (None when it accepts it)."""
    if block_size < 16 or block_size & (block_size - 1):
        return f"block size {block_size}: MatMulNBits needs a power of two ≥ 16"
    return None


def check_bits_block(bits: int, block_size: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise UsageError(f"MatMulNBits runs {'/'.join(map(str, SUPPORTED_BITS))} bits, not {bits}")
    if (problem := block_size_error(block_size)):
        raise UsageError(problem)


def n_blocks(k: int, block_size: int) -> int:
    return -(-k // block_size)


def encoded_nbytes(n: int, k: int, bits: int, block_size: int, scale_itemsize: int = 4,
                   zero_points: bool = False) -> int:
    nb = n_blocks(k, block_size)
    zp = n * zero_point_bytes(nb, bits) if zero_points else 0
    return n * nb * (block_size * bits // 8) + n * nb * scale_itemsize + zp


def zero_point_bytes(n_blocks_: int, bits: int) -> int:
    """Bytes of one row of packed uint8 zero points."""
    return -(-n_blocks_ * bits // 8)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes [..., L] (each < 2^bits) → uint8 [..., L·bits/8], low bits first."""
    if bits == 8:
        return codes.astype(np.uint8, copy=False)
    per = 8 // bits
    c = codes.astype(np.uint8, copy=False).reshape(*codes.shape[:-1], codes.shape[-1] // per, per)
    out = c[..., 0].copy()
    for i in range(1, per):
        out |= c[..., i] << np.uint8(i * bits)
    return out


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of `pack_codes`: uint8 [..., M] → uint8 codes [..., M·8/bits]."""
    if bits == 8:
        return packed.astype(np.uint8, copy=False)
    per = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    parts = [(packed >> np.uint8(i * bits)) & mask for i in range(per)]
    return np.stack(parts, axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * per)


def _blocks(w: np.ndarray, block_size: int, fill: float = 0.0) -> np.ndarray:
    """[N, K] → [N, n_blocks, block_size], the last block padded with `fill`."""
    n, k = w.shape
    nb = n_blocks(k, block_size)
    if nb * block_size != k:
        padded = np.full((n, nb * block_size), fill, dtype=w.dtype)
        padded[:, :k] = w
        w = padded
    return w.reshape(n, nb, block_size)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C's roundf (ties away from zero), as onnxruntime's quantizer rounds."""
    return np.copysign(np.floor(np.abs(x) + np.float32(0.5)), x)


def quantize_symmetric(w: np.ndarray, bits: int, block_size: int) -> NBitsTensor:
    """Symmetric per-block int8/int4 of a float [N, K] matrix, as onnxruntime's own
    `quantize_matmul_{4,8}bits(is_symmetric=True)` computes it (byte for byte): the block's value
    of largest magnitude m (the negative one on a tie) maps to code 0, scale = m / −2^(bits−1)
    (negative when m is positive), code = clamp(roundf(w · (1/scale)) + 2^(bits−1), 0, 2^bits − 1);
    all 2^bits levels are used. A block of zeros gets scale 0 and the zero code."""
    check_bits_block(bits, block_size)
    if w.ndim != 2:
        raise QuantizationError(f"MatMulNBits quantizes 2-D weights, got shape {w.shape}")
    w = np.asarray(w, dtype=np.float32)
    if not np.isfinite(w).all():
        raise QuantizationError("weights hold NaN or Inf; MatMulNBits cannot store them")
    half = 1 << (bits - 1)
    blocks = _blocks(w, block_size)
    bmax, bmin = blocks.max(axis=-1), blocks.min(axis=-1)
    m = np.where(np.abs(bmax) > np.abs(bmin), bmax, bmin)
    scales = (m / np.float32(-half)).astype(np.float32)
    recip = np.divide(np.float32(1.0), scales, out=np.zeros_like(scales), where=scales != 0)
    q = _round_half_away(blocks * recip[..., None])
    codes = np.clip(q + np.float32(half), 0, 2 * half - 1).astype(np.uint8)
    return NBitsTensor(pack_codes(codes, bits), scales, bits, block_size, int(w.shape[1]))


def quantize_ternary(codes: np.ndarray, scale: float, block_size: int, bits: int = 2) -> NBitsTensor:
    """Ternary codes in {−1, 0, 1} [N, K] with the tensor's scale s → exact MatMulNBits: code =
    W_t + 2^(bits−1) (the default zero point), every block's scale = s, so dequantize = s · W_t
    exactly (2 bits: codes 1..3; 4 and 8 bits store the same values, exactly too)."""
    check_bits_block(bits, block_size)
    if codes.ndim != 2:
        raise QuantizationError(f"MatMulNBits quantizes 2-D weights, got shape {codes.shape}")
    c = np.asarray(codes, dtype=np.int8)
    if c.size and (c.min() < -1 or c.max() > 1):
        raise QuantizationError("ternary codes must be in {-1, 0, 1}")
    blocks = _blocks(c, block_size, fill=0)
    u = (blocks.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
    scales = np.full(blocks.shape[:2], np.float32(scale), dtype=np.float32)
    return NBitsTensor(pack_codes(u, bits), scales, bits, block_size, int(c.shape[1]))


def pack_zero_points(zeros: np.ndarray, bits: int) -> np.ndarray:
    """uint8 zero points [N, n_blocks] (each < 2^bits) → MatMulNBits' packed uint8 [N,
    ceil(n_blocks·bits/8)]: `bits`-bit values low bits first, each row padded to whole bytes."""
    n, nb = zeros.shape
    per = 8 // bits
    padded = np.zeros((n, zero_point_bytes(nb, bits) * per), dtype=np.uint8)
    padded[:, :nb] = zeros
    return pack_codes(padded, bits)


def unpack_zero_points(zp: np.ndarray, bits: int, n_blocks_: int) -> np.ndarray:
    """The inverse of `pack_zero_points`: uint8 [N, n_blocks]."""
    return unpack_codes(zp, bits)[:, :n_blocks_]


def from_grid(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int, block_size: int) -> NBitsTensor:
    """A source's integer grid as it is: uint8 codes [N, K] (< 2^bits) in blocks of `block_size`
    columns (the last padded with code 0: those columns meet no activation), float32 scales and
    uint8 zero points [N, n_blocks] (< 2^bits). W = scales · (codes − zeros) per block, exactly."""
    check_bits_block(bits, block_size)
    n, k = codes.shape
    nb = n_blocks(k, block_size)
    if scales.shape != (n, nb) or zeros.shape != (n, nb):
        raise QuantizationError(f"grid of {n}×{k} in blocks of {block_size}: scales {scales.shape} and zero points "
                                f"{zeros.shape}, expected {(n, nb)}")
    limit = 1 << bits
    if codes.size and int(codes.max()) >= limit or zeros.size and int(zeros.max()) >= limit:
        raise QuantizationError(f"codes or zero points do not fit {bits} bits")
    packed = pack_codes(_blocks(codes.astype(np.uint8, copy=False), block_size), bits)
    return NBitsTensor(packed, np.asarray(scales, dtype=np.float32), bits, block_size, int(k),
                       pack_zero_points(zeros.astype(np.uint8, copy=False), bits))


def dequantize(t: NBitsTensor) -> np.ndarray:
    """float32 [N, K] as MatMulNBits computes with it (its zero points, else 2^(bits−1))."""
    codes = unpack_codes(t.packed, t.bits).astype(np.float32)
    if t.zero_points is None:
        codes -= np.float32(1 << (t.bits - 1))
    else:
        codes -= unpack_zero_points(t.zero_points, t.bits, t.scales.shape[1]).astype(np.float32)[..., None]
    w = codes * t.scales[..., None].astype(np.float32)
    return w.reshape(t.packed.shape[0], -1)[:, : t.k]


def quantize_rows(w: np.ndarray, bits: int, block_size: int, *, rows: int | None = None,
                  widen: Callable[[np.ndarray], np.ndarray] | None = None) -> NBitsTensor:
    """`quantize_symmetric` over row chunks on a thread pool (numpy releases the GIL in these
    loops), so a large matrix uses every core and no full-size float temporary exists (the lm_head
    of a 150k vocabulary); rows are independent, so the bytes equal one call's. `widen`: turns a
    chunk of stored values (bf16 bits) into floats inside the worker."""
    if rows is None:  # about 1M values per chunk: cache-friendly, and enough chunks to share out
        rows = max(1, (1 << 20) // max(1, w.shape[1]))

    def one(i: int) -> NBitsTensor:
        chunk = w[i:i + rows]
        return quantize_symmetric(widen(chunk) if widen is not None else chunk, bits, block_size)

    if w.shape[0] <= rows:
        return one(0)
    pool = shared_pool()
    starts = range(0, w.shape[0], rows)
    parts = list(pool.map(one, starts) if pool is not None else map(one, starts))
    return NBitsTensor(np.concatenate([p.packed for p in parts]), np.concatenate([p.scales for p in parts]),
                       bits, block_size, int(w.shape[1]))


def quantize_slabs(slabs: Iterable[tuple[np.ndarray, Callable[[np.ndarray], np.ndarray] | None]], n_rows: int,
                   bits: int, block_size: int) -> NBitsTensor:
    """`quantize_rows` over row slabs (stored values and their widening) of an [n_rows, K] matrix,
    filled into one preallocated result: the input is never whole in memory, the output is."""
    packed: np.ndarray | None = None
    scales: np.ndarray | None = None
    lo, k = 0, 0
    for slab, widen in slabs:
        q = quantize_rows(slab, bits, block_size, widen=widen)
        if packed is None or scales is None:
            packed = np.empty((n_rows, *q.packed.shape[1:]), dtype=q.packed.dtype)
            scales = np.empty((n_rows, *q.scales.shape[1:]), dtype=q.scales.dtype)
        packed[lo:lo + q.n] = q.packed
        scales[lo:lo + q.n] = q.scales
        lo, k = lo + q.n, q.k
    if packed is None or scales is None or lo != n_rows:
        raise QuantizationError(f"quantize_slabs: got {lo} rows, expected {n_rows}")
    return NBitsTensor(packed, scales, bits, block_size, k)


__all__ = ["NBitsTensor", "SUPPORTED_BITS", "FAST_2BIT_BLOCKS", "block_size_error", "check_bits_block",
           "n_blocks", "encoded_nbytes", "zero_point_bytes", "pack_codes", "unpack_codes", "pack_zero_points",
           "unpack_zero_points", "from_grid", "quantize_symmetric", "quantize_ternary",
           "dequantize", "quantize_rows", "quantize_slabs"]
