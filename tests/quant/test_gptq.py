"""GPTQ dequantization (bitconv/quant/gptq.py) against independent formulations of the layout:
AutoGPTQ's own packing loop written out (qlinear_cuda_old.pack, 3 bits included), the test packer's
bit-array packing, and the float weights within half a step."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures_quantized import gptq_quantize, pack_bits  # noqa: E402

from bitconv.quant import gptq  # noqa: E402
from bitconv.quant.schemes import unpack_words  # noqa: E402


def autogptq_pack_rows(intweight: np.ndarray, bits: int) -> np.ndarray:
    """AutoGPTQ's pack of codes [K, N] into qweight [K·bits/32, N], its loop as written (uint32)."""
    k, n = intweight.shape
    iw = intweight.astype(np.uint32)
    qweight = np.zeros((k * bits // 32, n), dtype=np.uint32)
    i = row = 0
    while row < qweight.shape[0]:
        if bits in (2, 4, 8):
            for j in range(i, i + 32 // bits):
                qweight[row] |= iw[j] << (bits * (j - i))
            i += 32 // bits
            row += 1
        else:  # bits == 3
            for j in range(i, i + 10):
                qweight[row] |= iw[j] << (3 * (j - i))
            i += 10
            qweight[row] |= iw[i] << 30
            row += 1
            qweight[row] |= (iw[i] >> 2) & 1
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= iw[j] << (3 * (j - i) + 1)
            i += 10
            qweight[row] |= iw[i] << 31
            row += 1
            qweight[row] |= (iw[i] >> 1) & 0x3
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= iw[j] << (3 * (j - i) + 2)
            i += 10
            row += 1
    return qweight.view(np.int32)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_unpack_equals_autogptq_pack(bits: int) -> None:
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=(64, 24), dtype=np.uint8)
    packed = autogptq_pack_rows(codes, bits)
    assert np.array_equal(packed, pack_bits(codes.T, bits).T), "the test packer disagrees with AutoGPTQ's loop"
    assert np.array_equal(unpack_words(packed, bits, axis=0), codes)
    assert np.array_equal(unpack_words(packed.T.copy(), bits, axis=1), codes.T)


@pytest.mark.parametrize("bits,sym,desc_act,v1,group", [
    (4, True, False, True, 32), (4, False, True, True, 16), (3, False, True, True, 32), (2, True, False, False, 32),
    (8, False, False, False, -1), (8, True, True, True, 32),
])
def test_dequantize_matches_packer(bits: int, sym: bool, desc_act: bool, v1: bool, group: int) -> None:
    rng = np.random.default_rng(7)
    n, k = 64, 128
    w = rng.standard_normal((n, k)).astype(np.float32)
    perm = rng.permutation(k) if desc_act else None
    q = gptq_quantize(w, bits, group, sym, perm, v1)
    scales = q["scales"].astype(np.float32)
    got = gptq.dequantize(q["qweight"], q["qzeros"], scales, q["g_idx"].astype(np.int64), bits, 1 if v1 else 0)
    assert got.dtype == np.float32 and got.shape == (n, k)
    assert np.array_equal(got, q["expected"])
    # groups as runs of columns (broadcast, no gather): g_idx = k // group given, or left out
    size = k if group == -1 else group
    for idx in (q["g_idx"], None):
        ran = gptq.dequantize(q["qweight"], q["qzeros"], scales, idx, bits, 1 if v1 else 0, size)
        if desc_act and idx is None:  # act-order without its g_idx is another weight
            assert not np.array_equal(ran, q["expected"])
        else:
            assert np.array_equal(ran, q["expected"])
    # the float weights within half a step, but where the grid clips (GPTQ's symmetric grid puts +max at
    # 2^(bits-1) - 1/2 steps; v1 cannot store a zero point of 0): there within one step
    step = scales[q["g_idx"]].T
    err = np.abs(got - w)
    assert (err <= step * (1 + 1e-6)).all()
    assert (err <= step / 2 * (1 + 1e-6)).mean() > 0.97
    if desc_act:  # act-order really scatters the groups
        assert len(set(np.diff(q["g_idx"]).tolist())) > 2


def test_v1_offset_is_llamacpp_formula() -> None:
    """llama.cpp's dequant_gptq: (scales[g_idx] · (w − (z + 1))[g_idx]).T for checkpoint_format gptq."""
    rng = np.random.default_rng(1)
    qweight = rng.integers(-2**31, 2**31, size=(8, 16), dtype=np.int64).astype(np.int32)  # K = 64, N = 16
    qzeros = rng.integers(-2**31, 2**31, size=(2, 2), dtype=np.int64).astype(np.int32)
    scales = rng.standard_normal((2, 16)).astype(np.float16).astype(np.float32)
    g_idx = rng.integers(0, 2, size=64)
    shifts = np.arange(0, 32, 4)
    w = ((qweight.astype(np.int64)[:, None, :] >> shifts[None, :, None]) & 15).reshape(64, 16)
    z = ((qzeros.astype(np.int64)[:, :, None] >> shifts[None, None, :]) & 15).reshape(2, 16) + 1
    ref = (scales[g_idx] * (w - z[g_idx])).astype(np.float32).T
    assert np.array_equal(gptq.dequantize(qweight, qzeros, scales, g_idx, 4, 1), ref)
    assert np.array_equal(gptq.dequantize(qweight, qzeros, scales, g_idx, 4, 0),
                          (scales[g_idx] * (w - z[g_idx] + 1)).astype(np.float32).T)


def test_options_refused() -> None:
    from bitconv.errors import CheckpointError

    for qc, phrase in [({"bits": 5}, "bits 5"), ({"bits": 4, "checkpoint_format": "marlin"}, "checkpoint_format 'marlin'"),
                       ({"bits": 4, "group_size": 0}, "group_size 0"), ({"bits": "4"}, "bits must be an integer")]:
        with pytest.raises(CheckpointError, match=phrase):
            s = gptq.GptqScheme({"quant_method": "gptq", **qc})
            s.group_size(128)
