"""A minimal GGUF v3 reader and writer for the tests, written from the format description
(llama.cpp's docs/gguf.md), independent of bitconv's and gguf-py's code.

It keeps what a byte-exact comparison needs: every key with its value type and the exact bytes of
its value, the tensor infos in file order, the alignment and the data offset. Tensor sizes are
known for the types the bitnet.cpp golden uses (F32, F16, I2_S) and the ternary types bitconv
writes (TL1's size is I2_S's; TQ1_0/TQ2_0 from their block sizes; TL2 from bitnet.cpp's formula).
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# value types (gguf.md): scalar struct formats; 8 = string, 9 = array
VALUE_TYPES = {0: "UINT8", 1: "INT8", 2: "UINT16", 3: "INT16", 4: "UINT32", 5: "INT32", 6: "FLOAT32", 7: "BOOL",
               8: "STRING", 9: "ARRAY", 10: "UINT64", 11: "INT64", 12: "FLOAT64"}
VALUE_TYPE_IDS = {v: k for k, v in VALUE_TYPES.items()}
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

# tensor types: ggml ids (bitnet.cpp's fork for 36..39)
TENSOR_TYPES = {0: "F32", 1: "F16", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 36: "I2_S", 38: "TL1", 39: "TL2"}
TENSOR_TYPE_IDS = {v: k for k, v in TENSOR_TYPES.items()}
_BLOCKS = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "TQ1_0": (256, 54), "TQ2_0": (256, 66)}


def tensor_nbytes(type_name: str, ne: list[int]) -> int:
    """ggml_nbytes of a tensor with dims `ne` (ggml order: ne[0] is the contiguous row length)."""
    n = 1
    for d in ne:
        n *= d
    if type_name in ("I2_S", "TL1"):
        return n // 4 + 32
    if type_name == "TL2":
        k, m = ne[0], ne[1]
        p = (k - 256) * m // 3 * 5 // 8 + 256 * m // 2 * 4 // 8
        return -(-p // 32) * 32 + 32
    block, size = _BLOCKS[type_name]
    if ne[0] % block:
        raise ValueError(f"{type_name}: row length {ne[0]} is not a multiple of {block}")
    return n // block * size


@dataclass
class KV:
    key: str
    vtype: int                 # VALUE_TYPES id
    raw: bytes                 # the value's bytes as they lie in the file (after the type id)
    item_type: int | None = None

    @property
    def value(self) -> Any:
        """The decoded value: a scalar, a str, or a list (numeric arrays as numpy arrays)."""
        if self.vtype == 9 and self.item_type in _SCALAR:
            fmt = _SCALAR[self.item_type]
            dtype = "<?" if fmt == "<?" else np.dtype(fmt)
            return np.frombuffer(self.raw, dtype=dtype, offset=12)
        return _Reader(self.raw).value(self.vtype, self.item_type)

    @property
    def count(self) -> int | None:
        return struct.unpack_from("<Q", self.raw, 4)[0] if self.vtype == 9 else None


@dataclass
class TensorInfo:
    name: str
    ne: list[int]
    type_id: int
    offset: int                # relative to the data section

    @property
    def type_name(self) -> str:
        return TENSOR_TYPES.get(self.type_id, str(self.type_id))

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.type_name, self.ne)


@dataclass
class GGUFFile:
    version: int
    kvs: list[KV]
    tensors: list[TensorInfo]
    alignment: int
    data_start: int
    size: int
    path: Path | None = None
    header: bytes = field(default=b"", repr=False)

    def kv(self, key: str) -> KV:
        for kv in self.kvs:
            if kv.key == key:
                return kv
        raise KeyError(key)

    def tensor(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def tensor_bytes(self, name: str) -> bytes:
        t = self.tensor(name)
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(self.data_start + t.offset)
            return f.read(t.nbytes)


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise ValueError("GGUF header ends early")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("<Q")).decode("utf-8")

    def value(self, vtype: int, item_type: int | None = None) -> Any:
        if vtype == 8:
            return self.string()
        if vtype == 9:
            item = self.unpack("<I")
            count = self.unpack("<Q")
            return [self.value(item) for _ in range(count)]
        return self.unpack(_SCALAR[vtype])

    def skip(self, vtype: int) -> int | None:
        """Step over a value without decoding it; the item type of an array."""
        if vtype == 8:
            self.take(self.unpack("<Q"))
            return None
        if vtype != 9:
            self.take(struct.calcsize(_SCALAR[vtype]))
            return None
        item = self.unpack("<I")
        count = self.unpack("<Q")
        if item in _SCALAR:
            self.take(count * struct.calcsize(_SCALAR[item]))
        elif item == 8:
            buf, pos, end = self.buf, self.pos, len(self.buf)
            for _ in range(count):
                if pos + 8 > end:
                    raise ValueError("GGUF header ends early")
                pos += 8 + int.from_bytes(buf[pos:pos + 8], "little")
            if pos > end:
                raise ValueError("GGUF header ends early")
            self.pos = pos
        else:
            for _ in range(count):
                self.skip(item)
        return item


def read(path: str | Path) -> GGUFFile:
    """Parse the header of a GGUF file."""
    path = Path(path)
    size = 1 << 20
    while True:
        with open(path, "rb") as f:
            buf = f.read(size)
        try:
            return _parse(path, buf)
        except ValueError as e:
            if "ends early" not in str(e) or len(buf) < size:
                raise
            size *= 4


def _parse(path: Path, buf: bytes) -> GGUFFile:
    r = _Reader(buf)
    if r.take(4) != MAGIC:
        raise ValueError(f"{path}: not a GGUF file")
    version = r.unpack("<I")
    n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
    kvs = []
    for _ in range(n_kv):
        key = r.string()
        vtype = r.unpack("<I")
        start = r.pos
        item = r.skip(vtype)
        kvs.append(KV(key, vtype, buf[start:r.pos], item))
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        nd = r.unpack("<I")
        ne = [r.unpack("<Q") for _ in range(nd)]
        tensors.append(TensorInfo(name, ne, r.unpack("<I"), r.unpack("<Q")))
    alignment = DEFAULT_ALIGNMENT
    for kv in kvs:
        if kv.key == "general.alignment":
            alignment = int(kv.value)
    data_start = -(-r.pos // alignment) * alignment
    return GGUFFile(version, kvs, tensors, alignment, data_start, path.stat().st_size, path, buf[:data_start])


# ----------------------------------------------------------------------------- writing

def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def encode_value(vtype: int, value: Any, item_type: int | None = None) -> bytes:
    """A value's bytes as they follow its type id in the file."""
    if vtype == 8:
        return _string(value)
    if vtype == 9:
        assert item_type is not None
        return struct.pack("<IQ", item_type, len(value)) + b"".join(encode_value(item_type, v) for v in value)
    return struct.pack(_SCALAR[vtype], value)


def write(path: str | Path, kvs: list[KV], tensors: list[tuple[TensorInfo, bytes]], version: int = 3,
          alignment: int = DEFAULT_ALIGNMENT) -> None:
    """Write a GGUF file: the KVs (their raw bytes) in order, then the tensors in order, each at the
    next multiple of `alignment`, zero-padded, as gguf.c and gguf-py lay them out. The offsets in
    the infos are recomputed; each tensor's bytes must have its ggml_nbytes."""
    head = [MAGIC, struct.pack("<IQQ", version, len(tensors), len(kvs))]
    for kv in kvs:
        head += [_string(kv.key), struct.pack("<I", kv.vtype), kv.raw]
    offset = 0
    for info, data in tensors:
        if len(data) != info.nbytes:
            raise ValueError(f"{info.name}: {len(data)} bytes, its type and shape need {info.nbytes}")
        info.offset = offset
        head += [_string(info.name), struct.pack("<I", len(info.ne)), struct.pack(f"<{len(info.ne)}Q", *info.ne),
                 struct.pack("<IQ", info.type_id, offset)]
        offset += -(-len(data) // alignment) * alignment
    header = b"".join(head)
    with open(path, "wb") as f:
        f.write(header)
        f.write(b"\0" * (-len(header) % alignment))
        for info, data in tensors:
            f.write(data)
            f.write(b"\0" * (-len(data) % alignment))


def sha256(b: bytes | memoryview) -> str:
    return hashlib.sha256(b).hexdigest()


def i2s_meaningful(type_name: str, ne: list[int], data: bytes) -> bytes:
    """The bytes of a tensor that carry information: for I2_S/TL1 the codes and the f32 scale
    (bitnet.cpp's llama-quantize leaves the 28 bytes after the scale uninitialised); all of it else."""
    if type_name in ("I2_S", "TL1"):
        n = ne[0] * ne[1] // 4
        return data[:n + 4]
    return data


def zero_pads(type_name: str, ne: list[int], data: bytes) -> bytes:
    """`data` with the 28 bytes after an I2_S scale set to zero (what bitconv writes there)."""
    if type_name != "I2_S":
        return data
    n = ne[0] * ne[1] // 4
    return data[:n + 4] + b"\0" * 28
