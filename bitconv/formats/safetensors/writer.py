"""safetensors bytes: the planned output tensor, the header, ordered production on the worker
pool, one file streamed a tensor at a time, and shards (sizes, split, index).

A planner (layouts.py) describes each output tensor as an `OutTensor` whose `produce` gives its
little-endian bytes; nothing is read or computed until the file is written.
"""
from __future__ import annotations

import json
import math
import re
import struct
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ...convert.checkpoint import LazyTensor
from ...errors import QuantizationError, UsageError
from ...threads import shared_pool, thread_count

MODEL_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_PATTERN = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
#: stored bytes read at a time when a tensor is copied as it is
SLAB_BYTES = 64 * 1024 * 1024
#: bytes per element of each safetensors dtype
ST_DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                 "BOOL": 1, "U16": 2, "U32": 4, "U64": 8}


@dataclass
class OutTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    produce: Callable[[], bytes | memoryview | Iterable[memoryview]]  # its little-endian bytes, or them in pieces
    note: str = ""


_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]I?B)\s*$", re.IGNORECASE)


def parse_shard_size(value: str | int | None) -> int | None:
    """`--max-shard-size` in bytes: huggingface_hub's decimal units (KB, MB, GB, TB: powers of 1000,
    as save_pretrained reads them) plus binary KiB … TiB; an int is bytes. None: no sharding."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise UsageError(f"--max-shard-size {value!r}: expected a number and a unit, e.g. 500MB, 2GB, "
                             "1.5GiB (KB MB GB TB = powers of 1000; KiB MiB GiB TiB = powers of 1024)")
        n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
    if n <= 0:
        raise UsageError(f"--max-shard-size {value!r}: must be more than 0 bytes")
    return n


def split_shards(tensors: list[OutTensor], max_bytes: int | None) -> list[list[OutTensor]]:
    """Contiguous runs of the planned order, each at most `max_bytes` of tensor data (header not
    counted, as huggingface_hub's splitter counts it); a larger tensor gets a file of its own and a
    tensor is never split. Keeping the planned order keeps each producer's outputs in order."""
    if max_bytes is None:
        return [tensors]
    shards: list[list[OutTensor]] = []
    cur: list[OutTensor] = []
    size = 0
    for t in tensors:
        if cur and size + t.nbytes > max_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += t.nbytes
    if cur:
        shards.append(cur)
    return shards or [[]]


def shard_names(n: int) -> list[str]:
    """transformers' names: model.safetensors alone, else model-00001-of-0000N.safetensors …"""
    return [MODEL_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def shard_index(shards: list[list[OutTensor]]) -> dict[str, Any]:
    """model.safetensors.index.json as save_pretrained writes it (total_parameters counts stored elements)."""
    names = shard_names(len(shards))
    return {"metadata": {"total_parameters": sum(math.prod(t.shape) for sh in shards for t in sh),
                         "total_size": sum(t.nbytes for sh in shards for t in sh)},
            "weight_map": {t.name: f for f, sh in zip(names, shards) for t in sh}}


# --- producers -----------------------------------------------------------------------------------
def paired(compute: Callable[[], tuple[bytes, bytes]]) -> tuple[Callable[[], bytes], Callable[[], bytes]]:
    """Two producers served by one computation, in either order (the two tensors sort apart and a
    shard boundary may fall between them); each part is dropped once written."""
    parts: dict[int, bytes] = {}
    computed = False
    lock = threading.Lock()  # the two may be produced on different worker threads

    def take(i: int) -> bytes:
        nonlocal computed
        with lock:
            if not computed:
                parts[0], parts[1] = compute()
                computed = True
            return parts.pop(i)

    return (lambda: take(0)), (lambda: take(1))


def const_producer(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def raw_producer(lt: LazyTensor) -> Callable[[], Iterable[memoryview]]:
    def produce() -> Iterator[memoryview]:
        """The stored bytes a slab of rows at a time: a large copied tensor (the embeddings) is
        never whole in memory."""
        n = lt.n_rows
        step = max(1, SLAB_BYTES * n // max(1, lt.nbytes))
        for lo in range(0, n, step):
            a = np.ascontiguousarray(lt.load_rows(lo, min(n, lo + step)))
            if a.dtype.byteorder == ">":
                a = a.byteswap().view(a.dtype.newbyteorder("<"))
            yield memoryview(a.reshape(-1).view(np.uint8))

    return produce


# --- the file ------------------------------------------------------------------------------------
def header_bytes(tensors: list[OutTensor], metadata: dict[str, str] | None = None) -> bytes:
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


def _produced_in_order(tensors: list[OutTensor]) -> Iterator[tuple[OutTensor, Any]]:
    """Each tensor with its bytes, in file order. Computed tensors (quantized linears) are produced
    ahead on the worker pool, at most one per thread in flight, so `--threads` encodes several
    linears at once while the file is written in order; copied tensors stream as they are written."""
    pool = shared_pool()
    if pool is None:
        yield from ((t, t.produce()) for t in tensors)
        return
    window = thread_count()
    pending: dict[int, Future[Any]] = {}
    nxt = 0
    try:
        for i, t in enumerate(tensors):
            nxt = max(nxt, i)
            while nxt < len(tensors) and len(pending) < window:
                if tensors[nxt].note != "copied":
                    pending[nxt] = pool.submit(tensors[nxt].produce)
                nxt += 1
            yield t, (pending.pop(i).result() if i in pending else t.produce())
    finally:
        for f in pending.values():
            f.cancel()


def write_safetensors(path: Path, tensors: list[OutTensor], *,
                      progress: Callable[[str, int], None] | None = None) -> int:
    """Stream the tensors into `path` (8-byte header length, JSON header, data); returns bytes written."""
    head = header_bytes(tensors, {"format": "pt"})
    total = len(head)
    with open(path, "wb") as f:
        f.write(head)
        for t, data in _produced_in_order(tensors):
            written = 0
            for piece in ([data] if isinstance(data, (bytes, bytearray, memoryview)) else data):
                f.write(piece)
                written += len(piece)
            if written != t.nbytes:
                raise QuantizationError(f"{t.name}: produced {written} bytes, expected {t.nbytes}")
            total += written
            if progress:
                progress(t.name, written)
    return total
