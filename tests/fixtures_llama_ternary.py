"""Llama-architecture ternary fixtures (HF1BitLLM Llama3-8B-1.58 style): LlamaForCausalLM with a
bitnet quantization_config and packed uint8 weights (`bitlinear`: weight_scale = inv), plus the
same model with its linears dequantized (codes / inv) under `<dir>.hf` as the ternary-weights
reference transformers runs. `rope_scaling` (hub style, e.g. Llama 3.1's "llama3" type) goes into
both configs."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from fixtures_bitnet import llama3_tokenizer_files, pack_ternary, ternarize

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_llama_ternary_checkpoint(path: str | os.PathLike[str], *, seed: int = 0, hidden: int = 256,
                                  intermediate: int = 768, layers: int = 2, heads: int = 4,
                                  kv_heads: int = 2, rope_scaling: dict[str, Any] | None = None) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    out, ref = Path(path), Path(str(path) + ".hf")
    config = LlamaConfig(vocab_size=128256, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=500000.0,
                         tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
                         **({"rope_scaling": dict(rope_scaling)} if rope_scaling else {}))
    model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)
    packed: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            x = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * x)
            elif any(f".{lin}." in name for lin in LINEARS):
                x = x / math.sqrt(p.shape[-1]) * (0.15 if name.endswith(("o_proj.weight", "down_proj.weight")) else 1)
                codes, scale = ternarize(x)
                inv = np.float32(1.0) / scale  # bitlinear stores inv; real W = codes / inv
                inv_t = torch.tensor([inv], dtype=torch.float32)
                packed[name] = torch.from_numpy(pack_ternary(codes))
                packed[name + "_scale"] = inv_t
                p.copy_(torch.from_numpy(codes).float() / inv_t)
            else:
                p.copy_(x / math.sqrt(p.shape[-1]))
    model.save_pretrained(str(ref), safe_serialization=True)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()
             if not any(f".{lin}." in k for lin in LINEARS)}
    state.update(packed)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((ref / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg.update({"rope_theta": 500000.0, "torch_dtype": "bfloat16",
                "quantization_config": {"quant_method": "bitnet", "linear_class": "bitlinear",
                                        "quantization_mode": "offline"}})
    if rope_scaling:
        cfg["rope_scaling"] = dict(rope_scaling)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    for d in (out, ref):
        for f in llama3_tokenizer_files().iterdir():
            if f.is_file():
                shutil.copyfile(f, d / f.name)
    return out


def ternary_weights_logits(path: str | os.PathLike[str], token_ids: list[int], **config_overrides: Any) -> np.ndarray:
    """The reference: transformers on the dequantized ternary weights, float32, float activations.
    (Norms and embeddings are rounded to bf16 as the packed checkpoint stores them.)
    `config_overrides` replace config attributes (a negative control without rope scaling)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path) + ".hf", dtype=torch.float32, **config_overrides).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not any(f".{lin}." in name for lin in LINEARS):
                p.copy_(p.to(torch.bfloat16).float())
        logits = model(torch.tensor([token_ids], dtype=torch.long)).logits
    return logits[0, -1].numpy()
