"""GGUF writing (streamed, tensor by tensor, through gguf-py's GGUFWriter) and reading for inspect.

All tensor infos are declared first (shapes and byte sizes are known from the plan), then header,
metadata and tensor table are written, then each tensor is read, quantized and appended in plan
order. At most two tensors are in memory: the one being encoded and the next one being read.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np

from ..convert.checkpoint import Checkpoint
from ..convert.plan import PlannedTensor, TensorPlan
from ..convert.tokenizer import GGUFVocab
from ..errors import ArtifactError, QuantizationError

#: rows per work item when a tensor is quantized in parallel (bytes are identical: rows are independent)
_ROWS_PER_CHUNK = 512
#: header + metadata + tensor table are small next to the data; this bounds them for the disk check
HEADER_ALLOWANCE = 16 * 1024 * 1024

ProgressFn = Callable[[PlannedTensor, int], None]


def estimated_file_size(plan: TensorPlan) -> int:
    align = gguf.GGUF_DEFAULT_ALIGNMENT
    return sum(-(-t.nbytes // align) * align for t in plan) + HEADER_ALLOWANCE


def add_general_metadata(w: gguf.GGUFWriter, checkpoint: Checkpoint) -> None:
    """general.* as llama.cpp's converter derives them (gguf-py's Metadata heuristics)."""
    total, shared, expert, n_expert = w.get_total_parameter_count()
    meta = gguf.Metadata.load(None, checkpoint.root, None, total)
    if checkpoint.repo_id:
        meta.name = checkpoint.repo_id
    if meta.name is None:
        meta.name = checkpoint.root.name
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, n_expert)
    w.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(w)


def encode_tensor(pt: PlannedTensor, arr: np.ndarray, pool: ThreadPoolExecutor | None,
                  allow_nonfinite: bool) -> np.ndarray:
    if not allow_nonfinite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise QuantizationError(
            f"{pt.source.hf_names[0] if pt.source.hf_names else pt.name}: {bad} NaN/Inf value(s); "
            "pass --allow-nonfinite to convert anyway", tensor=pt.name)
    q = pt.quant
    rows = arr.reshape(-1, arr.shape[-1]) if arr.ndim > 1 else arr.reshape(1, -1)
    if pool is None or not q.row_parallel or rows.shape[0] < 2 * _ROWS_PER_CHUNK:
        out = q.quantize(rows).data
    else:
        chunks = [rows[i:i + _ROWS_PER_CHUNK] for i in range(0, rows.shape[0], _ROWS_PER_CHUNK)]
        out = np.concatenate([r.data for r in pool.map(q.quantize, chunks)], axis=0)
    if out.nbytes != pt.nbytes:
        raise QuantizationError(f"{pt.name}: {q.name} produced {out.nbytes} bytes, planned {pt.nbytes}")
    return out


def write_gguf(path: Path, plan: TensorPlan, checkpoint: Checkpoint, vocab: GGUFVocab, *,
               threads: int = 0, allow_nonfinite: bool = False, progress: ProgressFn | None = None) -> None:
    """Write the plan's tensors to `path` (a temp path: the caller renames it into place)."""
    mapping = plan.mapping
    w = gguf.GGUFWriter(path, mapping.arch_name)
    for pt in plan:
        w.add_tensor_info(pt.name, pt.shape, np.dtype(np.float32), pt.nbytes, raw_dtype=gguf.GGMLQuantizationType(pt.quant.ggml_type))
    add_general_metadata(w, checkpoint)
    mapping.add_metadata(w, plan.quant.file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab.add_to(w)

    n_threads = threads or min(8, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="bitconv-q") if n_threads > 1 else None
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bitconv-read")
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        tensors = plan.tensors
        nxt: Future[np.ndarray] | None = reader.submit(tensors[0].source.load) if tensors else None
        for i, pt in enumerate(tensors):
            assert nxt is not None
            arr = nxt.result()
            nxt = reader.submit(tensors[i + 1].source.load) if i + 1 < len(tensors) else None
            data = encode_tensor(pt, arr, pool, allow_nonfinite)
            del arr
            w.write_tensor_data(data)
            del data
            if progress:
                progress(pt, pt.nbytes)
        for f in w.fout or []:
            f.flush()
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
        w.close()


# --- reading ---------------------------------------------------------------------------------------

@dataclass
class GGUFTensorInfo:
    name: str
    type_name: str
    shape: tuple[int, ...]  # numpy order (outermost first)
    nbytes: int


@dataclass
class GGUFSummary:
    path: Path
    version: int
    alignment: int
    metadata: dict[str, Any]
    tensors: list[GGUFTensorInfo]

    @property
    def data_nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors)


def _field_value(field: Any) -> Any:
    """A KV value as plain Python; long arrays are summarized (inspect shows counts, not 150k tokens)."""
    t = field.types[0] if field.types else None
    if t == gguf.GGUFValueType.ARRAY:
        n = len(field.data)
        if n > 16:
            return {"array_of": field.types[-1].name.lower(), "length": n}
        return field.contents()
    return field.contents()


def read_gguf_summary(path: Path) -> GGUFSummary:
    try:
        r = gguf.GGUFReader(path)
    except (ValueError, OSError, KeyError, IndexError, EOFError) as e:
        raise ArtifactError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e
    meta: dict[str, Any] = {}
    version = 0
    for name, fld in r.fields.items():
        if name == "GGUF.version":
            version = int(fld.contents())
        if name.startswith("GGUF."):
            continue
        meta[name] = _field_value(fld)
    tensors = [GGUFTensorInfo(t.name, t.tensor_type.name, tuple(int(d) for d in reversed(t.shape)), int(t.n_bytes))
               for t in r.tensors]
    return GGUFSummary(path, version, int(r.alignment), meta, tensors)
