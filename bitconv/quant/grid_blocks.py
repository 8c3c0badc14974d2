"""A quantized source's integer grid written as llama.cpp blocks without rounding the weights again
(`hf2gguf --keep-grid`).

GPTQ / AWQ / int compressed-tensors store W = s · (q − z) per group of input columns (quant/schemes.py
IntGrid). Where a ggml block type can hold that grid as it is, the codes are kept and only the scale
(and min) are stored at f16, so the file decodes to the source's own dequantized weights:

- q8_0  (f16 d, 32 × int8):                 value = d · c,      c = q − z, d = s   (|q − z| fits int8)
- q4_0  (f16 d, 16 bytes of nibbles):       value = d · (c − 8), c = q − z + 8      (q − z in [−8, 7])
- q4_1  (f16 d, f16 m, 16 bytes of nibbles): value = d · c + m,  c = q, d = s, m = −s · z  (q in [0, 15])

A nibble byte j of a 32-value block holds element j (low nibble) and element j + 16 (high nibble),
as ggml lays block_q4_0 / block_q4_1 out. A ggml block spans 32 input columns, so the grid fits only
when every source group is a run of whole blocks (group a multiple of 32, no act-order g_idx).

What does not fit is said in words (`misfit`) so the caller can re-round that tensor as usual and
report why; nothing here reads files.
"""
from __future__ import annotations

import numpy as np

from .schemes import IntGrid

BLOCK = 32
#: ggml block types the grid can be carried into, with the range of (q − z) each holds exactly
#: (None: the codes q themselves are stored, any zero point becomes the min)
CARRIED_TYPES: dict[str, tuple[int, int] | None] = {"q8_0": (-128, 127), "q4_0": (-8, 7), "q4_1": None}
#: the smallest normal float16: an f32 / bf16 scale below it loses bits when stored at f16
_F16_TINY = np.float32(2.0 ** -14)


def misfit(grid: IntGrid, qtype: str) -> str | None:
    """Why rows on `grid` cannot be written as `qtype` blocks that decode to the same weights (up to
    the f16 rounding of the scales and mins), or None when they can."""
    if qtype not in CARRIED_TYPES:
        return f"{qtype} is not one of {' / '.join(CARRIED_TYPES)}"
    if grid.g_idx is not None:
        return "act-order (g_idx): groups are not runs of columns"
    if grid.group % BLOCK or grid.codes.shape[1] % BLOCK:
        return f"groups of {grid.group} of {grid.codes.shape[1]} columns are not whole {BLOCK}-value blocks"
    span = CARRIED_TYPES[qtype]
    if span is None:  # q4_1 stores the codes themselves
        if grid.bits > 4:
            return f"{grid.bits}-bit codes do not fit 4-bit nibbles"
    else:
        zeros, top = grid.zeros, (1 << grid.bits) - 1
        if zeros.size and not np.array_equal(zeros, np.rint(zeros)):
            return "zero points are not integers"
        lo, hi = span  # every code 0 … top must land in [lo, hi] after subtracting its zero point
        if zeros.size and (float(zeros.min()) < top - hi or float(zeros.max()) > -lo):
            need = f"{-lo}" if top - hi == -lo else f"{top - hi} … {-lo}"
            return f"{grid.bits}-bit codes with zero points {_range(zeros)} (exact in {qtype} only with {need})"
    return _scale_misfit(grid, qtype)


def _range(z: np.ndarray) -> str:
    a, b = int(z.min()), int(z.max())
    return str(a) if a == b else f"{a} … {b}"


def _scale_misfit(grid: IntGrid, qtype: str) -> str | None:
    """The scales (and q4_1's mins −s·z) must survive f16: finite, and not below f16's normal range
    unless f16 holds them exactly (F16 sources always do)."""
    s = grid.scales
    with np.errstate(over="ignore"):
        d = s.astype(np.float16)
    if not np.isfinite(d).all():
        return "scales beyond float16's range"
    if grid.scale_dtype != "F16" and not np.array_equal(d.astype(np.float32), s):
        if np.any((np.abs(s) < _F16_TINY) & (s != 0)):
            return "scales below float16's normal range"
    with np.errstate(over="ignore"):
        m = (s.astype(np.float64) * grid.zeros).astype(np.float16)
    if CARRIED_TYPES[qtype] is None and not np.isfinite(m).all():
        return "mins (−scale · zero point) beyond float16's range"
    return None


def encode(grid: IntGrid, qtype: str) -> np.ndarray:
    """The rows of `grid` as `qtype` blocks: uint8 [rows, K / 32 · block bytes]. `misfit(grid,
    qtype)` must be None."""
    rows, k = grid.codes.shape
    nb = k // BLOCK
    # per block: its group's scale and zero point (a group is whole blocks; the last may be short)
    of_block = np.arange(nb) * BLOCK // grid.group
    plain = grid.group == BLOCK and grid.n_groups == nb
    s = grid.scales if plain else grid.scales[:, of_block]  # [rows, nb]
    z = grid.zeros if plain else grid.zeros[:, of_block]
    q = grid.codes.reshape(rows, nb, BLOCK)
    d = _f16_bytes(s)
    if qtype == "q4_1":
        m = _f16_bytes(0.0 - s.astype(np.float64) * z)  # −s·z exact in float64, rounded once; z = 0: +0.0
        return _assemble(rows, nb, d, m, _nibbles(q))
    shifted = np.subtract(q, z.astype(np.int16)[..., None], dtype=np.int16)  # q − z, exact
    if qtype == "q8_0":
        return _assemble(rows, nb, d, shifted.astype(np.int8).view(np.uint8))
    if qtype == "q4_0":
        return _assemble(rows, nb, d, _nibbles((shifted + 8).astype(np.uint8)))
    raise ValueError(f"{qtype} is not one of {', '.join(CARRIED_TYPES)}")


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    """[rows, nb] float32 → [rows, nb, 2] little-endian float16 bytes."""
    return np.ascontiguousarray(x, dtype="<f2").view(np.uint8).reshape(*x.shape, 2)


def _nibbles(codes: np.ndarray) -> np.ndarray:
    """[rows, nb, 32] codes 0 … 15 → [rows, nb, 16] bytes: element j low, element j + 16 high."""
    half = BLOCK // 2
    return codes[..., :half] | (codes[..., half:] << np.uint8(4))


def _assemble(rows: int, nb: int, *fields: np.ndarray) -> np.ndarray:
    """Each block's fields side by side, blocks in column order."""
    return np.concatenate(fields, axis=-1).reshape(rows, -1)
