"""quantize: llama-quantize's command (`IN OUT TYPE [NTHREADS]` and its options) over bitconv's
streaming GGUF → GGUF path."""
from __future__ import annotations

from typing import Any, Callable

import click

from ..requantize import quantize as run_quantize
from ._common import cli, command
from .convert import _ConversionProgress, _render_conversion, _result


@cli.command("quantize")
@click.argument("input_path", metavar="INPUT")
@click.argument("output_path", metavar="OUTPUT")
@click.argument("quant_type", metavar="TYPE")
@click.argument("nthreads", type=click.IntRange(0, 256), default=0, required=False)
@click.option("--pure", is_flag=True, help="Every quantizable tensor takes TYPE: no k-quant mix.")
@click.option("--output-tensor-type", default=None, help="GGML type of output.weight (e.g. q8_0).")
@click.option("--token-embedding-type", default=None, help="GGML type of token_embd.weight (e.g. q8_0).")
@click.option("--leave-output-tensor", is_flag=True, help="Copy output.weight as it is.")
@click.option("--allow-requantize", is_flag=True,
              help="Requantize tensors that are already block-quantized (quality suffers).")
@click.option("--keep-split", is_flag=True, help="Write the output split the way the input is.")
@click.option("--split-max-size", default=None,
              help="Split the output into files of at most this size (45G, 500M; K/M/G are powers of 1000).")
@click.option("--split-max-tensors", type=click.IntRange(0), default=0, help="Split the output every N tensors.")
@click.option("--no-tensor-first-split", is_flag=True, help="With --split-*: the first file holds only metadata.")
@click.option("--override-kv", multiple=True, metavar="KEY=TYPE:VALUE",
              help="Set a metadata key (TYPE: int, float, bool, str); may be repeated.")
@click.option("--target", default=None,
              help="Refuse what this preset's runtime cannot run (see `bitconv targets`); TYPE may then be omitted "
                   "with `-`.")
@click.option("--kernel-config", type=click.Path(dir_okay=False), default=None,
              help="tl1/tl2 output: pack for this kernel_config.ini; tl1/tl2 input: its tilings, when no "
                   "<stem>.kernel_config.ini lies beside it.")
@click.option("--force-ternarize", is_flag=True, help="Allow a ternary TYPE for a model not trained ternary.")
@click.option("--allow-nonfinite", is_flag=True, help="Encode tensors that hold NaN/Inf.")
@click.option("--dry-run", is_flag=True, help="Show each tensor's type; write nothing.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--no-manifest", is_flag=True, help="Do not write <output>.manifest.json.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@command("quantize")
def quantize(input_path: str, output_path: str, quant_type: str, nthreads: int, pure: bool,
             output_tensor_type: str | None, token_embedding_type: str | None, leave_output_tensor: bool,
             allow_requantize: bool, keep_split: bool, split_max_size: str | None, split_max_tensors: int,
             no_tensor_first_split: bool, override_kv: tuple[str, ...], target: str | None,
             kernel_config: str | None, force_ternarize: bool, allow_nonfinite: bool, dry_run: bool, force: bool,
             no_manifest: bool, quiet: bool, as_json: bool) -> tuple[dict[str, Any], Callable[[], None]]:
    """Requantize the GGUF file INPUT (or split set) to TYPE in OUTPUT, as llama-quantize does, or
    repack a ternary GGUF (i2_s, tl1, tl2, tq1_0, tq2_0) into another ternary layout."""
    progress = _ConversionProgress("quantizing", quiet or dry_run, lambda plan: plan.data_nbytes)
    with progress.bar:
        result = run_quantize(input_path, output_path, None if quant_type == "-" else quant_type, nthreads,
                              pure=pure, output_tensor_type=output_tensor_type,
                              token_embedding_type=token_embedding_type, leave_output_tensor=leave_output_tensor,
                              allow_requantize=allow_requantize, keep_split=keep_split, override_kv=override_kv,
                              split_max_size=split_max_size, split_max_tensors=split_max_tensors,
                              no_tensor_first_split=no_tensor_first_split,
                              target=target, force_ternarize=force_ternarize, kernel_config=kernel_config,
                              force=force, dry_run=dry_run, manifest=not no_manifest,
                              allow_nonfinite=allow_nonfinite, progress=progress.on_tensor,
                              on_start=progress.on_start)
    return _result(result, dry_run, _render_conversion)
