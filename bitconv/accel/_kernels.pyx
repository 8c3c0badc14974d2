# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Bit-exact C kernels for the hot GGUF encoders: float32 → float16 (IEEE round-to-nearest-even,
F16C when the CPU has it, chosen at run time), Q8_0 (ggml's quantize_row_q8_0_ref) and the
k-quants (quantize_row_q{2,3,4,5,6}_K_ref).
They release the GIL so the writer's thread pool runs them on every core."""
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t
from libc.stdlib cimport free, malloc

import numpy as np

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

    /* ---- k-quants: ggml's quantize_row_q{2,3,4,5,6}_K_ref (no importance matrix), the same
       float32 operations in the same order (built with -ffp-contract=off, so no FMA), one
       256-value super-block at a time. Blocks are independent: callers may split the rows. ---- */
    #define BC_QK_K 256
    #define BC_GROUP_MAX_EPS 1e-15f

    static inline float bc_half_to_float(uint16_t h) {
        uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
        if (e == 0) {
            if (m == 0) x = sign;
            else { int s = 0; while (!(m & 0x400u)) { m <<= 1; s++; } x = sign | ((uint32_t)(113 - s) << 23) | ((m & 0x3ffu) << 13); }
        } else if (e == 31) x = sign | 0x7f800000u | (m << 13);
        else x = sign | ((e + 112u) << 23) | (m << 13);
        float f; memcpy(&f, &x, 4); return f;
    }

    static inline int bc_nearest_int(float v) {
        float t = v + 12582912.f; int i; memcpy(&i, &t, 4);
        return (i & 0x007fffff) - 0x00400000;
    }

    static inline void bc_put_half(uint8_t* p, float f) { uint16_t h = bc_half(f); memcpy(p, &h, 2); }

    /* The common start of make_qx_quants and make_q3_quants: the value of largest magnitude, the
       codes at iscale = -nmax/max (stored + offset) and their x²-weighted sums; 0 for an all-zero
       group (codes 0). */
    static int bc_qx_start(int n, int nmax, const float* x, int8_t* L, int offset, float* max_out,
                           float* sumlx_out, float* suml2_out) {
        float max = 0, amax = 0, sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; ++i) { float ax = fabsf(x[i]); if (ax > amax) { amax = ax; max = x[i]; } }
        if (amax < BC_GROUP_MAX_EPS) { for (int i = 0; i < n; ++i) L[i] = 0; return 0; }
        float iscale = -nmax / max;
        for (int i = 0; i < n; ++i) {
            int l = bc_nearest_int(iscale * x[i]);
            l = l < -nmax ? -nmax : (l > nmax - 1 ? nmax - 1 : l);
            L[i] = (int8_t)(l + offset);
            float w = x[i] * x[i];
            sumlx += w * x[i] * l; suml2 += w * l * l;
        }
        *max_out = max; *sumlx_out = sumlx; *suml2_out = suml2;
        return 1;
    }

    static float bc_make_qx_quants(int n, int nmax, const float* x, int8_t* L) {  /* rmse_type 1 */
        float max, sumlx, suml2, iscale;
        if (!bc_qx_start(n, nmax, x, L, nmax, &max, &sumlx, &suml2)) return 0.f;
        float scale = suml2 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
        for (int is = -9; is <= 9; ++is) {
            if (is == 0) continue;
            iscale = -(nmax + 0.1f * is) / max;
            sumlx = suml2 = 0;
            for (int i = 0; i < n; ++i) {
                int l = bc_nearest_int(iscale * x[i]);
                l = l < -nmax ? -nmax : (l > nmax - 1 ? nmax - 1 : l);
                float w = x[i] * x[i];
                sumlx += w * x[i] * l; suml2 += w * l * l;
            }
            if (suml2 > 0 && sumlx * sumlx > best * suml2) {
                for (int i = 0; i < n; ++i) {
                    int l = bc_nearest_int(iscale * x[i]);
                    L[i] = (int8_t)(nmax + (l < -nmax ? -nmax : (l > nmax - 1 ? nmax - 1 : l)));
                }
                scale = sumlx / suml2; best = scale * sumlx;
            }
        }
        return scale;
    }

    static float bc_make_q3_quants(int n, int nmax, const float* x, int8_t* L) {  /* do_rmse */
        float max, sumlx, suml2;
        if (!bc_qx_start(n, nmax, x, L, 0, &max, &sumlx, &suml2)) return 0.f;
        for (int itry = 0; itry < 5; ++itry) {
            int changed = 0;
            for (int i = 0; i < n; ++i) {
                float w = x[i] * x[i];
                float slx = sumlx - w * x[i] * L[i];
                if (slx > 0) {
                    float sl2 = suml2 - w * L[i] * L[i];
                    int nl = bc_nearest_int(x[i] * sl2 / slx);
                    nl = nl < -nmax ? -nmax : (nl > nmax - 1 ? nmax - 1 : nl);
                    if (nl != L[i]) {
                        slx += w * x[i] * nl; sl2 += w * nl * nl;
                        if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                            L[i] = (int8_t)nl; sumlx = slx; suml2 = sl2; ++changed;
                        }
                    }
                }
            }
            if (!changed) break;
        }
        for (int i = 0; i < n; ++i) L[i] = (int8_t)(L[i] + nmax);
        return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
    }

    static float bc_make_qkx2_quants(int n, int nmax, const float* x, const float* w, uint8_t* L, float* the_min,
                                     uint8_t* Laux, float rmin, float rdelta, int nstep, int use_mad) {
        float min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
        for (int i = 1; i < n; ++i) {
            if (x[i] < min) min = x[i];
            if (x[i] > max) max = x[i];
            sum_w += w[i]; sum_x += w[i] * x[i];
        }
        if (min > 0) min = 0;
        if (max == min) { for (int i = 0; i < n; ++i) L[i] = 0; *the_min = -min; return 0.f; }
        float iscale = nmax / (max - min), scale = 1 / iscale, best_error = 0;
        for (int i = 0; i < n; ++i) {
            int l = bc_nearest_int(iscale * (x[i] - min));
            L[i] = (uint8_t)(l < 0 ? 0 : (l > nmax ? nmax : l));
            float diff = scale * L[i] + min - x[i];
            diff = use_mad ? fabsf(diff) : diff * diff;
            best_error += w[i] * diff;
        }
        for (int is = 0; is <= nstep; ++is) {
            iscale = (rmin + rdelta * is + nmax) / (max - min);
            float sum_l = 0, sum_l2 = 0, sum_xl = 0;
            for (int i = 0; i < n; ++i) {
                int l = bc_nearest_int(iscale * (x[i] - min));
                l = l < 0 ? 0 : (l > nmax ? nmax : l);
                Laux[i] = (uint8_t)l;
                sum_l += w[i] * l; sum_l2 += w[i] * l * l; sum_xl += w[i] * l * x[i];
            }
            float D = sum_w * sum_l2 - sum_l * sum_l;
            if (D > 0) {
                float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
                float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
                if (this_min > 0) { this_min = 0; this_scale = sum_xl / sum_l2; }
                float cur_error = 0;
                for (int i = 0; i < n; ++i) {
                    float diff = this_scale * Laux[i] + this_min - x[i];
                    diff = use_mad ? fabsf(diff) : diff * diff;
                    cur_error += w[i] * diff;
                }
                if (cur_error < best_error) {
                    for (int i = 0; i < n; ++i) L[i] = Laux[i];
                    best_error = cur_error; scale = this_scale; min = this_min;
                }
            }
        }
        *the_min = -min;
        return scale;
    }

    /* ---- The k-quant scale searches, 8 sub-blocks at a time (one AVX2 lane each). Every lane does
       the float32 operations of the scalar routine above in the same order (no FMA: -ffp-contract=off),
       branches become masks, so the bytes are the scalar path's; picked at run time where the CPU
       has AVX2 (bc_simd), and tests run both paths against ggml. ---- */
    #if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    #define BC_HAVE_SIMD_K 1
    typedef float bc_v8f __attribute__((vector_size(32)));
    typedef int32_t bc_v8i __attribute__((vector_size(32)));
    #define BC_V8 __attribute__((target("avx2"))) static inline
    #define BC_V8F __attribute__((target("avx2"))) static

    BC_V8 bc_v8f bc_vsel(bc_v8i m, bc_v8f a, bc_v8f b) { return (bc_v8f)(((bc_v8i)a & m) | ((bc_v8i)b & ~m)); }
    BC_V8 bc_v8i bc_vseli(bc_v8i m, bc_v8i a, bc_v8i b) { return (a & m) | (b & ~m); }
    BC_V8 bc_v8i bc_vnearest(bc_v8f v) { bc_v8f t = v + 12582912.f; bc_v8i i = (bc_v8i)t; return (i & 0x007fffff) - 0x00400000; }
    BC_V8 bc_v8i bc_vclamp(bc_v8i l, int lo, int hi) {
        bc_v8i vlo = (bc_v8i){lo, lo, lo, lo, lo, lo, lo, lo}, vhi = (bc_v8i){hi, hi, hi, hi, hi, hi, hi, hi};
        l = bc_vseli(l < vlo, vlo, l);
        return bc_vseli(l > vhi, vhi, l);
    }
    BC_V8 bc_v8f bc_vabs(bc_v8f v) { return (bc_v8f)((bc_v8i)v & 0x7fffffff); }
    BC_V8 bc_v8f bc_vf(bc_v8i l) { return __builtin_convertvector(l, bc_v8f); }
    BC_V8 bc_v8f bc_vset(float f) { return (bc_v8f){f, f, f, f, f, f, f, f}; }

    /* make_qkx2_quants for lanes j = 0..7: values X[i][j] (i < n), weights W[i][j]; codes to L[i][j] */
    BC_V8F void bc_v8_make_qkx2(int n, int nmax, const bc_v8f* X, const bc_v8f* W, bc_v8i* L, bc_v8f* scale_out,
                                bc_v8f* min_out, float rmin, float rdelta, int nstep, int use_mad) {
        bc_v8i Laux[32];
        bc_v8f zero = bc_vset(0.f), min = X[0], max = X[0], sum_w = W[0], sum_x = sum_w * X[0];
        for (int i = 1; i < n; ++i) {
            min = bc_vsel(X[i] < min, X[i], min);
            max = bc_vsel(X[i] > max, X[i], max);
            sum_w += W[i]; sum_x += W[i] * X[i];
        }
        min = bc_vsel(min > zero, zero, min);
        bc_v8i flat = max == min;
        bc_v8f start_min = min;
        bc_v8f iscale = bc_vset((float)nmax) / (max - min), scale = bc_vset(1.f) / iscale, best_error = zero;
        for (int i = 0; i < n; ++i) {
            L[i] = bc_vclamp(bc_vnearest(iscale * (X[i] - min)), 0, nmax);
            bc_v8f diff = scale * bc_vf(L[i]) + min - X[i];
            diff = use_mad ? bc_vabs(diff) : diff * diff;
            best_error += W[i] * diff;
        }
        for (int is = 0; is <= nstep; ++is) {
            iscale = bc_vset(rmin + rdelta * is + nmax) / (max - min);
            bc_v8f sum_l = zero, sum_l2 = zero, sum_xl = zero;
            for (int i = 0; i < n; ++i) {
                Laux[i] = bc_vclamp(bc_vnearest(iscale * (X[i] - min)), 0, nmax);
                bc_v8f l = bc_vf(Laux[i]);
                sum_l += W[i] * l; sum_l2 += W[i] * l * l; sum_xl += W[i] * l * X[i];
            }
            bc_v8f D = sum_w * sum_l2 - sum_l * sum_l;
            bc_v8i pos = D > zero;
            if (!(pos[0] | pos[1] | pos[2] | pos[3] | pos[4] | pos[5] | pos[6] | pos[7])) continue;
            bc_v8f this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            bc_v8f this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            bc_v8i above = this_min > zero;
            this_min = bc_vsel(above, zero, this_min);
            this_scale = bc_vsel(above, sum_xl / sum_l2, this_scale);
            bc_v8f cur_error = zero;
            for (int i = 0; i < n; ++i) {
                bc_v8f diff = this_scale * bc_vf(Laux[i]) + this_min - X[i];
                diff = use_mad ? bc_vabs(diff) : diff * diff;
                cur_error += W[i] * diff;
            }
            bc_v8i better = pos & (cur_error < best_error);
            for (int i = 0; i < n; ++i) L[i] = bc_vseli(better, Laux[i], L[i]);
            best_error = bc_vsel(better, cur_error, best_error);
            scale = bc_vsel(better, this_scale, scale);
            min = bc_vsel(better, this_min, min);
        }
        for (int i = 0; i < n; ++i) L[i] = bc_vseli(flat, (bc_v8i){0}, L[i]);
        *min_out = -bc_vsel(flat, start_min, min);
        *scale_out = bc_vsel(flat, zero, scale);
    }

    /* codes of iscale·x clamped to [-nmax, nmax - 1] (stored + offset in L) and their x²-weighted sums */
    BC_V8 void bc_v8_qx_sums(int n, int nmax, bc_v8f iscale, const bc_v8f* X, bc_v8i* L, int offset,
                             bc_v8f* sumlx, bc_v8f* suml2) {
        bc_v8f slx = bc_vset(0.f), sl2 = bc_vset(0.f);
        for (int i = 0; i < n; ++i) {
            bc_v8i l = bc_vclamp(bc_vnearest(iscale * X[i]), -nmax, nmax - 1);
            L[i] = l + offset;
            bc_v8f w = X[i] * X[i], lf = bc_vf(l);
            slx += w * X[i] * lf; sl2 += w * lf * lf;
        }
        *sumlx = slx; *suml2 = sl2;
    }

    /* bc_qx_start for 8 lanes: the value of largest magnitude per lane, the codes at -nmax/max and
       their sums; returns the mask of all-zero lanes (their codes are set to 0 by the callers) */
    BC_V8 bc_v8i bc_v8_qx_start(int n, int nmax, const bc_v8f* X, bc_v8i* L, int offset, bc_v8f* max_out,
                                bc_v8f* sumlx, bc_v8f* suml2) {
        bc_v8f max = bc_vset(0.f), amax = bc_vset(0.f);
        for (int i = 0; i < n; ++i) {
            bc_v8f ax = bc_vabs(X[i]);
            bc_v8i m = ax > amax;
            amax = bc_vsel(m, ax, amax); max = bc_vsel(m, X[i], max);
        }
        bc_v8_qx_sums(n, nmax, bc_vset((float)-nmax) / max, X, L, offset, sumlx, suml2);
        *max_out = max;
        return amax < bc_vset(BC_GROUP_MAX_EPS);
    }

    /* qx_start + make_qx_quants (rmse_type 1) for 8 lanes; codes + nmax to L, 0 for all-zero lanes */
    BC_V8F bc_v8f bc_v8_make_qx(int n, int nmax, const bc_v8f* X, bc_v8i* L) {
        bc_v8f zero = bc_vset(0.f), max, sumlx, suml2;
        bc_v8i tiny = bc_v8_qx_start(n, nmax, X, L, nmax, &max, &sumlx, &suml2);
        bc_v8f scale = bc_vsel(suml2 != zero, sumlx / suml2, zero), best = scale * sumlx;
        for (int is = -9; is <= 9; ++is) {
            if (is == 0) continue;
            bc_v8i Lt[16];
            bc_v8_qx_sums(n, nmax, bc_vset(-(nmax + 0.1f * is)) / max, X, Lt, nmax, &sumlx, &suml2);
            bc_v8i better = (suml2 > zero) & (sumlx * sumlx > best * suml2);
            for (int i = 0; i < n; ++i) L[i] = bc_vseli(better, Lt[i], L[i]);
            bc_v8f s = sumlx / suml2;
            scale = bc_vsel(better, s, scale);
            best = bc_vsel(better, s * sumlx, best);
        }
        for (int i = 0; i < n; ++i) L[i] = bc_vseli(tiny, (bc_v8i){0}, L[i]);
        return bc_vsel(tiny, zero, scale);
    }

    /* qx_start + make_q3_quants (do_rmse) for 8 lanes; codes + nmax to L, 0 for all-zero lanes */
    BC_V8F bc_v8f bc_v8_make_q3(int n, int nmax, const bc_v8f* X, bc_v8i* L) {
        bc_v8f zero = bc_vset(0.f), max, sumlx, suml2;
        bc_v8i tiny = bc_v8_qx_start(n, nmax, X, L, 0, &max, &sumlx, &suml2);
        for (int itry = 0; itry < 5; ++itry) {
            bc_v8i changed = (bc_v8i){0};
            for (int i = 0; i < n; ++i) {
                bc_v8f w = X[i] * X[i], li = bc_vf(L[i]);
                bc_v8f slx = sumlx - w * X[i] * li;
                bc_v8i go = slx > zero;
                bc_v8f sl2 = suml2 - w * li * li;
                bc_v8i nl = bc_vclamp(bc_vnearest(X[i] * sl2 / slx), -nmax, nmax - 1);
                go &= nl != L[i];
                bc_v8f nf = bc_vf(nl);
                slx += w * X[i] * nf; sl2 += w * nf * nf;
                go &= (sl2 > zero) & (slx * slx * suml2 > sumlx * sumlx * sl2);
                L[i] = bc_vseli(go, nl, L[i]);
                sumlx = bc_vsel(go, slx, sumlx); suml2 = bc_vsel(go, sl2, suml2);
                changed |= go;
            }
            if (!(changed[0] | changed[1] | changed[2] | changed[3] | changed[4] | changed[5] | changed[6] | changed[7])) break;
        }
        for (int i = 0; i < n; ++i) L[i] = bc_vseli(tiny, (bc_v8i){0}, L[i] + nmax);
        return bc_vsel(tiny | ~(suml2 > zero), zero, sumlx / suml2);
    }

    /* 8 sub-blocks of n values starting at x (sub-block j at x + stride*j) → lane-major vectors */
    BC_V8 void bc_v8_load(const float* x, int n, int stride, bc_v8f* X) {
        for (int i = 0; i < n; ++i)
            X[i] = (bc_v8f){x[i], x[stride + i], x[2 * stride + i], x[3 * stride + i], x[4 * stride + i],
                            x[5 * stride + i], x[6 * stride + i], x[7 * stride + i]};
    }
    #else
    #define BC_HAVE_SIMD_K 0
    #endif

    #if BC_HAVE_SIMD_K
    /* the search phases of the block encoders below, 8 sub-blocks per call, scalar in/out */
    BC_V8F void bc_v8_q45_search(const float* x, int nmax, float rmin, int nstep, float* scales, float* mins, uint8_t* L) {
        bc_v8f X[32], W[32], S, M, sum_x2 = bc_vset(0.f); bc_v8i Lv[32];
        bc_v8_load(x, 32, 32, X);
        for (int i = 0; i < 32; ++i) sum_x2 += X[i] * X[i];
        float av[8];
        for (int j = 0; j < 8; ++j) av[j] = sqrtf(sum_x2[j] / 32);
        bc_v8f A = (bc_v8f){av[0], av[1], av[2], av[3], av[4], av[5], av[6], av[7]};
        for (int i = 0; i < 32; ++i) W[i] = A + bc_vabs(X[i]);
        bc_v8_make_qkx2(32, nmax, X, W, Lv, &S, &M, rmin, 0.1f, nstep, 0);
        for (int j = 0; j < 8; ++j) {
            scales[j] = S[j]; mins[j] = M[j];
            for (int i = 0; i < 32; ++i) L[32 * j + i] = (uint8_t)Lv[i][j];
        }
    }
    BC_V8F void bc_v8_q2_search(const float* x, float* scales, float* mins, uint8_t* L) {
        for (int g = 0; g < 2; ++g) {
            bc_v8f X[16], W[16], S, M; bc_v8i Lv[16];
            bc_v8_load(x + 128 * g, 16, 16, X);
            for (int i = 0; i < 16; ++i) W[i] = bc_vabs(X[i]);
            bc_v8_make_qkx2(16, 3, X, W, Lv, &S, &M, -0.5f, 0.1f, 15, 1);
            for (int j = 0; j < 8; ++j) {
                scales[8 * g + j] = S[j]; mins[8 * g + j] = M[j];
                for (int i = 0; i < 16; ++i) L[128 * g + 16 * j + i] = (uint8_t)Lv[i][j];
            }
        }
    }
    BC_V8F void bc_v8_q36_search(const float* x, int q3, float* scales, int8_t* L) {
        for (int g = 0; g < 2; ++g) {
            bc_v8f X[16], S; bc_v8i Lv[16];
            bc_v8_load(x + 128 * g, 16, 16, X);
            S = q3 ? bc_v8_make_q3(16, 4, X, Lv) : bc_v8_make_qx(16, 32, X, Lv);
            for (int j = 0; j < 8; ++j) {
                scales[8 * g + j] = S[j];
                for (int i = 0; i < 16; ++i) L[128 * g + 16 * j + i] = (int8_t)Lv[i][j];
            }
        }
    }
    static int bc_simd_k_supported(void) { __builtin_cpu_init(); return __builtin_cpu_supports("avx2"); }
    #else
    static void bc_v8_q45_search(const float* x, int nmax, float rmin, int nstep, float* s, float* m, uint8_t* L) {}
    static void bc_v8_q2_search(const float* x, float* scales, float* mins, uint8_t* L) {}
    static void bc_v8_q36_search(const float* x, int q3, float* scales, int8_t* L) {}
    static int bc_simd_k_supported(void) { return 0; }
    #endif
    /* 1: the block encoders search 8 sub-blocks at a time (set from Python; AVX2 machines only) */
    static int bc_simd_k = 0;

    static void bc_pack_quads(const uint8_t* L, uint8_t* qs) {  /* 2-bit codes of q2_K / q3_K */
        for (int j = 0; j < BC_QK_K; j += 128)
            for (int l = 0; l < 32; ++l)
                qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
    }

    static void bc_q2_k_block(const float* x, uint8_t* o) {  /* scales[16] qs[64] d dmin */
        uint8_t L[BC_QK_K], Laux[16]; float w[16], mins[16], scales[16], max_scale = 0, max_min = 0;
        if (bc_simd_k) bc_v8_q2_search(x, scales, mins, L);
        for (int j = 0; j < 16; ++j) {
            if (!bc_simd_k) {
                for (int l = 0; l < 16; ++l) w[l] = fabsf(x[16 * j + l]);
                scales[j] = bc_make_qkx2_quants(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, 1);
            }
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        uint8_t* sc = o;
        if (max_scale > 0) {
            float iscale = 15.f / max_scale;
            for (int j = 0; j < 16; ++j) sc[j] = (uint8_t)bc_nearest_int(iscale * scales[j]);
            bc_put_half(o + 80, max_scale / 15.f);
        } else { for (int j = 0; j < 16; ++j) sc[j] = 0; bc_put_half(o + 80, 0.f); }
        if (max_min > 0) {
            float iscale = 15.f / max_min;
            for (int j = 0; j < 16; ++j) sc[j] |= (uint8_t)(bc_nearest_int(iscale * mins[j]) << 4);
            bc_put_half(o + 82, max_min / 15.f);
        } else bc_put_half(o + 82, 0.f);
        uint16_t dh, mh; memcpy(&dh, o + 80, 2); memcpy(&mh, o + 82, 2);
        for (int j = 0; j < 16; ++j) {
            const float d = bc_half_to_float(dh) * (sc[j] & 0xF);
            if (!d) continue;
            const float dm = bc_half_to_float(mh) * (sc[j] >> 4);
            for (int ii = 0; ii < 16; ++ii) {
                int l = bc_nearest_int((x[16 * j + ii] + dm) / d);
                L[16 * j + ii] = (uint8_t)(l < 0 ? 0 : (l > 3 ? 3 : l));
            }
        }
        bc_pack_quads(L, o + 16);
    }

    static void bc_q3_k_block(const float* x, uint8_t* o) {  /* hmask[32] qs[64] scales[12] d */
        int8_t L[BC_QK_K]; float scales[16], max_scale = 0, amax = 0;
        if (bc_simd_k) bc_v8_q36_search(x, 1, scales, L);
        for (int j = 0; j < 16; ++j) {
            if (!bc_simd_k) scales[j] = bc_make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
            float s = fabsf(scales[j]);
            if (s > amax) { amax = s; max_scale = scales[j]; }
        }
        uint8_t* hm = o; uint8_t* qs = o + 32; uint8_t* sb = o + 96;
        memset(sb, 0, 12);
        if (max_scale) {
            float iscale = -32.f / max_scale;
            for (int j = 0; j < 16; ++j) {
                int8_t l = (int8_t)bc_nearest_int(iscale * scales[j]);
                l = (int8_t)((l < -32 ? -32 : (l > 31 ? 31 : l)) + 32);
                if (j < 8) sb[j] = (uint8_t)(l & 0xF); else sb[j - 8] |= (uint8_t)((l & 0xF) << 4);
                l >>= 4;
                sb[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
            }
            bc_put_half(o + 108, 1 / iscale);
        } else bc_put_half(o + 108, 0.f);
        uint16_t dh; memcpy(&dh, o + 108, 2);
        for (int j = 0; j < 16; ++j) {
            int8_t sc = (int8_t)(j < 8 ? (sb[j] & 0xF) : (sb[j - 8] >> 4));
            sc = (int8_t)((sc | (((sb[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
            float d = bc_half_to_float(dh) * sc;
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii) {
                int l = bc_nearest_int(x[16 * j + ii] / d);
                L[16 * j + ii] = (int8_t)((l < -4 ? -4 : (l > 3 ? 3 : l)) + 4);
            }
        }
        memset(hm, 0, 32);
        int m = 0; uint8_t bit = 1;
        uint8_t U[BC_QK_K];
        for (int j = 0; j < BC_QK_K; ++j) {
            int v = L[j];
            if (v > 3) { hm[m] |= bit; v -= 4; }
            U[j] = (uint8_t)v;
            if (++m == 32) { m = 0; bit <<= 1; }
        }
        bc_pack_quads(U, qs);
    }

    /* q4_K / q5_K share the scale search: fills d, dmin, scales[12] at o and L[256] */
    static void bc_q45_k_head(const float* x, uint8_t* o, uint8_t* L, int nmax, float rmin, int nstep) {
        uint8_t Laux[32]; float w[32], mins[8], scales[8], max_scale = 0, max_min = 0;
        if (bc_simd_k) bc_v8_q45_search(x, nmax, rmin, nstep, scales, mins, L);
        for (int j = 0; j < 8; ++j) {
            if (!bc_simd_k) {
                float sum_x2 = 0;
                for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
                float av_x = sqrtf(sum_x2 / 32);
                for (int l = 0; l < 32; ++l) w[l] = av_x + fabsf(x[32 * j + l]);
                scales[j] = bc_make_qkx2_quants(32, nmax, x + 32 * j, w, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep, 0);
            }
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f, inv_min = max_min > 0 ? 63.f / max_min : 0.f;
        uint8_t* s = o + 4; uint8_t ls[8], lm[8];
        memset(s, 0, 12);
        for (int j = 0; j < 8; ++j) {
            ls[j] = (uint8_t)bc_nearest_int(inv_scale * scales[j]); if (ls[j] > 63) ls[j] = 63;
            lm[j] = (uint8_t)bc_nearest_int(inv_min * mins[j]); if (lm[j] > 63) lm[j] = 63;
        }
        for (int j = 0; j < 8; ++j) {
            if (j < 4) { s[j] = ls[j]; s[j + 4] = lm[j]; }
            else { s[j + 4] = (uint8_t)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4)); s[j - 4] |= (uint8_t)((ls[j] >> 4) << 6); s[j] |= (uint8_t)((lm[j] >> 4) << 6); }
        }
        bc_put_half(o, max_scale / 63.f); bc_put_half(o + 2, max_min / 63.f);
        uint16_t dh, mh; memcpy(&dh, o, 2); memcpy(&mh, o + 2, 2);
        for (int j = 0; j < 8; ++j) {
            uint8_t sc, m;
            if (j < 4) { sc = s[j] & 63; m = s[j + 4] & 63; }
            else { sc = (uint8_t)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4)); m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4)); }
            const float d = bc_half_to_float(dh) * sc;
            if (!d) continue;
            const float dm = bc_half_to_float(mh) * m;
            for (int ii = 0; ii < 32; ++ii) {
                int l = bc_nearest_int((x[32 * j + ii] + dm) / d);
                L[32 * j + ii] = (uint8_t)(l < 0 ? 0 : (l > nmax ? nmax : l));
            }
        }
    }

    static void bc_q4_k_block(const float* x, uint8_t* o) {  /* d dmin scales[12] qs[128] */
        uint8_t L[BC_QK_K];
        bc_q45_k_head(x, o, L, 15, -1.f, 20);
        uint8_t* q = o + 16;
        for (int j = 0; j < BC_QK_K; j += 64) { for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4)); q += 32; }
    }

    static void bc_q5_k_block(const float* x, uint8_t* o) {  /* d dmin scales[12] qh[32] qs[128] */
        uint8_t L[BC_QK_K];
        bc_q45_k_head(x, o, L, 31, -0.5f, 15);
        uint8_t* qh = o + 16; uint8_t* ql = o + 48;
        memset(qh, 0, 32);
        uint8_t m1 = 1, m2 = 2;
        for (int n = 0; n < BC_QK_K; n += 64) {
            for (int j = 0; j < 32; ++j) {
                int l1 = L[n + j], l2 = L[n + j + 32];
                if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
                if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
                ql[j] = (uint8_t)(l1 | (l2 << 4));
            }
            m1 <<= 2; m2 <<= 2; ql += 32;
        }
    }

    static void bc_q6_k_block(const float* x, uint8_t* o) {  /* ql[128] qh[64] scales[16] d */
        int8_t L[BC_QK_K]; float scales[16], max_scale = 0, max_abs = 0;
        if (bc_simd_k) bc_v8_q36_search(x, 0, scales, L);
        for (int ib = 0; ib < 16; ++ib) {
            float s = bc_simd_k ? scales[ib] : bc_make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
            scales[ib] = s;
            if (fabsf(s) > max_abs) { max_abs = fabsf(s); max_scale = s; }
        }
        if (max_abs < BC_GROUP_MAX_EPS) { memset(o, 0, 210); return; }
        float iscale = -128.f / max_scale;
        bc_put_half(o + 208, 1 / iscale);
        int8_t* sc = (int8_t*)(o + 192);
        for (int ib = 0; ib < 16; ++ib) { int v = bc_nearest_int(iscale * scales[ib]); sc[ib] = (int8_t)(v < 127 ? v : 127); }
        uint16_t dh; memcpy(&dh, o + 208, 2);
        for (int j = 0; j < 16; ++j) {
            float d = bc_half_to_float(dh) * sc[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii) {
                int l = bc_nearest_int(x[16 * j + ii] / d);
                L[16 * j + ii] = (int8_t)((l < -32 ? -32 : (l > 31 ? 31 : l)) + 32);
            }
        }
        uint8_t* ql = o; uint8_t* qh = o + 128;
        for (int j = 0; j < BC_QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) {
                uint8_t q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF, q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
                ql[l] = (uint8_t)(q1 | (q3 << 4)); ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
                qh[l] = (uint8_t)((((uint8_t)L[j + l]) >> 4) | ((((uint8_t)L[j + l + 32]) >> 4) << 2) |
                                  ((((uint8_t)L[j + l + 64]) >> 4) << 4) | ((((uint8_t)L[j + l + 96]) >> 4) << 6));
            }
            ql += 64; qh += 32;
        }
    }

    typedef void (*bc_kblock_fn)(const float*, uint8_t*);
    static const bc_kblock_fn bc_kblock[7] = {0, 0, bc_q2_k_block, bc_q3_k_block, bc_q4_k_block, bc_q5_k_block, bc_q6_k_block};
    static const int bc_kblock_size[7] = {0, 0, 84, 110, 144, 176, 210};

    static void bc_quantize_k(int bits, const float* x, uint8_t* out, size_t nblocks) {
        bc_kblock_fn f = bc_kblock[bits]; int sz = bc_kblock_size[bits];
        for (size_t b = 0; b < nblocks; b++) f(x + BC_QK_K * b, out + (size_t)sz * b);
    }

    /* torch's CPU float32 cascade_sum of n values (one intra-op thread), in torch's order: rows of
       4 x `lanes` floats accumulated in a 4-level cascade of blocks of 2^power rows, left-over
       vectors into the first accumulator, the 4 accumulators in order, then the left-over scalars
       and the lanes in order (bitconv/quant/torch_sum.py explains and checks it). The values are
       read through a cursor over the parts of a flat sequence; `absolute` sums |x|. */
    typedef struct { const float* const* ptrs; const int64_t* lens; int64_t nparts, part, off; int absolute; } bc_cursor;

    static void bc_read(bc_cursor* c, float* dst, int64_t count) {
        while (count > 0) {
            int64_t avail = c->lens[c->part] - c->off;
            if (avail <= 0) { c->part++; c->off = 0; continue; }
            int64_t k = count < avail ? count : avail;
            const float* src = c->ptrs[c->part] + c->off;
            if (c->absolute) { for (int64_t t = 0; t < k; t++) dst[t] = fabsf(src[t]); }
            else memcpy(dst, src, (size_t)k * sizeof(float));
            dst += k; count -= k; c->off += k;
        }
    }

    static float bc_torch_serial_sum(bc_cursor* c, int64_t n) {
        const int lanes = n >= 8 ? 8 : 1, width = 4 * lanes;
        const int64_t n_vec = n / lanes, rows = n_vec / 4;
        int64_t power = 4;
        if (rows > 1) {
            int64_t ceil_log2 = 64 - __builtin_clzll((unsigned long long)(rows - 1));
            if (ceil_log2 / 4 > power) power = ceil_log2 / 4;
        }
        const int64_t step = (int64_t)1 << power, mask = step - 1;
        float acc[4][32], row[32];
        memset(acc, 0, sizeof(acc));
        int64_t i = 0;
        while (i + step <= rows) {
            for (int64_t j = 0; j < step; j++, i++) {
                bc_read(c, row, width);
                for (int k = 0; k < width; k++) acc[0][k] += row[k];
            }
            for (int lv = 1; lv < 4; lv++) {
                for (int k = 0; k < width; k++) { acc[lv][k] += acc[lv - 1][k]; acc[lv - 1][k] = 0.0f; }
                if ((i & (mask << (lv * power))) != 0) break;
            }
        }
        for (; i < rows; i++) {
            bc_read(c, row, width);
            for (int k = 0; k < width; k++) acc[0][k] += row[k];
        }
        for (int lv = 1; lv < 4; lv++)
            for (int k = 0; k < width; k++) acc[0][k] += acc[lv][k];
        for (int64_t v = rows * 4; v < n_vec; v++) {
            bc_read(c, row, lanes);
            for (int l = 0; l < lanes; l++) acc[0][l] += row[l];
        }
        for (int k = 1; k < 4; k++)
            for (int l = 0; l < lanes; l++) acc[0][l] += acc[0][k * lanes + l];
        float total = 0.0f;
        int64_t rem = n - n_vec * lanes;
        bc_read(c, row, rem);
        for (int64_t r = 0; r < rem; r++) total += row[r];
        for (int l = 0; l < lanes; l++) total += acc[0][l];
        return total;
    }

    /* ---- Straight from a checkpoint's stored values (bf16 as raw bits, or float32), without a
       float32 copy of the tensor: numpy's float32 sum of |x|, ternary codes packed as I2_S, and
       bf16 -> f16. Each also reports the largest magnitude's bits (sign cleared), so the caller
       sees a NaN / Inf (or an f16 overflow) and hands such values to its numpy path instead. ---- */
    static inline float bc_bf16(uint32_t b) { uint32_t x = b << 16; float f; memcpy(&f, &x, 4); return f; }
    static inline uint32_t bc_f32_bits(float f) { uint32_t x; memcpy(&x, &f, 4); return x; }
    #define BC_ABS_BF16(a, i) bc_bf16((a)[i] & 0x7fffu)
    #define BC_ABS_F32(a, i) fabsf((a)[i])

    /* numpy's pairwise_sum (umath/loops_utils.h.src), the order np.add.reduce sums a contiguous
       float32 array in: fewer than 8 values one after the other from -0.0; up to 128 in 8
       accumulators, added ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)), then the rest in order; above
       that, the two halves (the first rounded down to a multiple of 8) summed so and added. */
    #define BC_PAIRWISE(NAME, T, LOAD, ATTR, LEAF8) \
    ATTR static float NAME(const T* a, int64_t n) { \
        if (n < 8) { float res = -0.0f; for (int64_t i = 0; i < n; i++) res += LOAD(a, i); return res; } \
        if (n <= 128) { \
            float r[8]; int64_t i = 8; \
            LEAF8 \
            float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7])); \
            for (; i < n; i++) res += LOAD(a, i); \
            return res; \
        } \
        int64_t n2 = n / 2; n2 -= n2 % 8; \
        return NAME(a, n2) + NAME(a + n2, n - n2); \
    }
    #define BC_LEAF_SCALAR(LOAD) \
        for (int j = 0; j < 8; j++) r[j] = LOAD(a, j); \
        for (; i < n - (n % 8); i += 8) for (int j = 0; j < 8; j++) r[j] += LOAD(a, i + j);
    BC_PAIRWISE(bc_pairwise_abs_bf16_portable, uint16_t, BC_ABS_BF16, , BC_LEAF_SCALAR(BC_ABS_BF16))
    BC_PAIRWISE(bc_pairwise_abs_f32_portable, float, BC_ABS_F32, , BC_LEAF_SCALAR(BC_ABS_F32))

    /* I2_S (quant/i2s.py) of n values (a multiple of 128): code = clip(rint(x * inv), -1, 1) + 1,
       written as 1 + (p > 0.5) - (p < -0.5) (rint rounds 0.5 to 0 and anything above to >= 1; the
       same for every p that is not NaN); byte j of each 128-value group holds codes j, 32+j, 64+j,
       96+j in bit pairs 7-6 .. 1-0. Returns the largest |x| as float32 bits (NaN / Inf: >= 0x7f800000). */
    #define BC_I2S(NAME, T, LOADF, MAGBITS) \
    static uint32_t NAME(const T* src, int64_t n, float inv, uint8_t* out) { \
        uint32_t m = 0; \
        for (int64_t g = 0; g < n / 128; g++) { \
            const T* s = src + 128 * g; \
            uint8_t c[128]; \
            for (int k = 0; k < 128; k++) { \
                uint32_t b = MAGBITS(s[k]); m = b > m ? b : m; \
                float p = LOADF(s[k]) * inv; \
                c[k] = (uint8_t)(1 + (p > 0.5f) - (p < -0.5f)); \
            } \
            uint8_t* o = out + 32 * g; \
            for (int j = 0; j < 32; j++) o[j] = (uint8_t)((c[j] << 6) | (c[32 + j] << 4) | (c[64 + j] << 2) | c[96 + j]); \
        } \
        return m; \
    }
    #define BC_MAG_BF16(b) ((uint32_t)((b) & 0x7fffu) << 16)
    #define BC_MAG_F32(f) (bc_f32_bits(f) & 0x7fffffffu)
    #define BC_ID(x) (x)
    BC_I2S(bc_i2s_bf16_portable, uint16_t, bc_bf16, BC_MAG_BF16)
    BC_I2S(bc_i2s_f32_portable, float, BC_ID, BC_MAG_F32)

    #if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    #define BC_AVX2 __attribute__((target("avx2")))
    /* |x| of 8 values as float32: bf16 bits widened by a shift, or float32 with the sign cleared */
    BC_AVX2 static inline __m256 bc_abs8_bf16(const uint16_t* a) {
        __m128i b = _mm_and_si128(_mm_loadu_si128((const __m128i*)a), _mm_set1_epi16(0x7fff));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
    }
    BC_AVX2 static inline __m256 bc_abs8_f32(const float* a) {
        return _mm256_castsi256_ps(_mm256_and_si256(_mm256_loadu_si256((const __m256i*)a), _mm256_set1_epi32(0x7fffffff)));
    }
    BC_AVX2 static inline __m256 bc_load8_bf16(const uint16_t* a) {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)a)), 16));
    }
    BC_AVX2 static inline __m256 bc_load8_f32(const float* a) { return _mm256_loadu_ps(a); }
    /* the 8 accumulators as one vector: lane j adds the same values in the same order as r[j] */
    #define BC_LEAF_AVX2(ABS8) \
        __m256 acc = ABS8(a); \
        for (; i < n - (n % 8); i += 8) acc = _mm256_add_ps(acc, ABS8(a + i)); \
        _mm256_storeu_ps(r, acc);
    BC_PAIRWISE(bc_pairwise_abs_bf16_avx2, uint16_t, BC_ABS_BF16, BC_AVX2, BC_LEAF_AVX2(bc_abs8_bf16))
    BC_PAIRWISE(bc_pairwise_abs_f32_avx2, float, BC_ABS_F32, BC_AVX2, BC_LEAF_AVX2(bc_abs8_f32))

    /* codes 1 - [p > 0.5] + [p < -0.5] of 8 values (compare masks are -1), as int32 */
    #define BC_CODES8(LOAD8, s) ({ \
        __m256 x_ = LOAD8(s); \
        vmax = _mm256_max_epu32(vmax, _mm256_and_si256(_mm256_castps_si256(x_), _mm256_set1_epi32(0x7fffffff))); \
        __m256 p_ = _mm256_mul_ps(x_, vinv); \
        __m256i gt_ = _mm256_castps_si256(_mm256_cmp_ps(p_, _mm256_set1_ps(0.5f), _CMP_GT_OQ)); \
        __m256i lt_ = _mm256_castps_si256(_mm256_cmp_ps(p_, _mm256_set1_ps(-0.5f), _CMP_LT_OQ)); \
        _mm256_add_epi32(_mm256_sub_epi32(_mm256_set1_epi32(1), gt_), lt_); })
    #define BC_I2S_AVX2(NAME, T, LOAD8) \
    BC_AVX2 static uint32_t NAME(const T* src, int64_t n, float inv, uint8_t* out) { \
        __m256 vinv = _mm256_set1_ps(inv); \
        __m256i vmax = _mm256_setzero_si256(); \
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7); \
        for (int64_t g = 0; g < n / 128; g++) { \
            const T* s = src + 128 * g; \
            __m256i w[4]; \
            for (int q = 0; q < 4; q++) { \
                __m256i c0 = BC_CODES8(LOAD8, s + 8 * q), c1 = BC_CODES8(LOAD8, s + 32 + 8 * q); \
                __m256i c2 = BC_CODES8(LOAD8, s + 64 + 8 * q), c3 = BC_CODES8(LOAD8, s + 96 + 8 * q); \
                w[q] = _mm256_or_si256(_mm256_or_si256(_mm256_slli_epi32(c0, 6), _mm256_slli_epi32(c1, 4)), \
                                       _mm256_or_si256(_mm256_slli_epi32(c2, 2), c3)); \
            } \
            __m256i b = _mm256_packus_epi16(_mm256_packs_epi32(w[0], w[1]), _mm256_packs_epi32(w[2], w[3])); \
            _mm256_storeu_si256((__m256i*)(out + 32 * g), _mm256_permutevar8x32_epi32(b, order)); \
        } \
        uint32_t lanes[8], m = 0; \
        _mm256_storeu_si256((__m256i*)lanes, vmax); \
        for (int k = 0; k < 8; k++) m = lanes[k] > m ? lanes[k] : m; \
        return m; \
    }
    BC_I2S_AVX2(bc_i2s_bf16_avx2, uint16_t, bc_load8_bf16)
    BC_I2S_AVX2(bc_i2s_f32_avx2, float, bc_load8_f32)
    static int bc_have_avx2(void) { __builtin_cpu_init(); return __builtin_cpu_supports("avx2"); }
    #else
    #define bc_pairwise_abs_bf16_avx2 bc_pairwise_abs_bf16_portable
    #define bc_pairwise_abs_f32_avx2 bc_pairwise_abs_f32_portable
    #define bc_i2s_bf16_avx2 bc_i2s_bf16_portable
    #define bc_i2s_f32_avx2 bc_i2s_f32_portable
    static int bc_have_avx2(void) { return 0; }
    #endif
    static float bc_pairwise_abs_bf16(const uint16_t* a, int64_t n, int simd) {
        return simd ? bc_pairwise_abs_bf16_avx2(a, n) : bc_pairwise_abs_bf16_portable(a, n);
    }
    static float bc_pairwise_abs_f32(const float* a, int64_t n, int simd) {
        return simd ? bc_pairwise_abs_f32_avx2(a, n) : bc_pairwise_abs_f32_portable(a, n);
    }
    static uint32_t bc_i2s_bf16(const uint16_t* src, int64_t n, float inv, uint8_t* out, int simd) {
        return simd ? bc_i2s_bf16_avx2(src, n, inv, out) : bc_i2s_bf16_portable(src, n, inv, out);
    }
    static uint32_t bc_i2s_f32(const float* src, int64_t n, float inv, uint8_t* out, int simd) {
        return simd ? bc_i2s_f32_avx2(src, n, inv, out) : bc_i2s_f32_portable(src, n, inv, out);
    }

    /* bf16 -> f16 bits (exact widening, then bc_f32_to_f16's rounding); returns max(bits & 0x7fff). */
    static uint32_t bc_bf16_to_f16_portable(const uint16_t* src, uint16_t* dst, size_t n) {
        uint32_t m = 0;
        for (size_t i = 0; i < n; i++) { uint32_t b = src[i] & 0x7fffu; m = b > m ? b : m; dst[i] = bc_half(bc_bf16(src[i])); }
        return m;
    }
    #if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __attribute__((target("avx2,f16c")))
    static uint32_t bc_bf16_to_f16_avx2(const uint16_t* src, uint16_t* dst, size_t n) {
        size_t i = 0;
        __m128i vmax = _mm_setzero_si128(), mask = _mm_set1_epi16(0x7fff);
        for (; i + 8 <= n; i += 8) {
            __m128i b = _mm_loadu_si128((const __m128i*)(src + i));
            vmax = _mm_max_epu16(vmax, _mm_and_si128(b, mask));
            __m256 f = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
            _mm_storeu_si128((__m128i*)(dst + i), _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        }
        uint16_t lanes[8];
        _mm_storeu_si128((__m128i*)lanes, vmax);
        uint32_t m = bc_bf16_to_f16_portable(src + i, dst + i, n - i);
        for (int k = 0; k < 8; k++) m = lanes[k] > m ? lanes[k] : m;
        return m;
    }
    static int bc_have_avx2_f16c(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    }
    #else
    static uint32_t bc_bf16_to_f16_avx2(const uint16_t* src, uint16_t* dst, size_t n) { return bc_bf16_to_f16_portable(src, dst, n); }
    static int bc_have_avx2_f16c(void) { return 0; }
    #endif
    """
    int bc_have_f16c() nogil
    float bc_pairwise_abs_bf16(const uint16_t* a, int64_t n, int simd) nogil
    float bc_pairwise_abs_f32(const float* a, int64_t n, int simd) nogil
    uint32_t bc_i2s_bf16(const uint16_t* src, int64_t n, float inv, uint8_t* out, int simd) nogil
    uint32_t bc_i2s_f32(const float* src, int64_t n, float inv, uint8_t* out, int simd) nogil
    int bc_have_avx2() nogil
    uint32_t bc_bf16_to_f16_portable(const uint16_t* src, uint16_t* dst, size_t n) nogil
    uint32_t bc_bf16_to_f16_avx2(const uint16_t* src, uint16_t* dst, size_t n) nogil
    int bc_have_avx2_f16c() nogil
    ctypedef struct bc_cursor:
        const float* const* ptrs
        const int64_t* lens
        int64_t nparts, part, off
        int absolute
    float bc_torch_serial_sum(bc_cursor* c, int64_t n) nogil
    void bc_f32_to_f16(const float* src, uint16_t* dst, size_t n, int simd) nogil
    void bc_quantize_q8_0(const float* x, uint8_t* out, size_t nblocks) nogil
    void bc_quantize_k(int bits, const float* x, uint8_t* out, size_t nblocks) nogil
    int bc_simd_k
    int bc_simd_k_supported()

HAVE_F16C = bool(bc_have_f16c())
HAVE_AVX2_F16C = bool(bc_have_avx2_f16c())
HAVE_AVX2 = bool(bc_have_avx2())
#: the k-quant scale searches run 8 sub-blocks per AVX2 instruction (same bytes as the scalar path)
HAVE_SIMD_K = bool(bc_simd_k_supported())
bc_simd_k = 1 if HAVE_SIMD_K else 0


def set_simd_k(bint on) -> bool:
    """Use the AVX2 k-quant searches (where the CPU has AVX2) or the scalar ones; returns the
    previous setting. The bytes are the same either way: tests run both."""
    global bc_simd_k
    cdef bint before = bc_simd_k != 0
    bc_simd_k = 1 if (on and HAVE_SIMD_K) else 0
    return before


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


_K_BLOCK_BYTES = {2: 84, 3: 110, 4: 144, 5: 176, 6: 210}


def quantize_k(int bits, const float[::1] src, uint8_t[::1] dst) -> None:
    """q{bits}_K super-blocks of src (length a multiple of 256) into dst (ggml's reference encoders)."""
    if bits not in _K_BLOCK_BYTES:
        raise ValueError(f"quantize_k: no q{bits}_K")
    cdef size_t nblocks = <size_t>src.shape[0] // 256
    if src.shape[0] % 256 or <size_t>dst.shape[0] != nblocks * _K_BLOCK_BYTES[bits]:
        raise ValueError("quantize_k: size mismatch")
    if nblocks == 0:
        return
    with nogil:
        bc_quantize_k(bits, &src[0], &dst[0], nblocks)


def torch_serial_sum(list parts, long long lo, long long n, bint absolute=False) -> float:
    """torch's one-thread float32 sum (|x| with `absolute`) of n values from flat offset `lo` of the
    contiguous float32 arrays `parts` taken as one sequence."""
    cdef Py_ssize_t nparts = len(parts), k
    cdef const float[::1] view
    cdef const float** ptrs = <const float**>malloc(max(nparts, 1) * sizeof(float*))
    cdef int64_t* lens = <int64_t*>malloc(max(nparts, 1) * sizeof(int64_t))
    cdef bc_cursor cur
    cdef float total
    cdef long long total_len = 0
    if ptrs == NULL or lens == NULL:
        free(ptrs)
        free(lens)
        raise MemoryError()
    try:
        for k in range(nparts):
            view = parts[k]
            ptrs[k] = &view[0] if view.shape[0] else NULL
            lens[k] = view.shape[0]
            total_len += view.shape[0]
        if lo < 0 or n < 0 or lo + n > total_len:
            raise ValueError("torch_serial_sum: range outside the parts")
        cur.ptrs = ptrs
        cur.lens = lens
        cur.nparts = nparts
        cur.part = 0
        cur.off = 0
        cur.absolute = 1 if absolute else 0
        while cur.part < nparts and lo >= lens[cur.part] - cur.off:  # seek to lo
            lo -= lens[cur.part] - cur.off
            cur.part += 1
            cur.off = 0
        cur.off += lo
        with nogil:
            total = bc_torch_serial_sum(&cur, n)
        return total
    finally:
        free(ptrs)
        free(lens)


def abs_sum_pairwise(src, bint simd=True) -> float:
    """numpy's float32 sum of |x| (np.add.reduce's pairwise order) over a contiguous 1-D array of
    float32 values or of bf16 raw bits (uint16)."""
    cdef const uint16_t[::1] b
    cdef const float[::1] f
    cdef float total
    cdef int use = 1 if (simd and HAVE_AVX2) else 0
    if src.dtype == np.uint16:
        b = src
        if b.shape[0] == 0:
            return 0.0
        with nogil:
            total = bc_pairwise_abs_bf16(&b[0], b.shape[0], use)
        return total
    f = src
    if f.shape[0] == 0:
        return 0.0
    with nogil:
        total = bc_pairwise_abs_f32(&f[0], f.shape[0], use)
    return total


def ternary_i2s(src, float inv, uint8_t[::1] dst, bint simd=True) -> int:
    """I2_S bytes of clip(rint(x * inv), -1, 1) for a contiguous 1-D array of float32 values or bf16
    raw bits (length a multiple of 128) into dst (a quarter of it); returns the largest |x| as
    float32 bits (>= 0x7f800000: a NaN or Inf). The bytes are quant/i2s.py's for every value but NaN."""
    cdef const uint16_t[::1] b
    cdef const float[::1] f
    cdef uint32_t m = 0
    cdef int64_t n = src.shape[0]
    cdef int use = 1 if (simd and HAVE_AVX2) else 0
    if n % 128 or dst.shape[0] != n // 4:
        raise ValueError("ternary_i2s: size mismatch")
    if n == 0:
        return 0
    if src.dtype == np.uint16:
        b = src
        with nogil:
            m = bc_i2s_bf16(&b[0], n, inv, &dst[0], use)
    else:
        f = src
        with nogil:
            m = bc_i2s_f32(&f[0], n, inv, &dst[0], use)
    return m


def bf16_to_f16_bits(const uint16_t[::1] src, uint16_t[::1] dst, bint simd=True) -> int:
    """dst[i] = float16 bits of the bf16 value src[i] (f32_to_f16_bits of its exact float32);
    returns max(src & 0x7fff): >= 0x7f80 means a NaN / Inf, >= 0x4780 a value f16 rounds to inf."""
    if dst.shape[0] != src.shape[0]:
        raise ValueError("bf16_to_f16_bits: size mismatch")
    cdef uint32_t m = 0
    cdef size_t n = <size_t>src.shape[0]
    cdef bint use = simd and HAVE_AVX2_F16C
    if n == 0:
        return 0
    with nogil:
        if use:
            m = bc_bf16_to_f16_avx2(&src[0], &dst[0], n)
        else:
            m = bc_bf16_to_f16_portable(&src[0], &dst[0], n)
    return m
