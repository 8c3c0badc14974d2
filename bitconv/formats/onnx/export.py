"""The export folder: `model.onnx` (the graph) + `model.onnx.data` (every checkpoint tensor as
external data, streamed one tensor at a time), the tokenizer files and `genai_config.json` (the
onnxruntime-genai decoder format), all written into a temp folder inside the output folder and
renamed into place only when complete.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ...errors import OutputError, UsageError
from ..atomic import staged_folder
from .decoder import DecoderBuilder
from .embedding import EmbeddingBuilder
from .external_data import ExternalData
from .genai_config import genai_config
from .plan import DATA_FILE, GENAI_CONFIG, MODEL_FILE, OnnxPlan

if TYPE_CHECKING:
    from ...convert.checkpoint import Checkpoint

#: the staging folder name of earlier versions (removed when its process is dead); now `.<name>.bitconv-tmp.<pid>`
TMP_PREFIX = ".bitconv-onnx-tmp."


# --- the atomic folder ---------------------------------------------------------------------------

def output_files(plan: OnnxPlan) -> list[str]:
    """The names the export writes into its folder (model, data, config, tokenizer files); an
    embedding graph has no onnxruntime-genai config (genai runs decoders)."""
    config = [] if plan.mapping.embedding_model else [GENAI_CONFIG]
    return [MODEL_FILE, DATA_FILE, *config] + [name for _, name in plan.checkpoint.companion_files()]


def check_output_folder(folder: Path, names: list[str], force: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} exists and is not a folder")
    parent = folder if folder.is_dir() else folder.parent
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder {parent} is not writable")
    if folder.is_dir() and not force:
        existing = [n for n in names if (folder / n).exists()]
        if existing:
            raise OutputError(f"{folder / existing[0]} already exists; pass --force to overwrite it")


@contextmanager
def atomic_folder(folder: Path, names: list[str], *, force: bool) -> Iterator[Path]:
    """Yield a staging folder; on success its files (`names`, model.onnx last) become `folder`: a
    new folder is the staging folder renamed in one step, an existing one (--force) gets the files
    renamed in. On any failure the staging folder goes and nothing is visible at `folder`."""
    check_output_folder(folder, names, force)
    with staged_folder(folder, "onnx-stage", legacy_patterns=(f"{TMP_PREFIX}*",)) as (tmp, commit):
        yield tmp
        commit([n for n in names if n != MODEL_FILE] + [MODEL_FILE])  # the graph last: no graph without data


# --- the export ----------------------------------------------------------------------------------

@dataclass
class OnnxExportResult:
    source: str
    architecture: str
    format: str
    quant: str
    block_size: int | None
    output: str  # the folder
    dry_run: bool
    n_tensors: int
    n_params: int
    output_bytes: int
    type_counts: dict[str, int]
    files: list[str]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    manifest: str | None = None
    tensors: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_onnx() -> None:
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        raise UsageError("the ONNX writer needs the onnx package: pip install 'bitconv[onnx]'")


def write_onnx(plan: OnnxPlan, folder: Path, *, force: bool = False,
               progress: Callable[[str, int], None] | None = None) -> list[dict[str, Any]]:
    """Write the export folder; returns [{path, bytes}] of the files written."""
    require_onnx()
    names = output_files(plan)
    with atomic_folder(folder, names, force=force) as tmp:
        data = ExternalData(tmp / DATA_FILE, DATA_FILE, progress)
        try:
            builder = EmbeddingBuilder if plan.mapping.embedding_model else DecoderBuilder
            model = builder(plan, data).build()
        finally:
            data.close()
        blob = model.SerializeToString()
        with open(tmp / MODEL_FILE, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        if GENAI_CONFIG in names:
            (tmp / GENAI_CONFIG).write_text(json.dumps(genai_config(plan), indent=4) + "\n", encoding="utf-8")
        for p, name in plan.checkpoint.companion_files():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, tmp / name)
    return [{"path": n, "bytes": (folder / n).stat().st_size} for n in names]


def export(checkpoint: "Checkpoint", plan: OnnxPlan, folder: Path, *, source: str, dry_run: bool = False,
           force: bool = False, progress: Callable[[str, int], None] | None = None) -> OnnxExportResult:
    names = output_files(plan)
    result = OnnxExportResult(
        source=source, architecture=checkpoint.architecture, format="onnx", quant=plan.quant.name,
        block_size=plan.block_size if plan.quant.bits is not None else None, output=str(folder), dry_run=dry_run,
        n_tensors=len(plan.tensors), n_params=plan.n_params, output_bytes=plan.data_nbytes,
        type_counts=plan.type_counts(), files=names, notes=list(plan.notes),
        tensors=[asdict(t) for t in plan.tensors])
    if dry_run:
        return result
    start = time.perf_counter()
    records = write_onnx(plan, folder, force=force, progress=progress)
    result.output_bytes = sum(r["bytes"] for r in records)
    result.notes = list(plan.notes)  # the writer may add some (a linear re-quantized after all)
    result.seconds = time.perf_counter() - start
    return result
