"""bitsandbytes checkpoints (transformers' `quant_method: "bitsandbytes"`) as conversion sources
(quant/bnb.py Bnb4bitScheme / BnbInt8Scheme through convert/dequant.py), on tiny Qwen2 / Qwen3
checkpoints quantized by bitsandbytes itself (tests/fixtures_bnb.py: transformers' quantize-on-load
+ save_pretrained on CPU, and quantize_4bit with a block size K does not divide):

- each dequantized linear, whole and in slabs of rows that start and end anywhere, equals
  bitsandbytes' own dequantization of the stored tensors (dequantize_4bit from QuantState.from_dict,
  int8_vectorwise_dequant); skipped modules pass through as float;
- a GGUF from the bnb checkpoint equals, tensor for tensor, the GGUF of a float checkpoint holding
  those weights, and the writer reads the linears a slab at a time;
- the f16 GGUF run by llama.cpp gives transformers' own logits for the bnb model (slow);
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

pytest.importorskip("bitsandbytes")

import fixtures_bnb as fb  # noqa: E402
import fixtures_quantized as fq  # noqa: E402
import quantized_checks as checks  # noqa: E402
from cli_helpers import read_gguf_tensors, run_cli  # noqa: E402

import bitconv  # noqa: E402

IDS = [9707, 11, 1879, 0, 3555, 374, 279, 6722, 315, 9625]
KINDS = ("nf4-dq", "fp4-skip", "int8", "fp4-dq-b128", "nf4-b256", "nf4-moe-b64")


@pytest.fixture(scope="module")
def sources(checkpoint_factory: Callable[..., Path]) -> dict[str, Path]:
    return {"qwen2": checkpoint_factory("qwen2", "bf16", 1, "hub"), "qwen3": checkpoint_factory("qwen3", "bf16", 2, "hub"),
            "qwen3moe": checkpoint_factory("qwen3moe", "bf16", 3, "hub")}


@pytest.fixture(scope="module")
def made(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name → (bnb checkpoint, the float checkpoint it was quantized from)."""
    root = tmp_path_factory.mktemp("bnb-sources")
    q2, q3 = sources["qwen2"], sources["qwen3"]
    return {
        # transformers on CPU; nf4 with double quant (compute float32, so transformers' logits are float32's)
        "nf4-dq": (fb.save_quantized(q2, root / "nf4-dq", "nf4", double=True), q2),
        "fp4-skip": (fb.save_quantized(q2, root / "fp4-skip", "fp4", skip=["lm_head", "down_proj"]), q2),
        "int8": (fb.save_quantized(q2, root / "int8", "int8"), q2),
        # bitsandbytes.functional directly: blocks of 128 / 256 straddle rows (K = 64, 192), float16 state
        "fp4-dq-b128": (fb.pack_4bit(q3, root / "fp4-dq-b128", "fp4", blocksize=128, double=True), q3),
        "nf4-b256": (fb.pack_4bit(q3, root / "nf4-b256", "nf4", blocksize=256, double=False), q3),
        # Qwen3-MoE: every expert's projections in nf4 (one tensor per expert, as the hub stores them)
        "nf4-moe-b64": (fb.pack_4bit(sources["qwen3moe"], root / "nf4-moe-b64", "nf4", blocksize=64, double=False),
                    sources["qwen3moe"]),
    }


@pytest.fixture(scope="module")
def refs(made: dict[str, tuple[Path, Path]]) -> dict[str, dict[str, np.ndarray]]:
    """bitsandbytes' own dequantization of each fixture's linears (the default torch kernel for the
    block sizes K does not divide: see fixtures_bnb.reference)."""
    return {k: fb.reference(made[k][0], native="-b" not in k) for k in made}




@pytest.mark.parametrize("name", KINDS)
def test_dequantized_weights(name: str, made: dict, refs: dict) -> None:
    from bitconv.convert.checkpoint import Checkpoint

    src, flt_dir = made[name]
    expected = refs[name]
    ck, flt = Checkpoint.open(src), Checkpoint.open(flt_dir)
    assert set(ck.tensors) == set(flt.tensors)  # every bnb part consumed, nothing added
    assert len(expected) == (12 if name == "fp4-skip" else 6 * 4 + 8 if name == "nf4-moe-b64" else 14)
    for hf, want in expected.items():
        lt = ck.tensors[hf]
        assert (lt.dtype, lt.shape) == ("F32", want.shape), hf
        assert lt.load().tobytes() == want.tobytes(), hf  # bit for bit: FP4's zeros are +0, as bitsandbytes'
        n = want.shape[0]
        cuts = sorted({0, n, *np.random.default_rng(n).integers(1, n, size=4).tolist()})
        assert np.array_equal(np.concatenate([lt.load_rows(a, b) for a, b in zip(cuts, cuts[1:])]), want), hf
        # within half a code step (NF4's widest gap 0.277, FP4's 1/3 of the absmax; int8's 1/127) of
        # the float weight: the right rows and blocks were decoded
        w = flt.tensors[hf].load().astype(np.float32)
        assert np.abs(want - w).max() <= np.abs(w).max() * (0.01 if name == "int8" else 0.17), hf
    for hf, lt in ck.tensors.items():  # skipped modules (lm_head, fp4-skip's down_proj), norms, embeddings
        if hf not in expected:
            assert np.array_equal(lt.load_raw(), flt.tensors[hf].load_raw()), hf


@pytest.mark.parametrize("fmt", ["bnb-nf4", "bnb-int8"])
def test_reads_bitconvs_own_bnb_output(fmt: str, sources: dict[str, Path], tmp_path: Path) -> None:
    """bitconv's own `hf2st --format bnb-nf4 / bnb-int8` output (byte-identical to transformers'
    save: tests/test_safetensors_bnb.py) read back as a source = bitsandbytes' dequantization."""
    from bitconv.convert.checkpoint import Checkpoint

    out = tmp_path / fmt
    bitconv.convert(sources["qwen2"], to="safetensors", format=fmt, out=out)
    want = fb.reference(out)
    ck = Checkpoint.open(out)
    assert len(want) == 14 and set(ck.tensors) == set(Checkpoint.open(sources["qwen2"]).tensors)
    for hf, w in want.items():
        assert ck.tensors[hf].load().tobytes() == w.tobytes(), hf




@pytest.mark.parametrize("name,qtype", [("nf4-dq", "f16"), ("int8", "q8_0"), ("fp4-dq-b128", "q8_0"),
                                        ("fp4-skip", "bf16"), ("nf4-moe-b64", "q8_0")])
def test_gguf_is_dequantize_then_encode(name: str, qtype: str, made: dict, refs: dict, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The GGUF of the bnb checkpoint = the GGUF of a float checkpoint of bitsandbytes' dequantized
    weights, tensor for tensor; the writer read the linears a slab of rows at a time."""
    slabs = checks.record_slabs(monkeypatch, 1 << 15)  # gate/up/down: 48 KiB in f32, 2 slabs each
    src = made[name][0]
    flt = fq.float_copy(src, tmp_path / "float", refs[name])
    ours = bitconv.convert(src, "gguf", qtype, tmp_path / "bnb.gguf", manifest=False)
    ref = bitconv.convert(flt, "gguf", qtype, tmp_path / "float.gguf", manifest=False)
    a, b = read_gguf_tensors(Path(ours.output)), read_gguf_tensors(Path(ref.output))
    assert list(a) == list(b) and a == b
    if "moe" not in name:  # experts are stacked into one GGUF tensor from whole per-expert reads
        assert any(hi - lo < n for lo, hi, n in slabs), "no linear was read a slab at a time"


@pytest.mark.slow
def test_llamacpp_logits_match_transformers_bnb(made: dict, refs: dict, tmp_path: Path) -> None:
    """f16 GGUFs run by llama.cpp against transformers on CPU: the nf4 model as bitsandbytes runs it
    (Linear4bit, compute float32), the int8 one as transformers dequantizes it (its CPU int8 matmul
    also quantizes activations, which a GGUF of the weights does not). Measured: cos 0.99998 (nf4),
    0.9999999 (int8)."""
    pytest.importorskip("llama_cpp")
    import torch
    from transformers import AutoModelForCausalLM

    from runtimes import cos, llama_last_logits

    for name in ("nf4-dq", "int8"):
        src = made[name][0]
        out = tmp_path / f"{name}.gguf"
        bitconv.convert(src, "gguf", "f16", out, manifest=False)
        model = AutoModelForCausalLM.from_pretrained(str(src), device_map="cpu", dtype=torch.float32).eval()
        if name == "nf4-dq":
            assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
        else:
            model = model.dequantize(dtype=torch.float32).float()  # the rest loads in bf16 beside int8
        with torch.no_grad():
            want = model(torch.tensor([IDS])).logits[0, -1].float().numpy()
        c = cos(llama_last_logits(out, IDS), want)
        assert c >= 0.9999, (name, c)


def test_inspect(made: dict) -> None:
    nf4 = bitconv.inspect(made["nf4-dq"][0])
    assert nf4.format == "bitsandbytes" and nf4.n_quantized == 14
    for phrase in ("bitsandbytes nf4", "bits 4", "double quant yes", "compute dtype float32"):
        assert phrase in nf4.quantization, nf4.quantization
    fp4 = bitconv.inspect(made["fp4-skip"][0])
    assert fp4.n_quantized == 12 and "bitsandbytes fp4" in fp4.quantization and "skipped lm_head, down_proj" in fp4.quantization
    int8 = bitconv.inspect(made["int8"][0])
    assert int8.n_quantized == 14 and "bitsandbytes LLM.int8, bits 8, group size per row" in int8.quantization
    proc = run_cli("inspect", str(made["nf4-dq"][0]))
    assert proc.returncode == 0 and "bitsandbytes nf4, bits 4" in proc.stdout, proc.stdout


# --- bad input ------------------------------------------------------------------------------------

L0 = "model.layers.0.self_attn.q_proj"
QS = f"{L0}.weight.quant_state.bitsandbytes__nf4"






def _bytes(name: str, data: bytes) -> Callable[[dict[str, Any]], None]:
    import torch

    return lambda t: t.__setitem__(name, torch.frombuffer(bytearray(data), dtype=torch.uint8).clone())


def _state(**change: Any) -> Callable[[dict[str, Any]], None]:
    state = {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [64, 64], "nested_blocksize": 256,
             "nested_dtype": "float32", "nested_offset": 0.3}
    return _bytes(QS, json.dumps({**state, **change}).encode())


def _cut(name: str, n: int) -> Callable[[dict[str, Any]], None]:
    return lambda t: t.__setitem__(name, t[name][:n].clone())


def _scale(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda t: t.__setitem__(name, t[name] * 2)


BAD = [
    ("nf4-dq", {"bnb_4bit_quant_type": "int4"}, None, "bnb_4bit_quant_type 'int4' is not supported"),
    ("nf4-dq", {"bnb_4bit_quant_type": "fp4"}, None, "bitsandbytes__nf4: nf4, but quantization_config says"),
    ("nf4-dq", {"load_in_4bit": False}, None, "exactly one of load_in_4bit and load_in_8bit"),
    ("nf4-dq", {"bnb_4bit_quant_storage": "bfloat16"}, None, "bnb_4bit_quant_storage 'bfloat16' is not supported"),
    ("nf4-dq", None, checks.drop(f"{L0}.weight.absmax"), f"without {L0}.weight.absmax"),
    ("nf4-dq", None, checks.drop(QS), f"{L0}: bitsandbytes weight.absmax with no weight.quant_state"),
    ("nf4-dq", None, checks.drop(f"{L0}.weight.quant_map"), f"{L0}.weight.quant_map"),
    ("nf4-dq", None, checks.drop(f"{L0}.weight.nested_absmax"), "has double-quant items (nested_blocksize, nested_offset) "
                                                           f"but the checkpoint holds only {L0}.weight.nested_quant_map"),
    ("nf4-dq", None, _bytes(QS, b'{"quant_type": "nf4", "blocksize": 6'), f"{QS}: not a bitsandbytes quant state (JSON)"),
    ("nf4-dq", None, _bytes(QS, b"\xff\xfe"), "not a bitsandbytes quant state (JSON)"),
    ("nf4-dq", None, _bytes(QS, b"[1, 2]"), "(a JSON list, not an object)"),
    ("nf4-dq", None, _state(blocksize=48), "blocksize 48 (expects 32 / 64"),
    ("nf4-dq", None, _state(dtype="int8"), "dtype 'int8'"),
    ("nf4-dq", None, _state(quant_type="fp4"), "quant_type 'fp4' (expects 'nf4'"),
    ("nf4-dq", None, _state(shape=[64, True]), "shape [64, True]"),
    ("nf4-dq", None, _state(nested_offset="NaN"), "nested_offset 'NaN'"),
    ("nf4-dq", None, _state(shape=[64, 32]), f"{L0}.weight: shape (2048, 1) disagrees"),
    ("nf4-dq", None, _cut(f"{L0}.weight.absmax", 32), f"{L0}.weight.absmax: shape (32,) disagrees"),
    ("nf4-dq", None, _scale(f"{L0}.weight.quant_map"), "not bitsandbytes' nf4 code"),
    ("int8", None, checks.drop(f"{L0}.SCB"), f"without {L0}.SCB"),  # the weight or weight_format, first met
    ("int8", None, lambda t: [t.pop(f"{L0}.SCB"), t.pop(f"{L0}.weight_format")],
     f"{L0}.weight: I8 bitsandbytes codes (64, 64) without {L0}.SCB"),
    ("nf4-dq", None, lambda t: [t.pop(k) for k in list(t) if k.startswith(f"{L0}.weight.")],
     f"{L0}.weight: U8 bitsandbytes codes (2048, 1) without {L0}.weight.absmax"),
    ("int8", None, _cut(f"{L0}.SCB", 32), f"{L0}.SCB: shape (32,) disagrees"),
    ("int8", None, _bytes(f"{L0}.weight_format", b"\x01"), f"{L0}.weight_format: [1]"),
]


@pytest.mark.parametrize("base,qc,edit,phrase", BAD, ids=[f"{i}-{c[3][:24]}" for i, c in enumerate(BAD)])
def test_bad_input(base: str, qc: Any, edit: Any, phrase: str, made: dict, tmp_path: Path) -> None:
    checks.assert_refused(checks.variant(made[base][0], tmp_path / "src", qc, edit), phrase, tmp_path)


def test_bad_input_cli(made: dict, tmp_path: Path) -> None:
    src = checks.variant(made["nf4-dq"][0], tmp_path / "src", None, _bytes(QS, b"not json"))
    checks.assert_refused_cli(src, f"{QS}: not a bitsandbytes quant state (JSON)", tmp_path)
