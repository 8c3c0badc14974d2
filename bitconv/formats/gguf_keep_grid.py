"""`hf2gguf --keep-grid`: a quantized checkpoint's linears written in q4_0 / q4_1 / q8_0 from their
own integer codes (quant/grid_blocks.py) instead of re-rounding their dequantized floats, and a
record of which tensors were carried over and which were re-rounded, and why.

The default (without the option) is llama.cpp's converter's: dequantize, then encode. Carrying over
needs three things, checked in this order: the tensor is written in the file's own type and that type
holds a grid (not a k-quant mix, not a llama-quantize rule's other type); the GGUF tensor is the
checkpoint tensor as stored (not a permuted q/k or a stack of experts); its grid fits the block
(quant/grid_blocks.misfit: bits, zero points, groups of whole blocks, no act-order, f16-safe scales).
The last is read from the data, a slab of rows at a time; a slab that does not fit is re-rounded
exactly as the default path would write it, so the bytes of each row are one path's or the other's.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import gguf
import numpy as np

from ..convert.checkpoint import Checkpoint
from ..convert.lazy import LazyTensor
from ..convert.plan import PlannedTensor, TensorPlan
from ..convert.quantization_config import source_scheme
from ..convert.safetensors_read import transient_reads
from ..errors import UsageError
from ..quant import grid_blocks


@dataclass
class _Outcome:
    """What writing one tensor did: rows carried over, and rows re-rounded for each reason."""

    rows: int
    carried: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class KeepGrid:
    """The keep-grid decisions of one GGUF output and what writing found (thread-safe: work items
    run on the writer's pool)."""

    def __init__(self, method: str, quant: str, static: dict[str, str | None],
                 sources: dict[str, LazyTensor]) -> None:
        self.method, self.quant = method, quant
        #: GGUF name of every tensor made from a quantized linear → why it is re-rounded whatever its
        #: values (None: its grid is checked as it is written)
        self.static = static
        self._sources = sources
        self._outcomes: dict[str, _Outcome] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_plan(cls, checkpoint: Checkpoint, plan: TensorPlan, allow_pickle: bool = False) -> "KeepGrid":
        """The decisions for `plan` of `checkpoint`; a UsageError when the checkpoint is not quantized."""
        scheme = source_scheme(checkpoint.config)
        if scheme is None:
            raise UsageError(f"--keep-grid keeps a quantized checkpoint's integer grid (GPTQ, AWQ, …); "
                             f"{checkpoint.name} stores float weights: convert it without --keep-grid")
        # the stored names say which linears the scheme dequantized (headers only)
        stored = Checkpoint.open(checkpoint.root, allow_pickle=allow_pickle, dequantize=False).tensors
        quantized = {f"{module}.{kind.output}" for module, kind in scheme.linears(stored).items()}
        static: dict[str, str | None] = {}
        sources: dict[str, LazyTensor] = {}
        for pt in plan:
            if not quantized.intersection(pt.source.hf_names):
                continue
            lazy = pt.source.plain
            static[pt.name] = _static_reason(pt, plan.quant.name, lazy, scheme.method)
            if static[pt.name] is None and lazy is not None:
                sources[pt.name] = lazy
        return cls(scheme.method, plan.quant.name, static, sources)

    def source(self, pt: PlannedTensor) -> LazyTensor | None:
        """The dequantized linear whose grid `pt` may be written from, or None (written as usual)."""
        return self._sources.get(pt.name)

    def work_items(self, index: int, pt: PlannedTensor, lazy: LazyTensor, slab_bytes: int,
                   allow_nonfinite: bool) -> Iterator[Any]:
        """The writer's work items for `pt`, a slab of rows each: its blocks from the grid where the
        slab's grid fits, else the default path's bytes for those rows."""
        from .gguf_writer import _encode_rows, _slabs, _work_cost, _WorkItem

        n = lazy.n_rows
        slabs = _slabs(pt, slab_bytes) or [(0, n)]
        qtype = pt.quant.name
        with self._lock:
            self._outcomes[pt.name] = _Outcome(n)

        def run(lo: int, hi: int) -> list[np.ndarray]:
            with transient_reads():
                grid = lazy.grid(lo, hi)  # type: ignore[misc]
                why = grid_blocks.misfit(grid, qtype)
                out = [grid_blocks.encode(grid, qtype)] if why is None else \
                    _encode_rows(pt, lazy.load_rows(lo, hi), lazy.dtype, None, allow_nonfinite, parts=True)
            self._record(pt.name, hi - lo, why)
            return out

        for j, (lo, hi) in enumerate(slabs):
            yield _WorkItem(index, j == 0, j == len(slabs) - 1, _work_cost(pt, (hi - lo) / n),
                            lambda lo=lo, hi=hi: run(lo, hi))

    def _record(self, name: str, rows: int, why: str | None) -> None:
        with self._lock:
            o = self._outcomes[name]
            if why is None:
                o.carried += rows
            else:
                o.reasons[why] = o.reasons.get(why, 0) + rows

    def summary(self) -> dict[str, Any]:
        """{"quant", "carried": [GGUF names], "re_rounded": [{"tensor", "reason"}]} in plan order
        (the result's `keep_grid`). A tensor counts as carried only when every row was."""
        carried: list[str] = []
        re_rounded: list[dict[str, str]] = []
        for name, static in self.static.items():
            o = self._outcomes.get(name)
            if static is not None or o is None:
                re_rounded.append({"tensor": name, "reason": static or "not written"})
            elif not o.reasons:
                carried.append(name)
            else:
                why = "; ".join(o.reasons)
                part = "" if o.carried == 0 else f" ({sum(o.reasons.values())} of {o.rows} rows; the rest carried)"
                re_rounded.append({"tensor": name, "reason": why + part})
        return {"quant": self.quant, "carried": carried, "re_rounded": re_rounded}


def _static_reason(pt: PlannedTensor, file_quant: str, lazy: LazyTensor | None, method: str) -> str | None:
    """Why `pt` is re-rounded whatever its grid holds, or None."""
    if file_quant not in grid_blocks.CARRIED_TYPES:
        return f"{file_quant}: only q4_0 / q4_1 / q8_0 files keep a grid"
    if pt.quant.name != file_quant:
        return f"written as {pt.quant.name}" + (f" ({pt.note})" if pt.note else "")
    if pt.quant.ggml_type != int(gguf.GGMLQuantizationType[file_quant.upper()]):
        return f"its {file_quant} quantizer writes another GGML type"
    if lazy is None:
        return "not the checkpoint tensor as stored (permuted or stacked)"
    if lazy.grid is None:
        return f"{method}: values not on a uniform integer grid"
    return None
