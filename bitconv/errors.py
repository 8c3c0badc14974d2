"""Typed errors: each carries a one-line message a user can act on and the CLI exit code.

Exit codes, one table for every command: 0 ok · 1 internal error · 2 bad usage or bad input ·
3 validation failed · 130 interrupted.
"""
from __future__ import annotations


class BitconvError(Exception):
    """Base of every error bitconv raises on purpose; `str(e)` is the one-line message."""

    exit_code: int = 2

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.context = context

    @property
    def kind(self) -> str:
        return type(self).__name__


class CheckpointError(BitconvError):
    """The input checkpoint is missing, malformed or inconsistent."""


class UnsupportedArchitecture(BitconvError):
    """config.json names an architecture no mapping is registered for."""


class TokenizerError(BitconvError):
    """The tokenizer files are missing or describe something bitconv cannot export faithfully."""


class QuantizationError(BitconvError):
    """A tensor cannot be quantized as asked (shape, values)."""


class OutputError(BitconvError):
    """The output cannot be written (exists, no space, not writable)."""


class UsageError(BitconvError):
    """Options that contradict each other or name unknown things."""


class ArtifactError(BitconvError):
    """A file given to inspect/validate is not a readable artifact."""


class ValidationFailed(BitconvError):
    """validate ran and a threshold failed."""

    exit_code = 3


class Interrupted(BitconvError):
    """Ctrl-C during a conversion; nothing was written."""

    exit_code = 130


def _cli_run() -> bool:
    """This process is the `bitconv` command (the console script or `python -m bitconv`)."""
    import os
    import sys

    argv = list(getattr(sys, "orig_argv", sys.argv))
    if sys.argv and os.path.basename(sys.argv[0]).removesuffix(".exe") == "bitconv":
        return True
    return any(a == "-m" and argv[i + 1:i + 2] == ["bitconv"] for i, a in enumerate(argv))


def _startup_interrupt(signum: int, frame: object) -> None:
    """Ctrl-C while `bitconv` starts (imports, ~0.3 s): nothing was written; one line, exit 130."""
    import json
    import os
    import sys

    message = "interrupted, nothing written"
    if "--json" in sys.argv[1:]:
        cmd = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
        doc = {"ok": False, "command": cmd, "error": {"type": "Interrupted", "message": message, "exit_code": 130}}
        os.write(1, (json.dumps(doc) + "\n").encode())
    else:
        os.write(2, f"error: {message}\n".encode())
    os._exit(Interrupted.exit_code)


def guard_cli_startup() -> None:
    """For a `bitconv` command-line run only (never when bitconv is imported as a library): until
    cli.main() takes over, a Ctrl-C prints the one line and exits 130 instead of a traceback from
    the middle of an import. Leaves an ignored SIGINT (or anyone's own handler) alone."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not _cli_run():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _startup_interrupt)


def end_cli_startup() -> None:
    """cli.main(): from here on a Ctrl-C is a KeyboardInterrupt again (the commands turn it into
    "interrupted, nothing written" after removing their temp files)."""
    import signal
    import sys

    if signal.getsignal(signal.SIGINT) is _startup_interrupt:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if getattr(sys.unraisablehook, "__name__", "") != "_redeliver_interrupt":
        sys.unraisablehook = _redeliver_interrupt_hook(sys.unraisablehook)


def _redeliver_interrupt_hook(previous: object) -> object:
    """A Ctrl-C whose KeyboardInterrupt was raised inside a garbage-collector or weakref callback
    is "ignored" by Python (a traceback on stderr, and the command goes on): send the signal again,
    from a helper thread (so that it is not handled inside this hook), to land where the command
    can stop (or exit, once it is done)."""
    import _thread
    import os

    def _redeliver_interrupt(unraisable: object) -> None:
        exc_type = getattr(unraisable, "exc_type", None)
        if isinstance(exc_type, type) and issubclass(exc_type, KeyboardInterrupt):
            try:  # not threading.Thread: its start() waits, and the signal would land in this hook again
                _thread.start_new_thread(_send_sigint_soon, (os.getpid(),))
            except RuntimeError:  # the interpreter is shutting down: nothing left to stop
                pass
            return
        previous(unraisable)  # type: ignore[operator]

    return _redeliver_interrupt


def end_cli_run(code: int) -> None:
    """cli.main() is done (result printed, exit code known): a Ctrl-C while the interpreter shuts
    down (joining worker threads, collecting garbage) exits at once with that code instead of
    printing a traceback from wherever teardown was."""
    import os
    import signal
    import sys
    import threading

    def handler(signum: int, frame: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a flush cut short by this very signal
                pass
        os._exit(code)

    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, handler)


def _send_sigint_soon(pid: int) -> None:
    import os
    import signal
    import time

    time.sleep(0.01)  # let the hook (and the callback it reports) return first
    os.kill(pid, signal.SIGINT)
