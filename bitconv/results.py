"""What a conversion reports: one result type for every converter (HF → GGUF / ONNX / safetensors,
GGUF → GGUF), so the CLI renders them all the same way (human text or --json)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TensorRecord:
    name: str
    shape: list[int]
    type: str
    bytes: int
    source_dtype: str
    note: str = ""


@dataclass
class ConversionResult:
    """What a conversion did (or, with dry_run, would do)."""

    source: str
    architecture: str
    format: str
    quant: str
    output: str
    dry_run: bool
    n_tensors: int
    n_params: int
    output_bytes: int
    type_counts: dict[str, int]
    memory_estimate_bytes: int
    largest_tensor_f32_bytes: int
    seconds: float = 0.0
    sha256: str | None = None
    manifest: str | None = None
    #: tl1/tl2: the tilings used ({m, k, bm, bk, bmm} per shape) and the files written for bitnet.cpp
    tilings: list[dict[str, int]] = field(default_factory=list)
    kernel_config: str | None = None
    codegen: str | None = None
    tensors: list[TensorRecord] = field(default_factory=list)
    #: what a user should know about the output (e.g. a scale rounded through f16)
    notes: list[str] = field(default_factory=list)
    #: GGUF: every file written, in order ({path, n_tensors, data_bytes} planned; bytes, sha256 once
    #: written): one, or a split set (`output` is then its first file, the one runtimes are given)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    #: hf2gguf --keep-grid: {"quant", "carried": [GGUF names written from the source's codes],
    #: "re_rounded": [{"tensor", "reason"}]} for the quantized source's linears; None without it
    keep_grid: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
