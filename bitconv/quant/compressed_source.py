"""compressed-tensors checkpoints (`quant_method: "compressed-tensors"`, llm-compressor) read as a
conversion source; quant/compressed.py holds the direction bitconv writes.

What config.json says, read as compressed-tensors 0.20 reads it: `config_groups` maps a group name to
a scheme (`targets`, `weights` args, `format`); `ignore` lists modules left float. A module takes
the group of its most specific matching target (exact names, then `re:` patterns — each sorted, a
pattern matching from the start of the name — then the class name "Linear", which every stored
quantized linear is); a target named in two groups belongs to the later one. The format is the
group's. Where a group names none, the package infers one (int weights with input activations:
int-quantized; int: pack-quantized; float with input activations: float-quantized; else
naive-quantized), but older writers stored one top-level format for all and llama.cpp's converter
reads only that, so bitconv takes a top-level format that names one format first, then infers.

Stored per linear [N, K] (`<module>.` prefix):

- `pack-quantized` (int4 / int8): `weight_packed` int32 [N, ⌈K·bits/32⌉], each code + 2^(bits−1)
  packed along K, lowest bits first; `weight_scale` [N, G] (group: G = K / group_size; channel:
  G = 1); `weight_shape` int [2] = (N, K); asymmetric: `weight_zero_point` int32
  [⌈N·bits/32⌉, G], each zero point + 2^(bits−1) packed the same way along N; `weight_g_idx` [K]
  (actorder "group", written by compressed-tensors < 0.20: column k in group g_idx[k]; a g_idx
  holding −1 means column order).
- `int-quantized` / `naive-quantized` (int8) and `float-quantized` (float8_e4m3fn): `weight` [N, K]
  as it is, `weight_scale` per tensor [1], channel [N, 1], group [N, K / group_size] or block
  [⌈N/bn⌉, ⌈K/bk⌉]; int asymmetric: `weight_zero_point` shaped as the scale.

W = (q − z) · s, with q and z the stored integers (or fp8 values, z = 0).

Where the package and llama.cpp's converter differ, bitconv follows the converter (its float32
values are what a GGUF holds): the converter (`conversion/base.py` `dequant_model`, compressed-tensors
→ `dequant_packed` / `dequant_simple`) computes (code − offset) · f32(scale) and f32(weight) ·
f32(scale) in float32; the package (`dequantize` in `quantization/lifecycle/forward.py`) computes in
the scale's dtype, so its bf16 result is the float32 value rounded once to bf16 (the float32
product of an integer below 2^9, or an fp8 value, and a bf16/f16 scale is exact). The converter
ignores a stored int-quantized zero point and `weight_g_idx` (it then fails on the unmapped tensor),
reads pack-quantized only with the group strategy and int/float-quantized only per channel or
block, and one config group; bitconv reads those as the package does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CheckpointError
from .fp8 import e4m3_to_f32
from .schemes import (SCALE_DTYPES, IntGrid, LinearKind, LinearLayout, PartSlice, SourceScheme, expect, scale_to_f32,
                      unpack_words)

PACKED = "pack-quantized"
UNPACKED = ("int-quantized", "naive-quantized", "float-quantized")
#: formats compressed-tensors writes that bitconv does not read, and why
REFUSED = {
    "sparse-24-bitmask": "2:4 sparse (bitmask)", "sparse-bitmask": "sparse (bitmask)", "marlin-24": "2:4 sparse marlin",
    "nvfp4-pack-quantized": "NVFP4", "mxfp4-pack-quantized": "MXFP4", "mxfp6-pack-quantized": "MXFP6",
    "mxfp8-quantized": "MXFP8", "dense": "float weights with quantization parameters",
}
PACKED_KIND = LinearKind("weight_packed", ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point",
                                           "weight_g_idx"), ("weight_zero_point", "weight_g_idx"), appends=True)
UNPACKED_KIND = LinearKind("weight_scale", ("weight", "weight_scale", "weight_zero_point"), ("weight_zero_point",),
                           appends=False)
INT_DTYPES = ("I8", "I16", "I32", "I64")
FLOAT8 = ("F8_E4M3", "F8_E5M2")


@dataclass(frozen=True)
class WeightArgs:
    """One config group's weight quantization, checked."""

    name: str
    format: str
    type: str  # int / float
    bits: int
    symmetric: bool
    strategy: str  # tensor / channel / group / block
    group_size: int | None
    block: tuple[int, int] | None
    actorder: str | None

    def line(self) -> str:
        where = {"group": f"group {self.group_size}", "block": f"block {self.block[0]}×{self.block[1]}" if self.block
                 else "block"}.get(self.strategy, self.strategy)
        sym = "symmetric" if self.symmetric else "asymmetric (zero points)"
        order = f", actorder {self.actorder}" if self.actorder else ""
        return f"{self.format} {self.type}{self.bits} {sym} {where}{order}"


def _string_list(value: Any, what: str) -> list[str]:
    """A list of names from the config (None: empty), or a one-line refusal naming the key."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CheckpointError(f"compressed-tensors quantization_config: {what} {value!r} is not a list of names")
    return list(value)


def _match(name: str, target: str) -> bool:
    """compressed-tensors' match_name: `re:` patterns match from the start, other targets exactly."""
    return re.match(target[3:], name) is not None if target.startswith("re:") else target == name


class CompressedTensorsScheme(SourceScheme):
    method = "compressed-tensors"
    marker = "weight_packed"
    parts = PACKED_KIND.parts
    #: activation and kv-cache quantization parameters (the weights do not need them)
    dropped = ("input_scale", "input_zero_point", "output_scale", "output_zero_point", "k_scale", "v_scale")

    def __init__(self, qc: dict[str, Any]) -> None:
        super().__init__(qc)
        self.format = qc.get("format")
        status = qc.get("quantization_status", "compressed")
        if status != "compressed":
            raise self.refuse(f"quantization_status {status!r}", "compressed checkpoints")
        sparsity = qc.get("sparsity_config") or {}
        if not isinstance(sparsity, dict):
            raise CheckpointError(f"compressed-tensors quantization_config: sparsity_config {sparsity!r} is not a table")
        if sparsity.get("format") not in (None, "dense"):
            raise self.refuse(f"sparsity_config format {sparsity.get('format')!r}", "dense (unsparsified) weights")
        if qc.get("transform_config"):
            raise self.refuse("transform_config (rotated weights)", "untransformed weights")
        groups = qc.get("config_groups")
        if not isinstance(groups, dict) or not groups:
            raise CheckpointError("compressed-tensors quantization_config: no config_groups")
        self.groups: dict[str, WeightArgs | None] = {}
        self.target_group: dict[str, str] = {}  # later groups override a shared target, as the package's
        for name, group in groups.items():
            if not isinstance(group, dict):
                raise self.refuse(f"config group {name!r} given as a preset ({group!r})", "explicit schemes")
            self.groups[name] = self._weight_args(name, group)
            for t in _string_list(group.get("targets"), f"config group {name!r} targets"):
                self.target_group[t] = name
        self.ordered = sorted(self.target_group, key=lambda t: ("re:" in t, t))
        self.ignore = _string_list(qc.get("ignore"), "ignore")

    def _weight_args(self, name: str, group: dict[str, Any]) -> WeightArgs | None:
        w = group.get("weights")
        if w is None:
            return None  # activations only
        if not isinstance(w, dict):
            raise CheckpointError(f"compressed-tensors quantization_config: config group {name!r} weights {w!r} "
                                  "is not a table")
        kind = str(w.get("type", "int")).lower()
        bits = w.get("num_bits", 8)
        if not isinstance(bits, int) or isinstance(bits, bool):
            raise CheckpointError(f"compressed-tensors quantization_config: config group {name!r} num_bits {bits!r} "
                                  "is not an integer")
        fmt = group.get("format") or (self.format if self.format != "mixed-precision" else None)
        if fmt is None:  # the package's inference for a Linear
            acts = group.get("input_activations")
            fmt = (("int-quantized" if acts else PACKED) if kind == "int" else
                   "float-quantized" if acts and kind == "float" else "naive-quantized")
        what = f"config group {name!r}"
        if not isinstance(fmt, str):
            raise CheckpointError(f"compressed-tensors quantization_config: {what} format {fmt!r} is not a name")
        if fmt in REFUSED:
            raise self.refuse(f"{what}: format {fmt!r} ({REFUSED[fmt]})", f"{PACKED}, {', '.join(UNPACKED)}")
        if fmt != PACKED and fmt not in UNPACKED:
            raise self.refuse(f"{what}: format {fmt!r}", f"{PACKED}, {', '.join(UNPACKED)}")
        if w.get("dynamic") not in (False, None):
            raise self.refuse(f"{what}: dynamic weight quantization", "static weight scales")
        strategy = str(w.get("strategy") or "tensor").lower()
        if fmt == PACKED:
            ok = kind == "int" and bits in (4, 8) and strategy in ("group", "channel")
            supported = "int4 / int8 with the group or channel strategy"
        elif kind == "int":
            ok = fmt != "float-quantized" and bits == 8 and strategy in ("tensor", "channel", "group", "block")
            supported = "int8 per tensor, channel, group or block"
        else:
            ok = kind == "float" and bits == 8 and bool(w.get("symmetric", True)) and fmt != "int-quantized" \
                and strategy in ("tensor", "channel", "group", "block")
            supported = "symmetric float8 (e4m3) per tensor, channel, group or block"
        if not ok:
            sym = "" if w.get("symmetric", True) else " asymmetric"
            raise self.refuse(f"{what}: {fmt}{sym} {kind}{bits} with strategy {strategy!r}", f"{fmt}: {supported}")
        gs = w.get("group_size")
        if strategy == "group" and (not isinstance(gs, int) or isinstance(gs, bool) or gs <= 0):
            raise self.refuse(f"{what}: group_size {gs!r}", "a positive group_size with the group strategy")
        block = w.get("block_structure")
        if strategy == "block":
            if (not isinstance(block, (list, tuple)) or len(block) != 2
                    or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
                raise self.refuse(f"{what}: block_structure {block!r}", "two positive integers [rows, columns]")
            block = (int(block[0]), int(block[1]))
        actorder = w.get("actorder")
        if actorder not in (None, False, "weight", "static", "group", "dynamic"):
            raise self.refuse(f"{what}: actorder {actorder!r}", "none, weight or group")
        return WeightArgs(name, fmt, kind, int(bits), bool(w.get("symmetric", True)), strategy,
                          gs if strategy == "group" else None, block if strategy == "block" else None,
                          {"static": "weight", "dynamic": "group"}.get(str(actorder), actorder or None))

    # --- which linears, and of which group -------------------------------------------------------

    def kinds(self) -> tuple[LinearKind, ...]:
        return (PACKED_KIND, UNPACKED_KIND)

    def linears(self, tensors: dict[str, Any]) -> dict[str, LinearKind]:
        out: dict[str, LinearKind] = {}
        for n, t in tensors.items():
            module, _, part = n.rpartition(".")
            packed = part == "weight_packed"
            if packed or (part == "weight_scale" and f"{module}.weight_packed" not in tensors):
                args = self.args_of(module)
                if packed != (args.format == PACKED):
                    raise CheckpointError(
                        f"{n}: without {module}.weight_packed, which config group {args.name!r} ({PACKED}) stores"
                        if not packed else f"{n}: config group {args.name!r} has format {args.format!r}, which "
                        f"stores {module}.weight, not weight_packed")
                out[module] = PACKED_KIND if packed else UNPACKED_KIND
            elif part == "weight" and t.dtype in INT_DTYPES + FLOAT8 and f"{module}.weight_scale" not in tensors:
                raise CheckpointError(f"{n}: a {t.dtype} weight without {module}.weight_scale")
        return out

    def args_of(self, module: str) -> WeightArgs:
        """The weight args of the config group a stored quantized module belongs to."""
        for ign in self.ignore:
            if _match(module, ign):
                raise CheckpointError(f"{module}: stored quantized, but quantization_config's ignore lists it "
                                      f"({ign!r})")
        name = next((self.target_group[t] for t in self.ordered if _match(module, t)), None)
        if name is None and "Linear" in self.target_group:
            name = self.target_group["Linear"]
        if name is None:
            raise CheckpointError(f"{module}: stored quantized, but no config group targets it "
                                  f"(targets: {', '.join(self.ordered) or 'none'})")
        args = self.groups[name]
        if args is None:
            raise CheckpointError(f"{module}: stored quantized, but its config group {name!r} quantizes no weights")
        return args

    def weight_type(self, module: str) -> str:
        args = self.args_of(module)
        return f"int{args.bits}" if args.type == "int" else f"fp{args.bits}"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scheme": "compressed-tensors", "format": self.format or "per group"}
        for name, args in self.groups.items():
            targets = [t for t, g in self.target_group.items() if g == name]
            out[name] = f"{args.line() if args else 'activations only'} on {', '.join(targets)}"
        if self.ignore:
            out["ignore"] = ", ".join(self.ignore)
        return out

    # --- layouts ---------------------------------------------------------------------------------

    def layout(self, module: str, parts: dict[str, Any]) -> LinearLayout:
        args = self.args_of(module)
        for name in ("weight_packed", "weight"):
            if name in parts and len(parts[name].shape) != 2:
                raise CheckpointError(f"{module}.{name}: shape {tuple(parts[name].shape)} is not 2-D")
        if args.format == PACKED:
            return _packed_layout(module, args, parts)
        return _unpacked_layout(module, args, parts)


def _groups(module: str, args: WeightArgs, k: int) -> int:
    """Input columns per scale column (K for per-channel / per-tensor scales)."""
    if args.strategy == "group":
        assert args.group_size is not None
        if k % args.group_size:
            raise CheckpointError(f"{module}: K = {k} is not a multiple of group_size {args.group_size}")
        return args.group_size
    return args.block[1] if args.block else k


def _packed_layout(module: str, args: WeightArgs, parts: dict[str, Any]) -> LinearLayout:
    bits, packed, scale, shape_t = args.bits, parts["weight_packed"], parts["weight_scale"], parts["weight_shape"]
    expect(module, "weight_packed", packed, ("I32",), None)
    expect(module, "weight_shape", shape_t, INT_DTYPES, (2,))
    dims = np.asarray(shape_t.load_raw()).reshape(-1)  # the packed width fixes K only to 32 / bits columns
    n, k = int(dims[0]), int(dims[1])
    if n <= 0 or k <= 0 or tuple(packed.shape) != (n, -(-k * bits // 32)):
        raise CheckpointError(f"{module}.weight_packed: shape {tuple(packed.shape)} disagrees with "
                              f"{module}.weight_shape {[n, k]} (expects {(n, -(-k * bits // 32))} at {bits} bits)")
    group = _groups(module, args, k)
    n_groups = k // group
    expect(module, "weight_scale", scale, SCALE_DTYPES, (n, n_groups),
           f": {args.strategy} scales of a {n}×{k} weight" + (f", groups of {group}" if n_groups > 1 else ""))
    zp, g_idx = parts.get("weight_zero_point"), parts.get("weight_g_idx")
    if not args.symmetric:
        if zp is None:
            raise CheckpointError(f"{module}: config group {args.name!r} is asymmetric but the checkpoint has no "
                                  f"{module}.weight_zero_point")
        expect(module, "weight_zero_point", zp, ("I32",), (-(-n * bits // 32), n_groups),
               f": {n} zero points per column packed at {bits} bits")
    elif zp is not None:
        raise CheckpointError(f"{module}.weight_zero_point: stored for the symmetric config group {args.name!r}")
    if g_idx is not None:
        expect(module, "weight_g_idx", g_idx, INT_DTYPES, (k,))
    elif args.actorder == "group":
        raise CheckpointError(f"{module}: actorder \"group\" is set but the checkpoint has no {module}.weight_g_idx")
    per = 32 // bits
    slices = {"weight_packed": PartSlice(0), "weight_scale": PartSlice(0), "weight_shape": PartSlice(None),
              "weight_zero_point": PartSlice(0, per, 1), "weight_g_idx": PartSlice(None)}
    sdt, offset = scale.dtype, float(1 << (bits - 1))

    def column_groups(arrays: dict[str, np.ndarray]) -> np.ndarray | None:
        idx = arrays.get("weight_g_idx")
        if idx is None:
            return None
        idx = idx.reshape(-1).astype(np.int64)
        return None if (idx == -1).any() or np.array_equal(idx, np.arange(k) // group) else idx

    def check(arrays: dict[str, np.ndarray]) -> None:
        idx = column_groups(arrays)
        if idx is not None and (int(idx.min()) < 0 or int(idx.max()) >= n_groups):
            bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
            raise CheckpointError(f"{module}.weight_g_idx: group {bad} out of range (the scales hold "
                                  f"{n_groups} groups)")

    def grid(arrays: dict[str, np.ndarray], lo: int, hi: int) -> IntGrid:
        codes = np.ascontiguousarray(unpack_words(arrays["weight_packed"], bits, axis=1)[:, :k])
        rows = codes.shape[0]
        if args.symmetric:
            zeros = np.full((rows, n_groups), offset, np.float32)
        else:
            zeros = unpack_words(arrays["weight_zero_point"], bits, axis=0)[:rows].astype(np.float32)
        return IntGrid(bits, group, codes, scale_to_f32(arrays["weight_scale"], sdt), zeros, column_groups(arrays), sdt)

    def run(arrays: dict[str, np.ndarray], lo: int, hi: int) -> np.ndarray:
        return grid(arrays, lo, hi).dequantize()

    return LinearLayout((n, k), slices, run, [check], grid)


def _unpacked_layout(module: str, args: WeightArgs, parts: dict[str, Any]) -> LinearLayout:
    weight, scale, zp = parts["weight"], parts["weight_scale"], parts.get("weight_zero_point")
    n, k = weight.shape
    expect(module, "weight", weight, ("I8",) if args.type == "int" else ("F8_E4M3",), None)
    group = _groups(module, args, k)
    bn = args.block[0] if args.block else 1
    want = {"tensor": None, "channel": (n, 1), "group": (n, k // group),
            "block": (-(-n // bn), -(-k // group))}[args.strategy]
    expect(module, "weight_scale", scale, SCALE_DTYPES, want, f": {args.strategy} scales of a {n}×{k} weight")
    if args.strategy == "tensor" and int(np.prod(scale.shape)) != 1:
        raise CheckpointError(f"{module}.weight_scale: shape {tuple(scale.shape)}, expected one per-tensor scale")
    if not args.symmetric:
        if zp is None:
            raise CheckpointError(f"{module}: config group {args.name!r} is asymmetric but the checkpoint has no "
                                  f"{module}.weight_zero_point")
        expect(module, "weight_zero_point", zp, INT_DTYPES + SCALE_DTYPES, tuple(scale.shape))
    elif zp is not None:
        raise CheckpointError(f"{module}.weight_zero_point: stored for the symmetric config group {args.name!r}")
    whole = args.strategy == "tensor"
    ps = PartSlice(None) if whole else PartSlice(0, bn, 1)
    slices = {"weight": PartSlice(0), "weight_scale": ps, "weight_zero_point": ps}
    sdt, zdt = scale.dtype, None if zp is None else zp.dtype
    n_cols = -(-k // group)

    def per_row(a: np.ndarray, rows: int, dtype: str) -> np.ndarray:
        """A scale-shaped part → float32 [rows, ⌈K/group⌉] for this slab's rows."""
        a = scale_to_f32(a, dtype) if dtype in SCALE_DTYPES else a.astype(np.float32)
        if whole:
            return np.broadcast_to(a.reshape(1, 1), (rows, 1))
        return np.repeat(a, bn, axis=0)[:rows] if bn > 1 else a

    def grid(arrays: dict[str, np.ndarray], lo: int, hi: int) -> IntGrid:
        q = arrays["weight"]
        rows = q.shape[0]
        codes = (q.view(np.uint8) ^ np.uint8(0x80))  # q + 128 for int8
        zeros = np.full((rows, n_cols), 128.0, np.float32)
        if zdt is not None:
            zeros += per_row(arrays["weight_zero_point"], rows, zdt)
        scales = np.ascontiguousarray(per_row(arrays["weight_scale"], rows, sdt))
        return IntGrid(8, group, codes, scales, zeros, None, sdt)

    def run(arrays: dict[str, np.ndarray], lo: int, hi: int) -> np.ndarray:
        if args.type == "int":
            return grid(arrays, lo, hi).dequantize()
        w = e4m3_to_f32(arrays["weight"])
        s = per_row(arrays["weight_scale"], w.shape[0], sdt)
        w *= np.repeat(s, group, axis=1)[:, :k] if group < k else s
        return w

    return LinearLayout((n, k), slices, run, grid=grid if args.type == "int" else None)
