"""`bitconv validate` on Hugging Face safetensors checkpoints: `bitconv hf2st` folders, or any
bitnet-packed, compressed-tensors pack-quantized or plain float checkpoint (a folder, sharded or
not, or one of its .safetensors files).

The artifact is decoded into float weights in bitconv's GGUF naming through the same architecture
mapping as its reference checkpoint, so validate.py's machinery applies unchanged: the report
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

import dataclasses
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .convert.checkpoint import Checkpoint, LazyTensor
from .errors import ArtifactError, BitconvError, CheckpointError, QuantizationError
from .forward import SUPPORTED_ARCHS, TernaryWeight
from .inspectors import st_format
from .validate import (DEFAULT_MIN_COS, ONNX_MIN_COS, Check, CheckpointWeights, TensorCheck, ValidationReport,
                       _compare_arrays, _reference_hparams, _rel_err_bound, _verdict, compare_forward, reference_mismatch)

#: minimum cos per safetensors weight type (tensors of that type, and the logits of a checkpoint of
#: that type): bitnet-packed as the ternary GGUF types, compressed-tensors int8 / int4 as the ONNX ones
ST_MIN_COS: dict[str, float] = {"bitnet-packed": DEFAULT_MIN_COS["i2_s"], "int8": ONNX_MIN_COS["int8"],
                                "int4": ONNX_MIN_COS["int4"]}
#: a stored ternary scale may differ from the reference's by float32 rounding of 1/x
_SCALE_RTOL = 1e-6
_FLOAT_TYPES = {"F64": "f32", "F32": "f32", "F16": "f16", "BF16": "bf16"}
#: the hyper-parameters that fix tensor shapes: the artifact's and the reference's must agree to run both
_SHAPE_HPARAMS = ("arch", "n_layers", "n_embd", "n_head", "n_head_kv", "head_dim")
#: the tensors compressed-tensors stores beside a linear's weight_packed
_CT_PARTS = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_g_idx")


@dataclasses.dataclass
class CtLinear:
    """One pack-quantized linear: its stored parts and logical shape."""

    packed: LazyTensor
    scale: LazyTensor
    rows: int
    k: int


class StArtifact:
    """A safetensors checkpoint read from its headers, with `decoded`: the same checkpoint whose
    tensors are float (compressed-tensors linears dequantized when loaded; bitnet-packed linears are
    decoded by the arch mapping itself)."""

    def __init__(self, path: Path) -> None:
        folder = path if path.is_dir() else path.parent
        self.raw = Checkpoint.open(folder)
        qc = self.raw.config.get("quantization_config")
        self.qc: dict[str, Any] | None = qc if isinstance(qc, dict) else None
        self.format = st_format(self.qc, set(self.raw.tensors))
        self.bits: int | None = None
        self.problems: list[str] = []  # layout problems found while decoding the headers
        self.linears: dict[str, CtLinear] = {}  # HF weight name → its packed parts
        self.format_note = self._check_format()
        self.decoded = self._ct_view() if self.format == "compressed-tensors" and self.bits else self.raw

    @property
    def quant(self) -> str:
        """The weight type the checkpoint is held to: bitnet-packed / int4 / int8, or its main float dtype."""
        if self.format == "bitnet-packed":
            return "bitnet-packed"
        if self.bits:
            return f"int{self.bits}"
        counts = Counter(_FLOAT_TYPES[t.dtype] for t in self.raw if t.dtype in _FLOAT_TYPES and len(t.shape) == 2)
        return counts.most_common(1)[0][0] if counts else "?"

    def _check_format(self) -> str:
        """'' when the format is one bitconv decodes, else why not."""
        qc = self.qc or {}
        if self.format == "bitnet-packed":
            from .quant.ternary import LINEAR_CLASSES

            lc = qc.get("linear_class", "bitlinear")
            return "" if lc in LINEAR_CLASSES else f"linear_class {lc!r} (known: {', '.join(LINEAR_CLASSES)})"
        if self.format == "plain":
            return ""
        if self.format != "compressed-tensors":
            return (f"quant_method {self.format!r}: bitconv validates bitnet, compressed-tensors pack-quantized "
                    "and unquantized checkpoints")
        if not self.qc:
            return "compressed-tensors tensors but no quantization_config in config.json"
        weights = [(g or {}).get("weights") or {} for g in (qc.get("config_groups") or {}).values()]
        formats = {qc.get("format")} | {(g or {}).get("format") for g in (qc.get("config_groups") or {}).values()}
        bits = {w.get("num_bits") for w in weights}
        if not weights or formats - {"pack-quantized", None} or len(bits) != 1 or bits - {4, 8}:
            return (f"format {sorted(map(str, formats - {None}))}, num_bits {sorted(map(str, bits))}: bitconv decodes "
                    "pack-quantized int4 / int8 with one bit width")
        if any(w.get("type", "int") != "int" or not w.get("symmetric", True) for w in weights):
            return "asymmetric or float weights: bitconv decodes symmetric int pack-quantized checkpoints"
        self.bits = int(bits.pop())
        return ""

    def _ct_view(self) -> Checkpoint:
        tensors: dict[str, LazyTensor] = {}
        names = self.raw.tensors
        for name, lt in names.items():
            prefix, _, part = name.rpartition(".")
            if part in _CT_PARTS[1:] and f"{prefix}.weight_packed" in names:
                continue
            if part != "weight_packed":
                tensors[name] = lt
                continue
            lin = self._ct_linear(prefix, lt)
            if lin is not None:
                self.linears[prefix + ".weight"] = lin
                tensors[prefix + ".weight"] = LazyTensor(prefix + ".weight", "F32", (lin.rows, lin.k),
                                                         lin.rows * lin.k * 4, lt.source,
                                                         lambda lin=lin: self.dequantize(lin))
        return dataclasses.replace(self.raw, tensors=tensors)

    def _ct_linear(self, prefix: str, packed: LazyTensor) -> CtLinear | None:
        scale, shape = self.raw.tensors.get(prefix + ".weight_scale"), self.raw.tensors.get(prefix + ".weight_shape")
        if scale is None or shape is None:
            self.problems.append(f"{packed.name}: no {prefix}.weight_scale / weight_shape beside it")
            return None
        dims = np.asarray(shape.load_raw()).reshape(-1)
        if dims.size != 2 or dims.min() <= 0:
            self.problems.append(f"{shape.name}: {dims.tolist()} is not a 2-D shape")
            return None
        rows, k = int(dims[0]), int(dims[1])
        assert self.bits is not None
        want = (rows, -(-k * self.bits // 32))
        if packed.dtype != "I32" or packed.shape != want:
            self.problems.append(f"{packed.name}: {packed.dtype} {packed.shape}, expected I32 {want} for a {rows}×{k} "
                                 f"int{self.bits} weight")
            return None
        if (scale.dtype not in _FLOAT_TYPES or len(scale.shape) != 2 or scale.shape[0] != rows
                or k % max(scale.shape[1], 1)):
            self.problems.append(f"{scale.name}: {scale.dtype} {scale.shape} does not hold per-group scales of a "
                                 f"{rows}×{k} weight")
            return None
        return CtLinear(packed, scale, rows, k)

    def codes(self, lin: CtLinear) -> np.ndarray:
        from .formats.safetensors_io import ct_unpack

        assert self.bits is not None
        return ct_unpack(np.ascontiguousarray(lin.packed.load_raw()), self.bits, lin.k)

    def scales(self, lin: CtLinear) -> np.ndarray:
        return np.asarray(lin.scale.load(), dtype=np.float32)

    def dequantize(self, lin: CtLinear) -> np.ndarray:
        """codes × group scale, rounded to the scale's dtype (compressed-tensors' decompression)."""
        from .formats.safetensors_io import ct_dequantize

        return ct_dequantize(self.codes(lin), self.scales(lin), lin.scale.dtype)


def _plan(checkpoint: Checkpoint) -> Any:
    """Every tensor in GGUF naming as float (no quantizer runs: f32 is only the plan's label)."""
    from .convert.arch import mapping_for
    from .convert.plan import make_plan
    from .quant.registry import get_quantizer

    return make_plan(checkpoint, mapping_for(checkpoint), get_quantizer("f32"))


def _hf_name(pt: Any) -> str:
    return pt.source.hf_names[0] if pt.source.hf_names else pt.name


def _type_of(pt: Any, st: StArtifact) -> str:
    if pt.source.known_scale is not None:  # a packed ternary linear
        return "bitnet-packed"
    if _hf_name(pt) in st.linears:
        return st.quant
    dtype = pt.source.source_dtype
    return _FLOAT_TYPES.get(dtype, dtype.lower())


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
            if hf in st.linears and not np.isfinite(st.scales(st.linears[hf])).all():
                bad.append(f"{st.linears[hf].scale.name}: NaN/Inf scale(s)")
            elif not np.isfinite(values).all():
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
    if st.format == "compressed-tensors":
        groups = sorted({lin.k // max(lin.scale.shape[1], 1) for lin in st.linears.values()})
        return f"compressed-tensors pack-quantized int{st.bits}, group {'/'.join(map(str, groups))}"
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
        stats = _compare_arrays(got_f, want_f)
        tc.cos, tc.max_abs_err, tc.rel_err = stats["cos"], stats["max_abs_err"], stats["rel_err"]
        need = thresholds.get(kind)
        if need is not None and tc.cos < need:
            tc.ok, tc.message = False, f"cos {tc.cos:.6f} < {need} ({kind})"
        elif need is not None and tc.rel_err > _rel_err_bound(need):
            tc.ok, tc.message = False, f"rel err {tc.rel_err:.4f} > {_rel_err_bound(need):.4f} ({kind}: wrong scale?)"
        lin = st.linears.get(hf)
        source = ref_ckpt.tensors.get(hf)
        if lin is not None and source is not None and not ternary:
            _ct_codes(tc, st, lin, source)
        elif lin is None and len(pt.source.sources) == 1 and len(want_pt.source.sources) == 1:
            mine, theirs = pt.source.sources[0], want_pt.source.sources[0]
            tc.bytes_identical = mine.dtype == theirs.dtype and bool(np.array_equal(mine.load_raw(), theirs.load_raw()))
    except BitconvError as e:
        tc.ok, tc.message = False, str(e)
    return tc


def _ternary_check(tc: TensorCheck, got: TernaryWeight, want: TernaryWeight) -> None:
    """Codes identical to re-ternarizing the reference, the scale to float32 rounding (as i2_s)."""
    diff = int(np.count_nonzero(got.codes != want.codes))
    tc.codes_identical, tc.codes_differing = diff == 0, diff
    tc.scale, tc.reference_scale = float(got.scale), float(want.scale)
    scale_ok = not want.codes.any() or abs(float(got.scale) - float(want.scale)) <= _SCALE_RTOL * abs(float(want.scale))
    stats = _compare_arrays(got.dense(), want.dense())
    tc.cos, tc.max_abs_err, tc.rel_err = stats["cos"], stats["max_abs_err"], stats["rel_err"]
    tc.bytes_identical = diff == 0 and np.float32(got.scale) == np.float32(want.scale)
    tc.ok = diff == 0 and scale_ok
    if diff:
        rows = np.nonzero((got.codes != want.codes).any(axis=1))[0]
        tc.message = f"{diff} codes differ from re-ternarizing the reference (rows {rows[0]}…{rows[-1]})"
    elif not scale_ok:
        tc.message = f"weight scale {float(got.scale)!r} but the reference gives {float(want.scale)!r}"


def _ct_codes(tc: TensorCheck, st: StArtifact, lin: CtLinear, source: LazyTensor) -> None:
    """Codes and scales vs compressed-tensors' round-to-nearest of the reference (informative)."""
    from .formats.safetensors_io import ct_quantize

    if source.dtype not in ("F32", "F16", "BF16") or source.shape != (lin.rows, lin.k):
        return
    assert st.bits is not None
    q, s = ct_quantize(np.asarray(source.load(), dtype=np.float32), st.bits, lin.k // lin.scale.shape[1],
                       source.dtype)
    diff = int(np.count_nonzero(st.codes(lin) != q))
    tc.codes_identical, tc.codes_differing = diff == 0, diff
    tc.bytes_identical = diff == 0 and lin.scale.dtype == source.dtype and bool(np.array_equal(st.scales(lin), s))


def validate_safetensors(artifact: str | os.PathLike[str], reference: str | os.PathLike[str] | None = None, *,
                         prompt: str | None = None, tokens: list[int] | None = None,
                         min_cos: dict[str, float] | None = None, use_transformers: bool = True) -> ValidationReport:
    """Check a safetensors checkpoint: format, tensor layout and values always; with `reference` (the
    checkpoint it was made from) every tensor decoded and compared (bitnet-packed: codes identical;
    int4 / int8 and float tensors: cos and relative error per type, ST_MIN_COS and DEFAULT_MIN_COS
    overridden by `min_cos`), per-layer hidden states of the reference forward on both weight sets,
    and the logits vs transformers float32 (else the reference forward)."""
    path = Path(artifact)
    if not path.exists():
        raise ArtifactError(f"{path}: no such file or folder")
    thresholds = {**DEFAULT_MIN_COS, **ST_MIN_COS, **(min_cos or {})}
    ref_str = str(reference) if reference else None
    try:
        st = StArtifact(path)
        arch = st.raw.architecture
    except BitconvError as e:
        return ValidationReport(str(path), ref_str, "?", "?", reference is None, False, f"FAIL: {e}",
                                checks=[Check("readable", False, str(e))], thresholds=thresholds)
    plan, plan_error = None, ""
    if not st.format_note:
        try:
            plan = _plan(st.decoded)
        except BitconvError as e:
            plan_error = str(e)
    report = ValidationReport(str(path), ref_str, arch, st.quant, reference is None, True, "",
                              checks=structural_checks(st, plan, plan_error), thresholds=thresholds)
    if reference is not None and plan is not None:
        _compare(report, st, plan, Path(reference), prompt, tokens, use_transformers, thresholds)
    _verdict(report)
    return report


def _compare(report: ValidationReport, st: StArtifact, plan: Any, reference: Path, prompt: str | None,
             tokens: list[int] | None, use_transformers: bool, thresholds: dict[str, float]) -> None:
    from .api import plan_gguf

    try:
        ref_ckpt, ref_plan = plan_gguf(reference, "f32", force_ternarize=True)
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
    arch = plan.mapping.arch_name
    if arch not in SUPPORTED_ARCHS:
        report.checks.append(Check("forward pass", True, f"skipped: no reference forward for {arch}"))
        return
    # the artifact's hyper-parameters from its own config.json, as the GGUF path takes its metadata
    hp_art = _reference_hparams(plan, ternary)
    hp_ref = _reference_hparams(ref_plan, ternary)
    differ = [f"{k} {getattr(hp_art, k)} vs {getattr(hp_ref, k)}" for k in _SHAPE_HPARAMS
              if getattr(hp_art, k) != getattr(hp_ref, k)]
    if differ:  # another model: the tensor checks already say so; a forward pass cannot run
        report.checks.append(Check("forward pass", False, "skipped: the artifact's config.json and the reference's "
                                   "describe different models (" + ", ".join(differ) + ")"))
        return
    try:
        compare_forward(report, art, hp_art, ref, ref_plan, reference, ternary, prompt, tokens, use_transformers,
                        thresholds)
    except (ArtifactError, QuantizationError, CheckpointError) as e:  # a tensor that does not decode
        report.checks.append(Check("forward pass", False, str(e)))

