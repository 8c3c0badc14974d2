"""Qwen (1) (QWenLMHeadModel: Qwen-7B / 14B / 72B and their chat models) → llama.cpp's `qwen`.

The tensors map as they are (gguf-py's names): `attn.c_attn` (q, k, v fused, with bias) stays fused
as `attn_qkv`; the MLP computes w1(x) · silu(w2(x)), so `mlp.w2` is ffn_gate and `mlp.w1` ffn_up,
each intermediate_size / 2 wide (llama.cpp reads them as n_ff / 2, and feed_forward_length is
config.json's intermediate_size as it stands). llama.cpp rotates q/k halves (NeoX), as Qwen's
rotate_half does, so no permutation.

Metadata: the keys llama.cpp's converter writes for it, plus `attention.layer_norm_rms_epsilon`.
Qwen 1 normalizes with RMSNorm. The converter llama-cpp-python 0.3.36 vendors has no Qwen-specific
hyper-parameters any more and writes config.json's layer_norm_epsilon only as
`attention.layer_norm_epsilon`; llama.cpp (the same version) then refuses the file, in llama_model
and in llama-quantize alike ("key not found in model: qwen.attention.layer_norm_rms_epsilon").
bitconv keeps the converter's key and adds the one llama.cpp reads.

Tokenizer: `qwen.tiktoken` with Qwen-1's special tokens (convert/tiktoken_vocab.py).
"""
from __future__ import annotations

from typing import Any, ClassVar

import gguf

from ...errors import CheckpointError
from .base import ArchMapping, _hparam, register_arch


@register_arch("QWenLMHeadModel")
class Qwen1Mapping(ArchMapping):
    gguf_arch = gguf.MODEL_ARCH.QWEN
    tokenizer_kinds = ("tiktoken",)
    # the ONNX graph builder and the safetensors layouts know llama-style decoder names and separate
    # q/k/v projections only
    output_formats = ("gguf",)
    layer_tensors: ClassVar[tuple[str, ...]] = (
        "attn_norm.weight", "attn_qkv.weight", "attn_qkv.bias", "attn_output.weight", "ffn_norm.weight")

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        if self.ff is None:
            raise CheckpointError("config.json lacks 'intermediate_size'")
        if int(self.ff) % 2:
            raise CheckpointError(f"intermediate_size {self.ff} is odd: Qwen (1)'s w1 / w2 are half of it each")
        kv_channels = _hparam(config, "kv_channels")
        if kv_channels is not None and int(kv_channels) * self.n_head != self.hidden:
            raise CheckpointError(f"kv_channels {kv_channels} × {self.n_head} heads ≠ hidden_size {self.hidden}: "
                                  "llama.cpp's qwen graph needs head width hidden_size / num_attention_heads")
        self.eps = _hparam(config, "layer_norm_epsilon")

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        h, ff = self.hidden, int(self.ff) // 2
        return {
            "token_embd.weight": (self.vocab_size, h),
            "output.weight": (self.vocab_size, h),
            "output_norm.weight": (h,),
            "attn_norm.weight": (h,),
            "ffn_norm.weight": (h,),
            "attn_qkv.weight": (3 * h, h),
            "attn_qkv.bias": (3 * h,),
            "attn_output.weight": (h, h),
            "ffn_gate.weight": (ff, h),
            "ffn_up.weight": (ff, h),
            "ffn_down.weight": (h, ff),
        }

    def add_metadata(self, w: gguf.GGUFWriter, file_type: int | None) -> None:
        """llama.cpp's converter's keys for a Qwen (1) config.json, in its order (TextModel's
        generic hyper-parameters: no head_count_kv, as the config names none), and the RMS epsilon
        llama.cpp reads."""
        c = self.config
        w.add_block_count(self.n_layers)
        n_ctx = _hparam(c, "max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length",
                        "model_max_length")
        if n_ctx is not None:
            w.add_context_length(int(n_ctx))
        w.add_embedding_length(self.hidden)
        w.add_feed_forward_length(int(self.ff))
        w.add_head_count(self.n_head)
        if (n_kv := _hparam(c, "num_key_value_heads", "n_kv_heads")) is not None:
            w.add_head_count_kv(int(n_kv))
        self._add_rope(w)
        eps = _hparam(c, "rms_norm_eps", "norm_eps", default=self.eps)
        if eps is not None:
            w.add_layer_norm_rms_eps(float(eps))
        if self.eps is not None:
            w.add_layer_norm_eps(float(self.eps))
        if file_type is not None:
            w.add_file_type(file_type)
