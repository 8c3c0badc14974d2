"""GPTQ checkpoints (`quant_method: "gptq"`, AutoGPTQ / GPTQModel / optimum): dequantized as a source.

Stored per linear with input dimension K and N output rows (`<module>.` prefix):

- `qweight` int32 [K·bits/32, N]: codes packed along K, lowest bits first (2/4/8 bits: 32/bits codes
  per word; 3 bits: 32 codes in each run of 3 words, one little-endian 96-bit stream)
- `qzeros` int32 [G, N·bits/32]: zero points packed the same way along N
- `scales` f16 [G, N]
- `g_idx` int32 [K]: the group of each input column (`desc_act` / act-order: any order)

W[n, k] = scales[g_idx[k], n] · (q[k, n] − z[g_idx[k], n]), in float32. The "v1" format
(`checkpoint_format: "gptq"`, AutoGPTQ's and the hub's Qwen*-GPTQ-Int4/Int8) stores each zero point
minus one, so the reader adds 1 (a symmetric 4-bit model stores 7 for a zero point of 8);
`gptq_v2` stores it as it is. The format is read from `checkpoint_format` (transformers' and
llama.cpp's key), else GPTQModel's `format`; other layouts (marlin, bitblas, …) are refused.
Without `g_idx` (allowed only without desc_act) column k is in group k // group_size.

Reference: llama.cpp's converter, `conversion/base.py` `dequant_model` → `dequant_gptq` (itself after
GPTQModel's `nn_modules/qlinear/__init__.py` dequantize_weight): `(scales[g_idx].float() · (weight −
zeros[g_idx]).float()).T`, with `zeros += 1` unless `checkpoint_format` is `gptq_v2`. The product
of an f16 scale and an integer below 2^9 is exact in float32, so the result is the same bits however
it is ordered. 3 bits (which llama.cpp's converter refuses) unpack as GPTQModel's 3-bit
dequantize_weight does (the same 96-bit streams for qweight along K and qzeros along N).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CheckpointError
from .schemes import SCALE_DTYPES, IntGrid, LinearLayout, PartSlice, SourceScheme, expect, scale_to_f32, unpack_words

BITS = (2, 3, 4, 8)
#: checkpoint_format → zero-point offset added on reading
FORMATS = {"gptq": 1, "gptq_v2": 0}


def words_for(values: int, bits: int) -> int:
    """int32 words holding `values` codes (a multiple of 32 codes for 3 bits)."""
    return values * bits // 32


def unpack(qweight: np.ndarray, qzeros: np.ndarray, bits: int, zero_offset: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 [n, K], zero points float32 [n, G]) from qweight [K·bits/32, n] and qzeros
    [G, n·bits/32], the format's zero-point offset applied."""
    q = unpack_words(np.ascontiguousarray(qweight.T), bits, axis=1)  # [n, K]: the output's own layout
    z = unpack_words(qzeros, bits, axis=1).T.astype(np.float32)  # [n, G]; q − z is exact in float32
    z += zero_offset
    return q, z


def dequantize(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, g_idx: np.ndarray | None, bits: int,
               zero_offset: int, group: int = 0) -> np.ndarray:
    """float32 [n, K] from qweight [K·bits/32, n], qzeros [G, n·bits/32], scales [G, n] (float32) and
    g_idx [K] (in range; None: column k in group k // `group`, which is also taken when g_idx says so)."""
    q, z = unpack(qweight, qzeros, bits, zero_offset)
    k = q.shape[1]
    group = group or k
    plain = g_idx is None or np.array_equal(g_idx, np.arange(k) // group)
    return IntGrid(bits, group, q, np.ascontiguousarray(scales.T), z, None if plain else g_idx, "F32").dequantize()


class GptqScheme(SourceScheme):
    method = "gptq"
    marker = "qweight"
    parts = ("qweight", "qzeros", "scales", "g_idx")
    optional = ("g_idx",)
    appends = True  # llama.cpp's dequant_model adds `<module>.weight` after the stored tensors

    def __init__(self, qc: dict[str, Any]) -> None:
        super().__init__(qc)
        self.bits = self.int_option("bits")
        if self.bits not in BITS:
            raise self.refuse(f"bits {self.bits}", f"{', '.join(map(str, BITS))}-bit GPTQ")
        fmt = qc.get("checkpoint_format", qc.get("format", "gptq"))
        if not isinstance(fmt, str) or fmt not in FORMATS:
            raise self.refuse(f"checkpoint_format {fmt!r}", "gptq (v1) and gptq_v2")
        self.format = str(fmt)
        self.zero_offset = FORMATS[self.format]
        self.desc_act = bool(qc.get("desc_act", False))
        self.sym = bool(qc.get("sym", True))
        self.int_option("group_size", -1)  # an integer, checked now; its fit to K per linear

    def summary(self) -> dict[str, Any]:
        g = self.qc.get("group_size", -1)
        return {"scheme": "gptq", "bits": self.bits, "group size": "per channel" if g == -1 else g,
                "symmetric": "yes" if self.sym else "no (zero points)", "act-order": "yes (desc_act)" if self.desc_act else "no",
                "format": f"{self.format} ({'zero points stored minus 1' if self.zero_offset else 'zero points as they are'})"}

    def layout(self, module: str, parts: dict[str, Any]) -> LinearLayout:
        bits = self.bits
        qweight, qzeros, scales = parts["qweight"], parts["qzeros"], parts["scales"]
        for name in ("qweight", "qzeros", "scales"):
            if len(parts[name].shape) != 2:
                raise CheckpointError(f"{module}.{name}: shape {tuple(parts[name].shape)} is not 2-D")
        kw, n = qweight.shape
        k = kw * 32 // bits
        if bits == 3 and (kw % 3 or n % 32):
            raise CheckpointError(f"{module}.qweight: shape {(kw, n)}: 3-bit GPTQ packs 32 rows in 3 words "
                                  "(rows a multiple of 3, columns of 32)")
        if (n * bits) % 32:
            raise CheckpointError(f"{module}: {n} output rows cannot be packed in int32 qzeros at {bits} bits")
        group = self.group_size(k)
        n_groups = -(-k // group)
        expect(module, "qweight", qweight, ("I32",), None)
        expect(module, "scales", scales, SCALE_DTYPES, (n_groups, n),
               f": {n_groups} groups of {group} along K = {k} (qweight {tuple(qweight.shape)} at {bits} bits)")
        expect(module, "qzeros", qzeros, ("I32",), (n_groups, words_for(n, bits)))
        g_idx = parts.get("g_idx")
        if g_idx is not None:
            expect(module, "g_idx", g_idx, ("I32", "I64"), (k,))
        elif self.desc_act:
            raise CheckpointError(f"{module}: desc_act (act-order) is set but the checkpoint has no {module}.g_idx")
        per_word = 32 // bits if bits != 3 else 32
        zword = 1 if bits != 3 else 3
        slices = {"qweight": PartSlice(1), "qzeros": PartSlice(1, per_word, zword), "scales": PartSlice(1),
                  "g_idx": PartSlice(None)}
        zero_offset = self.zero_offset
        scale_dtype = scales.dtype

        def check(arrays: dict[str, np.ndarray]) -> None:
            idx = arrays.get("g_idx")
            if idx is not None and idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n_groups):
                bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
                raise CheckpointError(f"{module}.g_idx: group {bad} out of range (the scales hold {n_groups} groups)")

        def grid(arrays: dict[str, np.ndarray], lo: int, hi: int) -> IntGrid:
            idx = arrays.get("g_idx")
            idx = None if idx is None else idx.reshape(-1).astype(np.int64)
            q, z = unpack(arrays["qweight"], arrays["qzeros"], bits, zero_offset)
            s = np.ascontiguousarray(scale_to_f32(arrays["scales"], scale_dtype).T)
            plain = idx is None or np.array_equal(idx, np.arange(k) // group)  # no act-order (a last group may be short)
            return IntGrid(bits, group, q, s, z, None if plain else idx, scale_dtype)

        return LinearLayout((n, k), slices, lambda arrays, lo, hi: grid(arrays, lo, hi).dequantize(), [check], grid)
