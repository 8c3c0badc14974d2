"""Which stored layout a safetensors checkpoint holds, from config.json's quantization_config.

Read by inspect, validate and (later) the quantized-checkpoint sources, so one place decides what a
`quant_method` means.
"""
from __future__ import annotations

from typing import Any


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
