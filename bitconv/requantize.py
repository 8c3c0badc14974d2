"""`bitconv quantize`: a GGUF (or a split set) to another GGUF type in one streaming pass.

Two kinds of output, chosen by the type:

* llama-quantize's types (f32/f16/bf16, q4_0 … q8_0, the k-quants and their mixes): the same file
  `llama_model_quantize` writes for the same input and options — its per-tensor rules
  (quant/mixes.py), its tensor order, its metadata (the input's keys in order, then
  general.quantization_version and general.file_type re-set last, split keys dropped, overrides
  appended). A tensor whose type does not change is copied byte for byte; a tensor already
  block-quantized is requantized only with `allow_requantize`, as there.
* the ternary types (i2_s, tl1, tl2, tq1_0, tq2_0) for BitNet models: a tensor stored in a ternary
  type keeps its codes and scale (no float round trip), so i2_s → tl1 gives the bytes hf2gguf gives
  for tl1 from the original checkpoint; the other tensors follow hf2gguf's rules. The input's
  metadata is kept, general.file_type updated in place.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import gguf
import numpy as np

from .convert.arch.base import SourceTensor
from .convert.gguf_source import GGUFSource, GGUFTensor
from .convert.plan import PlannedTensor, TensorPlan, choose_quant
from .errors import UsageError
from . import gguf_output
from .formats import gguf_split
from .formats.gguf_writer import MetadataFn
from .quant.base import Quantizer
from .quant.registry import get_quantizer, quantizer_for_ggml_type
from .quant.ternary import TernaryScale
from .results import ConversionResult

T = gguf.GGMLQuantizationType
V = gguf.GGUFValueType
#: the BitNet architectures whose block linears are ternary (hf2gguf's mappings write these names)
TERNARY_ARCHS = {"bitnet": "silu", "bitnet-25": "relu2", "bitnet-b1.58": "silu"}
_TERNARY_LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
_UNQUANTIZED = (T.F32, T.F16, T.BF16)
_OVERRIDE_TYPES = {"int": V.UINT32, "float": V.FLOAT32, "bool": V.BOOL, "str": V.STRING}
#: llama-quantize's names for its default k-quant mixes (bitconv's q3_k/q4_k/q5_k are the pure types)
LLAMA_QUANTIZE_ALIASES = {"q3_k": "q3_k_m", "q4_k": "q4_k_m", "q5_k": "q5_k_m"}


@dataclass(frozen=True)
class KVOverride:
    """llama-quantize's `--override-kv KEY=TYPE:VALUE` (an int is written as uint32 of |value|)."""

    key: str
    vtype: Any
    value: Any

    @classmethod
    def parse(cls, text: str) -> "KVOverride":
        key, sep, rest = text.partition("=")
        kind, sep2, raw = rest.partition(":")
        if not sep or not sep2 or not key or kind not in _OVERRIDE_TYPES:
            raise UsageError(f"--override-kv {text!r}: expected KEY=TYPE:VALUE with TYPE one of int, float, bool, str")
        try:
            if kind == "int":
                value: Any = abs(int(raw))
            elif kind == "float":
                value = float(raw)
            elif kind == "bool":
                if raw not in ("true", "false"):
                    raise ValueError("true or false")
                value = raw == "true"
            else:
                value = raw
        except ValueError as e:
            raise UsageError(f"--override-kv {text!r}: invalid {kind} value ({e})") from None
        if kind == "str" and len(raw.encode()) > 127:
            raise UsageError(f"--override-kv {text!r}: llama.cpp takes strings of at most 127 bytes")
        return cls(key, _OVERRIDE_TYPES[kind], value)


class StoredType(Quantizer):
    """A tensor written in the type it already has (copied as it is): covers the types bitconv
    cannot encode itself (IQ*, MXFP4 …) when they only pass through."""

    def __init__(self, tensor: GGUFTensor) -> None:
        self.name = tensor.type_name.lower()
        self.ggml_type = tensor.info.type_id
        self._nbytes = tensor.info.nbytes

    def encoded_nbytes(self, shape: tuple[int, ...]) -> int:
        return self._nbytes

    def quantize(self, w: np.ndarray, state: Any = None) -> Any:  # pragma: no cover - raw copies only
        raise UsageError(f"{self.name} is copied, never encoded")


def _stored_quantizer(t: GGUFTensor) -> Quantizer:
    try:
        return quantizer_for_ggml_type(t.info.type_id)
    except (UsageError, ValueError):
        return StoredType(t)


def _copied(t: GGUFTensor, q: Quantizer, note: str = "") -> PlannedTensor:
    src = SourceTensor(t.name, t.shape, [t.lazy()], hf_names=[t.name], raw=t.raw)
    return PlannedTensor(src, q, t.info.nbytes, note or "copied")


def _encoded(t: GGUFTensor, q: Quantizer, note: str = "") -> PlannedTensor:
    return PlannedTensor(SourceTensor(t.name, t.shape, [t.lazy()], hf_names=[t.name]), q, q.encoded_nbytes(t.shape), note)


def _hparam(meta: dict[str, Any], arch: str, key: str, default: int = 0) -> int:
    v = meta.get(f"{arch}.{key}", default)
    if isinstance(v, list):  # per-layer values: llama.cpp's rules look at layer 0
        v = v[0] if v else default
    return int(v) if isinstance(v, (int, float)) else default


def _ggml_type(name: str | None, option: str) -> T | None:
    if name is None:
        return None
    try:
        return T[name.upper()]
    except KeyError:
        raise UsageError(f"{option} {name}: not a GGML type (e.g. q8_0, q6_k, f16)") from None


def _llama_plan(src: GGUFSource, quant: Quantizer, *, pure: bool, output_tensor_type: str | None,
                token_embedding_type: str | None, leave_output_tensor: bool, allow_requantize: bool,
                keep_split: bool) -> TensorPlan:
    """llama_model_quantize's choices for every tensor of `src`."""
    from .quant.mixes import LlamaQuantizeRules, ModelFacts, llama_order_key

    arch, meta = src.architecture, src.metadata
    facts = ModelFacts(arch, _hparam(meta, arch, "block_count"), _hparam(meta, arch, "attention.head_count"),
                       _hparam(meta, arch, "attention.head_count_kv"), _hparam(meta, arch, "expert_count"))
    try:
        rules = LlamaQuantizeRules(int(quant.file_type), facts, pure=pure or quant.pure,  # type: ignore[arg-type]
                                   output_tensor_type=_ggml_type(output_tensor_type, "--output-tensor-type"),
                                   token_embedding_type=_ggml_type(token_embedding_type, "--token-embedding-type"),
                                   quantize_output=not leave_output_tensor)
    except ValueError as e:
        raise UsageError(f"{quant.name}: {e}") from None
    tensors = list(src)
    if not keep_split:  # llama.cpp's weight order; with --keep-split it keeps the files' order
        tensors.sort(key=lambda t: llama_order_key(t.name))
    plan = TensorPlan(None, quant)  # type: ignore[arg-type]
    for t, new in zip(tensors, rules.types([(t.name, t.shape) for t in tensors])):
        if new is None or int(new) == t.info.type_id:
            plan.tensors.append(_copied(t, _stored_quantizer(t)))
            continue
        try:
            cur = T(t.info.type_id)
        except ValueError:
            cur = None
        if cur not in _UNQUANTIZED and not allow_requantize:
            raise UsageError(f"{t.name} is stored as {t.type_name}: requantizing from it is disabled, as in "
                             "llama-quantize (pass --allow-requantize; quality suffers, start from f16/bf16/f32 if you can)")
        try:
            q = quantizer_for_ggml_type(int(new))
        except UsageError:
            raise UsageError(f"{t.name}: bitconv cannot write {new.name} (it needs an importance matrix or is "
                             "not implemented); pick another type") from None
        plan.tensors.append(_encoded(t, q, "" if new == rules.default else f"{q.name} (llama-quantize {quant.name} rule)"))
    return plan


def _is_ternary_linear(src: GGUFSource, t: GGUFTensor) -> bool:
    if t.ternary:
        return True
    parts = t.name.split(".")
    return (src.metadata.get("general.architecture") in TERNARY_ARCHS and len(parts) == 4 and parts[0] == "blk"
            and parts[2] in _TERNARY_LINEARS and parts[3] == "weight" and len(t.shape) == 2)


def _ternary_plan(src: GGUFSource, quant: Quantizer, force_ternarize: bool) -> TensorPlan:
    """hf2gguf's choices for a ternary type, with ternary tensors repacked from their codes."""
    if not force_ternarize and src.metadata.get("general.architecture") not in TERNARY_ARCHS \
            and not any(t.ternary for t in src):
        raise UsageError(f"{quant.name} is a ternary type and {src.path.name} ({src.architecture}) is not a ternary-"
                         "trained model (BitNet b1.58): ternarizing it after training destroys its accuracy; pass "
                         "--force-ternarize only to test a runtime")
    plan = TensorPlan(None, quant)  # type: ignore[arg-type]
    for t in src:
        if _is_ternary_linear(src, t):
            if (problem := quant.shape_error(t.shape)):
                raise UsageError(f"{t.name}: shape {t.shape} — {problem}")
            if t.ternary:
                plan.tensors.append(_from_codes(t, quant))
            else:
                plan.tensors.append(_encoded(t, quant, "ternarized"))
            continue
        q, note = choose_quant(t.name, t.shape, quant)
        if q.ggml_type == t.info.type_id:
            plan.tensors.append(_copied(t, q))
        else:
            plan.tensors.append(_encoded(t, q, note))
    return plan


def _from_codes(t: GGUFTensor, quant: Quantizer) -> PlannedTensor:
    cache: dict[str, Any] = {}

    def codes_and_scale() -> tuple[np.ndarray, np.float32]:
        if "v" not in cache:
            cache["v"] = t.codes_and_scale()
        return cache["v"]

    def scale() -> TernaryScale:
        s = np.float32(codes_and_scale()[1])
        return TernaryScale(inv=np.float32(1) / s if s else np.float32(np.inf), scale=s)

    def codes() -> np.ndarray:
        try:
            return codes_and_scale()[0]
        finally:
            cache.pop("v", None)  # the scale was read first (prepare), the codes last: drop them

    note = "ternary codes kept"
    if t.type_name in ("TQ1_0", "TQ2_0") and not quant.name.startswith("tq"):
        note = "ternary codes kept; f32 scale widened from the f16 block scale (rounded through f16 once)"
    if quant.ggml_type == t.info.type_id and t.type_name not in ("TL1", "TL2"):
        return _copied(t, quant, note)
    src = SourceTensor(t.name, t.shape, [t.lazy()], hf_names=[t.name], known_scale=scale, codes=codes)
    return PlannedTensor(src, quant, quant.encoded_nbytes(t.shape), note)


def plan_quantize(src: GGUFSource, quant: str, *, pure: bool = False, output_tensor_type: str | None = None,
                  token_embedding_type: str | None = None, leave_output_tensor: bool = False,
                  allow_requantize: bool = False, keep_split: bool = False, force_ternarize: bool = False,
                  kernel_config: Any = None) -> TensorPlan:
    """Every output tensor's type and whether it is copied, recoded from ternary codes or encoded."""
    from .quant.tl import KernelConfig, LutQuantizer

    q = get_quantizer(LLAMA_QUANTIZE_ALIASES.get(quant.lower(), quant))
    if kernel_config is not None:
        if not isinstance(q, LutQuantizer):
            raise UsageError(f"--kernel-config applies to the LUT layouts tl1/tl2, not {q.name}")
        q = type(q)(kernel_config=kernel_config if isinstance(kernel_config, KernelConfig)
                    else KernelConfig.read(kernel_config))
    if q.ternary:
        if pure or output_tensor_type or token_embedding_type or leave_output_tensor or keep_split:
            raise UsageError(f"--pure, --output-tensor-type, --token-embedding-type, --leave-output-tensor and "
                             f"--keep-split are llama-quantize's options; they do not apply to {q.name}")
        return _ternary_plan(src, q, force_ternarize)
    if q.file_type is None or q.ggml_type is None:
        raise UsageError(f"{q.name} is not a GGUF file type")
    return _llama_plan(src, q, pure=pure, output_tensor_type=output_tensor_type,
                       token_embedding_type=token_embedding_type, leave_output_tensor=leave_output_tensor,
                       allow_requantize=allow_requantize, keep_split=keep_split)


def _metadata(src: GGUFSource, plan: TensorPlan, overrides: Sequence[KVOverride]) -> MetadataFn:
    """The input's keys with their own types, in order; then llama-quantize's re-set keys (moved to
    the end, as ggml's gguf_set_val does) or, for ternary types, general.file_type in place."""
    q = plan.quant
    values = dict(src.metadata)
    types = dict(src.value_types)
    if q.ternary:
        values["general.file_type"], types["general.file_type"] = int(q.file_type or 0), (int(V.UINT32), None)
    else:
        for key, value in (("general.quantization_version", gguf.GGML_QUANT_VERSION),
                           ("general.file_type", int(q.file_type or 0))):
            values.pop(key, None), types.pop(key, None)
            values[key], types[key] = value, (int(V.UINT32), None)
    for o in overrides:
        values.pop(o.key, None), types.pop(o.key, None)
        values[o.key], types[o.key] = o.value, (int(o.vtype), None)

    alignment = values.get("general.alignment")

    def add(w: gguf.GGUFWriter) -> None:
        w.kv_data[0].clear()  # the writer's own general.architecture: the input's keys come in its order
        for key, value in values.items():
            vtype, sub = types[key]
            w.add_key_value(key, value, V(vtype), V(sub) if sub is not None else None)
        if isinstance(alignment, int) and not isinstance(alignment, bool) and alignment > 0:
            w.data_alignment = alignment  # the copied general.alignment must describe the data
    return add


def _notes(plan: TensorPlan) -> list[str]:
    copied = sum(t.source.raw is not None for t in plan)
    recoded = sum(t.source.codes is not None for t in plan)
    notes = [f"{copied} tensor(s) copied unchanged, {recoded} repacked from their ternary codes, "
             f"{len(plan) - copied - recoded} encoded"]
    widened = [t.name for t in plan if "widened" in t.note]
    if widened:
        notes.append(f"{len(widened)} ternary tensor(s) take the f16 block scale of the input widened to f32: "
                     "their scale was rounded through f16 once (the codes are exact)")
    return notes


def quantize(source: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, quant: str | None = None,
             nthreads: int = 0, *, force: bool = False, dry_run: bool = False, manifest: bool = True,
             allow_nonfinite: bool = False, progress: Callable[[PlannedTensor, int], None] | None = None,
             on_start: Callable[[TensorPlan], None] | None = None, **options: Any) -> ConversionResult:
    """Requantize a GGUF file (or split set) `source` into `out` as `quant`, with llama-quantize's
    options (`quantize_output`'s keywords). `out`: a file, or a folder for <input name>-<quant>.gguf
    (default: beside the input)."""
    job = quantize_output(source, out, quant, **options)
    result = job.result(dry_run=dry_run, threads=nthreads)
    if dry_run:
        return result
    return job.write(result, force=force, manifest=manifest, threads=nthreads, allow_nonfinite=allow_nonfinite,
                     progress=progress, on_start=on_start)


def quantize_output(source: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                    quant: str | None = None, *, pure: bool = False, output_tensor_type: str | None = None,
                    token_embedding_type: str | None = None, leave_output_tensor: bool = False,
                    allow_requantize: bool = False, keep_split: bool = False, override_kv: Sequence[str] = (),
                    split_max_size: str | int | None = None, split_max_tensors: int = 0,
                    no_tensor_first_split: bool = False, target: str | None = None, force_ternarize: bool = False,
                    kernel_config: Any = None) -> gguf_output.GGUFOutput:
    """The planned output of `quantize` (headers only). `keep_split`: split the output as the input
    is; `split_max_size` / `split_max_tensors`: split it as hf2gguf does. `target`: the type when
    `quant` is None, and a refusal of what the target's runtime cannot run for this model (relu²
    BitNet in llama.cpp)."""
    overrides = [KVOverride.parse(o) for o in override_kv]
    if keep_split and (split_max_size or split_max_tensors or no_tensor_first_split):
        raise UsageError("--keep-split keeps the input's split; it does not combine with --split-max-*")
    src = GGUFSource.open(source)
    if kernel_config is not None and any(t.type_name in ("TL1", "TL2") and t.kernel_config is None for t in src):
        from .quant.tl import KernelConfig

        source_tilings = kernel_config if isinstance(kernel_config, KernelConfig) else KernelConfig.read(kernel_config)
        for t in src:
            t.kernel_config = t.kernel_config or source_tilings
    if target is not None:
        from .targets import get_target

        act = TERNARY_ARCHS.get(src.architecture)
        facts = SimpleNamespace(ternary_model=act is not None or any(t.ternary for t in src),
                                config={"hidden_act": act or "silu"})
        preset = get_target(target)
        if preset.format != "gguf":
            raise UsageError(f"target {target} writes {preset.format}, not gguf")
        quant = quant or preset.quant_for(facts)  # type: ignore[arg-type]
    if quant is None:
        raise UsageError("give the type to quantize to (e.g. q4_k_m) or a --target")
    plan = plan_quantize(src, quant, pure=pure, output_tensor_type=output_tensor_type,
                         token_embedding_type=token_embedding_type, leave_output_tensor=leave_output_tensor,
                         allow_requantize=allow_requantize, keep_split=keep_split,
                         force_ternarize=force_ternarize, kernel_config=kernel_config)
    q = plan.quant
    if keep_split:
        per_file = [sum(t.path == p for t in src) for p in src.paths]
        splits = gguf_split.splits_from_counts(per_file)
    else:
        splits = gguf_split.plan_for(plan, max_size=split_max_size, max_tensors=split_max_tensors,
                                     no_tensor_first_split=no_tensor_first_split)
    out_path = gguf_output.default_name(src.name, q.name, out, beside=src.path)
    inputs = {p.resolve() for p in src.paths}
    if any(p.resolve() in inputs for p in splits.paths(out_path)):
        raise UsageError(f"{out_path}: the output would overwrite the input")
    options = {"pure": pure, "output_tensor_type": output_tensor_type, "token_embedding_type": token_embedding_type,
               "leave_output_tensor": leave_output_tensor, "allow_requantize": allow_requantize,
               "keep_split": keep_split, "override_kv": list(override_kv), "target": target,
               "force_ternarize": force_ternarize}
    if splits.count > 1 and not keep_split:
        options.update(split_max_size=split_max_size, split_max_tensors=split_max_tensors,
                       no_tensor_first_split=no_tensor_first_split)
    return gguf_output.GGUFOutput(str(source), src.name, src.architecture, plan, _metadata(src, plan, overrides),
                                  src.architecture, not q.ternary, out_path, splits, src.input_files(),
                                  src.path.parent, options, source_dtype=lambda t: src.tensors[t.name].type_name,
                                  notes=_notes(plan))
