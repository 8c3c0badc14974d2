"""Hugging Face safetensors checkpoints as output (`bitconv hf2st`).

Formats:

- ``bitnet-packed``: transformers' packed BitNet checkpoint (``quantization_config.quant_method:
  "bitnet"``, ``quantization_mode: "offline"``) from a BitNetForCausalLM checkpoint holding master
  weights or already packed weights. Every ternary linear becomes uint8 codes in transformers'
  layout (``pack_hf_packed``: [ceil(N/4), K]) plus a one-element float32 ``<name>_scale``
  (``weight_scale``): inv = 1/s for ``linear_class="bitlinear"`` (transformers divides by it), s for
  ``"autobitlinear"`` (it multiplies). Ternarization is the GGUF path's (``scale_for`` +
  ``ternarize``; a packed input keeps the scale it fixes). Every other tensor is copied as stored.

The model.safetensors is streamed one tensor at a time into a temp file in the output folder and
renamed into place; config.json and the tokenizer files are copied beside it.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..convert.arch import mapping_for
from ..convert.arch.base import SourceTensor
from ..convert.checkpoint import Checkpoint, LazyTensor
from ..errors import OutputError, QuantizationError, UsageError
from ..quant.ternary import LINEAR_CLASSES, pack_hf_packed, scale_for, ternarize
from .atomic import atomic_output, check_free_space, write_text_atomic

FORMATS = ("bitnet-packed",)
MODEL_FILE = "model.safetensors"
#: architectures whose transformers class reads the packed layout with HF tensor names unchanged
PACKED_ARCHITECTURES = ("BitNetForCausalLM",)

_ST_DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                  "BOOL": 1, "U16": 2, "U32": 4, "U64": 8}


@dataclass
class StTensorRecord:
    name: str
    shape: list[int]
    dtype: str
    nbytes: int
    note: str = ""


@dataclass
class SafetensorsResult:
    source: str
    architecture: str
    format: str
    linear_class: str
    output: str
    n_tensors: int
    n_ternary: int
    output_bytes: int
    files: list[str]
    dry_run: bool = False
    seconds: float = 0.0
    tensors: list[StTensorRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _OutTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    produce: Callable[[], bytes]
    note: str = ""


def check_format(fmt: str) -> str:
    f = (fmt or "").lower()
    if f not in FORMATS:
        raise UsageError(f"unknown safetensors format {fmt!r}; valid: {', '.join(FORMATS)}")
    return f


def check_output_folder(folder: Path, force: bool) -> None:
    """OUT must be absent or an empty folder (anything with --force); its parent must be writable."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} exists and is not a folder")
    if folder.is_dir():
        if not force and any(folder.iterdir()):
            raise OutputError(f"output folder {folder} is not empty; pass --force to write into it")
        if not os.access(folder, os.W_OK):
            raise OutputError(f"output folder {folder} is not writable")
        return
    parent = folder.parent
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder {parent} is not writable")


def _ternary_producer(st: SourceTensor, linear_class: str) -> tuple[Callable[[], bytes], Callable[[], bytes]]:
    """(packed codes bytes, weight_scale bytes) of one ternary linear; the scale is known only
    after the codes are computed, so the weight must be produced first (it sorts before its scale
    only by dtype order, so both share one computation, cached here)."""
    cache: dict[str, bytes] = {}

    def compute() -> None:
        if cache:
            return
        w = st.load()
        w = np.asarray(w, dtype=np.float32)
        known = st.known_scale() if st.known_scale is not None else None
        scale = scale_for([w], known)
        packed = pack_hf_packed(ternarize(w, scale))
        ws = scale.inv if linear_class == "bitlinear" else scale.scale
        cache["w"] = np.ascontiguousarray(packed).tobytes()
        cache["s"] = np.array([ws], dtype="<f4").tobytes()

    def weight() -> bytes:
        compute()
        return cache.pop("w")

    def scale_bytes() -> bytes:
        compute()
        return cache.pop("s")

    return weight, scale_bytes


def _raw_producer(lt: LazyTensor) -> Callable[[], bytes]:
    def produce() -> bytes:
        a = np.ascontiguousarray(lt.load_raw())
        if a.dtype.byteorder == ">":
            a = a.byteswap().view(a.dtype.newbyteorder("<"))
        return a.tobytes()

    return produce


def plan_bitnet_packed(checkpoint: Checkpoint, linear_class: str) -> list[_OutTensor]:
    """Every output tensor (name, dtype, shape, bytes) in file order; no tensor data is read."""
    if linear_class not in LINEAR_CLASSES:
        raise UsageError(f"unknown --linear-class {linear_class!r}; valid: {', '.join(LINEAR_CLASSES)}")
    arch = checkpoint.architecture
    mapping = mapping_for(checkpoint)
    if not getattr(mapping, "ternary_model", False):
        raise UsageError(f"{arch} is not a ternary (BitNet b1.58) model; the bitnet-packed format holds "
                         "ternary weights only")
    if arch not in PACKED_ARCHITECTURES:
        raise UsageError(f"bitnet-packed output is available for {', '.join(PACKED_ARCHITECTURES)}, not {arch}")
    out: list[_OutTensor] = []
    names: set[str] = set()
    for st in mapping.tensors(checkpoint):
        mapping.check_shape(st)
        names.add(st.name)
        hf_name = st.hf_names[0] if st.hf_names else st.name
        if mapping.is_ternary_linear(st.name):
            n, k = st.shape
            if n % 4:
                raise QuantizationError(f"{hf_name}: {n} output rows; transformers' BitLinear needs a multiple "
                                        "of 4 for packed weights")
            weight, scale_bytes = _ternary_producer(st, linear_class)
            rows = -(-n // 4)
            out.append(_OutTensor(hf_name, "U8", (rows, k), rows * k, weight, "ternary, packed"))
            out.append(_OutTensor(hf_name + "_scale", "F32", (1,), 4, scale_bytes,
                                  "inv = 1/s" if linear_class == "bitlinear" else "s"))
        else:
            if len(st.sources) != 1 or st.decode is not None or st.combine is not None:
                raise UsageError(f"{hf_name}: not a plain stored tensor; cannot copy it into bitnet-packed")
            lt = st.sources[0]
            if lt.dtype not in _ST_DTYPE_SIZE:
                raise UsageError(f"{lt.name}: dtype {lt.dtype} cannot be written to safetensors")
            nbytes = math.prod(lt.shape) * _ST_DTYPE_SIZE[lt.dtype]
            out.append(_OutTensor(lt.name, lt.dtype, tuple(lt.shape), nbytes, _raw_producer(lt), "copied"))
    mapping.check_complete(names)
    # safetensors' own order: larger alignment first, then by name; the weight's codes are produced
    # before its scale (U8 sorts after F32), so order ternary weights before their scales explicitly
    out.sort(key=lambda t: (-_ST_DTYPE_SIZE[t.dtype], t.name))
    scales = [t for t in out if t.name.endswith("_scale") and t.note != "copied"]
    rest = [t for t in out if not (t.name.endswith("_scale") and t.note != "copied")]
    return rest + scales


def header_bytes(tensors: list[_OutTensor], metadata: dict[str, str] | None = None) -> bytes:
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw)) % 8)  # 8-byte aligned data start, as safetensors pads it
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors(path: Path, tensors: list[_OutTensor], *,
                      progress: Callable[[str, int], None] | None = None) -> int:
    """Stream the tensors into `path` (8-byte header length, JSON header, data); returns bytes written."""
    head = header_bytes(tensors, {"format": "pt"})
    total = len(head)
    with open(path, "wb") as f:
        f.write(head)
        for t in tensors:
            data = t.produce()
            if len(data) != t.nbytes:
                raise QuantizationError(f"{t.name}: produced {len(data)} bytes, expected {t.nbytes}")
            f.write(data)
            total += len(data)
            if progress:
                progress(t.name, len(data))
    return total


def packed_config(config: dict[str, Any], linear_class: str) -> dict[str, Any]:
    cfg = dict(config)
    cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": linear_class,
                                  "quantization_mode": "offline"}
    return cfg


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.bitconv-tmp.{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export_bitnet_packed(checkpoint: Checkpoint, folder: Path, *, linear_class: str = "bitlinear",
                         source: str = "", force: bool = False, dry_run: bool = False,
                         progress: Callable[[str, int], None] | None = None,
                         on_start: Callable[[list[_OutTensor]], None] | None = None) -> SafetensorsResult:
    tensors = plan_bitnet_packed(checkpoint, linear_class)
    data_bytes = sum(t.nbytes for t in tensors)
    tok_files = checkpoint.tokenizer_files()
    files = [MODEL_FILE, "config.json"] + [p.name for p in tok_files]
    result = SafetensorsResult(
        source=source, architecture=checkpoint.architecture, format="bitnet-packed", linear_class=linear_class,
        output=str(folder), n_tensors=len(tensors), n_ternary=sum(t.dtype == "U8" and t.note != "copied"
                                                                   for t in tensors),
        output_bytes=data_bytes, files=files, dry_run=dry_run,
        tensors=[StTensorRecord(t.name, list(t.shape), t.dtype, t.nbytes, t.note) for t in tensors])
    if dry_run:
        return result
    check_output_folder(folder, force)
    folder.mkdir(parents=True, exist_ok=True)
    check_free_space(folder, data_bytes)
    if on_start:
        on_start(tensors)
    start = time.perf_counter()
    with atomic_output(folder / MODEL_FILE, force=True) as tmp:
        result.output_bytes = write_safetensors(tmp, tensors, progress=progress)
    # a stale index beside a single-file checkpoint would send loaders to shards that are not there
    (folder / "model.safetensors.index.json").unlink(missing_ok=True)
    write_text_atomic(folder / "config.json",
                      json.dumps(packed_config(checkpoint.config, linear_class), indent=2, sort_keys=True) + "\n")
    for p in tok_files:
        _copy_atomic(p, folder / p.name)
    result.seconds = time.perf_counter() - start
    return result
