"""The ONNX export plan: the writer's quant types, the architectures it supports, and every
initializer decided (name, shape, storage, bytes) before any data is read.

Weights per `--quant`: f32 / f16 store every matrix as a MatMul initializer [K, N] (f16 also runs
activations and the KV cache in float16; logits are float32 either way); int8 / int4 store the
linears as MatMulNBits (symmetric per block, accuracy_level 4), lm_head as int8 (as llama.cpp's q4
types keep output.weight at q8_0: an int4 lm_head cost the tiny Qwen3 fixture cos 0.969 → 0.987)
and the token embedding as float16 for a Gather; int2 stores the ternary linears as exact 2-bit
codes and lm_head as int8.
A linear of a GPTQ / AWQ checkpoint keeps its source's grid (codes, scales, zero points) in
MatMulNBits where it fits (grid.py): its weights are then the source's dequantized weights exactly.
Norm weights and biases follow the compute dtype. MoE routers (`ffn_gate_inp`, `ffn_gate_inp_shexp`)
stay float32 in every export; experts are stored per expert (`blk.N.ffn_{gate,up,down}_exps.E.weight`)
like any linear of the export's type (int8 under int2).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...convert.arch.base import require_output_format
from ...errors import CheckpointError, UnsupportedArchitecture, UsageError
from ...quant import nbits
from ...quant.registry import ALIASES
from .grid import GridRepack, repack_experts_for, repack_for

if TYPE_CHECKING:
    from ...convert.arch.base import ArchMapping, SourceTensor
    from ...convert.checkpoint import Checkpoint

#: the files of an export folder
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
GENAI_CONFIG = "genai_config.json"
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

    from ...quant.registry import QUANT_TYPES, all_quantizers

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
    "Qwen3Model": "qwen3",  # BitNet embedding models: a sentence-embedding graph (embedding.py), no genai_config
    "Gemma3TextModel": "gemma3",
}
_ACTS = ("silu", "relu2", "gelu_pytorch_tanh")
#: MoE tensors (GGUF base names, as bitconv's Qwen MoE mapping stacks them)
_MOE_ROUTERS = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight")
_MOE_EXPERTS = ("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight")


def check_supported(checkpoint: "Checkpoint", mapping: "ArchMapping") -> None:
    arch = checkpoint.architecture
    require_output_format(arch, "onnx")
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
    act = mapping.activation
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
    #: a quantized source's grid kept as it is (MatMulNBits storage only)
    repack: GridRepack | None = None


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
                   "ffn_gate_shexp.weight", "ffn_up_shexp.weight", "ffn_down_shexp.weight",
                   "post_attention_norm.weight", "post_ffw_norm.weight",
                   *(f"{n}_norm_in.weight" for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
                                                      "ffn_up", "ffn_down"))}
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
    if not mapping.embedding_model:  # an embedding graph ends at the pooled hidden state: no lm_head
        out_src = "output.weight" if "output.weight" in sources else "token_embd.weight"
        lm_storage = "int8" if quant.ternary or quant.bits == 4 else quant.storage
        add("output.weight", tuple(sources[out_src].shape), lm_storage, "lm_head",
            "tied: from token_embd" if out_src != "output.weight" else "")
    plan = OnnxPlan(checkpoint, mapping, quant, bs, sources, tensors, bitlinear, accuracy_level)
    _plan_repacks(plan)
    if quant.bits == 2 and bs not in nbits.FAST_2BIT_BLOCKS:
        plan.notes.append(f"block size {bs}: onnxruntime has fast 2-bit kernels only for "
                          f"{'/'.join(map(str, nbits.FAST_2BIT_BLOCKS))}")
    if quant.bits is not None and accuracy_level != 4:
        plan.notes.append(f"accuracy_level {accuracy_level}: onnxruntime dequantizes 2- and 8-bit weights on "
                          "every call without level 4")
    return plan


def _plan_repacks(plan: OnnxPlan) -> None:
    """Which MatMulNBits linears keep their quantized source's grid, and a note for those that
    cannot (re-quantized from the dequantized floats, as a float checkpoint is)."""
    kept: dict[str, int] = {}
    requantized: dict[str, list[str]] = {}
    for t in plan.tensors:
        if t.role not in ("linear", "lm_head", "experts") or t.storage not in ("int4", "int8") \
                or t.name not in plan.sources:
            continue
        src = plan.sources[t.name]
        rep, why = (repack_experts_for if t.role == "experts" else repack_for)(src, _BITS[t.storage])
        if rep is not None:
            t.repack = rep
            t.note = rep.describe()
            *experts, n, k = t.shape
            t.nbytes = math.prod(experts) * (nbits.encoded_nbytes(n, k, rep.bits, rep.block_size, zero_points=True)
                                             + (8 * k if rep.reorder else 0))
            kept[rep.describe()] = kept.get(rep.describe(), 0) + 1
        elif why or (t.role == "experts" and any(s.grid is not None for s in src.sources)):
            why = why or "experts not stacked one linear each"
            t.note = f"re-quantized: {why}"
            requantized.setdefault(why, []).append(t.name)
    for what, count in kept.items():
        plan.notes.append(f"{count} tensor(s) keep the {what} in MatMulNBits (exact)")
    for why, names in requantized.items():
        plan.notes.append(f"{len(names)} tensor(s) re-quantized from the dequantized weights ({why}): "
                          f"{', '.join(names[:3])}{' …' if len(names) > 3 else ''}")


def _stored_nbytes(shape: tuple[int, ...], storage: str, block_size: int | None) -> int:
    n = math.prod(shape)
    if storage == "f32":
        return 4 * n
    if storage == "f16":
        return 2 * n
    bits = _BITS[storage]
    *experts, rows, k = shape
    return math.prod(experts) * nbits.encoded_nbytes(rows, k, bits, block_size or 32)
