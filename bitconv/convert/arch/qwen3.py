"""Qwen3 (Qwen3ForCausalLM): per-head q_norm/k_norm, no biases, explicit head_dim."""
from __future__ import annotations

import gguf

from .base import ArchMapping, QKNormShapes, register_arch


@register_arch("Qwen3ForCausalLM")
class Qwen3Mapping(QKNormShapes, ArchMapping):
    gguf_arch = gguf.MODEL_ARCH.QWEN3
