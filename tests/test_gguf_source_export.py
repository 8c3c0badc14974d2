"""A GGUF as the source of the ONNX and safetensors exporters (`bitconv hf2onnx ggml-model-i2_s.gguf
-q int2`): the checkpoint view rebuilt from the GGUF (config, HF tensor names, tokenizer files) and
what the exports hold against the exports of the checkpoint the GGUF was converted from.

Measured on the tiny fixtures: Qwen2 / Qwen3 / Qwen2-MoE / Qwen3-MoE f16 GGUF → ONNX logits equal
the checkpoint's export to ~2e-6 (the f16 GGUF rounds the few bf16 weights below float16's normal
range; the MoE experts are read back per expert from the stacked tensors); a Qwen2 q8_0 GGUF → ONNX f32 cos 0.99989 against the checkpoint's f32 export, where the
checkpoint's own ONNX int8 export (the same 8-bit, 32-wide blocks) measures cos ~0.9998 — the test
holds q8_0 to twice that int8 error. BitNet i2_s → ONNX int2: model.onnx and model.onnx.data are
byte-identical to the checkpoint's int2 export (the GGUF's codes and scale go through unchanged).
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import fixtures_bitnet as fb  # noqa: E402
from cli_helpers import cli_env, error_line, json_result, run_cli  # noqa: E402
from runtimes import cos  # noqa: E402
from test_interop_llamacpp import TEXTS  # noqa: E402
from test_onnx import BITNET_IDS, QWEN_IDS, ort_run, session  # noqa: E402

import bitconv  # noqa: E402
from bitconv import api  # noqa: E402
from bitconv.convert.gguf_checkpoint import open_gguf_checkpoint  # noqa: E402
from bitconv.convert.gguf_source import GGUFSource  # noqa: E402
from bitconv.convert.gguf_tokenizer import write_tokenizer_files  # noqa: E402


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory, checkpoint_factory, bitnet_packed):
    """ggufs(model, quant) → (checkpoint, GGUF converted from it), built once per module."""
    root = tmp_path_factory.mktemp("gguf-src")
    cache: dict[tuple[str, str], tuple[Path, Path]] = {}

    def make(model: str, quant: str) -> tuple[Path, Path]:
        if (model, quant) not in cache:
            src = bitnet_packed if model == "bitnet" else checkpoint_factory(model, "bf16", 1, "hub")
            out = root / ("ggml-model-i2_s.gguf" if (model, quant) == ("bitnet", "i2_s") else f"{model}-{quant}.gguf")
            bitconv.convert(src, "gguf", quant, out, manifest=False)
            cache[model, quant] = (src, out)
        return cache[model, quant]

    return make


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    """onnx_export(source, quant) → an export folder, built once per module."""
    root = tmp_path_factory.mktemp("gguf-onnx")
    cache: dict[tuple[str, str], Path] = {}

    def make(source: Path, quant: str) -> Path:
        if (str(source), quant) not in cache:
            out = root / f"{source.name}-{quant}-{len(cache)}"
            api.convert_onnx(source, quant, out, manifest=False)
            cache[str(source), quant] = out
        return cache[str(source), quant]

    return make


def _logits(folder: Path, ids: list[int]) -> np.ndarray:
    return ort_run(session(folder), ids)[0]


# --------------------------------------------------------------------------- tokenizer

def _encodings(tok, add: bool) -> list[list[int]]:
    return [tok(t, add_special_tokens=add).input_ids for t in TEXTS]


def test_tokenizer_qwen2_matches_transformers_gguf_and_original(ggufs, tmp_path):
    """The rebuilt tokenizer.json, transformers' own tokenizer of the GGUF and the checkpoint's
    tokenizer encode the usual mixed-script strings identically."""
    from transformers import AutoTokenizer

    ckpt, gguf_path = ggufs("qwen2", "f16")
    write_tokenizer_files(GGUFSource.open(gguf_path).metadata, tmp_path)
    ours = AutoTokenizer.from_pretrained(tmp_path)
    theirs = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    original = AutoTokenizer.from_pretrained(ckpt)
    for add in (False, True):
        assert _encodings(ours, add) == _encodings(theirs, add) == _encodings(original, add)
    assert (ours.eos_token, ours.pad_token) == (original.eos_token, original.pad_token) == ("<|endoftext|>",) * 2
    chat = [{"role": "user", "content": "Hi 你好"}]
    assert (ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            == original.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))


def test_tokenizer_llama3_bos_matches_original(ggufs, tmp_path):
    """BitNet's Llama 3 vocabulary (ignore_merges, BOS added): the rebuilt tokenizer equals the
    checkpoint's, with and without special tokens. (transformers cannot open this GGUF: gguf-py has
    no I2_S type, so its GGUF tokenizer is not asked here.)"""
    from transformers import AutoTokenizer

    ckpt, gguf_path = ggufs("bitnet", "i2_s")
    write_tokenizer_files(GGUFSource.open(gguf_path).metadata, tmp_path)
    ours = AutoTokenizer.from_pretrained(tmp_path)
    original = AutoTokenizer.from_pretrained(ckpt)
    for add in (False, True):
        assert _encodings(ours, add) == _encodings(original, add)
    assert _encodings(ours, True)[0][0] == 128000
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["add_bos_token"] is True and cfg["bos_token"] == "<|begin_of_text|>"


# --------------------------------------------------------------------------- ONNX

@pytest.mark.parametrize("model,quant", [("qwen2", "f32"), ("qwen3", "int4"), ("qwen2moe", "f32"), ("qwen3moe", "f16")])
def test_f16_gguf_onnx_equals_checkpoint_export(ggufs, onnx_export, model, quant):
    ckpt, gguf_path = ggufs(model, "f16")
    want = _logits(onnx_export(ckpt, quant), QWEN_IDS)
    got = _logits(onnx_export(gguf_path, quant), QWEN_IDS)
    assert cos(got.ravel(), want.ravel()) >= 0.9999
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_q8_0_gguf_onnx_within_int8_error(ggufs, onnx_export):
    """A q8_0 GGUF is 8-bit blocks of 32: its f32 export is held to twice the error of the
    checkpoint's own ONNX int8 export (8-bit blocks of 32), both against the checkpoint's f32."""
    ckpt, gguf_path = ggufs("qwen2", "q8_0")
    ref = _logits(onnx_export(ckpt, "f32"), QWEN_IDS).ravel()
    int8_err = 1 - cos(_logits(onnx_export(ckpt, "int8"), QWEN_IDS).ravel(), ref)
    got = _logits(onnx_export(gguf_path, "f32"), QWEN_IDS).ravel()
    assert 1 - cos(got, ref) <= 2 * int8_err, (1 - cos(got, ref), int8_err)


def test_i2s_gguf_onnx_int2_is_the_checkpoint_export(ggufs, onnx_export, tmp_path):
    """`bitconv hf2onnx ggml-model-i2_s.gguf -q int2` (default folder <gguf stem>-int2-onnx): the
    same graph and weight bytes, so the same logits, as the int2 export of the checkpoint; the
    manifest names the GGUF; no staging folder is left behind."""
    ckpt, gguf_path = ggufs("bitnet", "i2_s")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = run_cli("hf2onnx", gguf_path, "-q", "int2", "--json", cwd=tmp_path, env=cli_env(TMPDIR=str(tmp)))
    assert proc.returncode == 0, proc.stderr
    res = json_result(proc)["result"]
    folder = tmp_path / "ggml-model-i2_s-int2-onnx"
    assert Path(res["output"]) == folder and res["type_counts"]["int2"] == 14
    want = onnx_export(ckpt, "int2")
    for name in ("model.onnx", "model.onnx.data", "genai_config.json"):
        assert (folder / name).read_bytes() == (want / name).read_bytes(), name
    assert np.array_equal(_logits(folder, BITNET_IDS), _logits(want, BITNET_IDS))
    manifest = json.loads((folder / "bitconv-manifest.json").read_text())
    assert [i["path"] for i in manifest["inputs"]] == ["ggml-model-i2_s.gguf"]
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    assert not list(tmp.iterdir())


# --------------------------------------------------------------------------- safetensors

@pytest.mark.parametrize("lc", ["bitlinear", "autobitlinear"])
def test_i2s_gguf_bitnet_packed_is_the_checkpoint_export(ggufs, tmp_path, lc):
    """hf2st bitnet-packed from the GGUF: the codes and scales of the checkpoint's export (s exactly
    for autobitlinear; bitlinear's 1/s within an ulp: the GGUF stores s only), every other tensor
    with the same values (the GGUF's F16 embedding is the checkpoint's bf16 one rounded to f16)."""
    import torch

    ckpt, gguf_path = ggufs("bitnet", "i2_s")
    a, b = tmp_path / "ckpt", tmp_path / "gguf"
    api.convert_safetensors(ckpt, "bitnet-packed", a, linear_class=lc, manifest=False)
    res = api.convert_safetensors(gguf_path, "bitnet-packed", b, linear_class=lc, manifest=False)
    assert res.n_ternary == 14
    want, got = fb.read_packed(a), fb.read_packed(b)
    assert set(want) == set(got)
    for name, (codes, scale) in want.items():
        assert np.array_equal(got[name][0], codes), name
        tol = 0 if lc == "autobitlinear" else np.spacing(np.float32(scale))
        assert abs(float(got[name][1]) - float(scale)) <= tol, name
    ta, tb = fb.load_safetensors(a), fb.load_safetensors(b)
    assert set(ta) == set(tb)
    for name, t in ta.items():
        if t.is_floating_point() and not name.endswith("_scale"):
            ref = t.to(torch.float16) if tb[name].dtype == torch.float16 else t
            assert torch.equal(tb[name].float(), ref.float()), name
    cfg = json.loads((b / "config.json").read_text())
    assert cfg["quantization_config"]["linear_class"] == lc and cfg["architectures"] == ["BitNetForCausalLM"]


# --------------------------------------------------------------------------- bad input

def _phi3_gguf(path: Path) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "phi3")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _retyped(src: Path, path: Path, tensor: str = "blk.0.ffn_down.weight", type_id: int = 77) -> Path:
    """A copy of `src` whose `tensor` claims a ggml type id no one defines."""
    data = bytearray(src.read_bytes())
    at = data.index(tensor.encode()) + len(tensor)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, type_id)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("case,message", [
    ("truncated-data", "past the end of the file"),
    ("truncated-header", "cannot fit in the file"),
    ("unsupported-arch", "GGUF architecture 'phi3'"),
    ("unknown-type", "tensor type TYPE_77"),
])
@pytest.mark.parametrize("command", ["hf2onnx", "hf2st"])
def test_bad_gguf_one_line_exit_2_nothing_written(ggufs, tmp_path, case, message, command):
    _, good = ggufs("qwen2", "f16")
    src = tmp_path / f"{case}.gguf"
    if case.startswith("truncated"):  # cut inside the tensor data / inside the vocabulary's arrays
        src.write_bytes(good.read_bytes()[: os.path.getsize(good) * 2 // 3 if case == "truncated-data" else 100_000])
    else:
        _phi3_gguf(src) if case == "unsupported-arch" else _retyped(good, src)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "out"
    proc = run_cli(command, src, "-o", out, env=cli_env(TMPDIR=str(tmp)))
    assert proc.returncode == 2, proc.stderr
    assert message in error_line(proc)
    assert not out.exists() and not list(tmp.iterdir())


def test_tl2_gguf_onnx_int2_keeps_codes_and_needs_its_tiling(ggufs, onnx_export, tmp_path):
    """tl2 (codes tiled per bitnet.cpp's kernel_config.ini beside the file): the int2 export holds the
    checkpoint's codes, the scales within an ulp (tl2 takes bitnet.cpp's converter's float32 mean);
    without the .ini the GGUF is refused in one line before anything is written."""
    import onnx
    from onnx import numpy_helper

    ckpt, _ = ggufs("bitnet", "i2_s")
    src = tmp_path / "m-tl2.gguf"
    bitconv.convert(ckpt, "gguf", "tl2", src, manifest=False)
    out = tmp_path / "onnx"
    api.convert_onnx(src, "int2", out, manifest=False)

    def inits(folder: Path) -> dict[str, np.ndarray]:
        model = onnx.load(str(folder / "model.onnx"), load_external_data=True)
        return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    want, got = inits(onnx_export(ckpt, "int2")), inits(out)
    assert want.keys() == got.keys()
    assert sum(n.endswith(".q2") for n in got) == 14
    for name, w in want.items():
        if name.endswith(".scales") and name.startswith("blk."):
            assert np.allclose(got[name], w, rtol=2 ** -23, atol=0), name
        else:
            assert np.array_equal(got[name], w), name
    src.with_name("m-tl2.kernel_config.ini").unlink()
    with pytest.raises(bitconv.errors.CheckpointError, match="no m-tl2.kernel_config.ini beside m-tl2.gguf"):
        api.convert_onnx(src, "int2", tmp_path / "again", manifest=False)
    assert not (tmp_path / "again").exists()


def test_compressed_tensors_from_gguf(ggufs, tmp_path):
    """hf2st compressed-tensors from an f16 GGUF: the checkpoint export's tensors (names, shapes); the
    values follow the GGUF's float16 (weight_scale in float16, as the source dtype)."""
    import torch

    ckpt, gguf_path = ggufs("qwen2", "f16")
    a, b = tmp_path / "ckpt", tmp_path / "gguf"
    api.convert_safetensors(ckpt, "compressed-tensors", a, block_size=32, manifest=False)
    api.convert_safetensors(gguf_path, "compressed-tensors", b, block_size=32, manifest=False)
    ta, tb = fb.load_safetensors(a), fb.load_safetensors(b)
    assert {k: tuple(v.shape) for k, v in ta.items()} == {k: tuple(v.shape) for k, v in tb.items()}
    assert all(tb[k].dtype == torch.float16 for k in tb if k.endswith(".weight_scale"))
    cfg = json.loads((b / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["quantization_config"]["format"] == "pack-quantized"



def _tiny_llama(root: Path, ternary: bool) -> Path:
    """A one-layer LlamaForCausalLM (random f32 weights, the Llama 3 tokenizer); `ternary`: with
    transformers' online bitnet quantization_config, so its linears are ternarized on conversion."""
    import shutil

    from safetensors.numpy import save_file

    h, ff, heads, kv, vocab = 128, 256, 4, 2, 128256
    root.mkdir(parents=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h, "intermediate_size": ff,
           "num_hidden_layers": 1, "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab,
           "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 4096,
           "tie_word_embeddings": True, "bos_token_id": 128000, "eos_token_id": 128001}
    if ternary:
        cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                      "quantization_mode": "online"}
    (root / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    shapes = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,),
              "model.layers.0.input_layernorm.weight": (h,), "model.layers.0.post_attention_layernorm.weight": (h,),
              "model.layers.0.self_attn.q_proj.weight": (h, h), "model.layers.0.self_attn.k_proj.weight": (kv * 32, h),
              "model.layers.0.self_attn.v_proj.weight": (kv * 32, h), "model.layers.0.self_attn.o_proj.weight": (h, h),
              "model.layers.0.mlp.gate_proj.weight": (ff, h), "model.layers.0.mlp.up_proj.weight": (ff, h),
              "model.layers.0.mlp.down_proj.weight": (h, ff)}
    save_file({n: (rng.standard_normal(s) * 0.05).astype(np.float32) for n, s in shapes.items()},
              str(root / "model.safetensors"))
    for f in fb.llama3_tokenizer_files().iterdir():
        if f.is_file():
            shutil.copyfile(f, root / f.name)
    return root


def _gguf_name_of(hf_name: str) -> str:
    """model.layers.N.self_attn.q_proj.weight → blk.N.attn_q.weight (the llama names the test uses)."""
    parts = hf_name.split(".")
    base = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
            "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}[parts[4]]
    return f"blk.{parts[2]}.{base}.weight"


def test_llama_view_undoes_the_qk_permutation(tmp_path):
    """llama GGUFs hold q/k rows permuted for llama.cpp's rotary layout: the checkpoint view gives the
    HF rows back, as floats (an f32 GGUF) and as packed ternary codes (i2_s)."""
    from bitconv.convert.checkpoint import Checkpoint
    from bitconv.convert.gguf_source import GGUFSource
    from bitconv.quant.ternary import TernaryScale, ternarize, unpack_hf_packed

    for quant in ("f32", "i2_s"):
        src = _tiny_llama(tmp_path / quant, ternary=quant == "i2_s")
        gguf_path = tmp_path / f"llama-{quant}.gguf"
        bitconv.convert(src, "gguf", quant, gguf_path, manifest=False)
        ckpt = Checkpoint.open(src)
        with open_gguf_checkpoint(gguf_path) as view:
            assert view.architecture == "LlamaForCausalLM"
            names = set(ckpt.tensors) | ({f"{n}_scale" for n in ckpt.tensors if "_proj." in n} if quant == "i2_s"
                                         else set())
            assert set(view.tensors) == names
            for name, want in ckpt.tensors.items():
                got = view.tensors[name]
                if quant == "f32" or "_proj." not in name:  # i2_s keeps the embedding in f16
                    assert np.array_equal(got.load(), want.load().astype(got.load().dtype)), name
                    continue
                w = want.load()
                # the GGUF's own scale (torch's float32 sum runs over the rows as written, q/k permuted)
                gguf_name = _gguf_name_of(name)
                stored = GGUFSource.open(gguf_path).tensors[gguf_name].codes_and_scale()[1]
                scale = TernaryScale(inv=np.float32(1) / stored, scale=stored)
                assert got.dtype == "U8" and np.array_equal(unpack_hf_packed(got.load_raw()), ternarize(w, scale)), name
                assert view.tensors[name + "_scale"].load()[0] == scale.scale, name
