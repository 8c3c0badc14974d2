"""`hf2gguf --keep-grid` (formats/gguf_keep_grid.py, quant/grid_blocks.py): GPTQ / AWQ linears
written in q4_0 / q4_1 / q8_0 from their own codes, on tiny Qwen2 checkpoints rewritten by the test
packer (tests/fixtures_quantized.py), every block decoded by gguf-py (not bitconv):

- carried over, q4_0 and q8_0 decode exactly to the packer's dequantized weights (its scales are
  f16, so d is the scale itself and the stored integer is q − z); q4_1 is off only by the f16
  rounding of its min m = −s·z, per block at most half an f16 ulp of |s·z| (plus the float32
  rounding of d·q + m in the decoder), and strictly closer than the default path's re-rounding;
- act-order, a grid a type cannot hold, FP8 and k-quant mixes are re-rounded, reported so, and the
  file is then byte for byte the one written without the option;
- the CLI prints the carried / re-rounded summary (--json lists it); a float source is one line,
  exit 2, nothing written;
- llama.cpp runs the q4_1 keep-grid file like transformers runs the dequantized weights (slow).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fixtures_quantized as fq  # noqa: E402
from cli_helpers import assert_nothing_written, error_line, json_result, read_gguf_tensors, run_cli  # noqa: E402

import bitconv  # noqa: E402
from bitconv.errors import UsageError  # noqa: E402

MODULES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
           "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}

#: name → (base checkpoint, packer, its options)
SOURCES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gptq4-sym-g32": ("qwen2", "gptq", dict(bits=4, sym=True, group_size=32)),
    # K = 64 and 192 with groups of 128: one short group, or a whole one and a short last one
    "gptq4-sym-g128": ("qwen2", "gptq", dict(bits=4, sym=True, group_size=128)),
    "gptq8-sym-g32": ("qwen2", "gptq", dict(bits=8, sym=True, group_size=32)),
    "gptq8-sym-g64": ("qwen2", "gptq", dict(bits=8, sym=True, group_size=64, checkpoint_format="gptq_v2")),
    "gptq4-asym-g64": ("qwen2", "gptq", dict(bits=4, sym=False, group_size=64)),
    "gptq4-act-order": ("qwen2", "gptq", dict(bits=4, sym=False, group_size=32, desc_act=True)),
    "awq-g32": ("qwen2", "awq", dict(group_size=32)),
    "awq-g64": ("qwen2", "awq", dict(group_size=64)),
    "fp8": ("qwen3", "fp8", dict(block=(128, 128), scale_dtype="BF16")),
}


def gguf_name(hf: str) -> str:
    return f"blk.{hf.split('.')[2]}.{MODULES[hf.split('.')[-2]]}.weight"


@pytest.fixture(scope="module")
def source(checkpoint_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
           ) -> Callable[[str], tuple[Path, dict[str, np.ndarray]]]:
    """source(name) → (quantized checkpoint, the packer's dequantized weights by HF name), made once."""
    root = tmp_path_factory.mktemp("keep-grid-src")
    cache: dict[str, tuple[Path, dict[str, np.ndarray]]] = {}

    def get(name: str) -> tuple[Path, dict[str, np.ndarray]]:
        if name not in cache:
            base, packer, kw = SOURCES[name]
            ckpt = {"qwen2": lambda: checkpoint_factory("qwen2", "bf16", 1, "hub"),
                    "qwen3": lambda: checkpoint_factory("qwen3", "bf16", 2, "hub")}[base]()
            make = {"gptq": fq.make_gptq, "awq": fq.make_awq, "fp8": fq.make_fp8}[packer]
            cache[name] = make(ckpt, root / name, **kw)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def convert(source: Callable[[str], Any], tmp_path_factory: pytest.TempPathFactory
            ) -> Callable[[str, str, bool], tuple[Path, Any]]:
    """convert(source name, quant, keep_grid) → (GGUF path, result), each made once."""
    root = tmp_path_factory.mktemp("keep-grid-out")
    cache: dict[tuple[str, str, bool], tuple[Path, Any]] = {}

    def get(name: str, quant: str, keep: bool) -> tuple[Path, Any]:
        if (name, quant, keep) not in cache:
            out = root / f"{name}-{quant}-{'keep' if keep else 'default'}.gguf"
            result = bitconv.convert(source(name)[0], "gguf", quant, out, keep_grid=keep, manifest=False)
            cache[(name, quant, keep)] = (out, result)
        return cache[(name, quant, keep)]

    return get


def decoded(path: Path) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """name → (type name, raw blocks, gguf-py's decode) of every block-quantized tensor."""
    out = {}
    for name, (t, shape, data) in read_gguf_tensors(path).items():
        qt = gguf.GGMLQuantizationType(t)
        if qt.name in ("Q4_0", "Q4_1", "Q8_0"):
            raw = np.frombuffer(data, np.uint8)
            out[name] = (qt.name.lower(), raw, gguf.quants.dequantize(raw, qt).reshape(shape))
    return out


def q4_1_bound(raw: np.ndarray, got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """The per-element bound on |decode − want| of a carried q4_1 tensor. Per block, d·q − want = s·z
    must be one number (so d is the source's scale); m = f16(−s·z) is off by at most half an f16
    ulp of |s·z| (the ulp of its binade; 2^-24 below f16's normal range), and the decoder's float32
    d·q + m adds half a float32 ulp of its result."""
    blocks = raw.reshape(-1, 20)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float64)  # [nb, 1]
    q = ((blocks[:, 4:, None] >> np.array([0, 4], np.uint8)) & 15).transpose(0, 2, 1).reshape(-1, 32)
    sz = d * q - want.reshape(-1, 32).astype(np.float64)  # exact: d·q and want are exact in float64
    assert np.array_equal(sz.min(1), sz.max(1)), "d·q − weight varies inside a block: d is not the scale"
    sz = np.abs(sz[:, 0])
    half_ulp16 = np.where(sz > 0, np.maximum(np.ldexp(1.0, np.frexp(sz)[1] - 11), 2.0 ** -24) / 2, 0.0)
    return (np.repeat(half_ulp16, 32) + np.spacing(np.abs(got.reshape(-1))) / 2).reshape(got.shape)


CARRIED = [("gptq4-sym-g32", "q4_0"), ("gptq4-sym-g128", "q4_0"), ("gptq8-sym-g64", "q8_0"),
           ("gptq4-asym-g64", "q4_1"), ("awq-g32", "q4_1")]


@pytest.mark.parametrize("name,quant", CARRIED, ids=[f"{n}-{q}" for n, q in CARRIED])
def test_carried_blocks_decode_to_the_source(name: str, quant: str, source: Callable, convert: Callable) -> None:
    """Every linear carried over; decoded by gguf-py it is the source's dequantized weight (q4_0 /
    q8_0: exactly; q4_1: within the bound), and closer to it than the default path, which encodes
    the dequantized floats again (gguf-py's encoder of the type, which bitconv's equals)."""
    _, expected = source(name)
    keep_path, keep = convert(name, quant, True)
    linears = [gguf_name(hf) for hf in expected]
    assert keep.keep_grid["quant"] == quant and keep.keep_grid["re_rounded"] == []
    assert sorted(keep.keep_grid["carried"]) == sorted(linears)
    qt = gguf.GGMLQuantizationType[quant.upper()]
    ours = decoded(keep_path)
    differs: list[bool] = []
    for hf, want in expected.items():
        n = gguf_name(hf)
        qtype, raw, got = ours[n]
        assert qtype == quant, n
        default = gguf.quants.quantize(want, qt)
        again = gguf.quants.dequantize(default, qt).reshape(want.shape)
        err, default_err = np.abs(got - want), np.abs(again - want)
        if quant == "q4_1":
            assert (err <= q4_1_bound(raw, got, want)).all(), n
        else:  # f16 scales: d is the scale, the stored integer q − z: exact
            assert np.array_equal(got, want), n
        assert err.max() <= default_err.max() and err.sum() <= default_err.sum(), n
        # strictly closer wherever the default differs (q4_1 blocks of a 32-column group whose codes
        # span 0 … 15 re-round to the very same grid, so a tensor may be written the same either way)
        differs.append(not np.array_equal(default.reshape(-1), raw))
        assert not differs[-1] or err.sum() < default_err.sum(), n
    assert sum(differs) >= len(differs) // 2, differs
    if name == "gptq4-sym-g32":  # every other tensor (embeddings, norms) is the default path's, byte for byte
        a, b = read_gguf_tensors(keep_path), read_gguf_tensors(convert(name, quant, False)[0])
        assert list(a) == list(b) and all(a[n] == b[n] for n in a if n not in linears)
        assert any(a[n] != b[n] for n in linears)


def test_slabs_and_threads_write_the_same_bytes(source: Callable, convert: Callable, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A linear written a slab of rows at a time (slabs not aligned to GPTQ's 8-row words), on two
    threads: the same file as whole tensors on one."""
    from bitconv.formats import gguf_writer

    whole, _ = convert("gptq4-asym-g64", "q4_1", True)
    monkeypatch.setattr(gguf_writer, "SLAB_BYTES", 5000)  # 192×64 f32: slabs of 19 rows
    out = tmp_path / "slabs.gguf"
    r = bitconv.convert(source("gptq4-asym-g64")[0], "gguf", "q4_1", out, keep_grid=True, manifest=False, threads=2)
    assert len(r.keep_grid["carried"]) == 14 and out.read_bytes() == whole.read_bytes()


RE_ROUNDED = [("gptq4-act-order", "q4_1", "act-order (g_idx)"),
              ("gptq4-sym-g32", "q4_k_m", "q4_k_m: only q4_0 / q4_1 / q8_0 files keep a grid"),
              ("gptq4-asym-g64", "q4_0", "exact in q4_0 only with 8"),
              ("fp8", "q8_0", "fp8: values not on a uniform integer grid")]


@pytest.mark.parametrize("name,quant,reason", RE_ROUNDED, ids=[f"{n}-{q}" for n, q, _ in RE_ROUNDED])
def test_re_rounded_and_reported(name: str, quant: str, reason: str, source: Callable, convert: Callable) -> None:
    """Nothing fits: every linear is reported re-rounded, and the file is the one written without
    --keep-grid, byte for byte (checked where the grid is read and refused, act-order, and for a mix)."""
    keep_path, keep = convert(name, quant, True)
    linears = {gguf_name(hf) for hf in source(name)[1]}
    assert keep.keep_grid["carried"] == []
    assert {t["tensor"] for t in keep.keep_grid["re_rounded"]} == linears
    assert all(reason in t["reason"] for t in keep.keep_grid["re_rounded"]), keep.keep_grid
    if name in ("gptq4-act-order", "gptq4-sym-g32"):
        assert keep_path.read_bytes() == convert(name, quant, False)[0].read_bytes()


def test_cli_prints_the_summary(source: Callable, convert: Callable, tmp_path: Path) -> None:
    """Text: a count line, then the tensors per reason; --json: the full lists."""
    proc = run_cli("hf2gguf", str(source("gptq4-act-order")[0]), "-q", "q4_1", "--keep-grid", "-o",
                   str(tmp_path / "act.gguf"), "--no-manifest")
    assert proc.returncode == 0, proc.stderr
    assert "keep-grid (q4_1): 0 carried over (source codes kept, scales at f16), 14 re-rounded" in proc.stdout
    assert "re-rounded, act-order (g_idx): groups are not runs of columns: blk.0." in proc.stdout, proc.stdout
    out = tmp_path / "awq-q4_1.gguf"
    proc = run_cli("hf2gguf", str(source("awq-g32")[0]), "-q", "q4_1", "--keep-grid", "-o", str(out),
                   "--no-manifest", "--json")
    k = json_result(proc)["result"]["keep_grid"]
    assert k["re_rounded"] == [] and k["carried"] == convert("awq-g32", "q4_1", True)[1].keep_grid["carried"]
    assert len(k["carried"]) == 14 and out.read_bytes() == convert("awq-g32", "q4_1", True)[0].read_bytes()


def test_bad_input(checkpoint_factory: Callable[..., Path], source: Callable, convert: Callable,
                   tmp_path: Path) -> None:
    """--keep-grid on a float checkpoint: one line, exit 2, nothing written; on a GGUF source, to
    ONNX, or with --ray: a UsageError."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.gguf"
    proc = run_cli("hf2gguf", str(checkpoint_factory("qwen2", "bf16", 1, "hub")), "-q", "q4_0", "--keep-grid",
                   "-o", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "--keep-grid keeps a quantized checkpoint's integer grid" in error_line(proc)
    assert_nothing_written(out_dir, out)
    assert list(out_dir.iterdir()) == []
    gguf_src = convert("gptq4-sym-g32", "q4_0", False)[0]
    with pytest.raises(UsageError, match="is a GGUF file"):
        bitconv.convert(gguf_src, "gguf", "q4_0", out, keep_grid=True)
    with pytest.raises(UsageError, match="GGUF output"):
        bitconv.convert(source("gptq4-sym-g32")[0], "onnx", "int4", out_dir / "onnx", keep_grid=True)
    proc = run_cli("hf2gguf", str(source("gptq4-sym-g32")[0]), "--keep-grid", "--ray", "auto", "-o", str(out))
    assert proc.returncode == 2 and "--ray" in error_line(proc)
    assert list(out_dir.iterdir()) == []


@pytest.mark.slow
def test_llamacpp_runs_the_q4_1_file(source: Callable, convert: Callable, tmp_path: Path) -> None:
    """llama.cpp on the AWQ q4_1 keep-grid file vs transformers (float32) on the dequantized weights,
    with token_embd / output as the file stores them (they are the only tensors rounded here)."""
    pytest.importorskip("llama_cpp")
    import torch
    from transformers import AutoModelForCausalLM

    from runtimes import cos, llama_last_logits

    src, expected = source("awq-g64")
    path, result = convert("awq-g64", "q4_1", True)
    assert len(result.keep_grid["carried"]) == 14
    tokens = [1, 5, 9, 42, 7, 100, 3, 17]
    got = llama_last_logits(path, tokens)
    flt = fq.float_copy(src, tmp_path / "float", expected)
    stored = {n: (t, shape, data) for n, (t, shape, data) in read_gguf_tensors(path).items()
              if n in ("token_embd.weight", "output.weight")}
    model = AutoModelForCausalLM.from_pretrained(str(flt), dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        for hf, n in (("model.embed_tokens.weight", "token_embd.weight"), ("lm_head.weight", "output.weight")):
            t, shape, data = stored[n]
            w = gguf.quants.dequantize(np.frombuffer(data, np.uint8), gguf.GGMLQuantizationType(t)).reshape(shape)
            model.get_parameter(hf).copy_(torch.from_numpy(w.astype(np.float32)))
        want = model(torch.tensor([tokens])).logits[0, -1].numpy()
    assert cos(got, want) >= 0.999, cos(got, want)
