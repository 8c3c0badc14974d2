"""BitNet → tl1 / tl2 (bitnet.cpp's LUT layouts) end to end: every LUT tensor, decoded by the
FORMATS-TL.md unpacker with the tiling read back from the emitted kernel_config.ini, holds exactly
the references' ternary codes, and from master weights the very scale bytes bitnet.cpp's converter
stores (its torch arithmetic, tests/independent.py); the kernel files are named per output;
`--kernel-config` packs for an existing build's tilings and refuses shapes it lacks."""
from __future__ import annotations

import configparser
import json
from pathlib import Path

import numpy as np
import pytest

import bitconv
import fixtures_bitnet as fb
import fixtures_onebit
from bitconv.quant.ternary import absmean_scale, converter_scale
from cli_helpers import TMP_GLOB, run_cli
from independent import bitnet_cpp_tl_weight, ulps_apart, unpack_i2s, unpack_tl1, unpack_tl2
from llamacpp_oracle import read_gguf
from test_bitnet_b25 import _hf_name


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fb.make_bitnet_checkpoint(tmp_path_factory.mktemp("lut") / "bitnet-tiny", form="packed")


# bitnet.cpp's own kernel configs for the tiny model's shapes (FORMATS-TL.md): (m, k, bm, bk, bmm)
BITNET_CPP_TILINGS = {
    "tl2": [(256, 256, 128, 96, 32), (128, 256, 64, 96, 32), (768, 256, 256, 96, 32), (256, 768, 128, 96, 32)],
    "tl1": [(256, 256, 128, 64, 64), (128, 256, 64, 128, 32), (768, 256, 256, 128, 32), (256, 768, 128, 64, 64)],
}


@pytest.fixture(scope="module")
def masters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """bf16 master-weight checkpoints: 1bitLLM-style (BitnetForCausalLM, what bitnet.cpp's converter
    takes) and transformers' BitNetForCausalLM."""
    root = tmp_path_factory.mktemp("lut-masters")
    return {"onebit": fixtures_onebit.make_onebit_checkpoint(root / "onebit" / "bitnet", dtype="bf16"),
            "bitnet": fb.make_bitnet_checkpoint(root / "bitnet" / "m", form="master", dtype="bf16")}


def _tilings(ini: Path) -> dict[tuple[int, int], tuple[int, int, int]]:
    cp = configparser.ConfigParser()
    cp.read(ini)
    return {(cp.getint(s, "m"), cp.getint(s, "k")): (cp.getint(s, "bm"), cp.getint(s, "bk"), cp.getint(s, "bmm"))
            for s in cp.sections()}


def _decode(path: Path, ini: Path) -> dict[str, tuple[np.ndarray, np.float32]]:
    g = read_gguf(path)
    tilings = _tilings(ini)
    out = {}
    for t in g.tensors:
        if t.ggml_type not in (36, 38, 39):
            continue
        k, m = t.shape
        blob = g.tensor_bytes(t)
        if t.ggml_type == 39:
            bm, bk, _ = tilings[(m, k)]
            codes, scale, rest = unpack_tl2(blob, m, k, bm, bk)
        elif t.ggml_type == 38:
            bm, bk, bmm = tilings[(m, k)]
            codes, scale, rest = unpack_tl1(blob, m, k, bm, bk, bmm)
        else:
            codes, scale, rest = unpack_i2s(blob, m, k)
        assert set(rest) <= {0}, t.name
        out[t.name] = (codes, scale)
    return out


@pytest.mark.parametrize("quant,type_id", [("tl2", 39), ("tl1", 38)])
def test_lut_codes_scales_and_kernel_files(packed, tmp_path, quant, type_id):
    out = tmp_path / f"model-{quant}.gguf"
    res = bitconv.convert(packed, "gguf", quant, out)
    ini, codegen = tmp_path / f"model-{quant}.kernel_config.ini", tmp_path / f"model-{quant}.codegen.txt"
    assert res.kernel_config == str(ini) and res.codegen == str(codegen) and ini.is_file() and codegen.is_file()
    got = _decode(out, ini)
    assert len(got) == 14
    ref = fb.read_packed(packed)
    for name, (codes, scale) in got.items():
        ref_codes, ref_scale = ref[_hf_name(name)]
        assert np.array_equal(codes, ref_codes), name
        assert scale == ref_scale, name
    shapes = {(t["m"], t["k"]) for t in res.tilings}
    assert shapes == {(256, 256), (128, 256), (768, 256), (256, 768)} == set(_tilings(ini))
    g = read_gguf(out)
    assert g.kv["general.file_type"].value() == type_id
    assert g.kv["general.architecture"].value() == "bitnet-25"
    types = {t.name: t.ggml_type for t in g.tensors}
    assert types["token_embd.weight"] == 1 and types["blk.0.ffn_sub_norm.weight"] == 0
    text = codegen.read_text()
    assert f"utils/codegen_{quant}.py --model bitnet-tiny" in text
    manifest = json.loads(Path(res.manifest).read_text())
    assert {o["path"] for o in manifest["outputs"]} == {out.name, ini.name, codegen.name}
    # bitconv's own reader names the bitnet.cpp types and sizes them right
    summary = bitconv.inspect(out)
    assert {t.type_name for t in summary.tensors} == {"F16", "F32", quant.upper()}


def test_lut_and_i2s_carry_the_same_ternary_weights(masters, tmp_path):
    """Master weights: the LUT file's codes equal the i2_s file's, tensor by tensor; the scales
    differ at most in the last bits (i2_s takes the mean with a float64 sum, tl1/tl2 in the
    converter's torch order)."""
    master = masters["bitnet"]
    bitconv.convert(master, "gguf", "i2_s", tmp_path / "m-i2s.gguf", manifest=False)
    bitconv.convert(master, "gguf", "tl2", tmp_path / "m-tl2.gguf", manifest=False)
    a = _decode(tmp_path / "m-i2s.gguf", tmp_path / "m-tl2.kernel_config.ini")
    b = _decode(tmp_path / "m-tl2.gguf", tmp_path / "m-tl2.kernel_config.ini")
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name][0], b[name][0]) and ulps_apart(a[name][1], b[name][1]) <= 2, name


@pytest.mark.parametrize("quant", ["tl2", "tl1"])
@pytest.mark.parametrize("model", ["onebit", "bitnet"])
def test_lut_scales_are_bitnet_cpp_converters_bytes(masters, model, quant, tmp_path):
    """bf16 master weights packed with bitnet.cpp's own kernel configs: every tl1/tl2 tensor's codes
    and the 4 bytes of its scale equal what bitnet.cpp's converter computes (its torch code, one
    thread: the serial sum bitconv reproduces by default). At least one tensor of each model has a
    float64-rounded mean an ulp away from torch's, so an ulp off fails here."""
    from safetensors.torch import load_file

    ckpt = masters[model]
    ini = tmp_path / "kernel_config.ini"
    ini.write_text("".join(f"[Kernels_{i}]\nm = {m}\nk = {k}\nbm = {bm}\nbk = {bk}\nbmm = {bmm}\n\n"
                           for i, (m, k, bm, bk, bmm) in enumerate(BITNET_CPP_TILINGS[quant])))
    out = tmp_path / f"{model}-{quant}.gguf"
    bitconv.convert(ckpt, "gguf", quant, out, kernel_config=ini, manifest=False)
    got = _decode(out, ini)
    assert len(got) == 14
    weights = load_file(str(ckpt / "model.safetensors"))
    tells_apart = 0
    for name, (codes, scale) in got.items():
        w = weights[_hf_name(name)]
        assert str(w.dtype) == "torch.bfloat16"
        want_codes, want_scale = bitnet_cpp_tl_weight(w)
        assert np.float32(scale).tobytes() == want_scale.tobytes(), (name, scale, want_scale)
        assert np.array_equal(codes, want_codes), name
        tells_apart += absmean_scale([w.float().numpy()]).scale != want_scale
    assert tells_apart, "no tensor here where numpy's mean and torch's differ: the test could not fail"


@pytest.mark.parametrize("threads", [2, 4])
def test_lut_scale_for_a_converter_run_with_more_threads(masters, threads):
    """torch sums a tensor of more than 32768 weights in per-thread pieces, so the converter's last bit
    depends on its thread count; `converter_scale(threads=N)` gives that run's bytes."""
    from safetensors.torch import load_file

    differs_from_serial = 0
    for model in ("onebit", "bitnet"):
        for name, w in load_file(str(masters[model] / "model.safetensors")).items():
            if not fb.is_ternary_weight(name):
                continue
            x = w.float().numpy()
            want = bitnet_cpp_tl_weight(w, threads)[1]
            assert converter_scale([x], threads).scale.tobytes() == want.tobytes(), (model, name)
            differs_from_serial += converter_scale([x], 1).scale != want
    assert differs_from_serial


def test_kernel_config_mode_uses_the_given_tilings(packed, tmp_path):
    ini = tmp_path / "kernel_config.ini"
    # bitnet.cpp's tiny-model config from FORMATS-TL.md (BM differs from what bitconv would pick)
    ini.write_text("".join(f"[Kernels_{i}]\nm = {m}\nk = {k}\nbm = {bm}\nbk = {bk}\nbmm = 32\n\n" for i, (m, k, bm, bk)
                           in enumerate([(256, 256, 128, 96), (128, 256, 64, 96), (768, 256, 256, 96),
                                         (256, 768, 128, 96)])))
    out = tmp_path / "given.gguf"
    proc = run_cli("hf2gguf", packed, "--quant", "tl2", "--kernel-config", ini, "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {(t["m"], t["k"], t["bm"]) for t in doc["result"]["tilings"]} == {(256, 256, 128), (128, 256, 64), (768, 256, 256),
                                                                  (256, 768, 128)}
    got = _decode(out, ini)
    ref = fb.read_packed(packed)
    assert all(np.array_equal(c, ref[_hf_name(n)][0]) for n, (c, _) in got.items())
    assert _tilings(tmp_path / "given.kernel_config.ini") == _tilings(ini)


def test_kernel_config_without_the_shape_is_refused(packed, tmp_path):
    ini = tmp_path / "kernel_config.ini"
    ini.write_text("[Kernels_0]\nm = 256\nk = 256\nbm = 128\nbk = 96\nbmm = 32\n")
    out = tmp_path / "x.gguf"
    proc = run_cli("hf2gguf", packed, "--quant", "tl2", "--kernel-config", ini, "-o", out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "has no section for m=" in proc.stderr and "blk.0." in proc.stderr
    assert not list(tmp_path.glob("x*")) and not list(tmp_path.glob(TMP_GLOB))


def test_kernel_config_needs_a_lut_type(packed, tmp_path):
    ini = tmp_path / "kernel_config.ini"
    ini.write_text("[Kernels_0]\nm = 256\nk = 256\nbm = 128\nbk = 96\nbmm = 32\n")
    proc = run_cli("hf2gguf", packed, "--quant", "i2_s", "--kernel-config", ini, "-o", tmp_path / "x.gguf")
    assert proc.returncode == 2 and "applies to the LUT layouts" in proc.stderr


def test_untileable_shape_names_tensor_and_constraint(tmp_path):
    ckpt = fb.make_bitnet_checkpoint(tmp_path / "odd", form="master", hidden=336, heads=6, kv_heads=2,
                                     intermediate=800)  # M = 336 or 112: not a multiple of 32
    out = tmp_path / "odd.gguf"
    proc = run_cli("hf2gguf", ckpt, "--quant", "tl2", "-o", out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no tl2 tiling exists" in proc.stderr and "multiple of 32" in proc.stderr
    assert not list(tmp_path.glob("odd.*")) and not list(tmp_path.glob(TMP_GLOB))


def test_targets_pick_the_lut_layouts(packed, tmp_path):
    arm = bitconv.convert(packed, target="bitnet-arm", out=tmp_path / "arm.gguf", manifest=False)
    x86 = bitconv.convert(packed, target="bitnet-x86", lut=True, out=tmp_path / "x86.gguf", manifest=False)
    assert (arm.quant, x86.quant) == ("tl1", "tl2")
    assert {p.name for p in tmp_path.glob("*.ini")} == {"arm.kernel_config.ini", "x86.kernel_config.ini"}


def test_existing_kernel_files_are_not_overwritten_without_force(packed, tmp_path):
    (tmp_path / "m.kernel_config.ini").write_text("mine")
    proc = run_cli("hf2gguf", packed, "--quant", "tl2", "-o", tmp_path / "m.gguf")
    assert proc.returncode != 0 and "m.kernel_config.ini already exists" in proc.stderr
    assert (tmp_path / "m.kernel_config.ini").read_text() == "mine" and not (tmp_path / "m.gguf").exists()
    assert run_cli("hf2gguf", packed, "--quant", "tl2", "-o", tmp_path / "m.gguf", "--force").returncode == 0
    assert (tmp_path / "m.kernel_config.ini").read_text().startswith("[Kernels_0]")
