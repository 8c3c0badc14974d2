"""Weight sources: what validate compares, each decoded into bitconv's GGUF tensor naming.

* `CheckpointWeights`: a reference HF checkpoint through its tensor plan (ternary linears as the
  references ternarize them).
* `GgufWeights`: a GGUF file's tensors decoded on demand from a read-only mapping.
* `StArtifact`: a safetensors checkpoint, quantized linears dequantized on load by the conversion
  sources' schemes (bitnet-packed linears are decoded by the arch mapping itself).

The ONNX reader is `bitconv.formats.onnx.reader.OnnxArtifact` (inspect reads ONNX folders with it too).
"""
from __future__ import annotations

import dataclasses
import math
import mmap
from collections import Counter
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..convert.checkpoint import Checkpoint, LazyTensor
from ..convert.dequant import dequantized_tensors
from ..convert.quantization_config import source_scheme, st_format
from ..errors import ArtifactError, CheckpointError
from ..forward import TERNARY_LINEARS, TernaryWeight, WeightSource
from ..convert.gguf_header import GGUFSummary, GGUFTensorInfo
from ..convert.gguf_source import TERNARY_TYPES, GGUFTensor
from ..quant.ternary import scale_for, ternarize

_QUANT_BY_FILE_TYPE: dict[int, str] = {}


def quant_of_file(meta: dict[str, Any]) -> str | None:
    """The quant type name a file was written as, from general.file_type."""
    from ..quant.registry import all_quantizers

    if not _QUANT_BY_FILE_TYPE:
        for q in all_quantizers():
            if q.file_type is not None:
                _QUANT_BY_FILE_TYPE.setdefault(int(q.file_type), q.name)
    ft = meta.get("general.file_type")
    return _QUANT_BY_FILE_TYPE.get(int(ft)) if isinstance(ft, int) else None


class GgufWeights(WeightSource):
    """A GGUF file's (or split set's) tensors, decoded on demand from read-only mappings.
    `files`: for a split set, the file each tensor is in (else every tensor is in `path`)."""

    def __init__(self, path: Path, summary: GGUFSummary, kernel_config: Any = None, ternary: bool = False,
                 files: dict[str, Path] | None = None) -> None:
        self.path = path
        self.summary = summary
        self.by_name = {t.name: t for t in summary.tensors}
        self.kernel_config = kernel_config
        self.ternary = ternary
        self._files = files or {}
        self._maps: dict[Path, tuple[Any, mmap.mmap, np.ndarray]] = {}
        for f in dict.fromkeys([path, *self._files.values()]):
            fh = open(f, "rb")
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[f] = (fh, mm, np.frombuffer(mm, dtype=np.uint8))

    def close(self) -> None:
        maps, self._maps = self._maps, {}
        for fh, mm, buf in maps.values():
            del buf
            try:
                mm.close()
            except BufferError:
                pass
            fh.close()

    def raw(self, t: GGUFTensorInfo) -> np.ndarray:
        return self._maps[self._files.get(t.name, self.path)][2][t.offset:t.offset + t.nbytes]

    def _tensor(self, t: GGUFTensorInfo) -> GGUFTensor:
        return GGUFTensor(t, self._files.get(t.name, self.path), self.kernel_config)

    def ternary_of(self, t: GGUFTensorInfo) -> TernaryWeight | None:
        """Codes and scale of a tensor in a ternary type (None for other types). TQ1_0/TQ2_0 carry a
        scale per block: sign and max |w| here, so a file llama-quantize made still validates."""
        if len(t.shape) != 2 or t.type_name not in TERNARY_TYPES:
            return None
        if t.type_name in ("TQ1_0", "TQ2_0"):
            w = self.dense(t)
            scale = np.float32(np.abs(w).max()) if w.any() else np.float32(0)
            return TernaryWeight(np.sign(w).astype(np.int8), scale)
        try:
            return TernaryWeight(*self._tensor(t).codes_and_scale())
        except CheckpointError as e:
            raise ArtifactError(str(e)) from e

    def dense(self, t: GGUFTensorInfo) -> np.ndarray:
        try:
            return self._tensor(t).dequantize().astype(np.float32, copy=False)
        except CheckpointError as e:
            raise ArtifactError(str(e)) from e

    def get(self, name: str) -> Any:
        t = self.by_name.get(name)
        if t is None:
            return None
        if self.ternary and name.split(".")[-2] in TERNARY_LINEARS:
            tw = self.ternary_of(t)
            if tw is not None:
                return tw
        return self.dense(t)

    def rows(self, name: str, index: np.ndarray) -> np.ndarray:
        t = self.by_name.get(name)
        if t is None:
            raise ArtifactError(f"tensor {name} is missing")
        if t.type_name in ("I2_S", "TL1", "TL2") or len(t.shape) != 2:
            return super().rows(name, index)
        qtype = gguf.GGMLQuantizationType[t.type_name]
        row_bytes = t.nbytes // t.shape[0]
        raw = self.raw(t).reshape(t.shape[0], row_bytes)[index]
        return np.asarray(gguf.quants.dequantize(raw, qtype), dtype=np.float32).reshape(len(index), -1)


class CheckpointWeights(WeightSource):
    """The HF checkpoint's tensors as bitconv maps them into GGUF names and layout (before any
    quantization); ternary linears as the references ternarize them."""

    def __init__(self, plan: Any) -> None:
        self.plan = plan
        self.by_name = {pt.name: pt for pt in plan}
        self.mapping = plan.mapping

    def float(self, name: str) -> np.ndarray | None:
        pt = self.by_name.get(name)
        return None if pt is None else np.asarray(pt.source.load(), dtype=np.float32)

    def get(self, name: str) -> Any:
        pt = self.by_name.get(name)
        if pt is None:
            return None
        w = np.asarray(pt.source.load(), dtype=np.float32)
        if self.mapping.is_ternary_linear(name):
            known = pt.source.fixed_scale([w])
            scale = scale_for([w], known)
            return TernaryWeight(ternarize(w, scale), scale.scale)
        return w




# --- safetensors checkpoints -----------------------------------------------------------------------

FLOAT_TYPES = {"F64": "f32", "F32": "f32", "F16": "f16", "BF16": "bf16"}


@dataclasses.dataclass
class QuantizedLinear:
    """One quantized linear of a checkpoint: its module, its lazy float32 weight (dequantized a slab
    at a time by the conversion sources' scheme) and its stored weight type (int4, fp8, …)."""

    module: str
    weight: LazyTensor
    weight_type: str


class StArtifact:
    """A safetensors checkpoint read from its headers, with `decoded`: the same checkpoint whose
    tensors are float. Quantized linears are dequantized by the scheme that reads such checkpoints
    as conversion sources (quant/<scheme>.py, chosen by quant_method: compressed-tensors, GPTQ, AWQ,
    FP8, …), so validate and the converters share one decoder; bitnet-packed linears are decoded
    by the arch mapping itself."""

    def __init__(self, path: Path) -> None:
        folder = path if path.is_dir() else path.parent
        self.raw = Checkpoint.open(folder, dequantize=False)  # the stored layout: decoded here
        qc = self.raw.config.get("quantization_config")
        self.qc: dict[str, Any] | None = qc if isinstance(qc, dict) else None
        self.format = st_format(self.qc, set(self.raw.tensors))
        self.problems: list[str] = []  # layout problems found while decoding the headers
        self.scheme: Any = None
        self.linears: dict[str, QuantizedLinear] = {}  # HF weight name → the quantized linear
        self.format_note = self._check_format()
        self.decoded: Checkpoint | None = self._dequantized() if self.scheme is not None else self.raw

    @property
    def quant(self) -> str:
        """The weight type the checkpoint is held to: bitnet-packed, its quantized linears' most common
        type (int4 / int8 / fp8 / …), or its main float dtype."""
        if self.format == "bitnet-packed":
            return "bitnet-packed"
        counts = Counter(lin.weight_type for lin in self.linears.values()) or \
            Counter(FLOAT_TYPES[t.dtype] for t in self.raw if t.dtype in FLOAT_TYPES and len(t.shape) == 2)
        return counts.most_common(1)[0][0] if counts else "?"

    def _check_format(self) -> str:
        """'' when the format is one bitconv decodes, else why not."""
        qc = self.qc or {}
        if self.format == "bitnet-packed":
            from ..quant.ternary import LINEAR_CLASSES

            lc = qc.get("linear_class", "bitlinear")
            return "" if lc in LINEAR_CLASSES else f"linear_class {lc!r} (known: {', '.join(LINEAR_CLASSES)})"
        if self.format == "plain":
            return ""
        if not self.qc:
            return f"{self.format} tensors but no quantization_config in config.json"
        try:
            self.scheme = source_scheme(self.raw.config)
        except CheckpointError as e:
            return str(e)
        if self.scheme is None:
            return f"quant_method {self.format!r}: bitconv decodes no such checkpoint"
        return ""

    def _dequantized(self) -> Checkpoint | None:
        """The checkpoint with its quantized linears as lazy float32 weights; None (the problem
        recorded) when their stored parts do not make the linears the config describes."""
        try:
            kinds = self.scheme.linears(self.raw.tensors)
            tensors = dequantized_tensors(self.raw.config, self.raw.tensors)
            for module, kind in kinds.items():
                name = f"{module}.{kind.output}"
                self.linears[name] = QuantizedLinear(module, tensors[name], self.scheme.weight_type(module))
        except CheckpointError as e:
            self.problems.append(str(e))
            return None
        return dataclasses.replace(self.raw, tensors=tensors)

