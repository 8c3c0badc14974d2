"""AWQ GEMM dequantization (bitconv/quant/awq.py) against an independent unpacking: AutoAWQ's pack loop
(order_map [0, 2, 4, 6, 1, 3, 5, 7]: nibble i of a word holds column order_map[i]) inverted by
scattering nibbles to their columns, where the reader gathers columns with the reverse order; and
against the float weights within half a step."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures_quantized import awq_quantize  # noqa: E402

from bitconv.quant import awq  # noqa: E402

ORDER_MAP = [0, 2, 4, 6, 1, 3, 5, 7]


def autoawq_pack(intweight: np.ndarray) -> np.ndarray:
    """WQLinear_GEMM.from_linear's packing of codes [rows, N] into int32 [rows, N/8], as written."""
    rows, n = intweight.shape
    qweight = np.zeros((rows, n // 8), dtype=np.uint32)
    for col in range(n // 8):
        for i in range(8):
            qweight[:, col] |= intweight[:, col * 8 + ORDER_MAP[i]].astype(np.uint32) << (i * 4)
    return qweight.view(np.int32)


def scatter_unpack(words: np.ndarray) -> np.ndarray:
    """Each nibble i of word c sent to column 8c + ORDER_MAP[i] (the reader instead gathers)."""
    rows, cols = words.shape
    out = np.zeros((rows, cols * 8), dtype=np.uint8)
    u = words.view(np.uint32)
    for i in range(8):
        out[:, np.arange(cols) * 8 + ORDER_MAP[i]] = (u >> np.uint32(4 * i)) & np.uint32(15)
    return out


def test_unpack_independent() -> None:
    codes = np.random.default_rng(0).integers(0, 16, size=(48, 64), dtype=np.uint8)
    packed = autoawq_pack(codes)
    assert np.array_equal(scatter_unpack(packed), codes)
    assert np.array_equal(awq.unpack_columns(packed), codes)


@pytest.mark.parametrize("group", [32, 64])
def test_dequantize(group: int) -> None:
    rng = np.random.default_rng(group)
    n, k = 40, 128
    w = rng.standard_normal((n, k)).astype(np.float32)
    q = awq_quantize(w, group)
    assert np.array_equal(q["qweight"], autoawq_pack(scatter_unpack(q["qweight"])))
    scales = q["scales"].astype(np.float32)  # [G, N]
    got = awq.dequantize(q["qweight"], q["qzeros"], scales, group)
    # independent: (q − z) · s from the scattered codes, per group along K
    codes, zeros = scatter_unpack(q["qweight"]).astype(np.int32), scatter_unpack(q["qzeros"]).astype(np.int32)
    groups = np.arange(k) // group
    ref = ((codes - zeros[groups]) * scales[groups]).astype(np.float32).T
    assert np.array_equal(got, ref)
    assert np.array_equal(got, q["expected"])
    step = np.repeat(scales, group, axis=0).T
    assert (np.abs(got - w) <= step / 2 * (1 + 1e-6) + 1e-7).all()
    # AutoAWQ computes (q − z) · s in f16: the float32 product rounds to the same f16
    f16 = ((codes - zeros[groups]).astype(np.float16) * q["scales"][groups]).T
    assert np.array_equal(got.astype(np.float16), f16)


def test_options_refused() -> None:
    from bitconv.errors import CheckpointError

    for qc, phrase in [({"version": "gemv"}, "version 'gemv'"), ({"bits": 8}, "bits 8"),
                       ({"zero_point": False}, "zero_point False")]:
        with pytest.raises(CheckpointError, match=phrase):
            awq.AwqScheme({"quant_method": "awq", "bits": 4, "group_size": 128, **qc})
