"""Checks of the offline BitNet fixture factory (tests/fixtures_bitnet.py): the Llama-3 tokenizer,
the master and packed checkpoints, and the two float references against transformers itself."""

from __future__ import annotations

import importlib.util
import json
from hashlib import sha256
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import fixtures_bitnet as fb  # tests/ is on sys.path (conftest.py)

pytest.importorskip("llama_models", reason="the Llama-3 tokenizer fixture needs the llama-models wheel")

IDS = [128000, 9906, 1917, 11, 358, 1097, 264, 1296, 13]  # BOS "Hello world, I am a test."
LINEAR_CLASSES = ("bitlinear", "autobitlinear")
# transformers' BitNet quantizer refuses to load without accelerate (quantizer_bitnet.py:44-46)
needs_accelerate = pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None, reason="loading bitnet checkpoints in transformers needs accelerate"
)


@pytest.fixture(autouse=True)
def _eager_torch():
    """transformers' BitNet helpers are @torch.compile; eager gives the same numbers (checked: 0.0
    difference on these models) without ~10 s of inductor start-up per process."""
    import torch._dynamo

    with torch._dynamo.config.patch(disable=True):
        yield


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _tensors_meta(path: Path) -> dict[str, tuple[list[int], str]]:
    out: dict[str, tuple[list[int], str]] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                out[key] = (list(sl.get_shape()), sl.get_dtype())
    return out


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(fb.llama3_tokenizer_files())


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """master (bf16, f32) and packed checkpoints of the same seed-0 model."""
    root = tmp_path_factory.mktemp("bitnet")
    return {
        "master": fb.make_bitnet_checkpoint(root / "master"),
        "master-f32": fb.make_bitnet_checkpoint(root / "master-f32", dtype="f32"),
        "bitlinear": fb.make_bitnet_checkpoint(root / "packed-bl", form="packed", linear_class="bitlinear"),
        "autobitlinear": fb.make_bitnet_checkpoint(root / "packed-abl", form="packed", linear_class="autobitlinear"),
        # transformers 5.24 cannot run a bf16 autobitlinear-offline checkpoint at dtype=float32 (see
        # test_packed_matches_transformers), so the float32 comparison uses an f32 one.
        "autobitlinear-f32": fb.make_bitnet_checkpoint(
            root / "packed-abl-f32", form="packed", linear_class="autobitlinear", dtype="f32"
        ),
    }


@pytest.fixture(scope="module")
def master_reference(ckpts: dict[str, Path]) -> np.ndarray:
    return fb.bitnet_logits(ckpts["master"], IDS, reference="bitlinear")


# ----------------------------------------------------------------------------- tokenizer


def test_special_tokens_match_llama_models() -> None:
    from llama_models.llama3.tokenizer import Tokenizer

    specials = Tokenizer.get_instance().special_tokens
    assert [t for t, _ in sorted(specials.items(), key=lambda kv: kv[1])] == list(fb.LLAMA3_SPECIAL_TOKENS)
    assert min(specials.values()) == fb.LLAMA3_NUM_RANKS and len(specials) == 256
    assert specials["<|eot_id|>"] == fb.EOT_ID and specials["<|start_header_id|>"] == 128006


def test_tokenizer_known_ids(tokenizer) -> None:
    assert tokenizer("Hello world").input_ids == [fb.BOS_ID, 9906, 1917]
    assert tokenizer("Hello world", add_special_tokens=False).input_ids == [9906, 1917]
    assert tokenizer.bos_token_id == fb.BOS_ID and tokenizer.eos_token_id == fb.EOS_ID
    assert len(tokenizer) == fb.LLAMA3_VOCAB_SIZE
    assert tokenizer.convert_ids_to_tokens([128000, 128001, 128006, 128007, 128009, 128255]) == [
        "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
        "<|reserved_special_token_245|>",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "text",
    [
        "Hello world",
        "Hello world, I am a test.",
        " leading space\n\nand   runs of\t\twhitespace  \n",
        "I'm sure you'VE seen 1234567 numbers, 3.14159 and $1,000,000!",
        "naïve café – 東京タワー, Привет мир, 🦙🚀😶\u200d🌫️",
        "def f(x):\n    return x**2  # comment\n",
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    ],
)
def test_tokenizer_matches_tiktoken(tokenizer, text: str) -> None:
    assert tokenizer(text, add_special_tokens=False).input_ids == fb.llama3_reference_encode(text)
    assert tokenizer.decode(fb.llama3_reference_encode(text)) == text


def test_llama_cpp_recognises_llama_bpe(tokenizer) -> None:
    # convert_hf_to_gguf.py get_vocab_base_pre: sha256 of str(tokenizer.encode(chktxt)) -> "llama-bpe"
    # (ref: meta-llama/Meta-Llama-3-8B)
    chktxt = (
        "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
        "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
        "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
        "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
    )
    digest = sha256(str(tokenizer.encode(chktxt)).encode()).hexdigest()
    assert digest == "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5"


def test_merges_match_transformers_tiktoken_converter(monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_models.tokenizer_utils import load_bpe_file
    from transformers.convert_slow_tokenizer import TikTokenConverter

    # read the ranks with llama-models' own reader instead of tiktoken's (which caches downloads)
    monkeypatch.setattr(TikTokenConverter, "load_tiktoken_bpe", staticmethod(lambda p: load_bpe_file(Path(p))))
    ranks_file = str(fb.wheel_resource("llama_models", "llama3", "tokenizer.model"))
    vocab, merges = TikTokenConverter(vocab_file=ranks_file).extract_vocab_merges_from_model(
        ranks_file
    )
    ours_vocab, ours_merges = fb.llama3_vocab_and_merges()
    assert ours_vocab == vocab
    assert ours_merges == merges
    data = json.loads((fb.llama3_tokenizer_files() / "tokenizer.json").read_text(encoding="utf-8"))
    assert data["model"]["ignore_merges"] is True
    assert len(data["model"]["merges"]) == len(merges) == 280_147


def test_tokenizer_files(tokenizer) -> None:
    d = fb.llama3_tokenizer_files()
    cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (cfg["bos_token"], cfg["eos_token"]) == ("<|begin_of_text|>", "<|end_of_text|>")
    assert len(cfg["added_tokens_decoder"]) == 256
    tj = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    assert [p["type"] for p in tj["post_processor"]["processors"]] == ["ByteLevel", "TemplateProcessing"]
    assert tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == fb.LLAMA3_PRETOKENIZE_REGEX
    messages = [{"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert tokenizer(text, add_special_tokens=False).input_ids[:4] == [128000, 128006, 882, 128007]


# ----------------------------------------------------------------------------- checkpoints


def test_master_layout(ckpts: dict[str, Path]) -> None:
    meta = _tensors_meta(ckpts["master"])
    h, i, kv = 256, 768, 128
    expected = {"model.embed_tokens.weight": [128256, h], "model.norm.weight": [h]}
    for n in range(2):
        p = f"model.layers.{n}."
        expected |= {
            p + "input_layernorm.weight": [h],
            p + "post_attention_layernorm.weight": [h],
            p + "self_attn.q_proj.weight": [h, h],
            p + "self_attn.k_proj.weight": [kv, h],
            p + "self_attn.v_proj.weight": [kv, h],
            p + "self_attn.o_proj.weight": [h, h],
            p + "self_attn.attn_sub_norm.weight": [h],
            p + "mlp.gate_proj.weight": [i, h],
            p + "mlp.up_proj.weight": [i, h],
            p + "mlp.down_proj.weight": [h, i],
            p + "mlp.ffn_sub_norm.weight": [i],
        }
    assert {k: s for k, (s, _) in meta.items()} == expected
    assert {d for _, d in meta.values()} == {"BF16"}
    assert {d for _, d in _tensors_meta(ckpts["master-f32"]).values()} == {"F32"}
    cfg = json.loads((ckpts["master"] / "config.json").read_text())
    assert cfg["model_type"] == "bitnet" and cfg["architectures"] == ["BitNetForCausalLM"]
    assert (cfg["hidden_act"], cfg["rope_theta"], cfg["tie_word_embeddings"]) == ("relu2", 500000.0, True)
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["torch_dtype"]) == (128000, 128001, "bfloat16")
    assert cfg["quantization_config"] == {
        "quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"
    }  # fmt: skip
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (ckpts["master"] / name).is_file()


@pytest.mark.parametrize("linear_class", LINEAR_CLASSES)
def test_packed_layout_and_codes(ckpts: dict[str, Path], linear_class: str) -> None:
    master = fb.load_safetensors(ckpts["master"])
    packed = fb.load_safetensors(ckpts[linear_class])
    ref = fb.ternary_reference(master)
    assert len(ref) == 14
    assert set(packed) == set(master) | {k + "_scale" for k in ref}
    for name, (codes, scale) in ref.items():
        n, k = master[name].shape
        assert tuple(packed[name].shape) == ((n + 3) // 4, k) and str(packed[name].dtype) == "torch.uint8"
        ws = packed[name + "_scale"]
        assert tuple(ws.shape) == (1,) and str(ws.dtype) == "torch.float32"
        assert np.array_equal(fb.unpack_ternary(packed[name].numpy(), n), codes)
        inv = np.float32(1) / np.float32(np.abs(master[name].float().numpy()).mean(dtype=np.float64))
        stored = np.float32(ws.item())
        if linear_class == "bitlinear":  # real W = W_t / weight_scale
            assert abs(stored - inv) <= 2 * np.spacing(inv)
        else:  # real W = W_t * weight_scale
            assert stored == scale
    for name, t in packed.items():  # norms and embedding untouched
        if name in master:
            assert fb.is_ternary_weight(name) or bool((t == master[name]).all())
    got = fb.read_packed(ckpts[linear_class])
    for name, (codes, scale) in ref.items():
        assert np.array_equal(got[name][0], codes)
        assert abs(got[name][1] - scale) <= np.spacing(scale)
    cfg = json.loads((ckpts[linear_class] / "config.json").read_text())
    assert cfg["quantization_config"] == {
        "quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": "offline"
    }  # fmt: skip


def test_ternarize_matches_transformers_weight_quant(ckpts: dict[str, Path]) -> None:
    import torch
    import torch._dynamo
    from transformers.integrations.bitnet import WeightQuant

    master = fb.load_safetensors(ckpts["master"])
    ref = fb.ternary_reference(master)
    with torch._dynamo.config.patch(disable=True):
        for name, (codes, scale) in ref.items():
            w = master[name].float()
            deq = WeightQuant.apply(w)  # W_t / inv, float32
            assert np.array_equal(np.sign(deq.numpy()).astype(np.int8), codes)
            nz = codes != 0
            assert np.allclose(np.abs(deq.numpy()[nz]), scale, rtol=2**-23, atol=0)
    codes, scale = fb.ternarize(np.zeros((4, 8), np.float32))  # mean clamp at 1e-5
    assert not codes.any() and scale == np.float32(1) / (np.float32(1) / np.float32(1e-5))


@pytest.mark.parametrize("shape", [(4, 3), (8, 16), (10, 5), (7, 2), (5, 3), (1, 4), (768, 256)])
def test_pack_roundtrip_against_transformers(shape: tuple[int, int]) -> None:
    import torch
    import torch._dynamo
    from transformers.integrations.bitnet import pack_weights, unpack_weights

    rng = np.random.default_rng(sum(shape))
    codes = rng.integers(-1, 2, size=shape, dtype=np.int8)
    ours = fb.pack_ternary(codes)
    theirs = pack_weights(torch.from_numpy(codes.astype(np.int32)).clone())  # pack_weights adds 1 in place
    assert ours.dtype == np.uint8 and ours.shape == ((shape[0] + 3) // 4, shape[1])
    assert np.array_equal(ours, theirs.numpy())
    with torch._dynamo.config.patch(disable=True):
        unpacked = unpack_weights(torch.from_numpy(ours), dtype=torch.float32).numpy()
    assert np.array_equal(unpacked[: shape[0]], codes)
    assert np.array_equal(fb.unpack_ternary(ours, shape[0]), codes)


def test_deterministic(tmp_path: Path, ckpts: dict[str, Path]) -> None:
    again = fb.make_bitnet_checkpoint(tmp_path / "again", form="packed", linear_class="bitlinear")
    assert (again / "model.safetensors").read_bytes() == (ckpts["bitlinear"] / "model.safetensors").read_bytes()
    other = fb.make_bitnet_checkpoint(tmp_path / "other", form="packed", seed=1)
    assert (other / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()


# ----------------------------------------------------------------------------- references


def test_references(ckpts: dict[str, Path], master_reference: np.ndarray) -> None:
    tw = fb.bitnet_logits(ckpts["master"], IDS, reference="ternary-weights")
    assert tw.dtype == np.float32 and tw.shape == (fb.LLAMA3_VOCAB_SIZE,)
    assert 0.3 < float(master_reference.std()) < 3  # O(1) logits
    # activation quantization is a small but visible perturbation
    assert 1e-4 < _rel(tw, master_reference) < 0.2
    for lc in LINEAR_CLASSES:  # packed reference == master reference (same codes, same f32 scales)
        assert _rel(fb.bitnet_logits(ckpts[lc], IDS), master_reference) < 1e-6


@needs_accelerate
@pytest.mark.parametrize("linear_class", LINEAR_CLASSES)
def test_packed_matches_transformers(ckpts: dict[str, Path], master_reference: np.ndarray, linear_class: str) -> None:
    """transformers' own BitLinear / AutoBitLinear forward (float32) == the bitlinear reference."""
    key = linear_class if linear_class == "bitlinear" else "autobitlinear-f32"
    reference = master_reference if key == "bitlinear" else fb.bitnet_logits(ckpts["master-f32"], IDS)
    hf = fb.hf_bitnet_logits(ckpts[key], IDS)
    assert _rel(hf, reference) < 1e-4
    assert _rel(hf, fb.bitnet_logits(ckpts[key], IDS)) < 1e-4
    assert _rel(hf, fb.bitnet_logits(ckpts[key], IDS, reference="ternary-weights")) > 1e-4


@needs_accelerate
@pytest.mark.parametrize("linear_class", LINEAR_CLASSES)
def test_packed_modules_in_transformers(ckpts: dict[str, Path], linear_class: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ckpts[linear_class]))  # bf16, as the hub model runs
    q = model.model.layers[0].self_attn.q_proj
    assert type(q).__name__ == {"bitlinear": "BitLinear", "autobitlinear": "AutoBitLinear"}[linear_class]
    assert type(model.lm_head).__name__ == "Linear"  # tied embedding stays float
    codes, scale = fb.ternary_reference(fb.load_safetensors(ckpts["master"]))["model.layers.0.self_attn.q_proj.weight"]
    ws = float(q.weight_scale.float())
    if linear_class == "bitlinear":
        assert q.weight.dtype == torch.uint8 and tuple(q.weight.shape) == (64, 256)  # unpacked per forward
        assert ws == pytest.approx(1 / float(scale), rel=2**-8)
    else:
        assert np.array_equal(q.weight.detach().float().numpy(), codes)  # unpacked at load
        assert ws == pytest.approx(float(scale), rel=2**-8)
    with torch.no_grad():
        logits = model(torch.tensor([IDS])).logits[0, -1].float().numpy()
    ref = fb.bitnet_logits(ckpts["master"], IDS)
    cos = float(np.dot(logits, ref) / np.linalg.norm(logits) / np.linalg.norm(ref))
    assert cos > 0.99  # bf16 compute


@needs_accelerate
@pytest.mark.parametrize("key", ["master", "master-f32"])
def test_master_online_matches_transformers(ckpts: dict[str, Path], key: str) -> None:
    """The hub -bf16 config (autobitlinear, online): transformers ternarizes the master weights itself."""
    hf = fb.hf_bitnet_logits(ckpts[key], IDS)
    assert _rel(hf, fb.bitnet_logits(ckpts[key], IDS)) < 1e-4


def test_tf5_config_style(tmp_path: Path, ckpts: dict[str, Path]) -> None:
    p = fb.make_bitnet_checkpoint(tmp_path / "tf5", form="packed", config_style="tf5")
    cfg = json.loads((p / "config.json").read_text())
    assert "rope_theta" not in cfg and cfg["rope_parameters"]["rope_theta"] == 500000.0 and cfg["dtype"] == "bfloat16"
    assert (p / "model.safetensors").read_bytes() == (ckpts["bitlinear"] / "model.safetensors").read_bytes()
    assert _rel(fb.bitnet_logits(p, IDS), fb.bitnet_logits(ckpts["bitlinear"], IDS)) == 0.0


@needs_accelerate
def test_bf16_scales(tmp_path: Path, ckpts: dict[str, Path]) -> None:
    p = fb.make_bitnet_checkpoint(tmp_path / "bf16-scale", form="packed", scale_dtype="bf16")
    assert {d for k, (_, d) in _tensors_meta(p).items() if k.endswith("_scale")} == {"BF16"}
    assert _rel(fb.hf_bitnet_logits(p, IDS), fb.bitnet_logits(p, IDS)) < 1e-4
