"""LazyTensor: a checkpoint tensor known by name, dtype and shape, whose bytes are read only when asked
(whole, a slab of rows, a range of columns), and the widening of stored values to what llama.cpp's
converter computes with. bf16 is decoded from its raw bits, so the GGUF path needs no torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """bf16 is the top half of an f32: widening is a 16-bit shift, exact."""
    return np.left_shift(bits, 16, dtype=np.uint32).view(np.float32)


def to_compute_dtype(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values (bf16 as raw bits) → what llama.cpp's converter computes with: f16 and f32
    kept as they are, everything else widened to f32. Cheap enough to apply per row chunk."""
    if dtype == "BF16":
        return bf16_bits_to_f32(raw)
    if dtype in ("F16", "F32"):
        return raw
    if dtype in ("F8_E4M3", "F8_E5M2"):
        from ..quant.fp8 import e4m3_to_f32, e5m2_to_f32

        return e4m3_to_f32(raw) if dtype == "F8_E4M3" else e5m2_to_f32(raw)
    return raw.astype(np.float32)


@dataclass(frozen=True)
class LazyTensor:
    """A tensor known by name, dtype and shape; its bytes are read only by `load()`."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    source: Path
    _reader: Callable[[], np.ndarray] = field(repr=False, compare=False)
    #: reads rows [lo, hi) of the tensor seen as [numel / shape[-1], shape[-1]]
    _rows: Callable[[int, int], np.ndarray] | None = field(default=None, repr=False, compare=False)
    #: reads columns [lo, hi) of the tensor seen as [numel / shape[-1], shape[-1]]
    _cols: Callable[[int, int], np.ndarray] | None = field(default=None, repr=False, compare=False)
    #: a dequantized linear of a quantized checkpoint on a uniform integer grid (GPTQ, AWQ, int
    #: compressed-tensors): rows [lo, hi) as a quant.schemes.IntGrid (codes, scales, zero points)
    grid: Callable[[int, int], Any] | None = field(default=None, repr=False, compare=False)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def n_rows(self) -> int:
        return math.prod(self.shape[:-1]) if self.shape else 1

    def load_raw(self) -> np.ndarray:
        """The stored values in their stored numpy dtype (bf16 as uint16 bits), shaped."""
        return self._reader()

    def load_rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of the stored values as a 2-D [hi - lo, shape[-1]] array: the writer reads
        a large tensor a slab at a time, so it never holds the whole of it."""
        if self._rows is not None:
            return self._rows(lo, hi)
        k = self.shape[-1] if self.shape else 1
        return self._reader().reshape(-1, k)[lo:hi]

    def load_cols(self, lo: int, hi: int) -> np.ndarray:
        """Columns [lo, hi) of the stored values as a 2-D [rows, hi - lo] array (a quantized linear's
        output rows run along the columns of GPTQ/AWQ qweight, qzeros and scales)."""
        if self._cols is not None:
            return self._cols(lo, hi)
        k = self.shape[-1] if self.shape else 1
        return np.ascontiguousarray(self._reader().reshape(-1, k)[:, lo:hi])

    def load(self) -> np.ndarray:
        """Floats as llama.cpp's converter sees them: f16 and f32 kept, everything else → f32."""
        return to_compute_dtype(self.load_raw(), self.dtype)
