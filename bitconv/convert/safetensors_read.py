"""Safetensors files read without a library: each header parsed and checked against the file's real
size up front (a truncated or forged file fails before anything is written), tensor bytes read
only when a tensor is converted; nothing stays mapped, so resident memory does not grow with the
checkpoint.

A read goes into a fresh buffer (``pread``), or, inside `transient_reads()`, is the file's range
mapped read-only, no copy (reading 1.2 GB through pread costs ≈ 0.7 s of CPU in memcpy and page
faults, mapping it ≈ 0.15 s), released at the thread's next read or the end of the block: for
callers done with what they read by then, as the GGUF writer's work items are. (A file truncated
while it is mapped and read ends the process with SIGBUS instead of a "file ended early" error.)
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import CheckpointError

#: safetensors dtype → (numpy dtype of the raw bytes, itemsize). BF16 is kept as raw uint16 bits.
SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("u1"),
    "F8_E4M3": np.dtype("u1"),  # float8_e4m3fn bytes (FP8 checkpoints), decoded by quant/fp8.py
    "F8_E5M2": np.dtype("u1"),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
#: A safetensors header beyond this is not a checkpoint (the format itself caps it at 100 MB).
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class SafetensorsEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offset
    end: int


def read_safetensors_header(path: Path) -> list[SafetensorsEntry]:
    """Parse and check one safetensors header against the file's real size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path.name}: truncated safetensors file ({size} bytes, no header)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                raise CheckpointError(
                    f"{path.name}: header length {header_len} is larger than the file ({size} bytes): "
                    "truncated or not a safetensors file")
            if header_len > MAX_HEADER_BYTES:
                raise CheckpointError(f"{path.name}: header length {header_len} exceeds {MAX_HEADER_BYTES} bytes")
            raw = f.read(header_len)
    except OSError as e:
        raise CheckpointError(f"{path.name}: cannot read: {e.strerror or e}") from e
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:  # ValueError: bad JSON or UTF-8, an int of over 4300 digits
        raise CheckpointError(f"{path.name}: safetensors header is not valid JSON ({_one_line(e)})") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name}: safetensors header is not a JSON object")
    data_start = 8 + header_len
    entries: list[SafetensorsEntry] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries.append(_check_entry(path, name, info, data_start, size))
    ordered = sorted(entries, key=lambda e: (e.begin, e.end))
    for prev, cur in zip(ordered, ordered[1:]):
        if cur.begin < prev.end:
            raise CheckpointError(f"{path.name}: tensors {prev.name} and {cur.name} overlap in the file")
    return entries


def _check_entry(path: Path, name: str, info: Any, data_start: int, size: int) -> SafetensorsEntry:
    if not isinstance(info, dict):
        raise CheckpointError(f"{path.name}: {name}: malformed header entry")
    dtype = info.get("dtype")
    shape = info.get("shape")
    offsets = info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{path.name}: {name}: unsupported dtype {dtype!r}")
    if (not isinstance(shape, list) or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape)):
        raise CheckpointError(f"{path.name}: {name}: malformed shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise CheckpointError(f"{path.name}: {name}: malformed data_offsets {offsets!r}")
    begin, end = offsets
    expected = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
    if begin < 0 or end < begin:
        raise CheckpointError(f"{path.name}: {name}: invalid data_offsets {offsets}")
    if end - begin != expected:
        raise CheckpointError(
            f"{path.name}: {name}: {end - begin} bytes stored but shape {tuple(shape)} {dtype} needs {expected}")
    if data_start + end > size:
        raise CheckpointError(
            f"{path.name}: {name}: data runs past the end of the file ({data_start + end} > {size} bytes): "
            "the file is truncated")
    return SafetensorsEntry(name, dtype, tuple(shape), data_start + begin, data_start + end)


def _pread_into(fd: int, view: memoryview, offset: int, entry: SafetensorsEntry, path: Path) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise CheckpointError(f"{entry.name}: {path.name} ended early (was it truncated during the run?)")
        done += n


def _open_fd(path: Path, entry: SafetensorsEntry) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as e:
        raise CheckpointError(f"{entry.name}: cannot open {path.name}: {e.strerror or e}") from e


_THREAD = threading.local()
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux: map every page of the range in one call


@contextmanager
def transient_reads() -> Iterator[None]:
    """Reads on this thread map the file's range instead of copying it while inside: each read's
    array is valid until the thread's next read or the end of the block, when the mapping is
    released. The caller must be done with what it read by then (a view still alive keeps its
    mapping until it dies: never a dangling read, only memory held longer)."""
    before = getattr(_THREAD, "transient", False)
    _THREAD.transient = True
    try:
        yield
    finally:
        _THREAD.transient = before
        _release_mapping()


def _release_mapping() -> None:
    mm = _THREAD.__dict__.pop("mapping", None)
    if mm is not None:
        try:
            mm.close()
        except BufferError:  # an array over it is still alive: it unmaps when that array dies
            pass


def _mapped_range(fd: int, entry: SafetensorsEntry, path: Path, begin: int, count: int) -> np.ndarray | None:
    """The range as an array over a read-only mapping, or None where mapping fails (then pread)."""
    np_dtype = SAFETENSORS_DTYPES[entry.dtype]
    nbytes = count * np_dtype.itemsize
    start = begin - begin % mmap.ALLOCATIONGRANULARITY
    if nbytes == 0:
        return None
    if os.fstat(fd).st_size < begin + nbytes:
        raise CheckpointError(f"{entry.name}: {path.name} ended early (was it truncated during the run?)")
    try:
        if os.name == "nt":
            mm = mmap.mmap(fd, begin + nbytes - start, access=mmap.ACCESS_READ, offset=start)
        else:
            mm = mmap.mmap(fd, begin + nbytes - start, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ,
                           offset=start)
    except (OSError, ValueError):
        return None
    _release_mapping()
    _THREAD.mapping = mm
    return np.frombuffer(mm, dtype=np_dtype, count=count, offset=begin - start)


def _pread_range(path: Path, entry: SafetensorsEntry, begin: int, count: int) -> np.ndarray:
    fd = _open_fd(path, entry)
    try:
        if getattr(_THREAD, "transient", False) and (mapped := _mapped_range(fd, entry, path, begin, count)) is not None:
            return mapped
        buf = np.empty(count, dtype=SAFETENSORS_DTYPES[entry.dtype])
        _pread_into(fd, memoryview(buf).cast("B"), begin, entry, path)
    finally:
        os.close(fd)
    return buf


def _pread_reader(path: Path, entry: SafetensorsEntry) -> Callable[[], np.ndarray]:
    itemsize = SAFETENSORS_DTYPES[entry.dtype].itemsize

    def read() -> np.ndarray:
        return _pread_range(path, entry, entry.begin, (entry.end - entry.begin) // itemsize).reshape(entry.shape)

    return read


def _pread_rows(path: Path, entry: SafetensorsEntry) -> Callable[[int, int], np.ndarray]:
    itemsize = SAFETENSORS_DTYPES[entry.dtype].itemsize
    k = entry.shape[-1] if entry.shape else 1

    def read_rows(lo: int, hi: int) -> np.ndarray:
        return _pread_range(path, entry, entry.begin + lo * k * itemsize, (hi - lo) * k).reshape(hi - lo, k)

    return read_rows


def _one_line(e: BaseException) -> str:
    """A parser's message cut to one line (errors are printed in one)."""
    text = str(e).splitlines()[0] if str(e) else ""
    return text or type(e).__name__


def _pread_cols(path: Path, entry: SafetensorsEntry) -> Callable[[int, int], np.ndarray]:
    """Columns [lo, hi) of a 2-D view: one read per stored row of just those bytes, so a slab of a
    quantized linear touches only its share of the file."""
    np_dtype = SAFETENSORS_DTYPES[entry.dtype]
    itemsize = np_dtype.itemsize
    k = entry.shape[-1] if entry.shape else 1
    n_rows = math.prod(entry.shape[:-1]) if entry.shape else 1

    def read_cols(lo: int, hi: int) -> np.ndarray:
        buf = np.empty((n_rows, hi - lo), dtype=np_dtype)
        if hi <= lo:
            return buf
        fd = _open_fd(path, entry)
        try:
            view = memoryview(buf).cast("B")
            width = (hi - lo) * itemsize
            for r in range(n_rows):
                _pread_into(fd, view[r * width:(r + 1) * width], entry.begin + (r * k + lo) * itemsize, entry, path)
        finally:
            os.close(fd)
        return buf

    return read_cols
