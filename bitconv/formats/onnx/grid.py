"""A GPTQ / AWQ (any IntGrid) linear into MatMulNBits without re-rounding: the source's codes,
scales and zero points as they are, so the export's weights are the source's dequantized weights
exactly instead of a second rounding of them.

When it applies (decided in the plan from the linear's first rows, `repack_for`): the grid's bits
fit the planned MatMulNBits bits (a 4-bit grid into int4 or int8: codes and zero points fit), its
group is a block size MatMulNBits runs (a power of two ≥ 16), and, for GPTQ act-order, every
group holds exactly `group` columns. Otherwise the linear is re-quantized from its dequantized
floats as any float checkpoint, and the plan says why.

Act-order (GPTQ desc_act, a g_idx that is not k // group): the columns are reordered so that each
group is one run, the codes permuted identically and the input activations gathered in the same
order by a Gather before the MatMulNBits (x[perm] · W[:, perm]ᵀ = x · Wᵀ, exact). The op's own
g_idx input is not used: in onnxruntime 1.32 (CPU) it runs only 2/4 bits, only on the path that
dequantizes the whole weight on every call, and silently ignores uint8 zero points there (measured:
W came out as scale · (code − 2^(bits−1))); the reordered form runs the prepacked
`accuracy_level=4` kernels for 4 and 8 bits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import QuantizationError
from ...quant import nbits

if TYPE_CHECKING:
    from ...convert.arch.base import SourceTensor


@dataclass(frozen=True)
class GridRepack:
    """How a linear keeps its source's grid in MatMulNBits."""

    source_bits: int
    bits: int  # the MatMulNBits bits (≥ source_bits)
    block_size: int  # the source's group
    #: act-order: K is reordered (a Gather of the activations before the op)
    reorder: bool
    scale_dtype: str

    def describe(self) -> str:
        order = ", act-order (K reordered)" if self.reorder else ""
        return f"source's {self.source_bits}-bit grid, group {self.block_size}{order}"


def act_order_perm(g_idx: np.ndarray, group: int) -> np.ndarray | None:
    """The column order that makes each act-order group one run of `group` columns (stable), or
    None when the groups are not all `group` columns (the last may be shorter)."""
    perm = np.argsort(g_idx, kind="stable")
    if not np.array_equal(g_idx[perm], np.arange(g_idx.size) // group):
        return None
    return perm


def expert_source(src: "SourceTensor", e: int) -> "SourceTensor":
    """Expert e of a stacked experts tensor [E, N, K] as a tensor of its own (its checkpoint linear)."""
    from ...convert.arch.base import SourceTensor

    return SourceTensor(f"{src.name}[{e}]", tuple(src.shape[1:]), [src.sources[e]],
                        hf_names=src.hf_names[e:e + 1])


def stacked_experts(src: "SourceTensor") -> bool:
    """Whether `src` is experts stacked one checkpoint linear each, in expert order."""
    from ...convert.arch.base import stack

    return src.combine is stack and len(src.shape) == 3 and len(src.sources) == src.shape[0]


def repack_experts_for(src: "SourceTensor", bits: int) -> tuple[GridRepack | None, str]:
    """`repack_for` for stacked experts: every expert's grid the same kind, or (None, why)."""
    if not stacked_experts(src):
        return None, ""
    found = {repack_for(expert_source(src, e), bits) for e in range(src.shape[0])}
    if len(found) > 1:
        reps = {r for r, _ in found}
        return None, "the experts' grids differ" if None not in reps else sorted(w for _, w in found if w)[0]
    return found.pop()


def reorders(g: Any) -> bool:
    """Whether the IntGrid's groups are not runs of `group` columns in order (act-order)."""
    return g.g_idx is not None and not np.array_equal(g.g_idx, np.arange(g.codes.shape[1]) // g.group)


def grid_of(src: "SourceTensor") -> Any:
    """The source's grid callable (rows → IntGrid) when the tensor is one quantized linear."""
    lt = src.plain
    if lt is None or lt.grid is None or len(src.shape) != 2:
        return None
    return lt.grid


def repack_for(src: "SourceTensor", bits: int) -> tuple[GridRepack | None, str]:
    """(the repack, "") when the linear can keep its grid in `bits`-bit MatMulNBits; (None, why
    not) when it has a grid that cannot; (None, "") when it has none (a float tensor)."""
    grid = grid_of(src)
    if grid is None:
        return None, ""
    g = grid(0, 1)  # bits, group and g_idx are the linear's, whatever the rows
    if g.bits > bits:
        return None, f"its {g.bits}-bit grid does not fit int{bits}"
    if (problem := nbits.block_size_error(g.group)):
        return None, f"group {g.group}: {problem.split(': ', 1)[-1]}"
    reorder = reorders(g)
    if reorder and act_order_perm(np.asarray(g.g_idx), g.group) is None:
        return None, f"its act-order groups are not all {g.group} columns"
    return GridRepack(g.bits, bits, g.group, reorder, g.scale_dtype), ""


def _zero_points(zeros: np.ndarray, bits: int) -> np.ndarray | None:
    """float zero points as uint8 when each is an integer in [0, 2^bits), else None."""
    if zeros.size and (zeros.min() < 0 or zeros.max() >= (1 << bits) or not np.array_equal(zeros, np.rint(zeros))):
        return None
    return zeros.astype(np.uint8)


def repack(src: "SourceTensor", rep: GridRepack, slab_bytes: int) -> tuple[nbits.NBitsTensor | None,
                                                                            np.ndarray | None, str]:
    """(MatMulNBits weight, column order or None, "") of the linear, read a slab of rows at a time;
    (None, None, why) when a slab's zero points are not integers in [0, 2^bits) (a GPTQ v1 zero
    point of 16), and the caller re-quantizes the floats instead."""
    grid = grid_of(src)
    n, k = (int(d) for d in src.shape)
    nb, bs = nbits.n_blocks(k, rep.block_size), rep.block_size
    packed = np.empty((n, nb, bs * rep.bits // 8), dtype=np.uint8)
    scales = np.empty((n, nb), dtype=np.float32)
    zps = np.empty((n, nbits.zero_point_bytes(nb, rep.bits)), dtype=np.uint8)
    rows = max(32, slab_bytes // max(1, k * 4) // 32 * 32)
    perm: np.ndarray | None = None
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        g = grid(lo, hi)
        if (g.bits, g.group, reorders(g)) != (rep.source_bits, bs, rep.reorder) or g.n_groups != nb:
            raise QuantizationError(f"{src.name}: rows [{lo}, {hi}) have another grid than its first rows", tensor=src.name)
        zeros = _zero_points(g.zeros, rep.bits)
        if zeros is None:
            return None, None, f"zero points outside 0..{(1 << rep.bits) - 1}"
        codes = g.codes
        if rep.reorder:
            if perm is None:
                perm = act_order_perm(np.asarray(g.g_idx), bs)
                if perm is None:
                    raise QuantizationError(f"{src.name}: act-order groups changed", tensor=src.name)
            codes = codes[:, perm]
        q = nbits.from_grid(codes, g.scales, zeros, rep.bits, bs)
        packed[lo:hi], scales[lo:hi] = q.packed, q.scales
        assert q.zero_points is not None
        zps[lo:hi] = q.zero_points
    return nbits.NBitsTensor(packed, scales, rep.bits, bs, k, zps), perm, ""
