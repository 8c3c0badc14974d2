"""inspect, targets, quants: the read-only commands (an artifact's summary, the presets, the quant types)."""
from __future__ import annotations

import json
from typing import Any, Callable

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import api
from ._common import _fmt_bytes, cli, command, out


@cli.command("inspect")
@click.argument("path")
@click.option("--all-metadata", is_flag=True, help="GGUF: show every metadata key (long arrays are summarized).")
@command("inspect")
def inspect_cmd(path: str, all_metadata: bool, as_json: bool) -> tuple[dict[str, Any], Callable[[], None]]:
    """Show an artifact's header-level summary, read without loading tensor data: a GGUF file's
    metadata and tensor table; a safetensors file or checkpoint folder's format, quantization_config,
    shards and tensor table; an ONNX export's graph inputs/outputs, opsets, MatMulNBits nodes and
    initializer table."""
    from ..convert.gguf_header import GGUFSummary
    from ..inspectors import OnnxSummary, SafetensorsSummary

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
    from ..targets import TARGETS

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


@cli.command("quants")
@command("quants")
def quants_cmd(as_json: bool) -> tuple[Any, Callable[[], None]]:
    """List the quant types with bits per weight and the runtimes that read them."""
    from ..quant.registry import all_quantizers

    from ..quant.mixes import reference_bits_per_weight

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
