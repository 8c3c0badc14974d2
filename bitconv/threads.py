"""Worker threads of a conversion (`--threads N`; 0: one per core, at most 8).

One setting for every writer: the GGUF pipeline sizes its pool from it and the ONNX / safetensors
encoders share a pool of that size. Output bytes never depend on it (results are written in a fixed
order), so it trades only time against memory.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

_REQUESTED: ContextVar[int] = ContextVar("bitconv_threads", default=0)
_POOLS: dict[int, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def thread_count(requested: int = 0) -> int:
    """`requested`, else the setting of the enclosing `using_threads`, else the core count (≤ 8)."""
    n = requested or _REQUESTED.get()
    return n if n > 0 else min(8, os.cpu_count() or 1)


@contextmanager
def using_threads(threads: int) -> Iterator[None]:
    token = _REQUESTED.set(max(0, int(threads)))
    try:
        yield
    finally:
        _REQUESTED.reset(token)


def shared_pool() -> ThreadPoolExecutor | None:
    """A process-wide pool of the current thread count (None for one thread: run inline)."""
    n = thread_count()
    if n <= 1:
        return None
    with _LOCK:
        if n not in _POOLS:
            _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"bitconv-w{n}")
        return _POOLS[n]
