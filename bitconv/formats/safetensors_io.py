"""Hugging Face safetensors checkpoints as output (`bitconv hf2st`).

Formats:

- ``bitnet-packed``: transformers' packed BitNet checkpoint (``quantization_config.quant_method:
  "bitnet"``, ``quantization_mode: "offline"``) from a BitNetForCausalLM checkpoint holding master
  weights or already packed weights. Every ternary linear becomes uint8 codes in transformers'
  layout (``pack_hf_packed``: [ceil(N/4), K]) plus a one-element float32 ``<name>_scale``
  (``weight_scale``): inv = 1/s for ``linear_class="bitlinear"`` (transformers divides by it), s for
  ``"autobitlinear"`` (it multiplies). Ternarization is the GGUF path's (``scale_for`` +
  ``ternarize``; a packed input keeps the scale it fixes). Every other tensor is copied as stored.

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

The weights are streamed one tensor at a time into temp files in a staging folder inside the output
folder (one model.safetensors, or ``model-0000i-of-0000N.safetensors`` shards plus
model.safetensors.index.json with ``max_shard_size``) and renamed into place with config.json and the
tokenizer files only when everything is written.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..convert.arch import mapping_for
from ..convert.arch.base import SourceTensor
from ..convert.checkpoint import Checkpoint, LazyTensor
from ..errors import OutputError, QuantizationError, UsageError
from ..quant.ternary import LINEAR_CLASSES, pack_hf_packed, scale_for, ternarize
from ..threads import shared_pool, thread_count
from .atomic import check_free_space, is_temp_name, staged_folder

FORMATS = ("bitnet-packed", "compressed-tensors", "bnb-nf4", "bnb-int8", "rounded")
MODEL_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_PATTERN = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
STAGE_PREFIX = ".st-stage.bitconv-tmp."
#: compressed-tensors weight types: --quant name → bits
CT_QUANTS = {"int4": 4, "int8": 8}
CT_DEFAULT_QUANT = "int4"
CT_DEFAULT_BLOCK = 128
#: the decoder-block linears llm-compressor quantizes with targets ["Linear"], ignore ["lm_head"]
CT_LINEAR = re.compile(r"(^|\.)layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")
#: the 2-D tensors that are not nn.Linear weights (or are the ignored lm_head): copied as stored
CT_DENSE_2D = re.compile(r"(^|\.)(embed_tokens|lm_head)\.weight$")
#: architectures whose transformers class reads the packed layout with HF tensor names unchanged
PACKED_ARCHITECTURES = ("BitNetForCausalLM",)

_ST_DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                  "BOOL": 1, "U16": 2, "U32": 4, "U64": 8}


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


@dataclass
class _OutTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    produce: Callable[[], bytes | memoryview | Iterable[memoryview]]  # its little-endian bytes, or them in pieces
    note: str = ""


def check_format(fmt: str) -> str:
    f = (fmt or "").lower()
    if f not in FORMATS:
        raise UsageError(f"unknown safetensors format {fmt!r}; valid: {', '.join(FORMATS)}")
    return f


_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]I?B)\s*$", re.IGNORECASE)


def parse_shard_size(value: str | int | None) -> int | None:
    """`--max-shard-size` in bytes: huggingface_hub's decimal units (KB, MB, GB, TB: powers of 1000,
    as save_pretrained reads them) plus binary KiB … TiB; an int is bytes. None: no sharding."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise UsageError(f"--max-shard-size {value!r}: expected a number and a unit, e.g. 500MB, 2GB, "
                             "1.5GiB (KB MB GB TB = powers of 1000; KiB MiB GiB TiB = powers of 1024)")
        n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
    if n <= 0:
        raise UsageError(f"--max-shard-size {value!r}: must be more than 0 bytes")
    return n


def split_shards(tensors: list[_OutTensor], max_bytes: int | None) -> list[list[_OutTensor]]:
    """Contiguous runs of the planned order, each at most `max_bytes` of tensor data (header not
    counted, as huggingface_hub's splitter counts it); a larger tensor gets a file of its own and a
    tensor is never split. Keeping the planned order keeps each producer's outputs in order."""
    if max_bytes is None:
        return [tensors]
    shards: list[list[_OutTensor]] = []
    cur: list[_OutTensor] = []
    size = 0
    for t in tensors:
        if cur and size + t.nbytes > max_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += t.nbytes
    if cur:
        shards.append(cur)
    return shards or [[]]


def shard_names(n: int) -> list[str]:
    """transformers' names: model.safetensors alone, else model-00001-of-0000N.safetensors …"""
    return [MODEL_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def shard_index(shards: list[list[_OutTensor]]) -> dict[str, Any]:
    """model.safetensors.index.json as save_pretrained writes it (total_parameters counts stored elements)."""
    names = shard_names(len(shards))
    return {"metadata": {"total_parameters": sum(math.prod(t.shape) for sh in shards for t in sh),
                         "total_size": sum(t.nbytes for sh in shards for t in sh)},
            "weight_map": {t.name: f for f, sh in zip(names, shards) for t in sh}}


# --- compressed-tensors pack-quantized -----------------------------------------------------------
#: torch.finfo(dtype).eps: calculate_qparams replaces a zero scale (an all-zero group) with it
_EPS = {"BF16": 2.0**-7, "F16": 2.0**-10, "F32": 2.0**-23}


def round_to_dtype(a: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values rounded (nearest even) to the source dtype and widened back: torch computes a
    bf16/f16 op in float32 and rounds the result, and a correctly rounded f32 quotient rounded again
    equals the correctly rounded bf16/f16 quotient (24 >= 2p + 2), so this reproduces it exactly."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "F32":
        return a
    if dtype == "F16":
        return a.astype(np.float16).astype(np.float32)
    bits = a.view(np.uint32)
    odd = bits >> np.uint32(16)
    odd &= np.uint32(1)
    odd += bits
    odd += np.uint32(0x7FFF)
    odd &= np.uint32(0xFFFF0000)
    return odd.view(np.float32)


def ct_quantize(w: np.ndarray, bits: int, group: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes int8 [rows, K], scales float32 [rows, K/group] holding `dtype` values) exactly as
    compressed-tensors computes them for a symmetric int group scheme (minmax observer +
    calculate_qparams + quantize): scale = max(|min(w, 0)|, max(w, 0)) / ((qmax - qmin) / 2), in the
    source dtype, 0 → eps; q = round_half_even(clamp(w / scale, qmin, qmax)) with w / scale rounded
    to the source dtype first (it is a bf16 op there)."""
    rows, k = w.shape
    g = np.asarray(w, dtype=np.float32).reshape(rows, k // group, group)
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    absmax = np.abs(g).max(axis=-1)  # = max(|min(w, 0)|, max(w, 0))
    scale = round_to_dtype(absmax / np.float32((qmax - qmin) / 2), dtype)
    scale[scale == 0] = np.float32(_EPS[dtype])
    x = round_to_dtype(g / scale[..., None], dtype)
    np.clip(x, qmin, qmax, out=x)
    return np.rint(x, out=x).astype(np.int8).reshape(rows, k), scale


def ct_dequantize(q: np.ndarray, scale: np.ndarray, dtype: str) -> np.ndarray:
    """What the package's decompression gives (q · scale in the source dtype), as float32."""
    rows, k = q.shape
    g = q.reshape(rows, scale.shape[1], -1).astype(np.float32) * scale[..., None].astype(np.float32)
    return round_to_dtype(g, dtype).reshape(rows, k)


def ct_pack(q: np.ndarray, bits: int) -> np.ndarray:
    """compressed-tensors' pack_to_int32 along the last dim: value + 2^(bits-1) at bit
    (i·bits mod 32) of word i·bits // 32, words little-endian; int32 [rows, ceil(K·bits/32)]. 4 and
    8 bits never straddle a byte, so the words are the bytes (two nibbles, low first) read as <u4."""
    per = 32 // bits
    rows, k = q.shape
    u = (q.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
    if k % per:
        u = np.pad(u, ((0, 0), (0, per - k % per)))
    if bits == 4:
        u = u[:, 0::2] | (u[:, 1::2] << np.uint8(4))
    return np.ascontiguousarray(u).view("<i4")


def ct_unpack(packed: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Inverse of `ct_pack`: int8 codes [rows, k]."""
    per = 32 // bits
    u = packed.view(np.uint32)[..., None] >> (np.arange(per, dtype=np.uint32) * np.uint32(bits))
    u = (u & np.uint32((1 << bits) - 1)).reshape(packed.shape[0], -1)[:, :k]
    return (u.astype(np.int32) - (1 << (bits - 1))).astype(np.int8)


_DTYPE_NP = {"F32": "<f4", "F16": "<f2"}
#: rows per chunk: float32 temporaries stay near 64 MiB for any tensor
_CHUNK_F32_BYTES = 64 * 2**20


def _store(a: np.ndarray, dtype: str) -> bytes:
    """Source-dtype values (held in float32) as their little-endian bytes."""
    if dtype == "BF16":
        return (np.ascontiguousarray(a, dtype=np.float32).view(np.uint32) >> np.uint32(16)).astype("<u2").tobytes()
    return np.ascontiguousarray(a).astype(_DTYPE_NP[dtype]).tobytes()


def _ct_producers(lt: LazyTensor, bits: int, group: int) -> tuple[Callable[[], bytes], Callable[[], bytes]]:
    """(weight_packed bytes, weight_scale bytes) of one linear; one computation serves both, in
    either order (a shard boundary may fall between them), row chunk by row chunk."""
    def compute() -> tuple[bytes, bytes]:
        w = lt.load()
        if not np.isfinite(w).all():
            raise QuantizationError(f"{lt.name}: non-finite weights; cannot quantize to int{bits}")
        rows, k = w.shape
        step = max(1, _CHUNK_F32_BYTES // (4 * k))
        packed, scales = [], []
        for r in range(0, rows, step):
            q, s = ct_quantize(w[r:r + step], bits, group, lt.dtype)
            packed.append(ct_pack(q, bits).astype("<i4").tobytes())
            scales.append(_store(s, lt.dtype))
        return b"".join(packed), b"".join(scales)

    weight, scale = _paired(compute)
    return weight, scale


def _paired(compute: Callable[[], tuple[bytes, bytes]]) -> tuple[Callable[[], bytes], Callable[[], bytes]]:
    """Two producers served by one computation, in either order (the two tensors sort apart and a
    shard boundary may fall between them); each part is dropped once written."""
    parts: dict[int, bytes] = {}
    computed = False
    lock = threading.Lock()  # the two may be produced on different worker threads

    def take(i: int) -> bytes:
        nonlocal computed
        with lock:
            if not computed:
                parts[0], parts[1] = compute()
                computed = True
            return parts.pop(i)

    return (lambda: take(0)), (lambda: take(1))


def _const_producer(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _copied_dense(lt: LazyTensor, what: str, architecture: str) -> _OutTensor:
    """A tensor a quantized layout keeps as stored (embeddings, norms, biases). Any other matrix is
    refused: the layout's config would claim it is quantized (or miss it), so copying is unsafe."""
    if len(lt.shape) > 2 or (len(lt.shape) == 2 and not CT_DENSE_2D.search(lt.name)):
        raise UsageError(f"{lt.name}: shape {tuple(lt.shape)} is not a decoder-block linear bitconv quantizes "
                         f"(q/k/v/o, gate/up/down) nor an embedding; {what} output supports dense decoder models, "
                         f"not {architecture}")
    nbytes = math.prod(lt.shape) * _ST_DTYPE_SIZE[lt.dtype]
    return _OutTensor(lt.name, lt.dtype, tuple(lt.shape), nbytes, _raw_producer(lt), "copied")


def _require_linears(n_linear: int, architecture: str) -> None:
    if not n_linear:
        raise UsageError(f"{architecture}: no decoder-block linears (model.layers.N.self_attn.q_proj …) to quantize")


def _quantized_linear(lt: LazyTensor, fmt: str) -> bool:
    """Whether a quantized layout stores `lt` as a quantized decoder linear (else it is copied);
    either way its dtype must be one the layout can hold."""
    if lt.dtype not in _ST_DTYPE_SIZE:
        raise UsageError(f"{lt.name}: dtype {lt.dtype} cannot be written to safetensors")
    if not CT_LINEAR.search(lt.name):
        return False
    if lt.dtype not in _TORCH_DTYPE:
        raise UsageError(f"{lt.name}: stored as {lt.dtype}; {fmt} output needs float (bf16, f16, f32) weights")
    return True


def plan_compressed_tensors(checkpoint: Checkpoint, quant: str, block_size: int) -> list[_OutTensor]:
    """Every output tensor in file order (safetensors' own: larger alignment first, then by name);
    no tensor data is read. Fails on a 2-D tensor it cannot place: with targets ["Linear"] every
    other nn.Linear would be expected packed too, so an unknown one must not be copied dense."""
    bits = CT_QUANTS[quant]
    out: list[_OutTensor] = []
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
            ssize = _ST_DTYPE_SIZE[lt.dtype]
            out.append(_OutTensor(prefix + "weight_packed", "I32", (rows, words), rows * words * 4, weight,
                                  f"int{bits}, group {block_size}, packed"))
            out.append(_OutTensor(prefix + "weight_scale", lt.dtype, (rows, k // block_size),
                                  rows * (k // block_size) * ssize, scale, "group scales"))
            out.append(_OutTensor(prefix + "weight_shape", "I64", (2,), 16,
                                  _const_producer(np.array([rows, k], dtype="<i8").tobytes()), "shape"))
            n_linear += 1
            continue
        out.append(_copied_dense(lt, "compressed-tensors", checkpoint.architecture))
    _require_linears(n_linear, checkpoint.architecture)
    out.sort(key=lambda t: (-_ST_DTYPE_SIZE[t.dtype], t.name))
    return out


def rounding_quantizer(name: str | None) -> Any:
    """The registered quantizer (typically a plugin) whose values a `rounded` checkpoint stores: it
    must store floats (ggml F32/F16) — its own rounding, which transformers then loads as weights."""
    from gguf import GGMLQuantizationType

    from ..quant.registry import get_quantizer

    if not name:
        raise UsageError("--format rounded needs --quant NAME: a registered quantizer that stores f32/f16 values")
    q = get_quantizer(name)
    if q.ggml_type not in (int(GGMLQuantizationType.F32), int(GGMLQuantizationType.F16)):
        raise UsageError(f"--format rounded stores float weights; {q.name} writes GGML type {q.ggml_type}, not "
                         "f32/f16 (use hf2gguf for it)")
    return q


def plan_rounded(checkpoint: Checkpoint, quant: str) -> list[_OutTensor]:
    """The checkpoint in its own layout with every decoder-block linear replaced by a quantizer's
    values (f16 or f32 as the quantizer stores them); everything else copied. transformers loads it
    as the plain model it is: the custom quantizer's rounding, deployable without bitconv."""
    from gguf import GGMLQuantizationType

    q = rounding_quantizer(quant)
    dtype = "F16" if q.ggml_type == int(GGMLQuantizationType.F16) else "F32"
    out: list[_OutTensor] = []
    for lt in checkpoint:
        if lt.dtype not in _ST_DTYPE_SIZE:
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

            nbytes = math.prod(lt.shape) * _ST_DTYPE_SIZE[dtype]
            out.append(_OutTensor(lt.name, dtype, tuple(lt.shape), nbytes, produce, f"rounded by {q.name}"))
            continue
        nbytes = math.prod(lt.shape) * _ST_DTYPE_SIZE[lt.dtype]
        out.append(_OutTensor(lt.name, lt.dtype, tuple(lt.shape), nbytes, _raw_producer(lt), "copied"))
    if not any(t.note.startswith("rounded") for t in out):
        raise UsageError(f"{checkpoint.architecture}: no decoder-block linears (model.layers.N.self_attn.q_proj …) "
                         "to round")
    out.sort(key=lambda t: (-_ST_DTYPE_SIZE[t.dtype], t.name))
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


# --- bitsandbytes (transformers' quant_method "bitsandbytes") -------------------------------------
#: --format → (weight type, transformers' BitsAndBytesConfig switch)
BNB_FORMATS = {"bnb-nf4": "nf4", "bnb-int8": "int8"}
#: quantize_4bit's blocksize as transformers calls it (BitsAndBytesConfig has no blocksize field)
BNB_BLOCK = 64
#: bitsandbytes.functional.get_4bit_type("nf4") (already within [-1, 1]), float32
NF4_CODE = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                     -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                     0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                     0.7229568362236023, 1.0], dtype=np.float32)
#: the default quantize_4bit kernel's bucket bounds: midpoints of the sorted code, in float32
NF4_BOUNDS = (NF4_CODE[:-1] + NF4_CODE[1:]) / np.float32(2)
_TORCH_DTYPE = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
_F16_MAX = 65504.0
#: safetensors' Dtype enum order (the file order sorts by it, descending, then by name)
_ST_DTYPE_RANK = {d: i for i, d in enumerate(("BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32",
                                              "F64", "I64", "U64"))}


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


def _bnb_producers(lt: LazyTensor, kind: str) -> list[Callable[[], bytes]]:
    """(weight, absmax) for nf4, (weight, SCB) for int8: one computation serves both, in either
    order (they sort apart and a shard boundary may fall between them), row chunk by row chunk
    (nf4 chunks hold whole 64-blocks, so blocks and nibble pairs fall as in the whole tensor)."""
    def compute() -> tuple[bytes, bytes]:
        w = lt.load()
        if not np.isfinite(w).all():
            raise QuantizationError(f"{lt.name}: non-finite weights; cannot quantize to {kind}")
        rows, k = w.shape
        step = max(1, _CHUNK_F32_BYTES // (4 * k))
        if kind == "nf4":
            unit = BNB_BLOCK // math.gcd(k, BNB_BLOCK)
            step = max(unit, step // unit * unit)
        else:
            big = float(np.abs(w).max()) if w.size else 0.0
            if big >= 65520.0:  # → inf in float16: bitsandbytes would write garbage codes
                raise QuantizationError(f"{lt.name}: |w| up to {big:g}; bnb-int8 quantizes through float16 "
                                        f"(as bitsandbytes does), which holds at most {_F16_MAX:g}")
        codes, stats = [], []
        for r in range(0, rows, step):
            chunk = np.asarray(w[r:r + step], dtype=np.float32)
            q, s = nf4_quantize(chunk) if kind == "nf4" else int8_quantize(chunk)
            codes.append(np.ascontiguousarray(q).tobytes())
            stats.append(s.astype("<f4").tobytes())
        return b"".join(codes), b"".join(stats)

    return list(_paired(compute))


def bnb_quant_state(shape: tuple[int, ...], dtype: str) -> bytes:
    """The packed quant_state.bitsandbytes__nf4 tensor: QuantState.as_dict(packed=True)'s
    pack_dict_to_tensor of the non-tensor items (json.dumps, default separators, utf-8)."""
    return json.dumps({"quant_type": "nf4", "blocksize": BNB_BLOCK, "dtype": _TORCH_DTYPE[dtype],
                       "shape": list(shape)}).encode("utf-8")


def _check_bnb_source(checkpoint: Checkpoint, fmt: str) -> None:
    cfg = checkpoint.config
    arch = checkpoint.architecture
    if cfg.get("quantization_config"):
        method = (cfg["quantization_config"] or {}).get("quant_method", "?")
        raise UsageError(f"{arch}: the source is already quantized ({method}); {fmt} needs a float checkpoint")
    text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    if any(text_cfg.get(k) for k in ("num_experts", "num_local_experts", "n_routed_experts")):
        raise UsageError(f"{arch} is a mixture-of-experts model; {fmt} output supports dense decoder models only")
    if arch in PACKED_ARCHITECTURES or getattr(mapping_for(checkpoint), "ternary_model", False):
        raise UsageError(f"{arch} is a ternary (BitNet) model; {fmt} output supports dense float decoder models "
                         "(use --format bitnet-packed)")


def plan_bnb(checkpoint: Checkpoint, fmt: str) -> list[_OutTensor]:
    """Every output tensor in file order (safetensors' own: larger alignment first, then by name);
    no tensor data is read. The decoder-block linears (q/k/v/o, gate/up/down) are quantized, as
    transformers' bnb quantizer replaces every nn.Linear except lm_head (and the output embedding
    it is tied to); any other 2-D tensor is refused rather than copied dense."""
    kind = BNB_FORMATS[fmt]
    _check_bnb_source(checkpoint, fmt)
    out: list[_OutTensor] = []
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
                    _OutTensor(lt.name, "U8", ((n + 1) // 2, 1), (n + 1) // 2, weight, f"nf4, block {BNB_BLOCK}"),
                    _OutTensor(lt.name + ".absmax", "F32", (nblocks,), 4 * nblocks, stats, "block absmax"),
                    _OutTensor(lt.name + ".quant_map", "F32", (16,), 64,
                               _const_producer(NF4_CODE.astype("<f4").tobytes()), "nf4 code"),
                    _OutTensor(lt.name + ".quant_state.bitsandbytes__nf4", "U8", (len(qs),), len(qs),
                               _const_producer(qs), "quant state (json)")]
            else:
                prefix = lt.name[:-len("weight")]
                out += [
                    _OutTensor(lt.name, "I8", (rows, k), rows * k, weight, "int8, row-wise absmax"),
                    _OutTensor(prefix + "SCB", "F32", (rows,), 4 * rows, stats, "row absmax"),
                    _OutTensor(prefix + "weight_format", "U8", (), 1, _const_producer(b"\x00"), "row")]
            n_linear += 1
            continue
        out.append(_copied_dense(lt, "bitsandbytes", checkpoint.architecture))
    _require_linears(n_linear, checkpoint.architecture)
    # safetensors' own order is its Dtype enum, descending, then the name: within one width I8
    # comes before U8 (int8 weights, then weight_format), so the file equals save_pretrained's byte for byte
    out.sort(key=lambda t: (-_ST_DTYPE_SIZE[t.dtype], -_ST_DTYPE_RANK.get(t.dtype, 0), t.name))
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


def _ternary_producer(st: SourceTensor, linear_class: str) -> tuple[Callable[[], bytes], Callable[[], bytes]]:
    """(packed codes bytes, weight_scale bytes) of one ternary linear: the scale is known only once
    the codes are computed, so both come from one computation."""
    def compute() -> tuple[bytes, bytes]:
        w = np.asarray(st.load(), dtype=np.float32)
        known = st.known_scale() if st.known_scale is not None else None
        scale = scale_for([w], known)
        packed = pack_hf_packed(ternarize(w, scale))
        ws = scale.inv if linear_class == "bitlinear" else scale.scale
        return np.ascontiguousarray(packed).tobytes(), np.array([ws], dtype="<f4").tobytes()

    return _paired(compute)


#: stored bytes read at a time when a tensor is copied as it is
SLAB_BYTES = 64 * 1024 * 1024


def _raw_producer(lt: LazyTensor) -> Callable[[], Iterable[memoryview]]:
    def produce() -> Iterator[memoryview]:
        """The stored bytes a slab of rows at a time: a large copied tensor (the embeddings) is
        never whole in memory."""
        n = lt.n_rows
        step = max(1, SLAB_BYTES * n // max(1, lt.nbytes))
        for lo in range(0, n, step):
            a = np.ascontiguousarray(lt.load_rows(lo, min(n, lo + step)))
            if a.dtype.byteorder == ">":
                a = a.byteswap().view(a.dtype.newbyteorder("<"))
            yield memoryview(a.reshape(-1).view(np.uint8))

    return produce


def plan_bitnet_packed(checkpoint: Checkpoint, linear_class: str) -> list[_OutTensor]:
    """Every output tensor (name, dtype, shape, bytes) in file order; no tensor data is read."""
    if linear_class not in LINEAR_CLASSES:
        raise UsageError(f"unknown --linear-class {linear_class!r}; valid: {', '.join(LINEAR_CLASSES)}")
    arch = checkpoint.architecture
    mapping = mapping_for(checkpoint)
    if not getattr(mapping, "ternary_model", False):
        raise UsageError(f"{arch} is not a ternary (BitNet b1.58) model; the bitnet-packed format holds "
                         "ternary weights only")
    if arch not in PACKED_ARCHITECTURES:
        raise UsageError(f"bitnet-packed output is available for {', '.join(PACKED_ARCHITECTURES)}, not {arch}")
    out: list[_OutTensor] = []
    names: set[str] = set()
    for st in mapping.tensors(checkpoint):
        mapping.check_shape(st)
        names.add(st.name)
        hf_name = st.hf_names[0] if st.hf_names else st.name
        if mapping.is_ternary_linear(st.name):
            n, k = st.shape
            if n % 4:
                raise QuantizationError(f"{hf_name}: {n} output rows; transformers' BitLinear needs a multiple "
                                        "of 4 for packed weights")
            weight, scale_bytes = _ternary_producer(st, linear_class)
            rows = -(-n // 4)
            out.append(_OutTensor(hf_name, "U8", (rows, k), rows * k, weight, "ternary, packed"))
            out.append(_OutTensor(hf_name + "_scale", "F32", (1,), 4, scale_bytes,
                                  "inv = 1/s" if linear_class == "bitlinear" else "s"))
        else:
            if len(st.sources) != 1 or st.decode is not None or st.combine is not None:
                raise UsageError(f"{hf_name}: not a plain stored tensor; cannot copy it into bitnet-packed")
            lt = st.sources[0]
            if lt.dtype not in _ST_DTYPE_SIZE:
                raise UsageError(f"{lt.name}: dtype {lt.dtype} cannot be written to safetensors")
            nbytes = math.prod(lt.shape) * _ST_DTYPE_SIZE[lt.dtype]
            out.append(_OutTensor(lt.name, lt.dtype, tuple(lt.shape), nbytes, _raw_producer(lt), "copied"))
    mapping.check_complete(names)
    # safetensors' own order: larger alignment first, then by name; the weight's codes are produced
    # before its scale (U8 sorts after F32), so order ternary weights before their scales explicitly
    out.sort(key=lambda t: (-_ST_DTYPE_SIZE[t.dtype], t.name))
    scales = [t for t in out if t.name.endswith("_scale") and t.note != "copied"]
    rest = [t for t in out if not (t.name.endswith("_scale") and t.note != "copied")]
    return rest + scales


def header_bytes(tensors: list[_OutTensor], metadata: dict[str, str] | None = None) -> bytes:
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw)) % 8)  # 8-byte aligned data start, as safetensors pads it
    return struct.pack("<Q", len(raw)) + raw


def _produced_in_order(tensors: list[_OutTensor]) -> Iterator[tuple[_OutTensor, Any]]:
    """Each tensor with its bytes, in file order. Computed tensors (quantized linears) are produced
    ahead on the worker pool, at most one per thread in flight, so `--threads` encodes several
    linears at once while the file is written in order; copied tensors stream as they are written."""
    pool = shared_pool()
    if pool is None:
        yield from ((t, t.produce()) for t in tensors)
        return
    window = thread_count()
    pending: dict[int, Future[Any]] = {}
    nxt = 0
    try:
        for i, t in enumerate(tensors):
            nxt = max(nxt, i)
            while nxt < len(tensors) and len(pending) < window:
                if tensors[nxt].note != "copied":
                    pending[nxt] = pool.submit(tensors[nxt].produce)
                nxt += 1
            yield t, (pending.pop(i).result() if i in pending else t.produce())
    finally:
        for f in pending.values():
            f.cancel()


def write_safetensors(path: Path, tensors: list[_OutTensor], *,
                      progress: Callable[[str, int], None] | None = None) -> int:
    """Stream the tensors into `path` (8-byte header length, JSON header, data); returns bytes written."""
    head = header_bytes(tensors, {"format": "pt"})
    total = len(head)
    with open(path, "wb") as f:
        f.write(head)
        for t, data in _produced_in_order(tensors):
            written = 0
            for piece in ([data] if isinstance(data, (bytes, bytearray, memoryview)) else data):
                f.write(piece)
                written += len(piece)
            if written != t.nbytes:
                raise QuantizationError(f"{t.name}: produced {written} bytes, expected {t.nbytes}")
            total += written
            if progress:
                progress(t.name, written)
    return total


def packed_config(config: dict[str, Any], linear_class: str) -> dict[str, Any]:
    cfg = dict(config)
    cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": linear_class,
                                  "quantization_mode": "offline"}
    return cfg


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
           on_start: Callable[[list[_OutTensor]], None] | None = None) -> SafetensorsResult:
    """Plan (no data read), then stream every tensor into staged files renamed into `folder`."""
    fmt = check_format(fmt)
    shard_bytes = parse_shard_size(max_shard_size)
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
    tok_files = checkpoint.tokenizer_files()
    data_bytes = sum(t.nbytes for t in tensors)
    files = names + ([INDEX_FILE] if len(shards) > 1 else []) + ["config.json"] + [p.name for p in tok_files]
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
        for p in tok_files:
            shutil.copyfile(p, stage / p.name)
        # tokenizer, weights, config, and the index last: it is what sends a loader to the shards
        commit([p.name for p in tok_files] + names + ["config.json"] + ([INDEX_FILE] if len(shards) > 1 else []))
        _remove_stale(folder, set(files))
    result.output_bytes = total
    result.seconds = time.perf_counter() - start
    return result


def export_bitnet_packed(checkpoint: Checkpoint, folder: Path, *, linear_class: str = "bitlinear",
                         source: str = "", force: bool = False, dry_run: bool = False,
                         progress: Callable[[str, int], None] | None = None,
                         on_start: Callable[[list[_OutTensor]], None] | None = None) -> SafetensorsResult:
    """The bitnet-packed export as one model.safetensors (kept for callers of the earlier API)."""
    return export(checkpoint, folder, "bitnet-packed", linear_class=linear_class, source=source, force=force,
                  dry_run=dry_run, progress=progress, on_start=on_start)
