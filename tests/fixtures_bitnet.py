"""Offline fixture factory for BitNet b1.58: tiny random ``BitNetForCausalLM`` checkpoints
(bf16/f32 master weights or transformers' packed ``quant_method: "bitnet"`` layout) with the real
Llama-3 tokenizer, plus the float references converters are measured against.

Everything is derived from locally installed packages: the tokenizer from the ``llama-models``
wheel's ``llama3/tokenizer.model`` (tiktoken ranks), the models from ``transformers``' BitNet
classes with random weights.  Loading the packed/online checkpoints in transformers needs
``accelerate`` (``BitNetHfQuantizer.validate_environment``, quantizer_bitnet.py:44-46, raises without it).

Facts about transformers 5.24 that shape this module (checked in the installed package, not
assumed; ``integrations/bitnet.py`` is abbreviated ``ib``):

* Tensor names written by ``BitNetForCausalLM.save_pretrained`` (tied embeddings, so no
  ``lm_head.weight``): ``model.embed_tokens.weight``, ``model.norm.weight`` and per layer
  ``model.layers.{i}.`` + ``input_layernorm.weight``, ``post_attention_layernorm.weight``,
  ``self_attn.{q,k,v,o}_proj.weight``, ``self_attn.attn_sub_norm.weight`` [hidden],
  ``mlp.{gate,up,down}_proj.weight``, ``mlp.ffn_sub_norm.weight`` [intermediate].  The same names
  as the hub's bitnet-b1.58-2B-4T(-bf16).  ``BitNetConfig`` defaults ``tie_word_embeddings`` to
  False: the fixture sets True, as the 2B-4T config does.
* Packed layout (``ib.pack_weights``, ib:18-53; ``ib.unpack_weights``, ib:56-122): codes
  value+1 in {0,1,2}, 4 per byte along the output dimension: packed ``[R, K]`` with
  R = ceil(N/4), row r in packed row r mod R at bits 2*(r div R).  ``pack_weights`` adds 1 to its
  argument *in place* (ib:43).  ``BitLinear`` allocates ``weight`` as ``[N // 4, K]`` (ib:140-142),
  so packed checkpoints need N % 4 == 0 (the fixture checks).
* ``weight_scale`` (1-element, the buffer has the model dtype, ib:143 and ib:267):
  - ``linear_class="bitlinear"`` (``BitLinear.forward``, ib:185-197, ``post_quant_process``
    ib:180-183): y = (x_q @ W_t^T) / (x_scale * weight_scale) -> real W = W_t / weight_scale, so
    the fixture stores weight_scale = inv = 1/max(mean|W|, 1e-5).  The packed uint8 tensor stays
    packed in memory and is unpacked on every forward.
  - ``linear_class="autobitlinear"`` with ``quantization_mode="offline"`` (``AutoBitLinear.forward``,
    ib:269-282): y = ActQuant(x) @ W^T * weight_scale -> real W = W_t * weight_scale, so the fixture
    stores weight_scale = s = 1/inv.  The packed tensor is unpacked once at load time by
    ``BitNetDeserialize`` (ib:343-360, only when ``rows * 4 == out_features``; quantizer_bitnet.py:108-114).
  - ``quantization_mode="online"`` (``AutoBitLinear`` only): bf16/f32 master weights, ternarized on
    every forward by ``WeightQuant`` (ib:200-220: W_t / inv, cast back to the model dtype).  This is
    the hub's bitnet-b1.58-2B-4T-bf16 config, which the master form copies.
* Activations (both classes, offline and online): per token, x_scale = 127 / max(max|x|, 1e-5),
  x_q = clamp(round(x * x_scale), -128, 127) (round half to even).  ``BitLinear.activation_quant``
  (ib:156-178) computes it *in the model dtype* and feeds int8 values to the matmul, then divides by
  x_scale * weight_scale; ``ActQuant`` (ib:223-243) computes it in float32 and returns the
  dequantized x_q / x_scale cast to the model dtype.  In float32 the two agree to rounding.
  ``activation_quant``, ``unpack_weights``, ``WeightQuant`` and ``ActQuant`` are ``@torch.compile``;
  eager (``torch._dynamo`` disabled) gives the same numbers within float rounding.
* Pitfall: a *bf16* autobitlinear-offline checkpoint cannot run in transformers at
  ``dtype=torch.float32``: the quantizer's ``weight`` deserialize converter covers every ``*.weight``
  and ``HfQuantizer.get_new_dtype`` (quantizers/base.py:134-146, used at core_model_loading.py:1926-1927)
  then skips the dtype cast, so embeddings and norms stay bf16 while the unpacked linears are f32 ->
  "expected m1 and m2 to have the same dtype".  Load it in bf16, or build the fixture with
  ``dtype="f32"`` for float32 comparisons.  ``bitlinear`` checkpoints and online masters load fine.
* ``BitNetQuantConfig`` (utils/quantization_config.py:1563-1615) keys: ``quant_method`` ("bitnet"),
  ``linear_class`` ("bitlinear" | "autobitlinear"), ``quantization_mode`` ("offline" | "online"),
  ``modules_to_not_convert`` (None: tied embeddings / lm_head are skipped automatically),
  ``use_rms_norm`` (False), ``rms_norm_eps`` (1e-6).  The 2B-4T configs (as quoted in public
  copies; no hub access here) carry only the first three keys; so does the fixture.
* 2B-4T(-bf16) config.json as quoted publicly: ``bos_token_id`` 128000, ``eos_token_id`` 128001
  (``<|end_of_text|>``, not ``<|eot_id|>``), ``rope_theta`` 500000, ``rms_norm_eps`` 1e-5,
  ``torch_dtype`` bfloat16, ``max_position_embeddings`` 4096, ``tie_word_embeddings`` true, plus an
  ``auto_map`` to remote code that the fixture leaves out (it would need ``trust_remote_code``).
  Chat turns end with ``<|eot_id|>`` (128009): in Llama-3-instruct's header format (the fixture's
  template) and in 2B-4T's own "User: ...<|eot_id|>Assistant: " format.  The tokenizer's
  eos_token is ``<|end_of_text|>``, consistent with that config.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fixtures import _bytes_to_unicode, randomize, _cache_root, _write_json, byte_level_bpe, read_tiktoken_ranks, wheel_resource

Form = Literal["master", "packed"]
LinearClass = Literal["bitlinear", "autobitlinear"]
DType = Literal["bf16", "f32"]
ConfigStyle = Literal["hub", "tf5"]
Reference = Literal["bitlinear", "ternary-weights"]

# Bump when the tokenizer build changes; the on-disk cache is keyed by it.
LLAMA3_TOKENIZER_CACHE_VERSION = "v1"

LLAMA3_NUM_RANKS = 128_000
LLAMA3_NUM_SPECIAL = 256
LLAMA3_VOCAB_SIZE = LLAMA3_NUM_RANKS + LLAMA3_NUM_SPECIAL  # 128256, the 2B-4T vocab_size
BOS_ID = 128_000  # <|begin_of_text|>
EOS_ID = 128_001  # <|end_of_text|>: eos_token_id of the 2B-4T config.json
EOT_ID = 128_009  # <|eot_id|>: ends a chat turn (Llama-3 instruct and the 2B-4T chat format)
ROPE_THETA = 500_000.0
RMS_NORM_EPS = 1e-5

# The special tokens in id order from 128000, exactly as llama-models' llama3/tokenizer.py
# (Tokenizer.__init__) lists them: 12 named tokens, then reserved_special_token_{2..245}.
# Older Llama-3.0 files name ids 128002..128255 differently (e.g. 128004 reserved_2); the
# ids converters care about (begin/end_of_text, start/end_header_id, eot_id) are the same.
_LLAMA3_NAMED_SPECIAL = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
)
LLAMA3_SPECIAL_TOKENS: tuple[str, ...] = _LLAMA3_NAMED_SPECIAL + tuple(
    f"<|reserved_special_token_{2 + i}|>" for i in range(LLAMA3_NUM_SPECIAL - len(_LLAMA3_NAMED_SPECIAL))
)

LLAMA3_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Short Llama-3-instruct template (header tokens, <|eot_id|> ends each turn, BOS from the template).
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


# --------------------------------------------------------------------------- tokenizer


@functools.cache
def llama3_ranks() -> dict[bytes, int]:
    """Token bytes -> BPE rank (== token id) read from llama-models' tiktoken file."""
    return read_tiktoken_ranks(wheel_resource("llama_models", "llama3", "tokenizer.model"), LLAMA3_NUM_RANKS)


@functools.cache
def llama3_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocab and merges, derived as transformers' ``TikTokenConverter`` does.

    Unlike Qwen's ranks, 678 Llama-3 tokens are not reachable by BPE-merging lower-ranked tokens
    (their restricted BPE split has 3+ parts), so the one-merge-per-token derivation of
    ``fixtures.qwen_vocab_and_merges`` does not apply.  The converter Meta/HF used for the hub's
    tokenizer.json (``convert_slow_tokenizer.TikTokenConverter.extract_vocab_merges_from_model``)
    emits, for every token, every split into two in-vocab halves, ordered by (token rank, left
    rank, right rank), and sets ``ignore_merges=True`` so that whole pre-tokens found in the vocab
    are taken as is (as tiktoken does).  This reproduces that list (280,147 merges).
    """
    ranks = llama3_ranks()
    table = _bytes_to_unicode()

    def enc(b: bytes) -> str:
        return "".join(table[x] for x in b)

    vocab = {enc(token): rank for token, rank in ranks.items()}
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            lr, rr = ranks.get(left), ranks.get(right)
            if lr is not None and rr is not None:
                merges.append((rank, lr, rr, left, right))
    merges.sort()
    return vocab, [(enc(m[3]), enc(m[4])) for m in merges]


def build_llama3_tokenizer() -> Any:
    """A ``tokenizers.Tokenizer`` configured like Meta-Llama-3's tokenizer.json."""
    from tokenizers import AddedToken, processors

    vocab, merges = llama3_vocab_and_merges()
    tok = byte_level_bpe(vocab, merges, LLAMA3_PRETOKENIZE_REGEX, ignore_merges=True, nfc=False, trim_offsets=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIAL_TOKENS])
    for i, content in enumerate(LLAMA3_SPECIAL_TOKENS):
        if tok.token_to_id(content) != LLAMA3_NUM_RANKS + i:
            raise RuntimeError(f"{content} did not get id {LLAMA3_NUM_RANKS + i}")
    bos = LLAMA3_SPECIAL_TOKENS[0]
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0",
                pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                special_tokens=[(bos, BOS_ID)],
            ),
        ]
    )
    return tok


def _write_llama3_tokenizer_dir(out: Path) -> None:
    """tokenizer.json + tokenizer_config.json (+ special_tokens_map.json) like Meta-Llama-3-8B.

    tokenizer_config.json is written by transformers' ``PreTrainedTokenizerFast`` and given the hub
    key layout (``added_tokens_decoder``, ``tokenizer_class``); tokenizer.json is serialized from our
    backend directly so that the post-processor is exactly the hub's ByteLevel + TemplateProcessing.
    """
    from transformers import PreTrainedTokenizerFast

    backend = build_llama3_tokenizer()
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        model_max_length=131072,
        clean_up_tokenization_spaces=False,  # the hub says true; transformers 5 ignores it for BPE, with a warning
        chat_template=LLAMA3_CHAT_TEMPLATE,
    )
    hf_tok.save_pretrained(str(out), save_jinja_files=False)

    config_path = out / "tokenizer_config.json"
    cfg = json.loads(config_path.read_text(encoding="utf-8"))
    cfg.pop("backend", None)
    cfg.pop("extra_special_tokens", None)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["model_input_names"] = ["input_ids", "attention_mask"]
    cfg["added_tokens_decoder"] = {
        str(LLAMA3_NUM_RANKS + i): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, content in enumerate(LLAMA3_SPECIAL_TOKENS)
    }
    _write_json(config_path, cfg, sort_keys=True)
    _write_json(out / "special_tokens_map.json", {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"})
    _write_json(out / "tokenizer.json", json.loads(backend.to_str()))


_LLAMA3_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in _LLAMA3_TOKENIZER_FILES)


@functools.cache
def llama3_tokenizer_files() -> Path:
    """Directory with the Llama-3 tokenizer.json, tokenizer_config.json, special_tokens_map.json.

    Built once per machine (about 3 s) and cached next to the Qwen tokenizer (``BITCONV_TEST_CACHE``
    or ~/.cache/bitconv-tests); the key includes the transformers version.
    """
    import transformers

    final = _cache_root() / f"llama3-tokenizer-{LLAMA3_TOKENIZER_CACHE_VERSION}-tf{transformers.__version__}"
    if _complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-llama3-", dir=final.parent))
    try:
        _write_llama3_tokenizer_dir(tmp)
        tmp.chmod(0o755)
        if final.exists() and not _complete(final):
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _complete(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def llama3_reference_encode(text: str) -> list[int]:
    """tiktoken encoding of ``text`` by llama-models' own Tokenizer: no BOS/EOS, special-token text
    recognised as the special token (``allowed_special="all"``, as HF tokenizers do)."""
    return _llama_models_tokenizer().encode(text, bos=False, eos=False, allowed_special="all")


@functools.cache
def _llama_models_tokenizer() -> Any:
    from llama_models.llama3.tokenizer import Tokenizer

    return Tokenizer(wheel_resource("llama_models", "llama3", "tokenizer.model"))


# --------------------------------------------------------------------------- ternary numerics

#: suffixes of the linears BitNet ternarizes (everything else stays in the float dtype)
TERNARY_SUFFIXES = tuple(
    f"{blk}.{p}_proj.weight" for blk, ps in (("self_attn", "qkvo"), ("mlp", ("gate", "up", "down"))) for p in ps
)
_TERNARY_RE = re.compile(r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")


def is_ternary_weight(name: str) -> bool:
    return bool(_TERNARY_RE.match(name))


def _as_torch(x: Any) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(x))


def ternarize(weight: Any) -> tuple[np.ndarray, np.float32]:
    """Absmean ternarization of one matrix, in torch float32 exactly as FORMATS.md/WeightQuant.

    inv = 1 / max(mean|W|, 1e-5); codes = clamp(round(W * inv), -1, 1); scale = f32(1 / inv).
    """
    import torch

    w = _as_torch(weight).to(torch.float32)
    inv = 1.0 / w.abs().mean().clamp(min=1e-5)
    codes = (w * inv).round().clamp(-1, 1).to(torch.int8)
    scale = (1.0 / inv).to(torch.float32)
    return codes.numpy(), np.float32(scale.item())


def _ternary_inv(weight: Any) -> np.float32:
    import torch

    w = _as_torch(weight).to(torch.float32)
    return np.float32((1.0 / w.abs().mean().clamp(min=1e-5)).item())


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """All tensors of a checkpoint directory (every *.safetensors file) as torch tensors."""
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def ternary_reference(
    master_weights: Mapping[str, Any] | str | os.PathLike[str],
) -> dict[str, tuple[np.ndarray, np.float32]]:
    """name -> (codes int8 [N, K], scale float32) for every ternary linear of a master checkpoint.

    ``master_weights``: a state dict (torch tensors or numpy arrays, any float dtype; bf16 values are
    widened exactly) or a master checkpoint directory.  This is what converters must reproduce:
    codes exactly, scales within 1 ulp.
    """
    if not isinstance(master_weights, Mapping):
        master_weights = load_safetensors(master_weights)
    return {name: ternarize(w) for name, w in master_weights.items() if is_ternary_weight(name)}


def pack_ternary(codes: np.ndarray) -> np.ndarray:
    """transformers' packed layout: uint8 [ceil(N/4), ...], row r -> packed row r % R, bits 2*(r // R)."""
    codes = np.asarray(codes)
    if codes.min(initial=0) < -1 or codes.max(initial=0) > 1:
        raise ValueError("codes must be in {-1, 0, 1}")
    n = codes.shape[0]
    rows = (n + 3) // 4
    packed = np.zeros((rows, *codes.shape[1:]), dtype=np.uint8)
    vals = (codes.astype(np.int16) + 1).astype(np.uint8)
    for i in range(4):
        chunk = vals[i * rows : (i + 1) * rows]
        packed[: chunk.shape[0]] |= chunk << (2 * i)
    return packed


def unpack_ternary(packed: np.ndarray, rows: int | None = None) -> np.ndarray:
    """Inverse of :func:`pack_ternary`: int8 codes [4*R or ``rows``, ...]."""
    packed = np.asarray(packed, dtype=np.uint8)
    out = np.concatenate([((packed >> (2 * i)) & 3) for i in range(4)], axis=0).astype(np.int8) - 1
    return out if rows is None else out[:rows]


def read_packed(path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.float32]]:
    """name -> (codes int8, effective scale s float32) of a packed checkpoint (real W = s * codes).

    s = 1 / weight_scale for ``linear_class="bitlinear"`` and weight_scale for ``"autobitlinear"``.
    """
    import torch

    cfg = json.loads((Path(path) / "config.json").read_text())
    qc = cfg.get("quantization_config") or {}
    if qc.get("quant_method") != "bitnet" or qc.get("quantization_mode", "offline") != "offline":
        raise ValueError(f"{path} is not an offline-packed bitnet checkpoint")
    linear_class = qc.get("linear_class", "bitlinear")
    tensors = load_safetensors(path)
    out: dict[str, tuple[np.ndarray, np.float32]] = {}
    for name, t in tensors.items():
        if not is_ternary_weight(name):
            continue
        ws = tensors[name + "_scale"].to(torch.float32).reshape(())
        s = (1.0 / ws) if linear_class == "bitlinear" else ws
        out[name] = (unpack_ternary(t.numpy()), np.float32(s.item()))
    return out


# --------------------------------------------------------------------------- checkpoints


def _config_kwargs(hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int) -> dict[str, Any]:
    if hidden % heads:
        raise ValueError("hidden must be a multiple of heads")
    return dict(
        vocab_size=LLAMA3_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        hidden_act="relu2",
        max_position_embeddings=4096,
        rms_norm_eps=RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        tie_word_embeddings=True,
    )


def _to_hub_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """transformers-5 config.json -> the key layout of the hub's bitnet-b1.58-2B-4T config."""
    out = dict(cfg)
    rope = dict(out.pop("rope_parameters", None) or {})
    out["rope_theta"] = rope.get("rope_theta", ROPE_THETA)
    if "dtype" in out:
        out["torch_dtype"] = out.pop("dtype")
    out.pop("layer_types", None)
    if out.get("pad_token_id", 0) is None:
        del out["pad_token_id"]
    return dict(sorted(out.items()))


def quantization_config(linear_class: LinearClass, mode: Literal["offline", "online"] = "offline") -> dict[str, str]:
    """The ``quantization_config`` block the hub 2B-4T configs carry (BitNetQuantConfig keys)."""
    if linear_class not in ("bitlinear", "autobitlinear"):
        raise ValueError(f"linear_class must be 'bitlinear' or 'autobitlinear', got {linear_class!r}")
    return {"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": mode}


def make_bitnet_checkpoint(
    path: str | os.PathLike[str],
    form: Form = "master",
    linear_class: LinearClass = "bitlinear",
    dtype: DType = "bf16",
    seed: int = 0,
    hidden: int = 256,
    layers: int = 2,
    intermediate: int = 768,
    heads: int = 4,
    kv_heads: int = 2,
    *,
    config_style: ConfigStyle = "hub",
    master_quant_config: bool = True,
    scale_dtype: DType = "f32",
    **overrides: Any,
) -> Path:
    """Write a tiny random BitNetForCausalLM checkpoint (model.safetensors + config + Llama-3 tokenizer).

    ``form="master"``: the float master weights in ``dtype`` as ``save_pretrained`` writes them.
    With ``master_quant_config`` (default) config.json carries the hub -bf16 repo's
    ``{"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}``
    (transformers then ternarizes on the fly); ``linear_class`` is ignored for this form.

    ``form="packed"``: the same master weights (same seed -> same values, rounded to ``dtype``)
    ternarized per tensor (:func:`ternarize`), stored as uint8 in transformers' packed layout plus a
    1-element ``<name>_scale`` (``scale_dtype``, float32 by default so packed == master reference;
    "bf16" rounds it like a bf16 model's buffer): inv for ``"bitlinear"``, s = 1/inv for
    ``"autobitlinear"``; config.json gets the offline ``quantization_config``.  Norms and the
    (tied) embedding stay in ``dtype``.

    ``config_style="hub"`` writes the 2B-4T key layout (``torch_dtype``, top-level ``rope_theta``);
    ``"tf5"`` keeps what transformers 5 writes (``dtype``, ``rope_parameters``).  ``overrides`` are
    extra BitNetConfig kwargs.  Same arguments -> same bytes.
    """
    import torch
    import transformers
    from safetensors.torch import save_file

    if form not in ("master", "packed"):
        raise ValueError(f"form must be 'master' or 'packed', got {form!r}")
    if dtype not in ("bf16", "f32") or scale_dtype not in ("bf16", "f32"):
        raise ValueError("dtype and scale_dtype must be 'bf16' or 'f32'")
    if config_style not in ("hub", "tf5"):
        raise ValueError(f"config_style must be 'hub' or 'tf5', got {config_style!r}")
    qcfg = quantization_config(linear_class)  # validates linear_class

    kwargs = _config_kwargs(hidden, layers, intermediate, heads, kv_heads)
    kwargs.update(overrides)
    config = transformers.BitNetConfig(**kwargs)
    model = transformers.BitNetForCausalLM(config)
    # every matrix N(0,1)/sqrt(fan_in), norms 1 + 0.1·N(0,1): with tied embeddings of std
    # 1/sqrt(hidden) and a unit-RMS final norm the logits are O(1)
    randomize(model, seed, residual_scale=1.0)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    model = model.to(torch_dtype).eval()

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True, max_shard_size="100GB")

    cfg = json.loads((out / "config.json").read_text())
    if form == "master":
        if master_quant_config:
            cfg["quantization_config"] = quantization_config("autobitlinear", "online")
    else:
        st_path = out / "model.safetensors"
        master = load_safetensors(out)
        sdt = torch.bfloat16 if scale_dtype == "bf16" else torch.float32
        packed: dict[str, Any] = {}
        for name, t in master.items():
            if not is_ternary_weight(name):
                packed[name] = t
                continue
            if t.shape[0] % 4:
                raise ValueError(f"{name}: {t.shape[0]} output rows; transformers' BitLinear needs a multiple of 4")
            codes, scale = ternarize(t)
            packed[name] = torch.from_numpy(pack_ternary(codes))
            ws = _ternary_inv(t) if linear_class == "bitlinear" else scale
            packed[name + "_scale"] = torch.tensor([ws], dtype=torch.float32).to(sdt)
        st_path.unlink()
        save_file(dict(sorted(packed.items())), str(st_path), metadata={"format": "pt"})
        cfg["quantization_config"] = qcfg

    if config_style == "hub":
        cfg = _to_hub_config(cfg)
    _write_json(out / "config.json", cfg, sort_keys=True)

    for f in llama3_tokenizer_files().iterdir():
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    return out


# --------------------------------------------------------------------------- references


class _TernaryLinear:
    """Forward of one ternary linear in float32: y = x @ (s * W_t)^T, optionally with per-token
    int8 absmax activation quantization: y = (x_q @ W_t^T) * s / x_scale (x_q @ W_t^T is exact)."""

    def __init__(self, codes: Any, scale: float, act_quant: bool) -> None:
        import torch

        self.codes = torch.as_tensor(codes).to(torch.float32)
        self.scale = torch.tensor(scale, dtype=torch.float32)
        self.weight = self.codes * self.scale
        self.act_quant = act_quant

    def __call__(self, x: Any) -> Any:
        import torch.nn.functional as F

        if not self.act_quant:
            return F.linear(x, self.weight)
        x_scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
        x_q = (x * x_scale).round().clamp(-128, 127)
        return F.linear(x_q, self.codes) / x_scale * self.scale


def _ternary_of(path: Path) -> dict[str, tuple[np.ndarray, np.float32]]:
    cfg = json.loads((path / "config.json").read_text())
    qc = cfg.get("quantization_config") or {}
    if qc.get("quant_method") == "bitnet" and qc.get("quantization_mode", "offline") == "offline":
        return read_packed(path)
    return ternary_reference(path)


def bitnet_model(path: str | os.PathLike[str], *, reference: Reference = "bitlinear") -> Any:
    """A float32 ``BitNetForCausalLM`` (eager attention) whose ternary linears compute the reference.

    Works for master checkpoints (ternarized with :func:`ternary_reference`) and packed ones
    (codes and scales read back with :func:`read_packed`).  Non-ternary tensors are widened to f32.
    """
    import torch
    import transformers

    if reference not in ("bitlinear", "ternary-weights"):
        raise ValueError(f"reference must be 'bitlinear' or 'ternary-weights', got {reference!r}")
    path = Path(path)
    cfg = transformers.BitNetConfig.from_pretrained(str(path))
    cfg.quantization_config = None
    cfg._attn_implementation = "eager"
    model = transformers.BitNetForCausalLM(cfg).to(torch.float32).eval()
    tensors = load_safetensors(path)
    ternary = _ternary_of(path)
    state = {
        k: v.to(torch.float32) for k, v in tensors.items() if not is_ternary_weight(k) and not k.endswith("_scale")
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"} - set(ternary):
        raise RuntimeError(f"{path}: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    act_quant = reference == "bitlinear"
    for name, (codes, scale) in ternary.items():
        module = model.get_submodule(name.removesuffix(".weight"))
        lin = _TernaryLinear(codes, float(scale), act_quant)
        with torch.no_grad():
            module.weight.copy_(lin.weight)
        module.forward = lin  # instance attribute shadows nn.Linear.forward
    return model


def bitnet_logits(
    path: str | os.PathLike[str], token_ids: list[int], *, reference: Reference = "bitlinear"
) -> np.ndarray:
    """Last-position float32 logits of the BitNet reference named by ``reference``:

    "ternary-weights": the HF model in float32 with each ternary linear's weight = scale * W_t;
    "bitlinear": the same plus per-token int8 absmax activation quantization before each ternary
    linear (x_scale = 127 / max(max|x|, 1e-5), x_q = clamp(round(x * x_scale), -128, 127)).
    For a packed checkpoint "bitlinear" equals transformers' own float32 forward of it.
    """
    import torch

    model = bitnet_model(path, reference=reference)
    with torch.no_grad():
        logits = model(torch.tensor([token_ids], dtype=torch.long)).logits
    return logits[0, -1].to(torch.float32).numpy()


def hf_bitnet_logits(path: str | os.PathLike[str], token_ids: list[int], *, compile: bool = False) -> np.ndarray:
    """Last-position float32 logits computed by transformers itself (``from_pretrained``, eager attention).

    For packed/online checkpoints this runs transformers' BitLinear/AutoBitLinear.  ``compile=False``
    runs their ``@torch.compile`` helpers eagerly (``torch._dynamo`` disabled for the call): no
    compiler start-up, same numbers within float rounding.
    """
    import torch
    from transformers import AutoModelForCausalLM

    def run() -> np.ndarray:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
        model.eval()
        with torch.no_grad():
            logits = model(torch.tensor([token_ids], dtype=torch.long)).logits
        return logits[0, -1].to(torch.float32).numpy()

    if compile:
        return run()
    import torch._dynamo

    prev = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    try:
        return run()
    finally:
        torch._dynamo.config.disable = prev
