"""A GGUF's hyper-parameters → the Hugging Face config.json of the checkpoint it was converted from,
for the architectures bitconv converts (the reverse of each mapping's `add_metadata`; transformers'
GGUF loader, integrations/gguf/gguf_config_mapping.py, reads the same keys).

What a GGUF does not record is filled as the hub configs have it: the activation of the family, the
Qwen3-MoE top-k renormalization (llama.cpp hard-codes it per architecture), dense MoE layers from
the blocks that have no router, tied embeddings from a missing `output.weight`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CheckpointError, UnsupportedArchitecture
from .gguf_source import GGUFSource


@dataclass(frozen=True)
class ArchSpec:
    """How one GGUF architecture reads back: the HF class, its model_type and activation, and the
    HF names of the sub-norms (the names differ between the BitNet families)."""

    hf_class: str
    model_type: str
    hidden_act: str = "silu"
    attn_sub_norm: str = "self_attn.attn_sub_norm"
    ffn_sub_norm: str = "mlp.ffn_sub_norm"
    moe: bool = False
    #: llama.cpp's q/k row permutation (HF's half-split rotary layout → interleaved) to undo
    permuted_qk: bool = False
    #: ternary GGUF types read back as transformers' packed BitNet layout (codes + weight_scale)
    packed_ternary: bool = False
    #: top-k routing weights renormalized (llama.cpp decides by architecture)
    norm_topk_prob: bool = False


ARCH_SPECS: dict[str, ArchSpec] = {
    "qwen2": ArchSpec("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ArchSpec("Qwen3ForCausalLM", "qwen3"),
    "qwen2moe": ArchSpec("Qwen2MoeForCausalLM", "qwen2_moe", moe=True),
    "qwen3moe": ArchSpec("Qwen3MoeForCausalLM", "qwen3_moe", moe=True, norm_topk_prob=True),
    "llama": ArchSpec("LlamaForCausalLM", "llama", permuted_qk=True, packed_ternary=True),
    "bitnet-25": ArchSpec("BitNetForCausalLM", "bitnet", hidden_act="relu2", packed_ternary=True),
    "bitnet": ArchSpec("BitnetForCausalLM", "bitnet", attn_sub_norm="self_attn.inner_attn_ln",
                       ffn_sub_norm="mlp.ffn_layernorm", packed_ternary=True),
}

#: transformers' packed BitNet config: weight_scale holds s (what a GGUF stores), so no scale is re-rounded
PACKED_QUANTIZATION_CONFIG = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}
_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def arch_spec(src: GGUFSource) -> ArchSpec:
    arch = src.architecture
    spec = ARCH_SPECS.get(arch)
    if spec is None:
        raise UnsupportedArchitecture(f"{src.path.name}: GGUF architecture {arch!r} cannot be exported as a source; "
                                      f"supported: {', '.join(sorted(ARCH_SPECS))}")
    return spec


def _f32(x: float) -> float:
    """A float32 hyper-parameter as config.json spells it (1e-06, not 9.999999974752427e-07)."""
    return float(str(np.float32(x)))


class _Meta:
    def __init__(self, src: GGUFSource) -> None:
        self.src, self.arch, self.meta = src, src.architecture, src.metadata

    def get(self, key: str, default: Any = None) -> Any:
        return self.meta.get(f"{self.arch}.{key}", default)

    def int(self, key: str, default: int | None = None) -> int | None:
        v = self.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise CheckpointError(f"{self.src.path.name}: {self.arch}.{key} is {type(v).__name__} {str(v)[:40]}; "
                                  "bitconv exports models with one value for every layer only")
        return v

    def need(self, key: str) -> int:
        v = self.int(key)
        if v is None:
            raise CheckpointError(f"{self.src.path.name}: no {self.arch}.{key}: the GGUF lacks a hyper-parameter "
                                  "its architecture needs")
        return v


def _shape(src: GGUFSource, name: str) -> tuple[int, ...] | None:
    t = src.tensors.get(name)
    return t.shape if t is not None else None


def _rope(m: _Meta, cfg: dict[str, Any]) -> None:
    kind = m.get("rope.scaling.type")
    factor = m.get("rope.scaling.factor")
    if "rope_freqs.weight" in m.src.tensors:
        raise UnsupportedArchitecture(f"{m.src.path.name}: Llama 3 RoPE frequency factors (rope_freqs.weight) cannot "
                                      "be turned back into config.json's rope_scaling")
    if kind in (None, "none") or (kind == "linear" and factor in (None, 1.0)):
        return
    scaling: dict[str, Any] = {"rope_type": kind, "factor": _f32(factor) if factor is not None else 1.0}
    if (orig := m.int("rope.scaling.original_context_length")) is not None:
        scaling["original_max_position_embeddings"] = orig
    for key, hf in (("rope.scaling.yarn_ext_factor", "extrapolation_factor"),
                    ("rope.scaling.yarn_attn_factor", "attention_factor"),
                    ("rope.scaling.yarn_beta_fast", "beta_fast"), ("rope.scaling.yarn_beta_slow", "beta_slow")):
        if (v := m.get(key)) is not None:
            scaling[hf] = _f32(v)
    cfg["rope_scaling"] = scaling


def _moe(m: _Meta, spec: ArchSpec, cfg: dict[str, Any], n_layers: int) -> None:
    src = m.src
    gate = _shape(src, "blk.0.ffn_gate_exps.weight") or next(
        (t.shape for n, t in src.tensors.items() if n.endswith(".ffn_gate_exps.weight")), None)
    cfg["num_experts"] = m.int("expert_count") or (gate[0] if gate else 0)
    if (used := m.int("expert_used_count")) is not None:
        cfg["num_experts_per_tok"] = used
    moe_ff = m.int("expert_feed_forward_length") or (gate[1] if gate else None)
    if moe_ff is not None:
        cfg["moe_intermediate_size"] = moe_ff
    shared = m.int("expert_shared_feed_forward_length")
    if shared is None and (s := _shape(src, "blk.0.ffn_gate_shexp.weight")) is not None:
        shared = s[0]
    if shared is not None:
        cfg["shared_expert_intermediate_size"] = shared
    norm = m.get("expert_weights_norm")
    cfg["norm_topk_prob"] = bool(norm) if isinstance(norm, bool) else spec.norm_topk_prob
    cfg["decoder_sparse_step"] = 1
    cfg["mlp_only_layers"] = [i for i in range(n_layers) if f"blk.{i}.ffn_gate_inp.weight" not in src.tensors]


def hf_config(src: GGUFSource, spec: ArchSpec, *, ternary: bool) -> dict[str, Any]:
    """config.json for the GGUF `src` (`ternary`: it stores ternary linears as codes)."""
    m = _Meta(src)
    emb = _shape(src, "token_embd.weight")
    if emb is None or len(emb) != 2:
        raise CheckpointError(f"{src.path.name}: no 2-D token_embd.weight: not a decoder model GGUF")
    hidden = m.int("embedding_length") or emb[1]
    n_layers = m.need("block_count")
    n_head = m.need("attention.head_count")
    n_kv = m.int("attention.head_count_kv") or n_head
    q = _shape(src, "blk.0.attn_q.weight")
    head_dim = m.int("attention.key_length") or m.int("rope.dimension_count") or (
        q[0] // n_head if q else hidden // n_head)
    cfg: dict[str, Any] = {"architectures": [spec.hf_class], "model_type": spec.model_type,
                           "hidden_act": spec.hidden_act, "hidden_size": hidden, "num_hidden_layers": n_layers,
                           "num_attention_heads": n_head, "num_key_value_heads": n_kv, "vocab_size": emb[0]}
    if (ff := m.int("feed_forward_length")) is not None:
        cfg["intermediate_size"] = ff
    elif (g := _shape(src, "blk.0.ffn_gate.weight")) is not None:
        cfg["intermediate_size"] = g[0]
    if head_dim != hidden // n_head or spec.model_type.startswith("qwen3"):
        cfg["head_dim"] = head_dim
    if (ctx := m.int("context_length")) is not None:
        cfg["max_position_embeddings"] = ctx
    if (eps := m.get("attention.layer_norm_rms_epsilon")) is not None:
        cfg["rms_norm_eps"] = _f32(eps)
    if (theta := m.get("rope.freq_base")) is not None:
        cfg["rope_theta"] = _f32(theta)
    _rope(m, cfg)
    if spec.moe:
        _moe(m, spec, cfg, n_layers)
    if spec.model_type == "qwen2":
        cfg["use_sliding_window"] = False
    for key, gguf_key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id")):
        if isinstance(v := src.metadata.get(f"tokenizer.ggml.{gguf_key}"), int) and not isinstance(v, bool):
            cfg[f"{key}_token_id"] = v
    cfg["tie_word_embeddings"] = "output.weight" not in src.tensors
    cfg["torch_dtype"] = _DTYPES.get(src.tensors["token_embd.weight"].type_name, "float32")
    if ternary and spec.packed_ternary:
        cfg["quantization_config"] = dict(PACKED_QUANTIZATION_CONFIG)
    return cfg
