"""Numeric transforms (no file I/O)."""
from .base import QuantizedTensor, Quantizer
from .registry import QUANT_TYPES, all_quantizers, get_quantizer, register_quantizer

__all__ = ["QuantizedTensor", "Quantizer", "QUANT_TYPES", "all_quantizers", "get_quantizer", "register_quantizer"]
