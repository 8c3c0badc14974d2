"""I2_S, bitnet.cpp's 2-bit ternary type (x86 layout, the one bitconv always writes).

K (the input dimension) must be a multiple of 128. Values are taken in row-major order in groups
of 128; a group becomes 32 bytes where byte j holds values j, 32+j, 64+j, 96+j in bit pairs 7–6,
5–4, 3–2, 1–0, code = value + 1. After the N·K/4 packed bytes: the per-tensor float32 scale and 28
zero bytes. (A naive sequential 4-per-byte packing loads in bitnet.cpp and produces garbage.)

The scale of master weights is bitnet.cpp's own: its flow ternarizes in torch (float32 mean in
torch's summation order, one intra-op thread) before llama-quantize packs, so bitconv takes
`converter_scale`, as tl1/tl2 do; a float64 mean differs from it in the last bit for about half of
the tensors (tests/test_gguf_ternary_source.py checks every scale against a bitnet.cpp file).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from ..accel import kernels
from ..errors import QuantizationError
from .base import QuantizedTensor, Quantizer
from .registry import register_quantizer
from .ternary import TernaryScale, converter_scale

I2S_TYPE_ID = 36
I2S_FILE_TYPE = 40  # general.file_type bitnet.cpp writes for an I2_S model
GROUP = 128
TRAILER_BYTES = 32


def pack_i2s(codes: np.ndarray) -> np.ndarray:
    """Codes in {−1, 0, 1}, any shape whose element count is a multiple of 128 → packed bytes."""
    flat = np.asarray(codes).reshape(-1)
    if flat.size % GROUP:
        raise QuantizationError(f"i2_s packs groups of {GROUP} values; got {flat.size}")
    g = (flat.astype(np.int8) + np.int8(1)).astype(np.uint8).reshape(-1, 4, 32)
    return (g[:, 0] << np.uint8(6)) | (g[:, 1] << np.uint8(4)) | (g[:, 2] << np.uint8(2)) | g[:, 3]


def i2s_trailer(scale: np.float32) -> bytes:
    return np.float32(scale).tobytes() + bytes(TRAILER_BYTES - 4)


@register_quantizer()
class I2S(Quantizer):
    name = "i2_s"
    block_size = GROUP
    ggml_type = I2S_TYPE_ID
    bits_per_weight = 2.0
    runtimes = ("bitnet.cpp (x86)",)
    description = "ternary 2-bit codes + one f32 scale per tensor (bitnet.cpp's x86 layout)"
    file_type = I2S_FILE_TYPE
    embedding_type = "f16"  # bitnet.cpp keeps token_embd in f16
    ternary = True

    def prepare(self, chunks: Iterable[np.ndarray], stored_dtype: str | None = None,
                known_scale: Any = None) -> TernaryScale:
        return known_scale if known_scale is not None else converter_scale(chunks, 1)

    def quantize(self, w: np.ndarray, state: Any = None) -> QuantizedTensor:
        if not isinstance(state, TernaryScale):
            raise QuantizationError("i2_s needs the per-tensor scale from prepare()")
        if w.size % GROUP:
            raise QuantizationError(f"i2_s packs groups of {GROUP} values; got {w.size}")
        # ternarize (rint(w · inv) clipped to ±1) straight into the codes value + 1, then pack
        x = np.asarray(w, dtype=np.float32) * state.inv
        np.rint(x, out=x)
        np.clip(x, np.float32(-1), np.float32(1), out=x)
        x += np.float32(1)
        g = x.astype(np.uint8).reshape(-1, 4, 32)
        out = g[:, 0] << np.uint8(6)
        out |= g[:, 1] << np.uint8(4)
        out |= g[:, 2] << np.uint8(2)
        out |= g[:, 3]
        return QuantizedTensor(out.reshape(w.shape[0], -1))

    def quantize_stored(self, raw: np.ndarray, stored_dtype: str, state: Any = None) -> QuantizedTensor | None:
        """The same bytes from bf16 bits / float32 in one C pass (NaN / Inf chunks: None, numpy's path)."""
        if not isinstance(state, TernaryScale) or raw.ndim != 2 or type(self).quantize is not I2S.quantize:
            return None
        out = kernels.i2s_stored(raw, stored_dtype, state.inv)
        return None if out is None else QuantizedTensor(out.reshape(raw.shape[0], -1))

    def quantize_codes(self, codes: np.ndarray, state: Any = None) -> QuantizedTensor:
        """The bytes `quantize` gives for codes / inv under the same scale (packed checkpoints)."""
        return QuantizedTensor(pack_i2s(codes).reshape(codes.shape[0], -1))

    def trailer(self, state: Any) -> bytes:
        return i2s_trailer(state.scale)

    def dequantize(self, q: QuantizedTensor, shape: tuple[int, ...]) -> np.ndarray:
        data = q.data.reshape(-1)
        n = math.prod(shape) // 4
        packed, scale = data[:n], data[n:n + 4].view(np.float32)[0]
        g = packed.reshape(-1, 32)
        parts = [(g >> np.uint8(s)) & np.uint8(3) for s in (6, 4, 2, 0)]
        codes = np.stack(parts, axis=1).reshape(-1).astype(np.int8) - np.int8(1)
        return (codes.astype(np.float32) * scale).reshape(shape)

    def can_quantize(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == 2 and shape[-1] % GROUP == 0

    def encoded_nbytes(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape) // 4 + TRAILER_BYTES
