"""bitsandbytes 4-bit (NF4 / FP4, double-quantized absmax) and LLM.int8 dequantization (quant/bnb.py)
against bitsandbytes' own functions on CPU, bit for bit: its tables, `quantize_4bit` /
`dequantize_4bit` (the CPU library where it is right; its default torch kernel for block sizes that
do not divide K, where the 0.50 AVX-512 CPU kernel indexes absmax per row), `quantize_blockwise` /
`dequantize_blockwise` for the nested absmax, `int8_vectorwise_dequant`; a linear read in slabs of
rows through the source reader equals it read whole; the packed quant state is parsed as JSON and
refused in one line when it is not one.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

bnb = pytest.importorskip("bitsandbytes")
import torch  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402

from bitconv.convert.dequant import _SlabReader  # noqa: E402
from bitconv.convert.lazy import LazyTensor  # noqa: E402
from bitconv.errors import CheckpointError  # noqa: E402
from bitconv.quant.bnb import (FP4_CODE, NF4_CODE, Bnb4bitScheme, dequantize_4bit, dequantize_blockwise,  # noqa: E402
                               int8_dequantize, parse_quant_state, round_to)

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def test_tables_are_bitsandbytes() -> None:
    assert NF4_CODE.tobytes() == F.get_4bit_type("nf4", "cpu").numpy().tobytes()
    assert FP4_CODE.tobytes() == F.get_4bit_type("fp4", "cpu").numpy().tobytes()  # +0 at code 8 too


def test_round_to_is_torch_cast() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(4096).astype(np.float32) * 10.0 ** rng.integers(-8, 5, 4096),
                        np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, 65519.0, 65520.0, 1e-8, 1 + 2**-8, 1 + 3 * 2**-8],
                                 np.float32)]).astype(np.float32)
    for dt, tdt in DTYPES.items():
        want = torch.from_numpy(x).to(tdt).float().numpy()
        assert round_to(x.copy(), dt).tobytes() == want.tobytes(), dt
    nan = round_to(np.array([np.nan], np.float32), "BF16")
    assert np.isnan(nan).all() and nan.view(np.uint32)[0] & 0xFFFF == 0


def _reference(q: torch.Tensor, st: F.QuantState, native: bool) -> np.ndarray:
    if native:
        return F.dequantize_4bit(q, st).float().numpy()
    from bitsandbytes.backends.default import ops
    from bitsandbytes.backends.utils import _get_4bit_code

    absmax = F.dequantize_blockwise(st.absmax, st.state2) + st.offset if st.nested else st.absmax
    compute = getattr(ops._dequantize_4bit_compute, "__wrapped__", ops._dequantize_4bit_compute)
    return compute(q.reshape(-1), absmax.float(), _get_4bit_code(st.quant_type, q.device), st.blocksize,
                   st.shape, st.dtype).float().numpy()


def _mine(q: torch.Tensor, st: F.QuantState, dt: str) -> np.ndarray:
    absmax = st.absmax.numpy()
    if st.nested:
        absmax = dequantize_blockwise(absmax, st.state2.absmax.numpy(), st.state2.code.numpy(), st.state2.blocksize)
        absmax += np.float32(st.offset.item())
    n, k = st.shape
    code = NF4_CODE if st.quant_type == "nf4" else FP4_CODE
    return dequantize_4bit(q.numpy(), absmax, code, st.blocksize, n * k, dt).reshape(n, k)


@pytest.mark.parametrize("quant", ["nf4", "fp4"])
@pytest.mark.parametrize("dt", list(DTYPES))
def test_dequantize_4bit_is_bitsandbytes(quant: str, dt: str) -> None:
    """Shapes with K a multiple of the block (the CPU library's kernel), and not (partial last block,
    blocks across rows, odd K: the default kernel); with and without double quant (5 nested blocks
    for the 300×256 tensor); zero blocks and an exact zero."""
    rng = np.random.default_rng(1)
    for shape, block in (((300, 256), 64), ((64, 192), 64), ((33, 100), 128), ((7, 35), 64), ((5, 64), 256),
                         ((48, 64), 4096)):
        w = rng.standard_normal(shape).astype(np.float32) * 0.05
        w[:2] = 0  # all-zero blocks
        for double in (False, True):
            q, st = F.quantize_4bit(torch.from_numpy(w).to(DTYPES[dt]), blocksize=block, quant_type=quant,
                                    compress_statistics=double)
            want = _reference(q, st, native=shape[1] % block == 0)
            got = _mine(q, st, dt)
            assert got.tobytes() == want.tobytes(), (shape, block, double)


def test_int8_is_bitsandbytes() -> None:
    rng = np.random.default_rng(2)
    w = torch.from_numpy(rng.standard_normal((48, 80)).astype(np.float32)).half()
    cb, scb, _ = F.int8_vectorwise_quant(w)
    want = F.int8_vectorwise_dequant(cb, scb).numpy()
    assert int8_dequantize(cb.numpy(), scb.numpy()).tobytes() == want.tobytes()


def _lazy(name: str, a: np.ndarray, dtype: str) -> LazyTensor:
    return LazyTensor(name, dtype, tuple(a.shape), a.nbytes, Path("mem"), lambda: a)


@pytest.mark.parametrize("shape,block", [((300, 256), 64), ((96, 100), 128), ((40, 35), 64)])
def test_slabs_equal_whole(shape: tuple[int, int], block: int) -> None:
    """The source reader's slabs (any start and end; aligned internally to whole blocks, and for
    double quant to the right nested blocks) = the whole tensor = bitsandbytes."""
    rng = np.random.default_rng(3)
    w = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(torch.bfloat16)
    q, st = F.quantize_4bit(w, blocksize=block, quant_type="nf4", compress_statistics=True)
    tensors = {f"weight.{k}": v for k, v in st.as_dict(packed=True).items()}
    parts = {"weight": _lazy("m.weight", q.numpy(), "U8")}
    for k, v in tensors.items():
        parts[k] = _lazy("m." + k, v.numpy(), {torch.uint8: "U8", torch.float32: "F32"}[v.dtype])
    qc = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
          "bnb_4bit_use_double_quant": True}
    layout = Bnb4bitScheme(qc).layout("m", parts)
    assert layout.shape == shape
    reader = _SlabReader("m", layout, parts)
    want = _reference(q, st, native=shape[1] % block == 0)
    assert reader.rows(0, shape[0]).tobytes() == want.tobytes()
    cuts = sorted({0, shape[0], *rng.integers(1, shape[0], size=6).tolist()})
    got = np.concatenate([reader.rows(a, b) for a, b in zip(cuts, cuts[1:])])
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("raw,phrase", [
    (b"\x80abc", "not a bitsandbytes quant state (JSON)"),
    (b'{"quant_type": "nf4"', "not a bitsandbytes quant state (JSON)"),
    (b"42", "(a JSON int, not an object)"),
    (json.dumps({"quant_type": "fp4", "blocksize": 64, "dtype": "bfloat16", "shape": [2, 64]}).encode(),
     "quant_type 'fp4' (expects 'nf4'"),
    (json.dumps({"quant_type": "nf4", "blocksize": True, "dtype": "bfloat16", "shape": [2, 64]}).encode(),
     "blocksize True"),
    (json.dumps({"quant_type": "nf4", "blocksize": 64, "dtype": "float64", "shape": [2, 64]}).encode(),
     "dtype 'float64'"),
    (json.dumps({"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [2, 64, 1]}).encode(),
     "shape [2, 64, 1]"),
    (json.dumps({"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [2, 64],
                 "nested_blocksize": 256, "nested_dtype": "float32"}).encode(), "nested_offset None"),
])
def test_quant_state_refused(raw: bytes, phrase: str) -> None:
    with pytest.raises(CheckpointError) as e:
        parse_quant_state("m", np.frombuffer(raw, np.uint8), "nf4")
    assert phrase in str(e.value) and str(e.value).startswith("m.weight.quant_state.bitsandbytes__nf4: ")
    assert "\n" not in str(e.value)


def test_quant_state_parsed() -> None:
    _, st = F.quantize_4bit(torch.zeros(4, 64), blocksize=128, quant_type="nf4", compress_statistics=True)
    raw = st.as_dict(packed=True)["quant_state.bitsandbytes__nf4"].numpy()
    state = parse_quant_state("m", raw, "nf4")
    assert state["shape"] == [4, 64] and state["blocksize"] == 128 and state["nested_blocksize"] == 256
    assert state["dtype"] == "float32" and state["nested_dtype"] == "float32"
