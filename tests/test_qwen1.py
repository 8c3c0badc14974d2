"""Qwen (1) (`QWenLMHeadModel`) → GGUF `qwen`, judged by llama.cpp's own tools.

One tiny checkpoint (tests/fixtures_qwen1.py: hidden 64, w1/w2 256 wide so that ffn_down takes real
k-quant blocks, 2 layers, the real 151936-row vocabulary and qwen.tiktoken) serves every test;
llama.cpp's converter and bitconv each convert it once per type for the session.

- f16 / bf16 / q8_0: what llama.cpp's convert_hf_to_gguf.py writes, tensor for tensor and key for
  key, plus the one key it omits: `qwen.attention.layer_norm_rms_epsilon`, without which llama.cpp
  (0.3.36, the converter's own version) refuses the file. The test pins that difference exactly.
- q4_k_m: byte for byte what llama-quantize makes of the bf16 file.
- llama.cpp runs the files: the f32 file's logits equal an independent numpy Qwen-1 forward of the
  checkpoint (Qwen's modeling code restated: RMSNorm, rotate_half RoPE, c_attn bias,
  w1(x) · silu(w2(x))), f16 and q8_0 agree with f32; its tokenizer on the exported vocabulary
  gives tiktoken's ids.
- hf2onnx / hf2st refuse the architecture in one line; validate checks the file against the
  checkpoint with the numpy forward and llama.cpp.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

import bitconv
import fixtures_qwen1
from bitconv.errors import CheckpointError, TokenizerError, UnsupportedArchitecture

RMS_KEY = "qwen.attention.layer_norm_rms_epsilon"
TEXTS = [
    "Hello world, this is a test of the tokenizer. It's 2024; we've 3333 cats!",
    "我想在apple工作1314151天～ 你好，世界！通义千问",
    "def square(x):\n    return x ** 2  # comment\n\n\tprint('ok')\n",
    "🚀 (normal) 😶‍🌫️ (multiple emojis) ✅ 🦙🦙 нещо на Български",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|><|endoftext|>",
]


@pytest.fixture(scope="session")
def qwen1_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixtures_qwen1.make_qwen1_checkpoint(tmp_path_factory.mktemp("qwen1") / "Qwen-tiny", ff=256)


class _Lazy(dict):
    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, key: str) -> Path:
        self[key] = value = self.make(key)
        return value


@pytest.fixture(scope="session")
def ours(qwen1_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """quant → bitconv's GGUF of the fixture, converted on first use."""
    root = tmp_path_factory.mktemp("qwen1-ours")

    def make(quant: str) -> Path:
        out = root / f"ours-{quant}.gguf"
        bitconv.convert(qwen1_ckpt, "gguf", quant, out, manifest=False)
        return out

    return _Lazy(make)


@pytest.fixture(scope="session")
def reference(qwen1_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """outtype → llama.cpp's convert_hf_to_gguf.py output for the fixture (all three in one run)."""
    from llamacpp_oracle import ReferenceUnavailable, skip_or_fail

    if importlib.util.find_spec("tiktoken") is None:  # the fixture's tokenizer code needs it
        skip_or_fail("llama.cpp's converter reads the Qwen (1) fixture's vocabulary through tiktoken")
    root = tmp_path_factory.mktemp("qwen1-ref")
    try:
        return fixtures_qwen1.run_reference_converter(
            qwen1_ckpt, {t: root / f"ref-{t}.gguf" for t in ("f16", "bf16", "q8_0")})
    except ReferenceUnavailable as e:
        skip_or_fail(str(e))
        raise


# --- llama.cpp's converter and quantizer ---------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_identical_to_llamacpp_converter(outtype: str, ours, reference) -> None:
    from llamacpp_oracle import compare_gguf, format_diffs, metadata_diff

    diffs = compare_gguf(ours[outtype], reference[outtype])
    assert diffs == [f"{RMS_KEY}: extra in ours (9.999999974752427e-07), absent in ref"], format_diffs(diffs)
    meta = metadata_diff(ours[outtype], reference[outtype])  # general.* too, and the key order
    assert meta == {"only_ours": {RMS_KEY: pytest.approx(1e-6)}, "only_ref": {}, "different": {},
                    "order_differs": False}


@pytest.mark.slow
def test_llama_cpp_refuses_the_converters_file(reference) -> None:
    """Why bitconv adds the key: llama.cpp's qwen loader requires it (its own quantizer too)."""
    from runtimes import _llama

    with pytest.raises(ValueError, match="Failed to load model"):
        _llama(reference["f16"])


@pytest.mark.slow
def test_q4_k_m_identical_to_llama_quantize(ours, tmp_path: Path) -> None:
    from quant.test_mixes import llama_quantize

    ref = tmp_path / "llama-quantize-q4_k_m.gguf"
    llama_quantize(ours["bf16"], ref, "q4_k_m")
    assert ours["q4_k_m"].read_bytes() == ref.read_bytes()
    types = {t.name: t.type_name for t in bitconv.inspect(ours["q4_k_m"]).tensors}
    # ffn_down (K = 256) takes real k-quant blocks, q6_k in the layer use_more_bits picks; K = 64
    # rows fall back (q4_k → q5_0, q6_k → q8_0); attn_qkv follows the attn_v rule
    assert types["blk.0.ffn_down.weight"] == "Q4_K" and types["blk.1.ffn_down.weight"] == "Q6_K"
    assert types["blk.0.attn_qkv.weight"] == "Q5_0" and types["blk.1.attn_qkv.weight"] == "Q8_0"
    assert types["output.weight"] == "Q8_0" and types["blk.0.attn_qkv.bias"] == "F32"


# --- llama.cpp runs the files --------------------------------------------------------------------

def qwen1_logits(ckpt: Path, ids: list[int]) -> np.ndarray:
    """Last-position logits of Qwen (1) as its modeling code computes them (short prompts: no
    dynamic NTK, no logn scaling), in float64 from the checkpoint's tensors."""
    from safetensors.torch import load_file

    cfg = json.loads((ckpt / "config.json").read_text())
    w = {k: v.double().numpy() for k, v in load_file(str(ckpt / "model.safetensors")).items()}
    hidden, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_epsilon"]
    d, t = hidden // heads, len(ids)

    def rms(x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g

    inv = 1.0 / cfg["rotary_emb_base"] ** (np.arange(0, d, 2) / d)
    ang = np.concatenate([np.outer(np.arange(t), inv)] * 2, axis=-1)[:, None, :]

    def rope(x):  # x [T, H, D]: x · cos + rotate_half(x) · sin
        return x * np.cos(ang) + np.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1) * np.sin(ang)

    h = w["transformer.wte.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        qkv = rms(h, w[p + "ln_1.weight"]) @ w[p + "attn.c_attn.weight"].T + w[p + "attn.c_attn.bias"]
        q, k, v = (x.reshape(t, heads, d) for x in np.split(qkv, 3, axis=-1))
        s = np.einsum("thd,shd->hts", rope(q), rope(k)) / np.sqrt(d)
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        h = h + np.einsum("hts,shd->thd", a / a.sum(-1, keepdims=True), v).reshape(t, hidden) @ w[p + "attn.c_proj.weight"].T
        x = rms(h, w[p + "ln_2.weight"])
        a1, a2 = x @ w[p + "mlp.w1.weight"].T, x @ w[p + "mlp.w2.weight"].T
        h = h + (a1 * a2 / (1 + np.exp(-a2))) @ w[p + "mlp.c_proj.weight"].T
    return rms(h[-1], w["transformer.ln_f.weight"]) @ w["lm_head.weight"].T


@pytest.mark.slow
def test_logits_in_llama_cpp(qwen1_ckpt: Path, ours) -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("tiktoken")
    from runtimes import cos, llama_last_logits

    ids = fixtures_qwen1.tiktoken_encoding().encode(
        "<|im_start|>user\nHello, 世界! def f(x): return 42<|im_end|>", allowed_special="all")
    f32 = llama_last_logits(ours["f32"], ids)
    want = qwen1_logits(qwen1_ckpt, ids)
    c = cos(f32, want)
    assert c >= 0.99999 and np.argmax(f32) == np.argmax(want), f"f32 vs Qwen-1's forward: cos {c:.7f}"
    for quant, floor in (("f16", 0.9999), ("q8_0", 0.999)):
        got = llama_last_logits(ours[quant], ids)
        c = cos(got, f32)
        assert c >= floor, f"{quant} vs f32 in llama.cpp: cos {c:.6f} < {floor}"
        assert np.argmax(got) == np.argmax(f32), f"{quant}: argmax {np.argmax(got)} vs f32 {np.argmax(f32)}"


@pytest.mark.slow
def test_llama_cpp_tokenizer_matches_tiktoken(ours) -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("tiktoken")
    from runtimes import llama_tokenize

    enc = fixtures_qwen1.tiktoken_encoding()
    want = [enc.encode(t, allowed_special="all") for t in TEXTS]
    assert llama_tokenize(ours["f16"], TEXTS) == want
    assert 151644 in want[-1] and 151643 in want[-1]  # the special tokens are single ids


# --- the vocabulary, without llama.cpp -----------------------------------------------------------

def test_vocabulary(qwen1_ckpt: Path) -> None:
    from bitconv.convert.tokenizer import export_vocab

    v = export_vocab(qwen1_ckpt, 151936, prefer=("tiktoken",))
    assert (v.model, v.pre, len(v.tokens)) == ("gpt2", "qwen2", 151936)
    assert v.tokens[:3] == ["!", '"', "#"] and v.tokens[220] == "Ġ" and v.tokens[151643] == "<|endoftext|>"
    assert v.tokens[151850] == "<|extra_204|>" and v.tokens[151851] == "[PAD151851]"
    assert v.token_types[0] == 1 and v.token_types[151644] == 3 and v.token_types[151935] == 5
    assert len(v.special.merges) == 151643 - 256 and v.special.merges[:3] == ["Ġ Ġ", "ĠĠ ĠĠ", "i n"]
    assert v.special.special_token_ids == {"bos": 151643, "eos": 151643, "unk": 151643}


# --- what bitconv does not write for Qwen (1), and bad checkpoints -------------------------------

@pytest.mark.parametrize("to", ["onnx", "safetensors"])
def test_onnx_and_safetensors_refused_in_one_line(qwen1_ckpt: Path, tmp_path: Path, to: str) -> None:
    with pytest.raises(UnsupportedArchitecture) as e:
        bitconv.convert(qwen1_ckpt, to, None, tmp_path / "out", manifest=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("QWenLMHeadModel: ") and "GGUF (hf2gguf) only" in msg, msg
    assert not (tmp_path / "out").exists()


def test_cli_refusal(qwen1_ckpt: Path, tmp_path: Path) -> None:
    from cli_helpers import json_result, run_cli

    proc = run_cli("hf2onnx", qwen1_ckpt, "-o", tmp_path / "o", "--json")
    assert proc.returncode == 2
    assert json_result(proc)["error"] == {
        "type": "UnsupportedArchitecture", "exit_code": 2,
        "message": "QWenLMHeadModel: bitconv converts this architecture to GGUF (hf2gguf) only, not ONNX (hf2onnx)"}


def test_dry_run_plan(qwen1_ckpt: Path, tmp_path: Path) -> None:
    res = bitconv.convert(qwen1_ckpt, "gguf", "q8_0", tmp_path / "x.gguf", dry_run=True)
    types = {t.name: (t.type, tuple(t.shape)) for t in res.tensors}
    assert types["blk.0.attn_qkv.weight"] == ("q8_0", (192, 64))
    assert types["blk.0.ffn_gate.weight"] == ("q8_0", (256, 64))  # mlp.w2: the gate
    assert types["blk.1.attn_qkv.bias"] == ("f32", (192,)) and res.architecture == "QWenLMHeadModel"


@pytest.mark.parametrize(("change", "message"), [
    ({"intermediate_size": 511}, "intermediate_size 511 is odd"),
    ({"kv_channels": 8}, "kv_channels 8 × 4 heads ≠ hidden_size 64"),
    ({"intermediate_size": 1024}, r"mlp\.\w+\.weight: shape \(\d+, \d+\) disagrees with config\.json"),
])
def test_bad_config_refused(qwen1_ckpt: Path, tmp_path: Path, change: dict, message: str) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in qwen1_ckpt.iterdir():
        if f.name != "config.json":
            os.link(f, bad / f.name)
    (bad / "config.json").write_text(json.dumps({**json.loads((qwen1_ckpt / "config.json").read_text()), **change}))
    with pytest.raises(CheckpointError, match=message):
        bitconv.convert(bad, "gguf", "f16", tmp_path / "x.gguf", dry_run=True)


# --- validate --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_validate_against_the_checkpoint_and_in_llama_cpp(qwen1_ckpt: Path, ours) -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("tiktoken")
    report = bitconv.validate(ours["q8_0"], qwen1_ckpt, runtime="llama.cpp")
    assert report.passed, report.verdict
    assert report.logits is not None and report.logits.reference == "numpy forward of the HF weights"
    assert report.logits.cos >= 0.999 and len(report.layers) == 2
    rc = report.runtime
    assert rc is not None and rc.ok and rc.tokens_match and rc.cos >= 0.999, rc
    assert all(t.ok for t in report.tensors) and len(report.tensors) == 19


# (last: its small rank files replace the fixture's in bitconv's one-file vocabulary cache)
def test_vocabulary_refusals(tmp_path: Path) -> None:
    import base64

    from bitconv.convert.tokenizer import build_tiktoken_vocab

    def write(lines: list[str]) -> Path:
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        d.mkdir()
        (d / "qwen.tiktoken").write_text("\n".join(lines) + "\n")
        return d

    byte_lines = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    ab = base64.b64encode(b"ab").decode()
    with pytest.raises(TokenizerError, match="line 257 is not"):
        build_tiktoken_vocab(write(byte_lines + ["not-base64! 256"]), 151936)
    with pytest.raises(TokenizerError, match="vocab_size is 1000"):
        build_tiktoken_vocab(write(byte_lines + [f"{ab} 256"]), 1000)
    abc = base64.b64encode(b"abc").decode()  # no "ab" / "bc" below it: not the merge of two tokens
    with pytest.raises(TokenizerError, match="rank 256 .* not the merge of two"):
        build_tiktoken_vocab(write(byte_lines + [f"{abc} 256"]), 151936)
    v = build_tiktoken_vocab(write(byte_lines + [f"{ab} 256", f"{abc} 257"]), 151936)
    assert v.special.merges == ["a b", "ab c"] and v.tokens[256:259] == ["ab", "abc", "[PAD258]"]


def test_mutated_rank_files_fail_cleanly(tmp_path: Path) -> None:
    """Byte-level mutations of a small rank file: a vocabulary or a TokenizerError, nothing else."""
    import base64
    import random

    from bitconv.convert.tokenizer import build_tiktoken_vocab

    lines = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    lines += [f"{base64.b64encode(t).decode()} {256 + i}" for i, t in enumerate((b"ab", b"abc", b" a", b" ab"))]
    seed = ("\n".join(lines) + "\n").encode()
    rng = random.Random(0)
    d = tmp_path / "ck"
    d.mkdir()
    outcomes = set()
    for _ in range(150):
        data = bytearray(seed)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            op = rng.randrange(3)
            if op == 0:
                data[at] = rng.randrange(256)
            elif op == 1:
                del data[at:at + rng.randint(1, 40)]
            else:
                data[at:at] = rng.randbytes(rng.randint(1, 8))
        (d / "qwen.tiktoken").write_bytes(bytes(data))
        try:
            build_tiktoken_vocab(d, 151936)
            outcomes.add("ok")
        except TokenizerError:
            outcomes.add("refused")
    assert outcomes == {"ok", "refused"}

