"""bitsandbytes' 4-bit (NF4 / FP4, blocks over the flattened weight, optionally double-quantized
absmax) and LLM.int8 (row-wise absmax) weight schemes, both directions, with the codes and
statistics bitsandbytes' own kernels give (tests compare them): the safetensors writer lays NF4
and int8 out as transformers saves a bnb model; validate and the quantized-checkpoint sources
(`quant_method: "bitsandbytes"`, Bnb4bitScheme / BnbInt8Scheme) decode them.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable

import numpy as np

from ..errors import CheckpointError
from .schemes import LinearLayout, PartSlice, SourceScheme, expect

#: quantize_4bit's blocksize as transformers calls it (BitsAndBytesConfig has no blocksize field)
BNB_BLOCK = 64
#: bitsandbytes.functional.get_4bit_type("nf4") (already within [-1, 1]), float32
NF4_CODE = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                     -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                     0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                     0.7229568362236023, 1.0], dtype=np.float32)
#: the default quantize_4bit kernel's bucket bounds: midpoints of the sorted code, in float32
NF4_BOUNDS = (NF4_CODE[:-1] + NF4_CODE[1:]) / np.float32(2)

def nf4_quantize(flat: np.ndarray, block: int = BNB_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(packed uint8 [ceil(n/2)], absmax float32 [ceil(n/block)]) of a flat run of weights, as
    bitsandbytes' quantize_4bit (the default/CPU kernel) computes them: blocks of `block` over the
    row-major flattened tensor (a last partial block gets its own absmax), scaled = clamp(x ·
    float32(1 / max(absmax, 1e-38)), -1, 1) (x / absmax for the partial block), code = the first
    NF4 midpoint ≥ scaled (torch.bucketize, right=False), two codes a byte, the first in the high nibble."""
    a = np.asarray(flat, dtype=np.float32).reshape(-1)
    n = a.size
    full = n - n % block
    g = a[:full].reshape(-1, block)
    absmax = np.abs(g).max(axis=1) if full else np.zeros(0, np.float32)
    inv = np.float32(1) / np.maximum(absmax, np.float32(1e-38))
    scaled = np.clip(g * inv[:, None], -1, 1).reshape(-1)
    if n % block:
        am = np.abs(a[full:]).max()
        absmax = np.append(absmax, am).astype(np.float32)
        scaled = np.concatenate([scaled, np.clip(a[full:] / max(am, np.float32(1e-38)), -1, 1)])
    if scaled.size % 2:
        scaled = np.append(scaled, np.float32(0))
    q = np.zeros(scaled.size, dtype=np.uint8)
    for b in NF4_BOUNDS:  # the number of bounds < scaled = searchsorted(side="left"), ~8x faster
        q += scaled > b
    return (q[0::2] << np.uint8(4)) | q[1::2], absmax.astype(np.float32)


def nf4_dequantize(packed: np.ndarray, absmax: np.ndarray, shape: tuple[int, ...],
                   block: int = BNB_BLOCK) -> np.ndarray:
    """dequantize_4bit (float32): code[nibble] · absmax of its block."""
    p = np.asarray(packed, dtype=np.uint8).reshape(-1)
    q = np.empty(p.size * 2, dtype=np.uint8)
    q[0::2], q[1::2] = p >> np.uint8(4), p & np.uint8(15)
    n = math.prod(shape)
    v = NF4_CODE[q[:n]] * np.repeat(np.asarray(absmax, np.float32), block)[:n]
    return v.reshape(shape)


def int8_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 [rows, K], SCB float32 [rows]) as Int8Params quantizes a weight: cast to float16,
    SCB = row absmax, q = round_half_even(x · float32(float32(1 / SCB) · 127)) (torch evaluates
    ``127.0 / SCB`` as reciprocal(SCB) · 127, which differs from the quotient in the last bit, and
    that decides exact-half ties); an all-zero row gives 0 codes
    (torch turns its NaN into 0 as well). Non-finite float16 values are refused by the caller."""
    b = np.asarray(w).astype(np.float16).astype(np.float32)
    scb = np.abs(b).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = b * ((np.float32(1) / scb) * np.float32(127.0))[:, None]  # torch's 127.0 / t is reciprocal(t) * 127
    x[scb == 0] = 0
    return np.rint(x).astype(np.int8), scb.astype(np.float32)


def int8_dequantize(q: np.ndarray, scb: np.ndarray) -> np.ndarray:
    """int8_vectorwise_dequant (float32): (q · SCB) · float32(1/127), in that order."""
    return (q.astype(np.float32) * np.asarray(scb, np.float32)[:, None]) * np.float32(7.874015718698502e-3)


# --- reading: 4-bit (NF4 / FP4, double quant) and LLM.int8 as conversion sources ------------------

#: bitsandbytes.functional.get_4bit_type("fp4"): sign, 2 exponent bits, 1 mantissa bit, in code
#: (bit-pattern) order, divided by its largest magnitude (12) in float32. Code 0b1000 is +0, as in
#: that table and the default kernel's output (bitsandbytes 0.50's CPU library gives −0 for it on
#: some shapes, +0 on transformers' checkpoints)
FP4_CODE = np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3],
                    dtype=np.float32) / np.float32(12)
CODES_4BIT = {"nf4": NF4_CODE, "fp4": FP4_CODE}
#: the block sizes dequantize_4bit accepts
BLOCKS_4BIT = (32, 64, 128, 256, 512, 1024, 2048, 4096)
#: quant-state dtype → the safetensors name of the float type dequantize_4bit returns
STATE_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def round_to(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values rounded to F32 / BF16 / F16 (round to nearest even, as torch's casts and
    bitsandbytes' CPU kernels round) and widened back to float32, exactly."""
    if dtype == "F16":
        return values.astype(np.float16).astype(np.float32)
    if dtype == "BF16":
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
        nan = np.isnan(values)
        r = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
        r[nan] = (bits[nan] | np.uint32(0x00400000)) & np.uint32(0xFFFF0000)  # a NaN stays a (quiet) NaN
        return r.view(np.float32)
    return values


def dequantize_blockwise(codes: np.ndarray, absmax: np.ndarray, code: np.ndarray, block: int,
                         first: int = 0) -> np.ndarray:
    """bitsandbytes' 8-bit blockwise dequantization (the double-quant absmax): code[q] · absmax of
    the block, float32; `first` is the index of codes[0] in the whole array (its block is
    (first + i) // block), `absmax` the whole array's."""
    idx = (first + np.arange(codes.size)) // block
    return code[codes.reshape(-1)] * absmax[idx]


def dequantize_4bit(packed: np.ndarray, absmax: np.ndarray, code: np.ndarray, block: int, count: int,
                    dtype: str = "F32") -> np.ndarray:
    """`count` values (float32, rounded to `dtype`) from packed nibbles (high nibble first) and the
    absmax (float32) of their blocks; the first value starts a block. Blocks run over the row-major
    flattened tensor, as quantize_4bit writes them and its CUDA and default (torch) kernels read them."""
    p = np.asarray(packed, dtype=np.uint8).reshape(-1)[:(count + 1) // 2]
    q = np.empty(p.size * 2, dtype=np.uint8)
    q[0::2], q[1::2] = p >> np.uint8(4), p & np.uint8(15)
    v = code[q[:count]]
    full = count - count % block
    v[:full].reshape(-1, block)[...] *= absmax[:full // block, None]
    if full < count:
        v[full:] *= absmax[full // block]
    return round_to(v, dtype)


def parse_quant_state(module: str, raw: np.ndarray, key_type: str) -> dict[str, Any]:
    """The packed quant state (`weight.quant_state.bitsandbytes__<type>`: QuantState.as_dict(packed=
    True)'s JSON of the non-tensor items, as uint8) as a checked dict; json only, never pickle."""
    where = f"{module}.weight.quant_state.bitsandbytes__{key_type}"
    try:
        state = json.loads(np.asarray(raw, dtype=np.uint8).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{where}: not a bitsandbytes quant state (JSON): {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: not a bitsandbytes quant state (a JSON {type(state).__name__}, not an object)")

    def field(key: str, ok: Callable[[Any], bool], want: str) -> Any:
        v = state.get(key)
        if not ok(v):
            raise CheckpointError(f"{where}: {key} {v!r} (expects {want})")
        return v

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    field("quant_type", lambda v: v == key_type, f"{key_type!r}, as the tensor's name says")
    field("blocksize", lambda v: v in BLOCKS_4BIT and is_int(v), " / ".join(map(str, BLOCKS_4BIT)))
    field("dtype", lambda v: v in STATE_DTYPES, " / ".join(STATE_DTYPES))
    field("shape", lambda v: isinstance(v, list) and len(v) == 2 and all(is_int(x) and x > 0 for x in v),
          "[out_features, in_features]")
    if "nested_blocksize" in state or "nested_offset" in state:
        field("nested_blocksize", lambda v: is_int(v) and v > 0, "a positive integer")
        field("nested_dtype", lambda v: v == "float32", "'float32'")
        field("nested_offset", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
              "a finite number")
    return state


class Bnb4bitScheme(SourceScheme):
    """transformers' `BitsAndBytesConfig(load_in_4bit=True)` checkpoints: NF4 or FP4 codes in blocks
    over the row-major flattened weight, with or without double quantization of the absmax.

    Stored per linear (`<module>.weight` prefix): the weight as packed uint8 [⌈N·K/2⌉, 1] (two codes
    a byte, high nibble first), `.absmax` (float32 [⌈N·K/blocksize⌉]; with double quant uint8 codes
    of `absmax − nested_offset` in 8-bit blockwise dynamic quantization, with `.nested_absmax` and
    `.nested_quant_map`), `.quant_map` (the 16-value code) and `.quant_state.bitsandbytes__<nf4|fp4>`
    (JSON: quant_type, blocksize, dtype, shape, and the nested items).

    The float value of the source is what transformers' `dequantize()` gives (bitsandbytes'
    dequantize_4bit): code · absmax in float32, rounded to the quant state's dtype (bf16 / f16 /
    f32) — bitconv widens that to float32 exactly. The codes are bitsandbytes' fixed NF4 / FP4
    tables (which dequantize_4bit uses, not the stored quant_map: a quant_map that differs is refused).
    A slab of rows maps to a range of blocks: slabs are whole multiples of blocksize / gcd(K,
    blocksize) rows, so no block is split. Blocks run over the flattened weight as quantize_4bit
    writes them and its CUDA and default kernels read them (bitsandbytes 0.50's AVX-512 CPU kernel
    indexes absmax per row when the block size does not divide K; transformers' 64 always does for
    real models). The quant state is parsed as JSON only (bitconv never unpickles).
    """

    method = "bitsandbytes"
    marker = "weight.absmax"
    parts = ("weight", "weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map",
             *(f"weight.quant_state.bitsandbytes__{t}" for t in CODES_4BIT))
    optional = ("weight.nested_absmax", "weight.nested_quant_map",
                *(f"weight.quant_state.bitsandbytes__{t}" for t in CODES_4BIT))
    appends = False  # the dequantized weight takes the packed weight's place
    code_dtypes = ("U8",)

    def __init__(self, qc: dict[str, Any]) -> None:
        super().__init__(qc)
        self.quant_type = str(qc.get("bnb_4bit_quant_type", "fp4"))
        if self.quant_type not in CODES_4BIT:
            raise self.refuse(f"bnb_4bit_quant_type {self.quant_type!r}", "nf4 and fp4")
        storage = qc.get("bnb_4bit_quant_storage", "uint8")
        if storage != "uint8":
            raise self.refuse(f"bnb_4bit_quant_storage {storage!r}", "uint8 storage")
        self.double = bool(qc.get("bnb_4bit_use_double_quant", False))

    def weight_type(self, module: str) -> str:
        return self.quant_type

    def summary(self) -> dict[str, Any]:
        skip = self.qc.get("llm_int8_skip_modules")
        return {"scheme": f"bitsandbytes {self.quant_type}", "bits": 4,
                "group size": "blocks of the flattened weight (size in each quant state)",
                "double quant": "yes (8-bit absmax)" if self.double else "no",
                "compute dtype": self.qc.get("bnb_4bit_compute_dtype", "float32"),
                "skipped": ", ".join(map(str, skip)) if skip else "lm_head (transformers' default)"}

    def layout(self, module: str, parts: dict[str, Any]) -> LinearLayout:
        states = [t for t in CODES_4BIT if f"weight.quant_state.bitsandbytes__{t}" in parts]
        if len(states) != 1:
            raise CheckpointError(f"{module}: bitsandbytes weight.absmax with "
                                  + ("no weight.quant_state.bitsandbytes__nf4 / __fp4" if not states
                                     else "both an nf4 and an fp4 quant state"))
        qtype = states[0]
        if qtype != self.quant_type:
            raise CheckpointError(f"{module}.weight.quant_state.bitsandbytes__{qtype}: {qtype}, but "
                                  f"quantization_config says bnb_4bit_quant_type {self.quant_type!r}")
        state = parse_quant_state(module, parts[f"weight.quant_state.bitsandbytes__{qtype}"].load_raw(), qtype)
        n, k = state["shape"]
        block, dtype = int(state["blocksize"]), STATE_DTYPES[state["dtype"]]
        n_blocks = -(-n * k // block)
        expect(module, "weight", parts["weight"], ("U8",), ((n * k + 1) // 2, 1),
               f": {n}×{k} 4-bit codes (quant state shape)")
        nested = "nested_blocksize" in state
        have = [p for p in ("weight.nested_absmax", "weight.nested_quant_map") if p in parts]
        if nested != bool(have) or (nested and len(have) != 2):
            holds = f"holds only {module}.{have[0]}" if len(have) == 1 else \
                "holds both" if have else "holds neither weight.nested_absmax nor weight.nested_quant_map"
            raise CheckpointError(f"{module}: the quant state {'has' if nested else 'has no'} double-quant items "
                                  f"(nested_blocksize, nested_offset) but the checkpoint {holds}")
        expect(module, "weight.absmax", parts["weight.absmax"], ("U8",) if nested else ("F32",), (n_blocks,),
               f": {n_blocks} blocks of {block} over {n}×{k}")
        expect(module, "weight.quant_map", parts["weight.quant_map"], ("F32",), (16,))
        code = CODES_4BIT[qtype]
        if not np.array_equal(parts["weight.quant_map"].load_raw().reshape(-1), code):
            raise CheckpointError(f"{module}.weight.quant_map: not bitsandbytes' {qtype} code (its dequantize_4bit "
                                  "uses the fixed table, so the stored map would be ignored)")
        if nested:
            nb = int(state["nested_blocksize"])
            expect(module, "weight.nested_absmax", parts["weight.nested_absmax"], ("F32",), (-(-n_blocks // nb),),
                   f": {n_blocks} absmax values in blocks of {nb}")
            expect(module, "weight.nested_quant_map", parts["weight.nested_quant_map"], ("F32",), (256,))
            offset = np.float32(state["nested_offset"])
        unit = block // math.gcd(k, block)  # rows that hold whole blocks (and whole bytes: block is even)
        # the packed bytes and absmax entries of those rows are sliced; the rest is small, read whole
        slices = {p: PartSlice(None) for p in parts}
        slices["weight"] = PartSlice(0, unit, unit * k // 2)
        slices["weight.absmax"] = PartSlice(0, unit, unit * k // block)

        def run(arrays: dict[str, np.ndarray], lo: int, hi: int) -> np.ndarray:
            absmax = arrays["weight.absmax"].reshape(-1)
            if nested:
                absmax = dequantize_blockwise(absmax, arrays["weight.nested_absmax"].reshape(-1),
                                              arrays["weight.nested_quant_map"].reshape(-1), nb, lo * k // block)
                absmax += offset
            return dequantize_4bit(arrays["weight"], absmax, code, block, (hi - lo) * k, dtype).reshape(hi - lo, k)

        return LinearLayout((n, k), slices, run)


class BnbInt8Scheme(SourceScheme):
    """transformers' `BitsAndBytesConfig(load_in_8bit=True)` (LLM.int8) checkpoints: `<module>.weight`
    int8 [N, K], `<module>.SCB` float32 [N] (row absmax) and `<module>.weight_format` (0: "row", the
    only layout bitsandbytes loads). The float value is transformers' dequantization
    (int8_vectorwise_dequant): (q · SCB) · float32(1/127), in float32. The outlier threshold
    (llm_int8_threshold) concerns activations at inference, not the stored weights."""

    method = "bitsandbytes"
    marker = "SCB"
    parts = ("weight", "SCB", "weight_format")
    optional = ("weight_format",)
    appends = False
    code_dtypes = ("I8",)

    def summary(self) -> dict[str, Any]:
        skip = self.qc.get("llm_int8_skip_modules")
        return {"scheme": "bitsandbytes LLM.int8", "bits": 8, "group size": "per row (SCB absmax)",
                "symmetric": "yes", "skipped": ", ".join(map(str, skip)) if skip else "lm_head (transformers' default)"}

    def layout(self, module: str, parts: dict[str, Any]) -> LinearLayout:
        weight = parts["weight"]
        if len(weight.shape) != 2:
            raise CheckpointError(f"{module}.weight: shape {tuple(weight.shape)} is not 2-D")
        n, k = weight.shape
        expect(module, "weight", weight, ("I8",), None)
        expect(module, "SCB", parts["SCB"], ("F32",), (n,), f": one absmax per row of {module}.weight {(n, k)}")
        if "weight_format" in parts:
            fmt = parts["weight_format"].load_raw().reshape(-1)
            if fmt.size != 1 or int(fmt[0]) != 0:
                raise CheckpointError(f"{module}.weight_format: {fmt.tolist()} (bitsandbytes loads only 0, \"row\")")
        slices = {"weight": PartSlice(0), "SCB": PartSlice(0), "weight_format": PartSlice(None)}
        slices = {p: s for p, s in slices.items() if p in parts}

        def run(arrays: dict[str, np.ndarray], lo: int, hi: int) -> np.ndarray:
            return int8_dequantize(arrays["weight"], arrays["SCB"].reshape(-1))

        return LinearLayout((n, k), slices, run)


def bnb_scheme(qc: dict[str, Any]) -> SourceScheme:
    """The reader of a `quant_method: "bitsandbytes"` checkpoint: 4-bit or LLM.int8, as its
    quantization_config says (load_in_4bit / load_in_8bit)."""
    four, eight = bool(qc.get("load_in_4bit")), bool(qc.get("load_in_8bit"))
    if four == eight:
        raise CheckpointError("bitsandbytes quantization_config: expects exactly one of load_in_4bit and load_in_8bit "
                              f"(has load_in_4bit {qc.get('load_in_4bit')!r}, load_in_8bit {qc.get('load_in_8bit')!r})")
    return Bnb4bitScheme(qc) if four else BnbInt8Scheme(qc)
