"""A quantized checkpoint (GPTQ, AWQ, FP8, compressed-tensors, bitsandbytes) seen as float tensors:
each quantized linear becomes one lazy float32 `<module>.weight` that dequantizes a slab of output
rows at a time.

The scheme (quant/<scheme>.py, chosen by convert/quantization_config.py) says which stored parts
make a linear, how they are sliced for a slab of rows and how they are dequantized; this module
does the reading: for rows [lo, hi) of the weight it reads only the matching slices of its parts
(for GPTQ/AWQ the columns of qweight/qzeros/scales, for FP8 the rows of the weight and of its
block scales, for bitsandbytes the packed bytes and absmax entries of the blocks over those rows),
so no float copy of a whole model, or even of a whole large tensor, is ever made. The writers
stream such a tensor like any plain one (`SourceTensor.plain`).

Tensor order is llama.cpp's converter's (`dequant_model`): a linear stored under new names (GPTQ,
compressed-tensors pack-quantized) is appended after the stored tensors, one whose stored weight is
replaced (FP8, compressed-tensors int/float-quantized, bitsandbytes) keeps its place; each linear's
kind (quant.schemes.LinearKind) says which.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import CheckpointError
from ..quant.schemes import IntGrid, LinearKind, LinearLayout, SourceScheme
from .lazy import LazyTensor
from .quantization_config import source_scheme


def dequantized_tensors(config: dict[str, Any], tensors: dict[str, LazyTensor]) -> dict[str, LazyTensor]:
    """`tensors` with every quantized linear replaced by its lazy float32 weight (unchanged when the
    checkpoint is not quantized with a source scheme)."""
    scheme = source_scheme(config)
    if scheme is None:
        return tensors
    kinds = scheme.linears(tensors)
    if not kinds:
        markers = " or ".join(sorted({f"*.{k.marker}" for k in scheme.kinds()}))
        raise CheckpointError(f"config.json says quant_method {scheme.method!r} but no tensor is named "
                              f"{markers}: not a {scheme.method} checkpoint")
    owned: dict[str, str] = {}  # stored part name → its module
    for m, kind in kinds.items():
        for p in kind.parts:
            if f"{m}.{p}" in tensors:
                owned[f"{m}.{p}"] = m
    _check_strays(scheme, tensors, owned)
    for m, kind in kinds.items():  # a stored float weight beside a quantized one would be written twice
        if kind.appends and f"{m}.{kind.output}" in tensors:
            raise CheckpointError(f"{m}: both a float {m}.{kind.output} and {scheme.method} {m}.{kind.marker}")
    linears = {m: _linear(scheme, kind, m, tensors) for m, kind in kinds.items()}
    out: dict[str, LazyTensor] = {}
    for name, lt in tensors.items():
        if name.endswith(tuple("." + d for d in scheme.dropped)):
            continue
        module = owned.get(name)
        if module is None:
            out[name] = lt
            continue
        kind = kinds[module]
        if not kind.appends and name == f"{module}.{kind.output}":
            out[name] = linears[module]  # in the stored weight's place; its other parts go
    for m, kind in kinds.items():
        if kind.appends:
            out[f"{m}.{kind.output}"] = linears[m]
    return out


def _check_strays(scheme: SourceScheme, tensors: dict[str, LazyTensor], owned: dict[str, str]) -> None:
    """A part without the tensor that marks its linear (qzeros without qweight) is a broken linear, and
    so is a stored weight in a dtype only the scheme's codes have (bitsandbytes' U8 / I8) without its
    marker. Part suffixes may hold dots (bitsandbytes' `weight.quant_map` beside `weight.absmax`)."""
    kinds = scheme.kinds()
    for name in tensors:
        for kind in kinds:
            part = next((p for p in kind.parts if p != kind.output and name.endswith("." + p)), None)
            if part is not None and name not in owned:
                module = name[:-len(part) - 1]
                raise CheckpointError(f"{name}: a {scheme.method} {part} without {module}.{kind.marker}")
            if name.endswith("." + kind.output) and name not in owned and tensors[name].dtype in scheme.code_dtypes:
                module = name[:-len(kind.output) - 1]
                raise CheckpointError(f"{name}: {tensors[name].dtype} {scheme.method} codes "
                                      f"{tuple(tensors[name].shape)} without {module}.{kind.marker}")


def _linear(scheme: SourceScheme, kind: LinearKind, module: str, tensors: dict[str, LazyTensor]) -> LazyTensor:
    parts = {p: tensors[f"{module}.{p}"] for p in kind.parts if f"{module}.{p}" in tensors}
    missing = [p for p in kind.parts if p not in parts and p not in kind.optional]
    if missing:
        raise CheckpointError(f"{module}: {scheme.method} {kind.marker} without "
                              f"{' / '.join(f'{module}.{p}' for p in missing)}")
    layout = scheme.layout(module, parts)
    n, k = layout.shape
    marker = parts[kind.marker]
    reader = _SlabReader(module, layout, parts)
    return LazyTensor(f"{module}.{kind.output}", "F32", (n, k), n * k * 4, marker.source,
                      lambda: reader.rows(0, n), reader.rows,
                      grid=reader.grid_rows if layout.grid is not None else None)


class _SlabReader:
    """Rows [lo, hi) of one dequantized linear, from the slices of its parts that hold them."""

    def __init__(self, module: str, layout: LinearLayout, parts: dict[str, LazyTensor]) -> None:
        self.module, self.layout, self.parts = module, layout, parts
        self.checked = not layout.checks
        self.whole: dict[str, np.ndarray] = {}

    def rows(self, lo: int, hi: int) -> np.ndarray:
        a_lo, a_hi, arrays = self._parts_for(lo, hi)
        out = self.layout.dequantize(arrays, a_lo, a_hi)
        return out if (a_lo, a_hi) == (lo, hi) else np.ascontiguousarray(out[lo - a_lo:hi - a_lo])

    def grid_rows(self, lo: int, hi: int) -> IntGrid:
        """Rows [lo, hi) on the source's integer grid (the layout has one)."""
        assert self.layout.grid is not None
        a_lo, a_hi, arrays = self._parts_for(lo, hi)
        g = self.layout.grid(arrays, a_lo, a_hi)
        if (a_lo, a_hi) != (lo, hi):
            cut = slice(lo - a_lo, hi - a_lo)
            g = replace(g, codes=np.ascontiguousarray(g.codes[cut]), scales=np.ascontiguousarray(g.scales[cut]),
                        zeros=np.ascontiguousarray(g.zeros[cut]))
        return g

    def _parts_for(self, lo: int, hi: int) -> tuple[int, int, dict[str, np.ndarray]]:
        """The aligned row range holding [lo, hi) and its parts' slices, checked once."""
        n = self.layout.shape[0]
        if not 0 <= lo <= hi <= n:
            raise CheckpointError(f"{self.module}: rows [{lo}, {hi}) outside its {n} rows")
        unit = self.layout.row_unit
        a_lo, a_hi = lo // unit * unit, min(n, -(-hi // unit) * unit)
        arrays = {p: self._read(p, a_lo, a_hi) for p in self.parts}
        if not self.checked:
            for check in self.layout.checks:
                check(arrays)
            self.checked = True
        return a_lo, a_hi, arrays

    def _read(self, part: str, lo: int, hi: int) -> np.ndarray:
        lt, s = self.parts[part], self.layout.slices[part]
        if s.axis is None:  # small (g_idx, a per-row scale): read once, kept
            if part not in self.whole:
                self.whole[part] = lt.load_raw()
            return self.whole[part]
        extent = lt.shape[s.axis]
        b, e = lo // s.rows * s.entries, min(extent, -(-hi // s.rows) * s.entries)
        if len(lt.shape) == 1:  # a 1-D part (bitsandbytes' absmax, SCB): elements [b, e), one read
            return lt.load_cols(b, e).reshape(-1)
        return lt.load_rows(b, e) if s.axis == 0 else lt.load_cols(b, e)
