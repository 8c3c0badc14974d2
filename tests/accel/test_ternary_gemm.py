"""The reference ternary matmul: extension (AVX2 and portable C) and numpy give the same bits, and
both match an independent int64 reference built here from the I2_S layout description."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitconv.accel import ternary
from bitconv.quant.i2s import pack_i2s

try:
    from bitconv.accel import _ternary as ext
except ImportError:
    ext = None

needs_ext = pytest.mark.skipif(not ternary.HAVE_TERNARY_EXTENSION, reason="ternary extension not built")
PATHS = [pytest.param(True, marks=needs_ext, id="ext"), pytest.param(False, id="numpy")]


# --- independent reference, from the layout: groups of 128 values → 32 bytes; byte j holds values
# --- j, 32+j, 64+j, 96+j in bit pairs 7–6, 5–4, 3–2, 1–0; code = value + 1.

def ref_pack(values: np.ndarray) -> np.ndarray:
    flat = values.reshape(-1).astype(np.int64) + 1
    out = np.zeros(flat.size // 4, np.int64)
    for i in range(128):  # position inside the group
        byte, pair = i % 32, i // 32
        out[byte::32] |= flat[i::128] << (6 - 2 * pair)
    return out.astype(np.uint8)


def ref_unpack(packed: np.ndarray, M: int, K: int) -> np.ndarray:
    b = packed.reshape(-1).astype(np.int64)
    out = np.empty(M * K, np.int64)
    for i in range(128):
        out[i::128] = ((b[i % 32::32] >> (6 - 2 * (i // 32))) & 3) - 1
    return out.reshape(M, K)


def ref_gemm(packed, w_scale, x_q, act_scale, M, K) -> np.ndarray:
    acc = x_q.astype(np.int64) @ ref_unpack(packed, M, K).T  # exact
    return (acc.astype(np.float32) / act_scale[:, None]) * np.float32(w_scale)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


def random_case(rng: np.random.Generator, n: int, M: int, K: int):
    values = rng.integers(-1, 2, (M, K)).astype(np.int8)
    x = (rng.standard_normal((n, K)) * rng.choice([1e-3, 1.0, 50.0])).astype(np.float32)
    return values, ref_pack(values), x


def test_reference_layout_is_the_writers():
    values = np.random.default_rng(0).integers(-1, 2, (3, 256)).astype(np.int8)
    assert np.array_equal(ref_pack(values), pack_i2s(values).reshape(-1))
    assert np.array_equal(ref_unpack(ref_pack(values), 3, 256), values)


@pytest.mark.parametrize("use_ext", PATHS)
@pytest.mark.parametrize("n", [1, 7])
# (301, 1024) with n = 7 is large enough for the extension's parallel (prange) path
@pytest.mark.parametrize("M,K", [(1, 128), (13, 256), (37, 384), (64, 640), (101, 1024), (301, 1024)])
def test_gemm_matches_reference(use_ext, n, M, K):
    rng = np.random.default_rng(M * 1000 + K + n)
    values, packed, x = random_case(rng, n, M, K)
    assert np.array_equal(ternary.unpack_i2s(packed, M, K, use_extension=use_ext), values)
    q, s = ternary.quantize_activations(x, use_extension=use_ext)
    w_scale = float(rng.uniform(0.01, 2))
    out = ternary.ternary_gemm(packed, w_scale, q, s, M, K, use_extension=use_ext)
    assert out.dtype == np.float32 and out.shape == (n, M)
    assert np.array_equal(bits(out), bits(ref_gemm(packed, w_scale, q, s, M, K)))
    ideal = (q.astype(np.float64) @ values.T.astype(np.float64)) / s[:, None].astype(np.float64) * np.float32(w_scale)
    np.testing.assert_allclose(out, ideal, rtol=1e-6, atol=1e-30)


@needs_ext
@pytest.mark.parametrize("n", [1, 3, 4, 7, 9])
def test_extension_paths_identical_on_any_bytes(n):
    """Random bytes include the never-written bit pair 3; every path must still agree exactly."""
    rng = np.random.default_rng(n)
    M, K = 45, 512
    packed = rng.integers(0, 256, M * K // 4, dtype=np.uint8)
    q = rng.integers(-128, 128, (n, K), dtype=np.int8)  # extremes included
    s = rng.uniform(0.1, 1e4, n).astype(np.float32)
    want = ternary.ternary_gemm(packed, 0.3, q, s, M, K, use_extension=False)
    assert np.array_equal(bits(want), bits(ref_gemm(packed, 0.3, q, s, M, K)))
    for simd in (True, False):
        assert np.array_equal(bits(ext.ternary_gemm(packed, 0.3, q, s, M, K, simd=simd)), bits(want))
    assert np.array_equal(ternary.unpack_i2s(packed, M, K), ternary.unpack_i2s(packed, M, K, use_extension=False))


@pytest.mark.parametrize("use_ext", PATHS)
def test_accepts_readonly_2d_payload(use_ext):
    rng = np.random.default_rng(5)
    values, packed, x = random_case(rng, 2, 8, 256)
    ro = packed.reshape(8, 64)
    ro.setflags(write=False)  # GGUF tensors come from a read-only mmap
    q, s = ternary.quantize_activations(x)
    out = ternary.ternary_gemm(ro, 1.0, q, s, 8, 256, use_extension=use_ext)
    assert np.array_equal(bits(out), bits(ref_gemm(packed, 1.0, q, s, 8, 256)))
    assert ternary.ternary_gemm(ro, 1.0, q[:0], s[:0], 8, 256, use_extension=use_ext).shape == (0, 8)


# --- activation quantization ---

def numpy_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """transformers' formula with torch's float32 semantics: `127 / t` is `t.reciprocal() * 127`."""
    s = (np.float32(1) / np.maximum(np.abs(x).max(axis=1), np.float32(1e-5))) * np.float32(127)
    return np.clip(np.rint(x * s[:, None]), -128, 127).astype(np.int8), s


@pytest.mark.parametrize("use_ext", PATHS)
def test_quantize_edge_cases(use_ext):
    x = np.zeros((6, 256), np.float32)
    x[1, :3] = [3.4e38, -3e38, 1.0]  # huge: no overflow, scale tiny
    x[2, :8] = [127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5]  # scale exactly 1 → ties to even
    x[3, :2] = [1e-6, -4e-6]  # below the 1e-5 floor
    x[4, :2] = [np.float32(1e-5), -1e-45]  # exactly the floor, a subnormal
    x[5] = np.linspace(-7, 5, 256, dtype=np.float32)
    q, s = ternary.quantize_activations(x, use_extension=use_ext)
    assert q.dtype == np.int8 and s.dtype == np.float32
    assert s[0] == (np.float32(1) / np.float32(1e-5)) * np.float32(127) and not q[0].any()
    assert list(q[1, :3]) == [127, -112, 0]
    assert s[2] == 1 and list(q[2, :8]) == [127, 0, 2, 2, 0, -2, -2, 126]
    assert s[3] == s[0] and list(q[3, :2]) == [13, -51]
    assert s[4] == s[0] and list(q[4, :2]) == [127, 0]
    # max|x| maps to ±127: -128 is never produced from finite input (the clip is there for parity)
    assert q[5].min() == -127 and q.min() >= -127
    want_q, want_s = numpy_absmax(x)
    assert np.array_equal(q, want_q) and np.array_equal(bits(s), bits(want_s))
    if use_ext:
        pq, ps = ext.quantize_activations(x, simd=False)
        assert np.array_equal(pq, want_q) and np.array_equal(bits(ps), bits(want_s))


@needs_ext
@pytest.mark.parametrize("K", [1, 7, 8, 13, 300])
def test_quantize_any_width(K):
    """Activations need not be a multiple of 128 (or of the AVX2 width): tails go the scalar way."""
    rng = np.random.default_rng(K)
    x = (rng.standard_normal((5, K)) * 3).astype(np.float32)
    x[1] = np.round(rng.uniform(-120, 120, K) * 2) / 2
    x[1, 0] = 127  # scale exactly 1: the halves are exact ties
    want_q, want_s = numpy_absmax(x)
    for simd in (True, False):
        q, s = ext.quantize_activations(x, simd=simd)
        assert np.array_equal(q, want_q) and np.array_equal(bits(s), bits(want_s))


@pytest.mark.parametrize("use_ext", PATHS)
def test_quantize_matches_transformers_formula(use_ext):
    """transformers' BitLinear.activation_quant, run in float32 torch."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((9, 640)) * np.logspace(-6, 3, 9)[:, None]).astype(np.float32)
    x[4, :64] = np.round(x[4, :64])  # some exact ties once scaled
    t = torch.from_numpy(x)
    scale = 127 / t.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
    want = (t * scale).round().clamp(-128, 127).to(torch.int8)
    q, s = ternary.quantize_activations(x, use_extension=use_ext)
    assert np.array_equal(q, want.numpy()) and np.array_equal(bits(s), bits(scale[:, 0].numpy()))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 9), m=st.integers(1, 70), k_groups=st.integers(1, 5),
       log_mag=st.floats(-8, 30), seed=st.integers(0, 2**31 - 1))
def test_property_paths_agree(n, m, k_groups, log_mag, seed):
    rng = np.random.default_rng(seed)
    K = 128 * k_groups
    x = (rng.standard_normal((n, K)) * 10.0**log_mag).astype(np.float32)
    x[rng.random((n, K)) < 0.1] = 0
    packed = ref_pack(rng.integers(-1, 2, (m, K)))
    q, s = ternary.quantize_activations(x, use_extension=False)
    want_q, want_s = numpy_absmax(x)
    assert np.array_equal(q, want_q) and np.array_equal(bits(s), bits(want_s))
    w_scale = float(rng.uniform(1e-3, 10))
    want = ref_gemm(packed, w_scale, q, s, m, K)
    assert np.array_equal(bits(ternary.ternary_gemm(packed, w_scale, q, s, m, K, use_extension=False)), bits(want))
    if ternary.HAVE_TERNARY_EXTENSION:
        for simd in (True, False):
            eq, es = ext.quantize_activations(x, simd=simd)
            assert np.array_equal(eq, q) and np.array_equal(bits(es), bits(s))
        assert np.array_equal(bits(ternary.ternary_gemm(packed, w_scale, q, s, m, K)), bits(want))
        assert np.array_equal(bits(ext.ternary_gemm(packed, w_scale, q, s, m, K, simd=False)), bits(want))


# --- bad input ---

def _good():
    return np.zeros(4 * 256 // 4, np.uint8), np.zeros((2, 256), np.int8), np.ones(2, np.float32)


@pytest.mark.parametrize("use_ext", PATHS)
@pytest.mark.parametrize("case,match", [
    ("packed_dtype", "packed must be uint8"),
    ("packed_size", "M\\*K/4 = 256"),
    ("packed_trailer", "without its 32-byte scale trailer"),
    ("k_not_128", "multiple of 128"),
    ("m_zero", "M >= 1"),
    ("xq_dtype", "x_q must be int8"),
    ("xq_ndim", "x_q must be 2-D"),
    ("xq_k", "second dimension must be K"),
    ("scale_dtype", "act_scale must be float32"),
    ("scale_len", "act_scale has 3 entries"),
])
def test_gemm_bad_input(use_ext, case, match):
    p, q, s = _good()
    M, K = 4, 256
    if case == "packed_dtype":
        p = p.astype(np.int8)
    elif case == "packed_size":
        p = p[:-1]
    elif case == "packed_trailer":
        p = np.zeros(p.size + 32, np.uint8)
    elif case == "k_not_128":
        M, K = 8, 160
    elif case == "m_zero":
        M = 0
    elif case == "xq_dtype":
        q = q.astype(np.int16)
    elif case == "xq_ndim":
        q = q[0]
    elif case == "xq_k":
        q = np.zeros((2, 128), np.int8)
    elif case == "scale_dtype":
        s = s.astype(np.float64)
    elif case == "scale_len":
        s = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=match):
        ternary.ternary_gemm(p, 1.0, q, s, M, K, use_extension=use_ext)


@pytest.mark.parametrize("use_ext", PATHS)
def test_quantize_and_unpack_bad_input(use_ext):
    with pytest.raises(ValueError, match="x must be float32"):
        ternary.quantize_activations(np.zeros((2, 8)), use_extension=use_ext)
    with pytest.raises(ValueError, match="x must be 2-D"):
        ternary.quantize_activations(np.zeros(8, np.float32), use_extension=use_ext)
    for bad in (np.inf, np.nan):
        x = np.zeros((3, 8), np.float32)
        x[1, 5] = bad
        with pytest.raises(ValueError, match="row 1 holds inf or NaN"):
            ternary.quantize_activations(x, use_extension=use_ext)
    with pytest.raises(ValueError, match="M\\*K/4"):
        ternary.unpack_i2s(np.zeros(10, np.uint8), 1, 128, use_extension=use_ext)


@needs_ext
def test_extension_checks_sizes_itself():
    """The compiled functions are memory-safe when called directly, without ternary.py's checks."""
    p, q, s = _good()
    with pytest.raises(ValueError):
        ext.ternary_gemm(p[:-1], 1.0, q, s, 4, 256)
    with pytest.raises(ValueError):
        ext.ternary_gemm(p, 1.0, q, s[:1], 4, 256)
    with pytest.raises(ValueError):
        ext.ternary_gemm(p, 1.0, q, s, 4, 200)
    with pytest.raises(ValueError):
        ext.unpack_i2s(p, 5, 256)


@pytest.mark.parametrize("use_ext", PATHS)
@pytest.mark.parametrize("n", [1, 16, 64])
def test_extremes_all_127_activations_and_zero_weights(use_ext, n):
    """Saturated activations (all ±127) against all-±1 rows (the largest |int32| sums) and an
    all-zero weight matrix: exact against the int64 reference."""
    M, K = 96, 2560
    rng = np.random.default_rng(n)
    values = np.where(rng.random((M, K)) < 0.5, -1, 1).astype(np.int8)
    values[:32] = 1  # rows whose sums reach ±127·K
    q = np.where(rng.random((n, K)) < 0.5, -127, 127).astype(np.int8)
    q[0] = 127
    s = np.full(n, 1.0, np.float32)
    for w in (values, np.zeros_like(values)):
        packed = ref_pack(w)
        out = ternary.ternary_gemm(packed, 1.0, q, s, M, K, use_extension=use_ext)
        exact = (q.astype(np.int64) @ w.T.astype(np.int64)).astype(np.float64)
        assert np.array_equal(out.astype(np.float64), exact)
    assert out.max() == 0 and out.min() == 0
