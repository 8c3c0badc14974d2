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

import re
from typing import Any, ClassVar, Iterator

import gguf
import numpy as np

from ...errors import CheckpointError
from ...quant.ternary import hf_weight_scale_to_scale, unpack_hf_packed
from ..checkpoint import Checkpoint, LazyTensor
from .base import ArchMapping, SourceTensor, register_arch



class BitnetMapping(ArchMapping):
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

    @property
    def linear_class(self) -> str | None:
        """The packed checkpoint's weight_scale convention, or None for master weights."""
        qc = self.config.get("quantization_config") or {}
        if not isinstance(qc, dict) or qc.get("quant_method") != "bitnet":
            return None
        return str(qc.get("linear_class") or "bitlinear")

    def tensors(self, checkpoint: Checkpoint) -> Iterator[SourceTensor]:
        scales = {n for n in checkpoint.tensors if n.endswith(".weight_scale")}
        for lt in checkpoint:
            if lt.name in scales or lt.name.endswith(self.skip_suffixes):
                continue
            if lt.dtype == "U8":
                yield self._packed_linear(lt, checkpoint)
            else:
                yield from self.map_tensor(lt)

    def _packed_linear(self, packed: LazyTensor, checkpoint: Checkpoint) -> SourceTensor:
        name = self.gguf_name(packed.name)
        base = re.sub(r"^blk\.\d+\.", "", name)
        linear_class = self.linear_class
        if base not in self.ternary_linears or linear_class is None:
            raise CheckpointError(f"{packed.name}: uint8 weights, but config.json has no bitnet "
                                  "quantization_config for a packed ternary linear")
        scale_name = packed.name.removesuffix(".weight") + ".weight_scale"
        scale_t = checkpoint.tensors.get(scale_name)
        if scale_t is None:
            raise CheckpointError(f"{packed.name}: packed ternary weights without {scale_name}")
        rows, k = self.expected_shapes()[base]
        if len(packed.shape) != 2 or packed.shape != (-(-rows // 4), k):
            raise CheckpointError(f"{packed.name}: packed shape {packed.shape} does not match config.json "
                                  f"(expects {(-(-rows // 4), k)} for a {rows}×{k} ternary matrix)")

        def scale() -> np.float32:
            values = scale_t.load().reshape(-1)
            if values.size != 1:
                raise CheckpointError(f"{scale_name}: expected one value, found {values.size}")
            return hf_weight_scale_to_scale(float(values[0]), linear_class)

        def decode() -> np.ndarray:
            return unpack_hf_packed(packed.load_raw(), rows).astype(np.float32) * scale()

        return SourceTensor(name, (rows, k), [packed, scale_t], hf_names=[packed.name], decode=decode,
                            known_scale=scale)


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
