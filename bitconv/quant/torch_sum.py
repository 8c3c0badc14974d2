"""torch's CPU float32 `sum` / `mean` of a whole tensor, reproduced bit for bit in numpy.

The BitNet references (bitnet.cpp's converter `weight_quant`, its `preprocess-huggingface-bitnet.py`,
transformers' `WeightQuant`) take `w.abs().mean()` in torch float32. A float32 sum depends on the
order of the additions, so numpy's pairwise sum (or a float64 sum rounded once) lands an ulp away
from torch's now and then, and the stored scale with it. torch's order, from ATen:

* `mean` on CPU is `sum(x) / numel` in float32 (the count converted to float32).
* A full reduction of more than GRAIN (32768) elements with T > 1 intra-op threads is a two-pass
  reduction: `min(T, ceil(n / GRAIN))` OpenMP chunks of `ceil(n / chunks)` consecutive elements,
  each summed serially into its slot of a T-element buffer of zeros, then the buffer is summed
  serially. Otherwise the whole tensor is summed serially. **The result therefore depends on the
  thread count of the process that ran torch** (its default: the machine's cores, or
  OMP_NUM_THREADS) — the same converter gives different last bits on different machines.
* The serial sum (`cascade_sum`, contiguous inner case) reads 8-float vectors (the AVX2 kernel;
  torch registers no AVX-512 kernel for sum and falls back to it; the default dispatch has 8 lanes
  too), four at a time (ilp 4), and accumulates those rows of 32 floats in a 4-level cascade:
  blocks of `step` rows summed in order, `step` block sums summed in order, and so on, with
  `step = 2 ** max(4, ceil(log2(rows)) // 4)`. Left-over vectors go into the first accumulator,
  the four accumulators are added in order, then the left-over scalars and the 8 lanes are added
  in order to 0. Fewer than 8 elements: the same cascade with 1 lane.

Measured equal to torch 2.13's `x.sum()` (AVX2, AVX-512 and default dispatch; 1–16 threads; sizes
1 … 4.4M; tests/quant/test_torch_sum.py keeps checking it against the installed torch).
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

GRAIN = 32768  # at::internal::GRAIN_SIZE
LANES = 8      # Vectorized<float>::size() of the kernel torch runs
ILP = 4        # row_sum's ilp_factor
LEVELS = 4     # multi_row_sum's num_levels

_F32 = np.float32
#: take(lo, hi): the flat float32 values [lo, hi), contiguous
Take = Callable[[int, int], np.ndarray]


def _in_order(blocks: np.ndarray) -> np.ndarray:
    """Sum over axis 1 one element after the other, starting from 0 (float32)."""
    acc = np.zeros((blocks.shape[0],) + blocks.shape[2:], dtype=_F32)
    for j in range(blocks.shape[1]):
        acc += blocks[:, j]
    return acc


def _blocks(x: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Full blocks of `step` rows summed in order, and the rows left over."""
    n = x.shape[0] // step * step
    return _in_order(x[:n].reshape((n // step, step) + x.shape[1:])), x[n:]


def _cascade(take: Take, lo: int, rows: int, lanes: int) -> np.ndarray:
    """multi_row_sum: `rows` rows of ILP·lanes floats from flat offset `lo` → [ILP, lanes]."""
    width = ILP * lanes
    power = max(4, (rows - 1).bit_length() // LEVELS) if rows > 1 else 4
    step = 1 << power
    group = step ** (LEVELS - 1)  # rows that reach the last level together
    shape = (ILP, lanes)
    top = np.zeros(shape, dtype=_F32)
    n_groups = rows // group
    for g in range(n_groups):  # a group at a time keeps the temporaries small
        x = take(lo + g * group * width, lo + (g + 1) * group * width).reshape((group,) + shape)
        b0, _ = _blocks(x, step)
        b1, _ = _blocks(b0, step)
        top += _in_order(b1[None])[0]
    x = take(lo + n_groups * group * width, lo + rows * width).reshape((-1,) + shape)
    b0, tail = _blocks(x, step)
    b1, b0_left = _blocks(b0, step)
    acc = _in_order(tail[None])[0]
    acc += _in_order(b0_left[None])[0]
    acc += _in_order(b1[None])[0]
    acc += top
    return acc


def _serial(take: Take, lo: int, n: int) -> np.float32:
    """cascade_sum over n contiguous floats from `lo`, as one thread runs it."""
    lanes = LANES if n >= LANES else 1
    n_vec = n // lanes
    rows = n_vec // ILP
    ps = _cascade(take, lo, rows, lanes)
    if n_vec > rows * ILP:
        for v in take(lo + rows * ILP * lanes, lo + n_vec * lanes).reshape(-1, lanes):
            ps[0] += v
    for k in range(1, ILP):
        ps[0] += ps[k]
    total = _F32(0)
    for v in take(lo + n_vec * lanes, lo + n):  # left-over scalars (vector kernel only)
        total = _F32(total + v)
    for v in ps[0]:
        total = _F32(total + v)
    return total


def torch_sum_of_parts(parts: list[np.ndarray], threads: int = 1, absolute: bool = False) -> np.float32:
    """torch_sum_of over the flat sequence of contiguous float32 `parts` (|x| with `absolute`): the C
    extension's single pass when it is built (same bits, about 10x faster), else numpy."""
    from ..accel.kernels import torch_serial_sum

    n = sum(p.size for p in parts)
    if torch_serial_sum is None:
        flat = FlatParts(np.abs(p) if absolute else p for p in parts)
        return torch_sum_of(flat.take, n, threads)
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    if n <= GRAIN or threads == 1:
        return _F32(torch_serial_sum(parts, 0, n, absolute))
    chunks = min(threads, -(-n // GRAIN))
    size = -(-n // chunks)
    buffer = np.zeros(threads, dtype=_F32)
    for t in range(chunks):
        if t * size < n:
            buffer[t] = torch_serial_sum(parts, t * size, min(n, (t + 1) * size) - t * size, absolute)
    return _F32(torch_serial_sum([buffer], 0, threads, False))


def torch_sum_of(take: Take, n: int, threads: int = 1) -> np.float32:
    """torch's float32 `x.sum()` of n values read through `take`, as a process with `threads`
    intra-op threads computes it (`take` is called with increasing, non-overlapping ranges)."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    if n <= GRAIN or threads == 1:
        return _serial(take, 0, n)
    chunks = min(threads, -(-n // GRAIN))
    size = -(-n // chunks)
    buffer = np.zeros(threads, dtype=_F32)
    for t in range(chunks):
        if t * size < n:
            buffer[t] = _serial(take, t * size, min(n, (t + 1) * size) - t * size)
    return _serial(lambda lo, hi: buffer[lo:hi], 0, threads)


def torch_sum(x: np.ndarray, threads: int = 1) -> np.float32:
    """torch's float32 `x.sum()` of a float32 array (any shape, read in C order)."""
    flat = np.ascontiguousarray(x, dtype=_F32).reshape(-1)
    return torch_sum_of(lambda lo, hi: flat[lo:hi], flat.size, threads)


def torch_mean(x: np.ndarray, threads: int = 1) -> np.float32:
    """torch's float32 `x.mean()`: the sum divided by the count, both in float32."""
    return _F32(torch_sum(x, threads) / _F32(np.asarray(x).size))


class FlatParts:
    """Arrays taken as one flat float32 sequence (row chunks of a tensor), without joining them."""

    def __init__(self, parts: Iterable[np.ndarray]) -> None:
        self.parts = [np.ascontiguousarray(p, dtype=_F32).reshape(-1) for p in parts]
        self.starts = np.cumsum([0] + [p.size for p in self.parts])
        self.size = int(self.starts[-1])

    def take(self, lo: int, hi: int) -> np.ndarray:
        i = int(np.searchsorted(self.starts, lo, side="right")) - 1
        if i < 0 or hi <= lo:
            return np.empty(0, dtype=_F32)
        if hi <= self.starts[i + 1]:
            return self.parts[i][lo - self.starts[i]:hi - self.starts[i]]
        pieces = []
        while lo < hi:
            end = min(hi, int(self.starts[i + 1]))
            pieces.append(self.parts[i][lo - self.starts[i]:end - self.starts[i]])
            lo, i = end, i + 1
        return np.concatenate(pieces)
