"""TensorPlan: every output tensor's name, shape and quant type, decided before any data is read.

The type rules are llama.cpp's. Types its converter writes (f32/f16/bf16/q8_0, the ternary types)
follow the converter: 1-D tensors, norms, biases and MoE routers stay F32; token_embd/output take
the quantizer's `embedding_type`; a row length the block size does not divide falls back to F16.
Types only llama-quantize makes (q4_0 … q5_1, the k-quants and their mixes) follow llama-quantize's
per-tensor rules and tensor order (quant/mixes.py), so the file equals converting to f32 and then
running llama-quantize.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..errors import QuantizationError, UsageError
from ..quant.base import Quantizer
from ..quant.registry import get_quantizer
from .arch.base import ArchMapping, SourceTensor
from .checkpoint import Checkpoint

_ALWAYS_F32 = re.compile(r"(^|\.)(ffn_gate_inp|ffn_gate_inp_shexp|pos_embd|token_types|ssm_conv1d)\.weight$")
_EMBEDDINGS = ("token_embd.weight", "output.weight")


@dataclass
class PlannedTensor:
    source: SourceTensor
    quant: Quantizer
    nbytes: int
    note: str = ""

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source.shape

    @property
    def f32_nbytes(self) -> int:
        return math.prod(self.shape) * 4

    @property
    def stored_nbytes(self) -> int:
        """Bytes of the tensor as the checkpoint stores it (what the reader holds in memory)."""
        return sum(s.nbytes for s in self.source.sources)


@dataclass
class TensorPlan:
    mapping: ArchMapping
    quant: Quantizer
    tensors: list[PlannedTensor] = field(default_factory=list)

    def __iter__(self) -> Iterator[PlannedTensor]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def data_nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def largest_f32_nbytes(self) -> int:
        return max((t.f32_nbytes for t in self.tensors), default=0)

    @property
    def largest_stored_nbytes(self) -> int:
        return max((t.stored_nbytes for t in self.tensors), default=0)

    @property
    def n_params(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors)

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.quant.name] = counts.get(t.quant.name, 0) + 1
        return counts


def choose_quant(name: str, shape: tuple[int, ...], quant: Quantizer,
                 mapping: ArchMapping | None = None) -> tuple[Quantizer, str]:
    """The quantizer one tensor gets in a file of type `quant`, and why when it differs."""
    if mapping is not None and (own := mapping.tensor_quant(name, shape, quant)) is not None:
        return own
    if len(shape) <= 1 or name.endswith("_norm.weight"):
        return get_quantizer("f32"), "1-D / norm"
    if _ALWAYS_F32.search(name) or not name.endswith(".weight"):
        return get_quantizer("f32"), "kept f32 (router / bias)"
    if mapping is not None and mapping.is_ternary_linear(name):
        return _ternary_linear_quant(name, shape, quant)
    chosen = quant
    note = ""
    if name in _EMBEDDINGS and quant.embedding_type:
        chosen, note = get_quantizer(quant.embedding_type), "embedding/output at higher precision"
    elif quant.ternary:
        chosen, note = get_quantizer("f16"), "not a ternary linear: f16"
    if not chosen.can_quantize(shape):
        return get_quantizer("f16"), f"row length {shape[-1]} not a multiple of {chosen.block_size}: f16"
    return chosen, note


def _ternary_linear_quant(name: str, shape: tuple[int, ...], quant: Quantizer) -> tuple[Quantizer, str]:
    """A BitNet linear is ternary whatever the file type: ternary types pack its codes, other types
    store its dequantized ternary image (s · W_t), as llama.cpp's converter does."""
    from ..quant.tq import ternary_input

    if quant.ternary:
        if (problem := quant.shape_error(shape)):
            raise QuantizationError(f"{name}: shape {tuple(shape)} — {problem}", tensor=name)
        return quant, "ternary"
    chosen = quant if quant.can_quantize(shape) else get_quantizer("f16")
    return ternary_input(chosen), "dequantized ternary (s·W_t)"


def _llama_quantize_types(sources: list[SourceTensor], mapping: ArchMapping,
                          quant: Quantizer) -> list[tuple[Quantizer, str]]:
    """Each tensor's quantizer under llama-quantize's rules for `quant.llama_ftype`."""
    from gguf import GGMLQuantizationType

    from ..quant.mixes import LlamaQuantizeRules, ModelFacts
    from ..quant.registry import quantizer_for_ggml_type

    c = mapping.config
    n_expert = next((int(c[k]) for k in ("num_local_experts", "num_experts", "n_routed_experts") if c.get(k)), 0)
    # llama-quantize's layer count is the file's block count (multi-token-prediction blocks included)
    facts = ModelFacts(mapping.arch_name, mapping.block_count, mapping.n_head, mapping.n_head_kv, n_expert)
    rules = LlamaQuantizeRules(int(quant.llama_ftype or 0), facts, pure=quant.pure)
    default = GGMLQuantizationType(quant.ggml_type)
    out: list[tuple[Quantizer, str]] = []
    for src, t in zip(sources, rules.types([(s.name, s.shape) for s in sources])):
        if t is None:
            out.append((get_quantizer("f32"), "kept f32 (not quantized by llama-quantize)"))
            continue
        q = quantizer_for_ggml_type(int(t))  # tensors are named by their own type (q4_k, not q4_k_m)
        note = "" if t == default else (
            f"row length {src.shape[-1]} not a multiple of {quant.block_size}: {q.name}"
            if src.shape[-1] % quant.block_size else f"{q.name} (llama-quantize {quant.name} rule)")
        if mapping.is_ternary_linear(src.name):
            from ..quant.tq import ternary_input

            q, note = ternary_input(q), (note + "; " if note else "") + "dequantized ternary (s·W_t)"
        out.append((q, note))
    return out


def make_plan(checkpoint: Checkpoint, mapping: ArchMapping, quant: Quantizer, *,
              force_ternarize: bool = False) -> TensorPlan:
    mapping.configure_for(quant)
    if quant.ternary and not mapping.ternary_model:
        if not force_ternarize:
            raise UsageError(
                f"{quant.name} is a ternary type and {checkpoint.architecture} is not a ternary-trained model "
                "(BitNet b1.58): ternarizing it after training destroys its accuracy; pass --force-ternarize "
                "only to test a runtime")
        mapping.treat_as_ternary()
    plan = TensorPlan(mapping, quant)
    seen: set[str] = set()
    sources: list[SourceTensor] = []
    for src in mapping.tensors(checkpoint):
        if src.name in seen:
            raise_dup(src)
        seen.add(src.name)
        mapping.check_shape(src)
        sources.append(src)
    mapping.check_complete(seen)
    if quant.llama_ftype is not None and not quant.ternary:
        from ..quant.mixes import llama_order_key

        sources.sort(key=lambda s: llama_order_key(s.name))
        chosen = _llama_quantize_types(sources, mapping, quant)
    else:
        chosen = [choose_quant(src.name, src.shape, quant, mapping) for src in sources]
    for src, (q, note) in zip(sources, chosen):
        plan.tensors.append(PlannedTensor(src, q, q.encoded_nbytes(src.shape), note))
    return plan


def raise_dup(src: SourceTensor) -> None:
    from ..errors import CheckpointError

    raise CheckpointError(f"{src.hf_names[0] if src.hf_names else src.name}: two checkpoint tensors map to {src.name}")


def plan_checkpoint(source: Any, quant: str, *, revision: str | None = None, allow_pickle: bool = False,
                    force_ternarize: bool = False, kernel_config: Any = None) -> tuple[Checkpoint, TensorPlan]:
    """Open a checkpoint (a path or hub id; or take one already open) and plan it for one quant type. Lives here rather than in
    the API so that validate and inspect, which plan references, never import the API layer.
    `kernel_config` (tl1/tl2): a KernelConfig or a kernel_config.ini path to pack for."""
    from ..quant.tl import KernelConfig, LutQuantizer
    from .arch import mapping_for

    checkpoint = source if isinstance(source, Checkpoint) else Checkpoint.open(source, revision=revision,
                                                                              allow_pickle=allow_pickle)
    mapping = mapping_for(checkpoint)
    quantizer = get_quantizer(quant)
    if kernel_config is not None:
        if not isinstance(quantizer, LutQuantizer):
            raise UsageError(f"--kernel-config applies to the LUT layouts tl1/tl2, not {quantizer.name}")
        cfg = kernel_config if isinstance(kernel_config, KernelConfig) else KernelConfig.read(kernel_config)
        quantizer = type(quantizer)(kernel_config=cfg)
    return checkpoint, make_plan(checkpoint, mapping, quantizer, force_ternarize=force_ternarize)
