"""Unquantized GGUF types: f32, f16, bf16 (bf16 rounding as ggml does it, via gguf-py)."""
from __future__ import annotations

from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType

from ..accel import kernels
from .base import QuantizedTensor
from .gguf_native import GGUFNativeQuantizer
from .registry import register_quantizer


@register_quantizer()
class F32(GGUFNativeQuantizer):
    name = "f32"
    qtype = GGMLQuantizationType.F32
    file_type = int(LlamaFileType.ALL_F32)
    description = "float32, lossless"


@register_quantizer()
class F16(GGUFNativeQuantizer):
    name = "f16"
    qtype = GGMLQuantizationType.F16
    file_type = int(LlamaFileType.MOSTLY_F16)
    description = "float16 (1-D tensors stay f32)"

    def quantize(self, w: np.ndarray, state: Any = None) -> QuantizedTensor:
        return QuantizedTensor(kernels.to_f16(w))

    def quantize_stored(self, raw: np.ndarray, stored_dtype: str, state: Any = None) -> QuantizedTensor | None:
        """bf16 → f16 in one pass (values that are not finite or overflow f16 are left to the checks)."""
        if stored_dtype != "BF16" or type(self).quantize is not F16.quantize:
            return None
        out = kernels.bf16_to_f16_stored(raw)
        return None if out is None else QuantizedTensor(out)


@register_quantizer()
class BF16(GGUFNativeQuantizer):
    name = "bf16"
    qtype = GGMLQuantizationType.BF16
    file_type = int(LlamaFileType.MOSTLY_BF16)
    description = "bfloat16, lossless for bf16 checkpoints"
