# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Bit-exact C kernels for the hot GGUF encoders: float32 → float16 (IEEE round-to-nearest-even,
F16C when the CPU has it, chosen at run time) and Q8_0 (ggml's quantize_row_q8_0_ref).
They release the GIL so the writer's thread pool runs them on every core."""
from libc.stdint cimport uint8_t, uint16_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <math.h>

    /* IEEE binary32 -> binary16, round to nearest even; same bits as numpy's astype(float16)
       for every non-NaN input (NaN maps to a quiet NaN). */
    static inline uint16_t bc_half(float f) {
        uint32_t x; memcpy(&x, &f, 4);
        uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
        if (ax >= 0x7f800000u) return (uint16_t)(sign | (ax == 0x7f800000u ? 0x7c00u : 0x7e00u | ((ax >> 13) & 0x3ffu)));
        if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);          /* >= 65520 rounds to inf */
        if (ax < 0x38800000u) {                                              /* half subnormal or zero */
            if (ax < 0x33000000u) return (uint16_t)sign;                     /* <= 2^-25: ties to 0 */
            uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u, s = 126u - e;
            uint32_t q = m >> s, rem = m & ((1u << s) - 1u), half = 1u << (s - 1u);
            if (rem > half || (rem == half && (q & 1u))) q++;
            return (uint16_t)(sign | q);
        }
        uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u) - 0x38000000u;
        return (uint16_t)(sign | (r >> 13));
    }

    static void bc_f32_to_f16_portable(const float* src, uint16_t* dst, size_t n) {
        for (size_t i = 0; i < n; i++) dst[i] = bc_half(src[i]);
    }

    #if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    #include <immintrin.h>
    __attribute__((target("avx,f16c")))
    static void bc_f32_to_f16_f16c(const float* src, uint16_t* dst, size_t n) {
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm_storeu_si128((__m128i*)(dst + i), h);
        }
        for (; i < n; i++) dst[i] = bc_half(src[i]);
    }
    static int bc_have_f16c(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
    }
    #else
    static void bc_f32_to_f16_f16c(const float* src, uint16_t* dst, size_t n) { bc_f32_to_f16_portable(src, dst, n); }
    static int bc_have_f16c(void) { return 0; }
    #endif

    static void bc_f32_to_f16(const float* src, uint16_t* dst, size_t n, int simd) {
        if (simd) bc_f32_to_f16_f16c(src, dst, n); else bc_f32_to_f16_portable(src, dst, n);
    }

    #if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__clang__)
    #define BC_CLONES __attribute__((target_clones("avx2", "default")))
    #else
    #define BC_CLONES
    #endif

    /* ggml quantize_row_q8_0_ref: per 32 values d = amax/127, q = roundf(x * (1/d)), d stored as f16.
       roundf (half away from zero) is written branch-free from an integer truncation, exact in
       float32, so the compiler vectorizes it; the AVX2 clone is picked at load time where available. */
    BC_CLONES
    static void bc_quantize_q8_0(const float* x, uint8_t* out, size_t nblocks) {
        for (size_t b = 0; b < nblocks; b++) {
            const float* v = x + 32 * b;
            uint8_t* o = out + 34 * b;
            float amax = 0.0f;
            for (int j = 0; j < 32; j++) { float a = fabsf(v[j]); amax = a > amax ? a : amax; }
            const float d = amax / 127.0f;
            const float id = d != 0.0f ? 1.0f / d : 0.0f;
            uint16_t dh = bc_half(d);
            memcpy(o, &dh, 2);
            int32_t q[32];
            for (int j = 0; j < 32; j++) {
                const float y = v[j] * id;
                const int32_t t = (int32_t)y;                 /* truncation toward zero */
                const float frac = y - (float)t;              /* exact for |y| < 2^23 */
                q[j] = t + (frac >= 0.5f) - (frac <= -0.5f);  /* half away from zero, like roundf */
            }
            for (int j = 0; j < 32; j++) o[2 + j] = (uint8_t)(int8_t)q[j];
        }
    }
    """
    int bc_have_f16c() nogil
    void bc_f32_to_f16(const float* src, uint16_t* dst, size_t n, int simd) nogil
    void bc_quantize_q8_0(const float* x, uint8_t* out, size_t nblocks) nogil

HAVE_F16C = bool(bc_have_f16c())


def f32_to_f16_bits(const float[::1] src, uint16_t[::1] dst, bint simd=True) -> None:
    """dst[i] = float16 bits of src[i] (round to nearest even)."""
    if dst.shape[0] != src.shape[0]:
        raise ValueError("f32_to_f16_bits: size mismatch")
    cdef int use = 1 if (simd and HAVE_F16C) else 0
    with nogil:
        bc_f32_to_f16(&src[0], &dst[0], <size_t>src.shape[0], use)


def quantize_q8_0(const float[::1] src, uint8_t[::1] dst) -> None:
    """Q8_0 blocks of src (length a multiple of 32) into dst (34 bytes per block)."""
    cdef size_t nblocks = <size_t>src.shape[0] // 32
    if src.shape[0] % 32 or <size_t>dst.shape[0] != nblocks * 34:
        raise ValueError("quantize_q8_0: size mismatch")
    with nogil:
        bc_quantize_q8_0(&src[0], &dst[0], nblocks)
