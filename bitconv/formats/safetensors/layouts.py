"""The dense float decoder layouts (compressed-tensors, bitsandbytes, rounded): each plans its output
tensors (name, dtype, shape, bytes, producer) in file order without reading tensor data, and gives
the config.json transformers loads it with. Numerics come from quant/ (compressed.py, bnb.py); the
bytes are written by writer.py; bitnet-packed is bitnet_packed.py.

- ``compressed-tensors``: the "pack-quantized" layout that the compressed-tensors package (and so
  transformers and vLLM) reads, as llm-compressor writes W4A16 / W8A16: every decoder-block linear
  (q/k/v/o, gate/up/down) becomes ``weight_packed`` (int32, 32/bits values per word along the input
  dimension, value + 2^(bits-1) at bit i*bits), ``weight_scale`` ([out, in/group], the source
  dtype) and ``weight_shape`` (int64 [2]); symmetric per-group int4/int8 with the package's own
  arithmetic (``ct_quantize``). Embeddings, norms and lm_head are copied as stored.

- ``bnb-nf4`` / ``bnb-int8``: what transformers' save_pretrained writes for a model quantized on
  load with ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")`` /
  ``BitsAndBytesConfig(load_in_8bit=True)`` (``quant_method: "bitsandbytes"``), computed with
  bitsandbytes' own arithmetic in numpy: the same decoder-block linears become, for nf4, ``weight``
  (uint8 [N*K/2, 1], two NF4 codes a byte, high nibble first, over the flattened weight),
  ``weight.absmax`` (float32, one per 64-block), ``weight.quant_map`` (the 16 NF4 values) and
  ``weight.quant_state.bitsandbytes__nf4`` (the packed JSON quant state); for int8, ``weight``
  (int8 [N, K], row-wise absmax through float16), ``SCB`` (float32 [N]) and ``weight_format``
  (uint8 0, "row"). Biases, embeddings, norms and lm_head are copied as stored.

- ``rounded``: the checkpoint in its own layout with every decoder-block linear replaced by a
  registered quantizer's float values.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

import numpy as np

from ...convert.arch import mapping_for
from ...convert.checkpoint import Checkpoint, LazyTensor
from ...convert.quantization_config import source_scheme
from ...errors import QuantizationError, UsageError
from ...quant.bnb import BNB_BLOCK, NF4_CODE, int8_quantize, nf4_quantize
from ...quant.compressed import ct_pack, ct_quantize
from .bitnet_packed import PACKED_ARCHITECTURES
from .writer import ST_DTYPE_SIZE, OutTensor, const_producer, paired, raw_producer

#: compressed-tensors weight types: --quant name → bits
CT_QUANTS = {"int4": 4, "int8": 8}
CT_DEFAULT_QUANT = "int4"
CT_DEFAULT_BLOCK = 128
#: the decoder-block linears llm-compressor quantizes with targets ["Linear"], ignore ["lm_head"]
CT_LINEAR = re.compile(r"(^|\.)layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")
#: the 2-D tensors that are not nn.Linear weights (or are the ignored lm_head): copied as stored
CT_DENSE_2D = re.compile(r"(^|\.)(embed_tokens|lm_head)\.weight$")

_TORCH_DTYPE = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
_DTYPE_NP = {"F32": "<f4", "F16": "<f2"}
#: rows per chunk: float32 temporaries stay near 64 MiB for any tensor
_CHUNK_F32_BYTES = 64 * 2**20


def _store(a: np.ndarray, dtype: str) -> bytes:
    """Source-dtype values (held in float32) as their little-endian bytes."""
    if dtype == "BF16":
        return (np.ascontiguousarray(a, dtype=np.float32).view(np.uint32) >> np.uint32(16)).astype("<u2").tobytes()
    return np.ascontiguousarray(a).astype(_DTYPE_NP[dtype]).tobytes()


def _copied_dense(lt: LazyTensor, what: str, architecture: str) -> OutTensor:
    """A tensor a quantized layout keeps as stored (embeddings, norms, biases). Any other matrix is
    refused: the layout's config would claim it is quantized (or miss it), so copying is unsafe."""
    if len(lt.shape) > 2 or (len(lt.shape) == 2 and not CT_DENSE_2D.search(lt.name)):
        raise UsageError(f"{lt.name}: shape {tuple(lt.shape)} is not a decoder-block linear bitconv quantizes "
                         f"(q/k/v/o, gate/up/down) nor an embedding; {what} output supports dense decoder models, "
                         f"not {architecture}")
    nbytes = math.prod(lt.shape) * ST_DTYPE_SIZE[lt.dtype]
    return OutTensor(lt.name, lt.dtype, tuple(lt.shape), nbytes, raw_producer(lt), "copied")


def _require_linears(n_linear: int, architecture: str) -> None:
    if not n_linear:
        raise UsageError(f"{architecture}: no decoder-block linears (model.layers.N.self_attn.q_proj …) to quantize")


def _quantized_linear(lt: LazyTensor, fmt: str) -> bool:
    """Whether a quantized layout stores `lt` as a quantized decoder linear (else it is copied);
    either way its dtype must be one the layout can hold."""
    if lt.dtype not in ST_DTYPE_SIZE:
        raise UsageError(f"{lt.name}: dtype {lt.dtype} cannot be written to safetensors")
    if not CT_LINEAR.search(lt.name):
        return False
    if lt.dtype not in _TORCH_DTYPE:
        raise UsageError(f"{lt.name}: stored as {lt.dtype}; {fmt} output needs float (bf16, f16, f32) weights")
    return True


# --- compressed-tensors pack-quantized (numerics: quant/compressed.py) ----------------------------
def _row_chunked_pair(lt: LazyTensor, what: str, encode: Callable[[np.ndarray], tuple[bytes, bytes]], *,
                      unit: Callable[[int], int] = lambda k: 1, check: Callable[[np.ndarray], None] | None = None,
                      ) -> tuple[Callable[[], bytes], Callable[[], bytes]]:
    """The two stored tensors of one quantized linear (codes and their scales / statistics): one
    computation serves both, in either order (a shard boundary may fall between them). The weight
    is refused when not finite (or by `check`), then encoded a row chunk at a time (about
    _CHUNK_F32_BYTES of float32; chunks a multiple of `unit(K)` rows)."""
    def compute() -> tuple[bytes, bytes]:
        w = lt.load()
        if not np.isfinite(w).all():
            raise QuantizationError(f"{lt.name}: non-finite weights; cannot quantize to {what}")
        if check is not None:
            check(w)
        rows, k = w.shape
        step, rows_unit = max(1, _CHUNK_F32_BYTES // (4 * k)), unit(k)
        step = max(rows_unit, step // rows_unit * rows_unit)
        firsts, seconds = [], []
        for r in range(0, rows, step):
            a, b = encode(w[r:r + step])
            firsts.append(a)
            seconds.append(b)
        return b"".join(firsts), b"".join(seconds)

    return paired(compute)


def _ct_producers(lt: LazyTensor, bits: int, group: int) -> tuple[Callable[[], bytes], Callable[[], bytes]]:
    """(weight_packed bytes, weight_scale bytes) of one linear."""
    def encode(chunk: np.ndarray) -> tuple[bytes, bytes]:
        q, s = ct_quantize(chunk, bits, group, lt.dtype)
        return ct_pack(q, bits).astype("<i4").tobytes(), _store(s, lt.dtype)

    return _row_chunked_pair(lt, f"int{bits}", encode)


def plan_compressed_tensors(checkpoint: Checkpoint, quant: str, block_size: int) -> list[OutTensor]:
    """Every output tensor in file order (safetensors' own: larger alignment first, then by name);
    no tensor data is read. Fails on a 2-D tensor it cannot place: with targets ["Linear"] every
    other nn.Linear would be expected packed too, so an unknown one must not be copied dense."""
    bits = CT_QUANTS[quant]
    out: list[OutTensor] = []
    n_linear = 0
    for lt in checkpoint:
        if _quantized_linear(lt, "compressed-tensors"):
            rows, k = lt.shape
            if k % block_size:
                raise UsageError(f"{lt.name}: shape ({rows}, {k}) — --block-size {block_size} must divide the "
                                 f"input dimension {k}")
            prefix = lt.name[:-len("weight")]
            weight, scale = _ct_producers(lt, bits, block_size)
            words = -(-k * bits // 32)
            ssize = ST_DTYPE_SIZE[lt.dtype]
            out.append(OutTensor(prefix + "weight_packed", "I32", (rows, words), rows * words * 4, weight,
                                 f"int{bits}, group {block_size}, packed"))
            out.append(OutTensor(prefix + "weight_scale", lt.dtype, (rows, k // block_size),
                                 rows * (k // block_size) * ssize, scale, "group scales"))
            out.append(OutTensor(prefix + "weight_shape", "I64", (2,), 16,
                                 const_producer(np.array([rows, k], dtype="<i8").tobytes()), "shape"))
            n_linear += 1
            continue
        out.append(_copied_dense(lt, "compressed-tensors", checkpoint.architecture))
    _require_linears(n_linear, checkpoint.architecture)
    out.sort(key=lambda t: (-ST_DTYPE_SIZE[t.dtype], t.name))
    return out


def check_block_size(block_size: int) -> int:
    if block_size < 8 or block_size & (block_size - 1):
        raise UsageError(f"--block-size {block_size}: compressed-tensors group size must be a power of two, "
                         "at least 8 (e.g. 32, 64, 128)")
    return block_size


def ct_config(config: dict[str, Any], quant: str, block_size: int) -> dict[str, Any]:
    """config.json with the quantization_config llm-compressor writes for W4A16 / W8A16 (format
    pack-quantized, status compressed, lm_head left dense)."""
    weights = {"num_bits": CT_QUANTS[quant], "type": "int", "symmetric": True, "strategy": "group",
               "group_size": block_size, "block_structure": None, "dynamic": False, "actorder": None,
               "observer": "minmax", "observer_kwargs": {}}
    cfg = dict(config)
    cfg["quantization_config"] = {
        "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                      "output_activations": None, "format": "pack-quantized"}},
        "ignore": ["lm_head"], "kv_cache_scheme": None, "global_compression_ratio": None,
        "sparsity_config": {}, "transform_config": {}}
    return cfg


# --- rounded: a registered quantizer's float values ---------------------------------------------
def rounding_quantizer(name: str | None) -> Any:
    """The registered quantizer (typically a plugin) whose values a `rounded` checkpoint stores: it
    must store floats (ggml F32/F16) — its own rounding, which transformers then loads as weights."""
    from gguf import GGMLQuantizationType

    from ...quant.registry import get_quantizer

    if not name:
        raise UsageError("--format rounded needs --quant NAME: a registered quantizer that stores f32/f16 values")
    q = get_quantizer(name)
    if q.ggml_type not in (int(GGMLQuantizationType.F32), int(GGMLQuantizationType.F16)):
        raise UsageError(f"--format rounded stores float weights; {q.name} writes GGML type {q.ggml_type}, not "
                         "f32/f16 (use hf2gguf for it)")
    return q


def plan_rounded(checkpoint: Checkpoint, quant: str) -> list[OutTensor]:
    """The checkpoint in its own layout with every decoder-block linear replaced by a quantizer's
    values (f16 or f32 as the quantizer stores them); everything else copied. transformers loads it
    as the plain model it is: the custom quantizer's rounding, deployable without bitconv."""
    from gguf import GGMLQuantizationType

    q = rounding_quantizer(quant)
    dtype = "F16" if q.ggml_type == int(GGMLQuantizationType.F16) else "F32"
    out: list[OutTensor] = []
    for lt in checkpoint:
        if lt.dtype not in ST_DTYPE_SIZE:
            raise UsageError(f"{lt.name}: dtype {lt.dtype} cannot be written to safetensors")
        if CT_LINEAR.search(lt.name):
            def produce(lt: LazyTensor = lt) -> bytes:
                w = lt.load()
                state = q.prepare([w], lt.dtype) if q.needs_prepare else None
                try:
                    values = q.dequantize(q.quantize(w, state), tuple(w.shape))
                except Exception as e:  # a plugin's bug: name it and the tensor, write nothing
                    raise QuantizationError(f"{lt.name}: quantizer {q.name} failed: {type(e).__name__}: {e}") from None
                if tuple(np.shape(values)) != tuple(w.shape):
                    raise QuantizationError(f"{lt.name}: quantizer {q.name} returned shape {np.shape(values)}, "
                                            f"not {tuple(w.shape)}")
                return np.ascontiguousarray(values).astype(_DTYPE_NP[dtype]).tobytes()

            nbytes = math.prod(lt.shape) * ST_DTYPE_SIZE[dtype]
            out.append(OutTensor(lt.name, dtype, tuple(lt.shape), nbytes, produce, f"rounded by {q.name}"))
            continue
        nbytes = math.prod(lt.shape) * ST_DTYPE_SIZE[lt.dtype]
        out.append(OutTensor(lt.name, lt.dtype, tuple(lt.shape), nbytes, raw_producer(lt), "copied"))
    if not any(t.note.startswith("rounded") for t in out):
        raise UsageError(f"{checkpoint.architecture}: no decoder-block linears (model.layers.N.self_attn.q_proj …) "
                         "to round")
    out.sort(key=lambda t: (-ST_DTYPE_SIZE[t.dtype], t.name))
    return out


# --- bitsandbytes (transformers' quant_method "bitsandbytes") -------------------------------------
#: --format → (weight type, transformers' BitsAndBytesConfig switch)
BNB_FORMATS = {"bnb-nf4": "nf4", "bnb-int8": "int8"}
_F16_MAX = 65504.0
#: safetensors' Dtype enum order (the file order sorts by it, descending, then by name)
_ST_DTYPE_RANK = {d: i for i, d in enumerate(("BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32",
                                              "F64", "I64", "U64"))}


def _bnb_producers(lt: LazyTensor, kind: str) -> list[Callable[[], bytes]]:
    """(weight, absmax) for nf4, (weight, SCB) for int8 (nf4 chunks hold whole 64-blocks, so blocks
    and nibble pairs fall as in the whole tensor)."""
    def encode(chunk: np.ndarray) -> tuple[bytes, bytes]:
        q, s = nf4_quantize(np.asarray(chunk, dtype=np.float32)) if kind == "nf4" else \
            int8_quantize(np.asarray(chunk, dtype=np.float32))
        return np.ascontiguousarray(q).tobytes(), s.astype("<f4").tobytes()

    def fits_float16(w: np.ndarray) -> None:
        big = float(np.abs(w).max()) if w.size else 0.0
        if big >= 65520.0:  # → inf in float16: bitsandbytes would write garbage codes
            raise QuantizationError(f"{lt.name}: |w| up to {big:g}; bnb-int8 quantizes through float16 "
                                    f"(as bitsandbytes does), which holds at most {_F16_MAX:g}")

    if kind == "nf4":
        return list(_row_chunked_pair(lt, kind, encode, unit=lambda k: BNB_BLOCK // math.gcd(k, BNB_BLOCK)))
    return list(_row_chunked_pair(lt, kind, encode, check=fits_float16))


def bnb_quant_state(shape: tuple[int, ...], dtype: str) -> bytes:
    """The packed quant_state.bitsandbytes__nf4 tensor: QuantState.as_dict(packed=True)'s
    pack_dict_to_tensor of the non-tensor items (json.dumps, default separators, utf-8)."""
    return json.dumps({"quant_type": "nf4", "blocksize": BNB_BLOCK, "dtype": _TORCH_DTYPE[dtype],
                       "shape": list(shape)}).encode("utf-8")


def _check_bnb_source(checkpoint: Checkpoint, fmt: str) -> None:
    cfg = checkpoint.config
    arch = checkpoint.architecture
    if cfg.get("quantization_config") and source_scheme(cfg) is None:  # packed BitNet: not dequantized here
        method = (cfg["quantization_config"] or {}).get("quant_method", "?")
        raise UsageError(f"{arch}: the source is already quantized ({method}); {fmt} needs a float checkpoint "
                         "or one bitconv dequantizes (GPTQ, AWQ, FP8, compressed-tensors, bitsandbytes)")
    text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    if any(text_cfg.get(k) for k in ("num_experts", "num_local_experts", "n_routed_experts")):
        raise UsageError(f"{arch} is a mixture-of-experts model; {fmt} output supports dense decoder models only")
    if arch in PACKED_ARCHITECTURES or getattr(mapping_for(checkpoint), "ternary_model", False):
        raise UsageError(f"{arch} is a ternary (BitNet) model; {fmt} output supports dense float decoder models "
                         "(use --format bitnet-packed)")


def plan_bnb(checkpoint: Checkpoint, fmt: str) -> list[OutTensor]:
    """Every output tensor in file order (safetensors' own: larger alignment first, then by name);
    no tensor data is read. The decoder-block linears (q/k/v/o, gate/up/down) are quantized, as
    transformers' bnb quantizer replaces every nn.Linear except lm_head (and the output embedding
    it is tied to); any other 2-D tensor is refused rather than copied dense."""
    kind = BNB_FORMATS[fmt]
    _check_bnb_source(checkpoint, fmt)
    out: list[OutTensor] = []
    n_linear = 0
    for lt in checkpoint:
        if _quantized_linear(lt, fmt):
            rows, k = lt.shape
            weight, stats = _bnb_producers(lt, kind)
            if kind == "nf4":
                n = rows * k
                nblocks = -(-n // BNB_BLOCK)
                qs = bnb_quant_state((rows, k), lt.dtype)
                out += [
                    OutTensor(lt.name, "U8", ((n + 1) // 2, 1), (n + 1) // 2, weight, f"nf4, block {BNB_BLOCK}"),
                    OutTensor(lt.name + ".absmax", "F32", (nblocks,), 4 * nblocks, stats, "block absmax"),
                    OutTensor(lt.name + ".quant_map", "F32", (16,), 64,
                              const_producer(NF4_CODE.astype("<f4").tobytes()), "nf4 code"),
                    OutTensor(lt.name + ".quant_state.bitsandbytes__nf4", "U8", (len(qs),), len(qs),
                              const_producer(qs), "quant state (json)")]
            else:
                prefix = lt.name[:-len("weight")]
                out += [
                    OutTensor(lt.name, "I8", (rows, k), rows * k, weight, "int8, row-wise absmax"),
                    OutTensor(prefix + "SCB", "F32", (rows,), 4 * rows, stats, "row absmax"),
                    OutTensor(prefix + "weight_format", "U8", (), 1, const_producer(b"\x00"), "row")]
            n_linear += 1
            continue
        out.append(_copied_dense(lt, "bitsandbytes", checkpoint.architecture))
    _require_linears(n_linear, checkpoint.architecture)
    # safetensors' own order is its Dtype enum, descending, then the name: within one width I8
    # comes before U8 (int8 weights, then weight_format), so the file equals save_pretrained's byte for byte
    out.sort(key=lambda t: (-ST_DTYPE_SIZE[t.dtype], -_ST_DTYPE_RANK.get(t.dtype, 0), t.name))
    return out


def bnb_config(checkpoint: Checkpoint, fmt: str) -> dict[str, Any]:
    """config.json with the quantization_config save_pretrained writes for BitsAndBytesConfig(
    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=<the linears' dtype>) or
    BitsAndBytesConfig(load_in_8bit=True) (BitsAndBytesConfig.to_dict, defaults included)."""
    nf4 = BNB_FORMATS[fmt] == "nf4"
    dtypes = [lt.dtype for lt in checkpoint if CT_LINEAR.search(lt.name)]
    compute = _TORCH_DTYPE.get(dtypes[0], "float32") if nf4 and dtypes else "float32"
    cfg = dict(checkpoint.config)
    cfg["quantization_config"] = {
        "_load_in_4bit": nf4, "_load_in_8bit": not nf4, "bnb_4bit_compute_dtype": compute,
        "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4" if nf4 else "fp4",
        "bnb_4bit_use_double_quant": False, "llm_int8_enable_fp32_cpu_offload": False,
        "llm_int8_has_fp16_weight": False, "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0,
        "load_in_4bit": nf4, "load_in_8bit": not nf4, "quant_method": "bitsandbytes"}
    return cfg
