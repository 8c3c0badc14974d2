"""Hugging Face safetensors checkpoints: `bitconv hf2st` folders, or any
bitnet-packed, compressed-tensors pack-quantized or plain float checkpoint (a folder, sharded or
not, or one of its .safetensors files).

The artifact is decoded into float weights in bitconv's GGUF naming through the same architecture
mapping as its reference checkpoint, so the package's shared machinery applies unchanged: the report
classes and verdict, the thresholds, the numpy reference forward and the logits comparison.

* bitnet-packed: the packed linears decode as transformers reads them (2-bit code − 1, times s,
  where weight_scale is 1/s for linear_class bitlinear and s for autobitlinear; the arch mapping's
  PackedTernaryMixin does it). As for the ternary GGUF types, the codes must equal re-ternarizing
  the reference and the scale must match to float32 rounding.
* compressed-tensors (pack-quantized, symmetric int4 / int8): weight_packed unpacked (`ct_unpack`)
  times the per-group weight_scale, rounded to the scale's dtype as the package's decompression does
  (`ct_dequantize`). Each linear must reach its cos threshold against the float reference and stay
  within the relative error that cos implies (cos cannot see a weight_scale multiplied by a
  constant). Codes equal to a fresh `ct_quantize` of the reference are reported, not required:
  GPTQ-style artifacts differ from round-to-nearest by design.
* Every other tensor (embeddings, norms, lm_head) is compared with the reference's as stored, held
  to its dtype's threshold.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..convert.checkpoint import Checkpoint, LazyTensor
from ..convert.plan import plan_checkpoint
from ..errors import ArtifactError, BitconvError, CheckpointError, QuantizationError
from ..forward import SUPPORTED_ARCHS, TernaryWeight
from .checks import float_threshold, set_stats, ternary_check
from .embeddings import compare_embeddings
from .logits import compare_forward, reference_hparams
from .report import (DEFAULT_MIN_COS, ST_MIN_COS, Check, TensorCheck, ValidationReport, failed_report,
                     reference_mismatch, set_verdict)
from .runtime_check import RuntimeJudge, forward_fallback
from .sources import FLOAT_TYPES, CheckpointWeights, QuantizedLinear, StArtifact

#: a stored ternary scale may differ from the reference's by float32 rounding of 1/x
_SCALE_RTOL = 1e-6
#: the hyper-parameters that fix tensor shapes: the artifact's and the reference's must agree to run both
_SHAPE_HPARAMS = ("arch", "n_layers", "n_embd", "n_head", "n_head_kv", "head_dim")


def _plan(checkpoint: Checkpoint) -> Any:
    """Every tensor in GGUF naming as float (no quantizer runs: f32 is only the plan's label)."""
    from ..convert.arch import mapping_for
    from ..convert.plan import make_plan
    from ..quant.registry import get_quantizer

    mapping = mapping_for(checkpoint)
    return make_plan(checkpoint, mapping, get_quantizer(mapping.reading_quant))


def _hf_name(pt: Any) -> str:
    return pt.source.hf_names[0] if pt.source.hf_names else pt.name


def _type_of(pt: Any, st: StArtifact) -> str:
    if pt.source.codes is not None:  # a packed ternary linear
        return "bitnet-packed"
    lin = st.linears.get(_hf_name(pt))
    if lin is not None:
        return lin.weight_type
    dtype = pt.source.source_dtype
    return FLOAT_TYPES.get(dtype, dtype.lower())


def structural_checks(st: StArtifact, plan: Any | None, plan_error: str) -> list[Check]:
    checks = [Check("format", not st.format_note, st.format_note or _format_line(st))]
    problems = st.problems + ([plan_error] if plan_error else [])
    checks.append(Check("tensor layout", not problems, "; ".join(problems[:5]) if problems else
                        f"{len(plan.tensors) if plan else 0} tensors map onto {st.raw.architecture}"))
    if plan is None:
        return checks
    bad: list[str] = []
    for pt in plan:
        hf = _hf_name(pt)
        try:
            values = pt.source.load()
            if pt.source.known_scale is not None:
                pt.source.known_scale()  # a non-positive or non-finite weight_scale raises
            if not np.isfinite(values).all():  # a quantized linear's NaN/Inf scales show here too
                bad.append(f"{hf}: {int(values.size - np.count_nonzero(np.isfinite(values)))} NaN/Inf value(s)")
        except BitconvError as e:
            bad.append(f"{hf}: {e}")
    checks.append(Check("tensor values", not bad, "; ".join(bad[:5]) if bad else
                        "codes in range, scales and floats finite"))
    return checks


def _format_line(st: StArtifact) -> str:
    qc = st.qc or {}
    if st.format == "bitnet-packed":
        return f"bitnet-packed (linear_class {qc.get('linear_class', 'bitlinear')})"
    if st.scheme is not None:
        return f"{st.scheme.describe()}; {len(st.linears)} quantized linears"
    return f"plain {st.quant} checkpoint"


def _tensor_check(pt: Any, st: StArtifact, art: CheckpointWeights, ref: CheckpointWeights, ref_ckpt: Checkpoint,
                  thresholds: dict[str, float], ternary: bool) -> TensorCheck:
    hf, kind = _hf_name(pt), _type_of(pt, st)
    tc = TensorCheck(hf, kind, list(pt.shape), ok=True)
    want_pt = ref.by_name.get(pt.name)
    if reference_mismatch(tc, None if want_pt is None else want_pt.shape):
        return tc
    try:
        want = ref.get(pt.name)
        if kind == "bitnet-packed" and isinstance(want, TernaryWeight):
            got = art.get(pt.name)
            assert isinstance(got, TernaryWeight)
            _ternary_check(tc, got, want)
            return tc
        got_f = art.float(pt.name)
        want_f = want.dense() if isinstance(want, TernaryWeight) else want  # s · W_t for a ternary model
        assert got_f is not None and want_f is not None
        set_stats(tc, got_f, want_f)
        float_threshold(tc, kind, thresholds, magnitude=True)
        lin = st.linears.get(hf)
        source = ref_ckpt.tensors.get(hf)
        if lin is not None and source is not None and not ternary and st.format == "compressed-tensors":
            _ct_codes(tc, lin, source)
        elif lin is None and len(pt.source.sources) == 1 and len(want_pt.source.sources) == 1:
            mine, theirs = pt.source.sources[0], want_pt.source.sources[0]
            tc.bytes_identical = mine.dtype == theirs.dtype and bool(np.array_equal(mine.load_raw(), theirs.load_raw()))
    except BitconvError as e:
        tc.ok, tc.message = False, str(e)
    return tc


def _ternary_check(tc: TensorCheck, got: TernaryWeight, want: TernaryWeight) -> None:
    """Codes identical to re-ternarizing the reference, the scale to float32 rounding (as i2_s)."""
    ternary_check(tc, got, want, _SCALE_RTOL, verb="re-ternarizing", scale_word="weight scale")
    tc.bytes_identical = tc.codes_differing == 0 and np.float32(got.scale) == np.float32(want.scale)


def _ct_codes(tc: TensorCheck, lin: QuantizedLinear, source: LazyTensor) -> None:
    """A compressed-tensors symmetric int linear's codes and scales vs the package's round-to-nearest
    of the reference (informative: GPTQ-style artifacts differ from it by design)."""
    from ..quant.compressed import ct_quantize

    w = lin.weight
    if source.dtype not in ("F32", "F16", "BF16") or source.shape != w.shape or w.grid is None:
        return
    grid = w.grid(0, w.shape[0])
    half = np.float32(1 << (grid.bits - 1))
    if grid.g_idx is not None or not (grid.zeros == half).all() or w.shape[1] % grid.group:
        return
    q, s = ct_quantize(np.asarray(source.load(), dtype=np.float32), grid.bits, grid.group, source.dtype)
    diff = int(np.count_nonzero(grid.codes.astype(np.int16) - int(half) != q))
    tc.codes_identical, tc.codes_differing = diff == 0, diff
    tc.bytes_identical = diff == 0 and grid.scale_dtype == source.dtype and bool(np.array_equal(grid.scales, s))


def validate_safetensors(artifact: str | os.PathLike[str], reference: str | os.PathLike[str] | None = None, *,
                         prompt: str | None = None, tokens: list[int] | None = None,
                         min_cos: dict[str, float] | None = None, use_transformers: bool = True,
                         judge: RuntimeJudge | None = None) -> ValidationReport:
    """Check a safetensors checkpoint: format, tensor layout and values always; with `reference` (the
    checkpoint it was made from) every tensor decoded and compared (bitnet-packed: codes identical;
    int4 / int8 and float tensors: cos and relative error per type, ST_MIN_COS and DEFAULT_MIN_COS
    overridden by `min_cos`), per-layer hidden states of the reference forward on both weight sets,
    and the logits vs transformers float32 (else the reference forward); with `judge`, a runtime's
    verdict (runtime_check)."""
    path = Path(artifact)
    if not path.exists():
        raise ArtifactError(f"{path}: no such file or folder")
    thresholds = {**DEFAULT_MIN_COS, **ST_MIN_COS, **(min_cos or {})}
    ref_str = str(reference) if reference else None
    try:
        st = StArtifact(path)
        arch = st.raw.architecture
    except BitconvError as e:
        return failed_report(str(path), ref_str, str(e), thresholds)
    plan, plan_error = None, ""
    if not st.format_note and st.decoded is not None:
        try:
            plan = _plan(st.decoded)
        except BitconvError as e:
            plan_error = str(e)
    report = ValidationReport(str(path), ref_str, arch, st.quant, reference is None, True, "",
                              checks=structural_checks(st, plan, plan_error), thresholds=thresholds)
    if reference is not None and plan is not None:
        _compare(report, st, plan, Path(reference), prompt, tokens, use_transformers, thresholds, judge)
    set_verdict(report)
    return report


def _compare(report: ValidationReport, st: StArtifact, plan: Any, reference: Path, prompt: str | None,
             tokens: list[int] | None, use_transformers: bool, thresholds: dict[str, float],
             judge: RuntimeJudge | None = None) -> None:
    try:
        from ..convert.arch import mapping_for

        ref_ckpt = Checkpoint.open(reference)
        ref_ckpt, ref_plan = plan_checkpoint(ref_ckpt, mapping_for(ref_ckpt).reading_quant, force_ternarize=True)
    except BitconvError as e:
        report.checks.append(Check("reference", False, str(e)))
        return
    ternary = ref_plan.mapping.ternary_model
    ref, art = CheckpointWeights(ref_plan), CheckpointWeights(plan)
    for name, pt in ref.by_name.items():
        if name not in art.by_name:
            report.tensors.append(TensorCheck(_hf_name(pt), "-", list(pt.shape), False,
                                              message="in the reference, missing from the artifact"))
    for pt in plan:
        report.tensors.append(_tensor_check(pt, st, art, ref, ref_ckpt, thresholds, ternary))
    _forward(report, art, plan, ref_plan, reference, ternary, prompt, tokens, use_transformers, thresholds)
    if judge is not None and ref_plan.mapping.embedding_model:
        judge.refuse(report, f"{judge.runtime.name} has no class for BitNet embedding models (custom BitLinear code)")
    elif judge is not None:
        judge.check(report, reference, ternary,
                    forward_fallback(reference, ref_plan, ternary, ref_plan.mapping.arch_name), use_transformers)


def _forward(report: ValidationReport, art: CheckpointWeights, plan: Any, ref_plan: Any, reference: Path,
             ternary: bool, prompt: str | None, tokens: list[int] | None, use_transformers: bool,
             thresholds: dict[str, float]) -> None:
    """Per-layer hidden states and logits of the artifact's weights vs the reference's."""
    arch = plan.mapping.arch_name
    if arch not in SUPPORTED_ARCHS:
        report.checks.append(Check("forward pass", True, f"skipped: no reference forward for {arch}"))
        return
    # the artifact's hyper-parameters from its own config.json, as the GGUF path takes its metadata
    hp_art = reference_hparams(plan, ternary)
    hp_ref = reference_hparams(ref_plan, ternary)
    differ = [f"{k} {getattr(hp_art, k)} vs {getattr(hp_ref, k)}" for k in _SHAPE_HPARAMS
              if getattr(hp_art, k) != getattr(hp_ref, k)]
    if differ:  # another model: the tensor checks already say so; a forward pass cannot run
        report.checks.append(Check("forward pass", False, "skipped: the artifact's config.json and the reference's "
                                   "describe different models (" + ", ".join(differ) + ")"))
        return
    try:
        if ref_plan.mapping.embedding_model:
            compare_embeddings(report, art, hp_art, ref_plan, reference, ternary, prompt, tokens, thresholds)
        else:
            compare_forward(report, art, hp_art, ref_plan, reference, ternary, prompt, tokens, use_transformers,
                            thresholds)
    except (ArtifactError, QuantizationError, CheckpointError) as e:  # a tensor that does not decode
        report.checks.append(Check("forward pass", False, str(e)))

