"""BitNet embedding models on a Gemma3 backbone (microsoft/bitnet-embedding-270m): `Gemma3TextModel`
with the same BitLinear per-projection norms, pooling and GGUF layout as the Qwen3 one
(bitnet_embedding.py), and Gemma3's own differences, as bitnet.cpp's
`utils/convert-bitnet-embedding-to-gguf.py` writes them (arch `gemma3`):

* post-attention and post-FFN norms: `post_attention_layernorm` → `post_attention_norm`,
  `pre_feedforward_layernorm` → `ffn_norm`, `post_feedforward_layernorm` → `post_ffw_norm`;
* Gemma3's RMSNorm multiplies by (1 + w): every Gemma3 norm (block, q/k, output) is written as
  float32(w) + 1, so a runtime's plain RMSNorm computes the same; the BitLinear `_norm_in` weights are
  plain RMSNorms and are written as they are;
* the Gemma vocabulary (SentencePiece pieces from tokenizer.json, `tokenizer.ggml.model` llama,
  scores from merge ranks; embedding_vocab.py).

What the file cannot say, the runtime's gemma3 architecture fixes: the embedding scaled by sqrt(hidden),
GELU (tanh), attention scaled by 1/sqrt(head_dim), sliding-window layers every layer but each sixth with
RoPE base 10000. A checkpoint that differs there (`query_pre_attn_scalar` ≠ head_dim, another
activation, bidirectional attention, another local RoPE base) would convert into a file that computes
something else, so it is refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Iterator

import gguf
import numpy as np

from ...errors import UnsupportedArchitecture
from ..checkpoint import Checkpoint, LazyTensor
from .base import ArchMapping, SourceTensor, register_arch
from .bitnet_embedding import _LAYER_NAMES, NORM_IN, BitnetEmbeddingQwen3Mapping

_GEMMA3_LAYER_NAMES = {
    **{k: v for k, v in _LAYER_NAMES.items() if k != "post_attention_layernorm.weight"},
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}
#: RoPE base of the sliding-window layers in llama.cpp's gemma3 (not written to the file)
LOCAL_ROPE_BASE = 10000.0
#: every SWA_PATTERN-th layer attends globally (llama.cpp's gemma3 and transformers' default layer_types)
SWA_PATTERN = 6


def _gemma3_norm(lt: LazyTensor) -> Any:
    """The script's offset: float32(w) + 1 (then written as F16, or F32 in an f32 file)."""
    return lambda: lt.load().astype(np.float32) + np.float32(1.0)


@register_arch("Gemma3TextModel")
class BitnetEmbeddingGemma3Mapping(BitnetEmbeddingQwen3Mapping):
    """A BitNet embedding checkpoint on a Gemma3 backbone; master (bf16/f32) or packed linears."""

    gguf_arch = gguf.MODEL_ARCH.GEMMA3
    tokenizer_kinds = ("gemma3-embedding",)
    layer_names: ClassVar[dict[str, str]] = _GEMMA3_LAYER_NAMES
    layer_tensors = ArchMapping.layer_tensors + ("attn_q_norm.weight", "attn_k_norm.weight",
                                                 "post_attention_norm.weight", "post_ffw_norm.weight") + NORM_IN
    backbone: ClassVar[str] = "Gemma3"
    #: transformers' Gemma3 default for the global layers when config.json names no rope_theta
    default_rope_theta: ClassVar[float] = 1_000_000.0

    def __init__(self, config: dict[str, Any], root: Path | None = None) -> None:
        super().__init__(config, root)
        full = self.rope_params.get("full_attention")
        if self.rope_theta is None and isinstance(full, dict):  # transformers 5's layout: per layer type
            self.rope_theta = full.get("rope_theta")

    @classmethod
    def for_checkpoint(cls, checkpoint: Checkpoint) -> "BitnetEmbeddingGemma3Mapping":
        mapping = super().for_checkpoint(checkpoint)
        assert isinstance(mapping, cls)
        mapping.check_runtime_semantics()
        return mapping

    def check_runtime_semantics(self) -> None:
        """Refuse what the GGUF cannot carry and llama.cpp's gemma3 would compute otherwise."""
        c, problems = self.config, []
        scalar = c.get("query_pre_attn_scalar", self.head_dim)
        if scalar is not None and float(scalar) != float(self.head_dim):
            problems.append(f"query_pre_attn_scalar {scalar} ≠ head_dim {self.head_dim}")
        act = c.get("hidden_activation") or c.get("hidden_act") or "gelu_pytorch_tanh"
        if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
            problems.append(f"activation {act}")
        if c.get("use_bidirectional_attention"):
            problems.append("bidirectional attention")
        local = c.get("rope_local_base_freq")
        sliding = self.rope_params.get("sliding_attention")
        if isinstance(sliding, dict):
            local = sliding.get("rope_theta", local)
        if local is not None and float(local) != LOCAL_ROPE_BASE:
            problems.append(f"local RoPE base {local}")
        if problems:
            raise UnsupportedArchitecture(
                f"Gemma3 BitNet embedding with {', '.join(problems)}: the GGUF has no key for it and the runtime's "
                "gemma3 would compute something else")

    @property
    def eos_id(self) -> int:
        """The EOS the tokenizer appends and the model pools (config.json's first eos_token_id)."""
        eos = self.config.get("eos_token_id", 1)
        return int(eos[0] if isinstance(eos, list) else eos)

    @property
    def bos_id(self) -> int | None:
        bos = self.config.get("bos_token_id", 2)
        return None if bos is None else int(bos)

    @property
    def activation(self) -> str:
        return "gelu_pytorch_tanh"  # check_runtime_semantics refuses any other

    @property
    def embedding_scale(self) -> float | None:
        return float(np.sqrt(np.float32(self.hidden)))

    @property
    def sliding_layers(self) -> tuple[int, int, float] | None:
        return None if self.sliding_window is None else (SWA_PATTERN, self.sliding_window, LOCAL_ROPE_BASE)

    @property
    def sliding_window(self) -> int | None:
        """The window of the sliding-window layers (the reference forward's; the script's file has no key)."""
        w = self.config.get("sliding_window")
        return None if w is None else int(w)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = super().expected_shapes()
        shapes.update({"post_attention_norm.weight": (self.hidden,), "post_ffw_norm.weight": (self.hidden,)})
        return shapes

    def map_tensor(self, lt: LazyTensor) -> Iterator[SourceTensor]:
        for src in super().map_tensor(lt):
            if src.name.endswith("_norm.weight"):  # Gemma3RMSNorm, not a BitLinear `_norm_in`
                src.decode, src.hf_stored = _gemma3_norm(lt), lt
            yield src
