"""`bitconv validate`: an artifact against its HF checkpoint, at three levels, with one verdict.

* Tensors: each artifact tensor is decoded (ternary types to codes + scale, the rest dequantized)
  and compared with the checkpoint's tensor as bitconv maps it; ternary codes must be identical to
  re-quantizing the HF weights, other types must reach their cos threshold. Whether the bytes equal
  a fresh encoding of the reference is reported too.
* Layers: the numpy reference forward (bitconv.forward) runs the artifact's own weights and the
  checkpoint's side by side; the cos of the hidden states after every block shows where an error
  enters.
* Logits: the artifact forward vs transformers in float32 when it can run the checkpoint (else the
  reference forward of the HF weights): KL divergence, top-1 agreement, cos.

Without a reference only structural checks run (sizes, code ranges, finite scales, required
metadata such as the rope base), and the report says so.
"""
from __future__ import annotations

import math
import mmap
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from .errors import ArtifactError, BitconvError, UsageError
from .forward import SUPPORTED_ARCHS, TERNARY_LINEARS, Hparams, ReferenceForward, TernaryWeight, WeightSource
from .formats.gguf_io import GGUFSummary, GGUFTensorInfo, read_gguf_summary
from .quant.ternary import scale_for, ternarize

TERNARY_TYPES = ("i2_s", "tl1", "tl2", "tq1_0", "tq2_0")
#: default minimum cos per quant type (tensors of that type, and the logits of a file of that type);
#: the interop tests use the same figures
DEFAULT_MIN_COS: dict[str, float] = {
    "f32": 0.99999, "f16": 0.9999, "bf16": 0.999, "q8_0": 0.999,
    "q4_0": 0.98, "q4_1": 0.98, "q5_0": 0.98, "q5_1": 0.98,
    **{t: 0.999 for t in TERNARY_TYPES},
}
#: a stored ternary scale may differ from the reference by float32 rounding of the absmean (other
#: tools sum in another order) — or, in tq types, by the f16 rounding of the block scale
_SCALE_RTOL = {"i2_s": 1e-6, "tl1": 1e-6, "tl2": 1e-6, "tq1_0": 1e-3, "tq2_0": 1e-3}
DEFAULT_PROMPT = "The quick brown fox jumps over the lazy dog."
_REQUIRED_KEYS = ("block_count", "embedding_length", "attention.head_count", "rope.freq_base")


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
    thresholds: dict[str, float] = field(default_factory=dict)

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

_QUANT_BY_FILE_TYPE: dict[int, str] = {}


def quant_of_file(meta: dict[str, Any]) -> str | None:
    """The quant type name a file was written as, from general.file_type."""
    from .quant.registry import all_quantizers

    if not _QUANT_BY_FILE_TYPE:
        for q in all_quantizers():
            if q.file_type is not None:
                _QUANT_BY_FILE_TYPE.setdefault(int(q.file_type), q.name)
    ft = meta.get("general.file_type")
    return _QUANT_BY_FILE_TYPE.get(int(ft)) if isinstance(ft, int) else None


class ArtifactWeights(WeightSource):
    """A GGUF file's tensors, decoded on demand from a read-only mapping."""

    def __init__(self, path: Path, summary: GGUFSummary, kernel_config: Any = None, ternary: bool = False) -> None:
        self.path = path
        self.summary = summary
        self.by_name = {t.name: t for t in summary.tensors}
        self.kernel_config = kernel_config
        self.ternary = ternary
        self._file = open(path, "rb")
        self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self._buf = np.frombuffer(self._mm, dtype=np.uint8)

    def close(self) -> None:
        del self._buf
        try:
            self._mm.close()
        except BufferError:
            pass
        self._file.close()

    def raw(self, t: GGUFTensorInfo) -> np.ndarray:
        return self._buf[t.offset:t.offset + t.nbytes]

    def ternary_of(self, t: GGUFTensorInfo) -> TernaryWeight | None:
        """Codes and scale of a tensor in a ternary type (None for other types)."""
        from .accel.ternary import unpack_i2s

        if len(t.shape) != 2:
            return None
        m, k = t.shape
        raw = self.raw(t)
        if t.type_name == "I2_S":
            return TernaryWeight(unpack_i2s(raw[:m * k // 4], m, k), raw[m * k // 4:][:4].view(np.float32)[0])
        if t.type_name in ("TL1", "TL2"):
            from .quant.tl import unpack_tl1, unpack_tl2

            tiling = self.kernel_config.get(m, k) if self.kernel_config is not None else None
            if tiling is None:
                raise ArtifactError(f"{t.name}: {t.type_name} needs its tiling: the kernel_config.ini written next to "
                                    f"the file (or --kernel-config) has no section for m={m}, k={k}")
            codes = (unpack_tl2 if t.type_name == "TL2" else unpack_tl1)(raw, tiling)
            return TernaryWeight(codes, self._trailer_scale(t, raw))
        if t.type_name in ("TQ1_0", "TQ2_0"):
            w = self.dense(t)
            scale = np.float32(np.abs(w).max()) if w.any() else np.float32(0)
            return TernaryWeight(np.sign(w).astype(np.int8), scale)
        return None

    def _trailer_scale(self, t: GGUFTensorInfo, raw: np.ndarray) -> np.float32:
        return raw[t.nbytes - 32:][:4].view(np.float32)[0]

    def dense(self, t: GGUFTensorInfo) -> np.ndarray:
        tw = self.ternary_of(t) if t.type_name in ("I2_S", "TL1", "TL2") else None
        if tw is not None:
            return tw.dense()
        try:
            qtype = gguf.GGMLQuantizationType[t.type_name]
        except KeyError:
            raise ArtifactError(f"{t.name}: cannot decode tensor type {t.type_name}") from None
        raw = self.raw(t)
        rows = math.prod(t.shape[:-1]) if len(t.shape) > 1 else 1
        out = gguf.quants.dequantize(raw.reshape(rows, -1), qtype)
        return np.asarray(out, dtype=np.float32).reshape(t.shape)

    def get(self, name: str) -> Any:
        t = self.by_name.get(name)
        if t is None:
            return None
        if self.ternary and name.split(".")[-2] in TERNARY_LINEARS:
            tw = self.ternary_of(t)
            if tw is not None:
                return tw
        return self.dense(t)

    def rows(self, name: str, index: np.ndarray) -> np.ndarray:
        t = self.by_name.get(name)
        if t is None:
            raise ArtifactError(f"tensor {name} is missing")
        if t.type_name in ("I2_S", "TL1", "TL2") or len(t.shape) != 2:
            return super().rows(name, index)
        qtype = gguf.GGMLQuantizationType[t.type_name]
        row_bytes = t.nbytes // t.shape[0]
        raw = self.raw(t).reshape(t.shape[0], row_bytes)[index]
        return np.asarray(gguf.quants.dequantize(raw, qtype), dtype=np.float32).reshape(len(index), -1)


class CheckpointWeights(WeightSource):
    """The HF checkpoint's tensors as bitconv maps them into GGUF names and layout (before any
    quantization); ternary linears as the references ternarize them."""

    def __init__(self, plan: Any) -> None:
        self.plan = plan
        self.by_name = {pt.name: pt for pt in plan}
        self.mapping = plan.mapping

    def float(self, name: str) -> np.ndarray | None:
        pt = self.by_name.get(name)
        return None if pt is None else np.asarray(pt.source.load(), dtype=np.float32)

    def get(self, name: str) -> Any:
        pt = self.by_name.get(name)
        if pt is None:
            return None
        w = np.asarray(pt.source.load(), dtype=np.float32)
        if self.mapping.is_ternary_linear(name):
            known = pt.source.known_scale() if pt.source.known_scale is not None else None
            scale = scale_for([w], known)
            return TernaryWeight(ternarize(w, scale), scale.scale)
        return w


# --- checks ----------------------------------------------------------------------------------------

def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return _compare_arrays(a, b)["cos"]


def _compare_arrays(got: np.ndarray, want: np.ndarray, chunk: int = 1 << 18) -> dict[str, float]:
    """cos, max |got − want| and ‖got − want‖ / ‖want‖ in one float64 pass over cache-sized chunks."""
    g, w = got.reshape(-1), want.reshape(-1)
    dot = gg = ww = ee = 0.0
    emax = 0.0
    for lo in range(0, g.size, chunk):
        a, b = g[lo:lo + chunk].astype(np.float64), w[lo:lo + chunk].astype(np.float64)
        e = a - b
        dot += float(a @ b)
        gg += float(a @ a)
        ww += float(b @ b)
        ee += float(e @ e)
        emax = max(emax, float(np.abs(e).max(initial=0.0)))
    if gg == 0 and ww == 0:
        cos = 1.0
    elif gg == 0 or ww == 0:
        cos = 0.0
    else:
        cos = dot / np.sqrt(gg * ww)
    return {"cos": float(cos), "max_abs_err": emax, "rel_err": float(np.sqrt(ee / ww)) if ww else float(np.sqrt(ee))}


def structural_checks(summary: GGUFSummary, art: ArtifactWeights) -> list[Check]:
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


def _tensor_values_problem(t: GGUFTensorInfo, art: ArtifactWeights) -> str:
    raw = art.raw(t)
    if t.type_name == "I2_S":
        m, k = t.shape
        payload = raw[:m * k // 4]
        if np.any((payload & 0x03) == 3) or np.any((payload & 0x0C) == 0x0C) or np.any((payload & 0x30) == 0x30) \
                or np.any((payload & 0xC0) == 0xC0):
            return "2-bit code 3 (not a ternary value)"
    if t.type_name in ("I2_S", "TL1", "TL2"):
        s = art._trailer_scale(t, raw)
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


def _tensor_check(t: GGUFTensorInfo, art: ArtifactWeights, ref: CheckpointWeights, thresholds: dict[str, float],
                  ternary: bool) -> TensorCheck:
    from .formats.gguf_io import encode_tensor

    pt = ref.by_name.get(t.name)
    tc = TensorCheck(t.name, t.type_name.lower(), list(t.shape), ok=True)
    if pt is None:
        tc.ok, tc.message = False, "not in the reference checkpoint"
        return tc
    if tuple(pt.shape) != tuple(t.shape):
        tc.ok, tc.message = False, f"shape {tuple(t.shape)} but the reference has {tuple(pt.shape)}"
        return tc
    type_name = tc.type
    if ternary and ref.mapping.is_ternary_linear(t.name) and type_name in TERNARY_TYPES:
        got = art.ternary_of(t)
        want = ref.get(t.name)
        assert isinstance(got, TernaryWeight) and isinstance(want, TernaryWeight)
        diff = int(np.count_nonzero(got.codes != want.codes))
        tc.codes_identical, tc.codes_differing = diff == 0, diff
        tc.scale, tc.reference_scale = float(got.scale), float(want.scale)
        ref_scale = float(np.float16(want.scale)) if type_name.startswith("tq") else float(want.scale)
        scale_ok = not want.codes.any() or abs(float(got.scale) - ref_scale) <= _SCALE_RTOL[type_name] * abs(ref_scale)
        tc.cos = _cos(got.dense(), want.dense())
        tc.ok = diff == 0 and scale_ok
        if diff:
            rows = np.nonzero((got.codes != want.codes).any(axis=1))[0]
            tc.message = f"{diff} codes differ from re-quantizing the reference (rows {rows[0]}…{rows[-1]})"
        elif not scale_ok:
            tc.message = f"scale {got.scale!r} but the reference gives {ref_scale!r}"
    else:
        got_f = art.dense(t)
        want_f = ref.float(t.name)
        if ternary and ref.mapping.is_ternary_linear(t.name):  # float file of a ternary model: s·W_t
            want_f = ref.get(t.name).dense()
        assert want_f is not None
        stats = _compare_arrays(got_f, want_f)
        tc.cos, tc.max_abs_err, tc.rel_err = stats["cos"], stats["max_abs_err"], stats["rel_err"]
        need = thresholds.get(type_name)
        if need is not None and tc.cos < need:
            tc.ok, tc.message = False, f"cos {tc.cos:.6f} < {need} ({type_name})"
    try:
        raw, dtype = pt.source.load_stored()
        expected = encode_tensor(pt, raw, None, allow_nonfinite=True, stored_dtype=dtype)
        mine = art.raw(t)
        tc.bytes_identical = expected.nbytes == mine.nbytes and bool(np.array_equal(
            expected.reshape(-1).view(np.uint8), mine))
    except BitconvError:
        tc.bytes_identical = None
    return tc


# --- logits ---------------------------------------------------------------------------------------

def tokenize(reference: Path, prompt: str) -> list[int]:
    """The prompt's token ids with the checkpoint's own tokenizer (tokenizers / sentencepiece)."""
    tj, sp = reference / "tokenizer.json", reference / "tokenizer.model"
    try:
        if tj.is_file():
            from tokenizers import Tokenizer

            ids = Tokenizer.from_file(str(tj)).encode(prompt, add_special_tokens=False).ids
        elif sp.is_file():
            import sentencepiece

            ids = sentencepiece.SentencePieceProcessor(model_file=str(sp)).encode(prompt)
        else:
            raise UsageError(f"{reference} has no tokenizer.json or tokenizer.model; pass --tokens")
    except ImportError as e:
        raise UsageError(f"tokenizing the prompt needs the `{e.name}` package; pass --tokens instead") from None
    if not ids:
        raise UsageError("the prompt tokenizes to nothing; pass a longer --prompt or --tokens")
    return list(ids)


class _RecentResults:
    """The last few reference results (transformers logits, reference forwards) by checkpoint and
    prompt: validating several artifacts of one checkpoint runs the reference once."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.items: dict[tuple[Any, ...], Any] = {}

    @staticmethod
    def key(reference: Path, *parts: Any) -> tuple[Any, ...]:
        stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(reference.iterdir())
                      if p.is_file())
        return (str(reference.resolve()), stamp) + parts

    def get_or_make(self, key: tuple[Any, ...], make: Any) -> Any:
        if key not in self.items:
            self.items[key] = make()
            while len(self.items) > self.size:
                self.items.pop(next(iter(self.items)))
        return self.items[key]


_RECENT = _RecentResults()


def transformers_logits(reference: Path, tokens: list[int]) -> np.ndarray | None:
    """All-position float32 logits from transformers (eager attention, float32), or None when it is
    not installed or has no class for this checkpoint."""
    return _RECENT.get_or_make(_RECENT.key(reference, "transformers", tuple(tokens)),
                               lambda: _transformers_logits(reference, tokens))


def _transformers_logits(reference: Path, tokens: list[int]) -> np.ndarray | None:
    try:
        import torch
        import transformers
    except ImportError:
        return None
    import json

    cfg = json.loads((reference / "config.json").read_text())
    arch = (cfg.get("architectures") or [""])[0]
    if not hasattr(transformers, arch):
        return None
    import torch._dynamo

    prev = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(reference), dtype=torch.float32,
                                                                  attn_implementation="eager")
        model.eval()
        with torch.no_grad():
            out = model(torch.tensor([tokens], dtype=torch.long)).logits[0]
        return out.to(torch.float32).numpy()
    finally:
        torch._dynamo.config.disable = prev


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean over positions of KL(P || Q), P the reference."""
    p = p_logits.astype(np.float64)
    q = q_logits.astype(np.float64)
    lp = p - p.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    lq = q - q.max(-1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))


# --- entry point ----------------------------------------------------------------------------------

def validate(artifact: str | os.PathLike[str], reference: str | os.PathLike[str] | None = None, *,
             prompt: str | None = None, tokens: list[int] | None = None,
             min_cos: dict[str, float] | None = None, kernel_config: str | os.PathLike[str] | None = None,
             use_transformers: bool = True) -> ValidationReport:
    """Check a GGUF artifact: structure always; with `reference` (the HF checkpoint it came from)
    tensors, per-layer hidden states and logits against the thresholds (DEFAULT_MIN_COS, overridden
    per type by `min_cos`)."""
    from .quant.tl import KernelConfig

    path = Path(artifact)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    thresholds = {**DEFAULT_MIN_COS, **(min_cos or {})}
    try:
        summary = read_gguf_summary(path)
    except ArtifactError as e:
        return ValidationReport(str(path), str(reference) if reference else None, "?", "?", reference is None,
                                False, f"FAIL: {e}", checks=[Check("readable", False, str(e))], thresholds=thresholds)
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
    art = ArtifactWeights(path, summary, kc, ternary=has_ternary_types or arch.startswith("bitnet"))
    try:
        report = ValidationReport(str(path), str(reference) if reference else None, arch, quant,
                                  reference is None, True, "", thresholds=thresholds)
        report.checks = structural_checks(summary, art)
        if reference is not None:
            _compare(report, art, summary, Path(reference), prompt, tokens, kc, use_transformers, thresholds)
    finally:
        art.close()
    _verdict(report)
    return report


def _compare(report: ValidationReport, art: ArtifactWeights, summary: GGUFSummary, reference: Path,
             prompt: str | None, tokens: list[int] | None, kc: Any, use_transformers: bool,
             thresholds: dict[str, float]) -> None:
    from .api import plan_gguf

    if report.quant == "?":
        report.checks.append(Check("file type", False, "general.file_type names no quant type bitconv knows"))
        return
    try:
        _, plan = plan_gguf(reference, report.quant, kernel_config=kc, force_ternarize=True)
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
        report.checks.append(Check("forward pass", True, f"skipped: no reference forward for {report.architecture}"))
        return
    text = prompt or DEFAULT_PROMPT
    ids = tokens or _RECENT.get_or_make(_RECENT.key(reference, "tokens", text), lambda: tokenize(reference, text))
    try:
        hp_art = Hparams.from_metadata(summary.metadata, ternary=ternary)
    except ArtifactError as e:
        report.checks.append(Check("forward pass", False, str(e)))
        return
    hp_ref = _reference_hparams(plan, ternary)
    ref_out = _RECENT.get_or_make(_RECENT.key(reference, "forward", tuple(ids), ternary),
                                  lambda: ReferenceForward(hp_ref, ref).run(ids))
    art_out = ReferenceForward(hp_art, art).run(ids)
    report.layers = [{"layer": i, "cos": _cos(a, b)} for i, (a, b) in enumerate(zip(art_out.hidden, ref_out.hidden))]
    target, source = None, ""
    if use_transformers:
        target = transformers_logits(reference, ids)
        source = "transformers float32"
    if target is None or target.shape != art_out.logits.shape:
        target, source = ref_out.logits, "numpy forward of the HF weights"
    if ternary:
        source += " (BitLinear reference: ternary weights, int8 activations)"
    need = thresholds.get(report.quant, 0.0)
    cos = _cos(art_out.logits, target)
    top1 = float(np.mean(art_out.logits.argmax(-1) == target.argmax(-1)))
    report.logits = LogitsCheck(source, len(ids), cos, _kl(target, art_out.logits), top1, need, cos >= need)


def _reference_hparams(plan: Any, ternary: bool) -> Hparams:
    """The hyper-parameters of the reference run, from config.json (not from the artifact's
    metadata, so a wrong or missing key in the artifact shows up in its logits)."""
    m = plan.mapping
    c = m.config
    return Hparams(arch=m.arch_name, n_layers=m.n_layers, n_embd=m.hidden, n_head=m.n_head, n_head_kv=m.n_head_kv,
                   head_dim=m.head_dim, eps=float(c.get("rms_norm_eps") or 1e-6),
                   rope_base=float(m.rope_theta or m.default_rope_theta), rope_dim=m.head_dim,
                   n_expert_used=int(c.get("num_experts_per_tok") or 0), ternary=ternary)


def _verdict(r: ValidationReport) -> None:
    failed = [c for c in r.checks if not c.ok]
    bad_tensors = [t for t in r.tensors if not t.ok]
    problems = [f"{c.name}: {c.message}" for c in failed]
    problems += [f"{t.name}: {t.message}" for t in bad_tensors[:3]]
    if len(bad_tensors) > 3:
        problems.append(f"and {len(bad_tensors) - 3} more tensors")
    if r.logits is not None and not r.logits.ok:
        problems.append(f"logits cos {r.logits.cos:.6f} < {r.logits.min_cos} ({r.quant})")
    r.passed = not problems
    if r.passed:
        if r.structural_only:
            r.verdict = "PASS (structural checks only: no --reference, numerics not checked)"
        elif r.logits is not None:
            r.verdict = (f"PASS: {len(r.tensors)} tensors match; logits cos {r.logits.cos:.6f} ≥ {r.logits.min_cos}, "
                         f"top-1 {r.logits.top1:.0%}, KL {r.logits.kl:.2e} vs {r.logits.reference}")
        else:
            r.verdict = f"PASS: {len(r.tensors)} tensors match"
    else:
        r.verdict = "FAIL: " + "; ".join(problems)
