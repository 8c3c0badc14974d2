"""Llama architecture (LlamaForCausalLM), and the ternary models built on it (HF1BitLLM
Llama3-8B-1.58, Falcon3-1.58bit: a bitnet quantization_config, packed or master weights).

llama.cpp's llama graph applies RoPE in the interleaved ("normal") layout, so the q and k rows of
HF checkpoints are permuted per head as its converter does. Ternary linears are stored as codes
(tq1_0 / tq2_0 / i2_s) or as s · W_t.

RoPE scaling: linear and yarn become `rope.scaling.*` keys; Llama 3.1's "llama3" frequency scaling
becomes the `rope_freqs.weight` tensor of per-frequency divisors, computed from config.json (no
scaling keys), as llama.cpp's converter emits it. Other types are refused.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import gguf
import numpy as np

from ...errors import UsageError
from ..checkpoint import Checkpoint, LazyTensor
from .base import SourceTensor, register_arch
from .packed_ternary import PackedTernaryMixin


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's half-split rotary layout → llama.cpp's interleaved one (rows of each head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(theta: float, dim: int, factor: float = 8.0, low_freq_factor: float = 1.0,
                        high_freq_factor: float = 4.0, original_context: float = 8192) -> np.ndarray:
    """Llama 3.1's RoPE frequency scaling as llama.cpp applies it: one divisor per frequency
    θ_i = theta^(-2i/dim) — 1 for wavelengths under original_context / high_freq_factor, `factor`
    over original_context / low_freq_factor, a smooth blend between.

    float32 step for step as llama.cpp's converter computes it in torch (wavelength = 2π · (1/θ_i),
    blend = 1 / ((1 - s) / factor + s)), so the bytes match; theta^(2i/dim) itself is rounded
    correctly from float64, where torch's float32 pow (SIMD or libm, by CPU) may be 1 ulp off.
    """
    f32 = np.float32
    exponents = np.arange(0, dim, 2, dtype=f32) / f32(dim)
    powers = (np.float64(f32(theta)) ** exponents.astype(np.float64)).astype(f32)
    wavelen = (f32(1) / (f32(1) / powers)) * f32(2 * math.pi)
    with np.errstate(divide="ignore", invalid="ignore"):  # low == high: the blend is never selected
        smooth = ((f32(1) / wavelen) * f32(original_context) - f32(low_freq_factor)) \
            / f32(high_freq_factor - low_freq_factor)
        blend = f32(1) / ((f32(1) - smooth) / f32(factor) + smooth)
    factors = np.where(wavelen > f32(original_context / low_freq_factor), f32(factor), blend)
    return np.where(wavelen < f32(original_context / high_freq_factor), f32(1), factors).astype(f32)


ROPE_FREQS = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"


@register_arch("LlamaForCausalLM")
class LlamaMapping(PackedTernaryMixin):
    gguf_arch = gguf.MODEL_ARCH.LLAMA

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        rope_type = self.rope_params.get("rope_type", self.rope_params.get("type"))
        self.llama3_rope = isinstance(rope_type, str) and rope_type.lower() == "llama3"
        if rope_type not in (None, "default", "linear", "yarn") and not self.llama3_rope:
            raise UsageError(f"rope_scaling type {rope_type!r} is not supported for LlamaForCausalLM "
                             "(supported: default, linear, yarn, llama3)")
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

    def rope_factors(self) -> np.ndarray:
        """llama3 RoPE scaling: the divisors llama.cpp reads from rope_freqs.weight (its converter's
        defaults for absent keys)."""
        rp = self.rope_params
        theta = self.rope_theta if self.rope_theta is not None else self.default_rope_theta
        n_ctx = rp.get("original_max_position_embeddings", self.config.get("original_max_position_embeddings"))
        return llama3_rope_factors(float(theta), self.head_dim, float(rp.get("factor", 8.0)),
                                   float(rp.get("low_freq_factor", 1.0)), float(rp.get("high_freq_factor", 4.0)),
                                   float(n_ctx if n_ctx is not None else 8192))

    def tensors(self, checkpoint: Checkpoint) -> Iterator[SourceTensor]:
        if self.llama3_rope:  # first, as llama.cpp's converter writes its generated tensors
            yield SourceTensor.computed(ROPE_FREQS, (self.head_dim // 2,), self.rope_factors)
        yield from super().tensors(checkpoint)

    def map_tensor(self, lt: LazyTensor) -> Iterator[SourceTensor]:
        name = self.gguf_name(lt.name)
        heads = self._heads(name)
        combine = None if heads is None else (lambda arrays, h=heads: permute_qk(arrays[0], h))
        yield SourceTensor(name, lt.shape, [lt], combine, hf_names=[lt.name])

    def add_metadata(self, w: gguf.GGUFWriter, file_type: int | None) -> None:
        super().add_metadata(w, file_type)
        w.add_vocab_size(self.vocab_size)
        w.add_rope_dimension_count(self.head_dim)
