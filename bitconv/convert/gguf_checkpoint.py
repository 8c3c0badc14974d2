"""A GGUF (or split set) seen as the Hugging Face checkpoint it was converted from, so every exporter
(ONNX, safetensors) takes a GGUF source through its usual path.

- config.json is rebuilt from the hyper-parameters (gguf_config.py), the tokenizer files from the
  vocabulary (gguf_tokenizer.py); both are written into a staging folder that is the checkpoint's
  root for the length of the conversion (`open_gguf_checkpoint` removes it).
- Tensors get their HF names back (the table below, checked against the architecture's own mapping,
  which must map each name to the GGUF name it came from) and stay lazy: float types are read as
  stored (F16 stays F16), block types are dequantized to float32 a slab of rows at a time, stacked
  MoE experts become the hub's per-expert tensors (each a row range of the stack), and llama's q/k
  row permutation is undone (the mapping applies it again for GGUF outputs).
- Ternary types (i2_s, tl1, tl2, tq1_0, tq2_0) of the BitNet and llama families read back as
  transformers' packed layout: uint8 codes plus a one-value `weight_scale` holding the stored scale s
  (`linear_class: "autobitlinear"`). The packed-checkpoint path then feeds the exporters the exact
  codes and s, so ONNX int2 and bitnet-packed hold the GGUF's codes and scale (re-ternarizing s · W_t
  would change the scale: mean|s · W_t| ≠ s).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import CheckpointError
from ..quant.ternary import pack_hf_packed
from .checkpoint import Checkpoint, LazyTensor
from .gguf_config import ArchSpec, arch_spec, hf_config
from .gguf_source import GGUFSource, GGUFTensor
from .gguf_tokenizer import write_tokenizer_files

_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
#: GGUF block tensor base → HF name under model.layers.N (the sub-norms come from the ArchSpec)
_BLOCK = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate", "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj", "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
}
_EXPERTS = {"ffn_gate_exps": "gate_proj", "ffn_up_exps": "up_proj", "ffn_down_exps": "down_proj"}
_NAME = re.compile(r"^(?:blk\.(?P<layer>\d+)\.)?(?P<base>[a-z_]+)\.(?P<kind>weight|bias)$")
_HF_DTYPE_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1}


@dataclass
class GGUFCheckpoint(Checkpoint):
    """A Checkpoint whose tensors live in a GGUF; `root` is the staging folder of its config and
    tokenizer files, the inputs are the GGUF file(s)."""

    gguf: GGUFSource | None = None

    @property
    def name(self) -> str:
        return self.gguf.name if self.gguf is not None else super().name

    def input_files(self) -> list[Path]:
        return self.gguf.input_files() if self.gguf is not None else super().input_files()


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's interleaved rotary rows → HF's half-split ones (the inverse of permute_qk)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(name: str, spec: ArchSpec) -> str | None:
    m = _NAME.match(name)
    if m is None:
        return None
    base, kind, layer = m["base"], m["kind"], m["layer"]
    if layer is None:
        return f"{_GLOBAL[base]}.{kind}" if base in _GLOBAL else None
    block = {**_BLOCK, "attn_sub_norm": spec.attn_sub_norm, "ffn_sub_norm": spec.ffn_sub_norm}
    return f"model.layers.{layer}.{block[base]}.{kind}" if base in block else None


def _lazy(name: str, dtype: str, shape: tuple[int, ...], path: Path, read: Callable[[], np.ndarray],
          rows: Callable[[int, int], np.ndarray] | None) -> LazyTensor:
    return LazyTensor(name, dtype, tuple(shape), math.prod(shape) * _HF_DTYPE_SIZE[dtype], path, read, rows)


def _float_view(t: GGUFTensor, name: str, row_offset: int = 0, shape: tuple[int, ...] | None = None,
                heads: int | None = None) -> LazyTensor:
    """Stored floats as they are (F16 stays F16), other types dequantized to float32; `row_offset` /
    `shape`: a row range of the tensor (one expert of a stack); `heads`: undo the q/k permutation."""
    shape = tuple(shape or t.shape)
    dtype = t.type_name if t.type_name in ("F32", "F16", "BF16") else "F32"
    k = shape[-1] if shape else 1
    n = math.prod(shape[:-1]) if len(shape) > 1 else 1

    def rows(lo: int, hi: int) -> np.ndarray:
        return t.dequantize_rows(row_offset + lo, row_offset + hi).reshape(hi - lo, k)

    def read() -> np.ndarray:
        if not t.row_local:
            w = t.dequantize().reshape(-1, k)[row_offset:row_offset + n].reshape(shape)
        else:
            w = rows(0, n).reshape(shape)
        return unpermute_qk(w, heads) if heads else w

    return _lazy(name, dtype, shape, t.path, read, rows if t.row_local and not heads else None)


class _TernaryViews:
    """The packed (uint8 codes, weight_scale = s) pair of each ternary GGUF tensor. The scale of a
    tensor whose codes were just read is remembered, so the pair costs one read."""

    def __init__(self) -> None:
        self.scales: dict[str, np.float32] = {}

    def pair(self, t: GGUFTensor, name: str, heads: int | None) -> tuple[LazyTensor, LazyTensor]:
        if len(t.shape) != 2:
            raise CheckpointError(f"{t.name}: {t.type_name} {t.shape} is not a ternary matrix")
        n, k = t.shape

        def codes() -> np.ndarray:
            c, s = t.codes_and_scale()
            self.scales[t.name] = np.float32(s)
            c = unpermute_qk(c, heads) if heads else c
            return pack_hf_packed(c)

        def scale() -> np.ndarray:
            s = self.scales.pop(t.name, None)
            return np.array([t.codes_and_scale()[1] if s is None else s], dtype=np.float32)

        weight = _lazy(name, "U8", (-(-n // 4), k), t.path, codes, None)
        return weight, _lazy(name.removesuffix(".weight") + ".weight_scale", "F32", (1,), t.path, scale, None)


def hf_tensors(src: GGUFSource, spec: ArchSpec, config: dict[str, Any]) -> dict[str, LazyTensor]:
    """HF name → lazy tensor for every GGUF tensor, in name order (as a checkpoint lists them)."""
    n_head = int(config["num_attention_heads"])
    n_kv = int(config["num_key_value_heads"])
    packed = "quantization_config" in config
    ternary = _TernaryViews()
    out: dict[str, LazyTensor] = {}
    for t in src:
        m = _NAME.match(t.name)
        base = m["base"] if m else ""
        if m and m["layer"] is not None and base in _EXPERTS and spec.moe:
            if len(t.shape) != 3:
                raise CheckpointError(f"{t.name}: shape {t.shape} is not a stack of expert matrices")
            e, rows, k = t.shape
            for x in range(e):
                hf = f"model.layers.{m['layer']}.mlp.experts.{x}.{_EXPERTS[base]}.weight"
                out[hf] = _float_view(t, hf, x * rows, (rows, k))
            continue
        hf = _hf_name(t.name, spec)
        if hf is None:
            raise CheckpointError(f"{src.path.name}: tensor {t.name} has no place in a {spec.hf_class} checkpoint")
        heads = {"attn_q": n_head, "attn_k": n_kv}.get(base) if spec.permuted_qk else None
        if t.ternary and packed:
            weight, scale = ternary.pair(t, hf, heads)
            out[weight.name], out[scale.name] = weight, scale
        else:
            out[hf] = _float_view(t, hf, heads=heads)
    return dict(sorted(out.items()))


def _check_names(src: GGUFSource, checkpoint: Checkpoint) -> None:
    """The architecture's mapping must send every HF name back to the GGUF name it came from."""
    from .arch import mapping_for

    mapping = mapping_for(checkpoint)
    for t in src:
        hf = _hf_name(t.name, arch_spec(src))
        if hf is not None and mapping.gguf_name(hf) != t.name:
            raise CheckpointError(f"{t.name}: read back as {hf}, which {checkpoint.architecture} maps to "
                                  f"{mapping.gguf_name(hf)}")


def check_decodable(src: GGUFSource) -> None:
    """Refuse, before anything is written, a tensor type bitconv cannot read: one row of a tensor of
    each type is decoded, and every tl1/tl2 matrix needs its tiling (the kernel_config.ini beside it)."""
    seen: set[str] = set()
    for t in src:
        if t.type_name in ("TL1", "TL2"):
            ini = src.path.name.removesuffix(".gguf") + ".kernel_config.ini"
            if t.kernel_config is None:
                raise CheckpointError(f"{t.name}: {t.type_name} needs its tiling, and there is no {ini} beside "
                                      f"{t.path.name} (bitconv and bitnet.cpp write it next to a tl1/tl2 GGUF)")
            if len(t.shape) != 2 or t.kernel_config.get(*t.shape) is None:
                raise CheckpointError(f"{t.name}: {t.type_name} needs its tiling, and {ini} has no section for the "
                                      f"shape {t.shape}")
        elif t.type_name not in seen and t.n_rows:
            seen.add(t.type_name)
            t.dequantize_rows(0, 1)


@contextmanager
def open_gguf_checkpoint(path: str | os.PathLike[str]) -> Iterator[GGUFCheckpoint]:
    """The GGUF at `path` as a checkpoint, its config and tokenizer files in a staging folder that
    exists for the length of the `with` block."""
    src = GGUFSource.open(path)
    spec = arch_spec(src)
    check_decodable(src)
    config = hf_config(src, spec, ternary=any(t.ternary for t in src))
    tensors = hf_tensors(src, spec, config)
    stage = Path(tempfile.mkdtemp(prefix="bitconv-gguf-source-"))
    try:
        checkpoint = GGUFCheckpoint(root=stage, config=config, tensors=tensors, weight_files=src.input_files(),
                                    gguf=src)
        _check_names(src, checkpoint)
        (stage / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        write_tokenizer_files(src.metadata, stage, context_length=config.get("max_position_embeddings"))
        yield checkpoint
    finally:
        shutil.rmtree(stage, ignore_errors=True)
