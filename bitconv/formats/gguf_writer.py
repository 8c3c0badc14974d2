"""GGUF writing: streamed, tensor by tensor, through gguf-py's GGUFWriter.

All tensor infos are declared first (shapes and byte sizes are known from the plan), then header,
metadata and tensor table are written, then the tensors are read, quantized and appended in plan
order. Work items (a whole small tensor, or a slab of rows of a large one) run on `--threads`
workers and are written in plan order, so the bytes never depend on the thread count; the bytes in
flight are bounded per thread, so peak memory does not grow with the model or its largest tensor.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import gguf
import numpy as np

from ..convert.checkpoint import Checkpoint, LazyTensor, to_compute_dtype
from ..convert.plan import PlannedTensor, TensorPlan
from ..convert.safetensors_read import transient_reads
from ..convert.tokenizer import GGUFVocab
from ..errors import BitconvError, QuantizationError
from ..quant.base import Quantizer
from ..threads import thread_count
from .gguf_file import FastGGUFWriter
from .manifest import StreamHasher

if TYPE_CHECKING:
    from .gguf_split import SplitPart

#: rows encoded at a time (a cache-sized piece; bytes are identical however a tensor is split)
_ROWS_PER_CHUNK = 512
#: the smallest magnitude float16 rounds to inf
F16_OVERFLOW = np.float32(65520.0)
#: stored bytes one work item reads from a large tensor: a 2 GB embedding is read a slab at a time
SLAB_BYTES = 16 * 1024 * 1024
#: bytes of work in flight per thread (stored slabs, their float32 image, encoded bytes)
INFLIGHT_PER_THREAD = 256 * 1024 * 1024
#: bytes between write-back hints (Linux; elsewhere the final fsync does it all): early and often,
#: so the disk writes while tensors are encoded and the final fsync finds little left
WRITEBACK_EVERY = 32 * 1024 * 1024
_HAS_FADVISE = hasattr(os, "posix_fadvise")
#: header + metadata + tensor table are small next to the data; this bounds them for the disk check
HEADER_ALLOWANCE = 16 * 1024 * 1024

ProgressFn = Callable[[PlannedTensor, int], None]
#: adds the file's metadata (everything but the tensor infos) to a writer
MetadataFn = Callable[[gguf.GGUFWriter], None]


def ggml_type(type_id: int | None) -> Any:
    """gguf-py's enum member, or the bare id for bitnet.cpp's types the enum cannot name (the
    writer only packs the number)."""
    if type_id is None:
        raise QuantizationError("this quant type has no GGUF type id")
    try:
        return gguf.GGMLQuantizationType(type_id)
    except ValueError:
        return int(type_id)


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


def _ordered_map(pool: ThreadPoolExecutor, fn: Callable[[int], Any], items: range) -> Iterator[Any]:
    """pool.map with a bounded window: results are consumed in order and at most a few chunks
    are in flight, so a slow disk cannot make finished chunks pile up in memory."""
    window = 2 * (pool._max_workers or 1)
    it = iter(items)
    pending: deque[Future[Any]] = deque(pool.submit(fn, x) for x in itertools.islice(it, window))
    try:
        while pending:
            res = pending.popleft().result()
            for x in itertools.islice(it, 1):
                pending.append(pool.submit(fn, x))
            yield res
    finally:
        for f in pending:
            f.cancel()


def _rows_2d(arr: np.ndarray) -> np.ndarray:
    return arr.reshape(-1, arr.shape[-1]) if arr.ndim > 1 else arr.reshape(1, -1)


def _prepare(pt: PlannedTensor, chunks: Iterable[np.ndarray], stored_dtype: str | None) -> Any:
    """The quantizer's per-tensor statistic (a ternary scale) from a pass over the tensor's rows."""
    if not pt.quant.needs_prepare:
        return None
    chunks = list(chunks) if pt.source.scale_rule is not None else chunks  # the rule sees the whole tensor
    return pt.quant.prepare(chunks, stored_dtype, pt.source.fixed_scale(chunks))  # type: ignore[arg-type]


def _encode_rows(pt: PlannedTensor, rows: np.ndarray, stored_dtype: str | None, state: Any,
                 allow_nonfinite: bool, pool: ThreadPoolExecutor | None = None, parts: bool = False) -> Any:
    """Widen, check and quantize `rows` (stored values, [n, K]) a cache-sized chunk at a time into
    one [n, bytes per row] buffer, or with `parts` the chunks' own [rows, bytes] arrays in order (none
    a view of `rows`, which may be a transient read); chunks run on `pool` when given. Rows
    are independent for every GGUF type, so the bytes never depend on how a tensor is split."""
    q = pt.quant
    starts = range(0, rows.shape[0], _ROWS_PER_CHUNK)
    to_f16 = q.ggml_type == int(gguf.GGMLQuantizationType.F16) and stored_dtype != "F16"

    def work(lo: int) -> np.ndarray | None:
        chunk = rows[lo:lo + _ROWS_PER_CHUNK]
        if stored_dtype is not None and (fused := q.quantize_stored(chunk, stored_dtype, state)) is not None:
            return np.asarray(fused.data)  # one pass from the stored values (finite ones: no check needed)
        chunk = chunk if stored_dtype is None else to_compute_dtype(chunk, stored_dtype)
        if not chunk.flags.writeable and not type(q).__module__.startswith("bitconv."):
            chunk = chunk.copy()  # a plugin may write into its input; a transient (mapped) read is read-only
        if not allow_nonfinite and chunk.dtype.kind == "f" and not np.isfinite(chunk).all():
            return None
        if to_f16 and not allow_nonfinite and chunk.size and max(chunk.max(), -chunk.min()) >= F16_OVERFLOW:
            big = int(np.count_nonzero(np.abs(chunk) >= F16_OVERFLOW))
            raise QuantizationError(
                f"{pt.source.hf_names[0] if pt.source.hf_names else pt.name}: {big} value(s) of magnitude ≥ 65520 "
                "would become inf in float16; write bf16 or f32, or pass --allow-nonfinite", tensor=pt.name)
        try:
            return np.asarray(q.quantize(chunk, state).data)
        except BitconvError:
            raise
        except Exception as e:  # a plugin's bug: name it and the tensor, one line, nothing written
            if type(q).__module__.startswith("bitconv."):
                raise
            raise QuantizationError(f"{pt.name}: quantizer {q.name!r} ({type(q).__module__}.{type(q).__qualname__}) "
                                    f"failed: {type(e).__name__}: {e}", tensor=pt.name) from e

    results = _ordered_map(pool, work, starts) if pool is not None and len(starts) > 1 else map(work, starts)
    out: np.ndarray | None = None
    pieces: list[np.ndarray] = []
    for lo, res in zip(starts, results):
        if res is None:
            values = rows if stored_dtype is None else to_compute_dtype(rows, stored_dtype)
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            raise QuantizationError(
                f"{pt.source.hf_names[0] if pt.source.hf_names else pt.name}: {bad} NaN/Inf value(s); "
                "pass --allow-nonfinite to convert anyway", tensor=pt.name)
        if res.ndim == 0 or res.shape[0] != min(_ROWS_PER_CHUNK, rows.shape[0] - lo):
            raise QuantizationError(f"{pt.name}: quantizer {q.name!r} returned shape {res.shape} for "
                                    f"{min(_ROWS_PER_CHUNK, rows.shape[0] - lo)} rows", tensor=pt.name)
        res = res.reshape(res.shape[0], -1)
        if parts:  # kept past the next chunk: copied if it is a view of the input or a plugin's array
            own = type(q).__module__.startswith("bitconv.") and not np.may_share_memory(res, rows)
            pieces.append(np.ascontiguousarray(res) if own else res.copy())
            continue
        if out is None:
            out = np.empty((rows.shape[0], res.shape[1]), dtype=res.dtype)
        out[lo:lo + res.shape[0]] = res
    if parts:
        return pieces
    assert out is not None
    return out


def _finish(pt: PlannedTensor, out: np.ndarray, state: Any) -> np.ndarray:
    """The whole tensor's rows → its bytes: regrouped for tiled layouts, then the trailer."""
    q = pt.quant
    out = q.assemble(out, state)
    if (tail := q.trailer(state)):
        out = np.concatenate([out.reshape(-1).view(np.uint8), np.frombuffer(tail, dtype=np.uint8)])
    if out.nbytes != pt.nbytes:
        raise QuantizationError(f"{pt.name}: {q.name} produced {out.nbytes} bytes, planned {pt.nbytes}")
    return out


def _finish_parts(pt: PlannedTensor, pieces: list[np.ndarray], state: Any) -> list[np.ndarray]:
    """`_finish` of a row-local layout, unjoined: the row pieces, then the trailer."""
    if (tail := pt.quant.trailer(state)):
        pieces = pieces + [np.frombuffer(tail, dtype=np.uint8)]
    if (n := sum(p.nbytes for p in pieces)) != pt.nbytes:
        raise QuantizationError(f"{pt.name}: {pt.quant.name} produced {n} bytes, planned {pt.nbytes}")
    return pieces


def encode_tensor(pt: PlannedTensor, arr: np.ndarray, pool: ThreadPoolExecutor | None,
                  allow_nonfinite: bool, stored_dtype: str | None = None) -> np.ndarray:
    """A whole tensor's bytes. `arr` holds the stored values (`stored_dtype`, bf16 as raw bits) or,
    without a dtype, floats; each chunk is widened, checked and encoded while in cache (no float32
    copy of the tensor, unless a mapping's scale rule needs one)."""
    return _encode_tensor(pt, arr, pool, allow_nonfinite, stored_dtype, False)


def _encode_tensor(pt: PlannedTensor, arr: np.ndarray, pool: ThreadPoolExecutor | None, allow_nonfinite: bool,
                   stored_dtype: str | None, parts: bool) -> Any:
    """`encode_tensor`, or with `parts` (row-local layouts) its pieces in order, never joined."""
    finish = functools.partial(_finish_parts if parts else _finish, pt)
    rows, rule = _rows_2d(arr), pt.source.scale_rule is not None and pt.quant.needs_prepare
    if rule and stored_dtype is not None and pt.source.stored_scale_rule is not None:
        known = pt.source.stored_scale_rule(rows, stored_dtype)  # the rule read from the stored values
        if known is not None and np.isfinite(known.scale):  # so is every value: no finiteness checks
            state = pt.quant.prepare([], stored_dtype, known)
            return finish(_encode_rows(pt, rows, stored_dtype, state, True, pool, parts), state)
    if rule and stored_dtype is not None:  # the rule sees the whole tensor: widen it once, for rule and encoder
        rows, stored_dtype = to_compute_dtype(rows, stored_dtype), None
    starts = range(0, rows.shape[0], _ROWS_PER_CHUNK)
    state = _prepare(pt, [rows] if rule else (rows[lo:lo + _ROWS_PER_CHUNK] if stored_dtype is None else
                                              to_compute_dtype(rows[lo:lo + _ROWS_PER_CHUNK], stored_dtype)
                                              for lo in starts), stored_dtype)
    # the rule's mean over every value is finite: so is every value (no second finiteness pass)
    allow_nonfinite = allow_nonfinite or (rule and bool(np.isfinite(getattr(state, "scale", np.nan))))
    return finish(_encode_rows(pt, rows, stored_dtype, state, allow_nonfinite, pool, parts), state)


# --- the conversion pipeline: work items in plan order, run in parallel, written in order ----------

@dataclass
class _WorkItem:
    """A slab of rows of a large tensor, or a whole tensor; `cost` bounds the bytes it holds. `run`
    gives its bytes: one array, or arrays written one after the other."""

    index: int
    first: bool
    last: bool
    cost: int
    run: Callable[[], np.ndarray | list[np.ndarray]]


def _streamable(pt: PlannedTensor) -> LazyTensor | None:
    """The single checkpoint tensor a planned tensor is read from slab by slab, when it is one
    (not a stack of experts, a permutation or a decoded packed form) and its layout is row-local."""
    if type(pt.quant).assemble is not Quantizer.assemble or not pt.shape:
        return None
    return pt.source.plain


def _slabs(pt: PlannedTensor, slab_bytes: int) -> list[tuple[int, int]] | None:
    """Row ranges a tensor is read in, or None when it is one work item."""
    lazy = _streamable(pt)
    if lazy is None or pt.stored_nbytes <= slab_bytes:
        return None
    n_rows = lazy.n_rows
    step = max(1, slab_bytes * n_rows // pt.stored_nbytes)
    return [(lo, min(n_rows, lo + step)) for lo in range(0, n_rows, step)]


def _work_cost(pt: PlannedTensor, share: float = 1.0) -> int:
    """Bytes a work item over `share` of a tensor's rows holds: stored form, float32 image, output."""
    return int((pt.stored_nbytes + pt.f32_nbytes + pt.nbytes) * share)


def peak_work_bytes(plan: TensorPlan, threads: int = 0) -> int:
    """The most bytes the conversion's work items hold at once: a budget per thread, or the largest
    item that cannot be split (it runs alone)."""
    largest = 0
    for pt in plan.tensors:
        slabs = _slabs(pt, SLAB_BYTES)
        rows = _streamable(pt).n_rows if slabs else 1  # type: ignore[union-attr]
        largest = max(largest, _work_cost(pt, (slabs[0][1] - slabs[0][0]) / rows) if slabs else _work_cost(pt))
    total = sum(_work_cost(pt) for pt in plan.tensors)
    return min(total, max(largest, thread_count(threads) * INFLIGHT_PER_THREAD))


def _whole_item(i: int, pt: PlannedTensor, allow_nonfinite: bool) -> _WorkItem:
    src, q = pt.source, pt.quant
    if src.codes is not None and src.known_scale is not None and hasattr(q, "quantize_codes"):
        # a packed ternary linear into a ternary type: its codes are packed as they are, with the
        # checkpoint's scale (the bytes quantize() gives for codes / inv), no float32 round trip
        def from_codes() -> np.ndarray:
            codes = src.codes()  # type: ignore[misc]
            state = _prepare(pt, [], None)
            return _finish(pt, np.asarray(q.quantize_codes(codes, state).data), state)  # type: ignore[attr-defined]
        return _WorkItem(i, True, True, pt.stored_nbytes + math.prod(pt.shape) + pt.nbytes, from_codes)

    def run() -> np.ndarray | list[np.ndarray]:
        # one plain tensor, read transiently (mapped): its bytes are encoded before the next read
        with transient_reads() if pt.source.plain is not None else contextlib.nullcontext():
            arr, stored_dtype = pt.source.load_stored()
            return _encode_tensor(pt, arr, None, allow_nonfinite, stored_dtype,
                                  type(pt.quant).assemble is Quantizer.assemble)
    return _WorkItem(i, True, True, _work_cost(pt), run)


def _slab_item(i: int, pt: PlannedTensor, lazy: LazyTensor, rows: tuple[int, int], first: bool, last: bool,
               state: Any, allow_nonfinite: bool) -> _WorkItem:
    lo, hi = rows

    def run() -> list[np.ndarray]:
        with transient_reads():
            out = _encode_rows(pt, lazy.load_rows(lo, hi), lazy.dtype, state, allow_nonfinite, parts=True)
        tail = pt.quant.trailer(state) if last else b""
        return out + [np.frombuffer(tail, dtype=np.uint8)] if tail else out

    return _WorkItem(i, first, last, _work_cost(pt, (hi - lo) / lazy.n_rows), run)


def _work_items(plan: TensorPlan, allow_nonfinite: bool, slab_bytes: int, indices: range,
                keep_grid: Any = None) -> Iterator[_WorkItem]:
    """The tensors `indices` as work items in plan order. A tensor larger than a slab is read and encoded
    a slab of rows at a time, after a first pass for its per-tensor statistic when it needs one, so no
    tensor sits in memory whole; the rest are one item each. `keep_grid` (gguf_keep_grid.KeepGrid)
    makes the items of the tensors it may write from their source's integer grid."""
    for i, pt in zip(indices, plan.tensors[indices.start:indices.stop]):
        if keep_grid is not None and (grid_source := keep_grid.source(pt)) is not None:
            yield from keep_grid.work_items(i, pt, grid_source, slab_bytes, allow_nonfinite)
            continue
        if (raw := pt.source.raw) is not None:  # already in its planned type: copied a slab of bytes at a time
            for lo in range(0, pt.nbytes, slab_bytes) or [0]:
                hi = min(pt.nbytes, lo + slab_bytes)
                yield _WorkItem(i, lo == 0, hi == pt.nbytes, 2 * (hi - lo), functools.partial(raw, lo, hi))
            continue
        slabs = _slabs(pt, slab_bytes)
        lazy = _streamable(pt)
        if slabs is None or lazy is None:
            yield _whole_item(i, pt, allow_nonfinite)
            continue

        def chunks(lazy: LazyTensor = lazy, slabs: list[tuple[int, int]] = slabs) -> Iterator[np.ndarray]:
            for lo, hi in slabs:
                raw = lazy.load_rows(lo, hi)
                for c in range(0, raw.shape[0], _ROWS_PER_CHUNK):
                    yield to_compute_dtype(raw[c:c + _ROWS_PER_CHUNK], lazy.dtype)

        state = _prepare(pt, chunks(), lazy.dtype)  # on this thread, before the tensor's slabs start
        for j, rows in enumerate(slabs):
            yield _slab_item(i, pt, lazy, rows, j == 0, j == len(slabs) - 1, state, allow_nonfinite)


def _run_in_order(pool: ThreadPoolExecutor | None, items: Iterator[_WorkItem],
                  budget: int) -> Iterator[tuple[_WorkItem, Any]]:
    """Run work items on the pool and yield their results in plan order. New items start while the
    bytes in flight stay within `budget` (one item always may), so memory is bounded by the thread
    count, not by the model, and a slow disk cannot make finished work pile up."""
    if pool is None:
        for item in items:
            yield item, item.run()
        return
    max_items = 2 * (pool._max_workers or 1)
    pending: deque[tuple[_WorkItem, Future[Any]]] = deque()
    inflight = 0
    nxt = next(items, None)
    try:
        while pending or nxt is not None:
            while nxt is not None and len(pending) < max_items and (not pending or inflight + nxt.cost <= budget):
                pending.append((nxt, pool.submit(nxt.run)))
                inflight += nxt.cost
                nxt = next(items, None)
            item, fut = pending.popleft()
            res = fut.result()
            inflight -= item.cost
            yield item, res
    finally:
        for _, f in pending:
            f.cancel()


def _pad(n: int, align: int) -> int:
    return -(-n // align) * align - n


def hf_metadata(plan: TensorPlan, checkpoint: Checkpoint, vocab: GGUFVocab) -> MetadataFn:
    """The metadata of a conversion from a HF checkpoint: general.*, the mapping's hyper-parameters,
    the vocabulary; for llama-quantize's file types in the order llama-quantize leaves them."""
    def add(w: gguf.GGUFWriter) -> None:
        mapping = plan.mapping
        if mapping.standalone_metadata:  # the mapping's converter writes its own key set
            return mapping.add_standalone_metadata(w, checkpoint.name, vocab, plan.quant.file_type)  # type: ignore
        add_general_metadata(w, checkpoint)
        if plan.quant.llama_ftype is None:
            mapping.add_metadata(w, plan.quant.file_type)
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
            vocab.add_to(w)
        else:
            # llama-quantize re-sets these two keys last (ggml's gguf_set_val moves a key to the end)
            mapping.add_metadata(w, None)
            vocab.add_to(w)
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
            w.add_file_type(int(plan.quant.llama_ftype))
    return add


def write_gguf(path: Path, plan: TensorPlan, metadata: MetadataFn, *, arch: str, ggml_shapes: bool = False,
               threads: int = 0, allow_nonfinite: bool = False, progress: ProgressFn | None = None,
               split: SplitPart | None = None, keep_grid: Any = None) -> str:
    """Write the plan's tensors to `path` (a temp path: the caller renames it into place) and
    return the file's sha256, computed while writing. `ggml_shapes`: write each shape as ggml sees
    it (trailing dimensions of 1 dropped), as llama-quantize does. `split`: write only that file of
    a split set (its tensors and KV pairs, gguf_split.py); the bytes do not depend on the others.
    `keep_grid`: write a quantized source's linears from their integer grid (gguf_keep_grid.py)."""
    w = FastGGUFWriter(path, arch)
    for pt in plan:
        shape = pt.shape
        if ggml_shapes:  # llama-quantize writes ggml_n_dims: trailing ggml dims of 1 dropped
            while len(shape) > 1 and shape[0] == 1:
                shape = shape[1:]
        w.add_tensor_info(pt.name, shape, np.dtype(np.float32), pt.nbytes, raw_dtype=ggml_type(pt.quant.ggml_type))
    if split is None or split.index == 0:
        metadata(w)  # every tensor declared: general.size_label counts the whole model
    if split is not None:
        split.restrict(w)

    n_threads = thread_count(threads)
    pool = ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="bitconv-q") if n_threads > 1 else None
    hasher = StreamHasher()
    # the write-back hints run on their own thread: starting write-back can block on a busy disk
    flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bitconv-wb") if _HAS_FADVISE else None
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        fout = w.fout[0] if w.fout else None
        assert fout is not None
        w.write_padding(fout, fout.tell())  # the data's alignment (a split of no tensors ends with it)
        fout.flush()
        pos = fout.tell()
        with open(path, "rb") as f:
            hasher.update(f.read(pos))
        align = w.data_alignment
        written_back = 0
        tensor_bytes = 0
        items = _work_items(plan, allow_nonfinite, SLAB_BYTES, split.tensors if split else range(len(plan.tensors)),
                            keep_grid)
        for item, data in _run_in_order(pool, items, n_threads * INFLIGHT_PER_THREAD):
            pt = plan.tensors[item.index]
            if item.first:
                w.begin_tensor_data(pt.nbytes)
                hasher.update(bytes(_pad(pos, align)))
                pos += _pad(pos, align)
                tensor_bytes = 0
            parts = data if isinstance(data, list) else [data]
            for part in parts:
                w.write_tensor_chunk(part)
            hasher.update(parts)
            pos += (n := sum(part.nbytes for part in parts))
            tensor_bytes += n
            del data, parts
            if item.last:
                if tensor_bytes != pt.nbytes:
                    raise QuantizationError(f"{pt.name}: {pt.quant.name} produced {tensor_bytes} bytes, "
                                            f"planned {pt.nbytes}", tensor=pt.name)
                w.end_tensor_data(pt.nbytes)
                hasher.update(bytes(_pad(pt.nbytes, align)))
                pos += _pad(pt.nbytes, align)
                if progress:
                    progress(pt, pt.nbytes)
            if flusher is not None and pos - written_back >= WRITEBACK_EVERY:
                # Start the kernel's write-back of what is written (it does not wait for the disk)
                fout.flush()
                flusher.submit(os.posix_fadvise, fout.fileno(), written_back, pos - written_back,
                               os.POSIX_FADV_DONTNEED)
                written_back = pos
        fout.flush()
        if fout.tell() != hasher.nbytes:
            raise RuntimeError(f"hashed {hasher.nbytes} bytes but wrote {fout.tell()}")
        return hasher.hexdigest()
    finally:
        hasher.close()
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
        if flusher:
            flusher.shutdown(wait=True, cancel_futures=True)  # before the file is closed
        w.close()
