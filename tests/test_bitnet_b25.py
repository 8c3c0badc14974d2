"""transformers' BitNet (bitnet-b1.58-2B-4T family) → i2_s for bitnet.cpp, from master weights and
from packed checkpoints of both weight_scale conventions.

bitnet.cpp is not in CI (FORMATS.md: a local build is the judge); here every ternary tensor is
decoded by an unpacker written from FORMATS.md and compared with the references' ternarization
(torch arithmetic, tests/fixtures_bitnet.py): codes exactly, scales within 2 ulps (see below)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import bitconv
import fixtures_bitnet as fb
from cli_helpers import run_cli
from independent import ulps_apart, unpack_i2s
from llamacpp_oracle import read_gguf

HEAD_DIM = 64


@pytest.fixture(scope="session")
def b25(tmp_path_factory: pytest.TempPathFactory):
    cache: dict[tuple, Path] = {}

    def make(form: str = "master", linear_class: str = "bitlinear", **kw) -> Path:
        key = (form, linear_class, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = fb.make_bitnet_checkpoint(tmp_path_factory.mktemp("b25") / f"bitnet-{form}-{linear_class}",
                                                   form=form, linear_class=linear_class, **kw)
        return cache[key]

    return make


def _gguf_ternary(path: Path) -> dict[str, tuple[np.ndarray, np.float32]]:
    """HF name → (codes, scale) of every I2_S tensor, decoded independently."""
    g = read_gguf(path)
    out = {}
    for t in g.tensors:
        if t.ggml_type != 36:
            continue
        k, n = t.shape  # ggml order: ne0 = K
        codes, scale, pad = unpack_i2s(g.tensor_bytes(t), n, k)
        assert pad == bytes(28), t.name
        out[t.name] = (codes, scale)
    return out


_HF = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
       "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
       "ffn_down": "mlp.down_proj"}


def _hf_name(gguf_name: str) -> str:
    _, layer, base, _ = gguf_name.split(".")
    return f"model.layers.{layer}.{_HF[base]}.weight"


@pytest.mark.parametrize("form,linear_class", [("master", "bitlinear"), ("packed", "bitlinear"),
                                               ("packed", "autobitlinear")])
def test_i2s_codes_and_scales(b25, form, linear_class, tmp_path):
    ckpt = b25(form, linear_class)
    out = tmp_path / "m.gguf"
    bitconv.convert(ckpt, "gguf", "i2_s", out, manifest=False)
    ref = fb.ternary_reference(ckpt) if form == "master" else fb.read_packed(ckpt)
    got = _gguf_ternary(out)
    assert len(got) == 14
    for name, (codes, scale) in got.items():
        ref_codes, ref_scale = ref[_hf_name(name)]
        assert np.array_equal(codes, ref_codes), name
        # master weights: torch's float32 cascade sum is not correctly rounded (one tensor here sums
        # to 7068.8018 where the exact value is 7068.80126); bitconv's sum is, so the mean may sit one
        # ulp away and the stored scale (1 / (1 / mean)) up to two
        assert ulps_apart(scale, ref_scale) <= (0 if form == "packed" else 2), (name, scale, ref_scale)


def test_packed_and_master_give_the_same_codes(b25, tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    bitconv.convert(b25("master"), "gguf", "i2_s", a, manifest=False)
    bitconv.convert(b25("packed", "autobitlinear"), "gguf", "i2_s", b, manifest=False)
    ga, gb = _gguf_ternary(a), _gguf_ternary(b)
    for name in ga:
        assert np.array_equal(ga[name][0], gb[name][0]), name
        assert ulps_apart(ga[name][1], gb[name][1]) <= 2


def test_bitnet25_metadata_and_types(b25, tmp_path):
    out = tmp_path / "m.gguf"
    bitconv.convert(b25("master"), "gguf", "i2_s", out, manifest=False)
    s = bitconv.inspect(out)
    meta = s.metadata
    assert meta["general.architecture"] == "bitnet-25"
    assert meta["general.file_type"] == 40
    assert meta["bitnet-25.rope.freq_base"] == 500000.0
    assert meta["bitnet-25.rope.dimension_count"] == HEAD_DIM
    types = {t.name: t.type_name for t in s.tensors}
    assert types["token_embd.weight"] == "F16"
    assert "output.weight" not in types
    assert types["blk.0.attn_sub_norm.weight"] == "F32" and types["blk.1.ffn_sub_norm.weight"] == "F32"
    assert sum(1 for v in types.values() if v == "I2_S") == 14


def test_f16_reference_file_holds_the_dequantized_ternary_weights(b25, tmp_path):
    ckpt = b25("master")
    out = tmp_path / "m.gguf"
    bitconv.convert(ckpt, "gguf", "f16", out, manifest=False)
    g = read_gguf(out)
    ref = fb.ternary_reference(ckpt)
    t = next(t for t in g.tensors if t.name == "blk.0.attn_q.weight")
    got = np.frombuffer(bytes(g.tensor_bytes(t)), dtype=np.float16).astype(np.float32).reshape(t.shape[::-1])
    codes, scale = ref["model.layers.0.self_attn.q_proj.weight"]
    expect = (codes.astype(np.float32) * scale).astype(np.float16).astype(np.float32)
    assert np.array_equal(np.abs(got), np.abs(expect))


# --- bad input ---------------------------------------------------------------------------------------

def _edit_packed(src: Path, dst: Path, edit) -> Path:
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    f = dst / "model.safetensors"
    state = load_file(str(f))
    edit(state)
    save_file(state, str(f), metadata={"format": "pt"})
    return dst


def _fails(ckpt: Path, tmp_path: Path, *phrases: str, quant: str = "i2_s") -> None:
    out = tmp_path / "out.gguf"
    proc = run_cli("hf2gguf", str(ckpt), "--quant", quant, "-o", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for p in phrases:
        assert p in proc.stderr, proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".*bitconv-tmp*"))


def test_missing_weight_scale(b25, tmp_path):
    ckpt = _edit_packed(b25("packed"), tmp_path / "c", lambda s: s.pop("model.layers.1.mlp.up_proj.weight_scale"))
    _fails(ckpt, tmp_path, "model.layers.1.mlp.up_proj.weight", "without", "weight_scale")


def test_packed_code_3(b25, tmp_path):
    def poison(state):
        state["model.layers.0.self_attn.v_proj.weight"][0, 0] = 255

    _fails(_edit_packed(b25("packed"), tmp_path / "c", poison), tmp_path, "code 3")


def test_packed_shape_disagrees_with_config(b25, tmp_path):
    ckpt = _edit_packed(b25("packed"), tmp_path / "c", lambda s: None)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["intermediate_size"] = cfg["intermediate_size"] + 256
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _fails(ckpt, tmp_path, "does not match config.json")


def test_i2s_needs_k_multiple_of_128(b25, tmp_path):
    ckpt = b25("master", hidden=320, heads=5, kv_heads=1)
    _fails(ckpt, tmp_path, "multiple of 128")
