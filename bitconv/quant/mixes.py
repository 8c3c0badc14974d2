"""llama-quantize's per-tensor type rules, so that `--quant q4_k_m` (and every other llama.cpp file
type llama-quantize makes: q2_k … q6_k, q4_0 … q5_1) comes out of one streaming pass with the same
tensor types, order and bytes as `llama-quantize model-f32.gguf out.gguf Q4_K_M`.

The rules restate `llama_tensor_get_type` of llama.cpp's src/llama-quant.cpp (no importance matrix,
no overrides) for the file types bitconv writes:

* which tensors are quantized at all (2-D/3-D `*weight`, not norms, routers, position tables);
* the mix: attn_v / ffn_down of some layers one type up (`use_more_bits`), output (and a tied
  token_embd) at q6_k, the 70B and 8-expert special cases;
* the fallback when a row length is not a multiple of the type's block (q4_k → q5_0, q5_k → q5_1,
  q6_k → q8_0, q2_k/q3_k → q4_0, then f16);
* llama.cpp's tensor order (non-block tensors first, then by layer, names sorted within), which
  the layer counters depend on and which the output file follows.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, LlamaFileType as FT

_NOT_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
                  "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "attn_rel_b.weight",
                  ".position_embd", ".rel_pos", ".patch_embd", ".patch_merger")
_NOT_QUANTIZED_EXACT = ("position_embd.weight", "token_types.weight")
_LAYER = re.compile(r"^blk\.(\d+)\.")

#: llama-quantize's fallback for a row length the chosen type's block does not divide
FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.TQ1_0: T.Q4_0, T.TQ2_0: T.Q4_0,
            T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}

#: the type most tensors of a file type get (llama_ftype_get_default_type)
DEFAULT_TYPE = {
    FT.MOSTLY_Q4_0: T.Q4_0, FT.MOSTLY_Q4_1: T.Q4_1, FT.MOSTLY_Q5_0: T.Q5_0, FT.MOSTLY_Q5_1: T.Q5_1,
    FT.MOSTLY_Q8_0: T.Q8_0, FT.MOSTLY_Q2_K: T.Q2_K, FT.MOSTLY_Q3_K_S: T.Q3_K, FT.MOSTLY_Q3_K_M: T.Q3_K,
    FT.MOSTLY_Q3_K_L: T.Q3_K, FT.MOSTLY_Q4_K_S: T.Q4_K, FT.MOSTLY_Q4_K_M: T.Q4_K, FT.MOSTLY_Q5_K_S: T.Q5_K,
    FT.MOSTLY_Q5_K_M: T.Q5_K, FT.MOSTLY_Q6_K: T.Q6_K,
}


#: file types whose tensors are not block-quantized: no mix, no fallback
UNQUANTIZED_TYPE = {FT.ALL_F32: T.F32, FT.MOSTLY_F16: T.F16, FT.MOSTLY_BF16: T.BF16}


def llama_order_key(name: str) -> tuple[int, str]:
    """llama.cpp's weight order (llama_model_loader's weight_name_comparer): tensors outside the
    blocks first, then block by block, names compared bytewise within a block."""
    m = _LAYER.match(name)
    return (int(m.group(1)) if m else -1, name)


def ggml_n_dims(shape: Sequence[int]) -> int:
    """ggml_n_dims of a numpy-order shape: trailing ggml dimensions of size 1 do not count."""
    ne = list(reversed(shape)) or [1]
    n = len(ne)
    while n > 1 and ne[n - 1] == 1:
        n -= 1
    return n


def allows_quantization(name: str, shape: Sequence[int]) -> bool:
    """tensor_allows_quantization: which tensors llama-quantize converts at all."""
    if ggml_n_dims(shape) < 2 or not name.endswith("weight"):
        return False
    return not any(s in name for s in _NOT_QUANTIZED) and name not in _NOT_QUANTIZED_EXACT


def _category(name: str) -> str:
    """tensor_get_category; attn_qkv and attn_kv_b count as attn_v, as the rules treat them."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                     ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                     ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


@dataclass(frozen=True)
class ModelFacts:
    """The hyper-parameters llama-quantize's rules look at."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B, the only model size the rules look at."""
        if self.n_layer != 80:
            return False
        return self.arch == "qwen2" or (self.arch == "llama" and self.n_head != self.n_head_kv)


def fallback_type(qtype: T, ncols: int) -> T:
    """tensor_type_fallback: the type a row of `ncols` values gets when `qtype`'s block does not fit."""
    if ncols % GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    new = FALLBACK.get(qtype)
    if new is None:
        if GGML_QUANT_SIZES[qtype][0] > 32:
            raise ValueError(f"no fallback for {qtype.name}")
        new = qtype
    return new if ncols % GGML_QUANT_SIZES[new][0] == 0 else T.F16


class LlamaQuantizeRules:
    """Per-tensor types of one llama-quantize run. Call `types` once with every tensor of the file
    in llama order: the layer counters advance as llama.cpp's do."""

    def __init__(self, ftype: int, facts: ModelFacts, *, pure: bool = False, output_tensor_type: T | None = None,
                 token_embedding_type: T | None = None, quantize_output: bool = True) -> None:
        """The options are llama-quantize's --pure, --output-tensor-type, --token-embedding-type and
        (quantize_output=False) --leave-output-tensor."""
        self.ftype = FT(ftype)
        if self.ftype in UNQUANTIZED_TYPE:
            self.default = UNQUANTIZED_TYPE[self.ftype]
        elif self.ftype in DEFAULT_TYPE:
            self.default = DEFAULT_TYPE[self.ftype]
        else:
            raise ValueError(f"llama-quantize file type {self.ftype.name} is not supported")
        self.facts = facts
        self.pure = pure
        self.output_tensor_type = output_tensor_type
        self.token_embedding_type = token_embedding_type
        self.quantize_output = quantize_output

    def types(self, tensors: Sequence[tuple[str, tuple[int, ...]]]) -> list[T | None]:
        """The type of each (name, numpy shape), or None for tensors kept as they are."""
        names = [n for n, _ in tensors]
        self.n_attention_wv = sum(_category(n) == "attn_v" for n in names)
        self.tied = "output.weight" not in names
        self.i_attention_wv = self.i_ffn_down = 0
        out: list[T | None] = []
        for name, shape in tensors:
            if not allows_quantization(name, shape) or (name == "output.weight" and not self.quantize_output):
                out.append(None)
                continue
            out.append(self._type(name, tuple(shape)))
        return out

    def _type(self, name: str, shape: tuple[int, ...]) -> T:
        """llama_tensor_get_type: the explicit embedding/output types first (no fallback for them),
        then the mix and the block-size fallback for quantized file types."""
        cat = _category(name)
        if self.token_embedding_type is not None and cat == "token_embd":
            return self.token_embedding_type
        if self.output_tensor_type is not None and cat == "output":
            return self.output_tensor_type
        if self.ftype in UNQUANTIZED_TYPE:
            return self.default
        t = self.default if self.pure else self._mix(name, shape)
        return fallback_type(t, shape[-1])

    def _layer(self, counter: int, name: str) -> int:
        if self.facts.n_expert > 1:
            m = _LAYER.match(name)
            if m is None:
                raise ValueError(f"cannot determine the layer of {name}")
            return int(m.group(1))
        return counter

    def _mix(self, name: str, shape: tuple[int, ...]) -> T:
        """llama_tensor_get_type_impl for the k-quant and legacy file types."""
        ft, f, new = self.ftype, self.facts, self.default
        cat = _category(name)
        if cat == "output" or (self.tied and cat == "token_embd"):
            if self.output_tensor_type is not None:
                return self.output_tensor_type
            if shape[-1] % GGML_QUANT_SIZES[new][0]:
                return T.Q8_0
            return new if new == T.Q8_0 else T.Q6_K
        if cat == "token_embd":
            return new
        if cat == "attn_v":
            i = self.i_attention_wv
            if ft == FT.MOSTLY_Q2_K:
                new = T.Q4_K if f.n_gqa >= 4 else T.Q3_K
            elif ft == FT.MOSTLY_Q3_K_M:
                new = T.Q5_K if i < 2 else T.Q4_K
            elif ft == FT.MOSTLY_Q3_K_L:
                new = T.Q5_K
            elif ft in (FT.MOSTLY_Q4_K_M, FT.MOSTLY_Q5_K_M) and _use_more_bits(i, self.n_attention_wv):
                new = T.Q6_K
            elif ft == FT.MOSTLY_Q4_K_S and i < 4:
                new = T.Q5_K
            if f.is_70b and new in (T.Q3_K, T.Q4_K):
                new = T.Q5_K
            if f.n_expert == 8:
                new = T.Q8_0
            self.i_attention_wv += 1
            return new
        if cat == "attn_k":
            return T.Q8_0 if f.n_expert == 8 else new
        if cat == "ffn_down":
            i = self._layer(self.i_ffn_down, name)
            n = f.n_layer
            if ft == FT.MOSTLY_Q2_K:
                new = T.Q3_K
            elif ft == FT.MOSTLY_Q3_K_M:
                new = T.Q5_K if i < n // 16 else T.Q4_K if f.arch != "falcon" or _use_more_bits(i, n) else T.Q3_K
            elif ft == FT.MOSTLY_Q3_K_L:
                new = T.Q4_K if f.arch == "falcon" else T.Q5_K
            elif ft == FT.MOSTLY_Q4_K_M:
                if f.arch == "falcon":
                    new = T.Q6_K if i < n // 16 else T.Q5_K if _use_more_bits(i, n) else T.Q4_K
                elif _use_more_bits(i, n):
                    new = T.Q6_K
            elif ft == FT.MOSTLY_Q5_K_M and _use_more_bits(i, n):
                new = T.Q6_K
            elif ft == FT.MOSTLY_Q4_K_S and f.arch != "falcon" and i < n // 8:
                new = T.Q5_K
            self.i_ffn_down += 1
            return new
        if cat == "attn_output":
            if f.arch != "falcon":
                if f.n_expert == 8:
                    if ft in (FT.MOSTLY_Q2_K, FT.MOSTLY_Q3_K_S, FT.MOSTLY_Q3_K_M, FT.MOSTLY_Q4_K_S, FT.MOSTLY_Q4_K_M):
                        new = T.Q5_K
                elif ft == FT.MOSTLY_Q2_K:
                    new = T.Q3_K
                elif ft == FT.MOSTLY_Q3_K_M:
                    new = T.Q4_K
                elif ft == FT.MOSTLY_Q3_K_L:
                    new = T.Q5_K
            elif ft == FT.MOSTLY_Q3_K_L:
                new = T.Q4_K
            return new
        return new


def mix_bits_per_weight(types: Sequence[tuple[tuple[int, ...], T | None]]) -> float:
    """Bits per weight of a file from its tensors' shapes and types (None: kept f32)."""
    bits = n = 0
    for shape, t in types:
        size = math.prod(shape)
        n += size
        block, nbytes = GGML_QUANT_SIZES[t if t is not None else T.F32]
        bits += size // block * nbytes * 8
    return bits / n if n else 0.0


def reference_bits_per_weight(ftype: int, pure: bool = False) -> float:
    """Bits per weight of a file type on Qwen2.5-1.5B's shapes (28 layers, hidden 1536, ff 8960,
    12/2 heads, tied 151936-token embedding): a mix's size depends on the model, so `bitconv quants`
    quotes it for one well-known model."""
    hidden, ff, kv, layers, vocab = 1536, 8960, 256, 28, 151936
    tensors: list[tuple[str, tuple[int, ...]]] = [("output_norm.weight", (hidden,)), ("token_embd.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"blk.{i}."
        tensors += [(p + "attn_k.bias", (kv,)), (p + "attn_k.weight", (kv, hidden)),
                    (p + "attn_norm.weight", (hidden,)), (p + "attn_output.weight", (hidden, hidden)),
                    (p + "attn_q.bias", (hidden,)), (p + "attn_q.weight", (hidden, hidden)),
                    (p + "attn_v.bias", (kv,)), (p + "attn_v.weight", (kv, hidden)),
                    (p + "ffn_down.weight", (hidden, ff)), (p + "ffn_gate.weight", (ff, hidden)),
                    (p + "ffn_norm.weight", (hidden,)), (p + "ffn_up.weight", (ff, hidden))]
    types = LlamaQuantizeRules(ftype, ModelFacts("qwen2", layers, 12, 2), pure=pure).types(tensors)
    return mix_bits_per_weight([(shape, t) for (_, shape), t in zip(tensors, types)])
