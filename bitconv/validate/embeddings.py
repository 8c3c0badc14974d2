"""Embedding models (BitNet embedding): pooled sentence embeddings instead of logits.

Each sentence is tokenized with the reference's tokenizer.json (no special tokens) and gets the
model's EOS appended, as llama.cpp does for these files (`add_eos_token`) and the
sentence-transformers tokenizer does: the pooled token. The artifact's embedding (pooled as the
checkpoint's `1_Pooling/config.json` says, L2-normalized) is compared with the reference's — the
numpy forward of the checkpoint's weights: BitLinear (ternary weights, int8 activations, the
per-projection norms) for a ternary artifact, the master weights in float for an f32 / f16 file —
one cos per sentence; the minimum is held to the artifact type's threshold.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UsageError
from ..forward import POOLING_NAMES, Hparams, ReferenceForward, WeightSource, pool
from .checks import cos
from .logits import _RECENT, reference_hparams
from .report import Check, EmbeddingCheck, ValidationReport
from .sources import CheckpointWeights

#: sentences embedded by default (a query with the model's instruction prefix, a document, a short text)
DEFAULT_SENTENCES = (
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: What is BitNet?",
    "BitNet b1.58 stores every weight of its linear layers as -1, 0 or +1 and runs them with 8-bit activations.",
    "The quick brown fox jumps over the lazy dog.",
)
#: the most a ternary artifact's embeddings are held to: with int8 activations, a last-bit difference in
#: float order (onnxruntime's MatMul, another summation) can flip one activation's rounding, which a
#: random tiny model carries to the pooled token (an ONNX f32 export measured 0.99992); the figure of the
#: BitNet embedding issue; an f16 export (float16 activations, norms and table) measured 0.99956: 0.999
TERNARY_EMBEDDING_MAX_NEED = {"f16": 0.999}
_TERNARY_DEFAULT_MAX_NEED = 0.9999
REFERENCE_BITLINEAR = "numpy forward of the HF weights (BitLinear: ternary weights, int8 activations, per-projection norms)"
REFERENCE_MASTER = "numpy forward of the HF master weights (float, per-projection norms)"


def sentence_ids(reference: Path, mapping: Any, prompt: str | None, tokens: list[int] | None) -> list[list[int]]:
    """The id lists to embed: `tokens` as given, else the prompt (default: DEFAULT_SENTENCES) through
    the reference's tokenizer.json, each with the model's EOS appended (and its BOS first, where the
    runtime puts one: Gemma)."""
    if tokens:
        return [list(tokens)]
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UsageError("tokenizing the sentences needs the `tokenizers` package; pass --tokens instead") from None
    path = reference / "tokenizer.json"
    if not path.is_file():
        raise UsageError(f"{reference} has no tokenizer.json; pass --tokens")
    tok = Tokenizer.from_file(str(path))
    texts = [prompt] if prompt else list(DEFAULT_SENTENCES)
    bos = [] if mapping.bos_id is None else [mapping.bos_id]
    return [bos + tok.encode(t, add_special_tokens=False).ids + [mapping.eos_id] for t in texts]


def _embed(fwd: ReferenceForward, ids: list[int], normalize: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    out = fwd.run(ids, logits=False)
    assert out.final is not None and fwd.hp.pooling is not None
    return pool(out.final, fwd.hp.pooling, normalize), out.hidden


def reference_embeddings(reference: Path, plan: Any, sentences: list[list[int]],
                         ternary: bool) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """The checkpoint's embedding (and hidden states) of each sentence, cached per checkpoint."""
    hp = reference_hparams(plan, ternary)
    fwd = ReferenceForward(hp, CheckpointWeights(plan))
    return [_RECENT.get_or_make(_RECENT.key(reference, "embed", tuple(ids), ternary),
                                lambda ids=ids: _embed(fwd, ids, plan.mapping.normalize)) for ids in sentences]


def embedding_check(got: list[np.ndarray], want: list[np.ndarray], sentences: list[list[int]], label: str,
                    need: float, pooling: int, quant: str = "") -> EmbeddingCheck:
    if label.endswith(REFERENCE_BITLINEAR):
        need = min(need, TERNARY_EMBEDDING_MAX_NEED.get(quant, _TERNARY_DEFAULT_MAX_NEED))
    coses = [cos(a, b) for a, b in zip(got, want)]
    worst = min(coses) if coses else 0.0
    return EmbeddingCheck(label, len(coses), [len(s) for s in sentences], coses, worst, need, worst >= need,
                          POOLING_NAMES.get(pooling, str(pooling)))


def compare_embeddings(report: ValidationReport, art: WeightSource, hp_art: Hparams, plan: Any, reference: Path,
                       ternary: bool, prompt: str | None, tokens: list[int] | None,
                       thresholds: dict[str, float]) -> None:
    """The numpy forward on the artifact's weights and on the checkpoint's: hidden-state cos per
    layer (first sentence) and the pooled embeddings' cos per sentence (report.embeddings)."""
    mapping = plan.mapping
    if hp_art.pooling != mapping.pooling:
        report.checks.append(Check("pooling type", False, f"the artifact pools {POOLING_NAMES.get(hp_art.pooling, '?')}"
                                   f", the checkpoint's modules.json says {POOLING_NAMES[mapping.pooling]}"))
        return
    sentences = sentence_ids(reference, mapping, prompt, tokens)
    refs = reference_embeddings(reference, plan, sentences, ternary)
    fwd = ReferenceForward(hp_art, art)
    got = [_embed(fwd, ids, mapping.normalize) for ids in sentences]
    report.layers = [{"layer": i, "cos": cos(a, b)} for i, (a, b) in enumerate(zip(got[0][1], refs[0][1]))]
    report.embeddings = embedding_check([g[0] for g in got], [r[0] for r in refs], sentences,
                                        REFERENCE_BITLINEAR if ternary else REFERENCE_MASTER,
                                        thresholds.get(report.quant, 0.0), mapping.pooling, report.quant)


def compare_runtime_embeddings(report: ValidationReport, plan: Any, reference: Path, ternary: bool,
                               prompt: str | None, tokens: list[int] | None, thresholds: dict[str, float],
                               run: Callable[[list[list[int]]], list[np.ndarray]], label_prefix: str) -> None:
    """A runtime's embeddings (`run`: id lists → pooled embeddings) against the numpy reference."""
    sentences = sentence_ids(reference, plan.mapping, prompt, tokens)
    refs = reference_embeddings(reference, plan, sentences, ternary)
    report.embeddings = embedding_check(run(sentences), [r[0] for r in refs], sentences,
                                        f"{label_prefix} vs " + (REFERENCE_BITLINEAR if ternary else REFERENCE_MASTER),
                                        thresholds.get(report.quant, 0.0), plan.mapping.pooling, report.quant)


# --- ONNX embedding graphs ----------------------------------------------------------------------------

class OnnxWeights(WeightSource):
    """An ONNX export's weights in GGUF naming for the numpy forward: int2 ternary linears as codes +
    scale, the other matrices dequantized, norms as stored."""

    def __init__(self, art: Any) -> None:
        self.art = art
        self.by_name = {w.name: w for w in art.weights()}

    def get(self, name: str) -> Any:
        from ..forward import TernaryWeight

        w = self.by_name.get(name)
        if w is None:
            return None
        if w.kind == "nbits" and int(w.attrs.get("bits", 0)) == 2:
            t, codes = self.art.codes(w)
            return TernaryWeight(codes.astype(np.int8), np.float32(t.scales.reshape(-1)[0]))
        return np.asarray(self.art.dense(w), dtype=np.float32)


def onnx_embeddings(model_path: Path, sentences: list[list[int]]) -> list[np.ndarray]:
    """onnxruntime's `sentence_embedding` of the sentences, run as one right-padded batch."""
    import onnxruntime as ort

    from ..quiet import quiet_dependencies

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    with quiet_dependencies():
        sess = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
    width = max(len(s) for s in sentences)
    ids = np.zeros((len(sentences), width), np.int64)
    mask = np.zeros_like(ids)
    for r, s in enumerate(sentences):
        ids[r, :len(s)], mask[r, :len(s)] = s, 1
    out = sess.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    return [np.asarray(row, dtype=np.float32) for row in out]


def compare_onnx_embeddings(report: ValidationReport, art: Any, reference: Path, prompt: str | None,
                            tokens: list[int] | None, thresholds: dict[str, float]) -> None:
    """An ONNX embedding export: the numpy forward on its weights (per-layer cos, and its embeddings as
    a check) and onnxruntime's `sentence_embedding` (report.embeddings) against the BitLinear reference."""
    from ..convert.plan import plan_checkpoint
    from ..errors import BitconvError

    try:
        _, plan = plan_checkpoint(reference, "i2_s")  # the ternary model, as every ONNX export holds it
    except BitconvError as e:
        report.checks.append(Check("reference", False, str(e)))
        return
    mapping = plan.mapping
    hp = dataclasses.replace(reference_hparams(plan, True))
    sentences = sentence_ids(reference, mapping, prompt, tokens)
    refs = reference_embeddings(reference, plan, sentences, True)
    fwd = ReferenceForward(hp, OnnxWeights(art))
    got = [_embed(fwd, ids, mapping.normalize) for ids in sentences]
    report.layers = [{"layer": i, "cos": cos(a, b)} for i, (a, b) in enumerate(zip(got[0][1], refs[0][1]))]
    numpy_check = embedding_check([g[0] for g in got], [r[0] for r in refs], sentences, REFERENCE_BITLINEAR,
                                  thresholds.get(report.quant, 0.0), mapping.pooling, report.quant)
    report.checks.append(Check("numpy forward of the artifact's weights", numpy_check.ok,
                               f"sentence embeddings cos ≥ {numpy_check.min_cos:.6f} vs {REFERENCE_BITLINEAR}"))
    try:
        ort_out = onnx_embeddings(art.model_path, sentences)
    except Exception as e:  # onnxruntime raises its own exception types
        report.checks.append(Check("onnxruntime run", False, str(e).strip().splitlines()[0][:300]))
        return
    report.embeddings = embedding_check(ort_out, [r[0] for r in refs], sentences,
                                        f"onnxruntime sentence_embedding (one padded batch) vs {REFERENCE_BITLINEAR}",
                                        thresholds.get(report.quant, 0.0), mapping.pooling, report.quant)
