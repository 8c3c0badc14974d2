"""The manifest sidecar: what went in (sha256 of every input file), with which options and bitconv
version, and what came out. Deterministic: no timestamps, sorted keys."""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_text_atomic

_CHUNK = 8 * 1024 * 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def file_record(path: Path, base: Path) -> dict[str, Any]:
    try:
        rel = str(path.relative_to(base))
    except ValueError:
        rel = path.name
    return {"path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


class BackgroundHasher:
    """Hashes input files on a worker thread while the conversion runs (hashlib releases the GIL)."""

    def __init__(self, files: list[Path], base: Path) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bitconv-hash")
        self._futures: list[Future[dict[str, Any]]] = [self._pool.submit(file_record, f, base) for f in files]

    def result(self) -> list[dict[str, Any]]:
        try:
            return [f.result() for f in self._futures]
        finally:
            self._pool.shutdown(wait=True)

    def cancel(self) -> None:
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

    def update(self, data: np.ndarray | bytes) -> None:
        while len(self._pending) >= 2:
            self._pending.pop(0).result()
        view = memoryview(data).cast("B") if isinstance(data, np.ndarray) else memoryview(data)
        self.nbytes += len(view)
        self._pending.append(self._pool.submit(self._h.update, view))

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
