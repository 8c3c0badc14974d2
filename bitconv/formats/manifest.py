"""The manifest sidecar: what went in (sha256 of every input file), with which options and bitconv
version, and what came out. Deterministic: no timestamps, sorted keys."""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

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
