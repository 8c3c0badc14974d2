"""A reference forward pass in numpy (+ the ternary kernel) for the decoders bitconv writes, over
weights in GGUF naming and layout, so the same code runs an artifact's own tensors and the HF
checkpoint's (mapped by bitconv's arch mappings) and their hidden states can be compared layer
by layer.

Architectures: qwen (Qwen 1: q, k, v fused in attn_qkv), qwen2, qwen3, qwen2moe, qwen3moe, llama,
bitnet (1bitLLM: SiLU) and bitnet-25 (2B-4T: ReLU²); BitNet embedding models (qwen3 or gemma3 with a
BitLinear RMSNorm before each projection, `<name>_norm_in.weight`, and a pooling type: `embed` gives the
pooled, L2-normalized sentence embedding). gemma3 as llama.cpp runs it: the embedding scaled by
sqrt(n_embd), GELU (tanh), norms after attention and FFN, and sliding-window layers (all but every
sixth) with RoPE base 10000 and the file's window, when it names one. Ternary models run the BitLinear reference of
DESIGN.md: before each ternary linear the activations are quantized per token to int8 (127 /
absmax), then y = (x_q · W_t) · s / x_scale in exact integer arithmetic. Float32 throughout; weights
are fetched per layer and dropped, so a large model is never resident as float32.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .accel.ternary import quantize_activations, ternary_gemm
from .errors import ArtifactError
from .quant.i2s import pack_i2s

#: GGUF base names of the linears BitNet b1.58 trains ternary
TERNARY_LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
_ACT = {"qwen": "silu", "qwen2": "silu", "qwen3": "silu", "qwen2moe": "silu", "qwen3moe": "silu",
        "llama": "silu", "bitnet": "silu", "bitnet-25": "relu2", "gemma3": "gelu_tanh"}
#: llama.cpp rotates q/k halves (NeoX) for these; adjacent pairs (q/k permuted at conversion) for llama
_NEOX = {"qwen", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "bitnet", "bitnet-25", "gemma3"}
#: archs whose token embedding is scaled by sqrt(n_embd) before the first block
_SCALED_EMBEDDING = {"gemma3"}
#: llama.cpp's fixed sliding-window layout: (every Nth layer is global, RoPE base of the others)
_SWA_PATTERN = {"gemma3": (6, 10000.0)}
#: MoE archs that renormalize the chosen experts' weights (llama.cpp's expert_weights_norm)
_MOE_NORM_TOPK = {"qwen3moe": True, "qwen2moe": False}
#: archs whose q, k, v rows are one attn_qkv tensor (Qwen 1)
_FUSED_QKV = {"qwen"}
SUPPORTED_ARCHS = tuple(_ACT)


@dataclass
class TernaryWeight:
    """A ternary linear: codes in {−1, 0, 1} [M, K] and the per-tensor scale."""

    codes: np.ndarray
    scale: np.float32
    _packed: np.ndarray | None = field(default=None, repr=False)

    @property
    def packed(self) -> np.ndarray:
        if self._packed is None:
            self._packed = pack_i2s(self.codes).reshape(-1)
        return self._packed

    def dense(self) -> np.ndarray:
        return self.codes.astype(np.float32) * self.scale


Weight = Any  # np.ndarray (float32, GGUF layout [out, in]) or TernaryWeight


class WeightSource:
    """Tensors by GGUF name, fetched when the forward pass needs them."""

    def get(self, name: str) -> Weight | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def rows(self, name: str, index: np.ndarray) -> np.ndarray:
        """Selected rows of a matrix as float32 (embedding lookups of large vocabularies)."""
        w = self.get(name)
        if w is None:
            raise ArtifactError(f"tensor {name} is missing")
        return np.asarray(w.dense() if isinstance(w, TernaryWeight) else w)[index].astype(np.float32)


@dataclass(frozen=True)
class Hparams:
    arch: str
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    eps: float
    rope_base: float
    rope_dim: int
    n_expert_used: int = 0
    ternary: bool = False
    #: gguf PoolingType of an embedding model (`{arch}.pooling_type`), None for a language model
    pooling: int | None = None
    #: sliding-window layers attend to this many positions (None: the whole prompt)
    sliding_window: int | None = None

    def layer_rope_base(self, i: int) -> float:
        pattern = _SWA_PATTERN.get(self.arch)
        return pattern[1] if pattern and (i + 1) % pattern[0] else self.rope_base

    def layer_window(self, i: int) -> int | None:
        pattern = _SWA_PATTERN.get(self.arch)
        return self.sliding_window if pattern and (i + 1) % pattern[0] else None

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], *, ternary: bool) -> "Hparams":
        arch = str(meta.get("general.architecture", ""))
        if arch not in _ACT:
            raise ArtifactError(f"the reference forward pass does not know architecture {arch!r} "
                                f"(supported: {', '.join(SUPPORTED_ARCHS)})")

        def get(key: str, default: Any = None) -> Any:
            v = meta.get(f"{arch}.{key}", default)
            if v is None:
                raise ArtifactError(f"metadata {arch}.{key} is missing")
            return v

        n_embd, n_head = int(get("embedding_length")), int(get("attention.head_count"))
        head_dim = int(get("attention.key_length", n_embd // n_head))
        return cls(arch=arch, n_layers=int(get("block_count")), n_embd=n_embd, n_head=n_head,
                   n_head_kv=int(get("attention.head_count_kv", n_head)), head_dim=head_dim,
                   eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
                   rope_base=float(get("rope.freq_base", 10000.0)),
                   rope_dim=int(get("rope.dimension_count", head_dim)),
                   n_expert_used=int(meta.get(f"{arch}.expert_used_count", 0) or 0), ternary=ternary,
                   pooling=None if meta.get(f"{arch}.pooling_type") is None else int(meta[f"{arch}.pooling_type"]),
                   sliding_window=None if meta.get(f"{arch}.attention.sliding_window") is None
                   else int(meta[f"{arch}.attention.sliding_window"]))


@dataclass
class ForwardResult:
    hidden: list[np.ndarray]  # after each block, [T, n_embd]
    logits: np.ndarray | None  # [T, vocab]; None when not asked for (embedding models)
    final: np.ndarray | None = None  # after the output norm, [T, n_embd]


#: gguf PoolingType values (llama.cpp's LLAMA_POOLING_TYPE_*)
POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


def pool(final: np.ndarray, pooling: int, normalize: bool = True) -> np.ndarray:
    """One sentence's embedding from its final hidden states [T, n_embd], as llama.cpp pools them
    (mean, first token, last token), L2-normalized (llama-embedding's default, --embd-normalize 2)."""
    if pooling == 1:
        out = final.mean(axis=0, dtype=np.float32)
    elif pooling == 2:
        out = final[0]
    elif pooling == 3:
        out = final[-1]
    else:
        raise ArtifactError(f"pooling type {POOLING_NAMES.get(pooling, pooling)} gives no sentence embedding")
    out = out.astype(np.float32)
    if normalize:
        out = out / np.float32(max(float(np.linalg.norm(out.astype(np.float64))), 1e-12))
    return out


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    scale = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32) + np.float32(eps))
    return (x * scale.astype(np.float32)) * w.astype(np.float32, copy=False)


def _rope(x: np.ndarray, pos: np.ndarray, hp: Hparams, freq_factors: np.ndarray | None,
          base: float | None = None) -> np.ndarray:
    """x: [T, H, D]. llama.cpp's rotation: NeoX halves or adjacent pairs over the first rope_dim dims."""
    d = hp.rope_dim
    inv = (hp.rope_base if base is None else base) ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    if freq_factors is not None:
        inv = inv / freq_factors.astype(np.float64)
    ang = pos[:, None].astype(np.float64) * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :].astype(np.float32), np.sin(ang)[:, None, :].astype(np.float32)
    out = x.copy()
    if hp.arch in _NEOX:
        a, b = x[..., : d // 2], x[..., d // 2: d]
        out[..., : d // 2], out[..., d // 2: d] = a * cos - b * sin, b * cos + a * sin
    else:
        a, b = x[..., 0:d:2], x[..., 1:d:2]
        out[..., 0:d:2], out[..., 1:d:2] = a * cos - b * sin, b * cos + a * sin
    return out


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    return np.float32(0.5) * x * (1 + np.tanh(np.float32(0.7978845608028654) * (x + np.float32(0.044715) * x ** 3)))


_ACTIVATIONS = {"silu": _silu, "relu2": lambda g: np.square(np.maximum(g, 0)), "gelu_tanh": _gelu_tanh}


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class ReferenceForward:
    """Runs a prompt through the model whose tensors `get` returns (None for an absent tensor)."""

    def __init__(self, hp: Hparams, source: WeightSource) -> None:
        self.hp = hp
        self.source = source
        self.get = source.get

    def _w(self, name: str) -> Weight:
        w = self.get(name)
        if w is None:
            raise ArtifactError(f"tensor {name} is missing")
        return w

    def linear(self, x: np.ndarray, name: str) -> np.ndarray:
        w = self._w(name)
        base = name.split(".")[-2]
        if (norm_in := self.get(name[: -len(".weight")] + "_norm_in.weight")) is not None:
            x = rms_norm(x, norm_in, self.hp.eps)  # BitLinear's own RMSNorm (BitNet embedding models)
        if self.hp.ternary and base in TERNARY_LINEARS:  # BitLinear: int8 activations
            xq, xs = quantize_activations(np.ascontiguousarray(x, dtype=np.float32))
            if isinstance(w, TernaryWeight):
                m, k = w.codes.shape
                y = ternary_gemm(w.packed, float(w.scale), xq, xs, m, k)
            else:
                y = (xq.astype(np.float32) @ w.T) / xs[:, None]
        else:
            y = x @ (w.dense() if isinstance(w, TernaryWeight) else w).T
        bias = self.get(name[: -len("weight")] + "bias")
        return y + bias if bias is not None else y

    def _attention(self, h: np.ndarray, i: int, pos: np.ndarray, freq_factors: np.ndarray | None) -> np.ndarray:
        hp, p = self.hp, f"blk.{i}."
        t = h.shape[0]
        nq, nkv = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
        if hp.arch in _FUSED_QKV:
            qkv = self.linear(h, p + "attn_qkv.weight")
            q, k, v = qkv[:, :nq], qkv[:, nq:nq + nkv], qkv[:, nq + nkv:]
        else:
            q, k, v = (self.linear(h, p + f"attn_{n}.weight") for n in "qkv")
        q = q.reshape(t, hp.n_head, hp.head_dim)
        k, v = k.reshape(t, hp.n_head_kv, hp.head_dim), v.reshape(t, hp.n_head_kv, hp.head_dim)
        if (qn := self.get(p + "attn_q_norm.weight")) is not None:
            q = rms_norm(q, qn, hp.eps)
        if (kn := self.get(p + "attn_k_norm.weight")) is not None:
            k = rms_norm(k, kn, hp.eps)
        base = hp.layer_rope_base(i)
        q, k = _rope(q, pos, hp, freq_factors, base), _rope(k, pos, hp, freq_factors, base)
        rep = hp.n_head // hp.n_head_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.float32(np.sqrt(hp.head_dim))
        visible = np.tril(np.ones((t, t), dtype=bool))
        if (window := hp.layer_window(i)) is not None:
            visible &= (pos[:, None] - pos[None, :]) < window
        scores = np.where(visible[None], scores, -np.inf)
        out = np.einsum("hts,shd->thd", _softmax(scores).astype(np.float32), v).reshape(t, -1)
        if (sub := self.get(p + "attn_sub_norm.weight")) is not None:
            out = rms_norm(out, sub, hp.eps)
        return self.linear(out, p + "attn_output.weight")

    def _act(self, g: np.ndarray) -> np.ndarray:
        return _ACTIVATIONS[_ACT[self.hp.arch]](g)

    def _ffn(self, h: np.ndarray, i: int) -> np.ndarray:
        p = f"blk.{i}."
        if self.get(p + "ffn_gate_inp.weight") is not None:
            return self._moe(h, p)
        x = self._act(self.linear(h, p + "ffn_gate.weight")) * self.linear(h, p + "ffn_up.weight")
        if (sub := self.get(p + "ffn_sub_norm.weight")) is not None:
            x = rms_norm(x, sub, self.hp.eps)
        return self.linear(x, p + "ffn_down.weight")

    def _moe(self, h: np.ndarray, p: str) -> np.ndarray:
        router = self._w(p + "ffn_gate_inp.weight")
        probs = _softmax(h @ router.T)
        k = self.hp.n_expert_used
        top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        weights = np.take_along_axis(probs, top, axis=-1)
        if _MOE_NORM_TOPK.get(self.hp.arch, False):
            weights = weights / weights.sum(axis=-1, keepdims=True)
        gate, up, down = (self._w(p + f"ffn_{n}_exps.weight") for n in ("gate", "up", "down"))
        out = np.zeros_like(h)
        for e in np.unique(top):
            rows, slot = np.nonzero(top == e)
            x = h[rows]
            y = (_silu(x @ gate[e].T) * (x @ up[e].T)) @ down[e].T
            out[rows] += weights[rows, slot][:, None] * y
        if self.get(p + "ffn_up_shexp.weight") is not None:
            shared = (_silu(h @ self._w(p + "ffn_gate_shexp.weight").T) * (h @ self._w(p + "ffn_up_shexp.weight").T)) \
                @ self._w(p + "ffn_down_shexp.weight").T
            if (g := self.get(p + "ffn_gate_inp_shexp.weight")) is not None:
                shared = shared / (1.0 + np.exp(-(h @ g.reshape(1, -1).T)))
            out += shared
        return out

    def _post_norm(self, x: np.ndarray, name: str) -> np.ndarray:
        """Gemma3's norm of a block's output before the residual add, where the model has one."""
        w = self.get(name)
        return x if w is None else rms_norm(x, w, self.hp.eps)

    def embed(self, tokens: list[int], normalize: bool = True) -> np.ndarray:
        """The pooled (hp.pooling), L2-normalized sentence embedding of an embedding model."""
        if self.hp.pooling is None:
            raise ArtifactError("not an embedding model (no pooling type)")
        final = self.run(tokens, logits=False).final
        assert final is not None
        return pool(final, self.hp.pooling, normalize)

    def run(self, tokens: list[int], on_layer: Callable[[int, np.ndarray], None] | None = None,
            logits: bool = True) -> ForwardResult:
        hp = self.hp
        h = self.source.rows("token_embd.weight", np.asarray(tokens))
        if hp.arch in _SCALED_EMBEDDING:
            h = h * np.float32(np.sqrt(hp.n_embd))
        pos = np.arange(len(tokens))
        freq_factors = self.get("rope_freqs.weight")
        hidden = []
        for i in range(hp.n_layers):
            p = f"blk.{i}."
            h = h + self._post_norm(self._attention(rms_norm(h, self._w(p + "attn_norm.weight"), hp.eps), i, pos,
                                                    freq_factors), p + "post_attention_norm.weight")
            h = h + self._post_norm(self._ffn(rms_norm(h, self._w(p + "ffn_norm.weight"), hp.eps), i),
                                    p + "post_ffw_norm.weight")
            h = h.astype(np.float32, copy=False)
            hidden.append(h)
            if on_layer:
                on_layer(i, h)
        x = rms_norm(h, self._w("output_norm.weight"), hp.eps)
        if not logits:
            return ForwardResult(hidden, None, x)
        out = self.get("output.weight")
        y = x @ (out if out is not None else self._w("token_embd.weight")).T
        return ForwardResult(hidden, y.astype(np.float32), x)
