"""The checkpoint's weights as the graph asks for them: loaded a slab at a time, checked (NaN/Inf,
float16 range), encoded in the planned storage (float MatMul initializers, MatMulNBits blocks, exact
ternary codes, a quantized source's own grid) and written to the external data, with the MatMul /
MatMulNBits nodes that read them."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ...convert.checkpoint import to_compute_dtype
from ...errors import QuantizationError
from ...quant import nbits
from ...quant.ternary import TernaryScale, scale_for, ternarize
from .external_data import ExternalData
from .grid import repack
from .graph import Graph
from .plan import _BITS, OnnxPlan

if TYPE_CHECKING:
    from ...convert.arch.base import SourceTensor

#: stored bytes read at a time from a large checkpoint tensor
SLAB_BYTES = 64 * 1024 * 1024


class WeightWriter:
    """Writes weights into the graph; the base of DecoderBuilder."""

    def __init__(self, plan: OnnxPlan, data: ExternalData) -> None:
        from onnx import TensorProto

        self.plan = plan
        self.data = data
        self.g = Graph()
        self.f16 = plan.quant.compute == "f16"
        self.ct = TensorProto.FLOAT16 if self.f16 else TensorProto.FLOAT
        self.np_ct = np.float16 if self.f16 else np.float32
        self.storage = {t.name: t for t in plan.tensors}
        #: (input, column order) → the input's columns gathered in that order (act-order linears
        #: that share an input and an order share one Gather)
        self._gathers: dict[tuple[str, bytes], str] = {}

    def _load(self, name: str) -> np.ndarray:
        return self._checked(name, np.asarray(self.plan.sources[name].load(), dtype=np.float32))

    def _checked(self, name: str, values: np.ndarray, f16: bool = False) -> np.ndarray:
        """`values` (a chunk of the weight `name`, floats), refused with a one-line error when it
        holds NaN/Inf or, for a float16 initializer, magnitudes ≥ 65520 (they would become inf)."""
        if self.plan.allow_nonfinite or values.dtype.kind != "f" or not values.size:
            return values
        src = self.plan.sources.get(name)
        hf = src.hf_names[0] if src is not None and src.hf_names else name
        if not np.isfinite(values).all():
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            raise QuantizationError(f"{hf}: {bad} NaN/Inf value(s); pass --allow-nonfinite to export anyway",
                                    tensor=name)
        if f16 and values.dtype != np.float16 and max(values.max(), -values.min()) >= 65520.0:
            big = int(np.count_nonzero(np.abs(values) >= 65520.0))
            raise QuantizationError(f"{hf}: {big} value(s) of magnitude ≥ 65520 would become inf in float16; "
                                    "export f32, or pass --allow-nonfinite", tensor=name)
        return values

    def _add_streamed(self, name: str, dtype: Any, rows: int = 4096) -> str:
        """The tensor as an initializer in `dtype`, read a slab and widened a row chunk at a time and
        written as it goes: a large matrix (a 150k-row embedding) is never whole in memory."""
        src = self.plan.sources[name]

        def chunks() -> Iterator[np.ndarray]:
            for raw, stored in src.stored_slabs(SLAB_BYTES):
                for lo in range(0, raw.shape[0], rows):
                    values = self._checked(name, to_compute_dtype(raw[lo:lo + rows], stored), f16=dtype == np.float16)
                    yield values.astype(dtype, copy=False)

        self.g.initializers.append(self.data.add_rows(name, tuple(src.shape), dtype, chunks()))
        return name

    def _quantized(self, name: str, bits: int, block_size: int) -> nbits.NBitsTensor:
        """int4/int8 of a checkpoint matrix, read a slab at a time and widened per row chunk inside
        the quantizer's workers."""
        src = self.plan.sources[name]
        n_rows = math.prod(src.shape[:-1])
        return nbits.quantize_slabs(((raw, lambda c, st=stored: self._checked(name, to_compute_dtype(c, st)))
                                     for raw, stored in src.stored_slabs(SLAB_BYTES)), n_rows, bits, block_size)

    def _from_grid(self, name: str) -> tuple[nbits.NBitsTensor | None, np.ndarray | None]:
        """The planned repack of a quantized source's grid, or (None, None) with a note when a slab
        turns out not to fit (zero points outside the codes' range): re-quantized then."""
        t = self.storage[name]
        assert t.repack is not None
        q, perm, why = repack(self.plan.sources[name], t.repack, SLAB_BYTES)
        if q is None:
            self.plan.notes.append(f"{name}: re-quantized from the dequantized weights ({why})")
            t.repack, t.note = None, f"re-quantized: {why}"
        return q, perm

    def _reordered(self, x: str, name: str, perm: np.ndarray, hint: str) -> str:
        """x with its last axis gathered in `perm` (an act-order linear's column order)."""
        key = (x, perm.tobytes())
        if key not in self._gathers:
            idx = self._add_init(f"{name}.perm", perm.astype(np.int64))
            self._gathers[key] = self.g.op("Gather", [x, idx], hint + "/act_order", axis=-1)
        return self._gathers[key]

    def _ternary(self, name: str) -> tuple[np.ndarray, TernaryScale]:
        src = self.plan.sources[name]
        w = self._load(name)
        known = src.fixed_scale([w])
        scale = scale_for([w], known)
        return ternarize(w, scale), scale

    def _add_init(self, name: str, array: np.ndarray, label: str | None = None) -> str:
        self.g.initializers.append(self.data.add(name, array, label))
        return name

    def matmul(self, x: str, name: str, hint: str, *, output: str | None = None) -> str:
        """x @ W^T for the checkpoint matrix `name` [N, K] in its planned storage (+ bias if any)."""
        t = self.storage[name]
        src_name = "token_embd.weight" if (t.role == "lm_head" and name not in self.plan.sources) else name
        bias_name = name[: -len("weight")] + "bias"
        has_bias = bias_name in self.plan.sources
        out_name = None if has_bias else output
        if t.role == "ternary":
            codes, scale = self._ternary(src_name)
            if t.storage in _BITS:  # exact: codes + zero point, scale s per block
                q = nbits.quantize_ternary(codes, float(scale.scale), self.plan.block_size, _BITS[t.storage])
                y = self._nbits(x, name, q, hint, out_name)
            else:
                w = codes.astype(np.float32) / scale.inv  # s · W_t as the references compute it
                y = self._dense(x, name, w, t.storage, hint, out_name)
        elif t.storage in _BITS:
            q, perm = self._from_grid(name) if t.repack is not None else (None, None)
            if q is None:
                q = self._quantized(src_name, _BITS[t.storage], self.plan.block_size or 32)
            elif perm is not None:
                x = self._reordered(x, name, perm, hint)
            y = self._nbits(x, name, q, hint, out_name)
        else:
            src = self.plan.sources[src_name]
            rounded = bool(self.plan.quant.rounding) and t.role == "linear"
            if not rounded and src.plain is not None and src.plain.nbytes > SLAB_BYTES and len(src.shape) == 2:
                y = self._dense_streamed(x, name, src, t.storage, hint, out_name)
            else:
                w = self._load(src_name)
                y = self._dense(x, name, self._rounded(w) if rounded else w, t.storage, hint, out_name)
        if has_bias:
            b = self._add_init(bias_name, self._load(bias_name).astype(self.np_ct))
            y = self.g.op("Add", [y, b], hint, outputs=[output] if output else None)
        return y

    def _rounded(self, w: np.ndarray) -> np.ndarray:
        """A plugin quantizer's values for the matrix w (identity for the built-in types)."""
        if not self.plan.quant.rounding:
            return w
        from ...quant.registry import get_quantizer

        q = get_quantizer(self.plan.quant.rounding)
        state = q.prepare([w], "F32") if q.needs_prepare else None
        return np.asarray(q.dequantize(q.quantize(w, state), w.shape), dtype=np.float32)

    def _dense_streamed(self, x: str, name: str, src: "SourceTensor", storage: str, hint: str,
                        output: str | None) -> str:
        """x @ W^T for a large float matrix: W^T is written a block of its rows (W's columns) at a
        time, each gathered from a pass over W's row slabs, so neither W nor W^T is ever whole in
        memory (a 7B lm_head is 2.2 GB in float32). Same bytes as the whole-matrix path."""
        dt = np.dtype(np.float32 if storage == "f32" else np.float16)
        n, k = src.shape
        cols = max(1, SLAB_BYTES // (n * dt.itemsize))

        def blocks() -> Iterator[np.ndarray]:
            for k0 in range(0, k, cols):
                block = np.empty((min(k, k0 + cols) - k0, n), dtype=dt)
                lo = 0
                for raw, stored in src.stored_slabs(SLAB_BYTES):
                    part = self._checked(src.name, to_compute_dtype(raw[:, k0:k0 + cols], stored), f16=dt == np.float16)
                    part = part.astype(np.float32, copy=False)
                    block[:, lo:lo + raw.shape[0]] = part.T
                    lo += raw.shape[0]
                yield block

        self.g.initializers.append(self.data.add_rows(name + ".T", (k, n), dt, blocks(), name))
        return self.g.op("MatMul", [x, name + ".T"], hint, outputs=[output] if output else None)

    def _dense(self, x: str, name: str, w: np.ndarray, storage: str, hint: str, output: str | None) -> str:
        if storage in ("f32", "f16"):
            dt = np.float32 if storage == "f32" else np.float16
            self._checked(name, w, f16=storage == "f16")
            init = self._add_init(name + ".T", np.ascontiguousarray(w.T).astype(dt, copy=False), name)
            return self.g.op("MatMul", [x, init], hint, outputs=[output] if output else None)
        bits = _BITS[storage]
        bs = self.plan.block_size or 32
        return self._nbits(x, name, nbits.quantize_rows(w, bits, bs), hint, output)

    def _nbits(self, x: str, name: str, q: nbits.NBitsTensor, hint: str, output: str | None) -> str:
        b = self._add_init(f"{name}.q{q.bits}", q.packed, name)
        s = self._add_init(f"{name}.scales", q.scales.astype(np.float32))
        ins = [x, b, s]
        if q.zero_points is not None:
            ins.append(self._add_init(f"{name}.zero_points", q.zero_points))
        return self.g.op("MatMulNBits", ins, hint, domain="com.microsoft",
                         outputs=[output] if output else None, K=q.k, N=q.n, bits=q.bits,
                         block_size=q.block_size, accuracy_level=self.plan.accuracy_level)
