"""FP8 checkpoints (`quant_method: "fp8"`, the hub's Qwen3-*-FP8 and DeepSeek-V3 layout): dequantized
as a source.

Stored per linear [N, K] (`<module>.` prefix):

- `weight` float8_e4m3fn [N, K] (safetensors dtype F8_E4M3)
- `weight_scale_inv` [⌈N/bn⌉, ⌈K/bk⌉] for `weight_block_size: [bn, bk]` (Qwen3: [128, 128]); the
  name says "inverse" but it multiplies: W = f32(weight) · scale of the block

Without `weight_block_size` the scale is one value (per tensor) or one per output row.

Reference: llama.cpp's converter, `conversion/base.py` `dequant_model` (quant_method "fp8") →
`dequant_simple`: the scale is repeat_interleave'd by the block size along each axis, cut to the
weight's shape, and `weight.float() * scale` is one float32 multiply per element — the same
rounding as numpy's. float8_e4m3fn (OCP FP8 E4M3, as torch.float8_e4m3fn): 1 sign, 4 exponent
bits (bias 7), 3 mantissa bits, subnormals, no infinities, S.1111.111 is NaN; every value is exact
in float32 (decoded through a 256-entry table). llama.cpp drops `*.activation_scale`, and so does
bitconv.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CheckpointError
from .schemes import SCALE_DTYPES, LinearLayout, PartSlice, SourceScheme, expect, scale_to_f32

FP8_DTYPES = {"e4m3": "F8_E4M3"}


def _e4m3_table() -> np.ndarray:
    b = np.arange(256, dtype=np.int64)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp = (b >> 3) & 0xF
    man = b & 0x7
    mag = np.where(exp == 0, man / 8.0 * 2.0**-6, (1.0 + man / 8.0) * 2.0 ** (exp - 7))
    vals = sign * mag
    vals[(b & 0x7F) == 0x7F] = np.nan
    return vals.astype(np.float32)


E4M3_TO_F32 = _e4m3_table()


def e4m3_to_f32(codes: np.ndarray) -> np.ndarray:
    """float8_e4m3fn bytes (uint8) → float32, exactly."""
    return E4M3_TO_F32[codes]


def e5m2_to_f32(codes: np.ndarray) -> np.ndarray:
    """float8_e5m2 bytes (uint8) → float32, exactly: an e5m2 value is the top byte of an f16."""
    return (codes.astype(np.uint16) << np.uint16(8)).view(np.float16).astype(np.float32)


def dequantize(weight: np.ndarray, scale: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """float32 [rows, K] from float8_e4m3fn bytes [rows, K] (rows a whole number of blocks from the
    first, or the tensor's end) and their block scales (float32, from the first block row)."""
    rows, k = weight.shape
    bn, bk = block
    s = np.repeat(np.repeat(scale, bn, axis=0)[:rows], bk, axis=1)[:, :k]
    w = e4m3_to_f32(weight)
    w *= s
    return w


class Fp8Scheme(SourceScheme):
    method = "fp8"
    marker = "weight_scale_inv"
    parts = ("weight", "weight_scale_inv")
    appends = False  # llama.cpp's dequant_model replaces `<module>.weight` in its place
    dropped = ("activation_scale",)

    def __init__(self, qc: dict[str, Any]) -> None:
        super().__init__(qc)
        fmt = qc.get("fmt", "e4m3")
        if not isinstance(fmt, str) or fmt not in FP8_DTYPES:
            raise self.refuse(f"fmt {fmt!r}", "e4m3 (float8_e4m3fn)")
        act = qc.get("activation_scheme", "dynamic")
        if act != "dynamic":
            raise self.refuse(f"activation_scheme {act!r}", "dynamic activation scales (no stored input scales)")
        bs = qc.get("weight_block_size")
        if bs is not None and (not isinstance(bs, list) or len(bs) != 2
                               or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in bs)):
            raise self.refuse(f"weight_block_size {bs!r}", "two positive integers [rows, columns] or none")
        self.block = None if bs is None else (int(bs[0]), int(bs[1]))

    def summary(self) -> dict[str, Any]:
        blocks = "per tensor / per row" if self.block is None else f"{self.block[0]}×{self.block[1]} blocks"
        return {"scheme": "fp8", "bits": 8, "group size": blocks, "symmetric": "yes (float8_e4m3fn, scales)",
                "act-order": "no", "format": "weight_scale_inv multiplies"}

    def weight_type(self, module: str) -> str:
        return "fp8"

    def layout(self, module: str, parts: dict[str, Any]) -> LinearLayout:
        weight, scale = parts["weight"], parts["weight_scale_inv"]
        if len(weight.shape) != 2:
            raise CheckpointError(f"{module}.weight: shape {tuple(weight.shape)} is not 2-D")
        n, k = weight.shape
        expect(module, "weight", weight, ("F8_E4M3",), None)
        if self.block is not None:
            bn, bk = self.block
            want = (-(-n // bn), -(-k // bk))
            expect(module, "weight_scale_inv", scale, SCALE_DTYPES, want,
                   f": weight_block_size {[bn, bk]} over {module}.weight {(n, k)}")
            slices = {"weight": PartSlice(0), "weight_scale_inv": PartSlice(0, bn, 1)}
        else:
            expect(module, "weight_scale_inv", scale, SCALE_DTYPES, None)
            size = int(np.prod(scale.shape))
            if size == 1:
                bn, bk = n, k
            elif size == n and tuple(scale.shape) in ((n,), (n, 1)):
                bn, bk = 1, k
            else:
                raise CheckpointError(f"{module}.weight_scale_inv: shape {tuple(scale.shape)}: without "
                                      f"weight_block_size expects one scale or one per row ({n})")
            slices = {"weight": PartSlice(0), "weight_scale_inv": PartSlice(None)}
        block = (bn, bk)
        blocked = self.block is not None
        scale_dtype = scale.dtype

        def run(arrays: dict[str, np.ndarray], lo: int, hi: int) -> np.ndarray:
            s = scale_to_f32(arrays["weight_scale_inv"], scale_dtype)
            if not blocked:  # the whole (tiny) scale was read: this slab's rows of it
                s = s.reshape(-1, 1)[lo:hi] if bn == 1 else s.reshape(1, 1)
            return dequantize(arrays["weight"], s, block)

        return LinearLayout((n, k), slices, run)
