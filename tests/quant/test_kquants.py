"""K-quants (q2_k … q6_k) against ggml's own C reference encoders.

The oracle is `quantize_row_q{2,3,4,5,6}_K_ref` exported by the libggml-base that ships inside
llama-cpp-python (built without FMA contraction: plain SSE float32 mul/add, which bitconv's numpy
port reproduces operation by operation). Bytes must be identical, block for block."""
from __future__ import annotations

import ctypes
from pathlib import Path

import gguf
import numpy as np
import pytest

from bitconv.quant.kquants import nearest_int
from bitconv.quant.registry import get_quantizer

TYPES = ["q6_k", "q4_k", "q5_k", "q3_k", "q2_k"]
QK_K = 256


@pytest.fixture(scope="module")
def ggml():
    llama_cpp = pytest.importorskip("llama_cpp")
    path = Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"
    if not path.is_file():
        pytest.skip(f"no {path}")
    lib = ctypes.CDLL(str(path))
    for t in ("q6_K", "q4_K", "q5_K", "q3_K", "q2_K"):
        fn = getattr(lib, f"quantize_row_{t}_ref")
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lib


def reference(lib, x: np.ndarray, name: str) -> np.ndarray:
    """ggml's quantize_row_*_K_ref over x[rows, K] → [rows, K/256*type_size] bytes."""
    qt = gguf.GGMLQuantizationType[name.upper()]
    size = gguf.GGML_QUANT_SIZES[qt][1]
    x = np.ascontiguousarray(x, np.float32)
    flat = x.reshape(-1)
    out = np.zeros(flat.size // QK_K * size, np.uint8)
    getattr(lib, f"quantize_row_{name[:2]}_K_ref")(flat.ctypes.data, out.ctypes.data, flat.size)
    return out.reshape(*x.shape[:-1], x.shape[-1] // QK_K * size)


def random_blocks(seed: int, n: int) -> np.ndarray:
    """n blocks per distribution: gaussian at several scales, uniform, one-signed, heavy-tailed,
    single outliers, log-uniform magnitudes (f16 scales from subnormal to large), coarse grids (ties)."""
    rng = np.random.default_rng(seed)
    parts = [
        rng.standard_normal((n, QK_K)) * 0.02,
        rng.standard_normal((n, QK_K)) * 10.0,
        rng.uniform(-1, 1, (n, QK_K)),
        -np.abs(rng.standard_normal((n, QK_K))),
        np.abs(rng.standard_normal((n, QK_K))) + 0.5,
        rng.standard_t(2, (n, QK_K)),
        rng.standard_normal((n, QK_K)) * 10.0 ** rng.uniform(-12, 4, (n, 1)),
        np.round(rng.standard_normal((n, QK_K)) * 4) / 8,
    ]
    q = rng.standard_normal((n, QK_K))
    q[np.arange(n), rng.integers(0, QK_K, n)] *= 1000.0
    parts.append(q)
    return np.concatenate(parts).astype(np.float32)


def edge_blocks() -> np.ndarray:
    """The reference's special cases, one 256-value block each."""
    rng = np.random.default_rng(3)
    g = rng.standard_normal(QK_K).astype(np.float32)
    rows = [
        np.zeros(QK_K),                      # all zero: GROUP_MAX_EPS / max == min paths
        np.full(QK_K, 3.5), np.full(QK_K, -0.7), np.full(QK_K, 1e-3),   # constant
        -np.abs(g), np.abs(g),               # negative-only, positive-only
        g * 1e-30, g * 1e-20, g * 1e-9, g * 1e-6,  # tiny: f16 scales underflow / subnormal
        np.where(np.arange(QK_K) % 2, 5.0, -5.0),  # alternating
        np.concatenate([np.zeros(QK_K - 32), g[:32]]),  # zero sub-blocks next to live ones
        np.concatenate([g[:16] * 1e4, g[16:] * 1e-3]),  # one loud sub-block
        np.eye(1, QK_K, 77)[0] * 3.0e4,      # one huge value, the rest zero
        np.eye(1, QK_K, 200)[0] * -2.0e4,    # one huge negative value
        np.where(np.arange(QK_K) == 5, 1e4, g),  # a huge outlier in noise
        g * 6.0e4,                           # near the f16 range
        np.round(g * 2) / 2,                 # exact halves: rounding ties
        np.concatenate([np.full(128, -1.0), np.full(128, 2.0)]),
        np.tile(np.array([0.0, -0.0], np.float32), QK_K // 2),  # signed zeros
    ]
    return np.stack(rows).astype(np.float32)


@pytest.fixture(autouse=True)
def _default_simd():
    """Each test leaves the extension's k-quant dispatch as it found it."""
    from bitconv.accel import kernels

    ext = getattr(kernels, "_ext", None)
    before = ext.set_simd_k(True) if ext is not None else None
    if ext is not None:
        ext.set_simd_k(before)
    yield
    if ext is not None:
        ext.set_simd_k(before)


def quantizer(name: str, path: str):
    """The quantizer on one code path: "ext" (the C extension, with the AVX2 scale searches where the
    CPU has them), "ext-scalar" (the extension's scalar searches) or "numpy" (the fallback port)."""
    from bitconv.accel import kernels

    if path.startswith("ext") and not kernels.HAVE_EXTENSION:
        pytest.skip("C extension not built")
    if path == "ext" and not kernels._ext.HAVE_SIMD_K:
        pytest.skip("no AVX2 on this CPU: the scalar searches run (path ext-scalar)")
    q = get_quantizer(name)
    q.use_extension = path.startswith("ext")
    if q.use_extension:
        kernels._ext.set_simd_k(path == "ext")
    return q


PATHS = ["ext", "ext-scalar", "numpy"]


def test_nearest_int_is_ggml_rounding() -> None:
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999998, -3.7, 31.5, 0.0, -0.0], np.float32)
    assert nearest_int(v).tolist() == [0, 2, 2, 0, -2, 2, -4, 32, 0, 0]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", TYPES)
def test_byte_identical_to_ggml_random(ggml, name: str, path: str) -> None:
    x = random_blocks(11, 2048).reshape(-1, 4 * QK_K)  # 18432 blocks in 4608 rows of 1024
    got = quantizer(name, path).quantize(x).data
    want = reference(ggml, x, name)
    assert got.shape == want.shape and got.dtype == np.uint8
    size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]][1]
    bad = np.nonzero((got.reshape(-1, size) != want.reshape(-1, size)).any(axis=1))[0]
    assert bad.size == 0, f"{name}: {bad.size} of {got.size // size} blocks differ, first {bad[:8].tolist()}"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", TYPES)
def test_byte_identical_to_ggml_edge_cases(ggml, name: str, path: str) -> None:
    x = edge_blocks()
    got = quantizer(name, path).quantize(x).data
    want = reference(ggml, x, name)
    for i in range(x.shape[0]):
        assert got[i].tobytes() == want[i].tobytes(), f"{name}: edge block {i} differs"
    # the all-zero block is all zero bytes in every type
    assert not got[0].any()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", TYPES)
def test_shapes_chunks_and_f16_input(ggml, name: str, path: str) -> None:
    q = quantizer(name, path)
    x = random_blocks(5, 8).reshape(3, 6, 4 * QK_K)  # 3-D input, 72 blocks
    whole = q.quantize(x).data
    assert whole.shape == (3, 6, 4 * q.encoded_nbytes((QK_K,)))
    assert whole.nbytes == q.encoded_nbytes(x.shape)
    assert whole.tobytes() == reference(ggml, x, name).tobytes()
    rows = x.reshape(-1, 4 * QK_K)
    parts = np.concatenate([q.quantize(rows[:5]).data, q.quantize(rows[5:]).data])
    assert parts.tobytes() == whole.tobytes()
    x16 = x.astype(np.float16)
    assert q.quantize(x16).data.tobytes() == reference(ggml, x16.astype(np.float32), name).tobytes()
    assert q.can_quantize((4, 512)) and not q.can_quantize((4, 384)) and not q.can_quantize((4, 128))


#: relative RMSE (vs the input's RMS) of a gaussian round trip through gguf-py's dequantizer
MAX_REL_RMSE = {"q6_k": 0.02, "q5_k": 0.04, "q4_k": 0.08, "q3_k": 0.16, "q2_k": 0.31}  # measured 0.0178, 0.0363, 0.0715, 0.151, 0.297


@pytest.mark.parametrize("name", TYPES)
def test_round_trip_error(name: str) -> None:
    q = get_quantizer(name)
    x = (np.random.default_rng(2).standard_normal((64, 1024)) * 0.05).astype(np.float32)
    y = q.dequantize(q.quantize(x), x.shape)
    assert y.shape == x.shape and y.dtype == np.float32
    rel = float(np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x**2)))
    assert rel < MAX_REL_RMSE[name], f"{name}: relative RMSE {rel:.4f}"
    z = np.zeros((2, QK_K), np.float32)
    np.testing.assert_array_equal(q.dequantize(q.quantize(z), z.shape), 0.0)


def test_registered_types() -> None:
    for name, ft in [("q6_k", "MOSTLY_Q6_K"), ("q4_k", "MOSTLY_Q4_K_S"), ("q5_k", "MOSTLY_Q5_K_S"),
                     ("q3_k", "MOSTLY_Q3_K_S"), ("q2_k", "MOSTLY_Q2_K")]:
        q = get_quantizer(name)
        qt = gguf.GGMLQuantizationType[name.upper()]
        assert q.ggml_type == int(qt) and q.block_size == QK_K
        assert q.file_type == int(gguf.LlamaFileType[ft])
        assert q.bits_per_weight == gguf.GGML_QUANT_SIZES[qt][1] * 8 / QK_K
    assert get_quantizer("q6_k").bits_per_weight == 6.5625
