"""`bitconv inspect` for every artifact kind: what a path is, and its header-level summary.

One registry, `INSPECTORS` (kind → how to recognize a path, how to read it), used by `inspect`
and by `validate` to route an artifact, so a new artifact kind is one `register_inspector` call.
Nothing here reads tensor data: GGUF and safetensors are read from their headers, ONNX graphs
without their external data.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .convert.quantization_config import SOURCE_SCHEMES, describe, scheme_class, source_scheme, st_format
from .errors import ArtifactError, BitconvError, CheckpointError


@dataclass(frozen=True)
class Inspector:
    kind: str
    matches: Callable[[Path], bool]
    read: Callable[[Path], Any]


#: artifact kind → inspector, in the order paths are tried
INSPECTORS: dict[str, Inspector] = {}


Reader = Callable[[Path], Any]


def register_inspector(kind: str, matches: Callable[[Path], bool]) -> Callable[[Reader], Reader]:
    """Decorator: `read(path)` summarizes artifacts of `kind`, the paths for which `matches` is true."""

    def deco(read: Reader) -> Reader:
        INSPECTORS[kind] = Inspector(kind, matches, read)
        return read

    return deco


def artifact_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind of artifact at `path` ("onnx", "safetensors", "gguf"), or None."""
    p = Path(path)
    return next((i.kind for i in INSPECTORS.values() if i.matches(p)), None)


def inspect_path(path: str | os.PathLike[str]) -> Any:
    """The summary of the artifact at `path` (GGUFSummary, SafetensorsSummary or OnnxSummary)."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: no such file or folder")
    kind = artifact_kind(p)
    if kind is None:
        raise ArtifactError(f"{p}: not an artifact bitconv reads (a GGUF file, a safetensors file or folder, "
                            "an ONNX export folder)")
    return INSPECTORS[kind].read(p)


# --- ONNX ---------------------------------------------------------------------------------------

@dataclass
class OnnxSummary:
    """An ONNX export read without its external data."""

    path: str
    model_file: str
    producer: str
    ir_version: int
    opset: list[dict[str, Any]]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    n_nodes: int
    op_counts: dict[str, int]
    quant: str
    block_size: int | None
    matmulnbits: list[dict[str, Any]]
    initializers: list[dict[str, Any]]
    initializer_bytes: int
    files: list[dict[str, Any]]
    genai_config: dict[str, Any] | None
    kind: str = "onnx"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _value_info(v: Any) -> dict[str, Any]:
    from onnx import helper

    tt = v.type.tensor_type
    try:
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type).name
    except (KeyError, ValueError, TypeError):
        dtype = str(tt.elem_type)
    shape = [d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else "?"
             for d in tt.shape.dim]
    return {"name": v.name, "dtype": dtype, "shape": shape}


def _initializer_record(t: Any) -> dict[str, Any]:
    from onnx import TensorProto, helper

    ext = {e.key: e.value for e in t.external_data} if t.data_location == TensorProto.EXTERNAL else {}
    try:
        dt = helper.tensor_dtype_to_np_dtype(t.data_type)
        dtype, nbytes = dt.name, math.prod(t.dims) * dt.itemsize
    except (KeyError, ValueError, TypeError):
        dtype, nbytes = str(t.data_type), 0
    if "length" in ext:
        nbytes = int(ext["length"])
    elif t.raw_data:
        nbytes = len(t.raw_data)
    return {"name": t.name, "dtype": dtype, "shape": list(t.dims), "bytes": nbytes,
            "location": ext.get("location", "inline")}


def _is_onnx(p: Path) -> bool:
    return (p.is_file() and p.suffix == ".onnx") or (p.is_dir() and (p / "model.onnx").is_file())


@register_inspector("onnx", _is_onnx)
def inspect_onnx(path: Path) -> OnnxSummary:
    """Graph IO, opsets, MatMulNBits nodes and the initializer table; external data is not loaded."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        raise ArtifactError("inspecting ONNX exports needs the onnx package: pip install 'bitconv[onnx]'")
    from onnx import helper

    from .formats.onnx.reader import OnnxArtifact, onnx_quant_of

    art = OnnxArtifact(path)  # onnx.load(..., load_external_data=False), errors as ArtifactError
    try:
        m, g = art.model, art.model.graph
        nbits = []
        for node in g.node:
            if node.op_type == "MatMulNBits":
                a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
                nbits.append({"node": node.name, "weight": node.input[1] if len(node.input) > 1 else "",
                              **{k: int(a[k]) for k in ("K", "N", "bits", "block_size", "accuracy_level") if k in a}})
        inits = [_initializer_record(t) for t in g.initializer]
        quant, block_size = onnx_quant_of(art)
    finally:
        art.close()
    files = [{"name": f.name, "bytes": f.stat().st_size} for f in sorted(art.folder.iterdir())
             if f.is_file() and (f == art.model_path or f.name in {i["location"] for i in inits})]
    cfg = None
    cpath = art.folder / "genai_config.json"
    if cpath.is_file():
        try:
            model = json.loads(cpath.read_text(encoding="utf-8")).get("model") or {}
            cfg = {k: model.get(k) for k in ("type", "vocab_size", "context_length")}
            cfg["num_hidden_layers"] = (model.get("decoder") or {}).get("num_hidden_layers")
        except (OSError, ValueError, AttributeError) as e:
            cfg = {"error": f"unreadable: {e}"}
    return OnnxSummary(
        path=str(art.folder if path.is_dir() else path), model_file=art.model_path.name,
        producer=f"{m.producer_name} {m.producer_version}".strip(), ir_version=int(m.ir_version),
        opset=[{"domain": o.domain or "ai.onnx", "version": int(o.version)} for o in m.opset_import],
        inputs=[_value_info(v) for v in g.input], outputs=[_value_info(v) for v in g.output],
        n_nodes=len(g.node), op_counts=dict(sorted(Counter(n.op_type for n in g.node).items())),
        quant=quant, block_size=block_size, matmulnbits=nbits, initializers=inits,
        initializer_bytes=sum(i["bytes"] for i in inits), files=files, genai_config=cfg)


# --- safetensors --------------------------------------------------------------------------------

@dataclass
class SafetensorsSummary:
    """A safetensors file or checkpoint folder, from its headers, config.json and index."""

    path: str
    format: str  # bitnet-packed / compressed-tensors / plain / another quant_method
    architecture: str | None
    quantization: str  # one line
    quantization_config: dict[str, Any] | None
    index: str | None
    shards: list[dict[str, Any]]
    tensors: list[dict[str, Any]]
    n_tensors: int
    n_elements: int
    data_bytes: int
    #: bitnet-packed: packed ternary linears; compressed-tensors: quantized linears (weight_packed, or an
    #: int / fp8 weight with its weight_scale); gptq / awq / fp8:
    #: quantized linears (qweight / weight_scale_inv tensors)
    n_quantized: int
    kind: str = "safetensors"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_safetensors(p: Path) -> bool:
    from .convert.checkpoint import SAFETENSORS_INDEX

    if p.is_file():
        return p.suffix == ".safetensors"
    return p.is_dir() and ((p / SAFETENSORS_INDEX).is_file() or any(p.glob("*.safetensors")))


def _table(value: Any) -> dict[str, Any]:
    """A config.json section as a table; another shape reads as empty (inspect reports, never trips)."""
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _quant_line(fmt: str, qc: dict[str, Any] | None) -> str:
    if not isinstance(qc, dict):
        return "none (float weights)" if fmt == "plain" else f"{fmt} (no quantization_config in config.json)"
    if fmt == "bitnet-packed":
        return (f"bitnet ternary, linear_class {qc.get('linear_class', 'bitlinear')}, "
                f"mode {qc.get('quantization_mode', '?')}")
    if fmt == "compressed-tensors":
        try:  # the scheme as the conversion source reads it (groups, formats, ignore)
            return source_scheme({"quantization_config": qc}).describe()
        except CheckpointError as e:
            refusal = str(e)
        parts = []
        for name, group in sorted(_table(qc.get("config_groups")).items()):
            group = _table(group)
            w = _table(group.get("weights"))
            sym = "symmetric" if w.get("symmetric") else "asymmetric"
            gs = f" {w.get('group_size')}" if w.get("strategy") == "group" else ""
            parts.append(f"{name}: {w.get('type', '?')}{w.get('num_bits', '?')} {sym} {w.get('strategy', '?')}{gs} "
                         f"on {', '.join(map(str, _items(group.get('targets'))))}")
        ignore = _items(qc.get("ignore"))
        return (f"{qc.get('format', '?')}, {qc.get('quantization_status', '?')}; " + "; ".join(parts)
                + (f"; ignore {', '.join(map(str, ignore))}" if ignore else "")
                + f" (not a conversion source: {refusal})")
    if fmt in SOURCE_SCHEMES and (line := describe(qc)):
        return line
    return ", ".join(f"{k}={v}" for k, v in qc.items() if isinstance(v, (str, int, float, bool)))


def _scheme_marker(fmt: str, qc: dict[str, Any] | None) -> str:
    """The tensor suffix that marks a quantized linear: the scheme instance's where its options
    choose it (bitsandbytes: 4-bit `weight.absmax` or int8 `SCB`), else the registered class's."""
    try:
        scheme = source_scheme({"quantization_config": qc})
    except BitconvError:
        scheme = None
    return getattr(scheme, "marker", None) or getattr(scheme_class(fmt), "marker", "qweight")


@register_inspector("safetensors", _is_safetensors)
def inspect_safetensors(path: Path) -> SafetensorsSummary:
    """Tensor table from the headers only (each checked against its file's size), shards from the
    index, format and quantization from config.json (the folder's, or a lone file's folder's)."""
    from .convert.checkpoint import (SAFETENSORS_INDEX, _index_tensors, load_config,
                                     read_safetensors_header)

    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        tensors, files = _index_tensors(path, allow_pickle=False)
        entries = [(t.name, t.dtype, t.shape, t.nbytes, t.source.name) for t in tensors.values()]
    else:
        files = [path]
        entries = [(e.name, e.dtype, e.shape, e.end - e.begin, path.name)
                   for e in sorted(read_safetensors_header(path), key=lambda e: e.name)]
    notes: list[str] = []
    config: dict[str, Any] | None = None
    if (folder / "config.json").is_file():
        try:
            config = load_config(folder)
        except BitconvError as e:
            notes.append(str(e))
    qc = (config or {}).get("quantization_config")
    qc = qc if isinstance(qc, dict) else None
    names = {e[0] for e in entries}
    fmt = st_format(qc, names)
    archs = (config or {}).get("architectures")
    per_file = Counter(e[4] for e in entries)
    if fmt == "compressed-tensors":  # packed linears, and unpacked ones (int / float weight + weight_scale)
        n_quantized = sum(n.endswith(".weight_packed") or (n.endswith(".weight_scale") and n[:-6] in names
                                                           and n[:-6] + "_packed" not in names) for n in names)
    elif fmt == "bitnet-packed":
        n_quantized = sum(e[1] == "U8" and e[0] + "_scale" in names for e in entries)
    elif fmt in SOURCE_SCHEMES:
        marker = "." + _scheme_marker(fmt, qc)
        n_quantized = sum(n.endswith(marker) for n in names)
    else:
        n_quantized = 0
    index = folder / SAFETENSORS_INDEX
    return SafetensorsSummary(
        path=str(path), format=fmt, architecture=archs[0] if isinstance(archs, list) and archs else None,
        quantization=_quant_line(fmt, qc), quantization_config=qc,
        index=index.name if path.is_dir() and index.is_file() else None,
        shards=[{"file": f.name, "n_tensors": per_file[f.name], "bytes": f.stat().st_size} for f in files],
        tensors=[{"name": n, "dtype": d, "shape": list(s), "bytes": b, "file": f} for n, d, s, b, f in entries],
        n_tensors=len(entries), n_elements=sum(math.prod(e[2]) for e in entries),
        data_bytes=sum(e[3] for e in entries), n_quantized=n_quantized, notes=notes)


# --- GGUF (last: any other file is tried as GGUF, so its errors stay GGUF's) ---------------------

@register_inspector("gguf", lambda p: p.is_file())
def inspect_gguf(path: Path) -> Any:
    from .convert.gguf_header import read_gguf_summary

    return read_gguf_summary(path)
