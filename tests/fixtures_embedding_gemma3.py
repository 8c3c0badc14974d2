"""Offline fixture factory for the Gemma3-backbone BitNet embedding model (microsoft/bitnet-embedding-270m
style): tiny random `Gemma3TextModel` checkpoints with BitLinear per-projection norms, a Gemma-style
tokenizer and the sentence-transformers files.

What it copies from bitnet.cpp's `docs/bitnet-embeddings-i2s-guide.md` (microsoft/BitNet 16da220):
model_type `gemma3_text`, head_dim ≠ hidden / heads (256 vs 160 in the real one), one KV head,
`query_pre_attn_scalar` = head_dim, rope_theta 10000, tied embeddings and no lm_head, the post-attention
and post-FFN norms, the embedding scaled by sqrt(hidden) (transformers' model does it), GELU (tanh),
last-token pooling + L2. The Gemma3 norms (`Gemma3RMSNorm`: x · (1 + w)) get weights near 0 as trained
ones have, so a converter that forgets the script's `w + 1` is far off; the post-attention / post-FFN
norms scale each block's update to ~0.15 (1 + w with w near −0.85: a residual-dominated model, as
trained ones are, whose int8 activation rounding does not swing the pooled embedding); the BitLinear
norms are plain RMSNorms (weights near 1), which the script leaves alone.

Gemma's own vocabulary (262,144 SentencePiece pieces) is not obtainable offline, so the tokenizer is a
small one in the same layout, learned here by a deterministic BPE on a fixed text: Gemma's special
tokens first (`<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3, `<mask>` 4, `<start_of_turn>`, `<end_of_turn>`),
the 256 byte-fallback pieces `<0x00>`…`<0xFF>`, `▁` for spaces (no dummy prefix), merges; a
TemplateProcessing post-processor `<bos> $A <eos>` (the EOS is the pooled token); one non-special
added token to take the USER_DEFINED path. The converter reads it as it reads Gemma's tokenizer.json.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Literal

import fixtures
import fixtures_embedding as fe

GEMMA_TOKENIZER_VERSION = "v1"
SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>")
PAD_ID, EOS_ID, BOS_ID = 0, 1, 2
PLAIN_ADDED = "\t\t"  # an added token that is neither special nor looks it: USER_DEFINED
N_MERGES = 160
VOCAB_SIZE = 512
_POST_NORMS = ("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")  # > the tokenizer's pieces: the rest are [PAD{i}] in the GGUF
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Hello world! Instruct: Given a web search query, retrieve "
    "relevant passages that answer the query. Query: What is BitNet? BitNet b1.58 uses ternary weights and "
    "eight bit activations. Text embeddings map sentences to vectors; similar sentences land close together. "
    "The embedding of a sentence is the hidden state of its last token, normalized to unit length. "
    "Die schnelle braune Katze. Le renard brun saute. 1234567890 (x + y) * z = 42, naïve café."
)


def _learn_merges(text: str, n: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Characters and BPE merges of `text` (spaces as ▁ starting each word), most frequent pair
    first, ties by the pair's text: deterministic, so the fixture is the same on every machine."""
    words = Counter()
    for i, w in enumerate(text.replace(" ", "\u2581").split("\u2581")):
        if w or i:
            words[("\u2581" if i else "") + w] += 1
    seqs = {w: list(w) for w in words}
    chars = sorted({c for w in words for c in w})
    merges: list[tuple[str, str]] = []
    for _ in range(n):
        pairs = Counter()
        for w, s in seqs.items():
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return chars, merges


def _write_gemma_tokenizer(out: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    chars, merges = _learn_merges(_CORPUS, N_MERGES)
    vocab: dict[str, int] = {}
    for piece in (*SPECIALS, *(f"<0x{b:02X}>" for b in range(256)), PLAIN_ADDED, "\u2581", *chars,
                  *(a + b for a, b in merges)):
        vocab.setdefault(piece, len(vocab))
    assert len(vocab) <= VOCAB_SIZE
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.add_tokens([AddedToken(PLAIN_ADDED, special=False, normalized=False)])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A <eos> $B <eos>",
        special_tokens=[("<bos>", BOS_ID), ("<eos>", EOS_ID)])
    tok.save(str(out / "tokenizer.json"))
    decoder = {str(vocab[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                               "single_word": False, "special": t in SPECIALS} for t in (*SPECIALS, PLAIN_ADDED)}
    fixtures._write_json(out / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": True, "added_tokens_decoder": decoder, "bos_token": "<bos>",
        "clean_up_tokenization_spaces": False, "eos_token": "<eos>", "model_max_length": 32768,
        "pad_token": "<pad>", "padding_side": "right", "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>"}, sort_keys=True)
    fixtures._write_json(out / "special_tokens_map.json", {
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"})


@functools.cache
def gemma_tokenizer_files() -> Path:
    """The Gemma-style tokenizer files, built once per machine."""
    import tokenizers

    return fe.cached_files(fixtures._cache_root() / f"gemma-embedding-tokenizer-{GEMMA_TOKENIZER_VERSION}-tk"
                           f"{tokenizers.__version__}", _write_gemma_tokenizer)


def _hub_config(config: object, dtype: str) -> dict:
    """config.json as the hub's Gemma3 configs lay it out (top-level rope_theta and
    rope_local_base_freq: the upstream converter reads only the top-level rope_theta)."""
    cfg = config.to_dict()  # type: ignore[attr-defined]
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope["full_attention"]["rope_theta"]
    cfg["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
    cfg["rope_scaling"] = None
    cfg["torch_dtype"] = dtype
    for key in ("dtype", "_name_or_path", "id2label", "label2id", "return_dict", "output_hidden_states",
                "output_attentions", "chunk_size_feed_forward", "is_encoder_decoder", "problem_type"):
        cfg.pop(key, None)
    cfg["transformers_version"] = "4.56.0"
    return dict(sorted(cfg.items()))


def make_gemma3_embedding_checkpoint(path: str | os.PathLike[str], *, dtype: Literal["bf16", "f32"] = "bf16",
                                     seed: int = 0, hidden: int = 128, layers: int = 2, heads: int = 4,
                                     kv_heads: int = 1, head_dim: int = 64, intermediate: int = 256,
                                     pooling: fe.Pooling | None = "lasttoken", normalize: bool = True,
                                     prefix: str = "", vocab_size: int = VOCAB_SIZE, rope_theta: float = 10000.0,
                                     sliding_window: int = 512) -> Path:
    """A tiny random bitnet-embedding-270m-shaped checkpoint (Gemma3TextModel + per-projection norms).
    Layers follow Gemma3's pattern (every sixth global, the others sliding-window with RoPE base
    10000); `rope_theta` is the global layers' base (the guide's 10000 for the real model)."""
    import torch
    import transformers

    config = transformers.Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, query_pre_attn_scalar=head_dim,
        sliding_window=sliding_window,
        layer_types=["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(layers)],
        max_position_embeddings=32768, rms_norm_eps=fixtures.RMS_NORM_EPS,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": rope_theta},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=BOS_ID, tie_word_embeddings=True)
    config.architectures = ["Gemma3TextModel"]
    model = transformers.Gemma3TextModel(config)
    fixtures.randomize(model, seed)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 1)
    for k in state:
        if k.endswith("norm.weight"):  # Gemma3RMSNorm: the model multiplies by (1 + w)
            state[k] = 0.1 * torch.randn(state[k].shape, generator=gen)
            if k.endswith(_POST_NORMS):  # residual-dominated, as trained models are (fixtures.randomize)
                state[k] = state[k] * 0.5 + (fixtures.RESIDUAL_SCALE - 1.0)
    out = fe.save_with_bitlinear_norms(path, state, layers, gen, dtype, prefix)
    fixtures._write_json(out / "config.json", _hub_config(config, "bfloat16" if dtype == "bf16" else "float32"),
                         sort_keys=True)
    for f in gemma_tokenizer_files().iterdir():
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    fe.write_sentence_transformers_files(out, hidden, pooling, normalize)
    return out


__all__ = ["make_gemma3_embedding_checkpoint", "gemma_tokenizer_files", "EOS_ID", "BOS_ID"]


if __name__ == "__main__":  # a quick look at the fixture's tokenizer
    import sys

    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(gemma_tokenizer_files() / "tokenizer.json"))
    for s in sys.argv[1:] or ["Hello world", "naïve café 日本"]:
        print(json.dumps(t.encode(s).tokens, ensure_ascii=False))
