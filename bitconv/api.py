"""The Python API. The CLI is a thin layer over these functions; nothing here prints or exits."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .convert.arch import mapping_for
from .convert.checkpoint import Checkpoint
from .convert.plan import PlannedTensor, TensorPlan, plan_checkpoint
from .convert.tokenizer import export_vocab
from .errors import UsageError
from .formats import gguf_split, gguf_writer
from .formats.atomic import check_free_space
from .formats.manifest import BackgroundHasher, write_manifest
from .gguf_output import GGUFOutput, default_name, input_records
from .results import ConversionResult
from .quant.tl import KernelConfig
from .targets import get_target
from .threads import thread_count, using_threads

DEFAULT_GGUF_QUANT = "f16"


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
    elif target:
        get_target(target).check(mapping_for(checkpoint))
    return plan_checkpoint(checkpoint, quant, force_ternarize=force_ternarize, kernel_config=kernel_config)


def convert(source: str | os.PathLike[str], to: str | None = None, quant: str | None = None,
            out: str | os.PathLike[str] | None = None, *, target: str | None = None, lut: bool = False,
            smallest: bool = False, force: bool = False, dry_run: bool = False, force_ternarize: bool = False,
            threads: int = 0, allow_nonfinite: bool = False, allow_pickle: bool = False,
            revision: str | None = None, pre: str | None = None, manifest: bool = True,
            kernel_config: str | os.PathLike[str] | KernelConfig | None = None,
            format: str | None = None, block_size: int | None = None,
            max_shard_size: str | int | None = None, linear_class: str = "bitlinear",
            split_max_size: str | int | None = None, split_max_tensors: int = 0, no_tensor_first_split: bool = False,
            keep_grid: bool = False, progress: Callable[[PlannedTensor, int], None] | None = None,
            on_start: Callable[[TensorPlan], None] | None = None) -> ConversionResult:
    """Convert a HF checkpoint (local directory or hub repo id) into an artifact. `target` names a
    preset (`bitconv targets`) that implies the format and, unless `quant` is given, the quant type.
    to="safetensors": `format` is the checkpoint layout (bitnet-packed, compressed-tensors), `quant`
    its weight type (compressed-tensors: int4 / int8), `block_size` the group size,
    `max_shard_size` ("2GB", "1.5GiB", bytes) splits the weights into shards.
    GGUF: `split_max_size` ("45G", bytes) / `split_max_tensors` write a split set as llama.cpp's
    converter does (`<stem>-00001-of-0000N.gguf` …; formats/gguf_split.py), one manifest for it.
    `keep_grid` (GGUF from a GPTQ / AWQ checkpoint): linears whose integer grid a q4_0 / q4_1 / q8_0
    block holds exactly keep their codes (scales and mins at f16) instead of being dequantized and
    rounded again; the result's `keep_grid` names the tensors carried over and those re-rounded."""
    fmt = to or (get_target(target).format if target else "gguf")
    if keep_grid and fmt != "gguf":
        raise UsageError("keep_grid applies to GGUF output")
    if target and get_target(target).format != fmt:
        raise UsageError(f"target {target} writes {get_target(target).format}, not {fmt}")
    if fmt != "gguf" and (split_max_size or split_max_tensors or no_tensor_first_split):
        raise UsageError("split_max_size, split_max_tensors and no_tensor_first_split apply to GGUF output")
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
    job = gguf_output(source, quant, out, target=target, lut=lut, smallest=smallest, revision=revision,
                      allow_pickle=allow_pickle, force_ternarize=force_ternarize, kernel_config=kernel_config,
                      pre=pre, split_max_size=split_max_size, split_max_tensors=split_max_tensors,
                      no_tensor_first_split=no_tensor_first_split, hash_inputs=manifest and not dry_run,
                      keep_grid=keep_grid)
    try:
        result = job.result(dry_run=dry_run, threads=threads)
    except BaseException:
        job.hasher(False)  # stops the inputs' hashing the planning started
        raise
    if dry_run:
        return result
    return job.write(result, force=force, manifest=manifest, threads=threads, allow_nonfinite=allow_nonfinite,
                     progress=progress, on_start=on_start)


def gguf_output(source: str | os.PathLike[str], quant: str | None = None, out: str | os.PathLike[str] | None = None,
                *, target: str | None = None, lut: bool = False, smallest: bool = False, revision: str | None = None,
                allow_pickle: bool = False, force_ternarize: bool = False,
                kernel_config: str | os.PathLike[str] | KernelConfig | None = None, pre: str | None = None,
                split_max_size: str | int | None = None, split_max_tensors: int = 0,
                no_tensor_first_split: bool = False, hash_inputs: bool = False, keep_grid: bool = False) -> GGUFOutput:
    """The planned GGUF output of `convert(source, "gguf", ...)` — its tensors, files, metadata and
    manifest options — read from headers only; `.write()` writes it, and any one file of a split
    set can be written on its own (`gguf_split.write_split`), as a cluster task does on its node.
    `hash_inputs`: start hashing the inputs for the manifest now, while the vocabulary is built.
    `keep_grid`: see `convert`."""
    from .convert.gguf_source import is_gguf_source

    if is_gguf_source(source):  # a GGUF as the source: requantized / repacked, as `bitconv quantize` does
        if keep_grid:
            raise UsageError("--keep-grid keeps a quantized HF checkpoint's integer grid (GPTQ, AWQ, …); "
                             f"{source} is a GGUF file: convert it without --keep-grid")
        from .requantize import quantize_output

        return quantize_output(source, out, (quant or (None if target else DEFAULT_GGUF_QUANT)), target=target,
                               force_ternarize=force_ternarize, kernel_config=kernel_config,
                               split_max_size=split_max_size, split_max_tensors=split_max_tensors,
                               no_tensor_first_split=no_tensor_first_split)
    checkpoint, plan = plan_gguf(source, quant.lower() if quant else None, target=target, lut=lut,
                                 smallest=smallest, revision=revision, allow_pickle=allow_pickle,
                                 force_ternarize=force_ternarize, kernel_config=kernel_config)
    quant = plan.quant.name
    keep = None
    if keep_grid:
        from .formats.gguf_keep_grid import KeepGrid

        keep = KeepGrid.for_plan(checkpoint, plan, allow_pickle)
    splits = gguf_split.plan_for(plan, max_size=split_max_size, max_tensors=split_max_tensors,
                                 no_tensor_first_split=no_tensor_first_split)
    hasher = BackgroundHasher(checkpoint.input_files(), checkpoint.root) if hash_inputs else None
    try:
        vocab = export_vocab(checkpoint.root, plan.mapping.vocab_size, prefer=plan.mapping.tokenizer_kinds, pre=pre)
    except BaseException:
        if hasher:
            hasher.cancel()
        raise
    options: dict[str, Any] = {"target": target, "pre": vocab.pre, "force_ternarize": force_ternarize,
                               "revision": revision}
    if splits.count > 1:
        options.update(split_max_size=split_max_size, split_max_tensors=split_max_tensors,
                       no_tensor_first_split=no_tensor_first_split)
    if keep is not None:
        options["keep_grid"] = True
    return GGUFOutput(str(source), checkpoint.name, checkpoint.architecture, plan,
                      gguf_writer.hf_metadata(plan, checkpoint, vocab), plan.mapping.arch_name,
                      plan.quant.llama_ftype is not None, default_name(checkpoint.name, quant, out), splits,
                      checkpoint.input_files(), checkpoint.root, options, started_hasher=hasher, keep_grid=keep)


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
        result.manifest = str(write_manifest(folder, inputs=input_records(hasher, folder), outputs=outputs,
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

