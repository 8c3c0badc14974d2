"""ArchMapping: how one HF model class becomes GGUF tensors and metadata.

A mapping owns HF→GGUF tensor names (gguf-py's TensorNameMap), per-tensor transforms (expert
stacking), the shapes the config implies (so a checkpoint that disagrees is refused before
writing) and the GGUF hyper-parameter keys. Mappings register by HF class name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Sequence, TypeVar

import gguf
import numpy as np

from ...errors import CheckpointError, UnsupportedArchitecture
from ..checkpoint import Checkpoint, LazyTensor, to_compute_dtype

ARCHITECTURES: dict[str, type["ArchMapping"]] = {}

A = TypeVar("A", bound=type["ArchMapping"])


def register_arch(*hf_names: str) -> Callable[[A], A]:
    """Class decorator: this mapping converts checkpoints whose config names one of `hf_names`."""

    def deco(cls: A) -> A:
        for n in hf_names:
            ARCHITECTURES[n] = cls
        cls.hf_names = tuple(hf_names)
        return cls

    return deco


def _load_builtins() -> None:
    import importlib

    # built-in mappings register on import
    for module in ("qwen2", "qwen3", "qwen_moe", "qwen1", "qwen3_next", "bitnet", "llama", "bitnet_embedding", "bitnet_embedding_gemma3"):
        importlib.import_module(f"{__package__}.{module}")


def mapping_for(checkpoint: Checkpoint) -> "ArchMapping":
    _load_builtins()
    arch = checkpoint.architecture
    cls = ARCHITECTURES.get(arch)
    if cls is None:
        raise UnsupportedArchitecture(
            f"unsupported architecture {arch!r}; supported: {', '.join(sorted(ARCHITECTURES))}")
    return cls.for_checkpoint(checkpoint)


def supported_architectures() -> list[str]:
    _load_builtins()

    return sorted(ARCHITECTURES)


#: artifact format → how its messages name it
FORMAT_NAMES = {"gguf": "GGUF (hf2gguf)", "onnx": "ONNX (hf2onnx)", "safetensors": "safetensors (hf2st)"}


def require_output_format(architecture: str, fmt: str) -> None:
    """Refuse, in one line, a registered architecture whose mapping declares that bitconv does not
    write `fmt` for it (an unregistered one is left to the writer's own checks)."""
    _load_builtins()
    cls = ARCHITECTURES.get(architecture)
    if cls is not None and fmt not in cls.output_formats:
        available = ", ".join(FORMAT_NAMES[f] for f in cls.output_formats)
        raise UnsupportedArchitecture(f"{architecture}: bitconv converts this architecture to {available} only, "
                                      f"not {FORMAT_NAMES[fmt]}")


@dataclass
class SourceTensor:
    """One GGUF tensor to be: its name, logical shape (numpy order), the HF tensors it is built from
    and how (identity for most; a stack for MoE experts)."""

    name: str
    shape: tuple[int, ...]
    sources: list[LazyTensor]
    combine: Callable[[list[np.ndarray]], np.ndarray] | None = None
    hf_names: list[str] = field(default_factory=list)
    #: a decoder for stored forms that are not plain floats (HF packed ternary): returns float32
    decode: Callable[[], np.ndarray] | None = None
    #: the per-tensor ternary scale the checkpoint already fixes (packed weights), read lazily
    known_scale: Callable[[], Any] | None = None
    #: a converter's own ternary scale rule (a TernaryScale from the tensor's values), where the
    #: reference converter computes it otherwise than the quantizers do (BitNet embedding: numpy's mean)
    scale_rule: Callable[[np.ndarray], Any] | None = None
    #: the same rule read from the stored values (bf16 as raw bits) without a float32 copy, where it
    #: can: returns None otherwise (the writer then widens the tensor for `scale_rule`)
    stored_scale_rule: Callable[[np.ndarray, str], Any] | None = None
    #: the ternary codes (int8, rows in runtime order) of a packed linear: `decode()` is
    #: codes / inv, so a ternary type can pack these directly instead of re-rounding floats
    codes: Callable[[], np.ndarray] | None = None
    #: bytes [lo, hi) of the tensor already in the planned type (a GGUF source's tensor llama-quantize
    #: would copy as it is): written unchanged, a slab at a time, never decoded
    raw: Callable[[int, int], np.ndarray] | None = None
    #: the checkpoint tensor `decode` derives this one from by a change the runtime needs (Gemma3's
    #: norm weights + 1): a writer of HF-layout checkpoints copies it as stored
    hf_stored: LazyTensor | None = None

    def fixed_scale(self, values: Sequence[np.ndarray]) -> Any:
        """The scale this tensor's ternarization must use, or None for the quantizer's own: the one a
        packed checkpoint fixes, else the mapping's rule applied to the float values (row chunks)."""
        if self.known_scale is not None:
            return self.known_scale()
        if self.scale_rule is None:
            return None
        return self.scale_rule(values[0] if len(values) == 1 else np.concatenate([v.reshape(-1) for v in values]))

    @classmethod
    def computed(cls, name: str, shape: tuple[int, ...], values: Callable[[], np.ndarray]) -> "SourceTensor":
        """A tensor the converter derives from config.json rather than reads from the checkpoint
        (llama3 RoPE frequency factors); `values` returns it as float32 when the writer asks."""
        return cls(name, shape, [], decode=values)

    def load_stored(self) -> tuple[np.ndarray, str]:
        """The tensor in its stored dtype (bf16 as raw bits) and that dtype's name; the encoder
        widens it chunk by chunk (`to_compute_dtype`), so no float32 copy of the whole tensor exists."""
        if self.decode is not None:
            return self.decode(), "F32"
        dtypes = {s.dtype for s in self.sources}
        if len(dtypes) > 1:  # experts stored in different dtypes: widen each first
            return self._combined([s.load().astype(np.float32, copy=False) for s in self.sources]), "F32"
        return self._combined([s.load_raw() for s in self.sources]), self.sources[0].dtype

    @property
    def plain(self) -> LazyTensor | None:
        """The one checkpoint tensor this is, as stored (not a stack of experts, a permutation or a
        decoded packed form): such a tensor can be read a slab of rows at a time."""
        if self.decode is None and self.combine is None and self.raw is None and len(self.sources) == 1:
            return self.sources[0]
        return None

    def stored_slabs(self, slab_bytes: int) -> Iterator[tuple[np.ndarray, str]]:
        """The stored values as 2-D [rows, K] slabs of about `slab_bytes` each, with their dtype: a
        plain tensor is read a slab at a time (a large embedding never sits in memory whole), any
        other is loaded and yielded whole."""
        lazy = self.plain
        if lazy is None:
            raw, dtype = self.load_stored()
            yield (raw.reshape(-1, raw.shape[-1]) if raw.ndim > 1 else raw.reshape(1, -1)), dtype
            return
        n = lazy.n_rows
        step = max(1, slab_bytes * n // max(1, lazy.nbytes))
        for lo in range(0, n, step):
            yield lazy.load_rows(lo, min(n, lo + step)), lazy.dtype

    def load(self) -> np.ndarray:
        """Materialize the tensor as llama.cpp computes with it (f32, or f16 for f16 sources)."""
        raw, dtype = self.load_stored()
        return to_compute_dtype(raw, dtype)

    def _combined(self, arrays: list[np.ndarray]) -> np.ndarray:
        return arrays[0] if self.combine is None else self.combine(arrays)

    @property
    def source_dtype(self) -> str:
        return self.sources[0].dtype if self.sources else "F32"  # computed: no checkpoint tensor


_LAYER = re.compile(r"\.(\d+)\.")


def _hparam(config: dict[str, Any], *keys: str, default: Any = None, required: bool = False) -> Any:
    for k in keys:
        if k in config and config[k] is not None:
            return config[k]
    if required:
        raise CheckpointError(f"config.json lacks {keys[0]!r}")
    return default


class ArchMapping:
    """Base mapping for decoder-only transformer checkpoints (llama-like naming)."""

    hf_names: ClassVar[tuple[str, ...]] = ()
    gguf_arch: ClassVar[gguf.MODEL_ARCH]
    #: HF tensors that carry nothing for the runtime
    #: ternary-trained (BitNet b1.58): only such models may take a ternary quant type
    ternary_model: bool = False
    #: the attention and MLP linears of a block, which BitNet b1.58 trains ternary
    TERNARY_LINEARS: ClassVar[tuple[str, ...]] = (
        "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
        "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")
    #: GGUF base names of the linears this model stores as ternary
    ternary_linears: tuple[str, ...] = ()
    #: tokenizer kinds in order of preference ("bpe": tokenizer.json, "sentencepiece": tokenizer.model)
    tokenizer_kinds: ClassVar[tuple[str, ...]] = ("bpe", "sentencepiece")
    #: the artifact formats bitconv writes for this architecture (require_output_format)
    output_formats: ClassVar[tuple[str, ...]] = ("gguf", "onnx", "safetensors")
    #: transformers' default when config.json has no rope_theta
    default_rope_theta: ClassVar[float] = 10000.0
    skip_suffixes: ClassVar[tuple[str, ...]] = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")
    #: a sentence-embedding model (pooled hidden states, no logits): validate compares embeddings
    embedding_model: ClassVar[bool] = False
    #: the mapping writes every GGUF key itself (`add_standalone_metadata`), not llama.cpp's general.* set
    standalone_metadata: ClassVar[bool] = False
    #: the quant type of a plan made only to read the weights as the model computes with them (validate):
    #: f32, unless a mapping's f32 files hold something else (BitNet embedding: the master weights)
    reading_quant: ClassVar[str] = "f32"
    #: target name → why it cannot run this architecture (one line; `bitconv hf2gguf --target` says it)
    refused_targets: ClassVar[dict[str, str]] = {}

    @classmethod
    def for_checkpoint(cls, checkpoint: Checkpoint) -> "ArchMapping":
        """The mapping of one checkpoint (a mapping may look at its tensors or files, or refuse it)."""
        return cls(checkpoint.config)

    def __init__(self, config: dict[str, Any]) -> None:
        if "text_config" in config and isinstance(config["text_config"], dict):
            config = {**config, **config["text_config"]}
        self.config = config
        get = lambda *k, **kw: _hparam(config, *k, **kw)  # noqa: E731
        self.n_layers = int(get("num_hidden_layers", "n_layers", required=True))
        self.hidden = int(get("hidden_size", required=True))
        self.n_head = int(get("num_attention_heads", required=True))
        self.n_head_kv = int(get("num_key_value_heads", default=self.n_head))
        self.head_dim = int(get("head_dim", default=self.hidden // self.n_head))
        self.ff = get("intermediate_size")
        self.vocab_size = int(get("vocab_size", required=True))
        self.rope_params: dict[str, Any] = dict(get("rope_parameters", "rope_scaling", default={}) or {})
        self.rope_theta = _hparam(self.rope_params, "rope_theta") or get("rope_theta", "rotary_emb_base")
        self.tensor_map = gguf.get_tensor_name_map(self.gguf_arch, self.n_layers)

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]

    @property
    def block_count(self) -> int:
        """GGUF blocks (`{arch}.block_count`): the decoder layers, plus any multi-token-prediction
        blocks a mapping appends."""
        return self.n_layers

    # --- tensor names and shapes -------------------------------------------------------------

    def gguf_name(self, hf_name: str) -> str:
        new = self.tensor_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise CheckpointError(f"{hf_name}: tensor not expected in a {self.hf_names[0]} checkpoint")
        return new

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """GGUF base name (blk.N. stripped) → the numpy-order shape the config implies."""
        h, q, kv = self.hidden, self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        shapes: dict[str, tuple[int, ...]] = {
            "token_embd.weight": (self.vocab_size, h),
            "output.weight": (self.vocab_size, h),
            "output_norm.weight": (h,),
            "attn_norm.weight": (h,),
            "ffn_norm.weight": (h,),
            "attn_q.weight": (q, h),
            "attn_k.weight": (kv, h),
            "attn_v.weight": (kv, h),
            "attn_output.weight": (h, q),
            "attn_q.bias": (q,),
            "attn_k.bias": (kv,),
            "attn_v.bias": (kv,),
        }
        if self.ff is not None:
            ff = int(self.ff)
            shapes.update({"ffn_gate.weight": (ff, h), "ffn_up.weight": (ff, h), "ffn_down.weight": (h, ff)})
        return shapes

    #: per-layer tensors every block must have (GGUF base names)
    layer_tensors: ClassVar[tuple[str, ...]] = (
        "attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
        "ffn_norm.weight")
    #: alternative feed-forward sets; a block must have one of them completely
    ffn_variants: ClassVar[tuple[tuple[str, ...], ...]] = (("ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"),)

    def configure_for(self, quant: Any) -> None:
        """Called once the output type is known, before planning (a mapping may refuse a type, or
        decide per type what its linears hold)."""

    def tensor_quant(self, name: str, shape: tuple[int, ...], quant: Any) -> tuple[Any, str] | None:
        """A mapping's own type rule for one tensor in a file of type `quant` (None: the plan's rules)."""
        return None

    def treat_as_ternary(self) -> None:
        """--force-ternarize: the attention and MLP linears of every block become ternary."""
        self.ternary_model = True
        self.ternary_linears = self.TERNARY_LINEARS

    def is_ternary_linear(self, gguf_name: str) -> bool:
        return self.ternary_model and re.sub(r"^blk\.\d+\.", "", gguf_name) in self.ternary_linears

    @property
    def activation(self) -> str:
        """The MLP's activation, as config.json names it (transformers' ACT2FN keys)."""
        return str(self.config.get("hidden_act", "silu"))

    @property
    def embedding_scale(self) -> float | None:
        """What the token embedding is multiplied by before the first block (None: nothing)."""
        return None

    @property
    def sliding_layers(self) -> tuple[int, int, float] | None:
        """(every Nth layer is global, the others' window, their RoPE base), for a model whose
        sliding-window layers a graph must mask and rotate on their own; None when there are none."""
        return None

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))

    def check_complete(self, names: set[str]) -> None:
        """Refuse a checkpoint that lacks tensors its config implies (a runtime would silently
        substitute or zero them: a lost lm_head becomes the tied embedding, for instance)."""
        required = ["token_embd.weight", "output_norm.weight"]
        if not self.tied_embeddings:
            required.append("output.weight")
        for name in required:
            if name not in names:
                hint = " (config.json says tie_word_embeddings is false)" if name == "output.weight" else ""
                raise CheckpointError(f"checkpoint has no tensor for {name}{hint}")
        for i in range(self.n_layers):
            for base in self.layer_tensors:
                if f"blk.{i}.{base}" not in names:
                    raise CheckpointError(f"layer {i}: no tensor for blk.{i}.{base} in the checkpoint")
            if not any(all(f"blk.{i}.{b}" in names for b in v) for v in self.ffn_variants):
                raise CheckpointError(f"layer {i}: feed-forward tensors missing (expected one of "
                                      f"{' / '.join('+'.join(v) for v in self.ffn_variants)})")

    def check_shape(self, t: SourceTensor) -> None:
        base = re.sub(r"^blk\.\d+\.", "", t.name)
        want = self.expected_shapes().get(base)
        if want is not None and tuple(t.shape) != want:
            raise CheckpointError(
                f"{t.hf_names[0] if t.hf_names else t.name}: shape {tuple(t.shape)} disagrees with config.json "
                f"(expects {want})", tensor=t.name)

    # --- the tensor stream ---------------------------------------------------------------------

    def tensors(self, checkpoint: Checkpoint) -> Iterator[SourceTensor]:
        """GGUF tensors in the order llama.cpp's converter writes them (checkpoint order)."""
        for lt in self.hf_tensors(checkpoint):
            yield from self.map_tensor(lt)

    def hf_tensors(self, checkpoint: Checkpoint) -> Iterator[LazyTensor]:
        """The checkpoint tensors this mapping converts, in checkpoint order, under the names it maps
        (a mapping may drop or rename some first, as llama.cpp's converter filters them)."""
        return (lt for lt in checkpoint if not lt.name.endswith(self.skip_suffixes))

    def map_tensor(self, lt: LazyTensor) -> Iterator[SourceTensor]:
        yield SourceTensor(self.gguf_name(lt.name), lt.shape, [lt], hf_names=[lt.name])

    # --- metadata ------------------------------------------------------------------------------

    def add_metadata(self, w: gguf.GGUFWriter, file_type: int | None) -> None:
        """Hyper-parameters as llama.cpp's TextModel writes them, in its order."""
        c = self.config
        w.add_block_count(self.block_count)
        if (n_ctx := _hparam(c, "max_position_embeddings", "n_ctx", "n_positions")) is not None:
            w.add_context_length(int(n_ctx))
        w.add_embedding_length(self.hidden)
        if self.ff is not None:
            w.add_feed_forward_length(int(self.ff))
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        self._add_rope(w)
        if (eps := _hparam(c, "rms_norm_eps", "norm_eps")) is not None:
            w.add_layer_norm_rms_eps(float(eps))
        if (n_exp := _hparam(c, "num_local_experts", "num_experts", "n_routed_experts")) is not None:
            w.add_expert_count(int(n_exp))
        if (n_used := _hparam(c, "num_experts_per_tok", "num_experts_per_token")) is not None:
            w.add_expert_used_count(int(n_used))
        if c.get("head_dim") is not None:
            w.add_key_length(int(c["head_dim"]))
            w.add_value_length(int(c["head_dim"]))
        if file_type is not None:
            w.add_file_type(file_type)

    def _add_rope(self, w: gguf.GGUFWriter) -> None:
        rp = self.rope_params
        rope_type = rp.get("rope_type", rp.get("type"))
        factor = rp.get("factor")
        if rope_type == "linear" and factor is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(factor))
        elif rope_type == "yarn" and factor is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(factor))
            if "original_max_position_embeddings" in rp:
                w.add_rope_scaling_orig_ctx_len(int(rp["original_max_position_embeddings"]))
            # the optional YaRN parameters, as llama.cpp's converter writes them
            if (ext := rp.get("extrapolation_factor")) is not None:
                w.add_rope_scaling_yarn_ext_factor(float(ext))
            if (attn := rp.get("attention_factor", rp.get("attn_factor"))) is not None:
                w.add_rope_scaling_yarn_attn_factor(float(attn))
            if (beta_fast := rp.get("beta_fast")) is not None:
                w.add_rope_scaling_yarn_beta_fast(float(beta_fast))
            if (beta_slow := rp.get("beta_slow")) is not None:
                w.add_rope_scaling_yarn_beta_slow(float(beta_slow))
        if (sections := self.rope_sections()) is not None:
            w.add_rope_dimension_sections(sections)
        # Always written: a runtime that misses the key silently uses its own default.
        theta = self.rope_theta if self.rope_theta is not None else self.default_rope_theta
        w.add_rope_freq_base(float(theta))

    def rope_sections(self) -> list[int] | None:
        """M-RoPE sections (`rope.dimension_sections`, padded to 4) where config.json gives them."""
        sections = self.rope_params.get("mrope_section")
        return None if sections is None else ([int(x) for x in sections] + [0, 0, 0, 0])[:4]


def stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack(arrays, axis=0)


class QKNormShapes:
    """Qwen3-style per-head q_norm / k_norm (width head_dim)."""

    head_dim: int
    layer_tensors: ClassVar[tuple[str, ...]] = ArchMapping.layer_tensors + ("attn_q_norm.weight", "attn_k_norm.weight")

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = super().expected_shapes()  # type: ignore[misc]
        shapes.update({"attn_q_norm.weight": (self.head_dim,), "attn_k_norm.weight": (self.head_dim,)})
        return shapes
