"""BitNet b1.58: ternary-trained decoders with sub-norms.

- `BitnetForCausalLM` (1bitLLM bitnet_b1_58-large/-3B): SiLU, sub-norms named `inner_attn_ln` /
  `ffn_layernorm`, SentencePiece tokenizer; GGUF arch `bitnet`, which mainline llama.cpp reads
  (TQ1_0/TQ2_0) — hyper-parameters as its converter writes them (linear rope scaling, factor 1).
- `BitNetForCausalLM` (transformers, bitnet-b1.58-2B-4T): ReLU², sub-norms `attn_sub_norm` /
  `ffn_sub_norm`, Llama-3 BPE; GGUF arch `bitnet-25`, which only bitnet.cpp reads (mainline's
  `bitnet` graph applies SiLU and would produce wrong logits).
The seven linears of every block are ternary: stored as codes (i2_s, tq*) or as s · W_t.
"""
from __future__ import annotations

from typing import Any, ClassVar

import gguf

from .base import ArchMapping, register_arch
from .packed_ternary import PackedTernaryMixin


class BitnetMapping(PackedTernaryMixin):
    """Master weights (bf16/f32) are ternarized on conversion; a packed checkpoint (transformers
    `quant_method: "bitnet"`: uint8 codes + `weight_scale`) is decoded with the scale it fixes."""

    gguf_arch = gguf.MODEL_ARCH.BITNET
    ternary_model = True
    ternary_linears = ArchMapping.TERNARY_LINEARS
    layer_tensors = ArchMapping.layer_tensors + ("attn_sub_norm.weight", "ffn_sub_norm.weight")
    #: the tied 2B-4T / 1bitLLM checkpoints carry no lm_head
    default_tied: ClassVar[bool] = True

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", self.default_tied))

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = super().expected_shapes()
        shapes.update({"attn_sub_norm.weight": (self.hidden,), "ffn_sub_norm.weight": (int(self.ff),)})
        return shapes


@register_arch("BitnetForCausalLM")
class OneBitLLMMapping(BitnetMapping):
    tokenizer_kinds = ("sentencepiece", "bpe")

    def add_metadata(self, w: gguf.GGUFWriter, file_type: int | None) -> None:
        super().add_metadata(w, file_type)
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(1.0)


@register_arch("BitNetForCausalLM")
class BitNet25Mapping(BitnetMapping):
    """transformers' BitNet (2B-4T family): same tensors under other sub-norm names, relu²."""

    arch_override: ClassVar[str] = "bitnet-25"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        for i in range(self.n_layers):  # the 2B-4T names gguf-py's BITNET map does not know
            self.tensor_map.mapping[f"model.layers.{i}.self_attn.attn_sub_norm"] = (
                gguf.MODEL_TENSOR.ATTN_SUB_NORM, f"blk.{i}.attn_sub_norm")
            self.tensor_map.mapping[f"model.layers.{i}.mlp.ffn_sub_norm"] = (
                gguf.MODEL_TENSOR.FFN_SUB_NORM, f"blk.{i}.ffn_sub_norm")

    @property
    def arch_name(self) -> str:
        return self.arch_override

    def add_metadata(self, w: gguf.GGUFWriter, file_type: int | None) -> None:
        super().add_metadata(w, file_type)
        w.add_rope_dimension_count(self.head_dim)
