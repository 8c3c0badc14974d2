"""Qwen3-Next and Qwen3.5 (hybrid gated-DeltaNet / gated-attention decoders) to GGUF.

Judges: llama.cpp's own convert_hf_to_gguf.py (the llama-cpp-python 0.3.36 sdist) for the bytes,
llama-quantize (llama_model_quantize) for a k-quant mix, and llama.cpp's runtime against
transformers float32 for the logits. Tiny checkpoints come from transformers' own classes
(tests/fixtures_hybrid.py). Each converter run costs ~6 s, so each covers one architecture and
one output type: Qwen3.5 dense f16 and Qwen3.5-MoE q8_0 with multi-token-prediction tensors (the
converter's default run), Qwen3-Next bf16 as transformers saves it (no mtp.*: the converter needs
--no-mtp there, and bitconv writes that file by default).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import bitconv
import bitconv.quant.registry
import fixtures
import fixtures_hybrid
from bitconv.errors import UnsupportedArchitecture

TOKENS = [9707, 1879, 11, 419, 374, 264, 1273, 315, 279, 15099, 13, 220, 16, 17, 18, 151644, 872, 198]

#: (arch, multi-token prediction, outtype, converter flags). Qwen3.5 dense is the k-quant model too:
#: hidden 256 (k-quant blocks), tied embeddings (as the small Qwen3.5 models), one vocabulary matrix
CASES = [("qwen35", True, "f16", ()), ("qwen35moe", True, "q8_0", ()), ("qwen3next", False, "bf16", ("--no-mtp",))]
SHAPE = {"qwen35": {"hidden": 256, "tie": True}}
#: llama.cpp's logits vs transformers float32 (last position)
MIN_COS = {"f16": 0.999, "bf16": 0.999, "q8_0": 0.995}


@pytest.fixture(scope="session")
def hybrid(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """hybrid(arch, mtp=False, conditional=False) → a cached checkpoint directory (shape: SHAPE)."""
    cache: dict[tuple, Path] = {}

    def make(arch: str, mtp: bool = False, conditional: bool = False) -> Path:
        key = (arch, mtp, conditional)
        if key not in cache:
            shape = SHAPE.get(arch, {})
            kw = {"hidden": shape.get("hidden", 64)}
            if shape.get("tie"):
                kw["tie_word_embeddings"] = True
            name = f"{arch}{'-mtp' if mtp else ''}{'-cond' if conditional else ''}"
            cache[key] = fixtures_hybrid.make_hybrid_checkpoint(tmp_path_factory.mktemp("hybrid") / name, arch,
                                                                mtp=mtp, conditional=conditional, **kw)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def converted(hybrid, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """converted(arch, mtp, outtype, by="bitconv" | "llama.cpp", flags=(), conditional=False) → a cached
    GGUF file."""
    from llamacpp_oracle import ReferenceUnavailable, run_reference_converter, skip_or_fail

    root = tmp_path_factory.mktemp("hybrid-gguf")
    cache: dict[tuple, Path] = {}

    def make(arch: str, mtp: bool, outtype: str, by: str = "bitconv", flags: tuple[str, ...] = (),
             conditional: bool = False) -> Path:
        key = (arch, mtp, outtype, by, flags, conditional)
        if key not in cache:
            ckpt = hybrid(arch, mtp, conditional)
            out = root / f"{ckpt.name}-{outtype}-{by}.gguf"
            if by == "bitconv":
                bitconv.convert(ckpt, "gguf", outtype, out, manifest=False)
            else:
                try:
                    run_reference_converter(ckpt, outtype, out, extra_args=flags)
                except ReferenceUnavailable as e:
                    skip_or_fail(str(e))
            cache[key] = out
        return cache[key]

    return make


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "mtp", "outtype", "flags"), CASES, ids=lambda v: str(v))
def test_identical_to_llamacpp_converter(converted, arch: str, mtp: bool, outtype: str, flags: tuple[str, ...]) -> None:
    from llamacpp_oracle import compare_gguf, file_diff, format_diffs, read_gguf

    ours = converted(arch, mtp, outtype)
    ref = converted(arch, mtp, outtype, "llama.cpp", flags)
    diffs = compare_gguf(ours, ref)
    assert not diffs, format_diffs(diffs)
    assert file_diff(ours, ref) is None  # general.* too: the whole file
    f = read_gguf(ours)
    names = {t.name for t in f.tensors}
    assert {"blk.0.ssm_a", "blk.0.attn_qkv.weight", "blk.3.attn_q.weight"} <= names
    if mtp:
        assert f.kv[f"{f.kv['general.architecture'].value()}.nextn_predict_layers"].value() == 1
        assert {"blk.4.nextn.eh_proj.weight", "blk.4.nextn.enorm.weight", "blk.4.attn_q.weight"} <= names


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "mtp", "outtype", "flags"), CASES, ids=lambda v: str(v))
def test_llama_cpp_runs_it(hybrid, converted, arch: str, mtp: bool, outtype: str, flags: tuple[str, ...]) -> None:
    """llama.cpp 0.3.36 loads the file (multi-token-prediction blocks are loaded but not run) and its
    last-position logits are transformers' float32 ones."""
    pytest.importorskip("llama_cpp")
    from runtimes import cos, llama_last_logits

    got = llama_last_logits(converted(arch, mtp, outtype), TOKENS)
    want = fixtures.hf_logits(hybrid(arch, mtp), TOKENS)
    c = cos(got, want)
    assert c >= MIN_COS[outtype], f"{arch} {outtype}: cos {c:.6f}"
    assert int(np.argmax(got)) == int(np.argmax(want))


@pytest.mark.slow
def test_multimodal_checkpoint_gives_the_language_model(converted) -> None:
    """Qwen3_5MoeForConditionalGeneration (model.language_model.*, text_config, mtp.*): the same
    file as the causal-LM checkpoint of the same weights."""
    from llamacpp_oracle import compare_gguf, format_diffs

    diffs = compare_gguf(converted("qwen35moe", True, "q8_0", conditional=True), converted("qwen35moe", True, "q8_0"))
    assert not diffs, format_diffs(diffs)


@pytest.mark.slow
def test_q4_k_m_identical_to_llama_quantize(converted, tmp_path: Path) -> None:
    """q4_k_m in one pass = llama-quantize of the bf16 GGUF, byte for byte: the layer count of its
    ffn_down rule includes the multi-token-prediction block (5 blocks here, not 4). No logits
    threshold: this random model loses cos 0.2 to 5-bit rounding in transformers itself (fake-quantized
    q5_k weights: cos 0.78), so a threshold would measure the fixture; llama.cpp must run it."""
    import ctypes

    llama_cpp = pytest.importorskip("llama_cpp")
    from runtimes import llama_last_logits

    ref = tmp_path / "ref.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = bitconv.quant.registry.get_quantizer("q4_k_m").llama_ftype, 2
    src = converted("qwen35", True, "bf16")
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(ref).encode(), ctypes.byref(params)) == 0
    ours = converted("qwen35", True, "q4_k_m")
    assert ours.read_bytes() == ref.read_bytes()
    types = {t.type_name for t in bitconv.inspect(ours).tensors}
    assert {"Q4_K", "Q6_K"} <= types, types
    assert np.isfinite(llama_last_logits(ours, TOKENS)).all()


@pytest.mark.slow
def test_validate_with_llama_cpp_runtime(hybrid, converted) -> None:
    """validate: structure and tensors against the checkpoint; the numpy forward does not run the
    architecture and says so; --runtime llama.cpp gives the logits verdict."""
    pytest.importorskip("llama_cpp")
    report = bitconv.validate(converted("qwen35", True, "f16"), hybrid("qwen35", True), runtime="llama.cpp")
    assert report.passed, report.verdict
    assert all(t.ok and t.bytes_identical for t in report.tensors)
    forward = next(c for c in report.checks if c.name == "forward pass")
    assert "does not run qwen35" in forward.message
    assert report.runtime is not None and report.runtime.ok and report.runtime.cos >= 0.999


# --- formats without a layout for these architectures (no tensor data read) ------------------------

def _header_only_checkpoint(path: Path, arch: str, hf_class: str) -> Path:
    """config.json and one tiny tensor: enough for the format checks, which run before any data."""
    import struct

    path.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": [hf_class], **fixtures_hybrid.hybrid_config(arch)}
    (path / "config.json").write_text(json.dumps(cfg))
    header = json.dumps({"model.norm.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    return path


@pytest.mark.parametrize(("arch", "hf_class"), [("qwen35", "Qwen3_5ForCausalLM"),
                                                ("qwen35moe", "Qwen3_5MoeForConditionalGeneration"),
                                                ("qwen3next", "Qwen3NextForCausalLM")])
def test_onnx_and_safetensors_refused(tmp_path: Path, arch: str, hf_class: str) -> None:
    ckpt = _header_only_checkpoint(tmp_path / arch, arch, hf_class)
    with pytest.raises(UnsupportedArchitecture, match=rf"^{hf_class}: bitconv converts this architecture to GGUF \(hf2gguf\) only, not ONNX"):
        bitconv.convert(ckpt, "onnx", "int4", tmp_path / "o", manifest=False)
    for fmt in ("compressed-tensors", "bnb-nf4", "rounded"):
        with pytest.raises(UnsupportedArchitecture, match=rf"^{hf_class}: bitconv converts this architecture to GGUF \(hf2gguf\) only, not safetensors"):
            bitconv.convert(ckpt, "safetensors", format=fmt, out=tmp_path / "s", manifest=False)
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()


def test_onnx_refusal_is_one_cli_line(tmp_path: Path) -> None:
    from cli_helpers import error_line, run_cli

    ckpt = _header_only_checkpoint(tmp_path / "q", "qwen35", "Qwen3_5ForCausalLM")
    proc = run_cli("hf2onnx", ckpt, "-o", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert error_line(proc) == ("error: Qwen3_5ForCausalLM: bitconv converts this architecture to GGUF (hf2gguf) only, "
                                "not ONNX (hf2onnx)")


def test_qwen35_pre_tokenizer_is_named() -> None:
    """Qwen3.5's split regex (letters with their combining marks) is llama.cpp's "qwen35"."""
    from bitconv.convert.tokenizer import detect_pre_tokenizer

    regex = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    pre = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
    assert detect_pre_tokenizer({"pre_tokenizer": pre}) == "qwen35"


def test_value_heads_tiled() -> None:
    """[k0: v0 v1 | k1: v0 v1] → [v0 of k0, v0 of k1, v1 of k0, v1 of k1], rows or columns."""
    from bitconv.convert.arch.qwen3_next import tile_heads

    rows = np.arange(2 * 2 * 3).reshape(12, 1)  # 2 key heads, 2 value heads each, head_dim 3
    want = [0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11]
    assert tile_heads(rows, 0, 2, 2, 3)[:, 0].tolist() == want
    assert tile_heads(rows.T, 1, 2, 2, 3)[0].tolist() == want


def test_missing_linear_attention_tensor_is_named() -> None:
    from bitconv.convert.arch.qwen3_next import Qwen35Mapping
    from bitconv.errors import CheckpointError

    cfg = fixtures_hybrid.hybrid_config("qwen35", layers=2, layer_types=["linear_attention", "full_attention"])
    m = Qwen35Mapping({"architectures": ["Qwen3_5ForCausalLM"], **cfg})
    assert [m.is_recurrent(i) for i in range(2)] == [True, False]
    names = {"token_embd.weight", "output_norm.weight", "output.weight"}
    for i, per_layer in enumerate((("attn_qkv.weight", "attn_gate.weight", "ssm_conv1d.weight", "ssm_dt.bias",
                                    "ssm_a", "ssm_beta.weight", "ssm_alpha.weight", "ssm_norm.weight",
                                    "ssm_out.weight"),
                                   ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                                    "attn_q_norm.weight", "attn_k_norm.weight"))):
        names |= {f"blk.{i}.{n}" for n in per_layer + ("attn_norm.weight", "post_attention_norm.weight",
                                                        "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")}
    m.check_complete(names)
    with pytest.raises(CheckpointError, match=r"^linear-attention block 0: no tensor for blk\.0\.ssm_a in"):
        m.check_complete(names - {"blk.0.ssm_a"})


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "mtp", "outtype", "flags"), CASES[::2], ids=lambda v: str(v))
def test_llama_cpp_tokenizes_as_transformers(hybrid, converted, arch: str, mtp: bool, outtype: str,
                                             flags: tuple[str, ...]) -> None:
    """llama.cpp's tokenizer on the exported vocabulary gives the checkpoint tokenizer's ids on the
    usual mixed-script strings."""
    pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    from runtimes import llama_tokenize
    from test_interop_llamacpp import TEXTS

    hf = AutoTokenizer.from_pretrained(hybrid(arch, mtp))
    ours = llama_tokenize(converted(arch, mtp, outtype), TEXTS)
    for text, ids in zip(TEXTS, ours):
        assert ids == hf(text, add_special_tokens=False).input_ids, text
