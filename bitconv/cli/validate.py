"""validate: an artifact against its structure and, with --reference, the checkpoint it came from."""
from __future__ import annotations

from typing import Any, Callable

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._common import cli, command, out


def _thresholds_help() -> str:
    from ..validate import DEFAULT_MIN_COS, ONNX_MIN_COS, ST_MIN_COS

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
    "With --runtime (llama.cpp for GGUF, onnxruntime for ONNX, transformers for safetensors) that runtime also "
    "loads the artifact: its tokenizer must give the reference tokenizer's ids for the prompt and its logits must "
    "meet the same threshold. "
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
@click.option("--runtime", default=None, metavar="NAME",
              help="Also judge the artifact in a real runtime: llama.cpp (GGUF; llama-cpp-python), onnxruntime "
                   "(ONNX; onnxruntime-genai when installed), transformers (safetensors). Needs --reference.")
@command("validate")
def validate_cmd(artifact: str, reference: str | None, prompt: str | None, tokens: str | None,
                 min_cos: tuple[str, ...], kernel_config: str | None, no_transformers: bool, runtime: str | None,
                 as_json: bool) -> tuple[dict[str, Any], Callable[[], None], int]:
    from ..errors import UsageError
    from ..validate import parse_min_cos, validate

    ids = None
    if tokens:
        try:
            ids = [int(x) for x in tokens.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--tokens {tokens!r}: expected comma-separated integers") from None
    report = validate(artifact, reference, prompt=prompt, tokens=ids, min_cos=parse_min_cos(min_cos),
                      kernel_config=kernel_config, use_transformers=not no_transformers, runtime=runtime)
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
    if r.embeddings is not None:
        e = r.embeddings
        out.print(f"sentence embeddings ({e.pooling} pooling, {e.sentences} sentences of {e.tokens} tokens) vs "
                  f"{e.reference}: cos per sentence {', '.join(f'{c:.6f}' for c in e.cos)} (min {e.need})")
    if r.runtime is not None:
        _render_runtime(r.runtime)
    out.print(("[bold green]" if r.passed else "[bold red]") + escape(r.verdict) + "[/]")


def _render_runtime(rc: Any) -> None:
    rt = Table(title=f"runtime {rc.runtime}" + (f": {rc.via}" if rc.via else ""), show_header=False)
    rt.add_column("what")
    rt.add_column("ok")
    rt.add_column("detail")
    yes, no = "[green]yes[/]", "[red]NO[/]"
    if rc.tokens_match is not None:
        detail = (f"the reference tokenizer's {rc.tokens} ids" if rc.tokens_match else
                  f"runtime {rc.runtime_ids} vs reference {rc.reference_ids}")
        rt.add_row("prompt tokens", yes if rc.tokens_match else no, escape(detail))
    if rc.cos is not None:
        rt.add_row("logits", yes if rc.cos >= rc.min_cos else no,
                   escape(f"cos {rc.cos:.6f} (min {rc.min_cos}), top-1 {rc.top1:.0%}, KL {rc.kl:.3e} over "
                          f"{rc.positions} position(s) vs {rc.reference}"))
    if rc.cos is None:  # it did not get as far as the logits: say why
        rt.add_row("run", yes if rc.ok else no, escape(rc.message))
    out.print(rt)
