"""The manifest sidecar: what went in (sha256 of every input file), with which options and bitconv
version, and what came out. Deterministic: no timestamps, sorted keys."""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_text_atomic

_CHUNK = 8 * 1024 * 1024
#: bytes of a file mapped at a time while it is hashed (a multiple of mmap.ALLOCATIONGRANULARITY)
_WINDOW = 64 * 1024 * 1024


def sha256_file(path: Path, stop: threading.Event | None = None) -> str:
    """The file's sha256; "" when `stop` is set meanwhile (checked between chunks). Hashed from a
    read-only mapping a window at a time (no copy: read() costs as much CPU as the hash itself), or
    read in chunks where mapping fails."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        size, off = os.fstat(f.fileno()).st_size, 0
        while off < size:
            if stop is not None and stop.is_set():
                return ""
            n = min(_WINDOW, size - off)
            try:
                window = mmap.mmap(f.fileno(), n, access=mmap.ACCESS_READ, offset=off)
            except (OSError, ValueError):
                break
            with window:
                h.update(window)
            off += n
        f.seek(off)
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            if stop is not None and stop.is_set():
                return ""
            h.update(view[:n])
    return h.hexdigest()


def file_record(path: Path, base: Path, stop: threading.Event | None = None) -> dict[str, Any]:
    try:
        rel = str(path.relative_to(base))
    except ValueError:
        rel = path.name
    return {"path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path, stop)}


class BackgroundHasher:
    """Hashes input files on a worker thread while the conversion runs (hashlib releases the GIL)."""

    def __init__(self, files: list[Path], base: Path) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bitconv-hash")
        self._stop = threading.Event()
        self._futures: list[Future[dict[str, Any]]] = [self._pool.submit(file_record, f, base, self._stop)
                                                       for f in files]

    def result(self) -> list[dict[str, Any]]:
        try:
            return [f.result() for f in self._futures]
        finally:
            self._pool.shutdown(wait=True)

    def cancel(self) -> None:
        self._stop.set()  # the file being hashed stops at its next chunk
        for f in self._futures:
            f.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


class StreamHasher:
    """sha256 of the file as it is written, on a worker thread (hashlib releases the GIL), so the
    output is never read back. At most two pieces wait, which bounds the memory it holds."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bitconv-sha")
        self._pending: list[Future[None]] = []
        self.nbytes = 0

    def update(self, data: np.ndarray | bytes | list[np.ndarray]) -> None:
        """Hash `data` (arrays of a list one after the other) after what came before."""
        while len(self._pending) >= 2:
            self._pending.pop(0).result()
        views = [memoryview(d).cast("B") if isinstance(d, np.ndarray) else memoryview(d)
                 for d in (data if isinstance(data, list) else [data])]
        self.nbytes += sum(len(v) for v in views)
        self._pending.append(self._pool.submit(self._update_all, views))

    def _update_all(self, views: list[memoryview]) -> None:
        for v in views:
            self._h.update(v)

    def hexdigest(self) -> str:
        for f in self._pending:
            f.result()
        self._pool.shutdown(wait=True)
        return self._h.hexdigest()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def manifest_path_for(artifact: Path) -> Path:
    if artifact.is_dir():
        return artifact / "bitconv-manifest.json"
    return artifact.with_name(artifact.name + ".manifest.json")


def write_manifest(artifact: Path, *, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]],
                   options: dict[str, Any], source: str) -> Path:
    from .._version import __version__

    doc = {
        "bitconv_version": __version__,
        "source": source,
        "options": options,
        "inputs": inputs,
        "outputs": outputs,
    }
    path = manifest_path_for(artifact)
    write_text_atomic(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path
