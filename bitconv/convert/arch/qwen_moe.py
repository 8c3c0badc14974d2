"""Qwen MoE (Qwen2MoeForCausalLM, Qwen3MoeForCausalLM): experts stacked into 3-D GGUF tensors.

Hub checkpoints store one 2-D tensor per expert; transformers 5 may write fused 3-D
`experts.gate_up_proj` / `experts.down_proj`. Both become `blk.N.ffn_{gate,up,down}_exps`, emitted
where llama.cpp's converter emits them (after a layer's last expert tensor, down/gate/up), so the
tensor order matches its files.
"""
from __future__ import annotations

import re
from typing import Any, ClassVar, Iterator

import gguf
import numpy as np

from ...errors import CheckpointError
from ..checkpoint import Checkpoint, LazyTensor
from .base import ArchMapping, QKNormShapes, SourceTensor, _hparam, register_arch, stack

_EXPERT = re.compile(r"^(?P<prefix>.*\.layers\.(?P<layer>\d+)\.mlp\.experts)\.(?P<expert>\d+)\.(?P<w>gate_proj|up_proj|down_proj)\.weight$")
_FUSED = re.compile(r"^(?P<prefix>.*\.layers\.(?P<layer>\d+)\.mlp\.experts)\.(?P<w>gate_up_proj|down_proj)(\.weight)?$")


class QwenMoeMapping(ArchMapping):
    #: config.json must name the experts (a mapping whose family has dense members too sets False)
    moe_required: ClassVar[bool] = True
    # a block is sparse (router + stacked experts) or, per mlp_only_layers / decoder_sparse_step, dense
    ffn_variants = (("ffn_gate_inp.weight", "ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight"),
                    ArchMapping.ffn_variants[0])

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        req = self.moe_required
        self.n_experts = int(_hparam(self.config, "num_local_experts", "num_experts", required=req, default=0))
        self.moe_ff = int(_hparam(self.config, "moe_intermediate_size", required=req, default=0))
        self.shared_ff = _hparam(self.config, "shared_expert_intermediate_size")

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        h, e, f = self.hidden, self.n_experts, self.moe_ff
        shapes = super().expected_shapes()
        shapes.update({
            "ffn_gate_inp.weight": (e, h),
            "ffn_gate_exps.weight": (e, f, h),
            "ffn_up_exps.weight": (e, f, h),
            "ffn_down_exps.weight": (e, h, f),
        })
        if self.shared_ff is not None:
            s = int(self.shared_ff)
            shapes.update({"ffn_gate_shexp.weight": (s, h), "ffn_up_shexp.weight": (s, h),
                           "ffn_down_shexp.weight": (h, s), "ffn_gate_inp_shexp.weight": (1, h)})
        return shapes

    def tensors(self, checkpoint: Checkpoint) -> Iterator[SourceTensor]:
        pending: dict[int, dict[str, LazyTensor]] = {}
        for lt in self.hf_tensors(checkpoint):
            if m := _FUSED.match(lt.name):
                yield from self._fused(lt, m)
                continue
            m = _EXPERT.match(lt.name)
            if m is None:
                yield from self.map_tensor(lt)
                continue
            layer = int(m["layer"])
            if int(m["expert"]) >= self.n_experts:
                raise CheckpointError(f"{lt.name}: expert index beyond num_experts={self.n_experts}")
            group = pending.setdefault(layer, {})
            group[lt.name] = lt
            if len(group) == 3 * self.n_experts:
                del pending[layer]
                for w in ("down_proj", "gate_proj", "up_proj"):
                    names = [f"{m['prefix']}.{x}.{w}.weight" for x in range(self.n_experts)]
                    missing = [n for n in names if n not in group]
                    if missing:
                        raise CheckpointError(f"{missing[0]}: expert tensor missing from the checkpoint")
                    parts = [group[n] for n in names]
                    yield SourceTensor(self.gguf_name(f"{m['prefix']}.{w}.weight"),
                                       (self.n_experts, *parts[0].shape), parts, stack, names)
        if pending:
            layer, group = next(iter(pending.items()))
            raise CheckpointError(
                f"layer {layer}: {len(group)} expert tensors found, {3 * self.n_experts} expected "
                f"(num_experts={self.n_experts})")

    def _fused(self, lt: LazyTensor, m: re.Match[str]) -> Iterator[SourceTensor]:
        if m["w"] == "down_proj":
            yield SourceTensor(self.gguf_name(f"{m['prefix']}.down_proj.weight"), lt.shape, [lt], hf_names=[lt.name])
            return
        if len(lt.shape) != 3 or lt.shape[1] % 2:
            raise CheckpointError(f"{lt.name}: unexpected fused gate_up shape {lt.shape}")
        half = lt.shape[1] // 2
        for w, sl in (("gate_proj", slice(0, half)), ("up_proj", slice(half, None))):
            yield SourceTensor(self.gguf_name(f"{m['prefix']}.{w}.weight"), (lt.shape[0], half, lt.shape[2]), [lt],
                               lambda a, sl=sl: np.ascontiguousarray(a[0][:, sl, :]), [lt.name])

    def add_metadata(self, w: gguf.GGUFWriter, file_type: int | None) -> None:
        super().add_metadata(w, file_type)
        if self.moe_ff:
            w.add_expert_feed_forward_length(self.moe_ff)
        if self.shared_ff is not None:
            w.add_expert_shared_feed_forward_length(int(self.shared_ff))


@register_arch("Qwen2MoeForCausalLM")
class Qwen2MoeMapping(QwenMoeMapping):
    gguf_arch = gguf.MODEL_ARCH.QWEN2MOE


@register_arch("Qwen3MoeForCausalLM")
class Qwen3MoeMapping(QKNormShapes, QwenMoeMapping):
    gguf_arch = gguf.MODEL_ARCH.QWEN3MOE
