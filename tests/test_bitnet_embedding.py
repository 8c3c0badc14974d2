"""BitNet embedding models (microsoft/bitnet-embedding-0.6b: Qwen3 backbone, BitLinear per-projection
norms, last-token pooling) → GGUF as bitnet.cpp's `convert-bitnet-embedding-to-gguf.py` writes it.

* Byte identity: the f32 / f16 / i2_s files equal the upstream script's output on the same tiny
  fixture (tests/golden/bitnet_embedding: digests of its files, made by make_golden.py).
* Numerics: bitconv's reference forward on each file's tensors against the float32 torch
  reference of tests/fixtures_embedding.py (transformers' Qwen3Model with the projections replaced
  by the BitLinear reference): pooled-embedding cos ≥ 0.9999 for the ternary files (BitLinear
  reference), for f16 / f32 against the same forward on the master weights.
No runtime here runs the architecture, so `--target llama.cpp` is refused in one line."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import bitconv
import fixtures_embedding as fe
from cli_helpers import error_line, run_cli

GOLDEN = json.loads((Path(__file__).parent / "golden" / "bitnet_embedding" / "golden.json").read_text())
SENTENCES = ["Hello world", "Instruct: Given a web search query, retrieve relevant passages\nQuery: What is BitNet?",
             "The quick brown fox jumps over the lazy dog."]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The golden fixture (same name: general.name is the folder's)."""
    f = GOLDEN["fixture"]
    return fe.make_embedding_checkpoint(tmp_path_factory.mktemp("emb") / f["name"], dtype=f["dtype"], seed=f["seed"])


@pytest.fixture(scope="module")
def outputs(ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    """quant → the GGUF bitconv writes (converted once per module)."""
    folder = tmp_path_factory.mktemp("emb-out")
    cache: dict[str, Path] = {}

    def get(quant: str) -> Path:
        if quant not in cache:
            cache[quant] = Path(bitconv.convert(ckpt, "gguf", quant, folder / f"{quant}.gguf", manifest=False).output)
        return cache[quant]

    return get


@pytest.fixture(scope="module")
def torch_ref(ckpt: Path):
    ids = fe.tokenize(ckpt, SENTENCES)
    return ids, {mode: fe.torch_embeddings(ckpt, ids, mode) for mode in ("bitlinear", "master")}


def test_fixture_is_the_golden_one(ckpt):
    assert fe.checkpoint_digest(ckpt) == GOLDEN["fixture"]["inputs"], \
        "the fixture changed: regenerate tests/golden/bitnet_embedding/golden.json (make_golden.py)"


@pytest.mark.parametrize("quant", ["f32", "f16", "i2_s"])
def test_byte_identical_to_bitnet_cpp_converter(outputs, quant):
    fe.assert_same_gguf_digest(fe.gguf_digest(outputs(quant)), GOLDEN["files"][quant])


@pytest.mark.parametrize("quant,mode,need", [("i2_s", "bitlinear", 0.9999), ("tl1", "bitlinear", 0.9999),
                                             ("q8_0", "bitlinear", 0.999), ("f16", "master", 0.9999),
                                             ("f32", "master", 0.99999)])
def test_embeddings_match_the_torch_reference(outputs, torch_ref, quant, mode, need):
    ids, ref = torch_ref
    got = fe.gguf_embeddings(outputs(quant), ids, ternary=mode == "bitlinear")
    assert fe.cos_rows(got, ref[mode]).min() >= need


def test_tl2_on_a_k256_fixture(tmp_path):
    """TL2 needs K ≥ 256: hidden 256; codes and scales equal i2_s's, so are the embeddings."""
    ckpt = fe.make_embedding_checkpoint(tmp_path / "emb256", hidden=256, intermediate=768, layers=1)
    tl2 = Path(bitconv.convert(ckpt, "gguf", "tl2", tmp_path / "tl2.gguf", manifest=False).output)
    ids = fe.tokenize(ckpt, SENTENCES[:2])
    ref = fe.torch_embeddings(ckpt, ids, "bitlinear")
    assert fe.cos_rows(fe.gguf_embeddings(tl2, ids, ternary=True), ref).min() >= 0.9999
    report = bitconv.validate(tl2, ckpt)
    assert report.passed, report.verdict
    assert all(t.codes_identical for t in report.tensors if t.type == "tl2")


def test_validate_reports_sentence_embeddings(outputs, ckpt):
    for quant, label in (("i2_s", "BitLinear"), ("f16", "master weights")):
        report = bitconv.validate(outputs(quant), ckpt)
        assert report.passed, report.verdict
        e = report.embeddings
        assert e is not None and report.logits is None
        assert e.sentences == 3 and e.pooling == "last" and e.min_cos >= 0.9999 and label in e.reference
        assert all(t.bytes_identical for t in report.tensors)


def test_validate_fails_a_wrong_pooling_type(outputs, ckpt, tmp_path):
    bad = tmp_path / "ckpt-mean"
    bad.mkdir()
    for p in ckpt.iterdir():
        if p.is_file():
            os.link(p, bad / p.name)
    (bad / "1_Pooling").mkdir()
    pool_cfg = json.loads((ckpt / "1_Pooling" / "config.json").read_text())
    pool_cfg.update(pooling_mode_lasttoken=False, pooling_mode_mean_tokens=True)
    (bad / "1_Pooling" / "config.json").write_text(json.dumps(pool_cfg))
    report = bitconv.validate(outputs("i2_s"), bad)
    assert not report.passed and "pooling" in report.verdict


def test_plan_types_and_metadata(outputs):
    from bitconv.convert.gguf_header import read_gguf_summary

    s = read_gguf_summary(outputs("q8_0"))
    types = {t.name: t.type_name for t in s.tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_q_norm_in.weight"] == "F16"
    assert types["blk.0.ffn_down.weight"] == "Q8_0"
    assert s.metadata["qwen3.pooling_type"] == 3 and s.metadata["tokenizer.ggml.add_eos_token"] is True
    assert s.metadata["tokenizer.ggml.eos_token_id"] == fe.EOS_ID and "output.weight" not in types


def test_refusals(ckpt, tmp_path):
    proc = run_cli("hf2gguf", ckpt, "--target", "llama.cpp", "-o", tmp_path / "x.gguf")
    assert proc.returncode == 2 and "per-projection norms" in error_line(proc)
    proc = run_cli("hf2gguf", ckpt, "--quant", "q4_0", "-o", tmp_path / "x.gguf")
    assert proc.returncode == 2 and "f32, f16, q8_0, i2_s, tl1, tl2" in error_line(proc)
    plain = tmp_path / "plain"
    plain.mkdir()
    for p in ckpt.iterdir():
        if p.is_file() and p.name != "model.safetensors":
            os.link(p, plain / p.name)
    from safetensors.torch import load_file, save_file

    tensors = {k: v for k, v in load_file(str(ckpt / "model.safetensors")).items() if not k.endswith("proj.norm.weight")}
    save_file(tensors, str(plain / "model.safetensors"))
    with pytest.raises(bitconv.errors.UnsupportedArchitecture, match="per-projection norms"):
        bitconv.convert(plain, "gguf", "f16", tmp_path / "p.gguf", dry_run=True)


def test_names_with_a_model_prefix_and_pooling_rules(tmp_path):
    from bitconv.convert.arch.bitnet_embedding import BitnetEmbeddingQwen3Mapping, read_pooling
    from bitconv.forward import pool

    m = BitnetEmbeddingQwen3Mapping({"num_hidden_layers": 8, "hidden_size": 64, "num_attention_heads": 4,
                                     "vocab_size": 10, "intermediate_size": 96})
    assert m.gguf_name("model.layers.3.self_attn.q_proj.norm.weight") == "blk.3.attn_q_norm_in.weight"
    assert m.gguf_name("layers.7.post_attention_layernorm.weight") == "blk.7.ffn_norm.weight"
    assert m.gguf_name("model.embed_tokens.weight") == "token_embd.weight"
    assert read_pooling(tmp_path) == (1, True)  # no modules.json: the script's default, MEAN
    (tmp_path / "modules.json").write_text(json.dumps([{"type": "x.Transformer", "path": ""},
                                                       {"type": "x.Pooling", "path": "p"}]))
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True,
                                                            "pooling_mode_lasttoken": True}))
    assert read_pooling(tmp_path) == (2, False)  # CLS wins over last token, as in the script; no Normalize
    h = np.arange(12, dtype=np.float32).reshape(3, 4)
    for pooling, want in ((1, h.mean(0)), (2, h[0]), (3, h[-1])):
        assert np.allclose(pool(h, pooling), want / np.linalg.norm(want))


def test_nonfinite_linear_is_refused(ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "nan"
    bad.mkdir()
    for p in ckpt.iterdir():
        if p.is_file() and p.name != "model.safetensors":
            os.link(p, bad / p.name)
    (bad / "1_Pooling").mkdir()
    os.link(ckpt / "1_Pooling" / "config.json", bad / "1_Pooling" / "config.json")
    tensors = load_file(str(ckpt / "model.safetensors"))
    tensors["layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(bitconv.errors.QuantizationError, match="NaN"):
        bitconv.convert(bad, "gguf", "i2_s", tmp_path / "x.gguf", manifest=False)
    assert not (tmp_path / "x.gguf").exists()
