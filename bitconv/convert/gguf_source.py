"""A GGUF file (or a split set, `name-00001-of-00003.gguf` …) as a conversion source.

Users often hold a GGUF and not the checkpoint it came from (bitnet.cpp's `ggml-model-i2_s.gguf`,
an f16 Qwen). The metadata is read with each value's GGUF type, so `bitconv quantize` can write it
back as llama-quantize does; tensors stay on disk and are decoded when the writer asks, a slab of
rows at a time for every row-local type (all of ggml's block types and I2_S; the TL1/TL2 tilings
span rows, so those are decoded whole). Ternary tensors also expose their codes and scale, so a
repack (i2_s → tl1, tq2_0 → i2_s …) never goes through floats.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import gguf
import numpy as np

from ..errors import ArtifactError, CheckpointError
from .checkpoint import LazyTensor, to_compute_dtype
from .gguf_header import GGUFSummary, GGUFTensorInfo, read_gguf_summary

#: llama.cpp's split file names (gguf-split, convert_hf_to_gguf.py --split-max-*)
SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
#: stored GGUF float types read as they are (bf16 as raw bits), like a safetensors tensor
_FLOAT_DTYPES = {"F32": "F32", "F16": "F16", "BF16": "BF16"}
_RAW_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
TERNARY_TYPES = ("I2_S", "TL1", "TL2", "TQ1_0", "TQ2_0")
_BLOCK_INDEX = re.compile(r"^blk\.\d+\.")


def trailer_scale(raw: np.ndarray) -> np.float32:
    """The per-tensor f32 scale of an I2_S / TL1 / TL2 tensor: first in the 32-byte slot after the codes."""
    return raw[len(raw) - 32:][:4].copy().view(np.float32)[0]


def split_paths(path: Path) -> list[Path]:
    """The files of the split set `path` belongs to (all of them must exist), or [path]."""
    m = SPLIT_NAME.match(path.name)
    if m is None:
        return [path]
    count = int(m.group("count"))
    if count < 1:
        raise CheckpointError(f"{path.name}: a split set of {count} files")
    parts = [path.with_name(f"{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise CheckpointError(f"{path.name} is split {m.group('no')} of {count}, but {', '.join(missing[:3])}"
                              f"{' …' if len(missing) > 3 else ''} is missing from {path.parent}")
    return parts


def _pread(path: Path, offset: int, count: int) -> np.ndarray:
    buf = np.empty(count, dtype=np.uint8)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < count:
            n = os.preadv(fd, [view[done:]], offset + done)
            if n <= 0:
                raise ArtifactError(f"{path.name} ended early (was it truncated during the run?)")
            done += n
    finally:
        os.close(fd)
    return buf


@dataclass
class GGUFTensor:
    """One tensor of a GGUF source, known by its header entry; bytes are read on demand."""

    info: GGUFTensorInfo
    path: Path
    kernel_config: Any = None

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def type_name(self) -> str:
        return self.info.type_name

    @property
    def shape(self) -> tuple[int, ...]:
        return self.info.shape

    @property
    def n_rows(self) -> int:
        return math.prod(self.shape[:-1]) if len(self.shape) > 1 else 1

    @property
    def row_local(self) -> bool:
        """Rows are whole runs of bytes (every ggml block type; I2_S's 128-value groups)."""
        return self.type_name not in ("TL1", "TL2")

    @property
    def ternary(self) -> bool:
        return self.type_name in TERNARY_TYPES

    @property
    def _payload_nbytes(self) -> int:
        return self.info.nbytes - 32 if self.type_name == "I2_S" else self.info.nbytes

    def raw(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """The tensor's stored bytes [lo, hi) (all of them by default), as they lie in the file."""
        hi = self.info.nbytes if hi is None else hi
        return _pread(self.path, self.info.offset + lo, hi - lo)

    def raw_rows(self, lo: int, hi: int) -> np.ndarray:
        """Stored bytes of rows [lo, hi) as [hi - lo, bytes per row] (row-local types)."""
        row = self._payload_nbytes // self.n_rows
        return _pread(self.path, self.info.offset + lo * row, (hi - lo) * row).reshape(hi - lo, row)

    def _i2s_scale(self) -> np.float32:
        tail = _pread(self.path, self.info.offset + self._payload_nbytes, 4)
        return tail.view(np.float32)[0]

    def stored_rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) as a checkpoint stores them: f32/f16 as they are, bf16 as raw bits, every
        other type dequantized to float32."""
        k = self.shape[-1] if self.shape else 1
        if self.type_name in _RAW_DTYPES:
            return self.raw_rows(lo, hi).view(_RAW_DTYPES[self.type_name]).reshape(hi - lo, k)
        if self.type_name == "I2_S":
            from ..accel.ternary import unpack_i2s

            codes = unpack_i2s(self.raw_rows(lo, hi).reshape(-1), hi - lo, k)
            return codes.astype(np.float32) * self._i2s_scale()
        if not self.row_local:
            return self.stored().reshape(-1, k)[lo:hi]
        try:
            qtype = gguf.GGMLQuantizationType[self.type_name]
        except KeyError:
            raise CheckpointError(f"{self.path.name}: {self.name}: cannot decode tensor type {self.type_name}") from None
        try:
            out = gguf.quants.dequantize(self.raw_rows(lo, hi), qtype)
        except NotImplementedError:
            raise CheckpointError(f"{self.path.name}: {self.name}: gguf-py cannot decode tensor type "
                                  f"{self.type_name}") from None
        return np.asarray(out, dtype=np.float32).reshape(hi - lo, k)

    def stored(self) -> np.ndarray:
        """The whole tensor as `stored_rows` gives it, shaped."""
        if self.type_name in ("TL1", "TL2"):
            codes, scale = self.codes_and_scale()
            return (codes.astype(np.float32) * scale).reshape(self.shape)
        return self.stored_rows(0, self.n_rows).reshape(self.shape)

    def dequantize_rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) as floats (f16 kept, bf16 widened to f32)."""
        return to_compute_dtype(self.stored_rows(lo, hi), _FLOAT_DTYPES.get(self.type_name, "F32"))

    def dequantize(self) -> np.ndarray:
        """The whole tensor as floats (f16 kept, bf16 widened to f32), shaped."""
        return to_compute_dtype(self.stored(), _FLOAT_DTYPES.get(self.type_name, "F32"))

    def codes_and_scale(self) -> tuple[np.ndarray, np.float32]:
        """Ternary codes (int8 [M, K] in {-1, 0, 1}) and the per-tensor scale. For TQ1_0/TQ2_0 the
        scale is the f16 block scale every non-zero block shares (refused when blocks disagree)."""
        if not self.ternary or len(self.shape) != 2:
            raise CheckpointError(f"{self.name}: {self.type_name} {self.shape} is not a ternary matrix")
        m, k = self.shape
        if self.type_name == "I2_S":
            from ..accel.ternary import unpack_i2s

            raw = self.raw()
            return unpack_i2s(raw[:m * k // 4], m, k), trailer_scale(raw)
        if self.type_name in ("TL1", "TL2"):
            from ..quant.tl import unpack_tl1, unpack_tl2

            tiling = self.kernel_config.get(m, k) if self.kernel_config is not None else None
            if tiling is None:
                raise CheckpointError(
                    f"{self.name}: {self.type_name} needs its tiling: the kernel_config.ini written next to "
                    f"{self.path.name} (or --kernel-config) has no section for m={m}, k={k}")
            raw = self.raw()
            codes = (unpack_tl2 if self.type_name == "TL2" else unpack_tl1)(raw, tiling)
            return codes, trailer_scale(raw)
        qtype = gguf.GGMLQuantizationType[self.type_name]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        blocks = self.raw().reshape(-1, size)
        scales = blocks[:, size - 2:].copy().view(np.float16).reshape(-1)  # d is each block's last 2 bytes
        nonzero = scales[scales != 0]
        if nonzero.size and np.any(nonzero != nonzero[0]):
            raise CheckpointError(
                f"{self.name}: its {self.type_name} blocks have {np.unique(nonzero).size} different scales; a "
                "per-tensor ternary type (i2_s, tl1, tl2) needs one scale per tensor")
        scale = np.float32(nonzero[0]) if nonzero.size else np.float32(0)
        w = np.asarray(gguf.quants.dequantize(blocks, qtype), dtype=np.float32).reshape(m, k)
        return np.sign(w).astype(np.int8), scale

    def lazy(self) -> LazyTensor:
        """The tensor as a checkpoint tensor: stored floats as they are, the rest dequantized to f32."""
        dtype = _FLOAT_DTYPES.get(self.type_name, "F32")
        k = self.shape[-1] if self.shape else 1

        def read() -> np.ndarray:
            return self.stored()

        def rows(lo: int, hi: int) -> np.ndarray:
            return self.stored_rows(lo, hi).reshape(hi - lo, k)

        return LazyTensor(self.name, dtype, self.shape, self.info.nbytes, self.path, read,
                          rows if self.row_local else None)


@dataclass
class GGUFSource:
    """A GGUF file or split set, read as one model: metadata of the first file (split keys
    dropped) and every file's tensors, in file order."""

    paths: list[Path]
    metadata: dict[str, Any]
    value_types: dict[str, tuple[int, int | None]]
    tensors: dict[str, GGUFTensor] = field(default_factory=dict)
    alignment: int = gguf.GGUF_DEFAULT_ALIGNMENT

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, kernel_config: Any = None) -> "GGUFSource":
        p = Path(path).expanduser()
        if not p.is_file():
            raise CheckpointError(f"{p}: no such GGUF file")
        paths = split_paths(p)
        summaries = [_read(paths[0])]  # the others have no general.file_type, which tells TL2 from MXFP4
        summaries += [_read(q, summaries[0].metadata.get("general.file_type")) for q in paths[1:]]
        _check_split_set(paths, summaries)
        first = summaries[0]
        meta = {k: v for k, v in first.metadata.items() if k not in SPLIT_KEYS}
        types = {k: v for k, v in first.value_types.items() if k not in SPLIT_KEYS}
        if kernel_config is None:
            kernel_config = _sidecar_kernel_config(paths[0])
        src = cls(paths, meta, types, alignment=first.alignment)
        for q, s in zip(paths, summaries):
            for info in s.tensors:
                if info.name in src.tensors:
                    raise CheckpointError(f"{q.name}: tensor {info.name} is also in another file of the set")
                src.tensors[info.name] = GGUFTensor(info, q, kernel_config)
        if len(paths) > 1:
            _check_consistent_shapes(src)
        return src

    @property
    def path(self) -> Path:
        return self.paths[0]

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise CheckpointError(f"{self.path.name}: no general.architecture key: not a model GGUF")
        return arch

    @property
    def name(self) -> str:
        """The file name without `.gguf` and without a split suffix (output files are named after it)."""
        m = SPLIT_NAME.match(self.path.name)
        return m.group("prefix") if m else self.path.name[:-5] if self.path.name.endswith(".gguf") else self.path.name

    def input_files(self) -> list[Path]:
        return list(self.paths)

    def __iter__(self) -> Iterator[GGUFTensor]:
        return iter(self.tensors.values())


def is_gguf_source(source: Any) -> bool:
    """A path naming a GGUF file (by its magic), which the converters read as a source."""
    try:
        p = Path(source).expanduser()
        if not p.is_file():
            return False
        with open(p, "rb") as f:
            return f.read(4) == b"GGUF"
    except (OSError, TypeError, ValueError, RuntimeError):
        return False


def _read(path: Path, file_type: int | None = None) -> GGUFSummary:
    try:
        return read_gguf_summary(path, full_arrays=True, file_type=file_type)
    except ArtifactError as e:
        raise CheckpointError(str(e)) from e


def _sidecar_kernel_config(path: Path) -> Any:
    """tl1/tl2 files carry their tiling in `<stem>.kernel_config.ini` beside them."""
    from ..quant.tl import KernelConfig

    stem = path.name[:-5] if path.name.endswith(".gguf") else path.name
    ini = path.with_name(stem + ".kernel_config.ini")
    return KernelConfig.read(ini) if ini.is_file() else None


def _check_split_set(paths: list[Path], summaries: list[GGUFSummary]) -> None:
    """Each file says it is split i of n of a set of n; the set holds the tensor count split 1 names."""
    if len(paths) == 1:
        count = summaries[0].metadata.get("split.count", 1)
        if isinstance(count, int) and count > 1:
            raise CheckpointError(f"{paths[0].name} is split {summaries[0].metadata.get('split.no', 0) + 1} of {count} "
                                  "but is not named like one (NAME-0000i-of-0000n.gguf): rename the set as written")
        return
    for i, (p, s) in enumerate(zip(paths, summaries)):
        no, count = s.metadata.get("split.no"), s.metadata.get("split.count")
        if no != i or count != len(paths):
            raise CheckpointError(f"{p.name}: its metadata says split {no} of {count}, its name split {i + 1} of "
                                  f"{len(paths)} (0-based {i}): files from different split sets?")
    total = summaries[0].metadata.get("split.tensors.count")
    found = sum(len(s.tensors) for s in summaries)
    if isinstance(total, int) and total != found:
        raise CheckpointError(f"{paths[0].name}: the set should hold {total} tensors but its {len(paths)} files hold "
                              f"{found}: files from different split sets?")


def _check_consistent_shapes(src: GGUFSource) -> None:
    """Every block's tensor of one kind has one shape: splits of two model sizes mixed are refused."""
    seen: dict[str, tuple[tuple[int, ...], str]] = {}
    for t in src:
        kind = _BLOCK_INDEX.sub("blk.*.", t.name)
        first = seen.setdefault(kind, (t.shape, t.path.name))
        if first[0] != t.shape and kind != t.name:
            raise CheckpointError(f"{t.name} in {t.path.name} has shape {t.shape}, but {first[1]} holds one of "
                                  f"shape {first[0]}: files from different models?")
