"""1bitLLM-style BitNet fixtures (`BitnetForCausalLM`: SiLU, sub-norms `inner_attn_ln` /
`ffn_layernorm`, SentencePiece tokenizer), built offline.

transformers has no class for 1bitLLM's remote-code model (bitconv never runs remote code), so the
model is transformers' BitNetForCausalLM with `hidden_act="silu"`, saved under 1bitLLM's tensor
names. The same weights under transformers' names are kept beside it (`<dir>.hf`) as the reference.
"""
from __future__ import annotations

import functools
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np

from fixtures import _cache_root, randomize

SP_VOCAB = 1000
CONFIG_VOCAB = 1024  # a few padded ids, as real checkpoints have (32002 vs 32000)
_WORDS = ("the quick brown fox jumps over the lazy dog ternary weights bitnet hello world model "
          "token layer norm attention scale matrix vector kernel python numpy llama").split()


@functools.cache
def sentencepiece_model() -> Path:
    """A small BPE SentencePiece model (byte fallback, <unk>/<s>/</s>), trained once per machine."""
    import sentencepiece as spm

    out = _cache_root() / "onebit-sp-v1"
    model = out / "tokenizer.model"
    if model.is_file():
        return model
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(_WORDS) for _ in range(16)) for _ in range(4000)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp / "tokenizer"), vocab_size=SP_VOCAB,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   minloglevel=2, hard_vocab_limit=False)
    try:
        tmp.rename(out)
    except OSError:  # another process won
        shutil.rmtree(tmp, ignore_errors=True)
    return model


def make_onebit_checkpoint(path: str | os.PathLike[str], *, dtype: str = "bf16", seed: int = 0, hidden: int = 256,
                           intermediate: int = 768, layers: int = 2, heads: int = 4, kv_heads: int = 2) -> Path:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import BitNetConfig, BitNetForCausalLM

    out = Path(path)
    ref = out.with_name(out.name + ".hf")
    config = BitNetConfig(vocab_size=CONFIG_VOCAB, hidden_size=hidden, intermediate_size=intermediate,
                          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                          hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-5,
                          rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                          pad_token_id=None)
    model = BitNetForCausalLM(config)
    randomize(model, seed)
    model = model.to(torch.bfloat16 if dtype == "bf16" else torch.float32).eval()
    model.save_pretrained(str(ref), safe_serialization=True)
    out.mkdir(parents=True, exist_ok=True)
    state = load_file(str(ref / "model.safetensors"))
    renamed = {k.replace("self_attn.attn_sub_norm", "self_attn.inner_attn_ln")
                .replace("mlp.ffn_sub_norm", "mlp.ffn_layernorm"): v for k, v in state.items()}
    save_file(renamed, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((ref / "config.json").read_text())
    cfg["architectures"] = ["BitnetForCausalLM"]
    cfg.pop("rope_parameters", None)
    cfg.update({"rope_theta": 10000.0, "torch_dtype": "bfloat16" if dtype == "bf16" else "float32"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    for d in (out, ref):
        shutil.copyfile(sentencepiece_model(), d / "tokenizer.model")
        (d / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
            "add_bos_token": True, "add_eos_token": False, "legacy": True}))
    return out


def ternary_weights_logits(path: str | os.PathLike[str], token_ids: list[int]) -> np.ndarray:
    """DESIGN.md's ternary-weights reference: float32, every linear replaced by its dequantized
    ternary image (W_t / inv, absmean per tensor, as the references compute it), float activations."""
    import torch
    from transformers import AutoModelForCausalLM

    ref = Path(path).with_name(Path(path).name + ".hf")
    model = AutoModelForCausalLM.from_pretrained(str(ref), dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                              "gate_proj.weight", "up_proj.weight", "down_proj.weight")):
                inv = 1.0 / p.abs().mean().clamp(min=1e-5)
                p.copy_((p * inv).round().clamp(-1, 1) / inv)
        logits = model(torch.tensor([token_ids], dtype=torch.long)).logits
    return logits[0, -1].numpy()
