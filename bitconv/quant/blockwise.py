"""Legacy llama.cpp block types: q8_0, q4_0, q4_1, q5_0, q5_1 (32-value blocks, f16 scales)."""
from __future__ import annotations

from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType

from ..accel import kernels
from .base import QuantizedTensor
from .gguf_native import GGUFNativeQuantizer
from .registry import register_quantizer


@register_quantizer()
class Q8_0(GGUFNativeQuantizer):
    name = "q8_0"
    qtype = GGMLQuantizationType.Q8_0
    file_type = int(LlamaFileType.MOSTLY_Q8_0)
    description = "8-bit, one f16 scale per 32 values; near-lossless"

    def quantize(self, w: np.ndarray, state: Any = None) -> QuantizedTensor:
        return QuantizedTensor(kernels.quantize_q8_0(w))


class _LowBit(GGUFNativeQuantizer):
    """Types only llama-quantize makes: files follow its per-tensor rules (output at q6_k, …)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.llama_ftype = cls.file_type


@register_quantizer()
class Q4_0(_LowBit):
    name = "q4_0"
    qtype = GGMLQuantizationType.Q4_0
    file_type = int(LlamaFileType.MOSTLY_Q4_0)
    description = "4-bit symmetric, f16 scale per 32 values"


@register_quantizer()
class Q4_1(_LowBit):
    name = "q4_1"
    qtype = GGMLQuantizationType.Q4_1
    file_type = int(LlamaFileType.MOSTLY_Q4_1)
    description = "4-bit with min, f16 scale + min per 32 values"


@register_quantizer()
class Q5_0(_LowBit):
    name = "q5_0"
    qtype = GGMLQuantizationType.Q5_0
    file_type = int(LlamaFileType.MOSTLY_Q5_0)
    description = "5-bit symmetric, f16 scale per 32 values"


@register_quantizer()
class Q5_1(_LowBit):
    name = "q5_1"
    qtype = GGMLQuantizationType.Q5_1
    file_type = int(LlamaFileType.MOSTLY_Q5_1)
    description = "5-bit with min, f16 scale + min per 32 values"
