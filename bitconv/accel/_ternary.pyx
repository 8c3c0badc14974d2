# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Reference ternary matmul for `bitconv validate`: I2_S packed weights × per-token int8 activations.

Integer accumulation is exact, so the result depends only on the float32 steps, which are done in
the same order as ternary.py's numpy code: bit-identical output on every path (portable C, AVX2,
numpy). Rows of the output are computed in parallel with OpenMP when the build had it.
"""
from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t

import numpy as np

cdef extern from *:
    """
    #include <stdint.h>
    #include <math.h>
    #include <float.h>

    /* Per-token absmax → int8, as transformers' BitNet activation_quant runs in float32 torch:
       its `127 / t` is Tensor.__rdiv__ = t.reciprocal() * 127, so s = (1 / max(max|x|, 1e-5)) * 127
       with two roundings (a plain 127 / m differs in the last bit for ~25% of rows);
       q = clip(rint(x * s), -128, 127). rintf rounds half to even (default rounding mode),
       -ffp-contract=off keeps every step a plain float32 operation.
       Returns the first row holding a non-finite value, or -1. */
    static void bct_quantize_row_portable(const float* x, int8_t* q, float s, int64_t K) {
        for (int64_t k = 0; k < K; k++) {
            float y = rintf(x[k] * s);
            y = y < -128.0f ? -128.0f : (y > 127.0f ? 127.0f : y);
            q[k] = (int8_t)y;
        }
    }

    #if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    #include <immintrin.h>
    /* Same operations eight at a time: vroundps with nearest-even is rintf, min/max the clip. */
    __attribute__((target("avx2")))
    static void bct_quantize_row_avx2(const float* x, int8_t* q, float s, int64_t K) {
        const __m256 vs = _mm256_set1_ps(s), lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
        int64_t k = 0;
        for (; k + 8 <= K; k += 8) {
            __m256 y = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + k), vs),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            const __m256i i = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(y, lo), hi));
            const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
            _mm_storel_epi64((__m128i*)(q + k), _mm_packs_epi16(w, w));
        }
        bct_quantize_row_portable(x + k, q + k, s, K - k);
    }
    #else
    static void bct_quantize_row_avx2(const float* x, int8_t* q, float s, int64_t K) {
        bct_quantize_row_portable(x, q, s, K);
    }
    #endif

    static int64_t bct_quantize(const float* x, int8_t* q, float* scale, int64_t n, int64_t K, int simd) {
        for (int64_t t = 0; t < n; t++) {
            const float* xr = x + t * K;
            float amax = 0.0f;
            int bad = 0;
            for (int64_t k = 0; k < K; k++) {
                const float a = fabsf(xr[k]);
                amax = a > amax ? a : amax;
                bad |= !(a <= FLT_MAX);               /* inf or NaN */
            }
            if (bad) return t;
            const float s = (1.0f / (amax > 1e-5f ? amax : 1e-5f)) * 127.0f;
            scale[t] = s;
            if (simd) bct_quantize_row_avx2(xr, q + t * K, s, K);
            else bct_quantize_row_portable(xr, q + t * K, s, K);
        }
        return -1;
    }

    /* I2_S group of 128 values = 32 bytes; byte j holds values j, 32+j, 64+j, 96+j in bit pairs
       7-6, 5-4, 3-2, 1-0, code = value + 1 (pair 3 is never written; it decodes as +2 everywhere). */
    static void bct_unpack_group(const uint8_t* p, int8_t* o) {
        for (int j = 0; j < 32; j++) {
            const uint8_t b = p[j];
            o[j] = (int8_t)(b >> 6) - 1;
            o[32 + j] = (int8_t)((b >> 4) & 3) - 1;
            o[64 + j] = (int8_t)((b >> 2) & 3) - 1;
            o[96 + j] = (int8_t)(b & 3) - 1;
        }
    }

    static void bct_unpack(const uint8_t* p, int8_t* out, int64_t ngroups) {
        for (int64_t g = 0; g < ngroups; g++) bct_unpack_group(p + 32 * g, out + 128 * g);
    }

    /* The one float32 epilogue all paths share: (float(acc) / act_scale) * w_scale. */
    static inline float bct_scale(int32_t acc, float act_scale, float w_scale) {
        return ((float)acc / act_scale) * w_scale;
    }

    #define BCT_TB 8   /* tokens sharing one decoded weight group */

    /* Portable path: decode a group to int8 once per block of tokens, then plain int8 dot products
       (the compiler vectorizes them for the baseline ISA). */
    static void bct_gemm_rows_portable(const uint8_t* w, const int8_t* xq, const int32_t* xsum,
                                       const float* act_scale, float w_scale, int64_t n, int64_t M,
                                       int64_t K, int64_t m0, int64_t m1, float* out) {
        (void)xsum;
        int8_t codes[128];
        int32_t acc[BCT_TB];
        for (int64_t m = m0; m < m1; m++) {
            const uint8_t* wr = w + m * (K / 4);
            for (int64_t t0 = 0; t0 < n; t0 += BCT_TB) {
                const int64_t tb = n - t0 < BCT_TB ? n - t0 : BCT_TB;
                for (int64_t i = 0; i < tb; i++) acc[i] = 0;
                for (int64_t g = 0; g < K / 128; g++) {
                    bct_unpack_group(wr + 32 * g, codes);
                    for (int64_t i = 0; i < tb; i++) {
                        const int8_t* xv = xq + (t0 + i) * K + 128 * g;
                        int32_t s = 0;
                        for (int k = 0; k < 128; k++) s += (int32_t)codes[k] * (int32_t)xv[k];
                        acc[i] += s;
                    }
                }
                for (int64_t i = 0; i < tb; i++)
                    out[(t0 + i) * M + m] = bct_scale(acc[i], act_scale[t0 + i], w_scale);
            }
        }
    }

    #if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))

    __attribute__((target("avx2")))
    static inline int32_t bct_hsum(__m256i v) {
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
        return _mm_cvtsi128_si32(s);
    }

    /* NT tokens × one weight row. maddubs multiplies the unsigned codes c = value + 1 in {0..3}
       by the signed activations (|pair sum| <= 768, no int16 saturation), so
       sum(value * x) = sum(c * x) - sum(x); xsum holds sum(x) per token. */
    #define BCT_AVX2_ROW(NT)                                                                      \
    __attribute__((target("avx2")))                                                               \
    static void bct_row_avx2_##NT(const uint8_t* wr, const int8_t* x0, int64_t K, int32_t* res) { \
        const __m256i mask = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);                    \
        __m256i acc[NT];                                                                          \
        for (int i = 0; i < NT; i++) acc[i] = _mm256_setzero_si256();                             \
        for (int64_t g = 0; g < K / 128; g++) {                                                   \
            const __m256i b = _mm256_loadu_si256((const __m256i*)(wr + 32 * g));                  \
            const __m256i c0 = _mm256_and_si256(_mm256_srli_epi16(b, 6), mask);                   \
            const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(b, 4), mask);                   \
            const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(b, 2), mask);                   \
            const __m256i c3 = _mm256_and_si256(b, mask);                                         \
            for (int i = 0; i < NT; i++) {                                                        \
                const int8_t* xv = x0 + i * K + 128 * g;                                          \
                __m256i p = _mm256_maddubs_epi16(c0, _mm256_loadu_si256((const __m256i*)xv));     \
                p = _mm256_add_epi16(p, _mm256_maddubs_epi16(c1, _mm256_loadu_si256((const __m256i*)(xv + 32)))); \
                p = _mm256_add_epi16(p, _mm256_maddubs_epi16(c2, _mm256_loadu_si256((const __m256i*)(xv + 64)))); \
                p = _mm256_add_epi16(p, _mm256_maddubs_epi16(c3, _mm256_loadu_si256((const __m256i*)(xv + 96)))); \
                acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(p, ones));                    \
            }                                                                                     \
        }                                                                                         \
        for (int i = 0; i < NT; i++) res[i] = bct_hsum(acc[i]);                                   \
    }
    BCT_AVX2_ROW(1)
    BCT_AVX2_ROW(4)

    __attribute__((target("avx2")))
    static void bct_gemm_rows_avx2(const uint8_t* w, const int8_t* xq, const int32_t* xsum,
                                   const float* act_scale, float w_scale, int64_t n, int64_t M,
                                   int64_t K, int64_t m0, int64_t m1, float* out) {
        int32_t res[4];
        for (int64_t m = m0; m < m1; m++) {
            const uint8_t* wr = w + m * (K / 4);
            int64_t t = 0;
            for (; t + 4 <= n; t += 4) {
                bct_row_avx2_4(wr, xq + t * K, K, res);
                for (int i = 0; i < 4; i++)
                    out[(t + i) * M + m] = bct_scale(res[i] - xsum[t + i], act_scale[t + i], w_scale);
            }
            for (; t < n; t++) {
                bct_row_avx2_1(wr, xq + t * K, K, res);
                out[t * M + m] = bct_scale(res[0] - xsum[t], act_scale[t], w_scale);
            }
        }
    }

    static int bct_have_avx2(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2");
    }
    #else
    static void bct_gemm_rows_avx2(const uint8_t* w, const int8_t* xq, const int32_t* xsum,
                                   const float* act_scale, float w_scale, int64_t n, int64_t M,
                                   int64_t K, int64_t m0, int64_t m1, float* out) {
        bct_gemm_rows_portable(w, xq, xsum, act_scale, w_scale, n, M, K, m0, m1, out);
    }
    static int bct_have_avx2(void) { return 0; }
    #endif

    static void bct_gemm_rows(const uint8_t* w, const int8_t* xq, const int32_t* xsum,
                              const float* act_scale, float w_scale, int64_t n, int64_t M,
                              int64_t K, int64_t m0, int64_t m1, float* out, int simd) {
        if (simd) bct_gemm_rows_avx2(w, xq, xsum, act_scale, w_scale, n, M, K, m0, m1, out);
        else bct_gemm_rows_portable(w, xq, xsum, act_scale, w_scale, n, M, K, m0, m1, out);
    }

    static void bct_row_sums(const int8_t* xq, int32_t* xsum, int64_t n, int64_t K) {
        for (int64_t t = 0; t < n; t++) {
            int32_t s = 0;
            for (int64_t k = 0; k < K; k++) s += xq[t * K + k];
            xsum[t] = s;
        }
    }
    """
    int bct_have_avx2() nogil
    int64_t bct_quantize(const float* x, int8_t* q, float* scale, int64_t n, int64_t K, int simd) nogil
    void bct_unpack(const uint8_t* p, int8_t* out, int64_t ngroups) nogil
    void bct_row_sums(const int8_t* xq, int32_t* xsum, int64_t n, int64_t K) nogil
    void bct_gemm_rows(const uint8_t* w, const int8_t* xq, const int32_t* xsum,
                       const float* act_scale, float w_scale, int64_t n, int64_t M,
                       int64_t K, int64_t m0, int64_t m1, float* out, int simd) nogil

HAVE_AVX2 = bool(bct_have_avx2())
# K cap: the AVX2 sum(c * x) with c <= 3 reaches 3 * 128 * K, which must stay inside int32.
MAX_K = 1 << 22
cdef enum:
    ROW_BLOCK = 16  # output rows per parallel work item: enough items to balance, no false sharing
cdef Py_ssize_t SERIAL_WORK = 1 << 19  # multiply-adds below which one thread is faster


def _check_mk(Py_ssize_t M, Py_ssize_t K) -> None:
    if M < 1 or K < 128 or K % 128 or K > MAX_K:
        raise ValueError(f"M={M}, K={K}: need M >= 1 and K a positive multiple of 128 (at most {MAX_K})")


def quantize_activations(const float[:, ::1] x, bint simd=True):
    """(int8 [n, K], float32 [n] act_scale): per-token absmax int8, transformers' BitNet in float32.
    simd=False forces the portable C path (tests compare both)."""
    cdef Py_ssize_t n = x.shape[0], K = x.shape[1]
    if K < 1:
        raise ValueError("quantize_activations: x has no columns")
    q = np.empty((n, K), dtype=np.int8)
    scale = np.empty(n, dtype=np.float32)
    if n == 0:
        return q, scale
    cdef int8_t[:, ::1] qv = q
    cdef float[::1] sv = scale
    cdef int64_t bad
    cdef int use = 1 if (simd and HAVE_AVX2) else 0
    with nogil:
        bad = bct_quantize(&x[0, 0], &qv[0, 0], &sv[0], n, K, use)
    if bad >= 0:
        raise ValueError(f"quantize_activations: row {bad} holds inf or NaN")
    return q, scale


def unpack_i2s(const uint8_t[::1] packed, Py_ssize_t M, Py_ssize_t K):
    """int8 [M, K] values in {-1, 0, 1} from the I2_S payload (without its 32-byte trailer)."""
    _check_mk(M, K)
    if packed.shape[0] != M * K // 4:
        raise ValueError(f"unpack_i2s: packed has {packed.shape[0]} bytes, M*K/4 = {M * K // 4}")
    out = np.empty((M, K), dtype=np.int8)
    cdef int8_t[:, ::1] ov = out
    with nogil:
        bct_unpack(&packed[0], &ov[0, 0], M * K // 128)
    return out


def ternary_gemm(const uint8_t[::1] packed, float w_scale, const int8_t[:, ::1] x_q,
                 const float[::1] act_scale, Py_ssize_t M, Py_ssize_t K, bint simd=True):
    """float32 [n, M]: out[t, m] = (float32(acc) / act_scale[t]) * w_scale, acc = sum_k w[m, k] x_q[t, k]
    exactly in int32. simd=False forces the portable C path (tests compare both)."""
    _check_mk(M, K)
    cdef Py_ssize_t n = x_q.shape[0]
    if packed.shape[0] != M * K // 4:
        raise ValueError(f"ternary_gemm: packed has {packed.shape[0]} bytes, M*K/4 = {M * K // 4}")
    if x_q.shape[1] != K:
        raise ValueError(f"ternary_gemm: x_q has {x_q.shape[1]} columns, K = {K}")
    if act_scale.shape[0] != n:
        raise ValueError(f"ternary_gemm: act_scale has {act_scale.shape[0]} entries, x_q has {n} rows")
    out = np.empty((n, M), dtype=np.float32)
    if n == 0:
        return out
    xsum = np.empty(n, dtype=np.int32)
    cdef float[:, ::1] ov = out
    cdef int32_t[::1] sv = xsum
    cdef int use = 1 if (simd and HAVE_AVX2) else 0
    cdef Py_ssize_t b, m0, m1, nblocks = (M + ROW_BLOCK - 1) // ROW_BLOCK
    with nogil:
        bct_row_sums(&x_q[0, 0], &sv[0], n, K)
        if n * M * K < SERIAL_WORK:  # waking the thread team would cost more than the product
            bct_gemm_rows(&packed[0], &x_q[0, 0], &sv[0], &act_scale[0], w_scale, n, M, K, 0, M,
                          &ov[0, 0], use)
        else:
            for b in prange(nblocks, schedule="static"):
                m0 = b * ROW_BLOCK
                m1 = m0 + ROW_BLOCK
                if m1 > M:
                    m1 = M
                bct_gemm_rows(&packed[0], &x_q[0, 0], &sv[0], &act_scale[0], w_scale, n, M, K, m0, m1,
                              &ov[0, 0], use)
    return out
