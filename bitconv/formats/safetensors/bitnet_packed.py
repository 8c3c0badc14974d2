"""``bitnet-packed``: transformers' packed BitNet checkpoint (``quantization_config.quant_method:
"bitnet"``, ``quantization_mode: "offline"``) from a BitNetForCausalLM checkpoint holding master
weights or already packed weights. Every ternary linear becomes uint8 codes in transformers' layout
(``pack_hf_packed``: [ceil(N/4), K]) plus a one-element float32 ``<name>_scale`` (``weight_scale``):
inv = 1/s for ``linear_class="bitlinear"`` (transformers divides by it), s for ``"autobitlinear"``
(it multiplies). Ternarization is the GGUF path's (``scale_for`` + ``ternarize``; a packed input
keeps the scale it fixes). Every other tensor is copied as stored.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ...convert.arch import mapping_for
from ...convert.arch.base import SourceTensor
from ...convert.checkpoint import Checkpoint
from ...errors import QuantizationError, UsageError
from ...quant.ternary import LINEAR_CLASSES, pack_hf_packed, scale_for, ternarize
from .writer import ST_DTYPE_SIZE, OutTensor, paired, raw_producer

#: architectures whose transformers class reads the packed layout with HF tensor names unchanged
#: (BitNet embedding models, Qwen3Model: bitconv reads the packed form back; their BitLinear is custom code)
PACKED_ARCHITECTURES = ("BitNetForCausalLM", "Qwen3Model", "Gemma3TextModel")


def _ternary_producer(st: SourceTensor, linear_class: str) -> tuple[Callable[[], bytes], Callable[[], bytes]]:
    """(packed codes bytes, weight_scale bytes) of one ternary linear: the scale is known only once
    the codes are computed, so both come from one computation."""
    def compute() -> tuple[bytes, bytes]:
        w = np.asarray(st.load(), dtype=np.float32)
        known = st.fixed_scale([w])
        scale = scale_for([w], known)
        packed = pack_hf_packed(ternarize(w, scale))
        ws = scale.inv if linear_class == "bitlinear" else scale.scale
        return np.ascontiguousarray(packed).tobytes(), np.array([ws], dtype="<f4").tobytes()

    return paired(compute)


def plan_bitnet_packed(checkpoint: Checkpoint, linear_class: str) -> list[OutTensor]:
    """Every output tensor (name, dtype, shape, bytes) in file order; no tensor data is read."""
    if linear_class not in LINEAR_CLASSES:
        raise UsageError(f"unknown --linear-class {linear_class!r}; valid: {', '.join(LINEAR_CLASSES)}")
    arch = checkpoint.architecture
    mapping = mapping_for(checkpoint)
    if not getattr(mapping, "ternary_model", False):
        raise UsageError(f"{arch} is not a ternary (BitNet b1.58) model; the bitnet-packed format holds "
                         "ternary weights only")
    if arch not in PACKED_ARCHITECTURES:
        raise UsageError(f"bitnet-packed output is available for {', '.join(PACKED_ARCHITECTURES)}, not {arch}")
    out: list[OutTensor] = []
    names: set[str] = set()
    for st in mapping.tensors(checkpoint):
        mapping.check_shape(st)
        names.add(st.name)
        hf_name = st.hf_names[0] if st.hf_names else st.name
        if mapping.is_ternary_linear(st.name):
            n, k = st.shape
            if n % 4:
                raise QuantizationError(f"{hf_name}: {n} output rows; transformers' BitLinear needs a multiple "
                                        "of 4 for packed weights")
            weight, scale_bytes = _ternary_producer(st, linear_class)
            rows = -(-n // 4)
            out.append(OutTensor(hf_name, "U8", (rows, k), rows * k, weight, "ternary, packed"))
            out.append(OutTensor(hf_name + "_scale", "F32", (1,), 4, scale_bytes,
                                 "inv = 1/s" if linear_class == "bitlinear" else "s"))
        else:
            lt = st.hf_stored or st.plain
            if lt is None:
                raise UsageError(f"{hf_name}: not a plain stored tensor; cannot copy it into bitnet-packed")
            if lt.dtype not in ST_DTYPE_SIZE:
                raise UsageError(f"{lt.name}: dtype {lt.dtype} cannot be written to safetensors")
            nbytes = math.prod(lt.shape) * ST_DTYPE_SIZE[lt.dtype]
            out.append(OutTensor(lt.name, lt.dtype, tuple(lt.shape), nbytes, raw_producer(lt), "copied"))
    mapping.check_complete(names)
    # safetensors' own order: larger alignment first, then by name; the weight's codes are produced
    # before its scale (U8 sorts after F32), so order ternary weights before their scales explicitly
    out.sort(key=lambda t: (-ST_DTYPE_SIZE[t.dtype], t.name))
    scales = [t for t in out if t.name.endswith("_scale") and t.note != "copied"]
    rest = [t for t in out if not (t.name.endswith("_scale") and t.note != "copied")]
    return rest + scales


def packed_config(config: dict[str, Any], linear_class: str) -> dict[str, Any]:
    cfg = dict(config)
    cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": linear_class,
                                  "quantization_mode": "offline"}
    return cfg
