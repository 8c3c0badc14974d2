"""Llama architecture (LlamaForCausalLM), and the ternary models built on it (HF1BitLLM
Llama3-8B-1.58, Falcon3-1.58bit: a bitnet quantization_config, packed or master weights).

llama.cpp's llama graph applies RoPE in the interleaved ("normal") layout, so the q and k rows of
HF checkpoints are permuted per head as its converter does. Ternary linears are stored as codes
(tq1_0 / tq2_0 / i2_s) or as s · W_t.
"""
from __future__ import annotations

from typing import Any, Iterator

import gguf
import numpy as np

from ...errors import UsageError
from ..checkpoint import LazyTensor
from .base import SourceTensor, register_arch
from .packed_ternary import PackedTernaryMixin


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's half-split rotary layout → llama.cpp's interleaved one (rows of each head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@register_arch("LlamaForCausalLM")
class LlamaMapping(PackedTernaryMixin):
    gguf_arch = gguf.MODEL_ARCH.LLAMA

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        rope_type = self.rope_params.get("rope_type", self.rope_params.get("type"))
        if rope_type not in (None, "default", "linear", "yarn"):
            raise UsageError(f"rope scaling {rope_type!r} (llama3 frequency tables) is not supported yet")
        if self.linear_class is not None or (config.get("quantization_config") or {}).get("quant_method") == "bitnet":
            self.ternary_model = True
            self.ternary_linears = self.TERNARY_LINEARS

    def _heads(self, gguf_name: str) -> int | None:
        if gguf_name.endswith(("attn_q.weight", "attn_q.bias")):
            return self.n_head
        if gguf_name.endswith(("attn_k.weight", "attn_k.bias")):
            return self.n_head_kv
        return None

    def reorder_rows(self, gguf_name: str, w: np.ndarray) -> np.ndarray:
        heads = self._heads(gguf_name)
        return w if heads is None else permute_qk(w, heads)

    def map_tensor(self, lt: LazyTensor) -> Iterator[SourceTensor]:
        name = self.gguf_name(lt.name)
        heads = self._heads(name)
        combine = None if heads is None else (lambda arrays, h=heads: permute_qk(arrays[0], h))
        yield SourceTensor(name, lt.shape, [lt], combine, hf_names=[lt.name])

    def add_metadata(self, w: gguf.GGUFWriter, file_type: int | None) -> None:
        super().add_metadata(w, file_type)
        w.add_vocab_size(self.vocab_size)
        w.add_rope_dimension_count(self.head_dim)
