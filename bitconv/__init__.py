"""bitconv: Hugging Face checkpoints → quantized artifacts for real runtimes, with the numerics checked."""
from __future__ import annotations

from ._version import __version__

from .errors import guard_cli_startup as _guard_cli_startup  # noqa: E402

_guard_cli_startup()  # `bitconv` on the command line: a Ctrl-C while the imports below run is one line, exit 130

from .api import ConversionResult, convert, inspect, plan_gguf  # noqa: E402
from .convert.arch import ArchMapping, register_arch  # noqa: E402
from .errors import BitconvError  # noqa: E402
from .quant import Quantizer, QuantizedTensor, register_quantizer  # noqa: E402
from .validate import ValidationReport, validate  # noqa: E402
from . import targets  # noqa: E402

__all__ = ["__version__", "convert", "inspect", "plan_gguf", "ConversionResult", "Quantizer", "QuantizedTensor",
           "register_quantizer", "ArchMapping", "register_arch", "BitconvError", "validate", "ValidationReport", "targets"]
