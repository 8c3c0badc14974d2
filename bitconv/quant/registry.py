"""QUANT_TYPES: name → Quantizer class. Built-ins register on import; plugins through the
`bitconv.quantizers` entry point group or `register_quantizer()`."""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable, TypeVar

from ..errors import UsageError
from .base import Quantizer

QUANT_TYPES: dict[str, type[Quantizer]] = {}
ALIASES: dict[str, str] = {"fp32": "f32", "fp16": "f16", "float32": "f32", "float16": "f16", "bfloat16": "bf16"}
_entry_points_loaded = False
#: types named by targets or docs that are not implemented yet, with what to use meanwhile
PLANNED: dict[str, str] = {}

Q = TypeVar("Q", bound=type[Quantizer])


def register_quantizer(name: str | None = None, *, replace: bool = False) -> Callable[[Q], Q]:
    """Class decorator adding a quant type to the registry under `name` (default: its `name`)."""

    def deco(cls: Q) -> Q:
        key = (name or cls.name).lower()
        if not key:
            raise UsageError(f"{cls.__name__}: a quantizer needs a name")
        if key in QUANT_TYPES and QUANT_TYPES[key] is not cls and not replace:
            raise UsageError(f"quant type {key!r} is already registered by {QUANT_TYPES[key].__name__}")
        if not cls.name:
            cls.name = key
        QUANT_TYPES[key] = cls
        return cls

    return deco


def _load_entry_points() -> None:
    """Built-in types (they register on import), then third-party ones, once."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    import importlib

    for module in ("floats", "blockwise", "i2s", "tq", "tl", "kquants"):
        importlib.import_module(f"{__package__}.{module}")
    for ep in entry_points(group="bitconv.quantizers"):
        cls = ep.load()
        QUANT_TYPES.setdefault(ep.name.lower(), cls)


def get_quantizer(name: str) -> Quantizer:
    """An instance of the quant type called `name` (case-insensitive; fp16/fp32 aliases accepted)."""
    _load_entry_points()
    key = ALIASES.get(name.lower(), name.lower())
    if key in PLANNED and key not in QUANT_TYPES:
        raise UsageError(f"{key} is not available yet ({PLANNED[key]})")
    try:
        return QUANT_TYPES[key]()
    except KeyError:
        known = ", ".join(sorted(QUANT_TYPES))
        raise UsageError(f"unknown quant type {name!r}; known: {known}") from None


def quantizer_for_ggml_type(ggml_type: int) -> Quantizer:
    """The quantizer storing one tensor as GGML type `ggml_type` (e.g. the q6_k tensors of a q4_k_m
    file): built-in types are registered under the GGML type's own name."""
    from gguf import GGMLQuantizationType

    return get_quantizer(GGMLQuantizationType(ggml_type).name.lower())


def all_quantizers() -> list[type[Quantizer]]:
    _load_entry_points()
    return [QUANT_TYPES[k] for k in sorted(QUANT_TYPES)]
