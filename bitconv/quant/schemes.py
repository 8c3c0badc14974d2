"""Quantized checkpoints as sources: what every scheme module (gptq.py, awq.py, fp8.py) provides.

A scheme reads its options from config.json's `quantization_config` (refusing, in one line, an
option it does not support), recognizes the stored parts of one quantized linear by their name
suffixes, checks their shapes and dtypes, and dequantizes a slab of the linear's output rows from
the matching slices of its parts. The file I/O lives in convert/dequant.py; here are numerics only.

Each part says how its stored slices follow the output rows (`PartSlice`): GPTQ and AWQ keep the
output dimension N along axis 1 of qweight/qzeros/scales (groups run along the input dimension K),
so rows [lo, hi) of the weight need only columns of them; FP8 keeps N along axis 0 of the weight
and of its block scales.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np

from ..errors import CheckpointError

#: safetensors dtypes of floating-point scales
SCALE_DTYPES = ("F16", "BF16", "F32")


@dataclass(frozen=True)
class PartSlice:
    """How a stored part is sliced for a slab of output rows: along `axis` (None: read whole),
    `entries` stored entries per `rows` output rows (a packed int32 word holds 32/bits rows; an FP8
    block-scale row covers 128 rows)."""

    axis: int | None
    rows: int = 1
    entries: int = 1


@dataclass
class IntGrid:
    """Rows of a quantized linear on its source's integer grid, exactly what `dequantize` computes
    from: W[n, k] = scales[n, g] · (codes[n, k] − zeros[n, g]) with g = g_idx[k] (None: k // group).
    Outputs that can hold the grid as it is (`hf2gguf --keep-grid`, ONNX MatMulNBits) take it from
    here instead of re-rounding the float weights."""

    bits: int
    #: input columns per group (K for one group per output row)
    group: int
    codes: np.ndarray  # uint8 [rows, K], 0 … 2^bits − 1
    scales: np.ndarray  # float32 [rows, G]: the stored scales, widened exactly
    zeros: np.ndarray  # float32 [rows, G]: integer zero points in code units (format offsets applied)
    #: the group of each input column when it is not k // group (GPTQ act-order), else None
    g_idx: np.ndarray | None
    #: the stored scales' dtype (F16 / BF16 / F32): an output that keeps the scales at f16 is exact
    #: only when they are F16 (or fit it)
    scale_dtype: str

    @property
    def n_groups(self) -> int:
        return int(self.scales.shape[1])

    def dequantize(self) -> np.ndarray:
        """float32 [rows, K] from the grid (the same values as the scheme's own dequantize)."""
        rows, k = self.codes.shape
        if self.g_idx is None and k % self.group == 0:  # groups are runs of columns: broadcast, no gather
            w = np.subtract(self.codes.reshape(rows, -1, self.group), self.zeros[:, :, None], dtype=np.float32)
            w *= self.scales[:, :, None]
            return w.reshape(rows, k)
        g = np.arange(k) // self.group if self.g_idx is None else self.g_idx
        w = np.subtract(self.codes, self.zeros[:, g], dtype=np.float32)
        w *= self.scales[:, g]
        return w


@dataclass(frozen=True)
class LinearKind:
    """How one quantized linear is stored: the part that marks it, all its parts (suffixes after
    `<module>.`), those that may be absent, the float tensor it becomes, and whether llama.cpp's
    converter appends that tensor after the stored ones (a new name) or keeps it in the place of
    the stored weight. A scheme has one kind (GPTQ, FP8) or one per stored format (compressed-tensors
    mixes packed and unpacked linears)."""

    marker: str
    parts: tuple[str, ...]
    optional: tuple[str, ...] = ()
    output: str = "weight"
    appends: bool = True


@dataclass
class LinearLayout:
    """One quantized linear: its float shape [N, K] (numpy order, N output rows), how each stored part
    is sliced, and `dequantize(parts, lo, hi)` → float32 [hi - lo, K] for rows [lo, hi) aligned to
    `row_unit` (the end may be N)."""

    shape: tuple[int, int]
    slices: dict[str, PartSlice]
    dequantize: Callable[[dict[str, np.ndarray], int, int], np.ndarray]
    #: checks on a part's values that need them read (g_idx range); run once, on first decode
    checks: list[Callable[[dict[str, np.ndarray]], None]] = field(default_factory=list)
    #: `grid(parts, lo, hi)` → IntGrid of rows [lo, hi) (aligned as for `dequantize`), for schemes
    #: whose weights lie on a uniform integer grid (GPTQ, AWQ, int compressed-tensors); None for
    #: those that do not (FP8)
    grid: Callable[[dict[str, np.ndarray], int, int], IntGrid] | None = None

    @property
    def row_unit(self) -> int:
        return math.lcm(*(s.rows for s in self.slices.values() if s.axis is not None), 1)


class SourceScheme:
    """Base of a quantized-checkpoint scheme; subclasses are registered by quant_method in
    convert/quantization_config.py."""

    method: ClassVar[str]
    #: the suffix of the part that marks a quantized linear ("qweight", "weight_scale_inv")
    marker: ClassVar[str]
    #: every part of a linear (suffixes after `<module>.`), and those that may be absent
    parts: ClassVar[tuple[str, ...]]
    optional: ClassVar[tuple[str, ...]] = ()
    #: suffix of the float tensor the linear becomes (`<module>.weight`)
    output: ClassVar[str] = "weight"
    #: llama.cpp's converter appends dequantized linears after the stored tensors (GPTQ: new tensor
    #: names) or keeps them in the stored weight's place (FP8: the weight is replaced)
    appends: ClassVar[bool] = True
    #: stored tensors a scheme drops unread (activation scales)
    dropped: ClassVar[tuple[str, ...]] = ()
    #: dtypes of a stored `<module>.<output>` that can only be this scheme's codes (bitsandbytes' U8 /
    #: I8 weights): one without the marker beside it is a linear that lost its statistics, refused
    #: rather than read as numbers
    code_dtypes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, qc: dict[str, Any]) -> None:
        self.qc = qc

    def kinds(self) -> tuple[LinearKind, ...]:
        """Every way this scheme stores a linear (one, from the class attributes, unless overridden)."""
        return (LinearKind(self.marker, self.parts, self.optional, self.output, self.appends),)

    def linears(self, tensors: dict[str, Any]) -> dict[str, LinearKind]:
        """The quantized linears among the stored tensors (name → object with .dtype and .shape) as
        module → its kind, in stored order: every module whose marker is stored. Raises
        CheckpointError for a linear the options do not cover."""
        kind = self.kinds()[0]
        return {n.removesuffix("." + kind.marker): kind for n in tensors if n.endswith("." + kind.marker)}

    def summary(self) -> dict[str, Any]:
        """scheme, bits, group size, symmetry, act-order (what inspect prints)."""
        raise NotImplementedError

    def weight_type(self, module: str) -> str:
        """The stored weight type of the linear `module` as validate names its thresholds: int4,
        int8, fp8, nf4, … (integer schemes: `int<bits>`)."""
        return f"int{getattr(self, 'bits', 8)}"

    def describe(self) -> str:
        s = self.summary()
        return ", ".join(f"{k} {v}" if k != "scheme" else str(v) for k, v in s.items())

    def layout(self, module: str, parts: dict[str, Any]) -> LinearLayout:
        """The layout of the linear `module` from its parts (objects with .shape and .dtype); raises
        CheckpointError when they disagree with each other or with the options."""
        raise NotImplementedError

    # --- helpers for subclasses ------------------------------------------------------------------

    def option(self, key: str, default: Any = None) -> Any:
        return self.qc.get(key, default)

    def refuse(self, what: str, supported: str) -> CheckpointError:
        return CheckpointError(f"{self.method} quantization_config: {what} is not supported "
                               f"(bitconv reads {supported})")

    def int_option(self, key: str, default: Any = None) -> int:
        v = self.qc.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool):
            raise CheckpointError(f"{self.method} quantization_config: {key} must be an integer, not {v!r}")
        return v

    def group_size(self, k: int) -> int:
        """group_size along K; -1 (one group per output row) is K."""
        g = self.int_option("group_size", -1)
        if g == -1:
            return k
        if g <= 0:
            raise self.refuse(f"group_size {g}", "a positive group_size or -1")
        return g


def expect(module: str, part: str, t: Any, dtypes: tuple[str, ...], shape: tuple[int, ...] | None,
           why: str = "") -> None:
    """A part's dtype and shape are what the layout needs, or one line naming both."""
    if t.dtype not in dtypes:
        raise CheckpointError(f"{module}.{part}: dtype {t.dtype}, expected {' / '.join(dtypes)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"{module}.{part}: shape {tuple(t.shape)} disagrees with the other parts and "
                              f"quantization_config (expects {tuple(shape)}{why})")


def scale_to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Stored scales (bf16 as raw bits) widened to float32, exactly."""
    if dtype == "BF16":
        return np.left_shift(raw.astype(np.uint32), 16).view(np.float32)
    return raw.astype(np.float32)


def unpack_words(words: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """int32 words holding `bits`-bit codes, lowest bits first, unpacked along `axis` (each word
    becomes 32 / bits codes there; for 3 bits, each run of 3 words one little-endian 96-bit stream
    of 32 codes, as GPTQ packs them). Returns uint8 codes."""
    w = np.moveaxis(np.asarray(words), axis, -1)
    raw = np.ascontiguousarray(w).astype("<i4", copy=False).view(np.uint8)  # little-endian bytes, in order
    if bits == 8:
        out = raw
    elif 8 % bits == 0:  # 2 / 4 bits: 8 / bits codes per byte, lowest first
        per, mask = 8 // bits, np.uint8((1 << bits) - 1)
        codes = np.empty((*raw.shape, per), dtype=np.uint8)
        for i in range(per):  # one pass per code position (2 or 4), each over every byte
            np.bitwise_and(raw >> np.uint8(i * bits), mask, out=codes[..., i])
        out = codes.reshape(*raw.shape[:-1], -1)
    else:  # 3 bits: a bit stream over each group of 3 words
        if w.shape[-1] % bits:
            raise ValueError(f"{bits}-bit codes need a multiple of {bits} words")
        stream = np.unpackbits(raw, axis=-1, bitorder="little")
        grouped = stream.reshape(*raw.shape[:-1], -1, bits)
        out = (grouped << np.arange(bits, dtype=np.uint8)).sum(axis=-1, dtype=np.uint8)
    return np.moveaxis(out, -1, axis)
