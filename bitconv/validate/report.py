"""The validation report: its types, the per-type thresholds, the one verdict rule.

Every artifact format fills the same `ValidationReport` (structural checks, per-tensor checks,
per-layer hidden-state cos, a logits comparison), so the CLI, `--json` and batch render them one
way and a user reads one set of thresholds.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UsageError

TERNARY_TYPES = ("i2_s", "tl1", "tl2", "tq1_0", "tq2_0")
#: default minimum cos per quant type (tensors of that type, and the logits of a file of that type);
#: the interop tests use the same figures
DEFAULT_MIN_COS: dict[str, float] = {
    "f32": 0.99999, "f16": 0.9999, "bf16": 0.999, "q8_0": 0.999,
    "q4_0": 0.97, "q4_1": 0.97, "q5_0": 0.98, "q5_1": 0.98,
    # k-quant tensors (a broken layout gives cos near 0) and the llama-quantize file types; loose
    # for the 2- and 3-bit types, whose logits drift far on small models even when exact
    "q2_k": 0.75, "q3_k": 0.9, "q3_k_m": 0.9, "q3_k_l": 0.9, "q4_k": 0.95, "q4_k_m": 0.95,
    "q5_k": 0.98, "q5_k_m": 0.98, "q6_k": 0.99,
    **{t: 0.999 for t in TERNARY_TYPES},
}
#: a stored ternary scale may differ from the reference by float32 rounding of the absmean (other
#: default minimum cos per ONNX storage type (tensors stored so, and the logits of an export of that
#: --quant); the figures of the ONNX issue (int2: vs the BitLinear reference)
ONNX_MIN_COS: dict[str, float] = {"f32": 0.99999, "f16": 0.9999, "int8": 0.999, "int4": 0.98, "int2": 0.995}
#: minimum cos per safetensors weight type (tensors of that type, and the logits of a checkpoint of
#: that type): bitnet-packed as the ternary GGUF types, int8 / int4 as the ONNX ones, and the other
#: quantized checkpoints' types as the GGUF type of the same precision (fp8 as q8_0, nf4 as q4_0,
#: GPTQ's 3 and 2 bits as q3_k and q2_k)
ST_MIN_COS: dict[str, float] = {"bitnet-packed": DEFAULT_MIN_COS["i2_s"], "int8": ONNX_MIN_COS["int8"],
                                "int4": ONNX_MIN_COS["int4"], "fp8": DEFAULT_MIN_COS["q8_0"],
                                "nf4": DEFAULT_MIN_COS["q4_0"], "fp4": DEFAULT_MIN_COS["q4_k"],
                                "int3": DEFAULT_MIN_COS["q3_k"], "int2": DEFAULT_MIN_COS["q2_k"]}
DEFAULT_PROMPT = "The quick brown fox jumps over the lazy dog."


@dataclass
class Check:
    name: str
    ok: bool
    message: str = ""


@dataclass
class TensorCheck:
    name: str
    type: str
    shape: list[int]
    ok: bool
    cos: float | None = None
    max_abs_err: float | None = None
    rel_err: float | None = None
    codes_identical: bool | None = None
    codes_differing: int | None = None
    scale: float | None = None
    reference_scale: float | None = None
    bytes_identical: bool | None = None
    message: str = ""


def reference_mismatch(tc: TensorCheck, want_shape: tuple[int, ...] | None) -> bool:
    """Fail `tc` when the reference lacks the tensor (`want_shape` None) or holds another shape."""
    if want_shape is None:
        tc.ok, tc.message = False, "not in the reference checkpoint"
    elif tuple(want_shape) != tuple(tc.shape):
        tc.ok, tc.message = False, f"shape {tuple(tc.shape)} but the reference has {tuple(want_shape)}"
    return not tc.ok


@dataclass
class LogitsCheck:
    reference: str
    tokens: int
    cos: float
    kl: float
    top1: float
    min_cos: float
    ok: bool


@dataclass
class EmbeddingCheck:
    """Sentence embeddings of an embedding model: the artifact's pooled, L2-normalized embedding of
    each sentence against the reference's, one cos per sentence; the minimum is held to the threshold."""
    reference: str
    sentences: int
    tokens: list[int]  # tokens per sentence (the appended EOS included)
    cos: list[float]
    min_cos: float  # the smallest cos over the sentences
    need: float
    ok: bool
    pooling: str = ""


@dataclass
class RuntimeCheck:
    """The verdict of a real runtime (--runtime): it loads the artifact, tokenizes the prompt with the
    artifact's own vocabulary (ids must equal the reference tokenizer's) and runs it; its logits are
    held to the same reference and threshold as the logits check."""
    runtime: str  # llama.cpp | onnxruntime | transformers
    via: str  # what ran: package and version, the path taken
    ok: bool
    message: str
    reference: str = ""  # what produced the reference logits
    tokens: int = 0  # prompt length (the reference tokenizer's)
    positions: int = 0  # prompt positions compared (all the runtime gives, else the last)
    tokens_match: bool | None = None  # None: ids were given (--tokens), the runtime's tokenizer was not asked
    runtime_ids: list[int] | None = None  # both id lists, on a mismatch
    reference_ids: list[int] | None = None
    cos: float | None = None
    kl: float | None = None
    top1: float | None = None
    min_cos: float | None = None


@dataclass
class ValidationReport:
    artifact: str
    reference: str | None
    architecture: str
    quant: str
    structural_only: bool
    passed: bool
    verdict: str
    checks: list[Check] = field(default_factory=list)
    tensors: list[TensorCheck] = field(default_factory=list)
    layers: list[dict[str, float]] = field(default_factory=list)
    logits: LogitsCheck | None = None
    embeddings: EmbeddingCheck | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    runtime: RuntimeCheck | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_min_cos(items: list[str] | tuple[str, ...]) -> dict[str, float]:
    """`TYPE=VALUE` pairs (the CLI's --min-cos) → thresholds."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            v = float(value)
        except ValueError:
            v = float("nan")
        if not sep or not name or not (0.0 <= v <= 1.0):
            raise UsageError(f"--min-cos {item!r}: expected TYPE=VALUE with VALUE in [0, 1], e.g. q4_0=0.98")
        out[name.strip().lower()] = v
    return out


# --- the artifact's tensors ----------------------------------------------------------------------



def failed_report(artifact: str, reference: str | None, error: str, thresholds: dict[str, float]) -> ValidationReport:
    """The report of an artifact that cannot even be read."""
    return ValidationReport(artifact, reference, "?", "?", reference is None, False, f"FAIL: {error}",
                            checks=[Check("readable", False, error)], thresholds=thresholds)


def set_verdict(r: ValidationReport) -> None:
    failed = [c for c in r.checks if not c.ok]
    bad_tensors = [t for t in r.tensors if not t.ok]
    problems = [f"{c.name}: {c.message}" for c in failed]
    problems += [f"{t.name}: {t.message}" for t in bad_tensors[:3]]
    if len(bad_tensors) > 3:
        problems.append(f"and {len(bad_tensors) - 3} more tensors")
    if r.logits is not None and not r.logits.ok:
        problems.append(f"logits cos {r.logits.cos:.6f} < {r.logits.min_cos} ({r.quant})")
    if r.embeddings is not None and not r.embeddings.ok:
        problems.append(f"embedding cos {r.embeddings.min_cos:.6f} < {r.embeddings.need} ({r.quant}, the worst of "
                        f"{r.embeddings.sentences} sentences)")
    if r.runtime is not None and not r.runtime.ok:
        problems.append(f"{r.runtime.runtime}: {r.runtime.message}")
    r.passed = not problems
    if r.passed:
        if r.structural_only:
            r.verdict = "PASS (structural checks only: no --reference, numerics not checked)"
        elif r.embeddings is not None:
            e = r.embeddings
            r.verdict = (f"PASS: {len(r.tensors)} tensors match; sentence embeddings ({e.pooling} pooling) cos ≥ "
                         f"{e.min_cos:.6f} ≥ {e.need} over {e.sentences} sentences vs {e.reference}")
        elif r.logits is not None:
            r.verdict = (f"PASS: {len(r.tensors)} tensors match; logits cos {r.logits.cos:.6f} ≥ {r.logits.min_cos}, "
                         f"top-1 {r.logits.top1:.0%}, KL {r.logits.kl:.2e} vs {r.logits.reference}")
        else:
            r.verdict = f"PASS: {len(r.tensors)} tensors match"
        if r.runtime is not None:
            r.verdict += f"; {r.runtime.runtime}: {r.runtime.message}"
    else:
        r.verdict = "FAIL: " + "; ".join(problems)


# --- ONNX folders ---------------------------------------------------------------------------------
#
# An ONNX export (bitconv hf2onnx: model.onnx + model.onnx.data + genai_config.json) is checked at
# two of the three levels: tensors (each MatMulNBits / MatMul / Gather initializer decoded back to a
# float matrix [N, K] and compared with the checkpoint tensor it came from; ternary 2-bit codes must
# equal re-quantizing the HF weights) and logits (onnxruntime runs the prompt; compared with
# transformers float32 or the numpy reference forward). Per-layer hidden states are not compared:
# the graph exposes only logits and the KV cache.
