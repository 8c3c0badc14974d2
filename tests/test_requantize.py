"""`bitconv quantize`: a GGUF requantized in one streaming pass.

The judge is llama.cpp's own quantizer, `llama_model_quantize` (ctypes, llama-cpp-python): for the
same input file and options both must write the very same file, byte for byte — tensor types,
order, shapes, data and metadata. Inputs are llama.cpp-compatible f16 / bf16 / q8_0 GGUFs that
hf2gguf writes (byte-identical to llama.cpp's converter, tests/test_byte_identity.py)."""
from __future__ import annotations

import ctypes
from pathlib import Path

import gguf
import pytest

import bitconv
from bitconv.convert.gguf_source import GGUFSource
from bitconv.quant.registry import get_quantizer
from bitconv.requantize import LLAMA_QUANTIZE_ALIASES, KVOverride, quantize
from cli_helpers import assert_nothing_written, error_line, run_cli

T = gguf.GGMLQuantizationType
LEGACY_AND_K = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m",
                "q5_k_s", "q5_k_m", "q6_k", "f16", "bf16", "f32"]


def llama_quantize(src: Path, dst: Path, quant: str, **params: object) -> None:
    """llama.cpp's llama_model_quantize(src → dst) for bitconv's type name and llama-quantize's options."""
    llama_cpp = pytest.importorskip("llama_cpp")
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = get_quantizer(LLAMA_QUANTIZE_ALIASES.get(quant, quant)).file_type
    p.nthread = 2
    for key, value in params.items():
        setattr(p, key, int(getattr(T, str(value).upper())) if key.endswith("_type") else value)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    assert rc == 0, f"llama_model_quantize failed for {quant} {params}"


def assert_same_file(ours: Path, ref: Path) -> None:
    if ours.read_bytes() == ref.read_bytes():
        return
    import llamacpp_oracle

    pytest.fail(f"{ours.name} differs from llama_model_quantize's: {llamacpp_oracle.file_diff(ours, ref)}")


@pytest.fixture(scope="module")
def sources(checkpoint_factory, tmp_path_factory) -> dict[str, Path]:
    """GGUF inputs: name → file (written once per module)."""
    root = tmp_path_factory.mktemp("requantize-src")
    # 256-wide rows: every k-quant path; 5 layers: use_more_bits picks some layers, not others
    qwen2 = checkpoint_factory("qwen2", "bf16", 1, "hub", hidden=256, layers=5, intermediate_size=512)
    # hidden 64: every row-length fallback, MoE layer parsing
    moe = checkpoint_factory("qwen2moe", "bf16", 1, "hub", layers=3)
    tied = checkpoint_factory("qwen3", "bf16", 1, "hub", hidden=256, layers=1, tie_word_embeddings=True)
    out = {}
    for name, ckpt, quant in (("qwen2-f16", qwen2, "f16"), ("qwen2-q8_0", qwen2, "q8_0"),
                              ("moe-bf16", moe, "bf16"), ("tied-f16", tied, "f16")):
        out[name] = root / f"{name}.gguf"
        bitconv.convert(ckpt, "gguf", quant, out[name], manifest=False)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("quant", LEGACY_AND_K)
def test_every_type_identical_to_llama_quantize(sources, quant: str, tmp_path: Path) -> None:
    src = sources["tied-f16"]  # one embedding table to encode: the layer rules are the option cases' job
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    quantize(src, ours, quant, 2, manifest=False)
    llama_quantize(src, ref, quant)
    assert_same_file(ours, ref)


CASES = {
    "pure": ("qwen2-f16", "q5_k_m", {"pure": True}, {"pure": True}),
    "tensor-types": ("qwen2-f16", "q4_0", {"output_tensor_type": "q8_0", "token_embedding_type": "q8_0"},
                     {"output_tensor_type": "q8_0", "token_embedding_type": "q8_0"}),
    "leave-output": ("qwen2-f16", "q4_k_m", {"leave_output_tensor": True}, {"quantize_output_tensor": False}),
    "tied-output-type": ("tied-f16", "q4_k_m", {"output_tensor_type": "q5_0"}, {"output_tensor_type": "q5_0"}),
    "moe-fallbacks": ("moe-bf16", "q3_k_m", {}, {}),
    "moe-q2_k": ("moe-bf16", "q2_k", {}, {}),
    "requantize-q8_0": ("qwen2-q8_0", "q4_k_m", {"allow_requantize": True}, {"allow_requantize": True}),
    "llama-alias-q4_k": ("qwen2-f16", "q4_k", {}, {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_options_identical_to_llama_quantize(sources, case: str, tmp_path: Path) -> None:
    name, quant, ours_kw, ref_kw = CASES[case]
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    result = quantize(sources[name], ours, quant, 2, manifest=False, **ours_kw)
    llama_quantize(sources[name], ref, quant, **ref_kw)
    assert_same_file(ours, ref)
    if case == "moe-fallbacks":  # the fallbacks really ran
        assert {"q4_0", "q5_0", "q5_1", "q8_0"} & set(result.type_counts), result.type_counts
    if case == "leave-output":
        assert next(t for t in result.tensors if t.name == "output.weight").note == "copied"


@pytest.mark.slow
def test_keep_split_identical_to_llama_quantize(checkpoint_factory, tmp_path: Path) -> None:
    """A split input (hf2gguf --split-max-tensors) requantized with --keep-split: llama.cpp's files,
    split by split; plain output of the same set: llama.cpp's single file."""
    ckpt = checkpoint_factory("qwen3", "bf16", 1, "hub", hidden=256, layers=1, tie_word_embeddings=True)
    src = tmp_path / "in" / "model.gguf"
    src.parent.mkdir()
    bitconv.convert(ckpt, "gguf", "f16", src, manifest=False, split_max_tensors=5)
    first = src.with_name("model-00001-of-00003.gguf")
    ours, ref = tmp_path / "ours" / "q.gguf", tmp_path / "ref" / "q.gguf"
    ours.parent.mkdir(), ref.parent.mkdir()
    result = quantize(first, ours, "q4_k_m", manifest=False, keep_split=True)
    llama_quantize(first, ref.with_suffix(""), "q4_k_m", keep_split=True)  # llama.cpp adds -0000i-of-0000n.gguf
    names = sorted(p.name for p in ref.parent.iterdir())
    assert names == ["q-00001-of-00003.gguf", "q-00002-of-00003.gguf", "q-00003-of-00003.gguf"], names
    assert [Path(o["path"]).name for o in result.outputs] == names
    for name in names:
        assert_same_file(ours.parent / name, ref.parent / name)
    single, single_ref = tmp_path / "single.gguf", tmp_path / "single-ref.gguf"
    quantize(first, single, "q4_k_m", manifest=False)
    llama_quantize(first, single_ref, "q4_k_m")
    assert_same_file(single, single_ref)


def test_requantize_refused_without_the_option(sources, tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    proc = run_cli("quantize", sources["qwen2-q8_0"], out, "q4_k_m")
    assert proc.returncode == 2
    assert "requantizing from it is disabled" in error_line(proc) and "--allow-requantize" in error_line(proc)
    assert_nothing_written(tmp_path, out)


def test_override_kv_written_with_llama_quantize_types(sources, tmp_path: Path) -> None:
    """llama_model_quantize's ctypes binding cannot pass overrides: the written metadata is the judge
    (ints as uint32 of |value|, set last), and llama.cpp still loads the file."""
    out = tmp_path / "out.gguf"
    overrides = ["qwen2.context_length=int:-4096", "general.name=str:renamed", "tokenizer.ggml.add_bos_token=bool:true",
                 "qwen2.rope.freq_base=float:20000"]
    quantize(sources["qwen2-f16"], out, "q8_0", manifest=False, override_kv=overrides)
    src = GGUFSource.open(out)
    assert list(src.metadata)[-4:] == [o.split("=")[0] for o in overrides]
    assert src.metadata["qwen2.context_length"] == 4096
    assert src.value_types["qwen2.context_length"][0] == int(gguf.GGUFValueType.UINT32)
    assert src.metadata["general.name"] == "renamed" and src.metadata["tokenizer.ggml.add_bos_token"] is True
    assert src.metadata["qwen2.rope.freq_base"] == 20000.0
    assert src.value_types["qwen2.rope.freq_base"][0] == int(gguf.GGUFValueType.FLOAT32)
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(out), n_ctx=64, verbose=False)
    assert llm.metadata["general.name"] == "renamed" and llm.metadata["qwen2.context_length"] == "4096"
    with pytest.raises(bitconv.BitconvError, match="KEY=TYPE:VALUE"):
        KVOverride.parse("general.name=string:x")


def test_hf2gguf_takes_a_gguf_source(sources, tmp_path: Path) -> None:
    """hf2gguf given a GGUF requantizes it: the same file as `bitconv quantize`."""
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    proc = run_cli("hf2gguf", sources["tied-f16"], "-q", "q8_0", "-o", a, "--no-manifest")
    assert proc.returncode == 0, proc.stderr
    quantize(sources["tied-f16"], b, "q8_0", manifest=False)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("problem", ["truncated", "unknown-type", "imatrix-type", "same-file", "non-ternary"])
def test_bad_input_is_one_line(sources, problem: str, tmp_path: Path) -> None:
    src, out, quant = sources["tied-f16"], tmp_path / "out.gguf", "q4_k_m"
    if problem == "truncated":
        data = src.read_bytes()
        src = tmp_path / "cut.gguf"
        src.write_bytes(data[:len(data) // 2])
    elif problem == "unknown-type":
        quant = "q9_9"
    elif problem == "imatrix-type":
        quant = "iq2_xs"
    elif problem == "same-file":
        out = tmp_path / "same.gguf"
        out.write_bytes(src.read_bytes())
        src = out
    elif problem == "non-ternary":
        quant = "i2_s"
    before = out.read_bytes() if out.exists() else None
    proc = run_cli("quantize", src, out, quant, "--force")
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc)
    assert {"truncated": "runs past the end", "unknown-type": "unknown quant type",
            "imatrix-type": "unknown quant type", "same-file": "overwrite the input",
            "non-ternary": "not a ternary-trained model"}[problem] in line, line
    if before is None:
        assert_nothing_written(tmp_path, out)
    else:
        assert out.read_bytes() == before


def test_copied_tensors_stream_in_slabs(sources, tmp_path: Path, monkeypatch) -> None:
    """Tensors copied as they are (the f32 norms, the f16 embedding kept by --token-embedding-type
    f16) are read and written a slab of bytes at a time: with 4 KiB slabs the file is still
    llama_model_quantize's."""
    from bitconv.formats import gguf_writer

    monkeypatch.setattr(gguf_writer, "SLAB_BYTES", 4096)
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    result = quantize(sources["tied-f16"], ours, "q8_0", 1, manifest=False, token_embedding_type="f16")
    llama_quantize(sources["tied-f16"], ref, "q8_0", token_embedding_type="f16")
    assert next(t for t in result.tensors if t.name == "token_embd.weight").note == "copied"
    assert_same_file(ours, ref)
