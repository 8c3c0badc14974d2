"""AWQ GEMM checkpoints (`quant_method: "awq"`, `version: "gemm"`, AutoAWQ / the hub's Qwen*-AWQ):
dequantized as a source.

Stored per linear with input dimension K and N output rows (`<module>.` prefix):

- `qweight` int32 [K, N/8]: 8 4-bit codes per word along N, interleaved: nibble i (bits 4i..4i+3)
  holds column `AWQ_ORDER[i]` of its 8, AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
- `qzeros` int32 [K/G, N/8]: zero points packed the same way
- `scales` f16 [K/G, N]

W[n, k] = (q[k, n] − z[k // G, n]) · scales[k // G, n] (no zero-point offset).

Reference: AutoAWQ `awq/utils/packing_utils.py` (`unpack_awq`, `reverse_awq_order` with
AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7], `dequantize_gemm`) and the GEMM kernel it mirrors
(`awq/modules/linear/gemm.py` packs with order_map [0, 2, 4, 6, 1, 3, 5, 7]). AutoAWQ computes the
product in f16; here it is float32, exact (an f16 scale times an integer in [−15, 15]), so its f16
rounding is AutoAWQ's value. llama.cpp's converter does not read AWQ.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CheckpointError
from .schemes import SCALE_DTYPES, IntGrid, LinearLayout, PartSlice, SourceScheme, expect, scale_to_f32, unpack_words

#: nibble i of a word holds column AWQ_ORDER[i] of its group of 8
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
#: column j of a group of 8 is nibble AWQ_REVERSE_ORDER[j]
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
VERSIONS = ("gemm",)


def unpack_columns(words: np.ndarray) -> np.ndarray:
    """uint8 codes [rows, 8·cols] in column order from AWQ-packed int32 [rows, cols]."""
    nibbles = unpack_words(words, 4, axis=1)  # nibble order
    rows, n = nibbles.shape
    return nibbles.reshape(rows, n // 8, 8)[:, :, AWQ_REVERSE_ORDER].reshape(rows, n)


def unpack_rows(words: np.ndarray) -> np.ndarray:
    """The same codes transposed, uint8 [8·cols, rows], built in that layout (the output's)."""
    rows, cols = words.shape
    nibbles = unpack_words(np.ascontiguousarray(words.T), 4, axis=1)  # [cols, 8·rows]: word-major
    per_word = nibbles.reshape(cols, rows, 8)[:, :, AWQ_REVERSE_ORDER]  # [cols, rows, 8] in column order
    return np.ascontiguousarray(per_word.transpose(0, 2, 1)).reshape(cols * 8, rows)


def unpack(qweight: np.ndarray, qzeros: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 [n, K], zero points float32 [n, G]) from qweight [K, n/8] and qzeros [G, n/8]."""
    return unpack_rows(qweight), unpack_columns(qzeros).T.astype(np.float32)  # q − z is exact in float32


def dequantize(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, group: int) -> np.ndarray:
    """float32 [n, K] from qweight [K, n/8], qzeros [G, n/8], scales [G, n] (float32), K = G · group."""
    q, z = unpack(qweight, qzeros)
    return IntGrid(4, group, q, np.ascontiguousarray(scales.T), z, None, "F32").dequantize()


class AwqScheme(SourceScheme):
    method = "awq"
    marker = "qweight"
    parts = ("qweight", "qzeros", "scales")
    appends = True  # as bitconv orders GPTQ's (llama.cpp's converter has no AWQ path to follow)

    def __init__(self, qc: dict[str, Any]) -> None:
        super().__init__(qc)
        self.bits = self.int_option("bits", 4)
        if self.bits != 4:
            raise self.refuse(f"bits {self.bits}", "4-bit AWQ")
        version = str(qc.get("version", "gemm")).lower()
        if version not in VERSIONS:
            raise self.refuse(f"version {qc.get('version')!r}", "the GEMM layout (version \"gemm\")")
        if qc.get("zero_point", True) is not True:
            raise self.refuse(f"zero_point {qc.get('zero_point')!r}", "AWQ with zero points (zero_point true)")
        self.int_option("group_size", -1)

    def summary(self) -> dict[str, Any]:
        g = self.qc.get("group_size", -1)
        return {"scheme": "awq", "bits": self.bits, "group size": "per channel" if g == -1 else g,
                "symmetric": "no (zero points)", "act-order": "no", "format": "gemm (interleaved nibbles)"}

    def layout(self, module: str, parts: dict[str, Any]) -> LinearLayout:
        qweight, qzeros, scales = parts["qweight"], parts["qzeros"], parts["scales"]
        for name in ("qweight", "qzeros", "scales"):
            if len(parts[name].shape) != 2:
                raise CheckpointError(f"{module}.{name}: shape {tuple(parts[name].shape)} is not 2-D")
        k, nw = qweight.shape
        n = nw * 8
        group = self.group_size(k)
        if k % group:
            raise CheckpointError(f"{module}.qweight: K = {k} is not a multiple of group_size {group}")
        expect(module, "qweight", qweight, ("I32",), None)
        expect(module, "scales", scales, SCALE_DTYPES, (k // group, n),
               f": {k // group} groups of {group} along K = {k}, N = 8 × {nw} (qweight {(k, nw)})")
        expect(module, "qzeros", qzeros, ("I32",), (k // group, nw))
        slices = {"qweight": PartSlice(1, 8, 1), "qzeros": PartSlice(1, 8, 1), "scales": PartSlice(1)}
        scale_dtype = scales.dtype

        def grid(arrays: dict[str, np.ndarray], lo: int, hi: int) -> IntGrid:
            q, z = unpack(arrays["qweight"], arrays["qzeros"])
            s = np.ascontiguousarray(scale_to_f32(arrays["scales"], scale_dtype).T)
            return IntGrid(4, group, q, s, z, None, scale_dtype)

        return LinearLayout((n, k), slices, lambda arrays, lo, hi: grid(arrays, lo, hi).dequantize(), grid=grid)
