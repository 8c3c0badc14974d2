"""compressed-tensors (llm-compressor) checkpoints as conversion sources (quant/compressed_source.py,
convert/dequant.py), on tiny Qwen2 / Qwen3 / Qwen3-MoE checkpoints quantized and compressed by the
compressed-tensors package itself (tests/fixtures_quantized.py make_compressed):

- the dequantized weights equal (q − z) · s in float32 (llama.cpp's converter's values), whole, in
  slabs of rows and from the integer grid; the package's own decompression of the same tensors
  equals them rounded once to the scale's dtype (it computes in bf16);
- byte identity with llama.cpp's convert_hf_to_gguf.py (slow): f16 / bf16 / q8_0 of pack-quantized
  int4 and float-quantized fp8 (channel and block);
- transformers with the compressed-tensors package loads the checkpoint and agrees with llama.cpp
  running bitconv's f16 GGUF of it (slow);
- inspect names the scheme; bad input gets one line and nothing written.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fixtures_quantized as fq  # noqa: E402
import quantized_checks as checks  # noqa: E402
from cli_helpers import read_gguf_tensors, run_cli  # noqa: E402
from turns import share  # noqa: E402

import bitconv  # noqa: E402
from bitconv.quant.compressed import round_to_dtype  # noqa: E402

ct = pytest.importorskip("compressed_tensors")

#: name → (fixture arch, make_compressed options)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    # W4A16 as llm-compressor writes it
    "pack4-qwen3": ("qwen3", dict(format="pack-quantized", bits=4, strategy="group", group_size=32)),
    "pack4asym-qwen2": ("qwen2", dict(format="pack-quantized", bits=4, strategy="group", group_size=32,
                                      symmetric=False)),
    "pack8chan-qwen2": ("qwen2", dict(format="pack-quantized", bits=8, strategy="channel", group_size=None)),
    # actorder "group" (compressed-tensors < 0.20): columns in permuted groups by weight_g_idx
    "pack4gidx-qwen2": ("qwen2", dict(format="pack-quantized", bits=4, strategy="group", group_size=32,
                                      symmetric=False, actorder_group=True)),
    "pack4-qwen3moe": ("qwen3moe", dict(format="pack-quantized", bits=4, strategy="group", group_size=16,
                                        ignore=("lm_head", "re:.*mlp.gate$"))),
    "int8-qwen2": ("qwen2", dict(format="int-quantized", bits=8, strategy="channel", group_size=None,
                                 activations=True)),
    "naive8asym-qwen3": ("qwen3", dict(format="naive-quantized", bits=8, strategy="group", group_size=32,
                                       symmetric=False)),
    # FP8_DYNAMIC / FP8_BLOCK / FP8 (per tensor)
    "fp8-qwen3": ("qwen3", dict(format="float-quantized", type="float", bits=8, strategy="channel", group_size=None,
                                activations=True)),
    "fp8block-qwen3": ("qwen3", dict(format="float-quantized", type="float", bits=8, strategy="block",
                                     group_size=None, block=(32, 48), activations=True)),
    "fp8tensor-qwen2": ("qwen2", dict(format="float-quantized", type="float", bits=8, strategy="tensor",
                                      group_size=None, activations=True)),
}
PACKED = [n for n in CASES if n.startswith("pack")]


@pytest.fixture(scope="module")
def floats(checkpoint_factory: Callable[..., Path]) -> dict[str, Path]:
    return {"qwen2": checkpoint_factory("qwen2", "bf16", 1, "hub"),
            "qwen3": checkpoint_factory("qwen3", "bf16", 2, "hub"),  # shared with the other identity matrices
            "qwen3moe": checkpoint_factory("qwen3moe", "bf16", 3, "hub")}


@pytest.fixture(scope="module")
def packed(floats: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """name → (checkpoint folder, expected float32 weights by HF name)."""
    root = tmp_path_factory.mktemp("compressed")
    return {name: fq.make_compressed(floats[arch], root / name, **kw) for name, (arch, kw) in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_dequantized_weights(name: str, packed: dict, floats: dict[str, Path]) -> None:
    """Each linear read whole, in slabs of rows starting and ending anywhere, and from its integer
    grid = the packer's (q − z) · s; float tensors pass through in llama.cpp's order (pack-quantized:
    the linears appended after the stored tensors; int / float-quantized: in the weight's place);
    experts are read one by one like any linear."""
    from bitconv.convert.checkpoint import Checkpoint

    src, expected = packed[name]
    ck = Checkpoint.open(src)
    flt = Checkpoint.open(floats[CASES[name][0]])
    assert set(ck.tensors) == set(flt.tensors)
    fp8 = name.startswith("fp8")
    for hf, want in expected.items():
        lt = ck.tensors[hf]
        assert (lt.dtype, lt.shape) == ("F32", want.shape)
        assert np.array_equal(lt.load(), want), hf
        n = want.shape[0]
        cuts = sorted({0, n, *np.random.default_rng(n).integers(1, n, size=3).tolist()})
        assert np.array_equal(np.concatenate([lt.load_rows(a, b) for a, b in zip(cuts, cuts[1:])]), want), hf
        if fp8:
            assert lt.grid is None
            continue
        grids = [lt.grid(a, b) for a, b in zip(cuts, cuts[1:])]
        assert np.array_equal(np.concatenate([g.dequantize() for g in grids]), want), hf
        assert all(g.codes.dtype == np.uint8 and int(g.codes.max()) < 2 ** g.bits for g in grids)
        assert (grids[0].g_idx is not None) == (name == "pack4gidx-qwen2")
    if name.endswith("moe"):
        assert sum(".experts." in hf for hf in expected) == 2 * 4 * 3
    for n, lt in ck.tensors.items():
        if n not in expected:
            assert np.array_equal(lt.load_raw(), flt.tensors[n].load_raw()), n
    plain = sorted(n for n in ck.tensors if n not in expected)
    assert list(ck.tensors) == (plain + sorted(expected) if name.startswith("pack") else sorted(ck.tensors))


def _package_scheme(src: Path) -> Any:
    from compressed_tensors.quantization import QuantizationConfig

    qc = json.loads((src / "config.json").read_text())["quantization_config"]
    return QuantizationConfig.model_validate(qc).config_groups["group_0"]


@pytest.mark.parametrize("name", [n for n in CASES if n != "pack4gidx-qwen2"])  # the package no longer reads g_idx
def test_equals_package_decompression(name: str, packed: dict) -> None:
    """The package's decompressor on the stored tensors gives bitconv's float32 weight rounded once to
    the scale's dtype (bf16 here): it computes (q − z) · s in bf16, llama.cpp's converter in float32."""
    import torch
    from compressed_tensors.compressors import BaseCompressor
    from safetensors.torch import load_file

    from bitconv.convert.checkpoint import Checkpoint

    src, expected = packed[name]
    scheme = _package_scheme(src)
    compressor = BaseCompressor.get_value_from_registry(scheme.format)
    stored = load_file(str(src / "model.safetensors"))
    ck = Checkpoint.open(src)
    for hf in expected:
        base = hf.removesuffix(".weight")
        state = {p: stored[f"{base}.{p}"] for p in compressor.compression_param_names(scheme)}
        theirs = compressor.decompress(state, scheme)["weight"]
        assert theirs.dtype == torch.bfloat16 == state["weight_scale"].dtype
        ours = round_to_dtype(ck.tensors[hf].load(), "BF16")
        assert np.array_equal(theirs.float().numpy(), ours), hf


def test_gguf_streams_experts(packed: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Qwen3-MoE pack-quantized int4: the f32 GGUF's stacked expert tensors hold each expert's
    dequantized weight, read a slab of rows at a time."""
    src, expected = packed["pack4-qwen3moe"]
    slabs = checks.record_slabs(monkeypatch, 1 << 13)
    out = tmp_path / "moe.gguf"
    bitconv.convert(src, "gguf", "f32", out, manifest=False)
    got = {n: np.frombuffer(d, np.float32).reshape(s) for n, (t, s, d) in read_gguf_tensors(out).items() if t == 0}
    names = {"gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}
    for layer in range(2):
        for hf_name, gg in names.items():
            want = np.stack([expected[f"model.layers.{layer}.mlp.experts.{e}.{hf_name}.weight"] for e in range(4)])
            assert np.array_equal(got[f"blk.{layer}.{gg}.weight"], want), (layer, hf_name)
    assert np.array_equal(got["blk.0.attn_q.weight"], expected["model.layers.0.self_attn.q_proj.weight"])
    assert any(hi - lo < n for lo, hi, n in slabs), "no linear was read a slab at a time"




@pytest.mark.parametrize("name,to,opts", [("pack4gidx-qwen2", "gguf", {"quant": "q4_k_m"}),
                                          ("fp8block-qwen3", "safetensors", {"format": "compressed-tensors",
                                                                             "quant": "int8", "block_size": 32})])
def test_output_is_dequantize_then_encode(name: str, to: str, opts: dict, packed: dict, tmp_path: Path) -> None:
    """A GGUF k-quant, or hf2st's own compressed-tensors, from a compressed-tensors source: the same
    files as from the float checkpoint holding the dequantized weights."""
    src, expected = packed[name]
    flt = fq.float_copy(src, tmp_path / "float", expected)
    a = bitconv.convert(src, to=to, out=tmp_path / ("q.gguf" if to == "gguf" else "q"), **opts)
    b = bitconv.convert(flt, to=to, out=tmp_path / ("f.gguf" if to == "gguf" else "f"), **opts)
    if to == "gguf":
        ta, tb = read_gguf_tensors(Path(a.output)), read_gguf_tensors(Path(b.output))
        assert list(ta) == list(tb) and ta == tb
        return
    fa, fb = ([f for f in sorted(p.iterdir()) if f.name != "bitconv-manifest.json"] for p in (tmp_path / "q", tmp_path / "f"))
    assert [f.name for f in fa] == [f.name for f in fb]
    for x, y in zip(fa, fb):
        if x.name == "config.json":
            assert json.loads(x.read_text()) == json.loads(y.read_text())
        else:
            assert x.read_bytes() == y.read_bytes(), x.name


def test_inspect(packed: dict) -> None:
    r = bitconv.inspect(packed["pack4asym-qwen2"][0])
    assert r.format == "compressed-tensors" and r.n_quantized == 14
    for phrase in ("compressed-tensors", "format pack-quantized", "ignore lm_head",
                   "group_0 pack-quantized int4 asymmetric (zero points) group 32 on Linear"):
        assert phrase in r.quantization, r.quantization
    fp8 = bitconv.inspect(packed["fp8block-qwen3"][0])
    assert fp8.n_quantized == 14 and "float-quantized float8 symmetric block 32×48" in fp8.quantization
    assert bitconv.inspect(packed["pack4-qwen3moe"][0]).n_quantized == 8 + 24
    proc = run_cli("inspect", str(packed["int8-qwen2"][0]))
    assert proc.returncode == 0 and "int-quantized int8 symmetric channel" in proc.stdout, proc.stdout


def test_inspect_refused(packed: dict, tmp_path: Path) -> None:
    """A format bitconv does not read: inspect still describes it, and says why it is no source."""
    src = checks.variant(packed["pack4-qwen3"][0], tmp_path / "src", _group(format="marlin-24"))
    line = bitconv.inspect(src).quantization
    assert "group_0: int4 symmetric group 32 on Linear" in line and "format 'marlin-24' (2:4 sparse marlin)" in line


def test_reads_bitconv_written_checkpoint(floats: dict[str, Path], tmp_path: Path) -> None:
    """Both directions in one module family: hf2st's compressed-tensors int4 read back as a source is
    the stored codes times the stored scales, in float32."""
    from bitconv.convert.checkpoint import Checkpoint
    from bitconv.quant.compressed import ct_unpack

    out = tmp_path / "ct"
    bitconv.convert(floats["qwen2"], to="safetensors", format="compressed-tensors", quant="int4", block_size=32,
                    out=out, manifest=False)
    raw, ck = Checkpoint.open(out, dequantize=False), Checkpoint.open(out)
    n = 0
    for name, lt in raw.tensors.items():
        if name.endswith(".weight_packed"):
            base = name.removesuffix("_packed")
            scale = raw.tensors[base + "_scale"].load()
            q = ct_unpack(lt.load_raw(), 4, scale.shape[1] * 32).astype(np.float32)
            want = (q.reshape(len(q), -1, 32) * scale[:, :, None]).reshape(q.shape)
            assert np.array_equal(ck.tensors[base].load(), want), base
            n += 1
    assert n == 14


# --- bad input ------------------------------------------------------------------------------------

L0 = "model.layers.0.self_attn.q_proj"




def _weights(**kw: Any) -> Callable[[dict], None]:
    return lambda qc: qc["config_groups"]["group_0"]["weights"].update(kw)


def _group(**kw: Any) -> Callable[[dict], None]:
    return lambda qc: qc["config_groups"]["group_0"].update(kw)


def _top(**kw: Any) -> Callable[[dict], None]:
    return lambda qc: qc.update(kw)








BAD_API = [
    ("pack4-qwen3", _group(format="sparse-24-bitmask"), None, "format 'sparse-24-bitmask' (2:4 sparse (bitmask))"),
    ("pack4-qwen3", _group(format="nvfp4-pack-quantized"), None, "format 'nvfp4-pack-quantized' (NVFP4)"),
    ("pack4-qwen3", _top(sparsity_config={"format": "sparse-24-bitmask"}), None, "sparsity_config format"),
    ("pack4-qwen3", _weights(num_bits=3), None, "pack-quantized int3 with strategy 'group' is not supported"),
    ("pack4-qwen3", _weights(strategy="tensor"), None, "strategy 'tensor' is not supported"),
    ("fp8-qwen3", _weights(num_bits=4), None, "float-quantized float4"),
    ("pack4-qwen3", _top(quantization_status="frozen"), None, "quantization_status 'frozen'"),
    ("pack4-qwen3", None, checks.drop(f"{L0}.weight_scale"), f"{L0}: compressed-tensors weight_packed without {L0}.weight_sc"),
    ("pack4asym-qwen2", None, checks.drop(f"{L0}.weight_zero_point"), "is asymmetric but the checkpoint has no"),
    ("fp8-qwen3", None, checks.drop(f"{L0}.weight_scale"), f"{L0}.weight: a F8_E4M3 weight without {L0}.weight_scale"),
    ("pack4-qwen3", None, checks.set_tensor(f"{L0}.weight_shape", lambda a: a + 8),
     f"{L0}.weight_packed: shape (128, 8) disagrees with {L0}.weight_shape [136, 72]"),
    ("pack4-qwen3", _weights(group_size=16), None, "down_proj.weight_scale: shape (64, 6) disagrees"),
    ("fp8block-qwen3", None, checks.set_tensor(f"{L0}.weight_scale", lambda a: a[:2]), "weight_scale: shape (2, 2) disagrees"),
    ("pack4-qwen3", _top(ignore=["lm_head", L0]), None, f"{L0}: stored quantized, but quantization_config's ignore"),
    ("pack4-qwen3", _group(targets=["re:.*mlp\\..*"]), None,
     "layers.0.self_attn.k_proj: stored quantized, but no config group targets it (targets: re:.*mlp"),
    ("int8-qwen2", _group(format="pack-quantized"), None, "without model.layers.0.mlp.down_proj.weight_packed, which"),
    ("pack4gidx-qwen2", None, checks.drop(f"{L0}.weight_packed"), f"{L0}.weight_scale: without {L0}.weight_packed"),
]


@pytest.mark.parametrize("base,qc,edit,phrase", BAD_API, ids=[c[3][:40] for c in BAD_API])
def test_bad_input_api(base: str, qc: Any, edit: Any, phrase: str, packed: dict, tmp_path: Path) -> None:
    checks.assert_refused(checks.variant(packed[base][0], tmp_path / "src", qc, edit), phrase, tmp_path)


def test_bad_g_idx_cli(packed: dict, tmp_path: Path) -> None:
    """A g_idx out of range is found when its linear is read, after the output was started: one line
    on stderr, exit 2, nothing written."""
    name = "model.layers.1.mlp.down_proj.weight_g_idx"
    src = checks.variant(packed["pack4gidx-qwen2"][0], tmp_path / "src", None, checks.set_tensor(name, checks.g_idx_out_of_range))
    checks.assert_refused_cli(src, f"{name}: group 6 out of range (the scales hold 6 groups)", tmp_path)


# --- llama.cpp's converter and runtime, transformers -----------------------------------------------

#: each run compares one output type per scheme (tests/turns.py; BITCONV_TEST_TURN=all for the matrix)
IDENTITY = [(name, t) for i, name in enumerate(("pack4-qwen3", "fp8-qwen3", "fp8block-qwen3"))
            for t in share(("f16", "bf16", "q8_0"), 1, i)]


@pytest.fixture(scope="module")
def references(packed: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """llama.cpp's GGUFs of the fixtures, all made by one converter process."""
    return checks.llamacpp_references(packed, IDENTITY, tmp_path_factory.mktemp("llamacpp-compressed"))


@pytest.mark.slow
@pytest.mark.parametrize("name,outtype", IDENTITY)
def test_identical_to_llamacpp_converter(name: str, outtype: str, packed: dict, references: dict,
                                         tmp_path: Path) -> None:
    checks.assert_identical_to_reference(packed[name][0], outtype, references[(name, outtype)], tmp_path)


@pytest.mark.slow
def test_transformers_loads_and_agrees_with_llamacpp(packed: dict, tmp_path: Path) -> None:
    """transformers (through the compressed-tensors package, float32 on CPU) loads the pack-quantized
    checkpoint; its logits agree with llama.cpp running bitconv's f16 GGUF of it."""
    pytest.importorskip("llama_cpp")
    import torch
    from runtimes import cos, llama_last_logits
    from transformers import AutoModelForCausalLM

    src = packed["pack4-qwen3"][0]
    ids = [9707, 11, 1879, 0, 3555, 374, 279, 6722, 315, 9625]
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0, -1].float().numpy()
    out = tmp_path / "f16.gguf"
    bitconv.convert(src, "gguf", "f16", out, manifest=False)
    c = cos(llama_last_logits(out, ids), theirs)
    assert c >= 0.9999, c
