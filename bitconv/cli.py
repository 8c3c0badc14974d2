"""`bitconv` command line: click commands over bitconv.api, rich output, --json, exit codes.

stdout holds the result (human text, or exactly one JSON object with --json, on failure too);
progress and logs go to stderr. Exit codes: 0 ok · 1 internal error · 2 bad usage or input ·
3 validation failed · 130 interrupted.
"""
from __future__ import annotations

import functools
import json
import sys
import traceback
from typing import Any, Callable

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)
from rich.table import Table

from . import __version__, api
from .errors import BitconvError, end_cli_run, end_cli_startup
from .formats.atomic import interrupted_message

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    return f"{n} B"


def _emit_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, default=str))


def command(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Shared options and the one error policy: a BitconvError is one line and its exit code."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
        @click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
        @functools.wraps(fn)
        def wrapper(as_json: bool, debug: bool, **kwargs: Any) -> None:
            exit_code = 0
            try:
                result, render, *rest = fn(as_json=as_json, **kwargs)
                exit_code = rest[0] if rest else 0
            except BitconvError as e:
                _fail(name, as_json, debug, type(e).__name__, str(e), e.exit_code)
            except KeyboardInterrupt:  # Ctrl-C outside a writer: nothing written, or what was complete
                _fail(name, as_json, debug, "Interrupted", interrupted_message(), 130)
            except Exception as e:  # an unexpected failure is a bug: say so, briefly
                msg = f"internal error: {type(e).__name__}: {e}" + ("" if debug else " (run with --debug for details)")
                _fail(name, as_json, debug, "InternalError", msg, 1)
            try:
                if as_json:
                    _emit_json({"ok": exit_code == 0, "command": name, "result": result})
                else:
                    render()
            except KeyboardInterrupt:  # while printing the result: the artifact is complete, say so
                _fail(name, as_json, debug, "Interrupted", interrupted_message(), 130)
            if exit_code:
                sys.exit(exit_code)

        return wrapper

    return deco


def _fail(name: str, as_json: bool, debug: bool, kind: str, message: str, code: int) -> None:
    if debug:
        traceback.print_exc(file=sys.stderr)
    message = " ".join(message.split("\n"))
    if as_json:
        _emit_json({"ok": False, "command": name, "error": {"type": kind, "message": message, "exit_code": code}})
    else:
        # escaped: a path or tensor name like "[/x]" is text, not markup; soft_wrap: one line, never re-wrapped
        err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bitconv")
def cli() -> None:
    """Convert Hugging Face checkpoints into quantized artifacts for real runtimes."""


def _progress_bar(disable: bool) -> Progress:
    """The conversion progress bar on stderr (only on a terminal)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=err, transient=True, disable=disable or not err.is_terminal)


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
@click.option("--no-manifest", is_flag=True, help="Do not write <output>.manifest.json.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@command("hf2gguf")
def hf2gguf(source: str, quant: str | None, target: str | None, lut: bool, smallest: bool,
            kernel_config: str | None, output: str | None, dry_run: bool, force: bool, threads: int,
            revision: str | None, pre: str | None, allow_nonfinite: bool, force_ternarize: bool,
            allow_pickle: bool,
            no_manifest: bool, quiet: bool, as_json: bool) -> tuple[dict[str, Any], Callable[[], None]]:
    """Convert the checkpoint SOURCE (a directory, or a hub repo id) to GGUF."""
    progress = _progress_bar(disable=quiet or dry_run)
    task: list[Any] = []

    def on_start(plan: Any) -> None:
        task.append(progress.add_task("converting", total=plan.data_nbytes))

    def on_tensor(pt: Any, nbytes: int) -> None:
        progress.update(task[0], advance=nbytes, description=pt.name)

    with progress:
        result = api.convert(source, "gguf", quant, output, target=target, lut=lut, smallest=smallest,
                             force=force, dry_run=dry_run, threads=threads,
                             allow_nonfinite=allow_nonfinite, allow_pickle=allow_pickle, revision=revision,
                             pre=pre, manifest=not no_manifest, progress=on_tensor, on_start=on_start,
                             force_ternarize=force_ternarize, kernel_config=kernel_config)
    data = result.to_dict()
    if not dry_run:
        data.pop("tensors")
    return data, lambda: _render_conversion(result)


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
    """Export the checkpoint SOURCE (a directory, or a hub repo id) as an ONNX Runtime decoder folder."""
    progress = _progress_bar(disable=quiet or dry_run)
    task: list[Any] = []

    def on_start(plan: Any) -> None:
        task.append(progress.add_task("exporting", total=plan.data_nbytes))

    def on_tensor(name: str, nbytes: int) -> None:
        if task:
            progress.update(task[0], advance=nbytes, description=name)

    with progress:
        result = api.convert_onnx(source, quant, output, target=target, block_size=block_size, force=force,
                                  dry_run=dry_run, force_ternarize=force_ternarize, allow_pickle=allow_pickle,
                                  revision=revision, manifest=not no_manifest, progress=on_tensor,
                                  on_start=on_start, threads=threads, allow_nonfinite=allow_nonfinite)
    data = result.to_dict()
    if not dry_run:
        data.pop("tensors")
    return data, lambda: _render_onnx(result)


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
    """Write the checkpoint SOURCE (a directory, or a hub repo id) as a Hugging Face safetensors checkpoint."""
    progress = _progress_bar(disable=quiet or dry_run)
    task: list[Any] = []

    def on_start(tensors: Any) -> None:
        task.append(progress.add_task("writing", total=sum(t.nbytes for t in tensors)))

    def on_tensor(name: str, nbytes: int) -> None:
        if task:
            progress.update(task[0], advance=nbytes, description=name)

    with progress:
        result = api.convert_safetensors(source, fmt, output, quant=quant, block_size=block_size,
                                         max_shard_size=max_shard_size, linear_class=linear_class.lower(),
                                         force=force, dry_run=dry_run, allow_pickle=allow_pickle, revision=revision,
                                         progress=on_tensor, on_start=on_start, threads=threads)
    data = result.to_dict()
    if not dry_run:
        data.pop("tensors")
    return data, lambda: _render_st(result)


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
        out.print(f"output ≈ {_fmt_bytes(r.output_bytes)}; peak memory ≈ {_fmt_bytes(r.memory_estimate_bytes)} "
                  f"(largest tensor {_fmt_bytes(r.largest_tensor_f32_bytes)} as f32); nothing written (dry run)")
        return
    out.print(f"wrote {r.output} ({_fmt_bytes(r.output_bytes)}, {r.n_tensors} tensors: {types}) in {r.seconds:.1f} s")
    if r.kernel_config:
        out.print(f"bitnet.cpp kernels: {r.kernel_config} (tilings), {r.codegen} (codegen command)")
    if r.manifest:
        out.print(f"manifest: {r.manifest}")


@cli.command("inspect")
@click.argument("path")
@click.option("--all-metadata", is_flag=True, help="GGUF: show every metadata key (long arrays are summarized).")
@command("inspect")
def inspect_cmd(path: str, all_metadata: bool, as_json: bool) -> tuple[dict[str, Any], Callable[[], None]]:
    """Show an artifact's header-level summary, read without loading tensor data: a GGUF file's
    metadata and tensor table; a safetensors file or checkpoint folder's format, quantization_config,
    shards and tensor table; an ONNX export's graph inputs/outputs, opsets, MatMulNBits nodes and
    initializer table."""
    from .formats.gguf_io import GGUFSummary
    from .inspectors import OnnxSummary, SafetensorsSummary

    s = api.inspect(path)
    views: dict[type, Callable[[Any, bool], tuple[dict[str, Any], Callable[[], None]]]] = {
        GGUFSummary: _inspect_gguf, SafetensorsSummary: _inspect_st, OnnxSummary: _inspect_onnx}
    return views[type(s)](s, all_metadata)


def _inspect_gguf(s: Any, all_metadata: bool) -> tuple[dict[str, Any], Callable[[], None]]:
    data = {"path": str(s.path), "version": s.version, "alignment": s.alignment, "metadata": s.metadata,
            "n_tensors": len(s.tensors), "n_params": s.n_params, "data_bytes": s.data_nbytes,
            "tensors": [{"name": t.name, "type": t.type_name, "shape": list(t.shape), "bytes": t.nbytes}
                        for t in s.tensors]}

    def render() -> None:
        meta = Table(title=f"{s.path} (GGUF v{s.version})")
        meta.add_column("key")
        meta.add_column("value", overflow="fold")
        for k, v in s.metadata.items():
            text = json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v
            if not all_metadata and len(text) > 120:
                text = text[:117] + "..."
            meta.add_row(k, text)
        out.print(meta)
        tt = Table(title=f"{len(s.tensors)} tensors, {s.n_params:,} parameters, {_fmt_bytes(s.data_nbytes)}")
        for col in ("name", "type", "shape", "bytes"):
            tt.add_column(col, justify="right" if col == "bytes" else "left")
        for t in s.tensors:
            tt.add_row(t.name, t.type_name, "×".join(map(str, t.shape)), f"{t.nbytes:,}")
        out.print(tt)

    return data, render


def _wide() -> Console:
    """stdout at least 120 columns wide: at 80 the tensor names and shapes are cut."""
    return Console(width=max(out.width, 120), highlight=False)


def _tensor_table(title: str, rows: list[dict[str, Any]], extra: str | None = None) -> Table:
    """name / dtype / shape / bytes (+ one more column: shard file or data location)."""
    t = Table(title=title)
    for col in ("name", "dtype", "shape", "bytes") + ((extra,) if extra else ()):
        t.add_column(col, justify="right" if col == "bytes" else "left", no_wrap=col == "name")
    for r in rows:
        t.add_row(escape(r["name"]), r["dtype"], "×".join(map(str, r["shape"])), f"{r['bytes']:,}",
                  *((escape(str(r[extra])),) if extra else ()))
    return t


def _inspect_st(s: Any, _all_metadata: bool) -> tuple[dict[str, Any], Callable[[], None]]:
    def render() -> None:
        out.print(f"{escape(s.path)}: safetensors, format [bold]{s.format}[/]"
                  + (f", {s.architecture}" if s.architecture else ""))
        out.print(f"quantization: {escape(s.quantization)}")
        shards = ", ".join(f"{sh['file']} ({sh['n_tensors']} tensors, {_fmt_bytes(sh['bytes'])})" for sh in s.shards)
        out.print(f"files: {escape(shards)}" + (f" via {s.index}" if s.index else ""))
        for note in s.notes:
            out.print(f"note: {escape(note)}")
        title = (f"{s.n_tensors} tensors, {s.n_elements:,} stored elements, {_fmt_bytes(s.data_bytes)}"
                 + (f", {s.n_quantized} quantized linears" if s.n_quantized else ""))
        _wide().print(_tensor_table(title, s.tensors, "file" if len(s.shards) > 1 else None))

    return s.to_dict(), render


def _inspect_onnx(s: Any, _all_metadata: bool) -> tuple[dict[str, Any], Callable[[], None]]:
    def render() -> None:
        opsets = ", ".join(f"{o['domain']} {o['version']}" for o in s.opset)
        block = f", block {s.block_size}" if s.block_size else ""
        out.print(f"{escape(s.path)}: ONNX ({s.model_file}, {s.producer}, IR {s.ir_version}, opset {opsets}); "
                  f"{s.quant}{block}; {s.n_nodes} nodes")
        if s.genai_config:
            out.print("genai_config.json: " + ", ".join(f"{k} {v}" for k, v in s.genai_config.items()))
        io = Table(title="graph inputs / outputs")
        for col in ("", "name", "dtype", "shape"):
            io.add_column(col)
        for side, rows in (("in", s.inputs), ("out", s.outputs)):
            for r in rows:
                io.add_row(side, r["name"], r["dtype"], "×".join(map(str, r["shape"])))
        _wide().print(io)
        if s.matmulnbits:
            nb = Table(title=f"{len(s.matmulnbits)} MatMulNBits nodes")
            for col in ("weight", "K", "N", "bits", "block_size", "accuracy_level"):
                nb.add_column(col, justify="left" if col == "weight" else "right")
            for r in s.matmulnbits:
                nb.add_row(r["weight"], *(str(r.get(k, "-")) for k in ("K", "N", "bits", "block_size",
                                                                         "accuracy_level")))
            _wide().print(nb)
        _wide().print(_tensor_table(
            f"{len(s.initializers)} initializers, {_fmt_bytes(s.initializer_bytes)}", s.initializers, "location"))
        out.print("files: " + ", ".join(f"{f['name']} ({_fmt_bytes(f['bytes'])})" for f in s.files))

    return s.to_dict(), render


@cli.command("targets")
@command("targets")
def targets_cmd(as_json: bool) -> tuple[Any, Callable[[], None]]:
    """List the hardware-target presets: format, default quant types and runtime."""
    from .targets import TARGETS

    rows = [{"name": t.name, "format": t.format, "runtime": t.runtime, "ternary_quant": t.ternary_quant,
             "other_quant": t.other_quant, "lut_quant": t.lut_quant, "smallest_quant": t.smallest_quant,
             "description": t.description} for t in TARGETS.values()]

    def render() -> None:
        t = Table(title="targets (an explicit --quant overrides the default)")
        for col in ("target", "format", "ternary models", "other models", "runtime"):
            t.add_column(col)
        for r in rows:
            extra = [f"{r['lut_quant']} with --lut"] if r["lut_quant"] else []
            extra += [f"{r['smallest_quant']} with --smallest"] if r["smallest_quant"] else []
            tern = (r["ternary_quant"] or "—") + (f" ({', '.join(extra)})" if extra else "")
            t.add_row(r["name"], r["format"], tern, r["other_quant"] or "—", r["runtime"])
        out.print(t)

    return rows, render


def _thresholds_help() -> str:
    from .validate import DEFAULT_MIN_COS, ONNX_MIN_COS
    from .validate_st import ST_MIN_COS

    return (", ".join(f"{k}={v}" for k, v in DEFAULT_MIN_COS.items()) + "; ONNX: "
            + ", ".join(f"{k}={v}" for k, v in ONNX_MIN_COS.items()) + "; safetensors: "
            + ", ".join(f"{k}={v}" for k, v in ST_MIN_COS.items()))


@cli.command("validate", help=(
    "Check the GGUF artifact ARTIFACT: structure always; with --reference (the HF checkpoint it was made "
    "from) every tensor (ternary codes identical, others by cos), the hidden states per layer and the logits "
    "(KL, top-1, cos) against transformers in float32. ARTIFACT may also be an ONNX export (the hf2onnx folder "
    "or its model.onnx): onnx.checker, graph IO names, MatMulNBits attributes, genai_config.json; with "
    "--reference every initializer decoded and compared and the onnxruntime logits (no per-layer check). "
    "ARTIFACT may also be a safetensors checkpoint (the hf2st folder, sharded or not, or a .safetensors file): "
    "format, tensor layout and values; with --reference bitnet-packed codes identical to re-ternarizing the "
    "reference, compressed-tensors int4/int8 and float tensors by cos and relative error, per-layer hidden "
    "states and logits. "
    "Exit 3 when a check fails. Default minimum cos per quant type: " + _thresholds_help() + "."))
@click.argument("artifact")
@click.option("--reference", "-r", default=None, help="The HF checkpoint directory the artifact was converted from.")
@click.option("--prompt", default=None, help="Text for the logits comparison (default: a fixed English sentence).")
@click.option("--tokens", default=None, help="Comma-separated token ids instead of --prompt.")
@click.option("--min-cos", "min_cos", multiple=True, metavar="TYPE=VALUE",
              help="Override a threshold, e.g. --min-cos q4_0=0.97 (repeatable).")
@click.option("--kernel-config", type=click.Path(dir_okay=False), default=None,
              help="tl1/tl2: the kernel_config.ini the file was packed for (default: <stem>.kernel_config.ini).")
@click.option("--no-transformers", is_flag=True, help="Compare logits with bitconv's numpy forward of the HF "
                                                      "weights even when transformers is installed.")
@command("validate")
def validate_cmd(artifact: str, reference: str | None, prompt: str | None, tokens: str | None,
                 min_cos: tuple[str, ...], kernel_config: str | None, no_transformers: bool,
                 as_json: bool) -> tuple[dict[str, Any], Callable[[], None], int]:
    from .errors import UsageError
    from .validate import parse_min_cos, validate

    ids = None
    if tokens:
        try:
            ids = [int(x) for x in tokens.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--tokens {tokens!r}: expected comma-separated integers") from None
    report = validate(artifact, reference, prompt=prompt, tokens=ids, min_cos=parse_min_cos(min_cos),
                      kernel_config=kernel_config, use_transformers=not no_transformers)
    return report.to_dict(), lambda: _render_validation(report), 0 if report.passed else 3


def _render_validation(r: Any) -> None:
    checks = Table(title=f"{r.artifact}: {r.architecture}, {r.quant}")
    for col in ("check", "ok", "detail"):
        checks.add_column(col)
    for c in r.checks:
        checks.add_row(c.name, "[green]yes[/]" if c.ok else "[red]NO[/]", escape(c.message))
    out.print(checks)
    if r.tensors:
        t = Table(title="tensors vs the reference")
        for col in ("tensor", "type", "codes same", "max abs err", "rel err", "cos", "bytes same", "ok"):
            t.add_column(col, justify="left" if col in ("tensor", "type") else "right",
                         no_wrap=col == "tensor", min_width=22 if col == "tensor" else None)

        def f(x: Any, spec: str = ".3g") -> str:
            return "-" if x is None else (("yes" if x else "NO") if isinstance(x, bool) else format(x, spec))

        for tc in r.tensors:
            t.add_row(tc.name, tc.type, f(tc.codes_identical), f(tc.max_abs_err), f(tc.rel_err), f(tc.cos, ".6f"),
                      f(tc.bytes_identical), "[green]ok[/]" if tc.ok else f"[red]{escape(tc.message)}[/]")
        Console(width=max(out.width, 120), highlight=False).print(t)  # at 80 columns the numbers are cut
    if r.layers:
        lt = Table(title="hidden states per layer (artifact vs reference forward)")
        lt.add_column("layer", justify="right")
        lt.add_column("cos", justify="right")
        for row in r.layers:
            lt.add_row(str(row["layer"]), f"{row['cos']:.6f}")
        out.print(lt)
    if r.logits is not None:
        lg = r.logits
        out.print(f"logits ({lg.tokens} tokens) vs {lg.reference}: cos {lg.cos:.6f} (min {lg.min_cos}), "
                  f"top-1 {lg.top1:.0%}, KL {lg.kl:.3e}")
    out.print(("[bold green]" if r.passed else "[bold red]") + escape(r.verdict) + "[/]")


@cli.command("batch")
@click.argument("jobs_file", metavar="JOBS.toml")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed job (the rest are reported as not run).")
@click.option("--force", is_flag=True, help="Redo jobs whose output is unchanged, and overwrite outputs bitconv did not write.")
@command("batch")
def batch_cmd(jobs_file: str, fail_fast: bool, force: bool, as_json: bool) -> tuple[dict[str, Any], Callable[[], None], int]:
    """Run the conversions listed in JOBS.toml one after another ([[job]] tables: source, format,
    quant or target, output, validate, and any hf2gguf/hf2onnx option). Jobs whose output is
    unchanged (same inputs, options and bitconv version) are skipped. Exit 3 if any job failed."""
    from .batch import run_batch

    def on_job(job: Any, res: Any) -> None:
        if not as_json:
            err.print(f"{res.status:>8}  {job.name}: {escape(str(job.output))}"
                      + (f" — {escape(res.error['message'])}" if res.error else ""), highlight=False, soft_wrap=True)

    report = run_batch(jobs_file, fail_fast=fail_fast, force=force, on_job=on_job)

    def render() -> None:
        t = Table(title=f"batch {report.file}")
        for col in ("job", "status", "quant", "output", "size", "sha256", "s", "validation"):
            t.add_column(col, justify="right" if col in ("size", "s") else "left")
        for j in report.jobs:
            verdict = "-" if j.validation is None else j.validation["verdict"]
            t.add_row(j.name, j.status, j.quant or "-", j.output, _fmt_bytes(j.bytes) if j.bytes else "-",
                      (j.sha256 or "-")[:12], f"{j.seconds:.1f}", escape(verdict if not j.error else j.error["message"]))
        Console(width=max(out.width, 140), highlight=False).print(t)
        d = report.to_dict()["counts"]
        out.print(f"{d['ok']} converted, {d['skipped']} unchanged, {d['failed']} failed, {d['not run']} not run")

    return report.to_dict(), render, 0 if report.passed else 3


@cli.command("quants")
@command("quants")
def quants_cmd(as_json: bool) -> tuple[Any, Callable[[], None]]:
    """List the quant types with bits per weight and the runtimes that read them."""
    from .quant.registry import all_quantizers

    from .quant.mixes import reference_bits_per_weight

    rows = [{"name": q.name, "bits_per_weight": round(q.bits_per_weight, 4), "block_size": q.block_size,
             "runtimes": list(q.runtimes), "embedding_type": q.embedding_type, "description": q.description,
             "llama_quantize_rules": q.llama_ftype is not None,
             "file_bits_per_weight_qwen2.5_1.5b": (round(reference_bits_per_weight(q.llama_ftype, q.pure), 3)
                                                   if q.llama_ftype is not None else None)}
            for q in all_quantizers()]

    def render() -> None:
        t = Table(title="quant types")
        for col in ("name", "bits/weight", "block", "runtimes", "notes"):
            t.add_column(col)
        for r in rows:
            note = r["description"] + (f"; token_embd/output at {r['embedding_type']}" if r["embedding_type"] else "")
            bpw = f"{r['bits_per_weight']:g}"
            if (file_bpw := r["file_bits_per_weight_qwen2.5_1.5b"]) is not None:
                bpw += f" ({file_bpw:g}*)"
            t.add_row(r["name"], bpw, str(r["block_size"]), ", ".join(r["runtimes"]), note)
        out.print(t)
        out.print("* whole file with llama-quantize's per-tensor rules, on Qwen2.5-1.5B's shapes")

    return rows, render


def main() -> None:
    """Entry point: click usage errors become exit 2 (and JSON with --json)."""
    end_cli_startup()
    try:
        try:
            cli.main(standalone_mode=False)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except (click.Abort, KeyboardInterrupt):  # Ctrl-C while click parsed the command line
            args = sys.argv[1:]
            _fail(next((a for a in args if not a.startswith("-")), ""), "--json" in args, False, "Interrupted",
                  interrupted_message(), 130)
        except click.ClickException as e:
            if "--json" in sys.argv[1:]:
                cmd = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
                _emit_json({"ok": False, "command": cmd,
                            "error": {"type": "UsageError", "message": e.format_message(), "exit_code": 2}})
            else:
                e.show()
            sys.exit(2)
        sys.exit(0)
    except SystemExit as e:  # done: a Ctrl-C while the interpreter shuts down has nothing left to stop
        end_cli_run(e.code if isinstance(e.code, int) else 1)
        raise
