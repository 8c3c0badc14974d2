"""Writing a planned GGUF — one file or a split set — with its tl1/tl2 kernel files and its
manifest: the one output path of every GGUF producer (hf2gguf from a checkpoint, quantize from a
GGUF), so both name, check, commit and record their files the same way."""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .convert.plan import PlannedTensor, TensorPlan
from .errors import CheckpointError
from .formats import gguf_split, gguf_writer
from .formats.atomic import check_free_space, check_output_path, staged_texts
from .formats.manifest import BackgroundHasher, write_manifest
from .quant.tl import LutQuantizer
from .results import ConversionResult, TensorRecord
from .threads import thread_count

#: resident memory the process needs besides tensor data (interpreter, numpy, gguf-py, vocab)
BASE_MEMORY = 200 * 1024 * 1024


def memory_estimate(plan: TensorPlan, threads: int = 0) -> int:
    """Peak resident bytes: the interpreter and libraries, plus the work in flight (a budget per
    thread; large tensors are read a slab of rows at a time, so it does not grow with the model)."""
    return BASE_MEMORY + gguf_writer.peak_work_bytes(plan, threads)


def input_records(hasher: BackgroundHasher, artifact: Path) -> list[dict[str, Any]]:
    """The inputs' hashes for the manifest; an input that vanished meanwhile is a one-line error."""
    try:
        return hasher.result()
    except OSError as e:
        raise CheckpointError(f"{e.filename}: {e.strerror or e} while hashing the inputs; {artifact} was "
                              "written, its manifest was not") from e


@dataclass
class GGUFOutput:
    """A planned GGUF output: what to write, where, and what the manifest says about it."""

    source: str
    model_name: str  # names the codegen command of tl1/tl2 outputs
    architecture: str
    plan: TensorPlan
    metadata: gguf_writer.MetadataFn
    arch: str
    ggml_shapes: bool
    out_path: Path
    splits: gguf_split.SplitPlan
    #: files the manifest hashes, and the folder their paths are relative to
    input_files: list[Path] = field(default_factory=list)
    input_base: Path = Path(".")
    options: dict[str, Any] = field(default_factory=dict)
    #: the source type a tensor table shows per tensor
    source_dtype: Callable[[PlannedTensor], str] = lambda t: t.source.source_dtype
    notes: list[str] = field(default_factory=list)
    #: the inputs' hashing, when the planning started it early (`write` takes it over)
    started_hasher: BackgroundHasher | None = None
    #: --keep-grid: a formats.gguf_keep_grid.KeepGrid (which linears keep their source's codes)
    keep_grid: Any = None

    @property
    def lut(self) -> LutQuantizer | None:
        return self.plan.quant if isinstance(self.plan.quant, LutQuantizer) else None

    def result(self, *, dry_run: bool, threads: int) -> ConversionResult:
        """The result as planned (sizes estimated); `write` fills in what was written."""
        plan = self.plan
        result = ConversionResult(
            source=self.source, architecture=self.architecture, format="gguf", quant=plan.quant.name,
            output=str(self.splits.paths(self.out_path)[0]), dry_run=dry_run, n_tensors=len(plan),
            n_params=plan.n_params, output_bytes=gguf_writer.estimated_file_size(plan),
            type_counts=plan.type_counts(), memory_estimate_bytes=memory_estimate(plan, threads),
            largest_tensor_f32_bytes=plan.largest_f32_nbytes,
            tensors=[TensorRecord(t.name, list(t.shape), t.quant.name, t.nbytes, self.source_dtype(t), t.note)
                     for t in plan],
            outputs=self.splits.describe(plan, self.out_path), notes=list(self.notes))
        if self.lut is not None:
            result.tilings = [asdict(t) for t in self.lut.used_config().tilings]
        return result

    def fingerprint(self) -> str:
        """What a re-plan of this output must agree on (a cluster task re-plans on its node): every
        tensor's name, shape, type and size, the files and their tensors."""
        h = hashlib.sha256(repr((str(self.out_path), self.splits.ranges)).encode())
        for t in self.plan:
            h.update(repr((t.name, tuple(t.shape), t.quant.name, t.nbytes)).encode())
        return h.hexdigest()

    def prepare(self, result: ConversionResult, *, force: bool) -> dict[Path, str]:
        """Check every output path and the free space before anything is written; returns the kernel
        files of tl1/tl2 (named after the first file, where readers look) and their text."""
        for p in self.splits.paths(self.out_path):
            check_output_path(p, force)
        sidecars: dict[Path, str] = {}
        if (lut := self.lut) is not None:
            used = lut.used_config()
            ini, codegen = gguf_split.kernel_files_for(Path(result.output))
            sidecars = {ini: used.to_ini(), codegen: used.codegen_text(lut.layout, self.model_name)}
            for p in sidecars:
                check_output_path(p, force)
        check_free_space(self.out_path.parent, result.output_bytes)
        return sidecars

    def hasher(self, manifest: bool) -> BackgroundHasher | None:
        """The inputs hashing in the background while the files are written (None: no manifest)."""
        started, self.started_hasher = self.started_hasher, None
        if started is not None and not manifest:
            started.cancel()
        if started is not None and manifest:
            return started
        return BackgroundHasher(self.input_files, self.input_base) if manifest else None

    def finish(self, result: ConversionResult, records: list[dict[str, Any]], sidecars: dict[Path, str],
               hasher: BackgroundHasher | None, *, threads: int, allow_nonfinite: bool) -> ConversionResult:
        """Once every file is in place: the result's sizes and hashes, and the set's one manifest
        (the GGUF files' records, the kernel files', the inputs' hashes, the options)."""
        if sidecars:
            result.kernel_config, result.codegen = (str(p) for p in sidecars)
        if self.keep_grid is not None:
            result.keep_grid = self.keep_grid.summary()
        result.output_bytes = sum(r["bytes"] for r in records)
        result.sha256 = records[0]["sha256"]
        for planned, written in zip(result.outputs, records):
            planned.update(bytes=written["bytes"], sha256=written["sha256"])
        out_records = [{k: r[k] for k in ("path", "bytes", "sha256")} for r in records]
        out_records += [{"path": p.name, "bytes": len(t.encode()), "sha256": hashlib.sha256(t.encode()).hexdigest()}
                        for p, t in sidecars.items()]
        if hasher:
            options = {**self.options, "format": "gguf", "quant": self.plan.quant.name, "tilings": result.tilings,
                       "allow_nonfinite": allow_nonfinite, "threads": thread_count(threads)}
            result.manifest = str(write_manifest(self.out_path, inputs=input_records(hasher, self.out_path),
                                                 outputs=out_records, options=options, source=self.source))
        return result

    def write(self, result: ConversionResult, *, force: bool, manifest: bool, threads: int, allow_nonfinite: bool,
              progress: Callable[[PlannedTensor, int], None] | None = None,
              on_start: Callable[[TensorPlan], None] | None = None) -> ConversionResult:
        """Write the file(s), the kernel files of tl1/tl2 and the manifest; nothing is left behind
        on failure."""
        hasher = self.hasher(manifest)
        try:
            sidecars = self.prepare(result, force=force)
            start = time.perf_counter()
            if on_start:
                on_start(self.plan)
            with staged_texts(sidecars) as commit_sidecars:
                # the GGUF files are renamed right after the sidecars: a usable file always has its config
                records = gguf_split.write_split_set(
                    self.out_path, self.plan, self.metadata, self.splits, force=force, before_commit=commit_sidecars,
                    arch=self.arch, ggml_shapes=self.ggml_shapes, threads=threads, allow_nonfinite=allow_nonfinite,
                    progress=progress, **({"keep_grid": self.keep_grid} if self.keep_grid is not None else {}))
        except BaseException:
            if hasher:
                hasher.cancel()
            raise
        result = self.finish(result, records, sidecars, hasher, threads=threads, allow_nonfinite=allow_nonfinite)
        result.seconds = time.perf_counter() - start
        return result

    def write_options(self, *, threads: int, allow_nonfinite: bool) -> dict[str, Any]:
        """write_gguf's options for one file of this output (`gguf_split.write_split`)."""
        return {"arch": self.arch, "ggml_shapes": self.ggml_shapes, "threads": threads,
                "allow_nonfinite": allow_nonfinite}


def default_name(name: str, quant: str, out: str | os.PathLike[str] | None, beside: Path | None = None) -> Path:
    """No -o: <name>-<quant>.gguf in the current folder (or `beside`'s folder); -o DIR (existing,
    or ending in /): DIR/<name>-<quant>.gguf; else -o itself."""
    filename = f"{name}-{quant}.gguf"
    if out is None:
        return (beside.parent if beside is not None else Path.cwd()) / filename
    p = Path(out).expanduser()
    if p.is_dir() or str(out).endswith(("/", os.sep)):
        return p / filename
    return p
