"""BitNet embedding models on a Gemma3 backbone (microsoft/bitnet-embedding-270m: Gemma3TextModel,
BitLinear per-projection norms, post-attention / post-FFN norms, embedding × sqrt(hidden), GELU,
sliding-window layers) → GGUF, ONNX and bitnet-packed safetensors.

* Byte identity: the f32 / f16 / i2_s files equal bitnet.cpp's `convert-bitnet-embedding-to-gguf.py`
  on the same tiny fixture (tests/golden/bitnet_embedding/golden-gemma3.json, made by make_golden.py).
  Gemma's own vocabulary is not obtainable offline: the fixture's tokenizer is a small one in Gemma's
  layout (tests/fixtures_embedding_gemma3.py), which the script reads the same way.
* Numerics: bitconv's reference forward on each file's tensors, and ONNX Runtime on the ONNX export,
  against transformers' Gemma3TextModel with the projections replaced by the BitLinear reference
  (pooled-embedding cos ≥ 0.9999 for ternary outputs; master weights for f16 / f32).
* Sliding windows: a fixture with a window of 5 and six layers (five local, RoPE base 10000; one
  global, base 1e6), where the window and both bases change every embedding.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import bitconv
import fixtures_embedding as fe
import fixtures_embedding_gemma3 as fg
from cli_helpers import error_line, run_cli

GOLDEN = json.loads((Path(__file__).parent / "golden" / "bitnet_embedding" / "golden-gemma3.json").read_text())
SENTENCES = ["Hello world", "Instruct: Given a web search query, retrieve relevant passages\nQuery: What is BitNet?",
             "The quick brown fox jumps over the lazy dog."]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = GOLDEN["fixture"]
    return fg.make_gemma3_embedding_checkpoint(tmp_path_factory.mktemp("g3") / f["name"], dtype=f["dtype"],
                                               seed=f["seed"])


@pytest.fixture(scope="module")
def outputs(ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("g3-out")
    cache: dict[tuple[str, str], Path] = {}

    def get(quant: str, fmt: str = "gguf") -> Path:
        if (quant, fmt) not in cache:
            out = folder / (f"{quant}.gguf" if fmt == "gguf" else f"{fmt}-{quant}")
            cache[quant, fmt] = Path(bitconv.convert(ckpt, fmt, quant, out, manifest=False).output)
        return cache[quant, fmt]

    return get


@pytest.fixture(scope="module")
def torch_ref(ckpt: Path):
    ids = fe.tokenize(ckpt, SENTENCES)
    return ids, {mode: fe.torch_embeddings(ckpt, ids, mode) for mode in ("bitlinear", "master")}


def test_fixture_is_the_golden_one(ckpt):
    assert fe.checkpoint_digest(ckpt) == GOLDEN["fixture"]["inputs"], \
        "the fixture changed: regenerate tests/golden/bitnet_embedding/golden-gemma3.json (make_golden.py)"


@pytest.mark.parametrize("quant", ["f32", "f16", "i2_s"])
def test_byte_identical_to_bitnet_cpp_converter(outputs, quant):
    fe.assert_same_gguf_digest(fe.gguf_digest(outputs(quant)), GOLDEN["files"][quant])


def test_gemma_norms_vocabulary_and_metadata(outputs, ckpt):
    """What makes the file Gemma3's: +1 on Gemma3 norms only, the SentencePiece-style vocabulary."""
    from safetensors.torch import load_file

    from bitconv.convert.gguf_header import read_gguf_summary
    from bitconv.convert.gguf_source import GGUFSource

    hf = load_file(str(ckpt / "model.safetensors"))
    got = {t.name: t.dequantize() for t in GGUFSource.open(outputs("f32"))}
    w = lambda n: hf[n].float().numpy()  # noqa: E731
    assert np.array_equal(got["blk.1.post_ffw_norm.weight"], w("layers.1.post_feedforward_layernorm.weight") + 1)
    assert np.array_equal(got["blk.0.attn_q_norm.weight"], w("layers.0.self_attn.q_norm.weight") + 1)
    assert np.array_equal(got["output_norm.weight"], w("norm.weight") + 1)
    assert np.array_equal(got["blk.0.ffn_up_norm_in.weight"], w("layers.0.mlp.up_proj.norm.weight"))
    meta = read_gguf_summary(outputs("i2_s"), full_arrays=True).metadata
    assert meta["general.architecture"] == "gemma3" and meta["tokenizer.ggml.model"] == "llama"
    assert meta["gemma3.pooling_type"] == 3 and meta["gemma3.attention.key_length"] == 64
    tokens, types, scores = (meta[f"tokenizer.ggml.{k}"] for k in ("tokens", "token_type", "scores"))
    assert tokens[fg.EOS_ID] == "<eos>" and types[fg.EOS_ID] == 3 and scores[fg.EOS_ID] == -1000.0
    assert tokens[7] == "<0x00>" and types[7] == 6
    assert tokens.index(fg.PLAIN_ADDED) and types[tokens.index(fg.PLAIN_ADDED)] == 4
    assert tokens[-1] == f"[PAD{fg.VOCAB_SIZE - 1}]" and types[-1] == 5 and scores[-1] == -10000.0
    first_merge = "".join(json.loads((ckpt / "tokenizer.json").read_text())["model"]["merges"][0])
    assert scores[tokens.index(first_merge)] == 0.0 and str(scores[tokens.index(first_merge)]) == "-0.0"


@pytest.mark.parametrize("quant,mode,need", [("i2_s", "bitlinear", 0.9999), ("tl1", "bitlinear", 0.9999),
                                             ("q8_0", "bitlinear", 0.999), ("f16", "master", 0.9999),
                                             ("f32", "master", 0.99999)])
def test_gguf_embeddings_match_the_torch_reference(outputs, torch_ref, quant, mode, need):
    ids, ref = torch_ref
    got = fe.gguf_embeddings(outputs(quant), ids, ternary=mode == "bitlinear")
    assert fe.cos_rows(got, ref[mode]).min() >= need


@pytest.mark.parametrize("quant", ["int2", "f16"])
def test_onnx_sentence_embeddings(outputs, torch_ref, quant):
    pytest.importorskip("onnxruntime")
    ids, ref = torch_ref
    for side in ("right", "left"):
        assert fe.cos_rows(fe.ort_embeddings(outputs(quant, "onnx"), ids, side), ref["bitlinear"]).min() >= 0.9999


def test_tl2_on_a_k256_fixture(tmp_path):
    """TL2 needs K ≥ 256: hidden 256; its codes and scales are i2_s's, so are the embeddings."""
    ckpt = fg.make_gemma3_embedding_checkpoint(tmp_path / "g256", hidden=256, intermediate=512, layers=1)
    tl2 = Path(bitconv.convert(ckpt, "gguf", "tl2", tmp_path / "tl2.gguf", manifest=False).output)
    ids = fe.tokenize(ckpt, SENTENCES[:2])
    ref = fe.torch_embeddings(ckpt, ids, "bitlinear")
    assert fe.cos_rows(fe.gguf_embeddings(tl2, ids, ternary=True), ref).min() >= 0.9999
    report = bitconv.validate(tl2, ckpt)
    assert report.passed, report.verdict


def test_validate_gguf_onnx_and_packed(outputs, ckpt):
    for artifact in (outputs("i2_s"), outputs("f16"), outputs("int2", "onnx"), outputs("bitnet-packed", "safetensors")):
        report = bitconv.validate(artifact, ckpt)
        assert report.passed, (artifact, report.verdict)
        e = report.embeddings
        assert e is not None and e.sentences == 3 and e.pooling == "last" and e.min_cos >= 0.999


def test_packed_checkpoint_converts_to_the_same_i2_s(outputs, tmp_path):
    """bitnet-packed keeps the HF norms as stored (no + 1 twice) and the codes; its weight_scale holds
    1/s as float32, so an I2_S scale read back from it may differ from the script's in the last bit."""
    from bitconv.convert.gguf_source import GGUFSource

    packed = outputs("bitnet-packed", "safetensors")
    again = Path(bitconv.convert(packed, "gguf", "i2_s", tmp_path / "again.gguf", manifest=False).output)
    want = {t.name: t for t in GGUFSource.open(outputs("i2_s"))}
    got = {t.name: t for t in GGUFSource.open(again)}
    assert list(got) == list(want)
    n_ternary = 0
    for name, t in got.items():
        assert t.type_name == want[name].type_name and t.shape == want[name].shape
        if t.type_name == "I2_S":
            (codes, scale), (codes_w, scale_w) = t.codes_and_scale(), want[name].codes_and_scale()
            assert np.array_equal(codes, codes_w) and abs(scale / scale_w - 1) < 1e-6
            n_ternary += 1
        else:
            assert np.array_equal(t.raw(), want[name].raw()), name
    assert n_ternary == 14


def test_sliding_windows_and_two_rope_bases(tmp_path):
    """Window 5, six layers: five local (base 10000), one global (base 1e6). The torch model applies
    both; the GGUF the script writes has no window key, so the check on it uses validate's reference
    forward of the checkpoint (config.json's window) and the ONNX graph, which masks by the window."""
    ckpt = fg.make_gemma3_embedding_checkpoint(tmp_path / "swa", layers=6, sliding_window=5, rope_theta=1e6)
    ids = fe.tokenize(ckpt, SENTENCES[1:])
    assert min(map(len, ids)) > 5
    ref = fe.torch_embeddings(ckpt, ids, "bitlinear")
    from bitconv.convert.plan import plan_checkpoint
    from bitconv.forward import ReferenceForward
    from bitconv.validate.logits import reference_hparams
    from bitconv.validate.sources import CheckpointWeights

    _, plan = plan_checkpoint(ckpt, "i2_s")
    hp = reference_hparams(plan, ternary=True)
    assert hp.sliding_window == 5 and hp.layer_rope_base(0) == 10000.0 and hp.layer_rope_base(5) == 1e6
    fwd = ReferenceForward(hp, CheckpointWeights(plan))
    assert fe.cos_rows(np.stack([fwd.embed(i) for i in ids]), ref).min() >= 0.9999
    no_window = ReferenceForward(dataclasses.replace(hp, sliding_window=None), CheckpointWeights(plan))
    assert fe.cos_rows(np.stack([no_window.embed(i) for i in ids]), ref).min() < 0.999  # the window matters
    if importlib.util.find_spec("onnxruntime") is not None:
        onnx = Path(bitconv.convert(ckpt, "onnx", "int2", tmp_path / "onnx", manifest=False).output)
        for side in ("right", "left"):
            assert fe.cos_rows(fe.ort_embeddings(onnx, ids, side), ref).min() >= 0.9999


def test_refusals(ckpt, tmp_path):
    proc = run_cli("hf2gguf", ckpt, "--target", "llama.cpp", "-o", tmp_path / "x.gguf")
    assert proc.returncode == 2 and "per-projection norms" in error_line(proc)
    for key, value, why in (("query_pre_attn_scalar", 32, "query_pre_attn_scalar 32"),
                            ("hidden_activation", "gelu", "activation gelu"),
                            ("use_bidirectional_attention", True, "bidirectional attention"),
                            ("rope_local_base_freq", 20000.0, "local RoPE base 20000.0")):
        bad = tmp_path / key
        shutil.copytree(ckpt, bad)
        cfg = json.loads((bad / "config.json").read_text())
        cfg[key] = value
        (bad / "config.json").write_text(json.dumps(cfg))
        proc = run_cli("hf2gguf", bad, "-q", "i2_s", "-o", tmp_path / "x.gguf")
        assert proc.returncode == 2 and why in error_line(proc), proc.stderr
        assert not (tmp_path / "x.gguf").exists()
