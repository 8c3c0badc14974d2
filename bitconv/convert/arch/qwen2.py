"""Qwen1.5 / Qwen2 / Qwen2.5 (Qwen2ForCausalLM): qkv biases, tied or untied embeddings."""
from __future__ import annotations

import gguf

from .base import ArchMapping, register_arch


@register_arch("Qwen2ForCausalLM")
class Qwen2Mapping(ArchMapping):
    gguf_arch = gguf.MODEL_ARCH.QWEN2
