"""`bitconv validate`: an artifact against its HF checkpoint, with one verdict.

`validate()` routes by artifact kind: GGUF files to `gguf` (tensors, per-layer hidden states,
logits), ONNX exports to `onnx` (tensors, onnxruntime logits, KV cache), safetensors checkpoints
to `safetensors` (tensors, hidden states, logits). They share the report and thresholds (`report`),
the comparisons (`checks`), the weight sources (`sources`) and the forward/logits comparison with
its reference chooser (`logits`). This package reads artifacts (formats/) and checkpoints
(convert/); it never imports the API or CLI layers.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError
from .gguf import validate_gguf
from .onnx import validate_onnx
from .report import (DEFAULT_MIN_COS, DEFAULT_PROMPT, ONNX_MIN_COS, ST_MIN_COS, Check, LogitsCheck, TensorCheck,
                     ValidationReport, parse_min_cos)
from .safetensors import validate_safetensors

__all__ = ["validate", "validate_gguf", "validate_onnx", "validate_safetensors", "ValidationReport", "Check",
           "TensorCheck", "LogitsCheck", "parse_min_cos", "DEFAULT_MIN_COS", "ONNX_MIN_COS", "ST_MIN_COS",
           "DEFAULT_PROMPT"]


def validate(artifact: str | os.PathLike[str], reference: str | os.PathLike[str] | None = None, *,
             prompt: str | None = None, tokens: list[int] | None = None,
             min_cos: dict[str, float] | None = None, kernel_config: str | os.PathLike[str] | None = None,
             use_transformers: bool = True) -> ValidationReport:
    """Check an artifact: structure always; with `reference` (the HF checkpoint it came from) its
    tensors and logits (and, where the artifact decodes to weights, per-layer hidden states) against
    the thresholds of its type, overridden per type by `min_cos`. A GGUF file, an ONNX export folder
    (or its model.onnx), or a safetensors checkpoint folder (or .safetensors file)."""
    from ..inspectors import artifact_kind

    kind = artifact_kind(artifact)
    if kind == "onnx" or Path(artifact).suffix == ".onnx":  # a missing model.onnx: validate_onnx says so
        return validate_onnx(artifact, reference, prompt=prompt, tokens=tokens, min_cos=min_cos,
                             use_transformers=use_transformers)
    if kind == "safetensors":
        if kernel_config is not None:
            raise UsageError("--kernel-config applies to tl1/tl2 GGUF files, not safetensors checkpoints")
        return validate_safetensors(artifact, reference, prompt=prompt, tokens=tokens, min_cos=min_cos,
                                    use_transformers=use_transformers)
    return validate_gguf(artifact, reference, prompt=prompt, tokens=tokens, min_cos=min_cos,
                         kernel_config=kernel_config, use_transformers=use_transformers)
