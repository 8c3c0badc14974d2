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
