"""BitNet embedding models → ONNX (sentence-embedding graph, MatMulNBits int2/int4/int8) and
safetensors (bitnet-packed), checked three ways: bitconv's reference forward on each artifact's own
weights against the float32 torch BitLinear reference (pooled-embedding cos ≥ 0.9999), ONNX
Runtime's `sentence_embedding` against the same reference (batched, right- and left-padded), and
`bitconv validate` on the artifacts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bitconv
import fixtures_embedding as fe

pytest.importorskip("onnxruntime")

SENTENCES = ["Hello world", "Instruct: Given a web search query, retrieve relevant passages\nQuery: What is BitNet?",
             "The quick brown fox jumps over the lazy dog."]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fe.make_embedding_checkpoint(tmp_path_factory.mktemp("emb-x") / "bitnet-embedding-tiny")


@pytest.fixture(scope="module")
def ref(ckpt: Path):
    ids = fe.tokenize(ckpt, SENTENCES)
    return ids, fe.torch_embeddings(ckpt, ids, "bitlinear")


@pytest.fixture(scope="module")
def onnx_export(ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("emb-onnx")
    cache: dict[str, Path] = {}

    def get(quant: str) -> Path:
        if quant not in cache:
            cache[quant] = Path(bitconv.convert(ckpt, "onnx", quant, folder / quant, manifest=False).output)
        return cache[quant]

    return get


def onnx_numpy_embeddings(folder: Path, ids: list[list[int]]) -> np.ndarray:
    from bitconv.formats.onnx.reader import OnnxArtifact
    from bitconv.forward import Hparams, ReferenceForward
    from bitconv.validate.embeddings import OnnxWeights

    art = OnnxArtifact(folder)
    hp = Hparams("qwen3", 2, 128, 4, 2, 64, 1e-6, 1e6, 64, ternary=True, pooling=3)
    fwd = ReferenceForward(hp, OnnxWeights(art))
    return np.stack([fwd.embed(i) for i in ids])


def test_onnx_int2_graph(onnx_export, ref):
    import onnx

    ids, want = ref
    folder = onnx_export("int2")
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["last_hidden_state", "sentence_embedding"]
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 14 and not (folder / "genai_config.json").exists()
    assert (folder / "1_Pooling" / "config.json").is_file() and (folder / "modules.json").is_file()
    # the export's own weights (exact 2-bit codes + per-block scale), through bitconv's forward
    assert fe.cos_rows(onnx_numpy_embeddings(folder, ids), want).min() >= 0.9999
    # onnxruntime (MatMulNBits at accuracy level 4: int8 activation blocks on top of BitLinear's)
    right, left = fe.ort_embeddings(folder, ids, "right"), fe.ort_embeddings(folder, ids, "left")
    assert fe.cos_rows(right, want).min() >= 0.999
    assert np.allclose(np.linalg.norm(right, axis=1), 1.0, atol=1e-5)
    assert fe.cos_rows(left, right).min() >= 0.99999  # positions count kept tokens: padding side does not matter


@pytest.mark.parametrize("quant,need", [("f32", 0.9999), ("int8", 0.999), ("int4", 0.999)])
def test_onnx_other_types(onnx_export, ref, quant, need):
    ids, want = ref
    assert fe.cos_rows(fe.ort_embeddings(onnx_export(quant), ids), want).min() >= need


def test_validate_onnx_embeddings(onnx_export, ckpt):
    report = bitconv.validate(onnx_export("int2"), ckpt)
    assert report.passed, report.verdict
    assert report.embeddings is not None and report.embeddings.sentences == 3
    assert "onnxruntime" in report.embeddings.reference and report.embeddings.min_cos >= 0.999
    assert any(c.name.startswith("numpy forward") and c.ok for c in report.checks)
    assert all(t.codes_identical for t in report.tensors if t.type == "int2")


def test_bitnet_packed_safetensors(ckpt, ref, tmp_path):
    from bitconv.convert.arch import mapping_for
    from bitconv.convert.checkpoint import Checkpoint
    from bitconv.forward import ReferenceForward
    from bitconv.validate.logits import reference_hparams
    from bitconv.validate.safetensors import _plan
    from bitconv.validate.sources import CheckpointWeights

    ids, want = ref
    out = tmp_path / "packed"
    res = bitconv.convert(ckpt, "safetensors", format="bitnet-packed", out=out, manifest=False)
    assert res.n_ternary == 14 and (out / "1_Pooling" / "config.json").is_file()
    packed = Checkpoint.open(out)
    assert sum(t.dtype == "U8" for t in packed) == 14 and mapping_for(packed).pooling == 3
    plan = _plan(packed)  # the packed linears decoded as transformers' bitlinear weight_scale says
    fwd = ReferenceForward(reference_hparams(plan, True), CheckpointWeights(plan))
    assert fe.cos_rows(np.stack([fwd.embed(i) for i in ids]), want).min() >= 0.9999
    report = bitconv.validate(out, ckpt)
    assert report.passed, report.verdict
    assert report.embeddings is not None and report.embeddings.min_cos >= 0.9999
    # packed → i2_s: the codes the checkpoint fixes, the same tensors as from the master weights
    gguf_a = bitconv.convert(out, "gguf", "i2_s", tmp_path / "a.gguf", manifest=False).output
    gguf_b = bitconv.convert(ckpt, "gguf", "i2_s", tmp_path / "b.gguf", manifest=False).output
    ta, tb = fe.gguf_digest(gguf_a)["tensors"], fe.gguf_digest(gguf_b)["tensors"]
    assert [t[:4] for t in ta] == [t[:4] for t in tb]
    codes_a = {t[0]: t[4] for t in ta}
    assert all(codes_a[t[0]] == t[4] for t in tb if t[1] != 36)
