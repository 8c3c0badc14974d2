"""hf2gguf, hf2onnx, hf2st: the conversion commands, their progress bar and their renderers."""
from __future__ import annotations

from typing import Any, Callable

import click
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)
from rich.table import Table

from .. import api
from ..errors import UsageError
from ._common import _fmt_bytes, cli, command, err, out


def _progress_bar(disable: bool) -> Progress:
    """The conversion progress bar on stderr (only on a terminal)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=err, transient=True, disable=disable or not err.is_terminal)


class _ConversionProgress:
    """The bar and the two callbacks every converter takes: `on_start(plan)` once the plan is known,
    `on_tensor(tensor or name, nbytes)` as each tensor is written."""

    def __init__(self, label: str, disable: bool, total: Callable[[Any], int]) -> None:
        self.bar = _progress_bar(disable)
        self.label, self.total = label, total
        self.task: Any = None

    def on_start(self, plan: Any) -> None:
        self.task = self.bar.add_task(self.label, total=self.total(plan))

    def on_tensor(self, tensor: Any, nbytes: int) -> None:
        if self.task is not None:
            self.bar.update(self.task, advance=nbytes, description=getattr(tensor, "name", tensor))


def _result(result: Any, dry_run: bool, render: Callable[[Any], None]) -> tuple[dict[str, Any], Callable[[], None]]:
    """The JSON result (the per-tensor table only for a dry run) and the human rendering."""
    data = result.to_dict()
    if not dry_run:
        data.pop("tensors")
    return data, lambda: render(result)


THREADS_HELP = ("Worker threads (0: one per core, at most 8). The output bytes are the same for any count; "
                "memory grows by about 256 MiB per thread.")


@cli.command("hf2gguf")
@click.argument("source")
@click.option("--quant", "-q", default=None,
              help="Quant type (see `bitconv quants`). Default: the target's, else f16.")
@click.option("--target", default=None, help="Hardware preset (see `bitconv targets`).")
@click.option("--lut", is_flag=True, help="With --target bitnet-x86: the LUT kernel layout (tl2).")
@click.option("--smallest", is_flag=True, help="With --target llama.cpp: tq1_0 instead of tq2_0.")
@click.option("--kernel-config", type=click.Path(dir_okay=False), default=None,
              help="tl1/tl2: pack for this bitnet.cpp build's include/kernel_config.ini (its tiling per shape). "
                   "Without it bitconv picks tilings and writes <stem>.kernel_config.ini and <stem>.codegen.txt.")
@click.option("-o", "--output", "output", default=None,
              help="Output file, or a folder for <name>-<quant>.gguf. Default: ./<name>-<quant>.gguf")
@click.option("--dry-run", is_flag=True, help="Show the plan (tensors, types, sizes, memory); write nothing.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--threads", type=click.IntRange(0, 256), default=0, help=THREADS_HELP)
@click.option("--revision", default=None, help="Hub revision when SOURCE is a repo id.")
@click.option("--pre", default=None, help="Override the tokenizer pre-tokenizer name written to the GGUF.")
@click.option("--allow-nonfinite", is_flag=True,
              help="Convert weights that contain NaN/Inf, or that float16 cannot hold (they become inf).")
@click.option("--force-ternarize", is_flag=True,
              help="Allow a ternary type for a model not trained ternary (destroys accuracy; for runtime tests).")
@click.option("--allow-pickle", is_flag=True, help="Read .bin pickles (torch.load weights_only=True).")
@click.option("--split-max-size", default=None, metavar="SIZE",
              help="Write a split set <stem>-00001-of-0000N.gguf … (as llama.cpp's converter and gguf-split do; "
                   "llama.cpp loads it from the first file) of at most SIZE tensor bytes per file: 45G, 500M "
                   "(K M G: powers of 1000, as llama.cpp reads them; KiB MiB GiB: powers of 1024).")
@click.option("--split-max-tensors", type=click.IntRange(0), default=0, metavar="N",
              help="Write a split set of at most N tensors per file.")
@click.option("--no-tensor-first-split", is_flag=True,
              help="With a split set: the first file holds only the metadata (as llama.cpp's option).")
@click.option("--keep-grid", is_flag=True,
              help="GPTQ / AWQ sources: write each linear whose integer grid a q4_0 / q4_1 / q8_0 block holds "
                   "exactly (4-bit symmetric → q4_0, 4-bit → q4_1, 8-bit symmetric → q8_0; groups of whole "
                   "32-column blocks, no act-order) from the source's codes, scales and mins at f16, instead of "
                   "dequantizing and rounding again; prints which tensors were carried over and which re-rounded.")
@click.option("--no-manifest", is_flag=True, help="Do not write <output>.manifest.json.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Write each file of the (split) output as a task of the Ray cluster at ADDRESS (auto, HOST:PORT, "
                   "ray://HOST:10001), --threads CPUs each; SOURCE and the output must be on storage every node "
                   "mounts. Needs: pip install 'bitconv[ray]'.")
@click.option("--ray-retries", type=click.IntRange(0), default=2, show_default=True, metavar="N",
              help="With --ray: attempts after a worker or node is lost.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@command("hf2gguf")
def hf2gguf(source: str, quant: str | None, target: str | None, lut: bool, smallest: bool,
            kernel_config: str | None, output: str | None, dry_run: bool, force: bool, threads: int,
            revision: str | None, pre: str | None, allow_nonfinite: bool, force_ternarize: bool,
            allow_pickle: bool, split_max_size: str | None, split_max_tensors: int, no_tensor_first_split: bool,
            keep_grid: bool, no_manifest: bool, ray_address: str | None, ray_retries: int, quiet: bool,
            as_json: bool) -> tuple[dict[str, Any], Callable[[], None]]:
    """Convert the checkpoint SOURCE (a directory, or a hub repo id; or a GGUF file, requantized as
    `bitconv quantize` does) to GGUF."""
    if keep_grid and ray_address is not None:
        raise UsageError("--keep-grid does not run on a Ray cluster (--ray) yet: convert on one machine")
    if ray_address is not None and not dry_run:
        from ..ray_split import convert_split

        result = convert_split(source, quant, output, address=ray_address, retries=ray_retries, threads=threads,
                               force=force, manifest=not no_manifest, allow_nonfinite=allow_nonfinite,
                               target=target, lut=lut, smallest=smallest, revision=revision, pre=pre,
                               allow_pickle=allow_pickle, force_ternarize=force_ternarize, kernel_config=kernel_config,
                               split_max_size=split_max_size, split_max_tensors=split_max_tensors,
                               no_tensor_first_split=no_tensor_first_split)
        return _result(result, False, _render_conversion)
    progress = _ConversionProgress("converting", quiet or dry_run, lambda plan: plan.data_nbytes)
    with progress.bar:
        result = api.convert(source, "gguf", quant, output, target=target, lut=lut, smallest=smallest,
                             force=force, dry_run=dry_run, threads=threads,
                             allow_nonfinite=allow_nonfinite, allow_pickle=allow_pickle, revision=revision,
                             pre=pre, manifest=not no_manifest, progress=progress.on_tensor,
                             on_start=progress.on_start, force_ternarize=force_ternarize, kernel_config=kernel_config,
                             split_max_size=split_max_size, split_max_tensors=split_max_tensors,
                             no_tensor_first_split=no_tensor_first_split, keep_grid=keep_grid)
    return _result(result, dry_run, _render_conversion)


@cli.command("hf2onnx")
@click.argument("source")
@click.option("--quant", "-q", default=None,
              help="f32 | f16 | int8 | int4 | int2 (ternary models). Default: the target's, else f32.")
@click.option("--target", default=None, help="Hardware preset (see `bitconv targets`), e.g. onnx-cpu.")
@click.option("--block-size", type=int, default=None,
              help="MatMulNBits block size (power of two ≥ 16). Default: 32 for int8/int4, 128 for int2.")
@click.option("-o", "--output", "output", default=None,
              help="Output folder for model.onnx, model.onnx.data, genai_config.json and the tokenizer files. "
                   "Default: ./<name>-<quant>-onnx")
@click.option("--dry-run", is_flag=True, help="Show the plan (tensors, storage, sizes); write nothing.")
@click.option("--force", is_flag=True, help="Overwrite existing files in the output folder.")
@click.option("--revision", default=None, help="Hub revision when SOURCE is a repo id.")
@click.option("--force-ternarize", is_flag=True,
              help="Allow int2 for a model not trained ternary (destroys accuracy; for runtime tests).")
@click.option("--allow-pickle", is_flag=True, help="Read .bin pickles (torch.load weights_only=True).")
@click.option("--no-manifest", is_flag=True, help="Do not write bitconv-manifest.json in the folder.")
@click.option("--threads", type=click.IntRange(0, 256), default=0, help=THREADS_HELP)
@click.option("--allow-nonfinite", is_flag=True,
              help="Export weights that contain NaN/Inf, or that float16 cannot hold (they become inf).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@command("hf2onnx")
def hf2onnx(source: str, quant: str | None, target: str | None, block_size: int | None, output: str | None,
            dry_run: bool, force: bool, revision: str | None, force_ternarize: bool, allow_pickle: bool,
            no_manifest: bool, threads: int, allow_nonfinite: bool, quiet: bool, as_json: bool) -> tuple[dict[str, Any], Callable[[], None]]:
    """Export the checkpoint SOURCE (a directory, a hub repo id, or a GGUF file: its config and tokenizer are
    rebuilt from the GGUF, ternary weights keep their codes) as an ONNX Runtime decoder folder."""
    progress = _ConversionProgress("exporting", quiet or dry_run, lambda plan: plan.data_nbytes)
    with progress.bar:
        result = api.convert_onnx(source, quant, output, target=target, block_size=block_size, force=force,
                                  dry_run=dry_run, force_ternarize=force_ternarize, allow_pickle=allow_pickle,
                                  revision=revision, manifest=not no_manifest, progress=progress.on_tensor,
                                  on_start=progress.on_start, threads=threads, allow_nonfinite=allow_nonfinite)
    return _result(result, dry_run, _render_onnx)


@cli.command("hf2st")
@click.argument("source")
@click.option("--format", "fmt", default="bitnet-packed", show_default=True,
              help="Checkpoint layout to write: bitnet-packed (transformers' packed BitNet, quant_method bitnet) | "
                   "compressed-tensors (pack-quantized W4A16 / W8A16, as llm-compressor writes it) | "
                   "bnb-nf4 | bnb-int8 (bitsandbytes, as transformers saves a model loaded in 4-bit nf4 / 8-bit).")
@click.option("--quant", default=None,
              help="compressed-tensors: int4 (default) | int8 symmetric per-group weights of the decoder linears.")
@click.option("--block-size", type=int, default=None,
              help="compressed-tensors: group size, a power of two dividing every linear's input size. Default: 128")
@click.option("--max-shard-size", default=None,
              help="Split the weights into model-0000i-of-0000N.safetensors + model.safetensors.index.json when "
                   "larger than this (500MB, 2GB, 1.5GiB). Default: one file.")
@click.option("--linear-class", default="bitlinear", show_default=True,
              help="bitnet-packed: bitlinear (weight_scale = 1/s) | autobitlinear (weight_scale = s).")
@click.option("-o", "--output", "output", default=None,
              help="Output folder for the weights, config.json and the tokenizer files. "
                   "Default: ./<name>-<format>[-<quant>]")
@click.option("--dry-run", is_flag=True, help="Show the tensors that would be written; write nothing.")
@click.option("--force", is_flag=True, help="Write into a non-empty output folder (overwriting our files).")
@click.option("--revision", default=None, help="Hub revision when SOURCE is a repo id.")
@click.option("--allow-pickle", is_flag=True, help="Read .bin pickles (torch.load weights_only=True).")
@click.option("--threads", type=click.IntRange(0, 256), default=0, help=THREADS_HELP)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@command("hf2st")
def hf2st(source: str, fmt: str, quant: str | None, block_size: int | None, max_shard_size: str | None,
          linear_class: str, output: str | None, dry_run: bool, force: bool, revision: str | None,
          allow_pickle: bool, threads: int, quiet: bool, as_json: bool) -> tuple[dict[str, Any], Callable[[], None]]:
    """Write the checkpoint SOURCE (a directory, a hub repo id, or a GGUF file: its config and tokenizer are
    rebuilt from the GGUF, ternary weights keep their codes) as a Hugging Face safetensors checkpoint."""
    progress = _ConversionProgress("writing", quiet or dry_run, lambda tensors: sum(t.nbytes for t in tensors))
    with progress.bar:
        result = api.convert_safetensors(source, fmt, output, quant=quant, block_size=block_size,
                                         max_shard_size=max_shard_size, linear_class=linear_class.lower(),
                                         force=force, dry_run=dry_run, allow_pickle=allow_pickle, revision=revision,
                                         progress=progress.on_tensor, on_start=progress.on_start, threads=threads)
    return _result(result, dry_run, _render_st)


def _render_st(r: Any) -> None:
    if r.dry_run:
        table = Table(title=f"plan: {r.source} → {r.output}/")
        for col in ("tensor", "shape", "dtype", "bytes", "note"):
            table.add_column(col, justify="right" if col == "bytes" else "left")
        for t in r.tensors:
            table.add_row(t.name, "×".join(map(str, t.shape)), t.dtype, f"{t.nbytes:,}", t.note)
        out.print(table)
        out.print(f"architecture {r.architecture}; {_st_kind(r)}, {r.n_tensors} tensors, {_st_count(r)}; "
                  f"≈ {_fmt_bytes(r.output_bytes)} in {r.shards} file(s); nothing written (dry run)")
    else:
        files = ", ".join(r.files) if len(r.files) <= 8 else f"{len(r.files)} files incl. {r.shards} shards"
        out.print(f"wrote {r.output}/ ({_fmt_bytes(r.output_bytes)}: {files}) — {_st_kind(r)}, "
                  f"{r.n_tensors} tensors, {_st_count(r)} in {r.seconds:.1f} s")


def _st_kind(r: Any) -> str:
    if r.format == "compressed-tensors":
        return f"{r.format} ({r.quant}, group {r.block_size})"
    if r.format.startswith("bnb-"):
        return f"{r.format} (block {r.block_size})" if r.block_size else f"{r.format} (row-wise absmax)"
    return f"{r.format} ({r.linear_class})"


def _st_count(r: Any) -> str:
    return f"{r.n_ternary} ternary" if r.format == "bitnet-packed" else f"{r.n_quantized} quantized"


def _render_onnx(r: Any) -> None:
    types = ", ".join(f"{n}×{t}" for t, n in sorted(r.type_counts.items()))
    block = f", block {r.block_size}" if r.block_size else ""
    if r.dry_run:
        table = Table(title=f"plan: {r.source} → {r.output}/")
        for col in ("tensor", "shape", "storage", "bytes", "role", "note"):
            table.add_column(col, justify="right" if col == "bytes" else "left")
        for t in r.tensors:
            table.add_row(t["name"], "×".join(map(str, t["shape"])), t["storage"], f"{t['nbytes']:,}", t["role"],
                          t["note"])
        out.print(table)
        out.print(f"architecture {r.architecture}; {r.quant}{block}; {r.n_tensors} tensors ({types}); "
                  f"{r.n_params:,} parameters")
        out.print(f"weights ≈ {_fmt_bytes(r.output_bytes)}; files: {', '.join(r.files)}; nothing written (dry run)")
    else:
        out.print(f"wrote {r.output}/ ({_fmt_bytes(r.output_bytes)}: {', '.join(r.files)}) — {r.quant}{block}, "
                  f"{r.n_tensors} tensors ({types}) in {r.seconds:.1f} s")
        if r.manifest:
            out.print(f"manifest: {r.manifest}")
    for note in r.notes:
        out.print(f"note: {note}")


def _render_conversion(r: api.ConversionResult) -> None:
    types = ", ".join(f"{n}×{t}" for t, n in sorted(r.type_counts.items()))
    if r.dry_run:
        table = Table(title=f"plan: {r.source} → {r.output}")
        for col in ("tensor", "shape", "type", "bytes", "from", "note"):
            table.add_column(col, justify="right" if col == "bytes" else "left")
        for t in r.tensors:
            table.add_row(t.name, "×".join(map(str, t.shape)), t.type, f"{t.bytes:,}", t.source_dtype, t.note)
        out.print(table)
        out.print(f"architecture {r.architecture}; {r.n_tensors} tensors ({types}); {r.n_params:,} parameters")
        _render_splits(r)
        out.print(f"output ≈ {_fmt_bytes(r.output_bytes)}; peak memory ≈ {_fmt_bytes(r.memory_estimate_bytes)} "
                  f"(largest tensor {_fmt_bytes(r.largest_tensor_f32_bytes)} as f32); nothing written (dry run)")
        return
    files = f"{len(r.outputs)} files, " if len(r.outputs) > 1 else ""
    out.print(f"wrote {r.output} ({files}{_fmt_bytes(r.output_bytes)}, {r.n_tensors} tensors: {types}) "
              f"in {r.seconds:.1f} s")
    _render_splits(r)
    if r.kernel_config:
        out.print(f"bitnet.cpp kernels: {r.kernel_config} (tilings), {r.codegen} (codegen command)")
    if r.manifest:
        out.print(f"manifest: {r.manifest}")
    if r.keep_grid is not None:
        _render_keep_grid(r.keep_grid)
    for note in r.notes:
        out.print(f"note: {note}")


def _render_keep_grid(k: dict[str, Any]) -> None:
    """--keep-grid: one line for the tensors carried over, one per reason for those re-rounded."""
    carried, re_rounded = k["carried"], k["re_rounded"]
    out.print(f"keep-grid ({k['quant']}): {len(carried)} carried over (source codes kept, scales at f16), "
              f"{len(re_rounded)} re-rounded", markup=False)
    if carried:
        out.print(f"  carried over: {_names(carried)}", markup=False)
    by_reason: dict[str, list[str]] = {}
    for t in re_rounded:
        by_reason.setdefault(t["reason"], []).append(t["tensor"])
    for reason, names in by_reason.items():
        out.print(f"  re-rounded, {reason}: {_names(names)}", markup=False)


def _names(names: list[str], limit: int = 8) -> str:
    """Tensor names, the first `limit` of a long list and how many more (--json lists them all)."""
    return ", ".join(names) if len(names) <= limit else ", ".join(names[:limit]) + f", … ({len(names) - limit} more)"


def _render_splits(r: api.ConversionResult) -> None:
    """A split set's files, one line each."""
    if len(r.outputs) > 1:
        for o in r.outputs:
            size = _fmt_bytes(o["bytes"]) if "bytes" in o else f"≈ {_fmt_bytes(o['data_bytes'])} of tensors"
            node = f" — node {o['node']}" + (f", {o['retries']} retries" if o.get("retries") else "") if "node" in o else ""
            out.print(f"  {o['path']}: {o['n_tensors']} tensor{'' if o['n_tensors'] == 1 else 's'}, {size}{node}")
