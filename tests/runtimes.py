"""The judges: real runtimes loading bitconv's artifacts (llama.cpp through llama-cpp-python)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _llama(path: Path, **kw: object):
    import llama_cpp

    # as users load it, extra CPU buffer types (repacked weights) included; the Makefile's portable
    # build has no AMX kernels (tests/test_references.py checks it under CI)
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


def hf_logits_fake_quant(path: Path, tokens: list[int], ggml_type: str, embed_type: str | None,
                         lm_head_type: str | None = None) -> np.ndarray:
    """transformers float32 logits with every matrix replaced by its quantize→dequantize image.

    The rule restated independently of bitconv's plan: routers stay f32, the token embedding takes
    `embed_type` and lm_head `lm_head_type` (both: `ggml_type` when None), every other matrix
    `ggml_type`; a row the block does not divide is f16. llama.cpp running bitconv's file must
    match this closely (only activation rounding differs), which pins the layout exactly even where
    the quantization error itself is large. Encoders: gguf-py's, or for the k-quants bitconv's (which
    tests/quant/test_kquants.py checks byte for byte against ggml's C reference).
    """
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    from bitconv.quant.registry import get_quantizer

    def roundtrip(a: np.ndarray, name: str) -> np.ndarray:
        qt = gguf.GGMLQuantizationType[name.upper()]
        if a.shape[-1] % gguf.GGML_QUANT_SIZES[qt][0]:
            qt = gguf.GGMLQuantizationType.F16
        if qt.name.endswith("_K"):
            data = get_quantizer(qt.name.lower()).quantize(a).data
        else:
            data = gguf.quants.quantize(a, qt)
        return gguf.quants.dequantize(data, qt).reshape(a.shape)

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim < 2 or name.endswith(("mlp.gate.weight", "shared_expert_gate.weight")):
                continue
            qname = ggml_type
            if "embed_tokens" in name:
                qname = embed_type or ggml_type
            elif "lm_head" in name:
                qname = lm_head_type or embed_type or ggml_type
            p.copy_(torch.from_numpy(roundtrip(p.detach().numpy(), qname)))
        logits = model(torch.tensor([tokens], dtype=torch.long)).logits
    return logits[0, -1].numpy()


def gguf_tensor_type(path: Path, name: str) -> str | None:
    """The quant type name of tensor `name` in a GGUF file (None when absent). bitconv's header
    reader: gguf-py's parses the whole 151k-token vocabulary into Python objects (~10 s)."""
    import bitconv

    for t in bitconv.inspect(path).tensors:
        if t.name == name:
            return t.type_name.lower()
    return None


def assert_identical_to_llamacpp_converter(ckpt: Path, outtype: str, tmp_path: Path,
                                           extra_args: tuple[str, ...] = ()) -> None:
    """bitconv's GGUF equals what llama.cpp's own convert_hf_to_gguf.py writes for `ckpt`
    (tensors, tokenizer, hyper-parameters); when the converter cannot be fetched: a skip on a
    developer's machine, a failure under CI."""
    import bitconv
    from llamacpp_oracle import (ReferenceUnavailable, compare_gguf, format_diffs, run_reference_converter,
                                 skip_or_fail)

    try:
        ref = run_reference_converter(ckpt, outtype, tmp_path / "ref.gguf", extra_args=extra_args)
    except ReferenceUnavailable as e:
        skip_or_fail(str(e))
    ours = tmp_path / "ours.gguf"
    bitconv.convert(ckpt, "gguf", outtype, ours, manifest=False)
    diffs = compare_gguf(ours, ref)
    assert not diffs, format_diffs(diffs)
