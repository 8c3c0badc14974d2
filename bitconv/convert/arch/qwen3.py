"""Qwen3 (Qwen3ForCausalLM): per-head q_norm/k_norm, no biases, explicit head_dim."""
from __future__ import annotations

import gguf

from .base import ArchMapping, register_arch


@register_arch("Qwen3ForCausalLM")
class Qwen3Mapping(ArchMapping):
    gguf_arch = gguf.MODEL_ARCH.QWEN3

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = super().expected_shapes()
        shapes.update({"attn_q_norm.weight": (self.head_dim,), "attn_k_norm.weight": (self.head_dim,)})
        return shapes
