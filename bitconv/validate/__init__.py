"""`bitconv validate`: an artifact against its HF checkpoint, with one verdict.

`validate()` routes by artifact kind: GGUF files to `gguf` (tensors, per-layer hidden states,
logits), ONNX exports to `onnx` (tensors, onnxruntime logits, KV cache), safetensors checkpoints
to `safetensors` (tensors, hidden states, logits). They share the report and thresholds (`report`),
the comparisons (`checks`), the weight sources (`sources`) and the forward/logits comparison with
its reference chooser (`logits`). With `runtime`, a real runtime (`runtimes`: llama.cpp,
onnxruntime, transformers) loads the artifact, tokenizes the prompt with the artifact's vocabulary
and runs it: its verdict is a section of the same report (`runtime_check`). This package reads
artifacts (formats/) and checkpoints (convert/); it never imports the API or CLI layers.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .gguf import validate_gguf
from .onnx import validate_onnx
from .report import (DEFAULT_MIN_COS, DEFAULT_PROMPT, ONNX_MIN_COS, ST_MIN_COS, Check, LogitsCheck, RuntimeCheck,
                     TensorCheck, ValidationReport, parse_min_cos, set_verdict)
from .runtime_check import RuntimeJudge
from .runtimes import RUNTIMES
from .safetensors import validate_safetensors

__all__ = ["validate", "validate_gguf", "validate_onnx", "validate_safetensors", "ValidationReport", "Check",
           "TensorCheck", "LogitsCheck", "RuntimeCheck", "RUNTIMES", "parse_min_cos", "DEFAULT_MIN_COS",
           "ONNX_MIN_COS", "ST_MIN_COS", "DEFAULT_PROMPT"]


def validate(artifact: str | os.PathLike[str], reference: str | os.PathLike[str] | None = None, *,
             prompt: str | None = None, tokens: list[int] | None = None,
             min_cos: dict[str, float] | None = None, kernel_config: str | os.PathLike[str] | None = None,
             use_transformers: bool = True, runtime: str | None = None) -> ValidationReport:
    """Check an artifact: structure always; with `reference` (the HF checkpoint it came from) its
    tensors and logits (and, where the artifact decodes to weights, per-layer hidden states) against
    the thresholds of its type, overridden per type by `min_cos`. A GGUF file, an ONNX export folder
    (or its model.onnx), or a safetensors checkpoint folder (or .safetensors file).

    `runtime` ("llama.cpp" for GGUF, "onnxruntime" for ONNX, "transformers" for safetensors; see
    RUNTIMES): that runtime also loads the artifact, its tokenizer must give the reference's ids for
    the prompt, and its logits must meet the same threshold (`report.runtime`). It needs `reference`;
    a runtime that cannot read the artifact, or is not installed, is a UsageError before anything runs."""
    from ..inspectors import artifact_kind

    kind = artifact_kind(artifact)
    if Path(artifact).suffix == ".onnx":  # a missing model.onnx: validate_onnx says so
        kind = "onnx"
    if kind == "safetensors" and kernel_config is not None:
        raise UsageError("--kernel-config applies to tl1/tl2 GGUF files, not safetensors checkpoints")
    judge = None
    if runtime is not None:
        if reference is None:
            raise UsageError(f"--runtime {runtime} compares the runtime's tokens and logits with the checkpoint the "
                             "artifact was made from: pass --reference DIR")
        if Path(artifact).exists():  # else the validator says there is no such file
            judge = RuntimeJudge(runtime, artifact, kind, prompt, tokens)
    kw: dict[str, Any] = dict(prompt=prompt, tokens=tokens, min_cos=min_cos, use_transformers=use_transformers,
                              judge=judge)
    if kind == "onnx":
        report = validate_onnx(artifact, reference, **kw)
    elif kind == "safetensors":
        report = validate_safetensors(artifact, reference, **kw)
    else:
        report = validate_gguf(artifact, reference, kernel_config=kernel_config, **kw)
    if judge is not None and report.runtime is None:
        judge.not_run(report)
        set_verdict(report)
    return report
