"""ONNX exports (an hf2onnx folder or its model.onnx) against their HF checkpoint.

Checked at two of the three levels: tensors (each MatMulNBits / MatMul / Gather initializer decoded
back to a float matrix [N, K] and compared with the checkpoint tensor it came from; ternary 2-bit
codes must equal re-quantizing the HF weights) and logits (onnxruntime runs the prompt; compared
with `logits.reference_logits`). Per-layer hidden states are not compared: the graph exposes only
logits and the KV cache. Structure always: onnx.checker (full check), the graph IO names,
MatMulNBits attributes, finite scales, genai_config.json.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..convert.plan import plan_checkpoint
from ..errors import ArtifactError, BitconvError, UsageError
from ..formats.onnx.reader import OnnxArtifact, OnnxWeight, onnx_quant_of
from ..forward import SUPPORTED_ARCHS
from ..quant import nbits
from ..quiet import quiet_dependencies
from ..quant.ternary import scale_for, ternarize
from .checks import all_finite, code_diff, cos, float_threshold, set_stats
from .logits import logits_check, prompt_ids, reference_forward, reference_logits
from .report import (ONNX_MIN_COS, Check, TensorCheck, ValidationReport, failed_report, reference_mismatch,
                     set_verdict)

if TYPE_CHECKING:  # runtime_check's onnxruntime driver runs this module's onnx_logits
    from .runtime_check import RuntimeJudge

_ONNX_INPUTS = ("input_ids", "attention_mask", "position_ids")
_EMBEDDING_IO = ("input_ids", "attention_mask", "last_hidden_state", "sentence_embedding")
#: a stored ternary scale may differ from the reference's float32 absmean by rounding
_ONNX_SCALE_RTOL = 1e-6
#: the cached decode of the last prompt token vs the same position of the full-prompt run: at least
#: this, or the export's logits threshold when stricter (f32/f16). MatMulNBits takes other kernels for
#: one row than for many (int8 activations at accuracy level 4): a 24-layer int4 graph measured 0.99988
_KV_MIN_COS = 0.999


def _decoder_io_checks(art: OnnxArtifact, ins: set[str], outs: set[str], checks: list[Check]) -> dict[str, Any] | None:
    """A decoder graph's IO names (KV cache included) and its genai_config.json."""
    import json

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
    return cfg


def onnx_structural_checks(art: OnnxArtifact) -> tuple[list[Check], dict[str, Any] | None]:
    import onnx

    checks: list[Check] = []
    try:
        onnx.checker.check_model(str(art.model_path), full_check=True)
        checks.append(Check("onnx.checker (full_check)", True, "passes"))
    except Exception as e:
        checks.append(Check("onnx.checker (full_check)", False, str(e).strip().splitlines()[0][:300]))

    g = art.model.graph
    ins, outs = {i.name for i in g.input}, {o.name for o in g.output}
    cfg: dict[str, Any] | None = None
    if "sentence_embedding" in outs:  # an embedding graph (BitNet embedding models): no KV cache, no genai
        missing = [n for n in _EMBEDDING_IO if n not in ins | outs]
        checks.append(Check("graph IO", not missing, ("missing " + ", ".join(missing)) if missing else
                            "input_ids, attention_mask → last_hidden_state, sentence_embedding"))
    else:
        cfg = _decoder_io_checks(art, ins, outs, checks)

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
                if arr.dtype.kind == "f" and not all_finite(arr):
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



def _onnx_tensor_check(art: OnnxArtifact, w: OnnxWeight, plan: Any, thresholds: dict[str, float]) -> TensorCheck:
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
    if reference_mismatch(tc, planned.shape):
        return tc
    src_name = "token_embd.weight" if (planned.role == "lm_head" and w.name not in plan.sources) else w.name
    src = plan.sources[src_name]
    want = np.asarray(src.load(), dtype=np.float32)
    ternary = planned.role == "ternary"
    ref_codes = ref_scale = None
    if ternary:
        known = src.fixed_scale([want])
        ts = scale_for([want], known)
        ref_codes, ref_scale = ternarize(want, ts), ts
        want = ref_codes.astype(np.float32) / ts.inv  # s · W_t as the references compute it
    if ternary and w.kind == "nbits":
        t, codes = art.codes(w)
        diff = code_diff(tc, codes, ref_codes)
        s = float(t.scales.reshape(-1)[0]) if t.scales.size else 0.0
        tc.scale, tc.reference_scale = s, float(ref_scale.scale)
        scale_ok = not ref_codes.any() or bool(np.all(np.abs(t.scales - ref_scale.scale)
                                                      <= _ONNX_SCALE_RTOL * abs(float(ref_scale.scale))))
        set_stats(tc, art.dense(w), want)
        tc.ok = diff == 0 and scale_ok
        if not diff and not scale_ok:
            bad = np.abs(t.scales - ref_scale.scale) > _ONNX_SCALE_RTOL * abs(float(ref_scale.scale))
            tc.message = (f"{int(bad.sum())} block scale(s) differ from the reference's {float(ref_scale.scale)!r} "
                          f"(e.g. {float(t.scales[bad][0])!r})")
        if w.zero_points is None and tc.ok:
            q = nbits.quantize_ternary(ref_codes, float(ref_scale.scale), t.block_size, t.bits)
            tc.bytes_identical = bool(np.array_equal(q.packed, t.packed) and np.array_equal(q.scales, t.scales))
        return tc
    got = art.dense(w)
    set_stats(tc, got, want)
    float_threshold(tc, storage, thresholds, magnitude=True)
    if w.kind == "nbits" and w.zero_points is not None and planned.repack is not None:
        # the source's grid kept as it is: its weights are the source's dequantized weights exactly
        tc.bytes_identical = bool(np.array_equal(got, want))
        if not tc.bytes_identical:
            tc.ok = False
            tc.message = "kept the source's grid, but its weights differ from the source's dequantized weights"
        return tc
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

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: onnxruntime's warnings are not bitconv's output
    with quiet_dependencies():
        sess = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
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
                  min_cos: dict[str, float] | None = None, use_transformers: bool = True,
                  judge: RuntimeJudge | None = None) -> ValidationReport:
    """Check an ONNX export (a folder with model.onnx, or the model.onnx file): structure always
    (onnx.checker full check, graph IO names, MatMulNBits attributes, finite scales, genai_config.json);
    with `reference`, every weight against the checkpoint (ternary 2-bit codes identical, others by
    cos) and the onnxruntime logits of the prompt against transformers float32 (else the numpy
    reference forward), with thresholds ONNX_MIN_COS overridden per type by `min_cos`; with `judge`,
    a runtime's verdict (runtime_check). Per-layer hidden states are not compared (the graph exposes
    only logits)."""
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
        return failed_report(str(path), ref_str, str(e), thresholds)
    try:
        quant, block_size = onnx_quant_of(art)
        checks, cfg = onnx_structural_checks(art)
        arch = str(((cfg or {}).get("model") or {}).get("type") or "?")
        report = ValidationReport(str(art.folder if path.is_dir() else path), ref_str, arch, quant, reference is None,
                                  True, "", checks=checks, thresholds=thresholds)
        if reference is not None:
            _compare_onnx(report, art, Path(reference), quant, block_size, prompt, tokens, use_transformers,
                          thresholds, judge)
    finally:
        art.close()
    set_verdict(report)
    return report


def _compare_onnx(report: ValidationReport, art: OnnxArtifact, reference: Path, quant: str, block_size: int | None,
                  prompt: str | None, tokens: list[int] | None, use_transformers: bool,
                  thresholds: dict[str, float], judge: RuntimeJudge | None = None) -> None:
    from ..convert.arch import mapping_for
    from ..convert.checkpoint import Checkpoint
    from ..formats.onnx.plan import get_onnx_quant, make_onnx_plan

    try:
        checkpoint = Checkpoint.open(reference)
        mapping = mapping_for(checkpoint)
        plan = make_onnx_plan(checkpoint, mapping, get_onnx_quant(quant), block_size=block_size,
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
    if mapping.embedding_model:
        from .embeddings import compare_onnx_embeddings

        compare_onnx_embeddings(report, art, reference, prompt, tokens, thresholds)
        if judge is not None:  # the embedding check is onnxruntime's own run
            judge.refuse(report, "--runtime onnxruntime: the sentence-embedding check above is onnxruntime's run")
        return
    report.checks.append(Check("per-layer hidden states", True,
                               "skipped for ONNX: the graph exposes only logits and the KV cache"))

    ids = prompt_ids(reference, prompt, tokens)

    planned: list[Any] = []  # the f32 plan, or the check saying why there is none: decided once

    def numpy_forward(ids: list[int]) -> np.ndarray | None:
        if not planned:
            try:
                _, gplan = plan_checkpoint(reference, "f32", force_ternarize=True)
                planned.append(gplan)
            except BitconvError as e:
                report.checks.append(Check("forward pass", False, str(e)))
                planned.append(None)
            else:
                if gplan.mapping.arch_name not in SUPPORTED_ARCHS:
                    report.checks.append(Check("forward pass", True,
                                               f"skipped: no reference forward for {gplan.mapping.arch_name}"))
                    planned[0] = None
        if planned[0] is None:
            return None
        return reference_forward(reference, planned[0], ids, ternary_model).logits

    _onnx_logits_check(report, art, reference, quant, ids, ternary_model, numpy_forward, use_transformers, thresholds)
    if judge is not None:
        judge.check(report, reference, ternary_model, numpy_forward, use_transformers)


def _onnx_logits_check(report: ValidationReport, art: OnnxArtifact, reference: Path, quant: str, ids: list[int],
                       ternary_model: bool, numpy_forward: Any, use_transformers: bool,
                       thresholds: dict[str, float]) -> None:
    """onnxruntime's logits of the prompt (and its KV cache) against `reference_logits`."""
    try:
        got, cached = onnx_logits(art.model_path, ids, split=len(ids) - 1 if len(ids) > 1 else None)
    except Exception as e:  # onnxruntime raises its own exception types
        report.checks.append(Check("onnxruntime run", False, str(e).strip().splitlines()[0][:300]))
        return
    if cached is not None:
        c = cos(cached, got[-1])
        kv_need = max(_KV_MIN_COS, thresholds.get(quant, 0.0))
        report.checks.append(Check("KV cache", c >= kv_need,
                                   f"last token through the cache vs the full prompt run: cos {c:.7f}"
                                   + ("" if c >= kv_need else f" < {kv_need}")))

    target, source = reference_logits(reference, ids, got.shape, use_transformers, ternary_model,
                                      lambda: numpy_forward(ids))
    if target is None:
        return
    if not ternary_model and quant == "int2":
        source += " (the model is not ternary-trained: an int2 export cannot match it)"
    report.logits = logits_check(got, target, source, len(ids), thresholds.get(quant, 0.0))
