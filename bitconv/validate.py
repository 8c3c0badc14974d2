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

ONNX exports (an hf2onnx folder or its model.onnx) go to `validate_onnx`: onnx.checker (full check),
the graph IO names, MatMulNBits attributes, finite scales and genai_config.json; with a reference,
every initializer decoded back to a float matrix (ternary 2-bit codes identical) and the onnxruntime
logits of the prompt; per-layer hidden states are skipped (the graph exposes only logits).
"""
from __future__ import annotations

import math
import mmap
import os
import re
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
    "q4_0": 0.97, "q4_1": 0.97, "q5_0": 0.98, "q5_1": 0.98,
    # k-quant tensors (a broken layout gives cos near 0) and the llama-quantize file types; loose
    # for the 2- and 3-bit types, whose logits drift far on small models even when exact
    "q2_k": 0.75, "q3_k": 0.9, "q3_k_m": 0.9, "q3_k_l": 0.9, "q4_k": 0.95, "q4_k_m": 0.95,
    "q5_k": 0.98, "q5_k_m": 0.98, "q6_k": 0.99,
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
    if reference_mismatch(tc, None if pt is None else pt.shape):
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
    per type by `min_cos`). An ONNX folder (or its model.onnx) goes to `validate_onnx`, a safetensors
    checkpoint folder (or .safetensors file) to `validate_st.validate_safetensors`."""
    from .quant.tl import KernelConfig

    if is_onnx_artifact(artifact):  # an ONNX folder / model.onnx: validate_onnx (no kernel config there)
        return validate_onnx(artifact, reference, prompt=prompt, tokens=tokens, min_cos=min_cos,
                             use_transformers=use_transformers)
    from .inspectors import artifact_kind

    if artifact_kind(artifact) == "safetensors":  # a hf2st folder or .safetensors file: validate_st
        if kernel_config is not None:
            raise UsageError("--kernel-config applies to tl1/tl2 GGUF files, not safetensors checkpoints")
        from .validate_st import validate_safetensors

        return validate_safetensors(artifact, reference, prompt=prompt, tokens=tokens, min_cos=min_cos,
                                    use_transformers=use_transformers)
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
    try:
        hp_art = Hparams.from_metadata(summary.metadata, ternary=ternary)
    except ArtifactError as e:
        report.checks.append(Check("forward pass", False, str(e)))
        return
    compare_forward(report, art, hp_art, ref, plan, reference, ternary, prompt, tokens, use_transformers, thresholds)


def compare_forward(report: ValidationReport, art: WeightSource, hp_art: Hparams, ref: CheckpointWeights, plan: Any,
                    reference: Path, ternary: bool, prompt: str | None, tokens: list[int] | None,
                    use_transformers: bool, thresholds: dict[str, float]) -> None:
    """The reference forward on the artifact's weights and on the checkpoint's: hidden-state cos per
    layer, and the artifact's logits vs transformers float32 (else the checkpoint's forward), held to
    thresholds[report.quant]. Shared by every artifact format that decodes to weights in GGUF naming."""
    text = prompt or DEFAULT_PROMPT
    ids = tokens or _RECENT.get_or_make(_RECENT.key(reference, "tokens", text), lambda: tokenize(reference, text))
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


# --- ONNX folders ---------------------------------------------------------------------------------
#
# An ONNX export (bitconv hf2onnx: model.onnx + model.onnx.data + genai_config.json) is checked at
# two of the three levels: tensors (each MatMulNBits / MatMul / Gather initializer decoded back to a
# float matrix [N, K] and compared with the checkpoint tensor it came from; ternary 2-bit codes must
# equal re-quantizing the HF weights) and logits (onnxruntime runs the prompt; compared with
# transformers float32 or the numpy reference forward). Per-layer hidden states are not compared:
# the graph exposes only logits and the KV cache.

#: default minimum cos per ONNX storage type (tensors stored so, and the logits of an export of that
#: --quant); the figures of the ONNX issue (int2: vs the BitLinear reference)
ONNX_MIN_COS: dict[str, float] = {"f32": 0.99999, "f16": 0.9999, "int8": 0.999, "int4": 0.98, "int2": 0.995}
_ONNX_INPUTS = ("input_ids", "attention_mask", "position_ids")
#: a stored ternary scale may differ from the reference's float32 absmean by rounding
_ONNX_SCALE_RTOL = 1e-6
#: the cached decode of the last prompt token vs the same position of the full-prompt run: at least
#: this, or the export's logits threshold when stricter (f32/f16). MatMulNBits takes other kernels for
#: one row than for many (int8 activations at accuracy level 4): a 24-layer int4 graph measured 0.99988
_KV_MIN_COS = 0.999


def is_onnx_artifact(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return p.suffix == ".onnx" or (p.is_dir() and (p / "model.onnx").is_file())


@dataclass
class _OnnxWeight:
    """A weight the graph uses, by bitconv tensor name (blk.N.attn_q.weight …)."""

    name: str
    kind: str  # nbits / matmul (initializer [K, N]) / gather (embedding table) / plain (norms, biases)
    init: str  # the initializer holding the data (MatMulNBits: B)
    scales: str | None = None
    zero_points: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


class OnnxArtifact:
    """An ONNX graph (read without its external data) and its initializers, external ones read
    through a read-only memory map of the data file."""

    def __init__(self, path: Path) -> None:
        import onnx

        self.model_path = path / "model.onnx" if path.is_dir() else path
        self.folder = self.model_path.parent
        if not self.model_path.is_file():
            raise ArtifactError(f"{path}: no model.onnx")
        try:
            self.model = onnx.load(str(self.model_path), load_external_data=False)
        except Exception as e:  # protobuf DecodeError and friends
            raise ArtifactError(f"{self.model_path}: not a readable ONNX model ({e})") from None
        self.inits = {t.name: t for t in self.model.graph.initializer}
        self._maps: dict[str, np.ndarray] = {}

    def close(self) -> None:
        self._maps.clear()

    def _external(self, t: Any) -> tuple[Path, int, int | None]:
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if not loc or Path(loc).is_absolute() or ".." in Path(loc).parts:
            raise ArtifactError(f"{t.name}: external data location {loc!r} is not a file inside the folder")
        length = info.get("length")
        return self.folder / loc, int(info.get("offset", 0) or 0), int(length) if length is not None else None

    def array(self, name: str) -> np.ndarray:
        """The initializer's values (no copy for external data)."""
        from onnx import TensorProto, helper, numpy_helper

        t = self.inits[name]
        if t.data_location != TensorProto.EXTERNAL:
            return numpy_helper.to_array(t)
        path, offset, length = self._external(t)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
        need = math.prod(t.dims) * dtype.itemsize
        if length is not None and length != need:
            raise ArtifactError(f"{name}: external data length {length} but dims {list(t.dims)} need {need} bytes")
        key = str(path)
        if key not in self._maps:
            if not path.is_file():
                raise ArtifactError(f"{name}: external data file {path.name} is missing")
            size = path.stat().st_size
            self._maps[key] = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        buf = self._maps[key]
        if offset + need > buf.size:
            raise ArtifactError(f"{name}: external data [{offset}, {offset + need}) is past the end of {path.name} "
                                f"({buf.size} bytes)")
        return buf[offset:offset + need].view(dtype).reshape(tuple(t.dims))

    def weights(self) -> list[_OnnxWeight]:
        """The graph's weights in node order (each once), then the remaining named initializers."""
        from onnx import helper

        out: list[_OnnxWeight] = []
        seen: set[str] = set()
        for node in self.model.graph.node:
            ins = list(node.input)
            if node.op_type == "MatMulNBits" and len(ins) >= 3 and ins[1] in self.inits and ins[1] not in seen:
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                zp = ins[3] if len(ins) > 3 and ins[3] else None
                out.append(_OnnxWeight(re.sub(r"\.q\d+$", "", ins[1]), "nbits", ins[1], ins[2], zp, attrs))
                seen.update(x for x in (ins[1], ins[2], zp) if x)
            elif node.op_type == "MatMul" and len(ins) == 2 and ins[1] in self.inits and ins[1] not in seen \
                    and len(self.inits[ins[1]].dims) == 2:
                out.append(_OnnxWeight(ins[1].removesuffix(".T"), "matmul", ins[1]))
                seen.add(ins[1])
            elif node.op_type == "Gather" and ins and ins[0] in self.inits and ins[0] not in seen \
                    and len(self.inits[ins[0]].dims) == 2:
                out.append(_OnnxWeight(ins[0], "gather", ins[0]))
                seen.add(ins[0])
        for name in self.inits:
            if name not in seen and not name.startswith("const/"):
                out.append(_OnnxWeight(name, "plain", name))
        return out

    def nbits_tensor(self, w: _OnnxWeight) -> Any:
        from .quant import nbits

        bits, bs, k, n = (int(w.attrs.get(a, 0)) for a in ("bits", "block_size", "K", "N"))
        packed = self.array(w.init)
        nb = nbits.n_blocks(k, bs)
        packed = packed.reshape(n, nb, bs * bits // 8)
        scales = np.asarray(self.array(w.scales), dtype=np.float32).reshape(n, nb)
        return nbits.NBitsTensor(packed, scales, bits, bs, k)

    def zero_points(self, w: _OnnxWeight, t: Any) -> np.ndarray | None:
        """Per-block zero points [N, n_blocks] (None: the op's default 2^(bits−1))."""
        from .quant import nbits

        if w.zero_points is None:
            return None
        z = self.array(w.zero_points)
        n, nb = t.scales.shape
        if z.dtype == np.uint8:
            z = nbits.unpack_codes(z.reshape(n, -1), t.bits)[:, :nb] if t.bits < 8 else z.reshape(n, nb)
        return np.asarray(z, dtype=np.float32).reshape(n, nb)

    def codes(self, w: _OnnxWeight) -> tuple[Any, np.ndarray]:
        """(NBitsTensor, signed codes [N, K] = stored code − zero point) of a MatMulNBits weight."""
        from .quant import nbits

        t = self.nbits_tensor(w)
        raw = nbits.unpack_codes(t.packed, t.bits).astype(np.int16)  # [N, nb, bs]
        zp = self.zero_points(w, t)
        raw -= (np.int16(1 << (t.bits - 1)) if zp is None else zp.astype(np.int16)[..., None])
        return t, raw.reshape(t.n, -1)[:, : t.k]

    def dense(self, w: _OnnxWeight) -> np.ndarray:
        """The weight as float32 in the checkpoint's layout ([N, K] for matrices)."""
        from .quant import nbits

        if w.kind == "nbits":
            t = self.nbits_tensor(w)
            if w.zero_points is None:
                return nbits.dequantize(t)
            _, codes = self.codes(w)
            nb, bs = t.scales.shape[1], t.block_size
            padded = np.zeros((t.n, nb * bs), np.float32)
            padded[:, : t.k] = codes
            return (padded.reshape(t.n, nb, bs) * t.scales[..., None]).reshape(t.n, -1)[:, : t.k]
        a = np.asarray(self.array(w.init), dtype=np.float32)
        return np.ascontiguousarray(a.T) if w.kind == "matmul" else a

    def storage(self, w: _OnnxWeight) -> str:
        """f32 / f16 / int8 / int4 / int2 / another numpy dtype name."""
        from onnx import helper

        if w.kind == "nbits":
            return f"int{int(w.attrs.get('bits', 0))}"
        dt = np.dtype(helper.tensor_dtype_to_np_dtype(self.inits[w.init].data_type))
        return {"float32": "f32", "float16": "f16"}.get(dt.name, dt.name)


def onnx_quant_of(art: OnnxArtifact) -> tuple[str, int | None]:
    """The --quant an export was written with, and its MatMulNBits block size (None for float)."""
    bits_bs: list[tuple[int, int]] = []
    for node in art.model.graph.node:
        if node.op_type == "MatMulNBits":
            from onnx import helper

            a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
            bits_bs.append((int(a.get("bits", 0)), int(a.get("block_size", 0))))
    for bits in (2, 4, 8):
        for b, bs in bits_bs:
            if b == bits:
                return f"int{bits}", bs
    weights = [w for w in art.weights() if w.kind == "matmul"]
    if weights and art.storage(weights[0]) == "f16":
        return "f16", None
    return "f32", None


def onnx_structural_checks(art: OnnxArtifact) -> tuple[list[Check], dict[str, Any] | None]:
    import json

    import onnx

    from .quant import nbits

    checks: list[Check] = []
    try:
        onnx.checker.check_model(str(art.model_path), full_check=True)
        checks.append(Check("onnx.checker (full_check)", True, "passes"))
    except Exception as e:
        checks.append(Check("onnx.checker (full_check)", False, str(e).strip().splitlines()[0][:300]))

    g = art.model.graph
    ins, outs = {i.name for i in g.input}, {o.name for o in g.output}
    # position_ids: bitconv's graphs take it; onnxruntime-genai's builder graphs (GroupQueryAttention) do not
    required = _ONNX_INPUTS if art.model.producer_name == "bitconv" else _ONNX_INPUTS[:2]
    missing = [n for n in required if n not in ins] + (["logits"] if "logits" not in outs else [])
    past = sorted(int(m.group(1)) for n in ins if (m := re.fullmatch(r"past_key_values\.(\d+)\.key", n)))
    n_layers = len(past)
    for i in range(n_layers):
        for want, pool in ((f"past_key_values.{i}.key", ins), (f"past_key_values.{i}.value", ins),
                           (f"present.{i}.key", outs), (f"present.{i}.value", outs)):
            if want not in pool:
                missing.append(want)
    if past != list(range(n_layers)):
        missing.append(f"past_key_values.* numbered 0..{n_layers - 1} (got {past[:5]}…)")
    if not n_layers:
        missing.append("past_key_values.0.key (no KV cache inputs)")
    checks.append(Check("graph IO", not missing, ("missing " + ", ".join(missing[:6])) if missing else
                        f"input_ids, attention_mask, position_ids, {n_layers} × past/present key/value → logits"))

    cfg: dict[str, Any] | None = None
    cpath = art.folder / "genai_config.json"
    if not cpath.is_file():
        checks.append(Check("genai_config.json", False, "missing (onnxruntime-genai cannot load the folder)"))
    else:
        try:
            cfg = json.loads(cpath.read_text(encoding="utf-8"))
            dec = cfg["model"]["decoder"]
            problems = []
            if dec.get("filename") != art.model_path.name:
                problems.append(f"decoder.filename {dec.get('filename')!r} is not {art.model_path.name}")
            if int(dec.get("num_hidden_layers", -1)) != n_layers:
                problems.append(f"num_hidden_layers {dec.get('num_hidden_layers')} but the graph has {n_layers} "
                                "layers of KV cache")
            for key, name in (dec.get("inputs") or {}).items():
                if "%d" not in str(name) and name not in ins:
                    problems.append(f"inputs.{key} = {name!r} is not a graph input")
            for key, name in (dec.get("outputs") or {}).items():
                if "%d" not in str(name) and name not in outs:
                    problems.append(f"outputs.{key} = {name!r} is not a graph output")
            checks.append(Check("genai_config.json", not problems, "; ".join(problems) if problems else
                                f"type {cfg['model'].get('type')}, {n_layers} layers"))
        except (OSError, ValueError, KeyError, TypeError) as e:
            checks.append(Check("genai_config.json", False, f"unreadable: {e}"))

    bad_attrs: list[str] = []
    bad_values: list[str] = []
    n_nbits = 0
    for w in art.weights():
        try:
            if w.kind == "nbits":
                n_nbits += 1
                a = w.attrs
                bits, bs, k, n = (int(a.get(x, 0)) for x in ("bits", "block_size", "K", "N"))
                if bits not in nbits.SUPPORTED_BITS:
                    runs = "/".join(map(str, nbits.SUPPORTED_BITS))
                    bad_attrs.append(f"{w.init}: bits {bits} (onnxruntime runs {runs})")
                    continue
                if (problem := nbits.block_size_error(bs)):
                    bad_attrs.append(f"{w.init}: {problem}")
                    continue
                nb = nbits.n_blocks(k, bs) if k > 0 else 0
                b_t, s_t = art.inits.get(w.init), art.inits.get(w.scales or "")
                if k <= 0 or n <= 0 or s_t is None:
                    bad_attrs.append(f"{w.init}: K={k}, N={n}, scales {'present' if s_t is not None else 'missing'}")
                    continue
                if math.prod(b_t.dims) != n * nb * bs * bits // 8 or math.prod(s_t.dims) != n * nb:
                    bad_attrs.append(f"{w.init}: B {list(b_t.dims)} / scales {list(s_t.dims)} do not fit K={k}, "
                                     f"N={n}, bits {bits}, block {bs}")
                    continue
                if a.get("accuracy_level", 0) != 4 and bits in (2, 8):
                    bad_attrs.append(f"{w.init}: accuracy_level {a.get('accuracy_level', 0)}: onnxruntime "
                                     "dequantizes 2/8-bit weights on every call below level 4")
                scales = art.array(w.scales)
                if not np.isfinite(scales).all():
                    bad_values.append(f"{w.scales}: {int(scales.size - np.count_nonzero(np.isfinite(scales)))} "
                                      "NaN/Inf scale(s)")
                if bits == 2 and w.zero_points is None:
                    packed = art.array(w.init)
                    if any(np.any(((packed >> np.uint8(s)) & np.uint8(3)) == 0) for s in (0, 2, 4, 6)):
                        t = art.nbits_tensor(w)
                        codes = nbits.unpack_codes(t.packed, 2).reshape(t.n, -1)[:, :k]
                        if np.any(codes == 0):
                            bad_values.append(f"{w.init}: 2-bit code 0 (−2: not a ternary value)")
            else:
                arr = art.array(w.init)
                if arr.dtype.kind == "f" and not _all_finite(arr):
                    bad_values.append(f"{w.init}: NaN/Inf value(s)")
        except BitconvError as e:
            bad_values.append(str(e))
    checks.append(Check("MatMulNBits attributes", not bad_attrs, "; ".join(bad_attrs[:5]) if bad_attrs else
                        f"{n_nbits} nodes: bits in {{2, 4, 8}}, block size a power of two ≥ 16, shapes fit"
                        if n_nbits else "no MatMulNBits nodes (float export)"))
    has_2bit = any(w.kind == "nbits" and int(w.attrs.get("bits", 0)) == 2 for w in art.weights())
    checks.append(Check("tensor values", not bad_values, "; ".join(bad_values[:5]) if bad_values
                        else "scales and floats finite" + (", 2-bit codes ternary" if has_2bit else "")))
    return checks, cfg


def _all_finite(a: np.ndarray, chunk: int = 1 << 22) -> bool:
    flat = a.reshape(-1)
    return all(np.isfinite(flat[i:i + chunk]).all() for i in range(0, flat.size, chunk))


def _rel_err_bound(min_cos: float) -> float:
    """‖got − want‖ / ‖want‖ allowed next to a cos threshold: quantization noise orthogonal to the
    weights at cos c has relative size tan θ = sqrt(1 − c²) / c; 1.5× that for headroom (int4 0.98:
    0.30, int8 0.999: 0.067, f16: 0.021, f32: 0.0067)."""
    c = min(max(min_cos, 1e-6), 1.0)
    return 1.5 * math.sqrt(max(1.0 - c * c, 0.0)) / c


def _onnx_tensor_check(art: OnnxArtifact, w: _OnnxWeight, plan: Any, thresholds: dict[str, float]) -> TensorCheck:
    from .quant import nbits

    storage = art.storage(w)
    planned = {t.name: t for t in plan.tensors}.get(w.name)
    if planned is None:
        return TensorCheck(w.init, storage, [], False, message="no reference tensor for this initializer")
    if w.kind == "nbits":
        shape = [int(w.attrs.get("N", 0)), int(w.attrs.get("K", 0))]
    else:
        dims = list(art.inits[w.init].dims)
        shape = dims[::-1] if w.kind == "matmul" else dims
    tc = TensorCheck(w.name, storage, shape, ok=True)
    if tuple(shape) != tuple(planned.shape):
        tc.ok, tc.message = False, f"shape {tuple(shape)} but the reference has {tuple(planned.shape)}"
        return tc
    src_name = "token_embd.weight" if (planned.role == "lm_head" and w.name not in plan.sources) else w.name
    src = plan.sources[src_name]
    want = np.asarray(src.load(), dtype=np.float32)
    ternary = planned.role == "ternary"
    ref_codes = ref_scale = None
    if ternary:
        known = src.known_scale() if src.known_scale is not None else None
        ts = scale_for([want], known)
        ref_codes, ref_scale = ternarize(want, ts), ts
        want = ref_codes.astype(np.float32) / ts.inv  # s · W_t as the references compute it
    if ternary and w.kind == "nbits":
        t, codes = art.codes(w)
        diff = int(np.count_nonzero(codes != ref_codes))
        tc.codes_identical, tc.codes_differing = diff == 0, diff
        s = float(t.scales.reshape(-1)[0]) if t.scales.size else 0.0
        tc.scale, tc.reference_scale = s, float(ref_scale.scale)
        scale_ok = not ref_codes.any() or bool(np.all(np.abs(t.scales - ref_scale.scale)
                                                      <= _ONNX_SCALE_RTOL * abs(float(ref_scale.scale))))
        got = art.dense(w)
        stats = _compare_arrays(got, want)
        tc.cos, tc.max_abs_err, tc.rel_err = stats["cos"], stats["max_abs_err"], stats["rel_err"]
        tc.ok = diff == 0 and scale_ok
        if diff:
            rows = np.nonzero((codes != ref_codes).any(axis=1))[0]
            tc.message = f"{diff} codes differ from re-quantizing the reference (rows {rows[0]}…{rows[-1]})"
        elif not scale_ok:
            bad = np.abs(t.scales - ref_scale.scale) > _ONNX_SCALE_RTOL * abs(float(ref_scale.scale))
            tc.message = (f"{int(bad.sum())} block scale(s) differ from the reference's {float(ref_scale.scale)!r} "
                          f"(e.g. {float(t.scales[bad][0])!r})")
        if w.zero_points is None and tc.ok:
            q = nbits.quantize_ternary(ref_codes, float(ref_scale.scale), t.block_size, t.bits)
            tc.bytes_identical = bool(np.array_equal(q.packed, t.packed) and np.array_equal(q.scales, t.scales))
        return tc
    got = art.dense(w)
    stats = _compare_arrays(got, want)
    tc.cos, tc.max_abs_err, tc.rel_err = stats["cos"], stats["max_abs_err"], stats["rel_err"]
    need = thresholds.get(storage)
    if need is not None and tc.cos < need:
        tc.ok, tc.message = False, f"cos {tc.cos:.6f} < {need} ({storage})"
    elif need is not None and tc.rel_err is not None and tc.rel_err > _rel_err_bound(need):
        # cos cannot see a wrong magnitude (a scales initializer multiplied by a constant)
        tc.ok, tc.message = False, f"rel err {tc.rel_err:.4f} > {_rel_err_bound(need):.4f} ({storage}: wrong scale?)"
    try:  # a fresh encoding of the reference, as the writer does it
        if w.kind == "nbits" and w.zero_points is None:
            t = art.nbits_tensor(w)
            q = nbits.quantize_rows(want, t.bits, t.block_size)
            tc.bytes_identical = bool(np.array_equal(q.packed, t.packed) and np.array_equal(q.scales, t.scales))
        elif w.kind != "nbits":
            raw = art.array(w.init)
            enc = np.ascontiguousarray((want.T if w.kind == "matmul" else want).astype(raw.dtype))
            tc.bytes_identical = bool(enc.shape == raw.shape and np.array_equal(
                enc.reshape(-1).view(np.uint8), np.ascontiguousarray(raw).reshape(-1).view(np.uint8)))
    except (BitconvError, ValueError, TypeError):
        tc.bytes_identical = None
    return tc


def onnx_logits(model_path: Path, ids: list[int], split: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """All-position logits [S, vocab] of one onnxruntime (CPU EP) run of the prompt; with `split`, also
    the last position's logits from running ids[:split] and then ids[split:] through the KV cache."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    declared = {i.name: i for i in sess.get_inputs()}

    def run(tokens: list[int], start: int, past: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {"input_ids": np.array([tokens], np.int64),
                 "attention_mask": np.ones((1, start + len(tokens)), np.int64),
                 "position_ids": np.arange(start, start + len(tokens), dtype=np.int64)[None]}
        feeds = {k: v for k, v in feeds.items() if k in declared}
        feeds.update(past)
        return dict(zip(names, sess.run(names, feeds)))

    empty = {}
    for name, i in declared.items():
        if name.startswith("past_key_values."):
            dt = np.float16 if i.type == "tensor(float16)" else np.float32
            empty[name] = np.zeros((1, int(i.shape[1]), 0, int(i.shape[3])), dtype=dt)
    full = np.asarray(run(ids, 0, empty)["logits"][0], dtype=np.float32)
    cached = None
    if split is not None and 0 < split < len(ids):
        first = run(ids[:split], 0, empty)
        past = {n.replace("present.", "past_key_values."): v for n, v in first.items() if n.startswith("present.")}
        cached = np.asarray(run(ids[split:], split, past)["logits"][0, -1], dtype=np.float32)
    return full, cached


def validate_onnx(artifact: str | os.PathLike[str], reference: str | os.PathLike[str] | None = None, *,
                  prompt: str | None = None, tokens: list[int] | None = None,
                  min_cos: dict[str, float] | None = None, use_transformers: bool = True) -> ValidationReport:
    """Check an ONNX export (a folder with model.onnx, or the model.onnx file): structure always
    (onnx.checker full check, graph IO names, MatMulNBits attributes, finite scales, genai_config.json);
    with `reference`, every weight against the checkpoint (ternary 2-bit codes identical, others by
    cos) and the onnxruntime logits of the prompt against transformers float32 (else the numpy
    reference forward), with thresholds ONNX_MIN_COS overridden per type by `min_cos`. Per-layer
    hidden states are not compared (the graph exposes only logits)."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        raise UsageError("validating ONNX artifacts needs the onnx package: pip install 'bitconv[onnx]'")
    path = Path(artifact)
    if not path.exists():
        raise ArtifactError(f"{path}: no such file or folder")
    thresholds = {**ONNX_MIN_COS, **(min_cos or {})}
    ref_str = str(reference) if reference else None
    try:
        art = OnnxArtifact(path)
    except ArtifactError as e:
        r = ValidationReport(str(path), ref_str, "?", "?", reference is None, False, f"FAIL: {e}",
                             checks=[Check("readable", False, str(e))], thresholds=thresholds)
        return r
    try:
        quant, block_size = onnx_quant_of(art)
        checks, cfg = onnx_structural_checks(art)
        arch = str(((cfg or {}).get("model") or {}).get("type") or "?")
        report = ValidationReport(str(art.folder if path.is_dir() else path), ref_str, arch, quant, reference is None,
                                  True, "", checks=checks, thresholds=thresholds)
        if reference is not None:
            _compare_onnx(report, art, Path(reference), quant, block_size, prompt, tokens, use_transformers,
                          thresholds)
    finally:
        art.close()
    _verdict(report)
    return report


def _compare_onnx(report: ValidationReport, art: OnnxArtifact, reference: Path, quant: str, block_size: int | None,
                  prompt: str | None, tokens: list[int] | None, use_transformers: bool,
                  thresholds: dict[str, float]) -> None:
    from .api import plan_gguf
    from .convert.arch import mapping_for
    from .convert.checkpoint import Checkpoint
    from .formats import onnx_io

    try:
        checkpoint = Checkpoint.open(reference)
        mapping = mapping_for(checkpoint)
        plan = onnx_io.make_onnx_plan(checkpoint, mapping, onnx_io.get_onnx_quant(quant), block_size=block_size,
                                      force_ternarize=True)
    except BitconvError as e:
        report.checks.append(Check("reference", False, str(e)))
        return
    report.architecture = checkpoint.architecture
    ternary_model = bool(plan.bitlinear)
    weights = art.weights()
    found = {w.name for w in weights}
    for t in plan.tensors:
        if t.name not in found:
            report.tensors.append(TensorCheck(t.name, t.storage, list(t.shape), False,
                                              message="in the reference, missing from the artifact"))
    for w in weights:
        try:
            report.tensors.append(_onnx_tensor_check(art, w, plan, thresholds))
        except BitconvError as e:
            report.tensors.append(TensorCheck(w.name, art.storage(w), [], False, message=str(e)))
    report.checks.append(Check("per-layer hidden states", True,
                               "skipped for ONNX: the graph exposes only logits and the KV cache"))

    text = prompt or DEFAULT_PROMPT
    ids = tokens or _RECENT.get_or_make(_RECENT.key(reference, "tokens", text), lambda: tokenize(reference, text))
    try:
        got, cached = onnx_logits(art.model_path, ids, split=len(ids) - 1 if len(ids) > 1 else None)
    except Exception as e:  # onnxruntime raises its own exception types
        report.checks.append(Check("onnxruntime run", False, str(e).strip().splitlines()[0][:300]))
        return
    if cached is not None:
        c = _cos(cached, got[-1])
        kv_need = max(_KV_MIN_COS, thresholds.get(quant, 0.0))
        report.checks.append(Check("KV cache", c >= kv_need,
                                   f"last token through the cache vs the full prompt run: cos {c:.7f}"
                                   + ("" if c >= kv_need else f" < {kv_need}")))
    target, source = None, ""
    if use_transformers:
        target = transformers_logits(reference, ids)
        source = "transformers float32"
    if target is None or target.shape != got.shape:
        try:
            _, gplan = plan_gguf(reference, "f32", force_ternarize=True)
        except BitconvError as e:
            report.checks.append(Check("forward pass", False, str(e)))
            return
        if gplan.mapping.arch_name not in SUPPORTED_ARCHS:
            report.checks.append(Check("forward pass", True,
                                       f"skipped: no reference forward for {gplan.mapping.arch_name}"))
            return
        hp_ref = _reference_hparams(gplan, ternary_model)
        ref = CheckpointWeights(gplan)
        target = _RECENT.get_or_make(_RECENT.key(reference, "forward", tuple(ids), ternary_model),
                                     lambda: ReferenceForward(hp_ref, ref).run(ids)).logits
        source = "numpy forward of the HF weights"
    if ternary_model:
        source += " (BitLinear reference: ternary weights, int8 activations)"
    elif quant == "int2":
        source += " (the model is not ternary-trained: an int2 export cannot match it)"
    need = thresholds.get(quant, 0.0)
    cos = _cos(got, target)
    top1 = float(np.mean(got.argmax(-1) == target.argmax(-1)))
    report.logits = LogitsCheck(source, len(ids), cos, _kl(target, got), top1, need, cos >= need)
