"""`bitconv hf2st --format bitnet-packed`: transformers' packed BitNet checkpoint from master (and
packed) BitNetForCausalLM checkpoints, for both weight_scale conventions."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import bitconv
import fixtures_bitnet as fb
from bitconv import api
from cli_helpers import error_line, json_result, run_cli

IDS = [128000, 791, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679]


@pytest.fixture(scope="module")
def masters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("st-src")
    # bf16 master for bitlinear; f32 for autobitlinear (a bf16 autobitlinear-offline checkpoint
    # cannot run in transformers at float32: fixtures_bitnet's module notes)
    return {"bitlinear": fb.make_bitnet_checkpoint(root / "bf16" / "model", form="master", dtype="bf16"),
            "autobitlinear": fb.make_bitnet_checkpoint(root / "f32" / "model", form="master", dtype="f32")}


@pytest.fixture(scope="module")
def packed_out(masters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for lc, src in masters.items():
        folder = tmp_path_factory.mktemp(f"st-{lc}") / "model"  # same basename as the source: same GGUF name
        r = api.convert_safetensors(src, "bitnet-packed", folder, linear_class=lc)
        assert r.n_ternary == 14 and (folder / "model.safetensors").is_file()
        out[lc] = folder
    return out


@pytest.mark.parametrize("lc", ["bitlinear", "autobitlinear"])
def test_config_and_tensors(lc: str, masters: dict[str, Path], packed_out: dict[str, Path]) -> None:
    out = packed_out[lc]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"] == {"quant_method": "bitnet", "linear_class": lc, "quantization_mode": "offline"}
    assert (out / "tokenizer.json").read_bytes() == (masters[lc] / "tokenizer.json").read_bytes()
    src = fb.load_safetensors(masters[lc])
    got = fb.load_safetensors(out)
    for name, t in src.items():
        if fb.is_ternary_weight(name):
            assert got[name].dtype == torch.uint8 and tuple(got[name].shape) == (t.shape[0] // 4, t.shape[1])
            assert got[name + "_scale"].dtype == torch.float32 and tuple(got[name + "_scale"].shape) == (1,)
        else:  # copied as stored
            assert got[name].dtype == t.dtype and torch_equal(got[name], t), name
    assert set(got) == set(src) | {n + "_scale" for n in src if fb.is_ternary_weight(n)}


def torch_equal(a, b) -> bool:
    return bool((a.view(-1).to(a.dtype) == b.view(-1)).all())


@pytest.mark.parametrize("lc", ["bitlinear", "autobitlinear"])
def test_codes_match_reference(lc: str, masters: dict[str, Path], packed_out: dict[str, Path]) -> None:
    ref = fb.ternary_reference(masters[lc])
    got = fb.read_packed(packed_out[lc])
    assert set(ref) == set(got)
    for name, (codes, scale) in ref.items():
        assert np.array_equal(got[name][0], codes), name
        assert abs(float(got[name][1]) - float(scale)) <= 2 * np.spacing(np.float32(scale)), name


@pytest.mark.parametrize("lc", ["bitlinear", "autobitlinear"])
def test_transformers_logits(lc: str, masters: dict[str, Path], packed_out: dict[str, Path]) -> None:
    got = fb.hf_bitnet_logits(packed_out[lc], IDS)
    want = fb.bitnet_logits(masters[lc], IDS, reference="bitlinear")
    cos = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))
    assert cos >= 0.9999, cos


@pytest.mark.parametrize("lc", ["bitlinear", "autobitlinear"])
def test_gguf_i2s_same_bytes(lc: str, masters: dict[str, Path], packed_out: dict[str, Path], tmp_path: Path) -> None:
    a, b = tmp_path / "master.gguf", tmp_path / "packed.gguf"
    bitconv.convert(masters[lc], "gguf", "i2_s", a, manifest=False)
    bitconv.convert(packed_out[lc], "gguf", "i2_s", b, manifest=False)
    assert a.read_bytes() == b.read_bytes()


def test_repack_packed_input(packed_out: dict[str, Path], masters: dict[str, Path], tmp_path: Path) -> None:
    """A packed checkpoint converts again (same codes, the other convention's scale)."""
    out = tmp_path / "re"
    api.convert_safetensors(packed_out["autobitlinear"], "bitnet-packed", out, linear_class="bitlinear")
    ref = fb.ternary_reference(masters["autobitlinear"])
    got = fb.read_packed(out)
    for name, (codes, scale) in ref.items():
        assert np.array_equal(got[name][0], codes), name
        assert abs(float(got[name][1]) - float(scale)) <= 2 * np.spacing(np.float32(scale)), name


def test_cli_json_and_bad_input(masters: dict[str, Path], qwen2_checkpoint: Path, tmp_path: Path) -> None:
    src = masters["bitlinear"]
    out = tmp_path / "cli"
    ok = run_cli("hf2st", src, "--format", "bitnet-packed", "-o", out, "--json", "--quiet")
    assert ok.returncode == 0, ok.stderr
    res = json_result(ok)
    assert res["ok"] and res["result"]["n_ternary"] == 14

    again = run_cli("hf2st", src, "-o", out)  # non-empty output folder
    assert again.returncode == 2 and "not empty" in error_line(again)
    forced = run_cli("hf2st", src, "-o", out, "--force", "--linear-class", "autobitlinear", "--quiet")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((out / "config.json").read_text())["quantization_config"]["linear_class"] == "autobitlinear"

    qwen = run_cli("hf2st", qwen2_checkpoint, "-o", tmp_path / "q")
    assert qwen.returncode == 2 and "not a ternary" in error_line(qwen)
    assert not (tmp_path / "q").exists()

    bad = run_cli("hf2st", src, "--format", "gptq", "-o", tmp_path / "g")
    assert bad.returncode == 2 and "bitnet-packed" in error_line(bad)
    bad_lc = run_cli("hf2st", src, "--linear-class", "foo", "-o", tmp_path / "h")
    assert bad_lc.returncode == 2 and "autobitlinear" in error_line(bad_lc)


def test_sharded(masters: dict[str, Path], packed_out: dict[str, Path], tmp_path: Path) -> None:
    """Sharding is format-independent: the shards hold the single file's tensors, the index lists
    them all; --force back to one file removes the shards and the index."""
    from safetensors import safe_open

    out = tmp_path / "many"
    r = api.convert_safetensors(masters["bitlinear"], "bitnet-packed", out, max_shard_size="0.5MiB")
    assert r.shards > 1 and r.files[r.shards] == "model.safetensors.index.json"
    got = fb.load_safetensors(out)
    want = fb.load_safetensors(packed_out["bitlinear"])
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    where = {}
    for f in out.glob("model-*.safetensors"):
        with safe_open(str(f), "pt") as h:
            where.update(dict.fromkeys(h.keys(), f.name))
    assert index["weight_map"] == where
    api.convert_safetensors(masters["bitlinear"], "bitnet-packed", out, force=True)
    assert sorted(p.name for p in out.glob("model*")) == ["model.safetensors"]
