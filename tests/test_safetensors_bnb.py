"""`bitconv hf2st --format bnb-nf4 / bnb-int8`: the bitsandbytes checkpoints transformers saves
after quantizing on load, computed by bitconv in numpy.

Held to transformers + bitsandbytes themselves: for the same source, quantize-on-load
(``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=<dtype>)``
/ ``BitsAndBytesConfig(load_in_8bit=True)``) then save_pretrained writes a model.safetensors equal
to bitconv's byte for byte (header, tensor order, NF4 codes, absmax, int8 codes, SCB, quant state),
and the same quantization_config; bitsandbytes' own kernels (quantize_4bit, int8_vectorwise_quant)
give bitconv's values on edge cases (all-zero blocks and rows, exact ties, partial and odd blocks,
bf16 / f16 / f32).

Against the float model (last position, transformers float32, tiny random Qwen2, bf16) the loaded
artifacts measure cos 0.99982 (int8) and 0.98905 (nf4) — the same logits as transformers' own
quantize-on-load, which the tests check exactly.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import torch

import bitconv
from bitconv import api
from bitconv.formats.safetensors import layouts
from bitconv.formats.safetensors.writer import INDEX_FILE
from bitconv.quant.bnb import NF4_BOUNDS, NF4_CODE, int8_dequantize, int8_quantize, nf4_dequantize, nf4_quantize
from cli_helpers import error_line, json_result, run_cli

bnb = pytest.importorskip("bitsandbytes")
from safetensors import safe_open  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

IDS = [9707, 11, 1879, 0, 3555, 374, 279, 6722, 315, 9625]
MIN_COS = {"bnb-int8": 0.999, "bnb-nf4": 0.98}
TORCH = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
FORMATS = ("bnb-nf4", "bnb-int8")


def _bnb_config(fmt: str, dtype: torch.dtype) -> BitsAndBytesConfig:
    if fmt == "bnb-nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def _logits(model: torch.nn.Module) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0, -1].float().numpy()


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def sources(checkpoint_factory: Callable[..., Path]) -> dict[str, Path]:
    return {"bf16": checkpoint_factory("qwen2", "bf16", 1, "hub"), "f32": checkpoint_factory("qwen3", "f32", 1, "tf5")}


@pytest.fixture(scope="module")
def outs(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("bnb")
    out = {}
    for dt, src in sources.items():
        for fmt in FORMATS:
            r = bitconv.convert(src, to="safetensors", format=fmt, out=root / f"{dt}-{fmt}")
            assert r.n_quantized == 14 and r.shards == 1 and r.files[0] == "model.safetensors", r
            assert r.quant == layouts.BNB_FORMATS[fmt] and r.block_size == (64 if fmt == "bnb-nf4" else None)
            out[dt, fmt] = root / f"{dt}-{fmt}"
    r = api.convert_safetensors(sources["bf16"], "bnb-nf4", root / "sharded", max_shard_size="1MB")
    assert r.shards > 3
    out["bf16", "sharded"] = root / "sharded"
    return out


@pytest.fixture(scope="module")
def refs(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """transformers' own quantize-on-load + save_pretrained of the same sources."""
    root = tmp_path_factory.mktemp("bnb-ref")
    ref = {}
    for dt, src in sources.items():
        for fmt in FORMATS:
            m = AutoModelForCausalLM.from_pretrained(
                str(src), device_map="cpu", quantization_config=_bnb_config(fmt, TORCH[dt.upper()]))
            m.save_pretrained(str(root / f"{dt}-{fmt}"))
            ref[dt, fmt] = root / f"{dt}-{fmt}"
    return ref


@pytest.mark.parametrize("dt", ["bf16", "f32"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_equals_transformers_save(fmt: str, dt: str, outs: dict, refs: dict, sources: dict[str, Path]) -> None:
    """Every tensor (quantized or copied) and the whole model.safetensors equal transformers' save of
    the model it quantized on load; quantization_config is BitsAndBytesConfig.to_dict()'s."""
    mine, theirs = outs[dt, fmt], refs[dt, fmt]
    a, b = _tensors(mine / "model.safetensors"), _tensors(theirs / "model.safetensors")
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k
    assert (mine / "model.safetensors").read_bytes() == (theirs / "model.safetensors").read_bytes()
    qa = json.loads((mine / "config.json").read_text())["quantization_config"]
    qb = json.loads((theirs / "config.json").read_text())["quantization_config"]
    assert qa == qb
    assert (mine / "tokenizer.json").read_bytes() == (sources[dt] / "tokenizer.json").read_bytes()
    n = sum(k.endswith(("quant_state.bitsandbytes__nf4", ".SCB")) for k in a)
    assert n == 14
    if fmt == "bnb-nf4":
        k = next(k for k in a if k.endswith("q_proj.weight.quant_state.bitsandbytes__nf4"))
        state = json.loads(bytes(a[k].tolist()))
        assert state == {"quant_type": "nf4", "blocksize": 64, "dtype": {"bf16": "bfloat16", "f32": "float32"}[dt],
                         "shape": _source_shape(sources[dt], k.split(".weight.")[0] + ".weight")}


def _source_shape(src: Path, name: str) -> list[int]:
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        return list(f.get_slice(name).get_shape())


@pytest.fixture(scope="module")
def float_logits(sources: dict[str, Path]) -> np.ndarray:
    return _logits(AutoModelForCausalLM.from_pretrained(str(sources["bf16"]), dtype=torch.float32).eval())


@pytest.mark.parametrize("fmt", FORMATS)
def test_transformers_loads(fmt: str, outs: dict, refs: dict, float_logits: np.ndarray) -> None:
    model = AutoModelForCausalLM.from_pretrained(str(outs["bf16", fmt]), device_map="cpu").eval()
    lin = model.model.layers[0].self_attn.q_proj
    assert type(lin).__name__ == ("Linear4bit" if fmt == "bnb-nf4" else "Linear8bitLt")
    assert type(model.lm_head).__name__ == "Linear"  # lm_head kept dense, as transformers keeps it
    got = _logits(model)
    c = _cos(got, float_logits)
    assert c >= MIN_COS[fmt], c
    # transformers' own quantize-on-load of the same checkpoint: the same weights, so the same logits
    theirs = _logits(AutoModelForCausalLM.from_pretrained(str(refs["bf16", fmt]), device_map="cpu").eval())
    assert np.array_equal(got, theirs)


def test_sharded(outs: dict) -> None:
    out = outs["bf16", "sharded"]
    index = json.loads((out / INDEX_FILE).read_text())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert not (out / "model.safetensors").exists() and len(shards) == len(set(index["weight_map"].values())) > 3
    stored: dict[str, torch.Tensor] = {}
    for s in shards:
        stored.update(_tensors(s))
    whole = _tensors(outs["bf16", "bnb-nf4"] / "model.safetensors")
    assert set(stored) == set(whole) == set(index["weight_map"])
    assert all(torch.equal(stored[k], whole[k]) for k in whole)
    a = _logits(AutoModelForCausalLM.from_pretrained(str(out), device_map="cpu").eval())
    b = _logits(AutoModelForCausalLM.from_pretrained(str(outs["bf16", "bnb-nf4"]), device_map="cpu").eval())
    assert np.array_equal(a, b)


def _edge_weights(dtype: str, shape: tuple[int, int]) -> torch.Tensor:
    rng = np.random.default_rng(3)
    w = torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * 0.05)
    w.view(-1)[:64] = 0  # an all-zero block (nf4) / row (int8, when K <= 64)
    w[1] = torch.arange(shape[1]) / 8 - shape[1] / 16  # multiples of 1/8: ties for int8
    w[2, 0] = 3.0  # an outlier
    if dtype == "F32" and shape[1] >= 16:
        w[3, :15] = torch.from_numpy(NF4_BOUNDS)  # scaled values exactly on the NF4 midpoints
        w[3, 15] = 1.0
    return w.to(TORCH[dtype])


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_kernels_equal_bitsandbytes(dtype: str) -> None:
    """nf4_quantize / int8_quantize give bitsandbytes' own codes and statistics, and its
    dequantization gives bitconv's dequantized values."""
    for shape in ((16, 64), (6, 40), (7, 3)):  # whole blocks; a partial last block; an odd element count
        w = _edge_weights(dtype, shape)
        packed, state = bnb.functional.quantize_4bit(w, blocksize=64, quant_type="nf4")
        q, absmax = nf4_quantize(w.float().numpy())
        assert np.array_equal(q, packed.reshape(-1).numpy()) and np.array_equal(absmax, state.absmax.numpy()), shape
        assert np.array_equal(NF4_CODE, state.code.numpy())
        dq = bnb.functional.dequantize_4bit(packed, state)
        ours = torch.from_numpy(nf4_dequantize(q, absmax, shape)).to(TORCH[dtype])
        assert torch.equal(dq, ours), shape
    w = _edge_weights(dtype, (16, 64))
    cb, scb, _ = bnb.functional.int8_vectorwise_quant(w.to(torch.float16))  # what Int8Params does on CPU
    q, s = int8_quantize(w.float().numpy())
    assert np.array_equal(s, scb.numpy())
    assert s[0] == 0 and not q[0].any()  # the all-zero row (bitsandbytes' NaN codes: 0 on this CPU)
    assert np.array_equal(q[1:], cb[1:].numpy())
    dq = bnb.functional.int8_vectorwise_dequant(cb, scb)
    assert np.array_equal(int8_dequantize(q, s)[1:], dq[1:].numpy())


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_row_chunks(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Row-chunked quantization of a weight whose rows are not whole 64-blocks (K = 48: chunks of
    4 rows) equals bitsandbytes on the whole tensor."""
    w = torch.from_numpy(np.random.default_rng(5).standard_normal((37, 48)).astype(np.float32)).to(torch.bfloat16)
    monkeypatch.setattr(layouts, "_CHUNK_F32_BYTES", 4 * 48 * 3)
    lt = SimpleNamespace(name="x.weight", dtype="BF16", load=lambda: w.float().numpy())
    weight, stats = layouts._bnb_producers(lt, kind)
    s, q = stats(), weight()  # either order
    if kind == "nf4":
        packed, state = bnb.functional.quantize_4bit(w, blocksize=64, quant_type="nf4")
        assert q == packed.numpy().tobytes() and s == state.absmax.numpy().tobytes()
    else:
        cb, scb, _ = bnb.functional.int8_vectorwise_quant(w.to(torch.float16))
        assert q == cb.numpy().tobytes() and s == scb.numpy().tobytes()


def test_cli(sources: dict[str, Path], checkpoint_factory: Callable[..., Path], tmp_path: Path) -> None:
    src = sources["bf16"]
    ok = run_cli("hf2st", src, "--format", "bnb-int8", "-o", tmp_path / "ok", "--json", "--quiet")
    assert ok.returncode == 0, ok.stderr
    res = json_result(ok)["result"]
    assert res["format"] == "bnb-int8" and res["quant"] == "int8" and res["n_quantized"] == 14
    assert not list((tmp_path / "ok").glob(".*"))
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(src, gpt2)
    cfg = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps(dict(cfg, architectures=["GPT2LMHeadModel"])))
    cases = [  # (source, argv) → words of the one-line error
        ((src, "--format", "bnb-nf4", "--block-size", "128"), "block of 64"),
        ((src, "--format", "bnb-int8", "--block-size", "64"), "leave --block-size out"),
        ((src, "--format", "bnb-nf4", "--quant", "int4"), "--quant applies to --format compressed-tensors"),
        ((checkpoint_factory("qwen2moe", "bf16", 1, "tf5"), "--format", "bnb-nf4"), "mixture-of-experts"),
        ((gpt2, "--format", "bnb-int8"), "unsupported architecture 'GPT2LMHeadModel'"),
        ((src, "--format", "bnb-fp4"), "bitnet-packed, compressed-tensors, bnb-nf4, bnb-int8"),
    ]
    for i, (argv, words) in enumerate(cases):
        out = tmp_path / f"bad{i}"
        bad = run_cli("hf2st", *argv, "-o", out)
        assert bad.returncode == 2 and words in error_line(bad), (argv, bad.stderr)
        assert not out.exists()
