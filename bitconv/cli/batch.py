"""batch: the conversions listed in a JOBS.toml file, one after another."""
from __future__ import annotations

from typing import Any, Callable

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._common import _fmt_bytes, cli, command, err, out


@cli.command("batch")
@click.argument("jobs_file", metavar="JOBS.toml")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed job (the rest are reported as not run).")
@click.option("--force", is_flag=True, help="Redo jobs whose output is unchanged, and overwrite outputs bitconv did not write.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Run each job as a task of the Ray cluster at ADDRESS (auto, HOST:PORT, ray://HOST:10001); "
                   "sources and outputs must be on storage every node mounts. Needs: pip install 'bitconv[ray]'.")
@click.option("--ray-retries", type=click.IntRange(0), default=None, metavar="N",
              help="With Ray: attempts after a worker or node is lost (default: [run] retries, else 2).")
@command("batch")
def batch_cmd(jobs_file: str, fail_fast: bool, force: bool, ray_address: str | None, ray_retries: int | None,
              as_json: bool) -> tuple[dict[str, Any], Callable[[], None], int]:
    """Run the conversions listed in JOBS.toml one after another, or as tasks of a Ray cluster
    (--ray, or [run] executor = "ray") ([[job]] tables: source, format, quant or target, output,
    validate, and any hf2gguf/hf2onnx option). Jobs whose output is unchanged (same inputs, options
    and bitconv version) are skipped. Exit 3 if any job failed."""
    from ..batch import run_batch

    def on_job(job: Any, res: Any) -> None:
        if not as_json:
            where = f" [{res.node}" + (f", {res.retries} retries" if res.retries else "") + "]" if res.node else ""
            err.print(f"{res.status:>8}  {job.name}{escape(where)}: {escape(str(job.output))}"
                      + (f" — {escape(res.error['message'])}" if res.error else ""), highlight=False, soft_wrap=True)

    report = run_batch(jobs_file, fail_fast=fail_fast, force=force, on_job=on_job, address=ray_address,
                       retries=ray_retries)

    def render() -> None:
        on_ray = report.executor == "ray"
        t = Table(title=f"batch {report.file}" + (f" on Ray ({report.cluster['address']})" if on_ray else ""))
        for col in ("job", "status", "quant", "output", "size", "sha256", "s", "validation") + (("node",) if on_ray else ()):
            t.add_column(col, justify="right" if col in ("size", "s") else "left")
        for j in report.jobs:
            verdict = "-" if j.validation is None else j.validation["verdict"]
            row = [j.name, j.status, j.quant or "-", j.output, _fmt_bytes(j.bytes) if j.bytes else "-",
                   (j.sha256 or "-")[:12], f"{j.seconds:.1f}", escape(verdict if not j.error else j.error["message"])]
            if on_ray:
                row.append((j.node or "-") + (f" ({j.retries} retries)" if j.retries else ""))
            t.add_row(*row)
        Console(width=max(out.width, 140), highlight=False).print(t)
        d = report.to_dict()["counts"]
        out.print(f"{d['ok']} converted, {d['skipped']} unchanged, {d['failed']} failed, {d['not run']} not run"
                  + (f"; {len(report.cluster['nodes'])} Ray nodes, {report.cluster['seconds']:.1f} s" if on_ray else ""))

    return report.to_dict(), render, 0 if report.passed else 3
