"""Tiny random Qwen3-Next / Qwen3.5 checkpoints (hybrid gated-DeltaNet + gated-attention layers)
built from transformers 5.24's own classes, with the real Qwen vocabulary (tests/fixtures.py).

Facts about transformers 5.24 these follow (checked, not assumed):

* ``Qwen3_5ForCausalLM`` / ``Qwen3_5MoeForCausalLM`` / ``Qwen3NextForCausalLM`` take ``layer_types``
  (default: every 4th layer "full_attention", the rest "linear_attention"). Linear layers hold
  ``linear_attn.{in_proj_qkv,in_proj_z,in_proj_a,in_proj_b,out_proj,conv1d,norm}`` plus ``A_log`` and
  ``dt_bias`` (Qwen3-Next: fused ``in_proj_qkvz`` / ``in_proj_ba``); full layers a gated attention
  whose ``q_proj`` holds query and gate per head ([2·heads·head_dim, hidden]). RMSNorms are
  zero-centred (``x · (1 + w)``) except ``linear_attn.norm``: their random weights are 0.1·N(0, 1)
  (scale about 1; 2 would sharpen attention until q8_0 rounding alone moves the logits).
* The MoE classes keep the experts fused in memory and save them fused (``experts.gate_up_proj``
  [E, 2F, H], ``experts.down_proj`` [E, H, F]).
* None of them has multi-token-prediction weights: real checkpoints ship ``mtp.*`` tensors (``fc``,
  ``pre_fc_norm_embedding``, ``pre_fc_norm_hidden``, ``norm``, ``layers.0.*`` — one full-attention
  decoder block), which ``mtp=True`` adds: the block is a copy of the last full-attention layer,
  the rest random; transformers ignores them on load.
* M-RoPE: Qwen3.5 rotates ``head_dim · partial_rotary_factor`` dims in sections
  (``rope_parameters.mrope_section``) that must sum to half of them, or llama.cpp asserts; 64 · 0.25
  = 16 → [3, 3, 2]. Text positions are equal in every section, so it is plain RoPE there.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Literal

import fixtures

HybridArch = Literal["qwen35", "qwen35moe", "qwen3next"]
HYBRID_ARCHS: tuple[HybridArch, ...] = ("qwen35", "qwen35moe", "qwen3next")

_CLASSES = {
    "qwen35": ("Qwen3_5TextConfig", "Qwen3_5ForCausalLM"),
    "qwen35moe": ("Qwen3_5MoeTextConfig", "Qwen3_5MoeForCausalLM"),
    "qwen3next": ("Qwen3NextConfig", "Qwen3NextForCausalLM"),
}
#: what a real multimodal Qwen3.5 checkpoint names its class (the text model under model.language_model)
CONDITIONAL = {"qwen35": "Qwen3_5ForConditionalGeneration", "qwen35moe": "Qwen3_5MoeForConditionalGeneration"}


def hybrid_config(arch: HybridArch, hidden: int = 64, layers: int = 4, **overrides: Any) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        vocab_size=fixtures.VOCAB_SIZE, hidden_size=hidden, intermediate_size=3 * hidden // 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        max_position_embeddings=32768, rms_norm_eps=fixtures.RMS_NORM_EPS,
        # 2 key heads, 4 value heads: llama.cpp's converter reorders the value heads of Qwen3.5
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
        linear_conv_kernel_dim=4,
        rope_parameters={"rope_type": "default", "rope_theta": fixtures.ROPE_THETA, "partial_rotary_factor": 0.25},
        bos_token_id=fixtures.SPECIAL_TOKEN_START, eos_token_id=fixtures.SPECIAL_TOKEN_START,
    )
    if arch.startswith("qwen35"):
        kw["rope_parameters"].update(mrope_section=[3, 3, 2], mrope_interleaved=True)
    if arch in ("qwen35moe", "qwen3next"):
        kw.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden // 2,
                  shared_expert_intermediate_size=3 * hidden // 4)
    kw.update(overrides)
    return kw


def make_hybrid_checkpoint(path: str | Path, arch: HybridArch = "qwen35", *, dtype: str = "bf16", seed: int = 0,
                           hidden: int = 64, layers: int = 4, mtp: bool = False, conditional: bool = False,
                           **overrides: Any) -> Path:
    """Write a tiny random `arch` checkpoint (one safetensors file, config.json, Qwen tokenizer).
    `mtp`: add the multi-token-prediction tensors real checkpoints carry (config
    mtp_num_hidden_layers=1). `conditional`: lay it out as the multimodal Qwen3.5 class does
    (model.language_model.*, the text config under text_config; no vision tower)."""
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    cfg_name, model_name = _CLASSES[arch]
    config = getattr(transformers, cfg_name)(**hybrid_config(arch, hidden, layers, **overrides))
    model = getattr(transformers, model_name)(config)
    fixtures.randomize(model, seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("linear_attn.out_proj.weight"):  # it writes the residual stream too
                p.mul_(fixtures.RESIDUAL_SCALE)
            elif name.endswith("norm.weight") and not name.endswith("linear_attn.norm.weight"):
                p.sub_(1.0)  # zero-centred: the scale is 1 + w, about 1 as randomize means it
    model = model.to(torch.bfloat16 if dtype == "bf16" else torch.float32).eval()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    cfg = json.loads((out / "config.json").read_text())
    if mtp or conditional:
        st = out / "model.safetensors"
        state = load_file(str(st))
        if mtp:
            state.update(_mtp_tensors(state, cfg, seed))
            cfg["mtp_num_hidden_layers"] = 1
        if conditional:
            state = {("model.language_model." + k[len("model."):] if k.startswith("model.") else k): v
                     for k, v in state.items()}
            cfg = _conditional_config(arch, cfg)
        save_file(state, str(st), metadata={"format": "pt"})
    for f in fixtures.qwen_tokenizer_files().iterdir():
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    fixtures._write_json(out / "config.json", cfg, sort_keys=True)
    return out


def _mtp_tensors(state: dict[str, Any], cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """mtp.* as real Qwen3-Next / Qwen3.5 checkpoints store them: one decoder block (a copy of the
    last full-attention layer, perturbed), the hidden/embedding projection `fc` [H, 2H] and its norms."""
    import torch

    full = max(i for i, t in enumerate(cfg["layer_types"]) if t == "full_attention")
    prefix = f"model.layers.{full}."
    gen = torch.Generator().manual_seed(seed + 1)
    some = next(iter(state.values()))
    hidden = cfg["hidden_size"]

    def noise(shape: tuple[int, ...], scale: float) -> Any:
        return (scale * torch.randn(shape, generator=gen)).to(some.dtype)

    out = {f"mtp.layers.0.{k[len(prefix):]}": (v.float() + noise(tuple(v.shape), 0.01)).to(v.dtype)
           for k, v in state.items() if k.startswith(prefix)}
    out["mtp.fc.weight"] = noise((hidden, 2 * hidden), 1 / math.sqrt(2 * hidden))
    for n in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
        out[f"mtp.{n}.weight"] = noise((hidden,), 0.1)
    return out


def _conditional_config(arch: HybridArch, cfg: dict[str, Any]) -> dict[str, Any]:
    """config.json of the multimodal class: text hyper-parameters under text_config."""
    text = {k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version", "dtype")}
    text["model_type"] = cfg["model_type"]
    return {"architectures": [CONDITIONAL[arch]], "model_type": cfg["model_type"].replace("_text", ""),
            "text_config": text, "tie_word_embeddings": cfg.get("tie_word_embeddings", False),
            "dtype": cfg.get("dtype"), "transformers_version": cfg.get("transformers_version")}
