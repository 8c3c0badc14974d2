"""Every registered quant type against gguf-py's reference encoder (the bit-exact Python port of
ggml's C code): same bytes, the same bytes through the writer's row-parallel path, a per-type error
bound on the round trip, and `encoded_nbytes` equal to what `quantize` really produces."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitconv.convert.arch.base import SourceTensor
from bitconv.convert.plan import PlannedTensor
from bitconv.formats import gguf_writer
from bitconv.quant.base import Quantizer
from bitconv.quant.registry import all_quantizers

from bitconv.quant.gguf_native import GGUFNativeQuantizer

# the types gguf-py defines (its encoder is the oracle); ternary types have their own tests
QUANTIZERS = [q for q in all_quantizers() if issubclass(q, GGUFNativeQuantizer) and not q.ternary]
IDS = [q.name for q in QUANTIZERS]

#: |dequantize(quantize(x)) - x| <= REL * |x| (elementwise types) or BLOCK * amax(block) (block types),
#: derived from each format: q8_0 rounds to amax/127 (+ f16 scale rounding); q4_0/q5_0 map the largest
#: magnitude to -8/-16, so the opposite sign can clip by one step (amax/8, amax/16); q4_1/q5_1 round to
#: (max-min)/15 and /31 with max-min <= 2 amax.
REL = {"f32": 0.0, "f16": 2.0**-11, "bf16": 2.0**-8}
BLOCK = {"q8_0": 0.0045, "q4_0": 0.1300, "q4_1": 0.0700, "q5_0": 0.0650, "q5_1": 0.0350}
#: f16 scales of small blocks are subnormal (absolute step 2^-24): up to 128 quant steps times half of it
ATOL = 128 * 2.0**-25


def qtype_of(q: Quantizer) -> gguf.GGMLQuantizationType:
    if q.ggml_type is None:
        pytest.skip(f"{q.name} is not a GGUF type")
    return gguf.GGMLQuantizationType(q.ggml_type)


def reference(x: np.ndarray, qt: gguf.GGMLQuantizationType) -> np.ndarray:
    try:
        return gguf.quants.quantize(x, qt)
    except NotImplementedError:
        pytest.skip(f"gguf-py has no reference encoder for {qt.name}")


def row_len(q: Quantizer, blocks: int) -> int:
    return max(q.block_size, 1) * blocks * (1 if q.block_size > 1 else 32)


def awkward_matrix(seed: int, rows: int, k: int, scale: float) -> np.ndarray:
    """Random rows plus the ones that break quantizers: zeros, constants, a huge outlier, one-signed rows,
    tiny magnitudes, blocks alternating between +m and -m."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows + 9, k)) * scale).astype(np.float32)
    x[rows + 0] = 0.0
    x[rows + 1] = 3.5
    x[rows + 2] = -0.7
    x[rows + 3] = -np.abs(x[rows + 3])  # negative only
    x[rows + 4] = np.abs(x[rows + 4])  # positive only
    x[rows + 5, rng.integers(k)] = 3.0e4  # a huge outlier (still inside f16 range)
    x[rows + 6] = x[rows + 6] * 1e-30  # tiny: scales underflow f16
    x[rows + 7, ::2], x[rows + 7, 1::2] = 5.0, -5.0
    x[rows + 8, rng.integers(k)] = -2.0e4  # a huge negative outlier
    return x


def check_close(q: Quantizer, x: np.ndarray, y: np.ndarray) -> None:
    assert y.shape == x.shape and y.dtype == np.float32
    err = np.abs(y.astype(np.float64) - x.astype(np.float64))
    if q.name in REL:
        bound = REL[q.name] * np.abs(x) + (0 if q.name == "f32" else 2.0**-24)
    elif q.name in BLOCK:
        blocks = np.abs(x).reshape(-1, q.block_size)
        bound = (BLOCK[q.name] * blocks.max(axis=1, keepdims=True) + ATOL) * np.ones_like(blocks)
        bound = bound.reshape(x.shape)
    else:
        pytest.skip(f"no error bound known for {q.name}")
    worst = np.unravel_index(np.argmax(err - bound), x.shape)
    assert (err <= bound).all(), (f"{q.name}: |error| {err[worst]:.3g} > bound {bound[worst]:.3g} "
                                  f"at {worst} (x={x[worst]!r}, y={y[worst]!r})")


@pytest.mark.parametrize("qcls", QUANTIZERS, ids=IDS)
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 12), blocks=st.integers(1, 4),
       scale=st.sampled_from([1e-3, 0.02, 1.0, 40.0]))
def test_matches_gguf_reference(qcls: type[Quantizer], seed: int, rows: int, blocks: int, scale: float) -> None:
    q = qcls()
    qt = qtype_of(q)
    x = awkward_matrix(seed, rows, row_len(q, blocks), scale)
    got = q.quantize(x)
    want = reference(x, qt)
    assert got.data.tobytes() == want.tobytes()
    assert got.scales is None and got.trailer == b""
    assert got.nbytes == q.encoded_nbytes(x.shape) == want.nbytes
    check_close(q, x, q.dequantize(got, x.shape))
    # f16 sources (kept f16 as llama.cpp does) encode exactly as their f32 image
    x16 = np.clip(x, -60000, 60000).astype(np.float16)
    assert q.quantize(x16).data.tobytes() == q.quantize(x16.astype(np.float32)).data.tobytes()


@pytest.mark.parametrize("qcls", QUANTIZERS, ids=IDS)
def test_zero_rows_exact_constant_rows_close(qcls: type[Quantizer]) -> None:
    q = qcls()
    k = row_len(q, 2)
    x = np.zeros((4, k), np.float32)
    x[1], x[2], x[3] = 1.0, -2.0, 0.1
    y = q.dequantize(q.quantize(x), x.shape)
    np.testing.assert_array_equal(y[0], 0.0)
    check_close(q, x, y)
    # a constant row stays constant (one value per row, whatever the rounding)
    for r in (1, 2, 3):
        assert np.unique(y[r]).size == 1, (q.name, r, np.unique(y[r]))


@pytest.mark.parametrize("qcls", QUANTIZERS, ids=IDS)
@pytest.mark.parametrize("shape", [(1100, None), (3, 400, None)], ids=["2d-1100-rows", "3d-1200-rows"])
def test_row_parallel_path_identical(qcls: type[Quantizer], shape: tuple) -> None:
    """The writer's chunked, threaded encoding gives exactly the single-call bytes."""
    q = qcls()
    qt = qtype_of(q)
    k = row_len(q, 2)
    full = tuple(k if d is None else d for d in shape)
    x = np.random.default_rng(7).standard_normal(full).astype(np.float32)
    x[0, ...] = 0.0
    x.reshape(-1, k)[600] = 1e4  # an outlier in the second chunk
    pt = PlannedTensor(SourceTensor("blk.0.ffn_up.weight", full, []), q, q.encoded_nbytes(full))
    rows = x.reshape(-1, k)
    assert rows.shape[0] >= 2 * gguf_writer._ROWS_PER_CHUNK  # otherwise the parallel path is not taken
    single = gguf_writer.encode_tensor(pt, x, None, allow_nonfinite=False)
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = gguf_writer.encode_tensor(pt, x, pool, allow_nonfinite=False)
    assert parallel.tobytes() == single.tobytes()
    assert single.tobytes() == reference(rows, qt).tobytes()
    assert single.nbytes == pt.nbytes


@pytest.mark.parametrize("qcls", QUANTIZERS, ids=IDS)
@pytest.mark.parametrize("lead", [(), (1,), (5,), (2, 3), (4, 1, 2)], ids=lambda s: "x".join(map(str, s)) or "1d")
def test_encoded_nbytes_is_exact(qcls: type[Quantizer], lead: tuple[int, ...]) -> None:
    q = qcls()
    shape = (*lead, row_len(q, 3))
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    rows = x.reshape(-1, shape[-1])
    data = q.quantize(rows).data
    assert data.nbytes == q.encoded_nbytes(shape)
    if q.ggml_type is not None:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(q.ggml_type)]
        assert q.encoded_nbytes(shape) == x.size // block * size
        assert q.bits_per_weight == pytest.approx(size * 8 / block)


@pytest.mark.parametrize("qcls", [q for q in QUANTIZERS if q.block_size > 1], ids=[q.name for q in QUANTIZERS
                                                                                    if q.block_size > 1])
def test_can_quantize_needs_whole_blocks(qcls: type[Quantizer]) -> None:
    q = qcls()
    assert q.can_quantize((4, q.block_size * 2))
    assert not q.can_quantize((4, q.block_size * 2 + 1))


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
def test_nonfinite_refused_by_encoder() -> None:
    q = next(c for c in QUANTIZERS if c.name == "q8_0")()
    x = np.ones((2, 32), np.float32)
    x[1, 3] = np.nan
    pt = PlannedTensor(SourceTensor("blk.0.attn_q.weight", x.shape, [], hf_names=["model.layers.0.q.weight"]), q,
                       q.encoded_nbytes(x.shape))
    from bitconv.errors import QuantizationError

    with pytest.raises(QuantizationError, match=r"model\.layers\.0\.q\.weight: 1 NaN/Inf"):
        gguf_writer.encode_tensor(pt, x, None, allow_nonfinite=False)
    assert gguf_writer.encode_tensor(pt, x, None, allow_nonfinite=True).nbytes == pt.nbytes
