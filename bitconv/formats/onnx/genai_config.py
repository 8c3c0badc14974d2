"""genai_config.json: the onnxruntime-genai decoder config written next to model.onnx."""
from __future__ import annotations

import json
from typing import Any

from .plan import MODEL_FILE, ONNX_ARCHS, OnnxPlan


def _first_id(v: Any) -> Any:
    return v[0] if isinstance(v, list) and v else v


def genai_config(plan: OnnxPlan) -> dict[str, Any]:
    """onnxruntime-genai's decoder config (field names as its model builder writes them)."""
    m, root = plan.mapping, plan.checkpoint.root
    c = m.config
    gen: dict[str, Any] = {}
    if (root / "generation_config.json").is_file():
        try:
            gen = json.loads((root / "generation_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            gen = {}
    bos = gen.get("bos_token_id", c.get("bos_token_id"))
    eos = gen.get("eos_token_id", c.get("eos_token_id"))
    pad = gen.get("pad_token_id", c.get("pad_token_id"))
    if pad is None:
        pad = _first_id(eos)
    ctx = int(c.get("max_position_embeddings") or 4096)
    return {
        "model": {
            "bos_token_id": bos,
            "context_length": ctx,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": MODEL_FILE,
                "head_size": m.head_dim,
                "hidden_size": m.hidden,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": m.n_head,
                "num_hidden_layers": m.n_layers,
                "num_key_value_heads": m.n_head_kv,
            },
            "eos_token_id": eos,
            "pad_token_id": pad,
            "type": ONNX_ARCHS[plan.checkpoint.architecture],
            "vocab_size": m.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": bool(gen.get("do_sample", False)),
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": ctx,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,  # present = Concat(past, new): no shared buffer
            "repetition_penalty": float(gen.get("repetition_penalty", 1.0) or 1.0),
            "temperature": float(gen.get("temperature", 1.0) or 1.0),
            "top_k": int(gen.get("top_k", 1) or 1) if gen.get("do_sample") else 1,
            "top_p": float(gen.get("top_p", 1.0) or 1.0),
        },
    }
