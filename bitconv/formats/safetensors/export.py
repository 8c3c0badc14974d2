"""Hugging Face safetensors checkpoints as output (`bitconv hf2st`): the format names, the result,
the output folder's checks, and the export itself.

The layout (bitnet_packed.py; layouts.py: compressed-tensors, bnb-nf4 / bnb-int8, rounded) plans the
tensors; the weights are streamed one tensor at a time (writer.py) into temp files in a staging
folder inside the output folder (one model.safetensors, or ``model-0000i-of-0000N.safetensors``
shards plus model.safetensors.index.json with ``max_shard_size``) and renamed into place with
config.json and the tokenizer files only when everything is written.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ...convert.arch.base import require_output_format
from ...convert.checkpoint import Checkpoint
from ...errors import OutputError, UsageError
from ...quant.bnb import BNB_BLOCK
from ..atomic import check_free_space, is_temp_name, staged_folder
from .bitnet_packed import packed_config, plan_bitnet_packed
from .layouts import (BNB_FORMATS, CT_DEFAULT_BLOCK, CT_DEFAULT_QUANT, CT_QUANTS, bnb_config, check_block_size,
                      ct_config, plan_bnb, plan_compressed_tensors, plan_rounded, rounding_quantizer)
from .writer import (INDEX_FILE, MODEL_FILE, SHARD_PATTERN, OutTensor, parse_shard_size, shard_index, shard_names,
                     split_shards, write_safetensors)

FORMATS = ("bitnet-packed", "compressed-tensors", "bnb-nf4", "bnb-int8", "rounded")
STAGE_PREFIX = ".st-stage.bitconv-tmp."


@dataclass
class StTensorRecord:
    name: str
    shape: list[int]
    dtype: str
    nbytes: int
    note: str = ""


@dataclass
class SafetensorsResult:
    source: str
    architecture: str
    format: str
    linear_class: str | None
    output: str
    n_tensors: int
    n_ternary: int
    output_bytes: int
    files: list[str]
    dry_run: bool = False
    #: compressed-tensors: the weight type (int4 / int8), its group size and how many linears it holds
    quant: str | None = None
    block_size: int | None = None
    n_quantized: int = 0
    shards: int = 1
    seconds: float = 0.0
    tensors: list[StTensorRecord] = field(default_factory=list)
    #: bitconv-manifest.json in the folder (inputs' and outputs' sha256, options), or None
    manifest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_format(fmt: str) -> str:
    f = (fmt or "").lower()
    if f not in FORMATS:
        raise UsageError(f"unknown safetensors format {fmt!r}; valid: {', '.join(FORMATS)}")
    return f


def check_output_folder(folder: Path, force: bool) -> None:
    """OUT must be absent or an empty folder (anything with --force); its parent must be writable."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} exists and is not a folder")
    if folder.is_dir():
        if not force and any(not is_temp_name(p.name) for p in folder.iterdir()):  # a dead run's stage: removed
            raise OutputError(f"output folder {folder} is not empty; pass --force to write into it")
        if not os.access(folder, os.W_OK):
            raise OutputError(f"output folder {folder} is not writable")
        return
    parent = folder.parent
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder {parent} is not writable")


@contextmanager
def _staged_folder(folder: Path) -> Iterator[tuple[Path, Callable[[list[str]], None]]]:
    """Yield (a staging folder, commit(names)): a new `folder` is the staging folder renamed in one
    step; into an existing one (--force) commit renames the named files in that order. On any
    failure the staging folder goes: no partial artifact is ever visible."""
    with staged_folder(folder, "st-stage") as (stage, commit):  # inside an existing folder: STAGE_PREFIX<pid>
        yield stage, commit


def _remove_stale(folder: Path, keep: set[str]) -> None:
    """Weights of an earlier export (--force) that loaders would otherwise pick up: a lone
    model.safetensors beside an index, an index beside a lone file, shards of another count."""
    for p in folder.iterdir():
        if p.name not in keep and (p.name in (MODEL_FILE, INDEX_FILE) or SHARD_PATTERN.match(p.name)):
            p.unlink(missing_ok=True)


def export(checkpoint: Checkpoint, folder: Path, fmt: str, *, linear_class: str = "bitlinear",
           quant: str | None = None, block_size: int | None = None, max_shard_size: str | int | None = None,
           source: str = "", force: bool = False, dry_run: bool = False,
           progress: Callable[[str, int], None] | None = None,
           on_start: Callable[[list[OutTensor]], None] | None = None) -> SafetensorsResult:
    """Plan (no data read), then stream every tensor into staged files renamed into `folder`."""
    fmt = check_format(fmt)
    shard_bytes = parse_shard_size(max_shard_size)
    require_output_format(checkpoint.architecture, "safetensors")
    if fmt == "bitnet-packed":
        if quant not in (None, "ternary") or block_size is not None:
            raise UsageError("--quant and --block-size apply to --format compressed-tensors; bitnet-packed is "
                             "ternary with one scale per tensor")
        tensors = plan_bitnet_packed(checkpoint, linear_class)
        cfg = packed_config(checkpoint.config, linear_class)
    elif fmt == "rounded":
        if block_size is not None:
            raise UsageError("--block-size does not apply to --format rounded")
        tensors = plan_rounded(checkpoint, quant or "")
        quant = rounding_quantizer(quant).name
        cfg = {k: v for k, v in checkpoint.config.items() if k != "quantization_config"}  # plain weights now
    elif fmt in BNB_FORMATS:
        kind = BNB_FORMATS[fmt]
        if quant not in (None, kind):
            raise UsageError(f"--quant applies to --format compressed-tensors; {fmt} is {kind}")
        if block_size not in (None, BNB_BLOCK) or (block_size is not None and kind == "int8"):
            raise UsageError(f"--block-size {block_size}: bnb-nf4 uses bitsandbytes' block of {BNB_BLOCK} (as "
                             "transformers quantizes), bnb-int8 one absmax per row; leave --block-size out")
        quant, block_size = kind, (BNB_BLOCK if kind == "nf4" else None)
        tensors = plan_bnb(checkpoint, fmt)
        cfg = bnb_config(checkpoint, fmt)
    else:
        quant = (quant or CT_DEFAULT_QUANT).lower()
        if quant not in CT_QUANTS:
            raise UsageError(f"--quant {quant!r} is not a compressed-tensors weight type; valid: {', '.join(CT_QUANTS)}")
        block_size = check_block_size(CT_DEFAULT_BLOCK if block_size is None else block_size)
        tensors = plan_compressed_tensors(checkpoint, quant, block_size)
        cfg = ct_config(checkpoint.config, quant, block_size)
    shards = split_shards(tensors, shard_bytes)
    names = shard_names(len(shards))
    tok_files = checkpoint.companion_files()
    data_bytes = sum(t.nbytes for t in tensors)
    files = names + ([INDEX_FILE] if len(shards) > 1 else []) + ["config.json"] + [n for _, n in tok_files]
    result = SafetensorsResult(
        source=source, architecture=checkpoint.architecture, format=fmt,
        linear_class=linear_class if fmt == "bitnet-packed" else None, output=str(folder), n_tensors=len(tensors),
        n_ternary=sum(t.dtype == "U8" and t.note != "copied" for t in tensors) if fmt == "bitnet-packed" else 0,
        output_bytes=data_bytes, files=files, dry_run=dry_run, quant=quant, block_size=block_size,
        n_quantized=sum(t.name.endswith(".weight_packed") or t.note.startswith(("nf4,", "int8,", "rounded by"))
                        for t in tensors), shards=len(shards),
        tensors=[StTensorRecord(t.name, list(t.shape), t.dtype, t.nbytes, t.note) for t in tensors])
    if dry_run:
        return result
    check_output_folder(folder, force)
    check_free_space(folder if folder.is_dir() else folder.parent, data_bytes)
    if on_start:
        on_start(tensors)
    start = time.perf_counter()
    with _staged_folder(folder) as (stage, commit):
        total = 0
        for name, shard in zip(names, shards):
            total += write_safetensors(stage / name, shard, progress=progress)
        if len(shards) > 1:
            (stage / INDEX_FILE).write_text(json.dumps(shard_index(shards), indent=2, sort_keys=True) + "\n",
                                            encoding="utf-8")
        (stage / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for p, n in tok_files:
            (stage / n).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, stage / n)
        # tokenizer, weights, config, and the index last: it is what sends a loader to the shards
        commit([n for _, n in tok_files] + names + ["config.json"] + ([INDEX_FILE] if len(shards) > 1 else []))
        _remove_stale(folder, set(files))
    result.output_bytes = total
    result.seconds = time.perf_counter() - start
    return result


def export_bitnet_packed(checkpoint: Checkpoint, folder: Path, *, linear_class: str = "bitlinear",
                         source: str = "", force: bool = False, dry_run: bool = False,
                         progress: Callable[[str, int], None] | None = None,
                         on_start: Callable[[list[OutTensor]], None] | None = None) -> SafetensorsResult:
    """The bitnet-packed export as one model.safetensors (kept for callers of the earlier API)."""
    return export(checkpoint, folder, "bitnet-packed", linear_class=linear_class, source=source, force=force,
                  dry_run=dry_run, progress=progress, on_start=on_start)
