"""Ternary models through float and TQ types: ternarize per tensor, dequantize, then encode.

llama.cpp's converter turns a BitNet linear into s · W_t in float32 as `codes / inv` (f16
checkpoints: rounded back to f16), then encodes that with the file's type (TQ1_0/TQ2_0 for ternary files,
f16/bf16/f32 for reference files). `TernaryInput` does the same numerics, so bitconv's files carry
the same bytes; TQ1_0/TQ2_0 are these types for mainline llama.cpp and Ollama.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType

from ..errors import QuantizationError
from .base import QuantizedTensor, Quantizer
from .gguf_native import GGUFNativeQuantizer
from .registry import register_quantizer
from .ternary import TernaryScale, scale_for, ternarize


def round_through(x: np.ndarray, stored_dtype: str | None) -> np.ndarray:
    """s · W_t as the converter holds it: it widens everything but f16 to f32 before ternarizing
    and casts the result back to that dtype, so only f16 checkpoints round through f16."""
    if stored_dtype == "F16":
        return x.astype(np.float16).astype(np.float32)
    return x


class TernaryInput:
    """Mixin for a Quantizer: its input is first replaced by the tensor's dequantized ternary image."""

    ternary = True

    def prepare(self, chunks: Iterable[np.ndarray], stored_dtype: str | None = None,
                known_scale: Any = None) -> Any:
        return scale_for(chunks, known_scale), stored_dtype

    def quantize(self, w: np.ndarray, state: Any = None) -> QuantizedTensor:
        if not (isinstance(state, tuple) and isinstance(state[0], TernaryScale)):
            raise QuantizationError("a ternary type needs the per-tensor scale from prepare()")
        scale, stored_dtype = state
        # in float, not via int8 codes: a weight rounding to zero from below stays −0.0, as in torch
        dq = np.clip(np.rint(np.asarray(w, dtype=np.float32) * scale.inv), -1, 1) / scale.inv
        return super().quantize(round_through(dq, stored_dtype))  # type: ignore[misc]


def ternary_input(q: Quantizer) -> Quantizer:
    """The same type, fed with dequantized ternary weights (float reference files of BitNet models)."""
    if isinstance(q, TernaryInput):
        return q
    cls = type(f"Ternary{type(q).__name__}", (TernaryInput, type(q)), {})
    return cls()


class _TQ(TernaryInput, GGUFNativeQuantizer):
    embedding_type = "f16"  # token_embd / output stay f16, as llama.cpp's converter writes them
    runtimes = ("llama.cpp", "Ollama", "bitnet.cpp")


@register_quantizer()
class TQ1_0(_TQ):
    name = "tq1_0"
    qtype = GGMLQuantizationType.TQ1_0
    file_type = int(LlamaFileType.MOSTLY_TQ1_0)
    description = "ternary, base-3 packed trits + f16 scale per 256 values (smallest)"


def pack_tq2_0(codes: np.ndarray, scale: np.float32) -> np.ndarray:
    """TQ2_0 blocks straight from codes: what gguf-py's encoder makes of s · W_t (each block's
    max |value| is s, so its values divide to exactly ±1/0), without the float round trip.
    A block: 64 bytes where byte 32·h + j holds codes 128·h + 32·p + j + 1 at bits 2p, then f16 d
    (f16(s), or 0 for an all-zero block)."""
    rows, k = codes.shape
    nb = k // 256
    c = (codes.astype(np.int8) + np.int8(1)).astype(np.uint8).reshape(rows, nb, 2, 4, 32)
    qs = c[:, :, :, 0] | (c[:, :, :, 1] << np.uint8(2)) | (c[:, :, :, 2] << np.uint8(4)) | (c[:, :, :, 3] << np.uint8(6))
    nonzero = np.any(codes.reshape(rows, nb, 256) != 0, axis=-1)
    d = np.where(nonzero, np.float16(scale), np.float16(0)).astype(np.float16)
    out = np.empty((rows, nb, 66), dtype=np.uint8)
    out[..., :64] = qs.reshape(rows, nb, 64)
    out[..., 64:] = d.view(np.uint8).reshape(rows, nb, 2)
    return out.reshape(rows, nb * 66)


@register_quantizer()
class TQ2_0(_TQ):
    name = "tq2_0"
    qtype = GGMLQuantizationType.TQ2_0
    file_type = int(LlamaFileType.MOSTLY_TQ2_0)
    description = "ternary, 2-bit codes + f16 scale per 256 values"

    def quantize(self, w: np.ndarray, state: Any = None) -> QuantizedTensor:
        if not (isinstance(state, tuple) and isinstance(state[0], TernaryScale)):
            raise QuantizationError("a ternary type needs the per-tensor scale from prepare()")
        w2 = np.asarray(w).reshape(-1, np.asarray(w).shape[-1])
        out = pack_tq2_0(ternarize(w2, state[0]), state[0].scale)
        return QuantizedTensor(out.reshape(*np.asarray(w).shape[:-1], -1))

    def quantize_codes(self, codes: np.ndarray, state: Any = None) -> QuantizedTensor:
        """The bytes `quantize` gives for codes / inv under the same scale (packed checkpoints)."""
        return QuantizedTensor(pack_tq2_0(codes, state[0].scale))
