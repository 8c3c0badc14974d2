"""GGUF headers for inspect, validate and GGUF sources: header, metadata (with each value's GGUF
type, so a source's keys can be written back as they were) and tensor table, every length checked
against the file's size before anything is read (a lying count fails, it never allocates).
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np

from ..errors import ArtifactError
from ..quant.tl import tl1_nbytes, tl2_nbytes


@dataclass
class GGUFTensorInfo:
    name: str
    type_name: str
    shape: tuple[int, ...]  # numpy order (outermost first)
    nbytes: int
    type_id: int = -1
    offset: int = 0  # absolute file offset of the tensor's data


@dataclass
class GGUFSummary:
    path: Path
    version: int
    alignment: int
    metadata: dict[str, Any]
    tensors: list[GGUFTensorInfo]
    #: key → (GGUF value type, item type for arrays else None), in the file's key order
    value_types: dict[str, tuple[int, int | None]] = field(default_factory=dict)

    @property
    def data_nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors)


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_VALUE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "bool",
                8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}
#: ggml types gguf-py does not name (bitnet.cpp's): id → (name, bytes of a tensor of shape (M, K))
EXTRA_GGML_TYPES: dict[int, tuple[str, Callable[[int, int], int]]] = {
    36: ("I2_S", lambda m, k: m * k // 4 + 32),  # packed codes, then the f32 scale and 28 bytes of padding
    38: ("TL1", tl1_nbytes),
    39: ("TL2", tl2_nbytes),
}

MAX_TENSORS = 1 << 20
MAX_KV = 1 << 20
MAX_DIMS = 4
#: arrays of arrays deeper than this are not GGUF metadata (llama.cpp writes one level)
MAX_ARRAY_DEPTH = 8
#: element counts and offsets must fit the int64 that llama.cpp and numpy index with
MAX_INT64 = (1 << 63) - 1
#: least bytes of a KV pair (key length, value type) and of a tensor info (name length, n_dims,
#: type, offset): counts are checked against the file's size with these before anything is read
_MIN_KV_BYTES = 8 + 4
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8
#: least bytes of one array item, by value type (a string: its length; an array: type and count)
_MIN_ITEM_BYTES = {8: 8, 9: 12}
#: arrays longer than this are summarized as {"array_of", "length"} unless full values are asked for
SUMMARY_ARRAY_LIMIT = 16


class _Cursor:
    """Bounds-checked little-endian reads over a mapped file: a lying length fails, it never allocates."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise ArtifactError(f"{self.path}: truncated or corrupt GGUF (a field runs past the end at byte {self.pos})")
        view = self.buf[self.pos:self.pos + n]
        self.pos += n
        return view

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def skip_strings(self, count: int) -> None:
        buf, pos, end = self.buf, self.pos, len(self.buf)
        for _ in range(count):
            if pos + 8 > end:
                pos = end + 1
                break
            pos += 8 + int.from_bytes(buf[pos:pos + 8], "little")
        if pos > end:
            raise ArtifactError(f"{self.path}: truncated or corrupt GGUF (a string array runs past the end)")
        self.pos = pos

    def string(self) -> str:
        n = self.scalar("<Q")
        return bytes(self.take(n)).decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9:
            if depth >= MAX_ARRAY_DEPTH:
                raise ArtifactError(f"{self.path}: arrays nested more than {MAX_ARRAY_DEPTH} deep at byte {self.pos}")
            sub, count = self.scalar("<I"), self.scalar("<Q")
            item = struct.calcsize(_SCALARS[sub]) if sub in _SCALARS else _MIN_ITEM_BYTES.get(sub, 1)
            if count * item > len(self.buf) - self.pos:
                raise ArtifactError(f"{self.path}: array of {count} items cannot fit in the file")
            if sub in _SCALARS and sub != 7:
                dt = np.dtype(_SCALARS[sub])
                raw = np.frombuffer(self.take(count * dt.itemsize), dtype=dt)
                items: Any = raw.tolist() if keep or count <= SUMMARY_ARRAY_LIMIT else None
            elif sub == 8 and not keep and count > SUMMARY_ARRAY_LIMIT:
                self.skip_strings(count)  # a vocabulary being summarized: walk the lengths only
                items = None
            else:
                items = [self.value(sub, keep, depth + 1) for _ in range(count)]
            if keep or count <= SUMMARY_ARRAY_LIMIT:
                return items
            return {"array_of": _VALUE_NAMES.get(sub, str(sub)), "length": count}
        raise ArtifactError(f"{self.path}: unknown GGUF value type {vtype} at byte {self.pos}")


def _type_name_and_nbytes(type_id: int, dims: list[int], bitnet_lut: bool = False) -> tuple[str, int]:
    """Type name and byte size of a tensor (dims in GGUF order, ne0 first). `bitnet_lut`: the file
    is a bitnet.cpp TL1/TL2 file, whose type 39 is TL2, not mainline's MXFP4."""
    numel = math.prod(dims)
    if type_id in EXTRA_GGML_TYPES and (type_id != 39 or bitnet_lut):
        name, nbytes = EXTRA_GGML_TYPES[type_id]
        k = dims[0] if dims else 0
        return name, nbytes(numel // k if k else 0, k)
    try:
        t = gguf.GGMLQuantizationType(type_id)
        block, size = gguf.GGML_QUANT_SIZES[t]
        return t.name, numel // block * size
    except (ValueError, KeyError):
        return f"TYPE_{type_id}", 0


def read_gguf_summary(path: Path, *, full_arrays: bool = False, file_type: int | None = None) -> GGUFSummary:
    """Header, metadata and tensor table of a GGUF file, parsed with every length checked first.
    `file_type`: the set's general.file_type, for a split file after the first (which holds none)."""
    import mmap

    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < 24:
                raise ArtifactError(f"{path}: too small to be a GGUF file")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read ({e.strerror or e})") from e
    try:
        return _parse(path, memoryview(mm), full_arrays, file_type)
    finally:
        try:
            mm.close()
        except BufferError:  # a view still alive; the mapping is freed with it
            pass


def _parse(path: Path, buf: memoryview, full_arrays: bool, file_type: int | None = None) -> GGUFSummary:
    c = _Cursor(buf, path)
    if bytes(c.take(4)) != b"GGUF":
        raise ArtifactError(f"{path}: not a GGUF file (bad magic)")
    version = c.scalar("<I")
    if version not in (2, 3):
        raise ArtifactError(f"{path}: unsupported GGUF version {version}")
    n_tensors, n_kv = c.scalar("<Q"), c.scalar("<Q")
    if (n_tensors > MAX_TENSORS or n_kv > MAX_KV
            or n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES > len(buf) - c.pos):
        raise ArtifactError(f"{path}: implausible counts ({n_tensors} tensors, {n_kv} metadata keys) "
                            f"for a {len(buf)}-byte file")
    meta: dict[str, Any] = {}
    types: dict[str, tuple[int, int | None]] = {}
    for _ in range(n_kv):
        key = c.string()
        vtype = c.scalar("<I")
        sub = int.from_bytes(c.buf[c.pos:c.pos + 4], "little") if vtype == 9 and c.pos + 4 <= len(buf) else None
        meta[key] = c.value(vtype, full_arrays)
        types[key] = (vtype, sub)
    infos = []
    for _ in range(n_tensors):
        name = c.string()
        n_dims = c.scalar("<I")
        if n_dims > MAX_DIMS:
            raise ArtifactError(f"{path}: tensor {name} has {n_dims} dimensions")
        dims = [c.scalar("<Q") for _ in range(n_dims)]
        if math.prod(dims) > MAX_INT64:
            raise ArtifactError(f"{path}: tensor {name} has shape {tuple(reversed(dims))}: too many elements")
        infos.append((name, dims, c.scalar("<I"), c.scalar("<Q")))
    alignment = meta.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 or alignment & (alignment - 1):
        raise ArtifactError(f"{path}: invalid general.alignment {alignment!r}")
    data_start = -(-c.pos // alignment) * alignment
    tensors = []
    for name, dims, type_id, offset in infos:
        type_name, nbytes = _type_name_and_nbytes(type_id, dims, meta.get("general.file_type", file_type) == 39)
        if data_start + offset + nbytes > len(buf):
            raise ArtifactError(f"{path}: tensor {name} runs past the end of the file (truncated?)")
        tensors.append(GGUFTensorInfo(name, type_name, tuple(reversed(dims)), nbytes, type_id, data_start + offset))
    return GGUFSummary(path, version, alignment, meta, tensors, types)
