"""Interop judged by llama.cpp: bitconv's GGUF loads in llama-cpp-python and its logits match
transformers' float32 logits of the same checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bitconv
import fixtures
from runtimes import cos, gguf_tensor_type, hf_logits_fake_quant, llama_last_logits, llama_tokenize

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.slow

TOKENS = [9707, 1879, 11, 419, 374, 264, 1273, 315, 279, 15099, 13, 220, 16, 17, 18, 151644, 872, 198]
# vs transformers on the original float32 weights (the thresholds)
# (q4_0/q4_1: 0.97 since token_embd is 4-bit too, as llama-quantize writes it; these tiny random
# models drift further than trained ones: measured 0.9739-0.9789 where q8_0 embeddings gave > 0.98)
MIN_COS = {"f32": 0.99999, "f16": 0.9999, "bf16": 0.999, "q8_0": 0.999, "q4_0": 0.97, "q4_1": 0.97,
           "q5_0": 0.98, "q5_1": 0.98}
# vs transformers running the same quantize→dequantize image of every weight: only activation
# rounding differs, so this pins the layout exactly whatever the quantization error itself is.
MIN_COS_FAKE_QUANT = 0.999
SAME_ARGMAX = {"f32", "f16", "q8_0"}


def _convert(ckpt: Path, quant: str, tmp_path: Path) -> Path:
    out = tmp_path / f"{ckpt.name}-{quant}.gguf"
    bitconv.convert(ckpt, "gguf", quant, out, manifest=False)
    return out


def _check(ckpt: Path, quant: str, tmp_path: Path) -> None:
    ref = fixtures.hf_logits(ckpt, TOKENS)
    out = _convert(ckpt, quant, tmp_path)
    got = llama_last_logits(out, TOKENS)
    c = cos(got, ref)
    assert c >= MIN_COS[quant], f"{ckpt.name} {quant}: cos {c:.6f} < {MIN_COS[quant]}"
    if quant in SAME_ARGMAX:
        assert int(np.argmax(got)) == int(np.argmax(ref)), f"{ckpt.name} {quant}: argmax differs"
    if quant.startswith("q"):
        # token_embd/output types as written (llama-quantize's rules put output at q6_k or q8_0)
        embd = gguf_tensor_type(out, "token_embd.weight")
        fake = hf_logits_fake_quant(ckpt, TOKENS, quant, embd, gguf_tensor_type(out, "output.weight") or embd)
        c_fake = cos(got, fake)
        assert c_fake >= MIN_COS_FAKE_QUANT, f"{ckpt.name} {quant}: cos vs fake-quantized {c_fake:.6f}"


# Every fixture (dtype, shards, config style) once, the types taking turns so each architecture
# meets f16, q8_0 and q4_0 across its two fixtures and the other tests (tests/test_byte_identity.py
# holds every fixture's conversion to llama.cpp's own converter byte for byte).
LOGITS_CASES = [(spec, ("f16", "q8_0", "q4_0")[i % 3]) for i, spec in enumerate(fixtures.FIXTURE_MATRIX)]


@pytest.mark.parametrize(("spec", "quant"), LOGITS_CASES, ids=lambda v: "-".join(map(str, v)) if isinstance(v, tuple) else v)
def test_logits_match_transformers(spec, quant, checkpoint_factory, tmp_path):
    _check(checkpoint_factory(*spec), quant, tmp_path)


@pytest.mark.parametrize(("arch", "quant"), [("qwen2", "f32"), ("qwen3moe", "bf16"), ("qwen2", "q4_1"),
                                            ("qwen3moe", "q5_0"), ("qwen2", "q5_1"), ("qwen3moe", "q4_0")])
def test_other_types_match_transformers(arch, quant, checkpoint_factory, tmp_path):
    _check(checkpoint_factory(arch, "bf16", 1, "hub"), quant, tmp_path)


def test_tied_embeddings(checkpoint_factory, tmp_path):
    ckpt = checkpoint_factory("qwen2", "bf16", 1, "hub", tie_word_embeddings=True)
    _check(ckpt, "q8_0", tmp_path)


TEXTS = [
    "Hello world",
    "The year 2024 had 366 days; 3.14159 and 1,000,000.",
    "我想在apple工作1314151天～ 你好，世界！",
    "emoji 🚀🦙 and 😶‍🌫️ together",
    "   leading spaces\n\n\ttabs\r\n  and   runs    of     spaces   ",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>code <tool_call>{\"a\": 1}</tool_call>",
    "I've been 'told he's there, 'RE you sure? ------======= нещо на Български",
]


def test_tokenizer_matches_hf(qwen2_checkpoint, tmp_path):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(qwen2_checkpoint)
    gguf_path = _convert(qwen2_checkpoint, "q8_0", tmp_path)
    ours = llama_tokenize(gguf_path, TEXTS)
    for text, ids in zip(TEXTS, ours):
        assert ids == hf(text, add_special_tokens=False).input_ids, text
    assert ours[0] == [9707, 1879]
