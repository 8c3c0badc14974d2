"""The judges: real runtimes loading bitconv's artifacts (llama.cpp through llama-cpp-python)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _llama(path: Path, **kw: object):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=128, n_batch=128, n_threads=2, verbose=False, **kw)


def llama_last_logits(path: Path, tokens: list[int]) -> np.ndarray:
    """llama.cpp's logits at the last position of `tokens`."""
    llm = _llama(path, logits_all=True)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[len(tokens) - 1], dtype=np.float32)
    finally:
        llm.close()


def llama_tokenize(path: Path, texts: list[str]) -> list[list[int]]:
    llm = _llama(path, vocab_only=True)
    try:
        return [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]
    finally:
        llm.close()


def cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def hf_logits_fake_quant(path: Path, tokens: list[int], ggml_type: str, embedding_type: str | None) -> np.ndarray:
    """transformers float32 logits with every matrix replaced by its quantize→dequantize image.

    The rule restated independently of bitconv's plan: routers stay f32, embeddings/lm_head take
    `embedding_type`, every other matrix `ggml_type`. llama.cpp running bitconv's file must match
    this closely (only activation rounding differs), which pins the layout exactly even where the
    quantization error itself is large.
    """
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    def roundtrip(a: np.ndarray, name: str) -> np.ndarray:
        qt = gguf.GGMLQuantizationType[name.upper()]
        if a.shape[-1] % gguf.GGML_QUANT_SIZES[qt][0]:
            qt = gguf.GGMLQuantizationType.F16  # llama.cpp's fallback for rows the block does not divide
        return gguf.quants.dequantize(gguf.quants.quantize(a, qt), qt).reshape(a.shape)

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim < 2 or name.endswith(("mlp.gate.weight", "shared_expert_gate.weight")):
                continue
            is_embedding = "embed_tokens" in name or "lm_head" in name
            qname = (embedding_type or ggml_type) if is_embedding else ggml_type
            p.copy_(torch.from_numpy(roundtrip(p.detach().numpy(), qname)))
        logits = model(torch.tensor([tokens], dtype=torch.long)).logits
    return logits[0, -1].numpy()


def assert_identical_to_llamacpp_converter(ckpt: Path, outtype: str, tmp_path: Path,
                                           extra_args: tuple[str, ...] = ()) -> None:
    """bitconv's GGUF equals what llama.cpp's own convert_hf_to_gguf.py writes for `ckpt`
    (tensors, tokenizer, hyper-parameters); skips only when the converter cannot be fetched."""
    import pytest

    import bitconv
    from llamacpp_oracle import ReferenceUnavailable, compare_gguf, format_diffs, run_reference_converter

    try:
        ref = run_reference_converter(ckpt, outtype, tmp_path / "ref.gguf", extra_args=extra_args)
    except ReferenceUnavailable as e:
        pytest.skip(str(e))
    ours = tmp_path / "ours.gguf"
    bitconv.convert(ckpt, "gguf", outtype, ours, manifest=False)
    diffs = compare_gguf(ours, ref)
    assert not diffs, format_diffs(diffs)
