"""Dependencies speak only when asked: transformers' progress bars and warnings, onnxruntime's and
llama.cpp's C++ logs never reach bitconv's stdout/stderr (with --json, stdout is one JSON object),
unless the user asks for them with --debug (`show_dependency_output(True)`, or BITCONV_DEBUG=1).

`quiet_dependencies()` wraps each call into a dependency that may print: Python warnings and the
dependencies' loggers are silenced, and file descriptors 1 and 2 point at a scratch file for the
duration (C/C++ libraries write there directly). A lock makes concurrent calls take turns, so two
threads never swap the descriptors under each other.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import warnings
from typing import Iterator

_LOCK = threading.RLock()
_DEPTH = 0
_LOGGERS = ("transformers", "torch", "huggingface_hub", "accelerate", "onnxruntime", "onnx", "llama_cpp",
            "safetensors", "bitsandbytes")
_show = False


def show_dependency_output(show: bool) -> None:
    """--debug: let dependencies print as they like."""
    global _show
    _show = show


def dependency_output_shown() -> bool:
    return _show or os.environ.get("BITCONV_DEBUG", "") not in ("", "0")


@contextlib.contextmanager
def quiet_dependencies() -> Iterator[None]:
    global _DEPTH
    if dependency_output_shown():
        yield
        return
    with _LOCK:
        if _DEPTH:  # nested: the outer call has already silenced everything
            _DEPTH += 1
            try:
                yield
            finally:
                _DEPTH -= 1
            return
        _DEPTH = 1
        try:
            with warnings.catch_warnings(), _quiet_loggers(), _quiet_transformers(), _quiet_descriptors():
                warnings.simplefilter("ignore")
                yield
        finally:
            _DEPTH = 0


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[None]:
    saved = []
    for name in _LOGGERS:
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, lg.disabled))
        lg.disabled = True
    try:
        yield
    finally:
        for lg, level, disabled in saved:
            lg.setLevel(level)
            lg.disabled = disabled


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' own switches: its logging verbosity and its tqdm bars (only when imported)."""
    tf_logging = None
    if "transformers" in sys.modules:
        try:
            from transformers.utils import logging as tf_logging
        except ImportError:  # pragma: no cover - a transformers without its logging module
            tf_logging = None
    if tf_logging is None:
        yield
        return
    verbosity = tf_logging.get_verbosity()
    bars = tf_logging.is_progress_bar_enabled() if hasattr(tf_logging, "is_progress_bar_enabled") else True
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        tf_logging.set_verbosity(verbosity)
        if bars:
            tf_logging.enable_progress_bar()


@contextlib.contextmanager
def _quiet_descriptors() -> Iterator[None]:
    """fds 1 and 2 → a scratch file, Python's sys.stdout/stderr flushed first and after."""
    try:
        fds = (sys.__stdout__.fileno(), sys.__stderr__.fileno())  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):  # no real descriptors (embedded, captured): loggers only
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(fd) for fd in fds]
    with tempfile.TemporaryFile() as sink:
        try:
            for fd in fds:
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(_DEVNULL), contextlib.redirect_stderr(_DEVNULL):
                yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, copy in zip(fds, saved):
                os.dup2(copy, fd)
                os.close(copy)


class _Discard:
    """A text stream that drops what Python code writes to sys.stdout / sys.stderr."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


_DEVNULL = _Discard()
