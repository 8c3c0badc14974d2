"""BitNet embedding models (microsoft/bitnet-embedding-0.6b): a Qwen3 backbone (`Qwen3Model`, no
lm_head) whose seven projections per block are BitLinear layers — each with its own RMSNorm before
the ternary matmul (`<proj>.norm.weight` → GGUF `blk.N.<name>_norm_in.weight`) — pooled (last
token, sentence-transformers' `1_Pooling/config.json`) and L2-normalized into sentence embeddings.

The GGUF file is the one bitnet.cpp's `utils/convert-bitnet-embedding-to-gguf.py` writes (arch
`qwen3`, read by bitnet.cpp's `release-bitnet-embedding-0.6b-270m` llama.cpp branch, which adds the
per-projection norms): its tensor names, metadata keys in its order, the Qwen3 BPE vocabulary with
`<|endoftext|>` as EOS and `add_eos_token` (the pooled token), every norm in F16, token_embd in
F16, and for i2_s its own ternary scale: numpy's float32 `mean(|W|)` (stored as it is; codes
rint(W · f32(1 / mean))). Its f32 / f16 files hold the master weights, as the script writes them
(its baseline path). bitconv adds q8_0 (the ternary image s·W_t, what the model computes) and the
LUT layouts tl1 / tl2 (the same codes and scales as i2_s).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar, Iterator

import gguf
import numpy as np

from ...accel import kernels
from ...errors import CheckpointError, UnsupportedArchitecture, UsageError
from ...quant.base import Quantizer
from ...quant.registry import get_quantizer
from ...quant.ternary import EPS, TernaryScale
from ..checkpoint import Checkpoint, LazyTensor
from .. import embedding_vocab  # noqa: F401  (registers the "qwen3-embedding" tokenizer kind)
from .base import ArchMapping, SourceTensor, register_arch
from .packed_ternary import PackedTernaryMixin

#: HF name (after `layers.N.`) → GGUF base name, as the script maps them
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "self_attn.q_proj.norm.weight": "attn_q_norm_in.weight",
    "self_attn.k_proj.norm.weight": "attn_k_norm_in.weight",
    "self_attn.v_proj.norm.weight": "attn_v_norm_in.weight",
    "self_attn.o_proj.norm.weight": "attn_output_norm_in.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.gate_proj.norm.weight": "ffn_gate_norm_in.weight",
    "mlp.up_proj.norm.weight": "ffn_up_norm_in.weight",
    "mlp.down_proj.norm.weight": "ffn_down_norm_in.weight",
}
_GLOBAL_NAMES = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight"}
_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
#: the seven BitLinear input norms (GGUF base names)
NORM_IN = tuple(v for v in _LAYER_NAMES.values() if v.endswith("_norm_in.weight"))
#: sentence-transformers pooling flags → gguf PoolingType, in the order the script tests them
_POOLING_FLAGS = (("pooling_mode_mean_tokens", gguf.PoolingType.MEAN), ("pooling_mode_cls_token", gguf.PoolingType.CLS),
                  ("pooling_mode_lasttoken", gguf.PoolingType.LAST))
#: GGUF types bitconv writes for these models; f32 / f16 hold the master weights, as the script writes them
GGUF_TYPES = ("f32", "f16", "q8_0", "i2_s", "tl1", "tl2")
MASTER_TYPES = ("f32", "f16")
NO_RUNTIME = ("no runtime bitconv targets runs BitNet embedding models: mainline llama.cpp lacks their per-projection "
              "norms; bitnet.cpp's release-bitnet-embedding-0.6b-270m branch (llama-embedding) reads the i2_s / f16 "
              "files: use --target bitnet-x86 or --quant i2_s")


def script_absmean_scale(w: np.ndarray) -> TernaryScale:
    """The script's i2_s scale: numpy's float32 mean(|W|) over the flattened tensor (stored as it
    is), floored at 1e-5; codes are rint(W · f32(1 / mean))."""
    flat = np.ascontiguousarray(w, dtype=np.float32).reshape(-1)
    if flat.size == 0:
        raise CheckpointError("cannot ternarize an empty tensor")
    return _script_scale(np.float32(np.mean(np.abs(flat))))


def script_absmean_scale_stored(raw: np.ndarray, stored_dtype: str) -> TernaryScale | None:
    """`script_absmean_scale` read straight from the stored values (bf16 bits or float32) in one C
    pass, numpy's summation order reproduced (the same bits); None where the kernel cannot read them."""
    mean = kernels.numpy_abs_mean_stored(raw, stored_dtype)
    return None if mean is None else _script_scale(mean)


def _script_scale(mean: np.float32) -> TernaryScale:
    mean = EPS if mean < EPS else mean  # max(mean, 1e-5) as Python's max: a NaN mean stays NaN
    return TernaryScale(inv=np.float32(np.float32(1.0) / mean), scale=np.float32(mean))


def read_pooling(root: Path) -> tuple[int, bool]:
    """(gguf PoolingType, L2-normalize) from sentence-transformers' modules.json, as the script reads
    it: the first *Pooling module's config (mean, else CLS, else last token), MEAN when there is none.
    The embedding is normalized when modules.json lists a Normalize module (or there is no modules.json)."""
    pooling, normalize = gguf.PoolingType.MEAN, True
    path = root / "modules.json"
    if not path.is_file():
        return int(pooling), normalize
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
        types = [str(m["type"]) for m in modules]
        normalize = any(t.endswith("Normalize") for t in types)
        for m in modules:
            if str(m["type"]).endswith("Pooling"):
                cfg_path = root / str(m.get("path", "")) / "config.json"
                if cfg_path.is_file():
                    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
                    pooling = next((p for flag, p in _POOLING_FLAGS if cfg.get(flag)), pooling)
                break
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable sentence-transformers module list ({type(e).__name__}: {e})") from e
    return int(pooling), normalize


@register_arch("Qwen3Model")
class BitnetEmbeddingQwen3Mapping(PackedTernaryMixin):
    """A BitNet embedding checkpoint on a Qwen3 backbone; master (bf16/f32) or packed linears."""

    gguf_arch = gguf.MODEL_ARCH.QWEN3
    ternary_model = True
    ternary_linears = ArchMapping.TERNARY_LINEARS
    tokenizer_kinds = ("qwen3-embedding",)
    #: HF name after `layers.N.` → GGUF base name
    layer_names: ClassVar[dict[str, str]] = _LAYER_NAMES
    embedding_model: ClassVar[bool] = True
    standalone_metadata: ClassVar[bool] = True
    skip_suffixes = ArchMapping.skip_suffixes + ("lm_head.weight",)
    layer_tensors = ArchMapping.layer_tensors + ("attn_q_norm.weight", "attn_k_norm.weight") + NORM_IN
    refused_targets: ClassVar[dict[str, str]] = {"llama.cpp": NO_RUNTIME}
    reading_quant: ClassVar[str] = "i2_s"  # its f32 files hold the master weights, not the ternary model
    backbone: ClassVar[str] = "Qwen3"

    def __init__(self, config: dict[str, Any], root: Path | None = None) -> None:
        super().__init__(config)
        self.pooling, self.normalize = read_pooling(root) if root is not None else (int(gguf.PoolingType.MEAN), True)

    @classmethod
    def for_checkpoint(cls, checkpoint: Checkpoint) -> "BitnetEmbeddingQwen3Mapping":
        if not any(n.endswith("q_proj.norm.weight") for n in checkpoint.tensors):
            raise UnsupportedArchitecture(
                f"{checkpoint.architecture} without BitLinear per-projection norms (q_proj.norm.weight …): bitconv "
                "converts BitNet embedding models (microsoft/bitnet-embedding-0.6b and -270m); plain "
                f"{cls.backbone} embedding models are not supported yet")
        return cls(checkpoint.config, checkpoint.root)

    @property
    def tied_embeddings(self) -> bool:
        return True  # an embedding model has no lm_head: nothing to tie

    @property
    def eos_id(self) -> int:
        """The token llama.cpp appends for last-token pooling (the script's override)."""
        return 151643

    @property
    def bos_id(self) -> int | None:
        """The token llama.cpp puts first (`add_bos_token`), None where it puts none (Qwen)."""
        return None

    # --- names and shapes ------------------------------------------------------------------------

    def gguf_name(self, hf_name: str) -> str:
        name = hf_name.removeprefix("model.")
        if name in _GLOBAL_NAMES:
            return _GLOBAL_NAMES[name]
        m = _LAYER.match(name)
        if m and m.group(2) in self.layer_names and int(m.group(1)) < self.n_layers:
            return f"blk.{m.group(1)}.{self.layer_names[m.group(2)]}"
        raise CheckpointError(f"{hf_name}: tensor not expected in a BitNet embedding ({self.backbone}) checkpoint")

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = super().expected_shapes()
        h, q, ff = self.hidden, self.n_head * self.head_dim, int(self.ff)
        shapes.update({"attn_q_norm.weight": (self.head_dim,), "attn_k_norm.weight": (self.head_dim,),
                       "attn_output_norm_in.weight": (q,), "ffn_down_norm_in.weight": (ff,)})
        shapes.update({n: (h,) for n in NORM_IN if n not in shapes})
        return shapes

    def map_tensor(self, lt: LazyTensor) -> Iterator[SourceTensor]:
        name = self.gguf_name(lt.name)
        src = SourceTensor(name, lt.shape, [lt], hf_names=[lt.name])
        if re.sub(r"^blk\.\d+\.", "", name) in self.ternary_linears:
            src.scale_rule, src.stored_scale_rule = script_absmean_scale, script_absmean_scale_stored
        yield src

    # --- the plan's per-quant rules --------------------------------------------------------------

    def configure_for(self, quant: Quantizer) -> None:
        """f32 / f16 files hold the master weights (the script's baseline path); the others the ternary model."""
        if quant.name not in GGUF_TYPES:
            raise UsageError(f"{quant.name}: bitconv writes BitNet embedding models as {', '.join(GGUF_TYPES)}")
        if quant.name in MASTER_TYPES:
            self.ternary_model = False

    def tensor_quant(self, name: str, shape: tuple[int, ...], quant: Quantizer) -> tuple[Quantizer, str] | None:
        """Norms and token_embd as the script writes them (F16; everything F32 in an f32 file)."""
        if quant.name == "f32":
            return quant, ""
        if len(shape) <= 1:
            return get_quantizer("f16"), "norm: f16 (bitnet.cpp's embedding converter)"
        if name == "token_embd.weight" and quant.name != "q8_0":
            return get_quantizer("f16"), "embedding: f16"
        return None

    # --- metadata ---------------------------------------------------------------------------------

    def add_standalone_metadata(self, w: gguf.GGUFWriter, name: str, vocab: Any, file_type: int | None) -> None:
        """Every key the script writes, in its order (general.name, no other general.* key)."""
        c = self.config
        w.add_name(name)
        w.add_block_count(self.n_layers)
        w.add_context_length(int(c.get("max_position_embeddings") or 32768))
        w.add_embedding_length(self.hidden)
        w.add_feed_forward_length(int(self.ff))
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        w.add_vocab_size(self.vocab_size)
        w.add_rope_dimension_count(self.head_dim)
        w.add_key_length(self.head_dim)
        w.add_value_length(self.head_dim)
        # the script writes it only from a top-level rope_theta; bitconv always does (a missing key is 10000)
        w.add_rope_freq_base(float(self.rope_theta if self.rope_theta is not None else self.default_rope_theta))
        if c.get("rms_norm_eps") is not None:
            w.add_layer_norm_rms_eps(float(c["rms_norm_eps"]))
        if file_type is not None:
            w.add_file_type(int(file_type))
        w.add_pooling_type(gguf.PoolingType(self.pooling))
        vocab.add_to(w)
