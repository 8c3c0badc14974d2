"""ONNX decoder graphs for ONNX Runtime (CPU EP), written directly with `onnx.helper` (no torch).

One folder per export: `model.onnx` (the graph) + `model.onnx.data` (every checkpoint tensor as
external data, streamed one tensor at a time), the tokenizer files and `genai_config.json` (the
onnxruntime-genai decoder format), all written into a temp folder inside the output folder and
renamed into place only when complete.

Graph IO (the names onnxruntime-genai and optimum use): `input_ids` [batch, seq] int64,
`attention_mask` [batch, total_seq] int64, `position_ids` [batch, seq] int64,
`past_key_values.{i}.key/value` [batch, n_kv_heads, past_seq, head_dim] → `logits`
[batch, seq, vocab] float32, `present.{i}.key/value` [batch, n_kv_heads, total_seq, head_dim].
A prompt runs with past_seq = 0; each decode step feeds the previous step's presents back.

Numerics, following transformers' eager forward op for op:
- RMSNorm in float32 (x · 1/sqrt(mean(x²) + eps)), cast back to the compute dtype, times the weight;
- NeoX RoPE (rotate halves) from `position_ids` · inv_freq in float32;
- attention with standard ops (MatMul / Softmax), grouped query heads broadcast without copying
  K/V, a causal + padding mask built once from `attention_mask` (key j is visible to query i iff
  j ≤ past_seq + i and attention_mask[j] = 1); scores and softmax in float32;
- BitNet (BitNetForCausalLM): attn_sub_norm before o_proj, ffn_sub_norm before down_proj, ReLU², and
  BitLinear's per-token int8 activation quantization before each ternary linear as explicit ops
  (x_scale = 127 / max(max|x|, 1e-5); clip(round(x · x_scale), −128, 127) / x_scale), in every
  export: f32/f16 exports then compute exactly the BitLinear reference (DESIGN.md), and the int2
  export runs the same function, with MatMulNBits' own int8 blocks (accuracy_level 4) on top.
- Qwen2-MoE / Qwen3-MoE sparse blocks with standard ops: router MatMul + Softmax in float32, TopK
  (renormalized iff config `norm_topk_prob`), the top-k weights scattered into a dense [tokens,
  experts] matrix; each expert runs its SwiGLU only on the tokens routed to it (NonZero → Gather →
  MatMul/MatMulNBits → × weight → ScatterND add into a float32 sum), so a decode step costs k
  experts, not all; Qwen2-MoE adds its shared expert times sigmoid(x · ffn_gate_inp_shexp).
  Layers without a router (mlp_only_layers, decoder_sparse_step) are dense MLPs.

Weights per `--quant`: f32 / f16 store every matrix as a MatMul initializer [K, N] (f16 also runs
activations and the KV cache in float16; logits are float32 either way); int8 / int4 store the
linears as MatMulNBits (symmetric per block, accuracy_level 4), lm_head as int8 (as llama.cpp's q4
types keep output.weight at q8_0: an int4 lm_head cost the tiny Qwen3 fixture cos 0.969 → 0.987)
and the token embedding as float16 for a Gather; int2 stores the ternary linears as exact 2-bit
codes and lm_head as int8.
Norm weights and biases follow the compute dtype. MoE routers (`ffn_gate_inp`, `ffn_gate_inp_shexp`)
stay float32 in every export; experts are stored per expert (`blk.N.ffn_{gate,up,down}_exps.E.weight`)
like any linear of the export's type (int8 under int2).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from ..convert.checkpoint import to_compute_dtype
from ..errors import CheckpointError, OutputError, QuantizationError, UnsupportedArchitecture, UsageError
from ..quant import nbits
from .atomic import staged_folder
from ..quant.registry import ALIASES
from ..quant.ternary import TernaryScale, scale_for, ternarize

if TYPE_CHECKING:  # onnx is optional: imported where used
    from onnx import TensorProto

    from ..convert.arch.base import ArchMapping, SourceTensor
    from ..convert.checkpoint import Checkpoint

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
GENAI_CONFIG = "genai_config.json"
OPSET = 17
IR_VERSION = 10  # onnxruntime ≥ 1.18 reads IR 10
#: the staging folder name of earlier versions (removed when its process is dead); now `.<name>.bitconv-tmp.<pid>`
TMP_PREFIX = ".bitconv-onnx-tmp."
_ALIGN_SMALL, _ALIGN_LARGE, _LARGE = 64, 4096, 1 << 16
#: stored bytes read at a time from a large checkpoint tensor
SLAB_BYTES = 64 * 1024 * 1024
_F32_MIN = float(np.finfo(np.float32).min)
_BITS = {"int8": 8, "int4": 4, "int2": 2}


# --- quant types of the ONNX writer --------------------------------------------------------------

@dataclass(frozen=True)
class OnnxQuant:
    name: str
    #: MatMulNBits bits for linears (None: float MatMul)
    bits: int | None
    #: float dtype of activations, norms, biases and the KV cache ("f32" / "f16")
    compute: str
    default_block_size: int | None
    description: str
    #: ternary only: refused for models not trained ternary unless --force-ternarize
    ternary: bool = False
    #: a registered bitconv quantizer (a plugin) whose rounding every linear goes through before it is
    #: stored as a float MatMul weight (`storage`)
    rounding: str | None = None

    @property
    def storage(self) -> str:
        """How the linears are stored: the type's name, or the float type a plugin's values take."""
        return self.compute if self.rounding else self.name


ONNX_QUANTS: dict[str, OnnxQuant] = {q.name: q for q in (
    OnnxQuant("f32", None, "f32", None, "float32 MatMul weights, lossless"),
    OnnxQuant("f16", None, "f16", None, "float16 weights, activations and KV cache (logits float32)"),
    OnnxQuant("int8", 8, "f32", 32, "MatMulNBits 8-bit symmetric per block (accuracy_level 4)"),
    OnnxQuant("int4", 4, "f32", 32, "MatMulNBits 4-bit symmetric per block (accuracy_level 4); lm_head int8"),
    OnnxQuant("int2", 2, "f32", 128, "ternary linears as exact MatMulNBits 2-bit codes; lm_head int8", ternary=True),
)}


def get_onnx_quant(name: str) -> OnnxQuant:
    """An ONNX type, or a registered quantizer that stores float values (ggml type F32/F16: its own
    rounding, as a custom quantizer does): its linears become float MatMul weights after rounding."""
    from gguf import GGMLQuantizationType

    from ..quant.registry import QUANT_TYPES, all_quantizers

    key = ALIASES.get(name.lower(), name.lower())
    if key in ONNX_QUANTS:
        return ONNX_QUANTS[key]
    all_quantizers()  # loads the plugins
    cls = QUANT_TYPES.get(key)
    floats = {int(GGMLQuantizationType.F32): "f32", int(GGMLQuantizationType.F16): "f16"}
    if cls is not None and cls.ggml_type in floats and key not in ("f32", "f16", "bf16"):
        return OnnxQuant(key, None, "f32", None, cls.description or f"linears rounded by {key}", rounding=key)
    raise UsageError(f"quant type {name!r} is not an ONNX type; ONNX types: {', '.join(ONNX_QUANTS)}, or a "
                     "registered quantizer that stores f32/f16 values")


# --- architectures -------------------------------------------------------------------------------

#: HF class → the onnxruntime-genai model type written to genai_config.json (its decoder-only
#: types share one runtime path; BitNet has no type of its own there, "llama" runs the same IO)
ONNX_ARCHS: dict[str, str] = {
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen2MoeForCausalLM": "qwen2",  # the MoE blocks are plain graph ops: genai runs them as any decoder
    "Qwen3MoeForCausalLM": "qwen3",
    "BitNetForCausalLM": "llama",
}
_ACTS = ("silu", "relu2")
#: MoE tensors (GGUF base names, as bitconv's Qwen MoE mapping stacks them)
_MOE_ROUTERS = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight")
_MOE_EXPERTS = ("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight")


def check_supported(checkpoint: "Checkpoint", mapping: "ArchMapping") -> None:
    arch = checkpoint.architecture
    if arch not in ONNX_ARCHS:
        raise UnsupportedArchitecture(f"the ONNX writer does not support {arch} yet; "
                                      f"supported: {', '.join(sorted(ONNX_ARCHS))}")
    c = mapping.config
    rope_type = mapping.rope_params.get("rope_type", mapping.rope_params.get("type", "default"))
    if rope_type not in (None, "default"):
        raise UnsupportedArchitecture(f"{arch}: rope scaling {rope_type!r} is not supported by the ONNX writer yet")
    if float(c.get("partial_rotary_factor", 1.0) or 1.0) != 1.0:
        raise UnsupportedArchitecture(f"{arch}: partial rotary embeddings are not supported by the ONNX writer yet")
    if c.get("use_sliding_window"):
        raise UnsupportedArchitecture(f"{arch}: sliding-window attention is not supported by the ONNX writer yet")
    act = str(c.get("hidden_act", "silu"))
    if act not in _ACTS:
        raise UnsupportedArchitecture(f"{arch}: activation {act!r} is not supported by the ONNX writer "
                                      f"(supported: {', '.join(_ACTS)})")


# --- the plan: every initializer, decided before any data is read ---------------------------------

@dataclass
class OnnxTensor:
    """One checkpoint tensor as the graph stores it."""

    name: str  # GGUF-style name (blk.N.attn_q.weight), also the initializer's base name
    shape: tuple[int, ...]
    storage: str  # f32 / f16 / int8 / int4 / int2
    role: str  # embedding / lm_head / linear / ternary / norm / bias / router / experts
    nbytes: int
    note: str = ""


@dataclass
class OnnxPlan:
    checkpoint: "Checkpoint"
    mapping: "ArchMapping"
    quant: OnnxQuant
    block_size: int | None
    sources: dict[str, "SourceTensor"]
    tensors: list[OnnxTensor]
    #: BitLinear activation quantization before ternary linears (ternary-trained models only)
    bitlinear: bool
    accuracy_level: int = 4
    notes: list[str] = field(default_factory=list)
    #: export weights holding NaN/Inf, or values float16 cannot hold, instead of refusing them
    allow_nonfinite: bool = False

    @property
    def data_nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors if t.role != "lm_head" or "output.weight" in self.sources)

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.storage] = counts.get(t.storage, 0) + 1
        return counts

    @property
    def largest_f32_nbytes(self) -> int:
        return max((math.prod(t.shape) * 4 for t in self.tensors), default=0)


def _base(name: str) -> str:
    return re.sub(r"^blk\.\d+\.", "", name)


def make_onnx_plan(checkpoint: "Checkpoint", mapping: "ArchMapping", quant: OnnxQuant, *,
                   block_size: int | None = None, force_ternarize: bool = False,
                   accuracy_level: int = 4) -> OnnxPlan:
    check_supported(checkpoint, mapping)
    bitlinear = bool(mapping.ternary_model)  # decided before --force-ternarize marks linears ternary
    if quant.ternary and not mapping.ternary_model:
        if not force_ternarize:
            raise UsageError(
                f"{quant.name} stores ternary weights and {checkpoint.architecture} is not a ternary-trained model "
                "(BitNet b1.58): ternarizing it after training destroys its accuracy; pass --force-ternarize "
                "only to test a runtime")
        mapping.treat_as_ternary()
    if block_size is not None and quant.bits is None:
        raise UsageError(f"--block-size applies to the MatMulNBits types (int8/int4/int2), not {quant.name}")
    bs = block_size if block_size is not None else quant.default_block_size
    if bs is not None:
        if (problem := nbits.block_size_error(bs)):
            raise UsageError(problem)
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise UsageError(f"accuracy level {accuracy_level}: MatMulNBits takes 0..4")
    sources: dict[str, SourceTensor] = {}
    for src in mapping.tensors(checkpoint):
        if src.name in sources:
            raise CheckpointError(f"{src.hf_names[0] if src.hf_names else src.name}: two checkpoint tensors "
                                  f"map to {src.name}")
        mapping.check_shape(src)
        sources[src.name] = src
    mapping.check_complete(set(sources))
    known = {"token_embd.weight", "output.weight", "output_norm.weight"}
    layer_known = {"attn_norm.weight", "ffn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
                   "attn_output.weight", "attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_q_norm.weight",
                   "attn_k_norm.weight", "attn_sub_norm.weight", "ffn_sub_norm.weight", "ffn_gate.weight",
                   "ffn_up.weight", "ffn_down.weight", *_MOE_ROUTERS, *_MOE_EXPERTS,
                   "ffn_gate_shexp.weight", "ffn_up_shexp.weight", "ffn_down_shexp.weight"}
    for name in sources:
        if name not in known and not (name.startswith("blk.") and _base(name) in layer_known):
            raise UnsupportedArchitecture(f"{name}: a tensor the ONNX writer has no place for "
                                          f"({checkpoint.architecture})")

    compute = quant.compute
    tensors: list[OnnxTensor] = []

    def add(name: str, shape: tuple[int, ...], storage: str, role: str, note: str = "") -> None:
        tensors.append(OnnxTensor(name, shape, storage, role, _stored_nbytes(shape, storage, bs), note))

    for name, src in sources.items():
        shape = tuple(src.shape)
        if len(shape) == 1:
            add(name, shape, compute, "bias" if name.endswith(".bias") else "norm")
        elif _base(name) in _MOE_ROUTERS:  # routing decisions stay float32 in every export
            add(name, shape, "f32", "router")
        elif _base(name) in _MOE_EXPERTS:  # [E, N, K]: one MatMul / MatMulNBits per expert
            add(name, shape, "int8" if quant.ternary else quant.storage, "experts",
                f"rounded by {quant.rounding}" if quant.rounding else "")
        elif name == "token_embd.weight":
            add(name, shape, "f32" if quant.name == "f32" else "f16", "embedding",
                "" if quant.name in ("f32", "f16") else "f16 for Gather")
        elif name == "output.weight":
            pass  # below, with the tied case
        elif quant.rounding:
            add(name, shape, quant.storage, "linear", f"rounded by {quant.rounding}")
        elif mapping.is_ternary_linear(name):
            if quant.ternary:
                add(name, shape, "int2", "ternary", "exact ternary codes")
            else:
                add(name, shape, quant.name, "ternary",
                    "exact ternary codes" if quant.bits else "dequantized ternary (s·W_t)")
        else:
            add(name, shape, "int8" if quant.ternary else quant.name, "linear")
    out_src = "output.weight" if "output.weight" in sources else "token_embd.weight"
    lm_storage = "int8" if quant.ternary or quant.bits == 4 else quant.storage
    add("output.weight", tuple(sources[out_src].shape), lm_storage, "lm_head",
        "tied: from token_embd" if out_src != "output.weight" else "")
    plan = OnnxPlan(checkpoint, mapping, quant, bs, sources, tensors, bitlinear, accuracy_level)
    if quant.bits == 2 and bs not in nbits.FAST_2BIT_BLOCKS:
        plan.notes.append(f"block size {bs}: onnxruntime has fast 2-bit kernels only for "
                          f"{'/'.join(map(str, nbits.FAST_2BIT_BLOCKS))}")
    if quant.bits is not None and accuracy_level != 4:
        plan.notes.append(f"accuracy_level {accuracy_level}: onnxruntime dequantizes 2- and 8-bit weights on "
                          "every call without level 4")
    return plan


def _stored_nbytes(shape: tuple[int, ...], storage: str, block_size: int | None) -> int:
    n = math.prod(shape)
    if storage == "f32":
        return 4 * n
    if storage == "f16":
        return 2 * n
    bits = _BITS[storage]
    *experts, rows, k = shape
    return math.prod(experts) * nbits.encoded_nbytes(rows, k, bits, block_size or 32)


# --- external data -------------------------------------------------------------------------------

class ExternalData:
    """Appends tensors to one external data file; returns initializers that point into it."""

    def __init__(self, path: Path, location: str, progress: Callable[[str, int], None] | None = None) -> None:
        self.path = path
        self.location = location
        self.f = open(path, "wb")
        self.offset = 0
        self.progress = progress

    def add(self, name: str, array: np.ndarray, label: str | None = None) -> "TensorProto":
        a = np.asarray(array)
        return self.add_rows(name, a.shape, a.dtype, [a], label)

    def add_rows(self, name: str, shape: tuple[int, ...], dtype: Any, chunks: Iterable[np.ndarray],
                 label: str | None = None) -> "TensorProto":
        """A tensor written as consecutive row chunks (whole tensor = their concatenation), so a
        large one is never assembled in memory."""
        from onnx import TensorProto, helper

        dt = np.dtype(dtype).newbyteorder("<")
        nbytes = math.prod(shape) * dt.itemsize
        align = _ALIGN_LARGE if nbytes >= _LARGE else _ALIGN_SMALL
        pad = -self.offset % align
        if pad:
            self.f.write(b"\0" * pad)
            self.offset += pad
        written = 0
        for chunk in chunks:
            a = np.ascontiguousarray(chunk, dtype=dt)
            self.f.write(memoryview(a).cast("B"))
            written += a.nbytes
        if written != nbytes:
            raise OutputError(f"{name}: wrote {written} bytes for shape {tuple(shape)}, expected {nbytes}")
        t = TensorProto()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        t.dims.extend(shape)
        for key, value in (("location", self.location), ("offset", str(self.offset)), ("length", str(nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        t.data_location = TensorProto.EXTERNAL
        self.offset += nbytes
        if self.progress:
            self.progress(label or name, nbytes)
        return t

    def close(self) -> None:
        if not self.f.closed:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()


# --- the graph -----------------------------------------------------------------------------------

class Graph:
    """Nodes, initializers and unique value names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self._names: dict[str, int] = {}

    def fresh(self, hint: str) -> str:
        n = self._names.get(hint, 0)
        self._names[hint] = n + 1
        return hint if n == 0 else f"{hint}_{n}"

    def op(self, op_type: str, inputs: list[str], hint: str, *, n_out: int = 1, domain: str | None = None,
           outputs: list[str] | None = None, **attrs: Any) -> Any:
        from onnx import helper

        outs = outputs or [self.fresh(f"{hint}/{op_type}" + (f"_{i}" if n_out > 1 else "")) for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(f"{hint}/{op_type}/node"),
                                           domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value: Any, dtype: Any = None) -> str:
        """A small inline constant initializer (shared when equal)."""
        from onnx import numpy_helper

        a = np.asarray(value, dtype=dtype)
        key = (a.dtype.str, a.shape, a.tobytes())
        if key not in self._consts:
            name = self.fresh(f"const/{a.dtype.name}")
            self.initializers.append(numpy_helper.from_array(a, name))
            self._consts[key] = name
        return self._consts[key]


class DecoderBuilder:
    """Builds the decoder graph; weights are loaded, encoded and written as the graph asks for them."""

    def __init__(self, plan: OnnxPlan, data: ExternalData) -> None:
        from onnx import TensorProto

        self.plan = plan
        self.data = data
        self.g = Graph()
        m = plan.mapping
        self.n_layers, self.hidden = m.n_layers, m.hidden
        self.n_head, self.n_kv, self.head_dim = m.n_head, m.n_head_kv, m.head_dim
        self.eps = float(m.config.get("rms_norm_eps", m.config.get("norm_eps", 1e-6)) or 1e-6)
        theta = m.rope_theta if m.rope_theta is not None else m.default_rope_theta
        self.rope_theta = float(theta)
        self.act = str(m.config.get("hidden_act", "silu"))
        self.f16 = plan.quant.compute == "f16"
        self.ct = TensorProto.FLOAT16 if self.f16 else TensorProto.FLOAT
        self.np_ct = np.float16 if self.f16 else np.float32
        self.storage = {t.name: t for t in plan.tensors}
        self._fake_quant_cache: dict[str, str] = {}

    # -- weights --

    def _load(self, name: str) -> np.ndarray:
        return self._checked(name, np.asarray(self.plan.sources[name].load(), dtype=np.float32))

    def _checked(self, name: str, values: np.ndarray, f16: bool = False) -> np.ndarray:
        """`values` (a chunk of the weight `name`, floats), refused with a one-line error when it
        holds NaN/Inf or, for a float16 initializer, magnitudes ≥ 65520 (they would become inf)."""
        if self.plan.allow_nonfinite or values.dtype.kind != "f" or not values.size:
            return values
        src = self.plan.sources.get(name)
        hf = src.hf_names[0] if src is not None and src.hf_names else name
        if not np.isfinite(values).all():
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            raise QuantizationError(f"{hf}: {bad} NaN/Inf value(s); pass --allow-nonfinite to export anyway",
                                    tensor=name)
        if f16 and values.dtype != np.float16 and max(values.max(), -values.min()) >= 65520.0:
            big = int(np.count_nonzero(np.abs(values) >= 65520.0))
            raise QuantizationError(f"{hf}: {big} value(s) of magnitude ≥ 65520 would become inf in float16; "
                                    "export f32, or pass --allow-nonfinite", tensor=name)
        return values

    def _add_streamed(self, name: str, dtype: Any, rows: int = 4096) -> str:
        """The tensor as an initializer in `dtype`, read a slab and widened a row chunk at a time and
        written as it goes: a large matrix (a 150k-row embedding) is never whole in memory."""
        src = self.plan.sources[name]

        def chunks() -> Iterator[np.ndarray]:
            for raw, stored in src.stored_slabs(SLAB_BYTES):
                for lo in range(0, raw.shape[0], rows):
                    values = self._checked(name, to_compute_dtype(raw[lo:lo + rows], stored), f16=dtype == np.float16)
                    yield values.astype(dtype, copy=False)

        self.g.initializers.append(self.data.add_rows(name, tuple(src.shape), dtype, chunks()))
        return name

    def _quantized(self, name: str, bits: int, block_size: int) -> nbits.NBitsTensor:
        """int4/int8 of a checkpoint matrix, read a slab at a time and widened per row chunk inside
        the quantizer's workers."""
        src = self.plan.sources[name]
        n_rows = math.prod(src.shape[:-1])
        return nbits.quantize_slabs(((raw, lambda c, st=stored: self._checked(name, to_compute_dtype(c, st)))
                                     for raw, stored in src.stored_slabs(SLAB_BYTES)), n_rows, bits, block_size)

    def _ternary(self, name: str) -> tuple[np.ndarray, TernaryScale]:
        src = self.plan.sources[name]
        w = self._load(name)
        known = src.known_scale() if src.known_scale is not None else None
        scale = scale_for([w], known)
        return ternarize(w, scale), scale

    def _add_init(self, name: str, array: np.ndarray, label: str | None = None) -> str:
        self.g.initializers.append(self.data.add(name, array, label))
        return name

    def matmul(self, x: str, name: str, hint: str, *, output: str | None = None) -> str:
        """x @ W^T for the checkpoint matrix `name` [N, K] in its planned storage (+ bias if any)."""
        t = self.storage[name]
        src_name = "token_embd.weight" if (t.role == "lm_head" and name not in self.plan.sources) else name
        bias_name = name[: -len("weight")] + "bias"
        has_bias = bias_name in self.plan.sources
        out_name = None if has_bias else output
        if t.role == "ternary":
            codes, scale = self._ternary(src_name)
            if t.storage in _BITS:  # exact: codes + zero point, scale s per block
                q = nbits.quantize_ternary(codes, float(scale.scale), self.plan.block_size, _BITS[t.storage])
                y = self._nbits(x, name, q, hint, out_name)
            else:
                w = codes.astype(np.float32) / scale.inv  # s · W_t as the references compute it
                y = self._dense(x, name, w, t.storage, hint, out_name)
        elif t.storage in _BITS:
            q = self._quantized(src_name, _BITS[t.storage], self.plan.block_size or 32)
            y = self._nbits(x, name, q, hint, out_name)
        else:
            src = self.plan.sources[src_name]
            rounded = bool(self.plan.quant.rounding) and t.role == "linear"
            if not rounded and src.plain is not None and src.plain.nbytes > SLAB_BYTES and len(src.shape) == 2:
                y = self._dense_streamed(x, name, src, t.storage, hint, out_name)
            else:
                w = self._load(src_name)
                y = self._dense(x, name, self._rounded(w) if rounded else w, t.storage, hint, out_name)
        if has_bias:
            b = self._add_init(bias_name, self._load(bias_name).astype(self.np_ct))
            y = self.g.op("Add", [y, b], hint, outputs=[output] if output else None)
        return y

    def _rounded(self, w: np.ndarray) -> np.ndarray:
        """A plugin quantizer's values for the matrix w (identity for the built-in types)."""
        if not self.plan.quant.rounding:
            return w
        from ..quant.registry import get_quantizer

        q = get_quantizer(self.plan.quant.rounding)
        state = q.prepare([w], "F32") if q.needs_prepare else None
        return np.asarray(q.dequantize(q.quantize(w, state), w.shape), dtype=np.float32)

    def _dense_streamed(self, x: str, name: str, src: "SourceTensor", storage: str, hint: str,
                        output: str | None) -> str:
        """x @ W^T for a large float matrix: W^T is written a block of its rows (W's columns) at a
        time, each gathered from a pass over W's row slabs, so neither W nor W^T is ever whole in
        memory (a 7B lm_head is 2.2 GB in float32). Same bytes as the whole-matrix path."""
        dt = np.dtype(np.float32 if storage == "f32" else np.float16)
        n, k = src.shape
        cols = max(1, SLAB_BYTES // (n * dt.itemsize))

        def blocks() -> Iterator[np.ndarray]:
            for k0 in range(0, k, cols):
                block = np.empty((min(k, k0 + cols) - k0, n), dtype=dt)
                lo = 0
                for raw, stored in src.stored_slabs(SLAB_BYTES):
                    part = self._checked(src.name, to_compute_dtype(raw[:, k0:k0 + cols], stored), f16=dt == np.float16)
                    part = part.astype(np.float32, copy=False)
                    block[:, lo:lo + raw.shape[0]] = part.T
                    lo += raw.shape[0]
                yield block

        self.g.initializers.append(self.data.add_rows(name + ".T", (k, n), dt, blocks(), name))
        return self.g.op("MatMul", [x, name + ".T"], hint, outputs=[output] if output else None)

    def _dense(self, x: str, name: str, w: np.ndarray, storage: str, hint: str, output: str | None) -> str:
        if storage in ("f32", "f16"):
            dt = np.float32 if storage == "f32" else np.float16
            self._checked(name, w, f16=storage == "f16")
            init = self._add_init(name + ".T", np.ascontiguousarray(w.T).astype(dt, copy=False), name)
            return self.g.op("MatMul", [x, init], hint, outputs=[output] if output else None)
        bits = _BITS[storage]
        bs = self.plan.block_size or 32
        return self._nbits(x, name, nbits.quantize_rows(w, bits, bs), hint, output)

    def _nbits(self, x: str, name: str, q: nbits.NBitsTensor, hint: str, output: str | None) -> str:
        b = self._add_init(f"{name}.q{q.bits}", q.packed, name)
        s = self._add_init(f"{name}.scales", q.scales.astype(np.float32))
        return self.g.op("MatMulNBits", [x, b, s], hint, domain="com.microsoft",
                         outputs=[output] if output else None, K=q.k, N=q.n, bits=q.bits,
                         block_size=q.block_size, accuracy_level=self.plan.accuracy_level)

    def experts(self, name: str) -> list[Callable[[str, str], str]]:
        """One matmul builder per expert of the stacked [E, N, K] tensor `name`: the tensor is loaded
        once and every expert's initializer written now (in expert order), the nodes later."""
        t = self.storage[name]
        w3 = self._load(name)
        stem = name[: -len(".weight")]
        ops: list[Callable[[str, str], str]] = []
        for e in range(w3.shape[0]):
            wname = f"{stem}.{e}.weight"
            if t.storage in ("f32", "f16"):
                dt = np.float32 if t.storage == "f32" else np.float16
                init = self._add_init(wname + ".T", np.ascontiguousarray(self._rounded(w3[e]).T).astype(dt, copy=False),
                                      wname)
                ops.append(lambda x, hint, init=init: self.g.op("MatMul", [x, init], hint))
            else:
                q = nbits.quantize_rows(w3[e], _BITS[t.storage], self.plan.block_size or 32)
                b = self._add_init(f"{wname}.q{q.bits}", q.packed, wname)
                s = self._add_init(f"{wname}.scales", q.scales.astype(np.float32))
                attrs = dict(K=q.k, N=q.n, bits=q.bits, block_size=q.block_size,
                             accuracy_level=self.plan.accuracy_level)  # not q: its arrays are written
                ops.append(lambda x, hint, b=b, s=s, attrs=attrs: self.g.op(
                    "MatMulNBits", [x, b, s], hint, domain="com.microsoft", **attrs))
        del w3
        return ops

    # -- blocks --

    def mlp(self, x: str, gate: Callable[[str, str], str], up: Callable[[str, str], str],
            down: Callable[[str, str], str], hint: str, sub_norm: str | None = None) -> str:
        """down(act(gate(x)) · up(x)), act = SiLU or ReLU²; BitNet's ffn_sub_norm before down."""
        g = self.g
        gx, ux = gate(x, hint + "/gate_proj"), up(x, hint + "/up_proj")
        if self.act == "relu2":
            r = g.op("Relu", [gx], hint + "/act")
            a = g.op("Mul", [r, r], hint + "/act")
        else:
            a = g.op("Mul", [gx, g.op("Sigmoid", [gx], hint + "/act")], hint + "/act")
        y = g.op("Mul", [a, ux], hint + "/mlp")
        if sub_norm is not None:
            y = self.rms_norm(y, sub_norm, hint + "/ffn_sub_norm")
        return down(y, hint + "/down_proj")

    def router_matmul(self, x32: str, name: str, hint: str) -> str:
        """float32 x @ W^T for a router matrix (kept float32 whatever the export's type)."""
        w = self._add_init(name + ".T", np.ascontiguousarray(self._load(name).T))
        return self.g.op("MatMul", [x32, w], hint)

    def moe(self, x: str, p: str, hint: str) -> str:
        """Qwen2/Qwen3-MoE sparse block as transformers computes it: router softmax in float32,
        top-k (renormalized iff config.norm_topk_prob), each expert's SwiGLU on the tokens routed
        to it (NonZero → Gather → … → ScatterND add, so a decode step runs k experts, not all),
        weighted by its routing weight; Qwen2-MoE adds the shared expert times sigmoid(x · w_g)."""
        from onnx import TensorProto, helper

        g, c = self.g, self.plan.mapping.config
        i64 = lambda v: g.const(np.array(v, dtype=np.int64))  # noqa: E731
        top_k = int(c.get("num_experts_per_tok", 0) or 0)
        n_exp = int(self.plan.sources[p + "ffn_gate_inp.weight"].shape[0])
        if not 0 < top_k <= n_exp:
            raise CheckpointError(f"num_experts_per_tok={top_k} for {n_exp} experts")
        xf = g.op("Reshape", [x, i64([-1, self.hidden])], hint)  # [N, H]
        x32 = g.op("Cast", [xf], hint + "/router", to=TensorProto.FLOAT) if self.f16 else xf
        probs = g.op("Softmax", [self.router_matmul(x32, p + "ffn_gate_inp.weight", hint + "/router")],
                     hint + "/router", axis=-1)
        top_w, top_i = g.op("TopK", [probs, i64([top_k])], hint + "/router", n_out=2, axis=-1, largest=1, sorted=1)
        if c.get("norm_topk_prob", False):
            top_w = g.op("Div", [top_w, g.op("ReduceSum", [top_w, i64([-1])], hint + "/router", keepdims=1)],
                         hint + "/router")
        zeros32 = g.op("ConstantOfShape", [g.op("Shape", [probs], hint + "/router")], hint + "/router",
                       value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
        weights = g.op("ScatterElements", [zeros32, top_i, top_w], hint + "/router", axis=-1)  # [N, E]
        if self.f16:
            weights = g.op("Cast", [weights], hint + "/router", to=self.ct)
        # the experts' sum accumulates in float32 (onnxruntime's ScatterND adds no float16)
        out = g.op("ConstantOfShape", [g.op("Shape", [xf], hint)], hint,
                   value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
        gates, ups, downs = (self.experts(p + f"ffn_{n}_exps.weight") for n in ("gate", "up", "down"))
        for e in range(n_exp):
            eh = f"{hint}/experts.{e}"
            we = g.op("Gather", [weights, g.const(np.int64(e))], eh, axis=1)  # [N]
            rows = g.op("NonZero", [g.op("Greater", [we, g.const(self.np_ct(0))], eh)], eh)  # [1, M]
            idx = g.op("Squeeze", [rows, i64([0])], eh)  # [M]
            y = self.mlp(g.op("Gather", [xf, idx], eh, axis=0), gates[e], ups[e], downs[e], eh)
            y = g.op("Mul", [y, g.op("Unsqueeze", [g.op("Gather", [we, idx], eh, axis=0), i64([-1])], eh)], eh)
            if self.f16:
                y = g.op("Cast", [y], eh, to=TensorProto.FLOAT)
            out = g.op("ScatterND", [out, g.op("Transpose", [rows], eh, perm=[1, 0]), y], eh, reduction="add")
        if self.f16:
            out = g.op("Cast", [out], hint, to=self.ct)
        if p + "ffn_up_shexp.weight" in self.plan.sources:
            lin = lambda n: (lambda v, h: self.linear(v, p + n, h))  # noqa: E731
            shared = self.mlp(xf, lin("ffn_gate_shexp.weight"), lin("ffn_up_shexp.weight"),
                              lin("ffn_down_shexp.weight"), hint + "/shared_expert")
            if p + "ffn_gate_inp_shexp.weight" in self.plan.sources:
                sg = g.op("Sigmoid", [self.router_matmul(x32, p + "ffn_gate_inp_shexp.weight",
                                                         hint + "/shared_expert_gate")], hint + "/shared_expert_gate")
                if self.f16:
                    sg = g.op("Cast", [sg], hint + "/shared_expert_gate", to=self.ct)
                shared = g.op("Mul", [sg, shared], hint + "/shared_expert")
            out = g.op("Add", [out, shared], hint)
        return g.op("Reshape", [out, g.op("Shape", [x], hint)], hint)

    def rms_norm(self, x: str, weight: str, hint: str) -> str:
        from onnx import TensorProto

        g = self.g
        w = self._add_init(weight, self._load(weight).astype(self.np_ct))
        xf = g.op("Cast", [x], hint, to=TensorProto.FLOAT) if self.f16 else x
        ms = g.op("ReduceMean", [g.op("Mul", [xf, xf], hint)], hint, axes=[-1], keepdims=1)
        r = g.op("Div", [g.const(np.float32(1.0)), g.op("Sqrt", [g.op("Add", [ms, g.const(np.float32(self.eps))],
                                                                          hint)], hint)], hint)
        y = g.op("Mul", [xf, r], hint)
        if self.f16:
            y = g.op("Cast", [y], hint, to=TensorProto.FLOAT16)
        return g.op("Mul", [y, w], hint)

    def fake_quant(self, x: str, hint: str) -> str:
        """BitLinear's per-token int8 activation quantization (quantize → dequantize), once per input."""
        if x in self._fake_quant_cache:
            return self._fake_quant_cache[x]
        g, c = self.g, self.np_ct
        amax = g.op("ReduceMax", [g.op("Abs", [x], hint)], hint, axes=[-1], keepdims=1)
        xs = g.op("Div", [g.const(c(127.0)), g.op("Max", [amax, g.const(c(1e-5))], hint)], hint)
        q = g.op("Clip", [g.op("Round", [g.op("Mul", [x, xs], hint)], hint), g.const(c(-128.0)), g.const(c(127.0))],
                 hint)
        y = g.op("Div", [q, xs], hint)
        self._fake_quant_cache[x] = y
        return y

    def linear(self, x: str, name: str, hint: str, output: str | None = None) -> str:
        if self.plan.bitlinear and self.plan.mapping.is_ternary_linear(name):
            x = self.fake_quant(x, hint + "/act_quant")
        return self.matmul(x, name, hint, output=output)

    def rope(self, x: str, cos: str, sin: str, hint: str) -> str:
        """NeoX rotation of x [B, H, S, D] with cos/sin [B, 1, S, D/2]."""
        g = self.g
        half = self.head_dim // 2
        a, b = g.op("Split", [x, g.const(np.array([half, half], np.int64))], hint, n_out=2, axis=-1)
        ra = g.op("Sub", [g.op("Mul", [a, cos], hint), g.op("Mul", [b, sin], hint)], hint)
        rb = g.op("Add", [g.op("Mul", [b, cos], hint), g.op("Mul", [a, sin], hint)], hint)
        return g.op("Concat", [ra, rb], hint, axis=-1)

    def build(self) -> Any:
        from onnx import TensorProto, helper

        g, ct = self.g, self.ct
        i64 = lambda v: g.const(np.array(v, dtype=np.int64))  # noqa: E731
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
                  helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                                ["batch_size", "total_sequence_length"]),
                  helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                 ["batch_size", "sequence_length", self.plan.mapping.vocab_size])]
        kv_shape_in = ["batch_size", self.n_kv, "past_sequence_length", self.head_dim]
        kv_shape_out = ["batch_size", self.n_kv, "total_sequence_length", self.head_dim]
        for i in range(self.n_layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", ct, kv_shape_in))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", ct, kv_shape_out))

        # embeddings
        emb = self.storage["token_embd.weight"]
        table = self._add_streamed("token_embd.weight", np.float32 if emb.storage == "f32" else np.float16)
        h = g.op("Gather", [table, "input_ids"], "embed", axis=0)
        if emb.storage != self.plan.quant.compute:
            h = g.op("Cast", [h], "embed", to=ct)

        # rotary tables [B, 1, S, D/2]
        d = self.head_dim
        inv_freq = (np.float32(1.0) / (np.float32(self.rope_theta) **
                                       (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / np.float32(d))))
        pos = g.op("Unsqueeze", [g.op("Cast", ["position_ids"], "rope", to=TensorProto.FLOAT), i64([-1])], "rope")
        freqs = g.op("Unsqueeze", [g.op("Mul", [pos, g.const(inv_freq.astype(np.float32))], "rope"), i64([1])], "rope")
        cos, sin = g.op("Cos", [freqs], "rope"), g.op("Sin", [freqs], "rope")
        if self.f16:
            cos, sin = g.op("Cast", [cos], "rope", to=ct), g.op("Cast", [sin], "rope", to=ct)

        # mask [B, 1, 1, S, T]: key j visible to query i iff j <= T - S + i and attention_mask[j]
        s_len = g.op("Squeeze", [g.op("Shape", ["input_ids"], "mask", start=1, end=2)], "mask")
        t_len = g.op("Squeeze", [g.op("Shape", ["attention_mask"], "mask", start=1, end=2)], "mask")
        one, zero = g.const(np.int64(1)), g.const(np.int64(0))
        k_idx = g.op("Range", [zero, t_len, one], "mask")
        q_idx = g.op("Range", [g.op("Sub", [t_len, s_len], "mask"), t_len, one], "mask")
        causal = g.op("LessOrEqual", [g.op("Unsqueeze", [k_idx, i64([0])], "mask"),
                                      g.op("Unsqueeze", [q_idx, i64([1])], "mask")], "mask")
        pad = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], "mask", to=TensorProto.BOOL), i64([1, 2, 3])], "mask")
        allowed = g.op("And", [causal, pad], "mask")

        rep = self.n_head // self.n_kv
        scaling = np.float32(self.head_dim ** -0.5)
        src = self.plan.sources
        for i in range(self.n_layers):
            p, hint = f"blk.{i}.", f"layers.{i}"
            x = self.rms_norm(h, p + "attn_norm.weight", hint + "/attn_norm")
            q = self.linear(x, p + "attn_q.weight", hint + "/q_proj")
            k = self.linear(x, p + "attn_k.weight", hint + "/k_proj")
            v = self.linear(x, p + "attn_v.weight", hint + "/v_proj")
            q = g.op("Reshape", [q, i64([0, 0, self.n_head, d])], hint + "/q")
            k = g.op("Reshape", [k, i64([0, 0, self.n_kv, d])], hint + "/k")
            v = g.op("Reshape", [v, i64([0, 0, self.n_kv, d])], hint + "/v")
            if p + "attn_q_norm.weight" in src:
                q = self.rms_norm(q, p + "attn_q_norm.weight", hint + "/q_norm")
                k = self.rms_norm(k, p + "attn_k_norm.weight", hint + "/k_norm")
            q = g.op("Transpose", [q], hint + "/q", perm=[0, 2, 1, 3])
            k = g.op("Transpose", [k], hint + "/k", perm=[0, 2, 1, 3])
            v = g.op("Transpose", [v], hint + "/v", perm=[0, 2, 1, 3])
            q = self.rope(q, cos, sin, hint + "/q_rope")
            k = self.rope(k, cos, sin, hint + "/k_rope")
            k_all = g.op("Concat", [f"past_key_values.{i}.key", k], hint + "/k", axis=2, outputs=[f"present.{i}.key"])
            v_all = g.op("Concat", [f"past_key_values.{i}.value", v], hint + "/v", axis=2,
                         outputs=[f"present.{i}.value"])
            # grouped heads: q [B, Hkv, rep, S, D] against k [B, Hkv, 1, D, T], broadcast, no K/V copies
            qg = g.op("Reshape", [q, i64([0, self.n_kv, rep, -1, d])], hint + "/attn")
            kt = g.op("Unsqueeze", [g.op("Transpose", [k_all], hint + "/attn", perm=[0, 1, 3, 2]), i64([2])],
                      hint + "/attn")
            if self.f16:  # scores and softmax in float32
                qg = g.op("Cast", [qg], hint + "/attn", to=TensorProto.FLOAT)
                kt = g.op("Cast", [kt], hint + "/attn", to=TensorProto.FLOAT)
            scores = g.op("Mul", [g.op("MatMul", [qg, kt], hint + "/attn"), g.const(scaling)], hint + "/attn")
            scores = g.op("Where", [allowed, scores, g.const(np.float32(_F32_MIN))], hint + "/attn")
            probs = g.op("Softmax", [scores], hint + "/attn", axis=-1)
            if self.f16:
                probs = g.op("Cast", [probs], hint + "/attn", to=ct)
            ctx = g.op("MatMul", [probs, g.op("Unsqueeze", [v_all, i64([2])], hint + "/attn")], hint + "/attn")
            ctx = g.op("Reshape", [ctx, i64([0, self.n_head, -1, d])], hint + "/attn")
            ctx = g.op("Transpose", [ctx], hint + "/attn", perm=[0, 2, 1, 3])
            ctx = g.op("Reshape", [ctx, i64([0, 0, self.n_head * d])], hint + "/attn")
            if p + "attn_sub_norm.weight" in src:
                ctx = self.rms_norm(ctx, p + "attn_sub_norm.weight", hint + "/attn_sub_norm")
            h = g.op("Add", [h, self.linear(ctx, p + "attn_output.weight", hint + "/o_proj")], hint + "/residual")

            x = self.rms_norm(h, p + "ffn_norm.weight", hint + "/ffn_norm")
            if p + "ffn_gate_inp.weight" in src:
                y = self.moe(x, p, hint + "/moe")
            else:
                lin = lambda n: (lambda v, hh: self.linear(v, p + n, hh))  # noqa: E731
                sub = p + "ffn_sub_norm.weight"
                y = self.mlp(x, lin("ffn_gate.weight"), lin("ffn_up.weight"), lin("ffn_down.weight"), hint,
                             sub_norm=sub if sub in src else None)
            h = g.op("Add", [h, y], hint + "/residual")

        x = self.rms_norm(h, "output_norm.weight", "final_norm")
        if self.f16:
            logits = g.op("Cast", [self.matmul(x, "output.weight", "lm_head")], "lm_head", to=TensorProto.FLOAT,
                          outputs=["logits"])
        else:
            logits = self.matmul(x, "output.weight", "lm_head", output="logits")
        assert logits == "logits"
        graph = helper.make_graph(g.nodes, "bitconv_decoder", inputs, outputs, initializer=g.initializers)
        model = helper.make_model(graph, producer_name="bitconv", ir_version=IR_VERSION,
                                  opset_imports=[helper.make_opsetid("", OPSET),
                                                 helper.make_opsetid("com.microsoft", 1)])
        from .. import __version__

        model.producer_version = __version__
        return model


# --- genai_config.json ---------------------------------------------------------------------------

def _first_id(v: Any) -> Any:
    return v[0] if isinstance(v, list) and v else v


def genai_config(plan: OnnxPlan) -> dict[str, Any]:
    """onnxruntime-genai's decoder config (field names as its model builder writes them)."""
    m, root = plan.mapping, plan.checkpoint.root
    c = m.config
    gen: dict[str, Any] = {}
    if (root / "generation_config.json").is_file():
        try:
            gen = json.loads((root / "generation_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            gen = {}
    bos = gen.get("bos_token_id", c.get("bos_token_id"))
    eos = gen.get("eos_token_id", c.get("eos_token_id"))
    pad = gen.get("pad_token_id", c.get("pad_token_id"))
    if pad is None:
        pad = _first_id(eos)
    ctx = int(c.get("max_position_embeddings") or 4096)
    return {
        "model": {
            "bos_token_id": bos,
            "context_length": ctx,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": MODEL_FILE,
                "head_size": m.head_dim,
                "hidden_size": m.hidden,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": m.n_head,
                "num_hidden_layers": m.n_layers,
                "num_key_value_heads": m.n_head_kv,
            },
            "eos_token_id": eos,
            "pad_token_id": pad,
            "type": ONNX_ARCHS[plan.checkpoint.architecture],
            "vocab_size": m.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": bool(gen.get("do_sample", False)),
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": ctx,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,  # present = Concat(past, new): no shared buffer
            "repetition_penalty": float(gen.get("repetition_penalty", 1.0) or 1.0),
            "temperature": float(gen.get("temperature", 1.0) or 1.0),
            "top_k": int(gen.get("top_k", 1) or 1) if gen.get("do_sample") else 1,
            "top_p": float(gen.get("top_p", 1.0) or 1.0),
        },
    }


# --- the atomic folder ---------------------------------------------------------------------------

def output_files(plan: OnnxPlan) -> list[str]:
    """The names the export writes into its folder (model, data, config, tokenizer files)."""
    return [MODEL_FILE, DATA_FILE, GENAI_CONFIG] + [p.name for p in plan.checkpoint.tokenizer_files()]


def check_output_folder(folder: Path, names: list[str], force: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} exists and is not a folder")
    parent = folder if folder.is_dir() else folder.parent
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder {parent} is not writable")
    if folder.is_dir() and not force:
        existing = [n for n in names if (folder / n).exists()]
        if existing:
            raise OutputError(f"{folder / existing[0]} already exists; pass --force to overwrite it")


@contextmanager
def atomic_folder(folder: Path, names: list[str], *, force: bool) -> Iterator[Path]:
    """Yield a staging folder; on success its files (`names`, model.onnx last) become `folder`: a
    new folder is the staging folder renamed in one step, an existing one (--force) gets the files
    renamed in. On any failure the staging folder goes and nothing is visible at `folder`."""
    check_output_folder(folder, names, force)
    with staged_folder(folder, "onnx-stage", legacy_patterns=(f"{TMP_PREFIX}*",)) as (tmp, commit):
        yield tmp
        commit([n for n in names if n != MODEL_FILE] + [MODEL_FILE])  # the graph last: no graph without data


# --- the export ----------------------------------------------------------------------------------

@dataclass
class OnnxExportResult:
    source: str
    architecture: str
    format: str
    quant: str
    block_size: int | None
    output: str  # the folder
    dry_run: bool
    n_tensors: int
    n_params: int
    output_bytes: int
    type_counts: dict[str, int]
    files: list[str]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    manifest: str | None = None
    tensors: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_onnx() -> None:
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        raise UsageError("the ONNX writer needs the onnx package: pip install 'bitconv[onnx]'")


def write_onnx(plan: OnnxPlan, folder: Path, *, force: bool = False,
               progress: Callable[[str, int], None] | None = None) -> list[dict[str, Any]]:
    """Write the export folder; returns [{path, bytes}] of the files written."""
    require_onnx()
    names = output_files(plan)
    with atomic_folder(folder, names, force=force) as tmp:
        data = ExternalData(tmp / DATA_FILE, DATA_FILE, progress)
        try:
            model = DecoderBuilder(plan, data).build()
        finally:
            data.close()
        blob = model.SerializeToString()
        with open(tmp / MODEL_FILE, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        (tmp / GENAI_CONFIG).write_text(json.dumps(genai_config(plan), indent=4) + "\n", encoding="utf-8")
        for p in plan.checkpoint.tokenizer_files():
            shutil.copyfile(p, tmp / p.name)
    return [{"path": n, "bytes": (folder / n).stat().st_size} for n in names]


def export(checkpoint: "Checkpoint", plan: OnnxPlan, folder: Path, *, source: str, dry_run: bool = False,
           force: bool = False, progress: Callable[[str, int], None] | None = None) -> OnnxExportResult:
    names = output_files(plan)
    result = OnnxExportResult(
        source=source, architecture=checkpoint.architecture, format="onnx", quant=plan.quant.name,
        block_size=plan.block_size if plan.quant.bits is not None else None, output=str(folder), dry_run=dry_run,
        n_tensors=len(plan.tensors), n_params=plan.n_params, output_bytes=plan.data_nbytes,
        type_counts=plan.type_counts(), files=names, notes=list(plan.notes),
        tensors=[asdict(t) for t in plan.tensors])
    if dry_run:
        return result
    start = time.perf_counter()
    records = write_onnx(plan, folder, force=force, progress=progress)
    result.output_bytes = sum(r["bytes"] for r in records)
    result.seconds = time.perf_counter() - start
    return result
