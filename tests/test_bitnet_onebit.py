"""1bitLLM-style BitNet → tq1_0 / tq2_0 (and float reference files) for mainline llama.cpp:
byte-identical to llama.cpp's own converter, and judged by llama.cpp against the ternary-weights
reference of DESIGN.md."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bitconv
import fixtures_onebit
from cli_helpers import run_cli
from runtimes import assert_identical_to_llamacpp_converter, cos, llama_last_logits, llama_tokenize

pytestmark = pytest.mark.slow
TOKENS = [1, 50, 60, 70, 80, 90, 100, 200, 300, 400, 500, 600, 700]


@pytest.fixture(scope="session")
def onebit(tmp_path_factory: pytest.TempPathFactory):
    cache: dict[str, Path] = {}

    def make(dtype: str = "bf16", **kw) -> Path:
        key = f"{dtype}-{sorted(kw.items())}"
        if key not in cache:
            cache[key] = fixtures_onebit.make_onebit_checkpoint(tmp_path_factory.mktemp("onebit") / "bitnet",
                                                                dtype=dtype, **kw)
        return cache[key]

    return make


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
@pytest.mark.parametrize("quant", ["tq1_0", "tq2_0", "f16"])
def test_identical_to_llamacpp_converter(onebit, dtype, quant, tmp_path):
    assert_identical_to_llamacpp_converter(onebit(dtype), quant, tmp_path)


@pytest.mark.parametrize("quant,min_cos", [("tq1_0", 0.999), ("tq2_0", 0.999), ("f16", 0.9999)])
def test_llamacpp_logits_match_ternary_reference(onebit, quant, min_cos, tmp_path):
    pytest.importorskip("llama_cpp")
    ckpt = onebit("bf16")
    out = tmp_path / f"bitnet-{quant}.gguf"
    bitconv.convert(ckpt, "gguf", quant, out, manifest=False)
    ref = fixtures_onebit.ternary_weights_logits(ckpt, TOKENS)
    got = llama_last_logits(out, TOKENS)
    assert cos(got, ref) >= min_cos
    assert int(np.argmax(got)) == int(np.argmax(ref))


def test_sentencepiece_vocab_tokenizes_like_sentencepiece(onebit, tmp_path):
    pytest.importorskip("llama_cpp")
    import sentencepiece as spm

    ckpt = onebit("bf16")
    out = tmp_path / "bitnet-tq2_0.gguf"
    bitconv.convert(ckpt, "gguf", "tq2_0", out, manifest=False)
    sp = spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
    texts = ["hello world", "the quick brown fox", "ternary weights bitnet model", "numpy kernel 123"]
    for text, ids in zip(texts, llama_tokenize(out, texts)):
        assert ids == sp.encode(text), text


def test_tq_needs_rows_of_256(onebit, tmp_path):
    ckpt = onebit("bf16", intermediate=640)
    proc = run_cli("hf2gguf", str(ckpt), "--quant", "tq2_0", "-o", str(tmp_path / "x.gguf"))
    assert proc.returncode == 2, proc.stderr
    assert "ffn_down.weight" in proc.stderr and "multiple of 256" in proc.stderr
    assert not (tmp_path / "x.gguf").exists()
