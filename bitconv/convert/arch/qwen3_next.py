"""Qwen3-Next (Qwen3NextForCausalLM) and Qwen3.5 (Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM, and the
language model of the Qwen3_5[Moe]ForConditionalGeneration checkpoints): hybrid decoders whose
blocks are gated DeltaNet linear attention or gated full attention, with a dense or a routed +
shared-expert MLP. What llama.cpp's converter (conversion/qwen.py: Qwen3NextModel,
_LinearAttentionVReorderBase, Qwen3_5TextModel / Qwen3_5MoeTextModel) does, restated:

* names: ``language_model.`` is dropped and the vision tower skipped (it goes to an mmproj file);
  ``linear_attn.{in_proj_qkv, in_proj_z, in_proj_b, in_proj_a, in_proj_ba, conv1d, norm, out_proj}``
  become ``attn_qkv, attn_gate, ssm_beta, ssm_alpha, ssm_ba, ssm_conv1d, ssm_norm, ssm_out``,
  ``A_log`` → ``ssm_a``, ``dt_bias`` → ``ssm_dt.bias``, ``post_attention_layernorm`` →
  ``post_attention_norm``; the gated attention's ``q_proj`` (query and gate per head) is kept whole.
* values: every RMSNorm weight but ``linear_attn.norm`` gets +1 (transformers computes
  ``x · (1 + w)``), in float32 (f16 for f16 checkpoints); ``ssm_a = -exp(A_log)``; conv1d
  [C, 1, K] → [C, K]. Qwen3-Next's fused ``in_proj_qkvz`` (q, k, v, z per key-head group) is split
  into ``attn_qkv`` = all q, all k, all v and ``attn_gate`` = all z. Qwen3.5 with fewer key than
  value heads has its value heads reordered from grouped-by-key-head to tiled order (the rows of
  the v part of in_proj_qkv and of conv1d, in_proj_z/a/b, A_log, dt_bias; the columns of out_proj).
* multi-token prediction: ``mtp.*`` tensors become extra blocks after the decoder's
  (``mtp.layers.K.*`` → ``blk.{n+K}.*``; ``fc``, ``pre_fc_norm_embedding``,
  ``pre_fc_norm_hidden``, ``norm`` → ``blk.{n}.nextn.{eh_proj, enorm, hnorm, shared_head_norm}``),
  with ``nextn_predict_layers``, as the converter writes them by default. A checkpoint without
  ``mtp.*`` tensors (anything transformers saved) gives what the converter writes with
  ``--no-mtp`` (the converter itself stops on an assertion there without that flag).

``-exp(A_log)`` is computed by torch when it is installed, as the converter computes it: torch's
float32 exp is not correctly rounded and differs from numpy's; without torch it is rounded
correctly from float64, which differs from torch in about 1% of values by one ulp.

ONNX and safetensors layouts do not exist for these architectures; bitconv writes GGUF only.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Callable, ClassVar, Iterator

import gguf
import numpy as np

from ...errors import CheckpointError
from ..checkpoint import Checkpoint, LazyTensor
from .base import SourceTensor, _hparam, register_arch
from .qwen_moe import QwenMoeMapping

#: substrings of the multimodal tensors the converter's text model skips
_MULTIMODAL = ("visual.", "vision.", "vision_", "patch_embed")
#: mtp.<name> outside the MTP decoder blocks → the name under the first MTP block
_MTP_EXTRA = {"fc": "eh_proj", "pre_fc_norm_embedding": "enorm", "pre_fc_norm_hidden": "hnorm",
              "norm": "shared_head.norm"}
_NEXTN = re.compile(r"^model\.layers\.(\d+)\.(eh_proj|enorm|hnorm|shared_head\.norm)\.weight$")
_NEXTN_GGUF = {"eh_proj": "nextn.eh_proj", "enorm": "nextn.enorm", "hnorm": "nextn.hnorm",
               "shared_head.norm": "nextn.shared_head_norm"}
_ATTENTION = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight", "attn_q_norm.weight",
              "attn_k_norm.weight")


def tile_heads(a: np.ndarray, axis: int, n_k: int, per_k: int, head_dim: int) -> np.ndarray:
    """Value heads grouped by key head ([k0: v0..v(r-1)], [k1: ...]) → tiled ([v0 of k0, k1, ...],
    [v1 of k0, k1, ...]) along `axis`, as llama.cpp's graph broadcasts them."""
    shape = a.shape
    split = a.reshape(shape[:axis] + (n_k, per_k, head_dim) + shape[axis + 1:])
    return np.ascontiguousarray(np.swapaxes(split, axis, axis + 1)).reshape(shape)


def neg_exp(a: np.ndarray) -> np.ndarray:
    """-exp(a) in a's float type, as the converter's torch computes it (see the module docstring)."""
    try:
        import torch
    except ImportError:
        return -(np.exp(a.astype(np.float64)).astype(a.dtype))
    return (-torch.exp(torch.from_numpy(np.array(a)))).numpy()  # a copy: torch wants a writable array


def plus_one(a: np.ndarray) -> np.ndarray:
    return a + a.dtype.type(1)


class GatedDeltaNetMapping(QwenMoeMapping):
    """Shared by the family: the block layout (which layers are linear attention), the linear
    attention's tensors and transforms, multi-token-prediction blocks and the metadata."""

    moe_required = False
    output_formats = ("gguf",)
    #: the linear-attention projection of β and α: separate (Qwen3.5) or fused (Qwen3-Next)
    linear_ba: ClassVar[tuple[str, ...]] = ("ssm_beta.weight", "ssm_alpha.weight")
    #: reorder value heads to tiled order where key heads are fewer (Qwen3.5)
    tile_value_heads: ClassVar[bool] = False
    #: rope.dimension_sections written when config.json gives no mrope_section (Qwen3.5)
    default_sections: ClassVar[list[int] | None] = None

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        get = lambda *k: _hparam(self.config, *k, required=True)  # noqa: E731
        self.n_k, self.n_v = int(get("linear_num_key_heads")), int(get("linear_num_value_heads"))
        self.d_k, self.d_v = int(get("linear_key_head_dim")), int(get("linear_value_head_dim"))
        self.conv_kernel = int(get("linear_conv_kernel_dim"))
        if self.n_v % self.n_k:
            raise CheckpointError(f"linear_num_value_heads={self.n_v} is not a multiple of "
                                  f"linear_num_key_heads={self.n_k}")
        self.layer_types: list[str] | None = self.config.get("layer_types")
        self.interval = int(_hparam(self.config, "full_attention_interval", default=4))
        if self.layer_types is not None and len(self.layer_types) != self.n_layers:
            raise CheckpointError(f"config.json: layer_types has {len(self.layer_types)} entries, "
                                  f"num_hidden_layers is {self.n_layers}")
        self.n_mtp = 0

    @property
    def block_count(self) -> int:
        return self.n_layers + self.n_mtp

    def is_recurrent(self, layer: int) -> bool:
        """Whether block `layer` is gated DeltaNet (multi-token-prediction blocks never are)."""
        if layer >= self.n_layers:
            return False
        if self.layer_types is not None:
            return self.layer_types[layer] == "linear_attention"
        return (layer + 1) % self.interval != 0

    # --- names --------------------------------------------------------------------------------

    def tensors(self, checkpoint: Checkpoint) -> Iterator[SourceTensor]:
        mtp = {n for n in (k.replace("language_model.", "") for k in checkpoint.tensors)
               if n.startswith(("mtp.", "model.mtp."))}
        blocks = {int(m.group(1)) for n in mtp if (m := re.match(r"^(?:model\.)?mtp\.layers\.(\d+)\.", n))}
        self.n_mtp = 0
        if mtp:
            self.n_mtp = int(self.config.get("mtp_num_hidden_layers") or 0) or (max(blocks) + 1 if blocks else 0)
            if not self.n_mtp:
                raise CheckpointError(f"{sorted(mtp)[0]}: multi-token-prediction tensors without mtp.layers.N "
                                      "blocks or mtp_num_hidden_layers in config.json")
        self.tensor_map = gguf.get_tensor_name_map(self.gguf_arch, self.block_count)
        yield from super().tensors(checkpoint)

    def hf_tensors(self, checkpoint: Checkpoint) -> Iterator[LazyTensor]:
        for lt in super().hf_tensors(checkpoint):
            name = lt.name.replace("language_model.", "")
            if any(s in name for s in _MULTIMODAL):
                continue
            name = name.removeprefix("model.") if name.startswith("model.mtp.") else name
            if name.startswith("mtp."):
                parts = name.split(".", 3)
                if len(parts) == 4 and parts[1] == "layers" and parts[2].isdecimal():
                    name = f"model.layers.{self.n_layers + int(parts[2])}.{parts[3]}"
                elif len(parts) == 3 and parts[1] in _MTP_EXTRA:
                    name = f"model.layers.{self.n_layers}.{_MTP_EXTRA[parts[1]]}.{parts[2]}"
            yield lt if name == lt.name else replace(lt, name=name)

    def gguf_name(self, hf_name: str) -> str:
        if m := _NEXTN.match(hf_name):
            return f"blk.{m.group(1)}.{_NEXTN_GGUF[m.group(2)]}.weight"
        if hf_name.endswith(".dt_bias"):
            hf_name = hf_name[:-len(".dt_bias")] + ".dt_proj.bias"
        return super().gguf_name(hf_name)

    # --- values -------------------------------------------------------------------------------

    def map_tensor(self, lt: LazyTensor) -> Iterator[SourceTensor]:
        name = lt.name
        if name.endswith(".in_proj_qkvz.weight"):
            yield from self._split_qkvz(lt)
            return
        gname = self.gguf_name(name)
        reorder = self._value_head_order(name)
        if name.endswith(".A_log"):
            yield self._computed(gname, lt, lambda a: neg_exp(reorder(a)))
        elif name.endswith("norm.weight") and not name.endswith("linear_attn.norm.weight"):
            yield self._computed(gname, lt, plus_one)
        elif ".conv1d." in name:
            shape = tuple(d for d in lt.shape if d != 1)
            yield SourceTensor(gname, shape, [lt], lambda a: reorder(a[0].reshape(shape)), hf_names=[name])
        elif reorder is _same:
            yield SourceTensor(gname, lt.shape, [lt], hf_names=[name])
        else:
            yield SourceTensor(gname, lt.shape, [lt], lambda a: reorder(a[0]), hf_names=[name])

    @staticmethod
    def _computed(gname: str, lt: LazyTensor, f: Callable[[np.ndarray], np.ndarray]) -> SourceTensor:
        """A tensor whose values the converter computes (in f32, or f16 for an f16 checkpoint)."""
        return SourceTensor(gname, lt.shape, [lt], decode=lambda: f(lt.load()).astype(np.float32),
                            hf_names=[lt.name])

    def _value_head_order(self, name: str) -> Callable[[np.ndarray], np.ndarray]:
        """The permutation a linear-attention tensor needs for tiled value heads (identity if none)."""
        if not self.tile_value_heads or self.n_k == self.n_v or ".linear_attn." not in name:
            return _same
        n_k, per_k, d_v = self.n_k, self.n_v // self.n_k, self.d_v
        qk = 2 * self.n_k * self.d_k
        if name.endswith((".in_proj_qkv.weight", ".conv1d.weight")):
            return lambda a: np.concatenate([a[:qk], tile_heads(a[qk:], 0, n_k, per_k, d_v)])
        if name.endswith(".in_proj_z.weight"):
            return lambda a: tile_heads(a, 0, n_k, per_k, d_v)
        if name.endswith((".in_proj_a.weight", ".in_proj_b.weight", ".A_log", ".dt_bias")):
            return lambda a: tile_heads(a, 0, n_k, per_k, 1)
        if name.endswith(".out_proj.weight"):
            return lambda a: tile_heads(a, 1, n_k, per_k, d_v)
        return _same

    def _split_qkvz(self, lt: LazyTensor) -> Iterator[SourceTensor]:
        """Qwen3-Next's [q, k, v, z] per key-head group → attn_qkv (all q, all k, all v), attn_gate (all z)."""
        h, d_k, dv_group = self.hidden, self.d_k, self.n_v // self.n_k * self.d_v
        group = 2 * d_k + 2 * dv_group
        if lt.shape != (self.n_k * group, h):
            raise CheckpointError(f"{lt.name}: shape {lt.shape} disagrees with config.json "
                                  f"(expects {(self.n_k * group, h)})")

        def qkv(a: list[np.ndarray]) -> np.ndarray:
            g = a[0].reshape(self.n_k, group, h)
            return np.concatenate([g[:, :d_k].reshape(-1, h), g[:, d_k:2 * d_k].reshape(-1, h),
                                   g[:, 2 * d_k:2 * d_k + dv_group].reshape(-1, h)])

        def z(a: list[np.ndarray]) -> np.ndarray:
            return np.ascontiguousarray(a[0].reshape(self.n_k, group, h)[:, 2 * d_k + dv_group:]).reshape(-1, h)

        prefix = lt.name[:-len(".in_proj_qkvz.weight")]
        yield SourceTensor(self.gguf_name(prefix + ".in_proj_qkv.weight"),
                           (2 * self.n_k * d_k + self.n_k * dv_group, h), [lt], qkv, [lt.name])
        yield SourceTensor(self.gguf_name(prefix + ".in_proj_z.weight"), (self.n_k * dv_group, h), [lt], z, [lt.name])

    # --- shapes and completeness ----------------------------------------------------------------

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        h, hd, nv = self.hidden, self.head_dim, self.n_v
        key, value = self.n_k * self.d_k, self.n_v * self.d_v
        shapes = super().expected_shapes()
        shapes.update({
            "attn_q.weight": (2 * self.n_head * hd, h),  # query and gate, per head
            "attn_q_norm.weight": (hd,), "attn_k_norm.weight": (hd,), "post_attention_norm.weight": (h,),
            "attn_qkv.weight": (2 * key + value, h), "attn_gate.weight": (value, h),
            "ssm_conv1d.weight": (2 * key + value, self.conv_kernel), "ssm_dt.bias": (nv,), "ssm_a": (nv,),
            "ssm_beta.weight": (nv, h), "ssm_alpha.weight": (nv, h), "ssm_ba.weight": (2 * nv, h),
            "ssm_norm.weight": (self.d_v,), "ssm_out.weight": (h, value),
            "nextn.eh_proj.weight": (h, 2 * h), "nextn.enorm.weight": (h,), "nextn.hnorm.weight": (h,),
            "nextn.shared_head_norm.weight": (h,),
        })
        return shapes

    @property
    def ffn_variants(self) -> tuple[tuple[str, ...], ...]:  # type: ignore[override]
        if not self.n_experts:
            return (("ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"),)
        routed = ("ffn_gate_inp.weight", "ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight")
        if self.shared_ff:
            routed += ("ffn_gate_inp_shexp.weight", "ffn_gate_shexp.weight", "ffn_up_shexp.weight",
                       "ffn_down_shexp.weight")
        return (routed,)

    @property
    def layer_tensors(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("attn_norm.weight", "post_attention_norm.weight")

    def check_complete(self, names: set[str]) -> None:
        super().check_complete(names)  # embeddings, norms, feed-forward of the decoder blocks
        linear = ("attn_qkv.weight", "attn_gate.weight", "ssm_conv1d.weight", "ssm_dt.bias", "ssm_a",
                  "ssm_norm.weight", "ssm_out.weight") + self.linear_ba
        nextn = ("nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight")
        for i in range(self.block_count):
            need = linear if self.is_recurrent(i) else _ATTENTION
            if i >= self.n_layers:  # base checked the decoder blocks' norms and feed-forward
                need += nextn + self.layer_tensors + self.ffn_variants[0]
            for base in need:
                if f"blk.{i}.{base}" not in names:
                    kind = "multi-token-prediction" if i >= self.n_layers else \
                        "linear-attention" if self.is_recurrent(i) else "full-attention"
                    raise CheckpointError(f"{kind} block {i}: no tensor for blk.{i}.{base} in the checkpoint")

    # --- metadata -------------------------------------------------------------------------------

    def add_metadata(self, w: gguf.GGUFWriter, file_type: int | None) -> None:
        super().add_metadata(w, file_type)
        if self.n_mtp:
            w.add_nextn_predict_layers(self.n_mtp)
        w.add_ssm_conv_kernel(self.conv_kernel)
        w.add_ssm_state_size(self.d_k)
        w.add_ssm_group_count(self.n_k)
        w.add_ssm_time_step_rank(self.n_v)
        w.add_ssm_inner_size(self.d_v * self.n_v)
        if self.layer_types is not None:  # gguf-py 0.19 has no add_recurrent_layers
            w.add_array(f"{self.arch_name}.attention.recurrent_layers",
                        [self.is_recurrent(i) for i in range(self.block_count)])
        w.add_full_attention_interval(self.interval)
        factor = self.rope_params.get("partial_rotary_factor", self.config.get("partial_rotary_factor", 0.25))
        w.add_rope_dimension_count(int(self.head_dim * factor))
        if self.default_sections is not None and self.rope_sections() is None:
            w.add_rope_dimension_sections(self.default_sections)


def _same(a: np.ndarray) -> np.ndarray:
    return a


@register_arch("Qwen3NextForCausalLM")
class Qwen3NextMapping(GatedDeltaNetMapping):
    gguf_arch = gguf.MODEL_ARCH.QWEN3NEXT
    linear_ba = ("ssm_ba.weight",)


@register_arch("Qwen3_5ForCausalLM", "Qwen3_5ForConditionalGeneration")
class Qwen35Mapping(GatedDeltaNetMapping):
    gguf_arch = gguf.MODEL_ARCH.QWEN35
    tile_value_heads = True
    default_sections = [11, 11, 10, 0]  # transformers' default mrope_section, padded


@register_arch("Qwen3_5MoeForCausalLM", "Qwen3_5MoeForConditionalGeneration")
class Qwen35MoeMapping(Qwen35Mapping):
    gguf_arch = gguf.MODEL_ARCH.QWEN35MOE
