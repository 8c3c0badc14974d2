"""Split GGUF output, laid out as llama.cpp writes it (convert_hf_to_gguf.py --split-max-size /
--split-max-tensors through gguf-py, gguf-split, llama-quantize --keep-split):

- files `<stem>-00001-of-00003.gguf` … beside the output path (`<stem>` is the output name without
  its suffix); a plan that comes out as one file is written unsplit, under the output name, with
  no split keys (gguf-py: "Model fails split requirements, not splitting");
- the first file holds every metadata key, then `split.no` (u16), `split.count` (u16) and
  `split.tensors.count` (i32, the whole set's tensors); the others hold only those three keys;
- every file is a complete GGUF: its own header, tensor table (offsets from its own data section)
  and data, aligned the same way; a file of no tensors (--no-tensor-first-split) ends padded.

Boundaries follow gguf-py's rule, so the same options give the same files as llama.cpp's
converter: tensors go in plan order into the current file; a new file starts when the current
one holds at least one tensor and already holds `max_tensors` tensors, or its tensors' bytes
(unpadded) plus the next tensor's would exceed `max_size`. Sizes read as the converter reads them:
K, M, G are powers of 1000.

Any one file can be written on its own (`write_split`, given the plan, its split plan and the
index) with the same bytes as in a whole-set run: only the first file carries the model's metadata
and no file depends on another's bytes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Sequence

import gguf
from gguf.gguf_writer import GGUFValue

from ..convert.plan import TensorPlan
from ..errors import UsageError
from .atomic import atomic_output, atomic_outputs
from .gguf_writer import MetadataFn, write_gguf

SPLIT_NAME_FORMAT = "{prefix}-{no:05d}-of-{count:05d}.gguf"
KEY_NO, KEY_COUNT, KEY_TENSORS = (gguf.Keys.Split.LLM_KV_SPLIT_NO, gguf.Keys.Split.LLM_KV_SPLIT_COUNT,
                                  gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT)
#: split.no and split.count are uint16
MAX_SPLITS = 0xFFFF
_UNITS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)


def parse_split_size(value: str | int | None) -> int:
    """`--split-max-size` in bytes, 0 for no limit. As llama.cpp's converter reads it: a number of
    bytes, or one followed by K, M or G (powers of 1000: 45G is 45·10⁹ bytes); also T, KB … TB
    (powers of 1000), KiB … TiB (powers of 1024) and decimals (1.5G)."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = _SIZE.match(str(value))
        if m is None or (m.group(3) and m.group(3).upper() == "IB" and not m.group(2)):
            raise UsageError(f"--split-max-size {value!r}: expected a size such as 45G, 500M or 2000000000 "
                             "(K M G T: powers of 1000, as llama.cpp reads them; KiB MiB GiB TiB: powers of 1024)")
        base = 1024 if m.group(3) and m.group(3).upper() == "IB" else 1000
        n = int(Fraction(m.group(1)) * base ** _UNITS[m.group(2).upper()])
    if n < 0:
        raise UsageError(f"--split-max-size {value!r}: must not be negative (0: no limit)")
    return n


def kernel_files_for(out_path: Path) -> tuple[Path, Path]:
    """`<stem>.kernel_config.ini` and `<stem>.codegen.txt` beside a tl1/tl2 GGUF: one pair per
    output, so two outputs in one folder never overwrite each other's."""
    stem = out_path.name[:-len(".gguf")] if out_path.name.endswith(".gguf") else out_path.name
    return out_path.with_name(f"{stem}.kernel_config.ini"), out_path.with_name(f"{stem}.codegen.txt")


def split_names(path: Path, count: int) -> list[Path]:
    """The files of a set of `count` splits written for output `path` (gguf-py's names); [path]
    for one file."""
    if count == 1:
        return [path]
    return [path.with_name(SPLIT_NAME_FORMAT.format(prefix=path.stem, no=i + 1, count=count)) for i in range(count)]


@dataclass(frozen=True)
class SplitPart:
    """One file of a split set: its index, the set's size, its tensors (indices in plan order)."""

    index: int
    count: int
    tensors: range
    n_tensors: int

    def restrict(self, w: gguf.GGUFWriter) -> None:
        """Make a writer that declares every tensor of the plan (and, for the first file, holds the
        model's metadata) write this file: its tensors only, and its KV pairs with the split keys
        last (an existing split key moves there, as ggml's gguf_set_val moves it)."""
        infos = [item for shard in w.tensors for item in shard.items()]
        w.tensors = [dict(infos[self.tensors.start:self.tensors.stop])]
        kv = w.kv_data[0] if self.index == 0 else {}
        for key, value, vtype in ((KEY_NO, self.index, gguf.GGUFValueType.UINT16),
                                  (KEY_COUNT, self.count, gguf.GGUFValueType.UINT16),
                                  (KEY_TENSORS, self.n_tensors, gguf.GGUFValueType.INT32)):
            kv.pop(key, None)
            kv[key] = GGUFValue(value, vtype)
        w.kv_data = [kv]


@dataclass(frozen=True)
class SplitPlan:
    """Which tensors (ranges of plan indices, in order, covering the plan) go into which file."""

    ranges: tuple[range, ...]

    def __post_init__(self) -> None:
        if not self.ranges:
            raise UsageError("a split plan needs at least one file")
        start = 0
        for r in self.ranges:
            if r.start != start or r.stop < r.start or r.step != 1:
                raise UsageError(f"split ranges must cover the tensors in order, without gaps: {list(self.ranges)}")
            start = r.stop
        if len(self.ranges) > MAX_SPLITS:
            raise UsageError(f"{len(self.ranges)} splits: GGUF split sets hold at most {MAX_SPLITS} files; "
                             "raise --split-max-size or --split-max-tensors")
        if len(self.ranges) > 1 and self.n_tensors >= 2**31:
            raise UsageError(f"{self.n_tensors} tensors: split.tensors.count is an int32")

    @property
    def count(self) -> int:
        return len(self.ranges)

    @property
    def n_tensors(self) -> int:
        return self.ranges[-1].stop

    def part(self, index: int) -> SplitPart | None:
        """File `index`'s part, or None when the plan is one file (written unsplit, no split keys)."""
        if not 0 <= index < self.count:
            raise UsageError(f"split index {index}: the set has {self.count} file(s) (0 … {self.count - 1})")
        return None if self.count == 1 else SplitPart(index, self.count, self.ranges[index], self.n_tensors)

    def paths(self, path: Path) -> list[Path]:
        return split_names(path, self.count)

    def check(self, plan: TensorPlan) -> None:
        if self.n_tensors != len(plan.tensors):
            raise UsageError(f"the split plan covers {self.n_tensors} tensors, the output has {len(plan.tensors)}")

    def describe(self, plan: TensorPlan, path: Path) -> list[dict[str, Any]]:
        """Per file: path, tensor count and tensor data bytes (padded), for a dry run or a result."""
        align = gguf.GGUF_DEFAULT_ALIGNMENT
        return [{"path": str(p), "n_tensors": len(r),
                 "data_bytes": sum(-(-plan.tensors[i].nbytes // align) * align for i in r)}
                for p, r in zip(self.paths(path), self.ranges)]


def plan_splits(sizes: Sequence[int], *, max_size: int = 0, max_tensors: int = 0,
                no_tensor_first_split: bool = False) -> SplitPlan:
    """Split boundaries for tensors of `sizes` bytes (plan order), by gguf-py's rule (module doc);
    0 means no limit. `no_tensor_first_split`: the first file holds only the metadata."""
    if max_size < 0 or max_tensors < 0:
        raise UsageError("split limits must not be negative (0: no limit)")
    ranges: list[range] = [range(0, 0)] if no_tensor_first_split else []
    start, nbytes = 0, 0
    for i, size in enumerate(sizes):
        n = i - start
        if n > 0 and ((max_tensors and n >= max_tensors) or (max_size and nbytes + size > max_size)):
            ranges.append(range(start, i))
            start, nbytes = i, 0
        nbytes += size
    ranges.append(range(start, len(sizes)))
    return SplitPlan(tuple(ranges))


def plan_for(plan: TensorPlan, *, max_size: str | int | None = None, max_tensors: int | None = None,
             no_tensor_first_split: bool = False) -> SplitPlan:
    """The split plan of a tensor plan for `--split-max-size` / `--split-max-tensors`."""
    if max_tensors is not None and max_tensors < 0:
        raise UsageError(f"--split-max-tensors {max_tensors}: must not be negative (0: no limit)")
    return plan_splits([t.nbytes for t in plan.tensors], max_size=parse_split_size(max_size),
                       max_tensors=max_tensors or 0, no_tensor_first_split=no_tensor_first_split)


def splits_from_counts(counts: Sequence[int]) -> SplitPlan:
    """An explicit assignment: file i holds the next `counts[i]` tensors of the plan (`bitconv
    quantize --keep-split`: the input set's tensors per file)."""
    ranges, start = [], 0
    for n in counts:
        if n < 0:
            raise UsageError(f"split tensor counts must not be negative: {list(counts)}")
        ranges.append(range(start, start + n))
        start += n
    return SplitPlan(tuple(ranges))


def write_split(path: Path, plan: TensorPlan, metadata: MetadataFn, splits: SplitPlan, index: int, *,
                force: bool = False, **write_options: Any) -> dict[str, Any]:
    """Write file `index` of the split set for output `path`, on its own and atomically (its bytes
    are those of a whole-set run); returns its record {path, bytes, sha256} for the set's
    manifest. `write_options`: write_gguf's (arch, ggml_shapes, threads, allow_nonfinite, progress)."""
    splits.check(plan)
    target = splits.paths(path)[index]
    with atomic_output(target, force=force) as tmp:
        digest = write_gguf(tmp, plan, metadata, split=splits.part(index), **write_options)
        nbytes = tmp.stat().st_size
    return {"path": target.name, "bytes": nbytes, "sha256": digest}


def write_split_set(path: Path, plan: TensorPlan, metadata: MetadataFn, splits: SplitPlan, *,
                    force: bool = False, before_commit: Callable[[], None] | None = None,
                    **write_options: Any) -> list[dict[str, Any]]:
    """Write every file of the split set for output `path` (or `path` itself for a one-file plan):
    each to a temp file, then all renamed into place together; a failure or Ctrl-C leaves none of
    them. `before_commit` runs once all are written, just before the renames (companion files).
    Returns one record {path, bytes, sha256} per file, in order."""
    splits.check(plan)
    targets = splits.paths(path)
    records = []
    with atomic_outputs(targets, force=force) as temps:
        for i, (target, tmp) in enumerate(zip(targets, temps)):
            digest = write_gguf(tmp, plan, metadata, split=splits.part(i), **write_options)
            records.append({"path": target.name, "bytes": tmp.stat().st_size, "sha256": digest})
        if before_commit is not None:
            before_commit()
    return records
