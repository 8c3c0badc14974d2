"""Quant types that gguf-py already defines bit-exactly: bitconv delegates the block math to it."""
from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from .base import QuantizedTensor, Quantizer

#: runtimes that read the types gguf-py defines
GGUF_RUNTIMES = ("llama.cpp", "Ollama", "bitnet.cpp")


class GGUFNativeQuantizer(Quantizer):
    """A type whose encoder and decoder live in gguf-py (the bit-exact reference of ggml's C code)."""

    qtype: ClassVar[GGMLQuantizationType]
    runtimes = GGUF_RUNTIMES

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "qtype" in cls.__dict__:
            cls.ggml_type = int(cls.qtype)
            cls.block_size = GGML_QUANT_SIZES[cls.qtype][0]
            block, nbytes = GGML_QUANT_SIZES[cls.qtype]
            cls.bits_per_weight = nbytes * 8 / block

    def quantize(self, w: np.ndarray, state: Any = None) -> QuantizedTensor:
        return QuantizedTensor(quants.quantize(w, self.qtype))

    def dequantize(self, q: QuantizedTensor, shape: tuple[int, ...]) -> np.ndarray:
        return quants.dequantize(q.data, self.qtype).reshape(shape).astype(np.float32, copy=False)

    def encoded_nbytes(self, shape: tuple[int, ...]) -> int:
        block, nbytes = GGML_QUANT_SIZES[self.qtype]
        return math.prod(shape) // block * nbytes
