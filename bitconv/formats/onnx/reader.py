"""Reading an ONNX export back: the graph without its external data, each weight the graph uses
(MatMulNBits / MatMul / Gather initializers) located by bitconv tensor name and decoded to float
(or to its n-bit codes) through quant.nbits, external data through a read-only memory map.

Used by `bitconv inspect` (the export's quant type) and by validate (every weight against its
reference). Nothing here needs onnxruntime; `onnx` is imported when a graph is read.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ArtifactError
from ...quant import nbits


@dataclass
class OnnxWeight:
    """A weight the graph uses, by bitconv tensor name (blk.N.attn_q.weight …)."""

    name: str
    kind: str  # nbits / matmul (initializer [K, N]) / gather (embedding table) / plain (norms, biases)
    init: str  # the initializer holding the data (MatMulNBits: B)
    scales: str | None = None
    zero_points: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    #: MatMulNBits of an act-order source: the initializer of the column order its input is
    #: gathered in (the stored weight is W[:, perm])
    perm: str | None = None


class OnnxArtifact:
    """An ONNX graph (read without its external data) and its initializers, external ones read
    through a read-only memory map of the data file."""

    def __init__(self, path: Path) -> None:
        import onnx

        self.model_path = path / "model.onnx" if path.is_dir() else path
        self.folder = self.model_path.parent
        if not self.model_path.is_file():
            raise ArtifactError(f"{path}: no model.onnx")
        try:
            self.model = onnx.load(str(self.model_path), load_external_data=False)
        except Exception as e:  # protobuf DecodeError and friends
            raise ArtifactError(f"{self.model_path}: not a readable ONNX model ({e})") from None
        self.inits = {t.name: t for t in self.model.graph.initializer}
        self._maps: dict[str, np.ndarray] = {}

    def close(self) -> None:
        self._maps.clear()

    def _external(self, t: Any) -> tuple[Path, int, int | None]:
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if not loc or Path(loc).is_absolute() or ".." in Path(loc).parts:
            raise ArtifactError(f"{t.name}: external data location {loc!r} is not a file inside the folder")
        length = info.get("length")
        return self.folder / loc, int(info.get("offset", 0) or 0), int(length) if length is not None else None

    def array(self, name: str) -> np.ndarray:
        """The initializer's values (no copy for external data)."""
        from onnx import TensorProto, helper, numpy_helper

        t = self.inits[name]
        if t.data_location != TensorProto.EXTERNAL:
            return numpy_helper.to_array(t)
        path, offset, length = self._external(t)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
        need = math.prod(t.dims) * dtype.itemsize
        if length is not None and length != need:
            raise ArtifactError(f"{name}: external data length {length} but dims {list(t.dims)} need {need} bytes")
        key = str(path)
        if key not in self._maps:
            if not path.is_file():
                raise ArtifactError(f"{name}: external data file {path.name} is missing")
            size = path.stat().st_size
            self._maps[key] = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        buf = self._maps[key]
        if offset + need > buf.size:
            raise ArtifactError(f"{name}: external data [{offset}, {offset + need}) is past the end of {path.name} "
                                f"({buf.size} bytes)")
        return buf[offset:offset + need].view(dtype).reshape(tuple(t.dims))

    def weights(self) -> list[OnnxWeight]:
        """The graph's weights in node order (each once), then the remaining named initializers."""
        from onnx import helper

        out: list[OnnxWeight] = []
        seen: set[str] = set()
        # activations gathered along their last axis by a constant order (act-order linears)
        orders = {n.output[0]: n.input[1] for n in self.model.graph.node
                  if n.op_type == "Gather" and len(n.input) == 2 and n.input[0] not in self.inits
                  and n.input[1] in self.inits and len(self.inits[n.input[1]].dims) == 1}
        for node in self.model.graph.node:
            ins = list(node.input)
            if node.op_type == "MatMulNBits" and len(ins) >= 3 and ins[1] in self.inits and ins[1] not in seen:
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                zp = ins[3] if len(ins) > 3 and ins[3] else None
                perm = orders.get(ins[0])
                out.append(OnnxWeight(re.sub(r"\.q\d+$", "", ins[1]), "nbits", ins[1], ins[2], zp, attrs, perm))
                seen.update(x for x in (ins[1], ins[2], zp, perm) if x)
            elif node.op_type == "MatMul" and len(ins) == 2 and ins[1] in self.inits and ins[1] not in seen \
                    and len(self.inits[ins[1]].dims) == 2:
                out.append(OnnxWeight(ins[1].removesuffix(".T"), "matmul", ins[1]))
                seen.add(ins[1])
            elif node.op_type == "Gather" and ins and ins[0] in self.inits and ins[0] not in seen \
                    and len(self.inits[ins[0]].dims) == 2:
                out.append(OnnxWeight(ins[0], "gather", ins[0]))
                seen.add(ins[0])
        for name in self.inits:
            if name not in seen and not name.startswith("const/"):
                out.append(OnnxWeight(name, "plain", name))
        return out

    def nbits_tensor(self, w: OnnxWeight) -> Any:
        bits, bs, k, n = (int(w.attrs.get(a, 0)) for a in ("bits", "block_size", "K", "N"))
        packed = self.array(w.init)
        nb = nbits.n_blocks(k, bs)
        packed = packed.reshape(n, nb, bs * bits // 8)
        scales = np.asarray(self.array(w.scales), dtype=np.float32).reshape(n, nb)
        return nbits.NBitsTensor(packed, scales, bits, bs, k)

    def zero_points(self, w: OnnxWeight, t: Any) -> np.ndarray | None:
        """Per-block zero points [N, n_blocks] (None: the op's default 2^(bits−1))."""
        if w.zero_points is None:
            return None
        z = self.array(w.zero_points)
        n, nb = t.scales.shape
        if z.dtype == np.uint8:
            z = nbits.unpack_codes(z.reshape(n, -1), t.bits)[:, :nb] if t.bits < 8 else z.reshape(n, nb)
        return np.asarray(z, dtype=np.float32).reshape(n, nb)

    def codes(self, w: OnnxWeight) -> tuple[Any, np.ndarray]:
        """(NBitsTensor, signed codes [N, K] = stored code − zero point) of a MatMulNBits weight."""
        t = self.nbits_tensor(w)
        raw = nbits.unpack_codes(t.packed, t.bits).astype(np.int16)  # [N, nb, bs]
        zp = self.zero_points(w, t)
        raw -= (np.int16(1 << (t.bits - 1)) if zp is None else zp.astype(np.int16)[..., None])
        return t, self._in_order(w, raw.reshape(t.n, -1)[:, : t.k])

    def _in_order(self, w: OnnxWeight, a: np.ndarray) -> np.ndarray:
        """Columns of a stored (act-order reordered) weight back in the input's order."""
        if w.perm is None:
            return a
        out = np.empty_like(a)
        out[:, np.asarray(self.array(w.perm), dtype=np.int64)] = a
        return out

    def dense(self, w: OnnxWeight) -> np.ndarray:
        """The weight as float32 in the checkpoint's layout ([N, K] for matrices)."""
        if w.kind == "nbits":
            t = self.nbits_tensor(w)
            if w.zero_points is None:
                return self._in_order(w, nbits.dequantize(t))
            raw = nbits.unpack_codes(t.packed, t.bits).astype(np.float32)  # [N, nb, bs]
            raw -= self.zero_points(w, t)[..., None]
            return self._in_order(w, (raw * t.scales[..., None]).reshape(t.n, -1)[:, : t.k])
        a = np.asarray(self.array(w.init), dtype=np.float32)
        return np.ascontiguousarray(a.T) if w.kind == "matmul" else a

    def storage(self, w: OnnxWeight) -> str:
        """f32 / f16 / int8 / int4 / int2 / another numpy dtype name."""
        from onnx import helper

        if w.kind == "nbits":
            return f"int{int(w.attrs.get('bits', 0))}"
        dt = np.dtype(helper.tensor_dtype_to_np_dtype(self.inits[w.init].data_type))
        return {"float32": "f32", "float16": "f16"}.get(dt.name, dt.name)


def onnx_quant_of(art: OnnxArtifact) -> tuple[str, int | None]:
    """The --quant an export was written with, and its MatMulNBits block size (None for float)."""
    bits_bs: list[tuple[int, int]] = []
    for node in art.model.graph.node:
        if node.op_type == "MatMulNBits":
            from onnx import helper

            a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
            bits_bs.append((int(a.get("bits", 0)), int(a.get("block_size", 0))))
    for bits in (2, 4, 8):
        for b, bs in bits_bs:
            if b == bits:
                return f"int{bits}", bs
    weights = [w for w in art.weights() if w.kind == "matmul"]
    if weights and art.storage(weights[0]) == "f16":
        return "f16", None
    return "f32", None

