"""The Python API. The CLI is a thin layer over these functions; nothing here prints or exits."""
from __future__ import annotations

import hashlib
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .convert.arch import mapping_for
from .convert.checkpoint import Checkpoint
from .convert.plan import PlannedTensor, TensorPlan, plan_checkpoint
from .convert.tokenizer import export_vocab
from .errors import CheckpointError, UsageError
from .formats import gguf_writer
from .formats.atomic import atomic_output, check_free_space, check_output_path, staged_texts
from .formats.manifest import BackgroundHasher, write_manifest
from .quant.registry import get_quantizer
from .quant.tl import KernelConfig, LutQuantizer
from .targets import get_target
from .threads import thread_count, using_threads

DEFAULT_GGUF_QUANT = "f16"
#: resident memory the process needs besides tensor data (interpreter, numpy, gguf-py, vocab)
BASE_MEMORY = 200 * 1024 * 1024


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_output(checkpoint: Checkpoint, quant: str, out: str | os.PathLike[str] | None, suffix: str = ".gguf") -> Path:
    """No -o: ./<name>-<quant>.gguf; -o DIR (existing, or ending in /): DIR/<name>-<quant>.gguf."""
    filename = f"{checkpoint.name}-{quant}{suffix}"
    if out is None:
        return Path.cwd() / filename
    p = Path(out).expanduser()
    if p.is_dir() or str(out).endswith(("/", os.sep)):
        return p / filename
    return p


def plan_gguf(source: str | os.PathLike[str], quant: str | None = None, *, target: str | None = None,
              lut: bool = False, smallest: bool = False, revision: str | None = None,
              allow_pickle: bool = False, force_ternarize: bool = False,
              kernel_config: str | os.PathLike[str] | KernelConfig | None = None) -> tuple[Checkpoint, TensorPlan]:
    """Read a checkpoint's headers and decide every output tensor; no tensor data is read.
    The quant type is `quant`, else the target's default for this model, else f16. `kernel_config`
    (tl1/tl2): pack for an existing bitnet.cpp build's kernel_config.ini instead of choosing tilings."""
    checkpoint = Checkpoint.open(source, revision=revision, allow_pickle=allow_pickle)
    if quant is None:
        quant = get_target(target).quant_for(mapping_for(checkpoint), lut=lut, smallest=smallest) if target \
            else DEFAULT_GGUF_QUANT
    return plan_checkpoint(checkpoint, quant, force_ternarize=force_ternarize, kernel_config=kernel_config)


def kernel_files_for(out_path: Path) -> tuple[Path, Path]:
    """`<stem>.kernel_config.ini` and `<stem>.codegen.txt` beside a tl1/tl2 GGUF: one pair per
    output, so two outputs in one folder never overwrite each other's."""
    stem = out_path.name[:-len(".gguf")] if out_path.name.endswith(".gguf") else out_path.name
    return out_path.with_name(f"{stem}.kernel_config.ini"), out_path.with_name(f"{stem}.codegen.txt")


def memory_estimate(plan: TensorPlan, threads: int = 0) -> int:
    """Peak resident bytes: the interpreter and libraries, plus the work in flight (a budget per
    thread; large tensors are read a slab of rows at a time, so it does not grow with the model)."""
    return BASE_MEMORY + gguf_writer.peak_work_bytes(plan, threads)


def convert(source: str | os.PathLike[str], to: str | None = None, quant: str | None = None,
            out: str | os.PathLike[str] | None = None, *, target: str | None = None, lut: bool = False,
            smallest: bool = False, force: bool = False, dry_run: bool = False, force_ternarize: bool = False,
            threads: int = 0, allow_nonfinite: bool = False, allow_pickle: bool = False,
            revision: str | None = None, pre: str | None = None, manifest: bool = True,
            kernel_config: str | os.PathLike[str] | KernelConfig | None = None,
            format: str | None = None, block_size: int | None = None,
            max_shard_size: str | int | None = None, linear_class: str = "bitlinear",
            progress: Callable[[PlannedTensor, int], None] | None = None,
            on_start: Callable[[TensorPlan], None] | None = None) -> ConversionResult:
    """Convert a HF checkpoint (local directory or hub repo id) into an artifact. `target` names a
    preset (`bitconv targets`) that implies the format and, unless `quant` is given, the quant type.
    to="safetensors": `format` is the checkpoint layout (bitnet-packed, compressed-tensors), `quant`
    its weight type (compressed-tensors: int4 / int8), `block_size` the group size,
    `max_shard_size` ("2GB", "1.5GiB", bytes) splits the weights into shards."""
    fmt = to or (get_target(target).format if target else "gguf")
    if target and get_target(target).format != fmt:
        raise UsageError(f"target {target} writes {get_target(target).format}, not {fmt}")
    if fmt == "onnx":
        return convert_onnx(source, quant, out, target=target, block_size=block_size,  # type: ignore[return-value]
                            force=force, dry_run=dry_run,
                            force_ternarize=force_ternarize, allow_pickle=allow_pickle, revision=revision,
                            manifest=manifest, threads=threads, allow_nonfinite=allow_nonfinite)
    if fmt == "safetensors":
        from .formats.safetensors import FORMATS

        if format is None and quant is not None and quant.lower() in FORMATS:
            format, quant = quant, None  # the earlier convert(src, "safetensors", "bitnet-packed")
        return convert_safetensors(source, format or "bitnet-packed", out, quant=quant,  # type: ignore[return-value]
                                   block_size=block_size, max_shard_size=max_shard_size, linear_class=linear_class,
                                   force=force, dry_run=dry_run, allow_pickle=allow_pickle, revision=revision,
                                   threads=threads)
    if format is not None or block_size is not None or max_shard_size is not None:
        raise UsageError("format, block_size and max_shard_size apply to to=\"safetensors\"")
    if fmt != "gguf":
        raise UsageError(f"output format {fmt!r} is not available yet; available: gguf, onnx, safetensors")
    checkpoint, plan = plan_gguf(source, quant.lower() if quant else None, target=target, lut=lut,
                                 smallest=smallest, revision=revision, allow_pickle=allow_pickle,
                                 force_ternarize=force_ternarize, kernel_config=kernel_config)
    quant = plan.quant.name
    vocab = export_vocab(checkpoint.root, plan.mapping.vocab_size, prefer=plan.mapping.tokenizer_kinds, pre=pre)
    out_path = default_output(checkpoint, quant, out)
    result = ConversionResult(
        source=str(source), architecture=checkpoint.architecture, format="gguf", quant=quant,
        output=str(out_path), dry_run=dry_run, n_tensors=len(plan), n_params=plan.n_params,
        output_bytes=gguf_writer.estimated_file_size(plan), type_counts=plan.type_counts(),
        memory_estimate_bytes=memory_estimate(plan, threads), largest_tensor_f32_bytes=plan.largest_f32_nbytes,
        tensors=[TensorRecord(t.name, list(t.shape), t.quant.name, t.nbytes, t.source.source_dtype, t.note)
                 for t in plan])
    lut = plan.quant if isinstance(plan.quant, LutQuantizer) else None
    if lut is not None:
        result.tilings = [asdict(t) for t in lut.used_config().tilings]
    if dry_run:
        return result
    check_output_path(out_path, force)
    if lut is not None:
        for p in kernel_files_for(out_path):
            check_output_path(p, force)
    check_free_space(out_path.parent, result.output_bytes)
    start = time.perf_counter()
    if on_start:
        on_start(plan)
    hasher = BackgroundHasher(checkpoint.input_files(), checkpoint.root) if manifest else None
    sidecars: dict[Path, str] = {}
    if lut is not None:
        used = lut.used_config()
        ini, codegen = kernel_files_for(out_path)
        sidecars = {ini: used.to_ini(), codegen: used.codegen_text(lut.layout, checkpoint.name)}
    try:
        with atomic_output(out_path, force=force) as tmp, staged_texts(sidecars) as commit_sidecars:
            digest = gguf_writer.write_gguf(tmp, plan, gguf_writer.hf_metadata(plan, checkpoint, vocab),
                                            arch=plan.mapping.arch_name, ggml_shapes=plan.quant.llama_ftype is not None,
                                            threads=threads, allow_nonfinite=allow_nonfinite, progress=progress)
            commit_sidecars()  # the GGUF is renamed right after: a usable file always has its config
    except BaseException:
        if hasher:
            hasher.cancel()
        raise
    if sidecars:
        result.kernel_config, result.codegen = (str(p) for p in sidecars)
    result.output_bytes = out_path.stat().st_size
    result.sha256 = digest
    out_records = [{"path": out_path.name, "bytes": result.output_bytes, "sha256": digest}]
    out_records += [{"path": p.name, "bytes": len(t.encode()), "sha256": hashlib.sha256(t.encode()).hexdigest()}
                    for p, t in sidecars.items()]
    if hasher:
        options = {"format": "gguf", "quant": quant, "target": target, "pre": vocab.pre, "tilings": result.tilings,
                   "allow_nonfinite": allow_nonfinite, "force_ternarize": force_ternarize, "revision": revision,
                   "threads": thread_count(threads)}
        result.manifest = str(write_manifest(out_path, inputs=_input_records(hasher, out_path), outputs=out_records,
                                             options=options, source=str(source)))
    result.seconds = time.perf_counter() - start
    return result


DEFAULT_ONNX_QUANT = "f32"


def convert_onnx(source: str | os.PathLike[str], quant: str | None = None,
                 out: str | os.PathLike[str] | None = None, *, target: str | None = None,
                 block_size: int | None = None, accuracy_level: int = 4, force: bool = False,
                 dry_run: bool = False, force_ternarize: bool = False, allow_pickle: bool = False,
                 revision: str | None = None, manifest: bool = True, threads: int = 0,
                 allow_nonfinite: bool = False, progress: Callable[[str, int], None] | None = None,
                 on_start: Callable[[Any], None] | None = None) -> Any:
    """Export a HF checkpoint (or a GGUF file or split set, read as the checkpoint it came from) as an
    ONNX Runtime decoder folder (model.onnx + model.onnx.data + genai_config.json + tokenizer files). `quant`: f32 / f16 / int8 / int4 / int2 (ternary models),
    else the target's default for this model, else f32. `out`: the folder (default
    ./<name>-<quant>-onnx). Returns an `onnx.export.OnnxExportResult`."""
    from .formats.onnx import export as onnx_export, plan as onnx_plan

    if target and get_target(target).format != "onnx":
        raise UsageError(f"target {target} writes {get_target(target).format}, not onnx")
    with _opened_source(source, revision, allow_pickle) as checkpoint:
        mapping = mapping_for(checkpoint)
        if quant is None:
            quant = get_target(target).quant_for(mapping) if target else DEFAULT_ONNX_QUANT
        oq = onnx_plan.get_onnx_quant(quant)
        plan = onnx_plan.make_onnx_plan(checkpoint, mapping, oq, block_size=block_size,
                                        force_ternarize=force_ternarize, accuracy_level=accuracy_level)
        plan.allow_nonfinite = allow_nonfinite
        folder = Path(out).expanduser() if out is not None else Path.cwd() / f"{checkpoint.name}-{oq.name}-onnx"
        if not dry_run:
            onnx_export.require_onnx()
            onnx_export.check_output_folder(folder, onnx_export.output_files(plan), force)
            check_free_space(folder if folder.is_dir() else folder.parent, plan.data_nbytes)
            if on_start:
                on_start(plan)
        return _export_folder(
            checkpoint, folder, source, manifest and not dry_run, threads,
            lambda: onnx_export.export(checkpoint, plan, folder, source=str(source), dry_run=dry_run, force=force,
                                       progress=progress),
            lambda r: {"format": "onnx", "quant": oq.name, "block_size": r.block_size, "target": target,
                       "accuracy_level": accuracy_level, "force_ternarize": force_ternarize, "revision": revision,
                       "allow_nonfinite": allow_nonfinite})


@contextmanager
def _opened_source(source: str | os.PathLike[str], revision: str | None,
                   allow_pickle: bool) -> Iterator[Checkpoint]:
    """The checkpoint an exporter reads: a folder or hub repo id, or a GGUF file (or split set) read
    as the checkpoint it came from (config and tokenizer files rebuilt in a staging folder that
    lasts as long as the `with` block)."""
    from .convert.gguf_source import is_gguf_source

    if not is_gguf_source(source):
        yield Checkpoint.open(source, revision=revision, allow_pickle=allow_pickle)
        return
    if revision is not None:
        raise UsageError("--revision applies to a hub repo id, not to a GGUF file")
    from .convert.gguf_checkpoint import open_gguf_checkpoint

    with open_gguf_checkpoint(source) as checkpoint:
        yield checkpoint


def _input_records(hasher: BackgroundHasher, artifact: Path) -> list[dict[str, Any]]:
    """The inputs' hashes for the manifest; an input that vanished meanwhile is a one-line error."""
    try:
        return hasher.result()
    except OSError as e:
        raise CheckpointError(f"{e.filename}: {e.strerror or e} while hashing the inputs; {artifact} was "
                              "written, its manifest was not") from e


def _export_folder(checkpoint: Checkpoint, folder: Path, source: Any, manifest: bool, threads: int,
                   run: Callable[[], Any], options: Callable[[Any], dict[str, Any]]) -> Any:
    """Run a folder export on `threads` workers while the inputs hash in the background, then write
    the folder's manifest (inputs, the result's files, `options(result)`, the thread count)."""
    hasher = BackgroundHasher(checkpoint.input_files(), checkpoint.root) if manifest else None
    try:
        with using_threads(threads):
            result = run()
    except BaseException:
        if hasher:
            hasher.cancel()
        raise
    if hasher:
        from .formats.manifest import file_record

        outputs = [file_record(folder / name, folder) for name in result.files]
        result.manifest = str(write_manifest(folder, inputs=_input_records(hasher, folder), outputs=outputs,
                                             options={**options(result), "threads": thread_count(threads)},
                                             source=str(source)))
    return result


def convert_safetensors(source: str | os.PathLike[str], format: str = "bitnet-packed",
                        out: str | os.PathLike[str] | None = None, *, quant: str | None = None,
                        block_size: int | None = None, max_shard_size: str | int | None = None,
                        linear_class: str = "bitlinear", force: bool = False, dry_run: bool = False,
                        allow_pickle: bool = False, revision: str | None = None, manifest: bool = True,
                        threads: int = 0, progress: Callable[[str, int], None] | None = None,
                        on_start: Callable[[Any], None] | None = None) -> Any:
    """Write a Hugging Face safetensors checkpoint folder (model.safetensors, or shards + index,
    config.json, tokenizer files) from a HF checkpoint or a GGUF file (or split set). `format`: "bitnet-packed" (transformers' packed BitNet layout,
    from a BitNetForCausalLM with master or packed weights; `linear_class`: "bitlinear" (weight_scale
    = 1/s) or "autobitlinear" (weight_scale = s)), "compressed-tensors" (pack-quantized, `quant`
    int4 (default) / int8, group size `block_size`, default 128), "bnb-nf4" / "bnb-int8"
    (bitsandbytes, as transformers saves it) or "rounded" (`quant`: a registered quantizer storing
    floats; its values replace the decoder linears). `max_shard_size`: "500MB", "2GB",
    "1.5GiB" or bytes; larger outputs become model-0000i-of-0000N.safetensors. `out`: the folder
    (default ./<name>-<format>[-<quant>]). Returns a `formats.safetensors.SafetensorsResult`."""
    from .formats import safetensors as st_out

    fmt = st_out.check_format(format)
    st_out.parse_shard_size(max_shard_size)  # a bad size fails before the checkpoint is read
    if block_size is not None and fmt == "compressed-tensors":
        st_out.check_block_size(block_size)
    with _opened_source(source, revision, allow_pickle) as checkpoint:
        suffix = f"-{(quant or st_out.CT_DEFAULT_QUANT).lower()}" if fmt == "compressed-tensors" else ""
        folder = Path(out).expanduser() if out is not None else Path.cwd() / f"{checkpoint.name}-{fmt}{suffix}"
        return _export_folder(
            checkpoint, folder, source, manifest and not dry_run, threads,
            lambda: st_out.export(checkpoint, folder, fmt, linear_class=linear_class, quant=quant,
                                  block_size=block_size, max_shard_size=max_shard_size, source=str(source),
                                  force=force, dry_run=dry_run, progress=progress, on_start=on_start),
            lambda r: {"format": fmt, "quant": r.quant, "block_size": r.block_size, "linear_class": r.linear_class,
                       "max_shard_size": max_shard_size, "revision": revision})


def inspect(path: str | os.PathLike[str]) -> Any:
    """Header-level summary of an artifact, by what `path` is: a GGUF file → `GGUFSummary`
    (metadata, tensor table); a safetensors file or checkpoint folder → `SafetensorsSummary`
    (format, quantization_config, shards, tensor table); an ONNX export folder or .onnx file →
    `OnnxSummary` (graph IO, opsets, MatMulNBits nodes, initializer table). No tensor data is read."""
    from .inspectors import inspect_path

    return inspect_path(path)

