"""Sanity checks for the offline Qwen fixture factory (tests/fixtures.py)."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import regex
from safetensors import safe_open

import fixtures as fx  # tests/ is on sys.path (pytest rootdir-relative import, as in conftest.py)

TOKENS = [9707, 1879, 11, 358, 1079, 264, 1273, 13]  # "Hello world, I am a test."


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(fx.qwen_tokenizer_files())


def _safetensors_names(path: Path) -> dict[str, tuple[list[int], str]]:
    out: dict[str, tuple[list[int], str]] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                out[key] = (list(sl.get_shape()), sl.get_dtype())
    return out


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_known_ids(tokenizer) -> None:
    assert tokenizer("Hello world").input_ids == [9707, 1879]
    assert tokenizer("<|im_start|>").input_ids == [151644]
    assert tokenizer("你好").input_ids == [108386]
    assert len(tokenizer) == 151_665
    for i, (content, special) in enumerate(fx.QWEN_ADDED_TOKENS):
        token_id = fx.SPECIAL_TOKEN_START + i
        assert tokenizer.convert_tokens_to_ids(content) == token_id
        assert tokenizer.added_tokens_decoder[token_id].special is special
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None


@pytest.mark.parametrize(
    "text",
    ["你好，世界！我是通义千问。", "emoji 😀👍🏽 👨‍👩‍👧 ok", "  two  spaces\n\n\ttab\r\n", "Ünïcödé ñ café 1234567"],
)
def test_tokenizer_round_trip(tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_merges_reproduce_tiktoken_bpe() -> None:
    """HF merges must give the same ids as tiktoken's rank-based BPE (pure-Python reference)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(fx.qwen_tokenizer_files() / "tokenizer.json"))
    ranks = fx.qwen_ranks()
    pattern = regex.compile(fx.QWEN2_PRETOKENIZE_REGEX)
    text = (
        "def forward(self, x: torch.Tensor) -> torch.Tensor:\n    return self.w2(F.silu(self.w1(x)))\n"
        "The quick brown fox jumps over the lazy dog. 北京是中国的首都。 Привет, мир! 🤖 3.14159"
    )
    expected: list[int] = []
    for piece in pattern.findall(unicodedata.normalize("NFC", text)):
        expected += [ranks[p] for p in fx.bpe_merge(ranks, piece.encode())]
    assert tok.encode(text).ids == expected


def test_tokenizer_files_layout() -> None:
    d = fx.qwen_tokenizer_files()
    tok_json = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    assert tok_json["post_processor"]["type"] == "ByteLevel"
    assert tok_json["post_processor"]["trim_offsets"] is False
    assert tok_json["normalizer"] == {"type": "NFC"}
    assert tok_json["model"]["byte_fallback"] is False
    assert len(tok_json["model"]["merges"]) == fx.NUM_RANKS - 256
    cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["tokenizer_class"] == "Qwen2Tokenizer"
    assert cfg["add_bos_token"] is False and cfg["bos_token"] is None
    assert cfg["model_max_length"] == 32768 and cfg["errors"] == "replace"
    assert "<|im_start|>" in cfg["chat_template"]


def test_chat_template(tokenizer) -> None:
    messages = [{"role": "user", "content": "hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


# ----------------------------------------------------------------------------- checkpoints


def test_fixture_matrix_coverage() -> None:
    m = fx.FIXTURE_MATRIX
    assert {s.arch for s in m} == set(fx.ARCHS)
    assert {s.dtype for s in m} == {"bf16", "f32"}
    assert {s.config_style for s in m} == {"hub", "tf5"}
    assert any(s.shards == 1 for s in m) and any(s.shards > 1 for s in m)


@pytest.mark.parametrize("arch", fx.ARCHS)
def test_config_styles_load_identically(tmp_path: Path, arch: str) -> None:
    from transformers import AutoConfig

    hub = fx.make_checkpoint(tmp_path / "hub", arch, "bf16", config_style="hub")
    tf5 = fx.make_checkpoint(tmp_path / "tf5", arch, "bf16", config_style="tf5")

    hub_cfg = json.loads((hub / "config.json").read_text())
    tf5_cfg = json.loads((tf5 / "config.json").read_text())
    assert hub_cfg["rope_theta"] == fx.ROPE_THETA and "rope_parameters" not in hub_cfg
    assert hub_cfg["torch_dtype"] == "bfloat16" and "dtype" not in hub_cfg
    assert tf5_cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": fx.ROPE_THETA}
    assert tf5_cfg["dtype"] == "bfloat16" and "rope_theta" not in tf5_cfg
    assert hub_cfg["rms_norm_eps"] == tf5_cfg["rms_norm_eps"] == fx.RMS_NORM_EPS
    if arch.endswith("moe"):
        assert hub_cfg["num_experts"] == 4 and "num_local_experts" not in hub_cfg
        assert tf5_cfg["num_local_experts" if arch == "qwen3moe" else "num_experts"] == 4

    for path in (hub, tf5):
        loaded = AutoConfig.from_pretrained(path)
        assert loaded.rope_parameters["rope_theta"] == fx.ROPE_THETA
        if arch.endswith("moe"):
            assert loaded.num_experts == 4
    np.testing.assert_array_equal(fx.hf_logits(hub, TOKENS), fx.hf_logits(tf5, TOKENS))
    assert (hub / "tokenizer.json").is_file() and (hub / "tokenizer_config.json").is_file()


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_index(tmp_path: Path, shards: int) -> None:
    path = fx.make_checkpoint(tmp_path / "ck", "qwen3moe", "f32", shards=shards)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in path.glob("*.safetensors"))
    assert len(files) == shards and "model.safetensors" not in files
    assert sorted(set(index["weight_map"].values())) == files
    names = _safetensors_names(path)
    assert set(index["weight_map"]) == set(names)
    assert all(dtype == "F32" for _, dtype in names.values())


def test_hub_tensor_names_and_dtype(tmp_path: Path) -> None:
    names = _safetensors_names(fx.make_checkpoint(tmp_path / "ck", "qwen2moe", "bf16"))
    assert names["model.layers.0.mlp.experts.3.gate_proj.weight"] == ([48, 64], "BF16")
    assert names["model.layers.0.mlp.experts.3.down_proj.weight"] == ([64, 48], "BF16")
    assert names["model.layers.0.mlp.shared_expert_gate.weight"][0] == [1, 64]
    assert "model.layers.0.self_attn.q_proj.bias" in names
    assert not any("gate_up_proj" in k for k in names)


@pytest.mark.parametrize("arch", ["qwen2moe", "qwen3moe"])
def test_fused_expert_layout(tmp_path: Path, arch: str) -> None:
    hub = fx.make_checkpoint(tmp_path / "hub", arch, "f32")
    fused = fx.make_checkpoint(tmp_path / "fused", arch, "f32", expert_layout="fused")
    names = _safetensors_names(fused)
    assert names["model.layers.1.mlp.experts.gate_up_proj"][0] == [4, 96, 64]  # [E, 2*I, H]
    assert names["model.layers.1.mlp.experts.down_proj"][0] == [4, 64, 48]  # [E, H, I]
    np.testing.assert_allclose(fx.hf_logits(hub, TOKENS), fx.hf_logits(fused, TOKENS), rtol=0, atol=1e-5)


def test_tied_embeddings(tmp_path: Path) -> None:
    path = fx.make_checkpoint(tmp_path / "ck", "qwen3", tie_word_embeddings=True)
    assert "lm_head.weight" not in _safetensors_names(path)
    assert json.loads((path / "config.json").read_text())["tie_word_embeddings"] is True
    assert np.isfinite(fx.hf_logits(path, TOKENS)).all()


def test_deterministic_by_seed(tmp_path: Path) -> None:
    a = fx.make_checkpoint(tmp_path / "a", "qwen3", "f32", seed=1)
    b = fx.make_checkpoint(tmp_path / "b", "qwen3", "f32", seed=1)
    c = fx.make_checkpoint(tmp_path / "c", "qwen3", "f32", seed=2)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert not np.array_equal(fx.hf_logits(a, TOKENS), fx.hf_logits(c, TOKENS))


def test_conversion_bugs_move_logits(tmp_path: Path) -> None:
    """The random init must make typical converter mistakes visible in the logits."""
    import torch
    from transformers import AutoModelForCausalLM

    path = fx.make_checkpoint(tmp_path / "ck", "qwen2", "f32")
    ref = fx.hf_logits(path, TOKENS)
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    other_rope = fx.make_checkpoint(tmp_path / "rope", "qwen2", "f32", rope_parameters=rope)
    assert np.abs(fx.hf_logits(other_rope, TOKENS) - ref).max() > 0.05

    def perturbed(edit) -> np.ndarray:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
        with torch.no_grad():
            for name, p in model.eval().named_parameters():
                edit(name, p)
            return model(torch.tensor([TOKENS])).logits[0, -1].numpy()

    drop_bias = perturbed(lambda n, p: p.zero_() if n.endswith("k_proj.bias") else None)
    unit_norm = perturbed(lambda n, p: p.fill_(1.0) if n.endswith("layernorm.weight") else None)
    assert np.abs(drop_bias - ref).max() > 0.05
    assert np.abs(unit_norm - ref).max() > 0.05
