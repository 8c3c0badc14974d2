"""GGUF files against their HF checkpoint, at three levels, with one verdict.

* Tensors: each tensor is decoded (ternary types to codes + scale, the rest dequantized) and compared
  with the checkpoint's tensor as bitconv maps it; ternary codes must be identical to re-quantizing
  the HF weights, other types must reach their cos threshold. Whether the bytes equal a fresh
  encoding of the reference is reported too.
* Layers and logits: `logits.compare_forward`.

Without a reference only structural checks run (sizes, code ranges, finite scales, required
metadata such as the rope base), and the report says so.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..convert.plan import plan_checkpoint
from ..errors import ArtifactError, BitconvError, CheckpointError
from ..forward import SUPPORTED_ARCHS, Hparams, TernaryWeight
from ..convert.gguf_header import GGUFSummary, GGUFTensorInfo, read_gguf_summary
from ..convert.gguf_source import trailer_scale
from .checks import float_threshold, set_stats, ternary_check
from .embeddings import compare_embeddings
from .logits import compare_forward
from .runtime_check import RuntimeJudge, forward_fallback
from .report import (DEFAULT_MIN_COS, TERNARY_TYPES, Check, TensorCheck, ValidationReport, failed_report,
                     reference_mismatch, set_verdict)
from .sources import CheckpointWeights, GgufWeights, quant_of_file

#: a stored ternary scale may differ from the reference by float32 rounding of the absmean (other
#: tools sum in another order) — or, in tq types, by the f16 rounding of the block scale
_SCALE_RTOL = {"i2_s": 1e-6, "tl1": 1e-6, "tl2": 1e-6, "tq1_0": 1e-3, "tq2_0": 1e-3}
_REQUIRED_KEYS = ("block_count", "embedding_length", "attention.head_count", "rope.freq_base")


def structural_checks(summary: GGUFSummary, art: GgufWeights) -> list[Check]:
    meta = summary.metadata
    checks: list[Check] = []
    arch = meta.get("general.architecture")
    checks.append(Check("general.architecture", isinstance(arch, str) and bool(arch),
                        f"{arch}" if arch else "missing"))
    if isinstance(arch, str):
        missing = [f"{arch}.{k}" for k in _REQUIRED_KEYS if f"{arch}.{k}" not in meta]
        checks.append(Check("required metadata", not missing,
                            "missing " + ", ".join(missing) + (" (a runtime silently uses its default)"
                                                               if any("rope" in m for m in missing) else "")
                            if missing else "present"))
    tok = meta.get("tokenizer.ggml.model")
    checks.append(Check("tokenizer", isinstance(tok, str) and "tokenizer.ggml.tokens" in meta,
                        f"{tok}" if tok else "no tokenizer.ggml.model / tokens"))
    unknown = [t.name for t in summary.tensors if t.type_name.startswith("TYPE_")]
    checks.append(Check("tensor types", not unknown, f"unknown type: {', '.join(unknown[:5])}" if unknown else "known"))
    names = {t.name for t in summary.tensors}
    for required in ("token_embd.weight", "output_norm.weight"):
        if required not in names:
            checks.append(Check("tensors present", False, f"{required} is missing"))
    bad_values = []
    for t in summary.tensors:
        if t.type_name.startswith("TYPE_"):
            continue
        problem = _tensor_values_problem(t, art)
        if problem:
            bad_values.append(f"{t.name}: {problem}")
    checks.append(Check("tensor values", not bad_values, "; ".join(bad_values[:5]) if bad_values
                        else "codes in range, scales and floats finite"))
    return checks


def _tensor_values_problem(t: GGUFTensorInfo, art: GgufWeights) -> str:
    raw = art.raw(t)
    if t.type_name == "I2_S":
        m, k = t.shape
        payload = raw[:m * k // 4]
        if np.any((payload & 0x03) == 3) or np.any((payload & 0x0C) == 0x0C) or np.any((payload & 0x30) == 0x30) \
                or np.any((payload & 0xC0) == 0xC0):
            return "2-bit code 3 (not a ternary value)"
    if t.type_name in ("I2_S", "TL1", "TL2"):
        s = trailer_scale(raw)
        if not np.isfinite(s) or s < 0:
            return f"scale {s} is not a finite non-negative number"
        return ""
    if t.type_name == "TQ2_0":
        blocks = raw.reshape(-1, 66)[:, :64]
        if np.any((blocks & 3) == 3) or np.any((blocks >> 6) == 3) or np.any(((blocks >> 2) & 3) == 3) \
                or np.any(((blocks >> 4) & 3) == 3):
            return "2-bit code 3 (not a ternary value)"
    try:
        values = art.dense(t)
    except BitconvError as e:
        return str(e)
    if not np.isfinite(values).all():
        return f"{int(values.size - np.count_nonzero(np.isfinite(values)))} NaN/Inf value(s)"
    return ""


def _tensor_check(t: GGUFTensorInfo, art: GgufWeights, ref: CheckpointWeights, thresholds: dict[str, float],
                  ternary: bool) -> TensorCheck:
    from ..formats.gguf_writer import encode_tensor

    pt = ref.by_name.get(t.name)
    tc = TensorCheck(t.name, t.type_name.lower(), list(t.shape), ok=True)
    if reference_mismatch(tc, None if pt is None else pt.shape):
        return tc
    type_name = tc.type
    if ternary and ref.mapping.is_ternary_linear(t.name) and type_name in TERNARY_TYPES:
        got = art.ternary_of(t)
        want = ref.get(t.name)
        assert isinstance(got, TernaryWeight) and isinstance(want, TernaryWeight)
        ref_scale = float(np.float16(want.scale)) if type_name.startswith("tq") else float(want.scale)
        ternary_check(tc, got, want, _SCALE_RTOL[type_name], reference_scale=ref_scale)
    else:
        got_f = art.dense(t)
        want_f = ref.float(t.name)
        if ternary and ref.mapping.is_ternary_linear(t.name):  # float file of a ternary model: s·W_t
            want_f = ref.get(t.name).dense()
        assert want_f is not None
        set_stats(tc, got_f, want_f)
        float_threshold(tc, type_name, thresholds, magnitude=False)
    try:
        raw, dtype = pt.source.load_stored()
        expected = encode_tensor(pt, raw, None, allow_nonfinite=True, stored_dtype=dtype)
        mine = art.raw(t)
        tc.bytes_identical = expected.nbytes == mine.nbytes and bool(np.array_equal(
            expected.reshape(-1).view(np.uint8), mine))
    except BitconvError:
        tc.bytes_identical = None
    return tc


def validate_gguf(artifact: str | os.PathLike[str], reference: str | os.PathLike[str] | None = None, *,
                  prompt: str | None = None, tokens: list[int] | None = None,
                  min_cos: dict[str, float] | None = None, kernel_config: str | os.PathLike[str] | None = None,
                  use_transformers: bool = True, judge: RuntimeJudge | None = None) -> ValidationReport:
    """Check a GGUF file: structure always; with `reference` (the HF checkpoint it came from)
    tensors, per-layer hidden states and logits against the thresholds (DEFAULT_MIN_COS, overridden
    per type by `min_cos`), and with `judge` a runtime's verdict (runtime_check). tl1/tl2 files are
    decoded with `kernel_config`, else the `<stem>.kernel_config.ini` written beside them."""
    from ..quant.tl import KernelConfig

    path = Path(artifact)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    thresholds = {**DEFAULT_MIN_COS, **(min_cos or {})}
    files: dict[str, Path] = {}
    try:
        summary = read_gguf_summary(path)
        if isinstance(summary.metadata.get("split.count"), int) and summary.metadata["split.count"] > 1:
            summary, files = _split_set(path)  # a split set: every file's tensors, the first's metadata
            path = summary.path  # runtimes load a set from its first file
            if judge is not None:
                judge.artifact = path
    except (ArtifactError, CheckpointError) as e:
        return failed_report(str(path), str(reference) if reference else None, str(e), thresholds)
    meta = summary.metadata
    arch = str(meta.get("general.architecture", "?"))
    quant = quant_of_file(meta) or "?"
    kc = None
    sidecar = path.with_name((path.name[:-5] if path.name.endswith(".gguf") else path.name) + ".kernel_config.ini")
    if kernel_config is not None:
        kc = KernelConfig.read(kernel_config)
    elif sidecar.is_file():
        kc = KernelConfig.read(sidecar)
    has_ternary_types = any(t.type_name in ("I2_S", "TL1", "TL2", "TQ1_0", "TQ2_0") for t in summary.tensors)
    art = GgufWeights(path, summary, kc, ternary=has_ternary_types or arch.startswith("bitnet"), files=files)
    try:
        report = ValidationReport(str(path), str(reference) if reference else None, arch, quant,
                                  reference is None, True, "", thresholds=thresholds)
        report.checks = structural_checks(summary, art)
        if reference is not None:
            _compare(report, art, summary, Path(reference), prompt, tokens, kc, use_transformers, thresholds, judge)
    finally:
        art.close()
    set_verdict(report)
    return report


def _split_set(path: Path) -> tuple[GGUFSummary, dict[str, Path]]:
    """The split set `path` belongs to as one summary (the first file's metadata less the split
    keys, every file's tensors) and the file each tensor is in; a bad set is a one-line error."""
    from ..convert.gguf_source import GGUFSource

    src = GGUFSource.open(path)
    first = read_gguf_summary(src.paths[0])
    summary = GGUFSummary(src.paths[0], first.version, src.alignment, src.metadata, [t.info for t in src],
                          src.value_types)
    return summary, {t.name: t.path for t in src}


def _compare(report: ValidationReport, art: GgufWeights, summary: GGUFSummary, reference: Path,
             prompt: str | None, tokens: list[int] | None, kc: Any, use_transformers: bool,
             thresholds: dict[str, float], judge: RuntimeJudge | None = None) -> None:
    if report.quant == "?":
        report.checks.append(Check("file type", False, "general.file_type names no quant type bitconv knows"))
        return
    try:
        _, plan = plan_checkpoint(reference, report.quant, kernel_config=kc, force_ternarize=True)
    except BitconvError as e:
        report.checks.append(Check("reference", False, str(e)))
        return
    ternary = plan.mapping.ternary_model
    art.ternary = ternary
    ref = CheckpointWeights(plan)
    art_names = {t.name for t in summary.tensors}
    for name in ref.by_name:
        if name not in art_names:
            report.tensors.append(TensorCheck(name, "-", list(ref.by_name[name].shape), False,
                                              message="in the reference, missing from the artifact"))
    for t in summary.tensors:
        report.tensors.append(_tensor_check(t, art, ref, thresholds, ternary))
    if report.architecture not in SUPPORTED_ARCHS:
        hint = "" if judge is not None else "; --runtime llama.cpp compares the logits"
        report.checks.append(Check("forward pass", True, f"skipped: bitconv's numpy reference forward does not run "
                                                         f"{report.architecture} (tensors compared only){hint}"))
    else:
        try:
            hp_art = Hparams.from_metadata(summary.metadata, ternary=ternary)
        except ArtifactError as e:
            report.checks.append(Check("forward pass", False, str(e)))
        else:
            if plan.mapping.embedding_model:
                compare_embeddings(report, art, hp_art, plan, reference, ternary, prompt, tokens, thresholds)
            else:
                compare_forward(report, art, hp_art, plan, reference, ternary, prompt, tokens, use_transformers,
                                thresholds)
    if judge is not None and plan.mapping.embedding_model:
        judge.refuse(report, f"{judge.runtime.name} cannot run BitNet embedding models "
                             "(mainline llama.cpp lacks their per-projection norms)")
    elif judge is not None:
        judge.check(report, reference, ternary, forward_fallback(reference, plan, ternary, plan.mapping.arch_name),
                    use_transformers)
