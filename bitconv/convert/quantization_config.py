"""What config.json's `quantization_config` means: the one place that maps a `quant_method` to how
bitconv reads the checkpoint.

- `st_format`: the stored layout's name (inspect, validate).
- `source_scheme`: the scheme that dequantizes a quantized checkpoint as a conversion source
  (`SOURCE_SCHEMES`, keyed by quant_method: one module per scheme under quant/), None where the
  weights are float or the architecture mapping decodes them itself (packed BitNet), and a one-line
  CheckpointError for a quant_method bitconv cannot read.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from ..errors import CheckpointError

#: quant_method → "module:class" under bitconv.quant, a SourceScheme subclass (imported when used)
SOURCE_SCHEMES: dict[str, str] = {
    "gptq": "gptq:GptqScheme",
    "awq": "awq:AwqScheme",
    "fp8": "fp8:Fp8Scheme",
    "compressed-tensors": "compressed_source:CompressedTensorsScheme",
    "bitsandbytes": "bnb:bnb_scheme",  # 4-bit (nf4 / fp4) or LLM.int8, by load_in_4bit / load_in_8bit
}
#: quant_methods whose linears the architecture mapping decodes (convert/arch/packed_ternary.py)
MAPPING_DECODED = ("bitnet",)
#: quant_methods bitconv writes (hf2st) and validates but does not yet read as a conversion source
NOT_YET_SOURCES: tuple[str, ...] = ()


def register_source_scheme(method: str, factory: str | Callable[[dict[str, Any]], Any]) -> None:
    """Register a reader for checkpoints with `quant_method: method` ("module:Class" under
    bitconv.quant, or a callable taking the quantization_config)."""
    SOURCE_SCHEMES[method] = factory  # type: ignore[assignment]


def quant_method(config: dict[str, Any] | None) -> str | None:
    qc = (config or {}).get("quantization_config")
    if not isinstance(qc, dict) or not qc.get("quant_method"):
        return None
    return str(qc["quant_method"]).lower()


def source_scheme(config: dict[str, Any] | None) -> Any:
    """The SourceScheme that dequantizes this checkpoint, or None (float weights, packed BitNet).
    Raises CheckpointError for a quant_method or an option bitconv does not read."""
    method = quant_method(config)
    if method is None or method in MAPPING_DECODED:
        return None
    factory = SOURCE_SCHEMES.get(method)
    readable = ", ".join(sorted([*SOURCE_SCHEMES, *MAPPING_DECODED]))
    if factory is None:
        if method in NOT_YET_SOURCES:
            raise CheckpointError(f"quant_method {method!r}: bitconv does not read {method} checkpoints as a "
                                  f"conversion source yet (it reads {readable})")
        raise CheckpointError(f"unknown quant_method {method!r} in config.json's quantization_config "
                              f"(bitconv reads {readable})")
    try:
        return scheme_class(method)(config["quantization_config"])  # type: ignore[index, misc]
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:
        # the options are read from config.json alone: a value of the wrong JSON type is bad input
        raise CheckpointError(f"{method} quantization_config is malformed ({type(e).__name__}: {e})") from None


def scheme_class(method: str) -> Any:
    """The registered reader of `quant_method: method` (a SourceScheme class or factory), or None."""
    factory = SOURCE_SCHEMES.get(method)
    if isinstance(factory, str):
        module, _, cls = factory.partition(":")
        factory = getattr(importlib.import_module(f"..quant.{module}", __package__), cls)
    return factory


def describe(qc: dict[str, Any]) -> str | None:
    """inspect's one line for a source scheme (scheme, bits, group size, symmetry, act-order), or
    None when quant_method names none; an unsupported option reads as the refusal."""
    try:
        scheme = source_scheme({"quantization_config": qc})
    except CheckpointError as e:
        method = quant_method({"quantization_config": qc})
        return None if method not in SOURCE_SCHEMES else f"{method}: {e}"
    return None if scheme is None else scheme.describe()


def st_format(qc: dict[str, Any] | None, names: set[str] | None = None) -> str:
    """bitnet-packed / compressed-tensors / plain from config.json's quantization_config (without
    one, from the tensor names: a lone .safetensors file)."""
    if isinstance(qc, dict) and qc.get("quant_method"):
        return {"bitnet": "bitnet-packed"}.get(str(qc["quant_method"]), str(qc["quant_method"]))
    names = names or set()
    if any(n.endswith(".weight_packed") for n in names):
        return "compressed-tensors"
    if any(n.endswith(".weight_scale") and n.removesuffix("_scale") in names for n in names):
        return "bitnet-packed"
    return "plain"
