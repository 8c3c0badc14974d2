"""K-quants (256-value super-blocks): q2_k … q6_k, byte-identical to ggml's reference encoders
`quantize_row_q{2,3,4,5,6}_K_ref` (ggml-quants.c, no importance matrix).

The C code works in float32, one sub-block at a time, with sequential sums and `nearest_int`
(round half to even through the `x + 1.5·2^23` bit trick). Here the same float32 operations run in
the same order, vectorized over every sub-block of the input at once: arrays are laid out
[position in sub-block, sub-block], each search candidate of `make_qx_quants` / `make_qkx2_quants` (and each refinement visit of
`make_q3_quants`)
is one pass of whole-array ops, and each C running sum is a fixed-order accumulation over the 16 or
32 positions (numpy's own `sum` is pairwise and would round differently). The shipped ggml
reference is built without FMA contraction (plain SSE mul/add), which is what this reproduces.

The C extension (bitconv/accel/_kernels.pyx, built with -ffp-contract=off) runs the same encoders
block by block at C speed; this numpy port is the fallback when it is not built, and the tests hold
both to ggml's bytes.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from ..accel import kernels
from .base import QuantizedTensor
from .gguf_native import GGUFNativeQuantizer
from .registry import register_quantizer

F32 = np.float32
QK_K = 256
_MAGIC = F32(12582912.0)  # 1.5 * 2^23
_GROUP_MAX_EPS = F32(1e-15)
#: super-blocks encoded per internal slab: temporaries of 512 KiB stay in cache (fastest measured)
_SLAB_BLOCKS = 512


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's `nearest_int`: the low mantissa bits of `v + 12582912.f` (float32), as int32."""
    bits = (np.asarray(v, dtype=F32) + _MAGIC).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def _seqsum(a: np.ndarray) -> np.ndarray:
    """`s = 0; for i: s += a[i]` in float32 along axis 0, in that order."""
    s = np.zeros(a.shape[1:], F32)
    for row in a:
        s += row
    return s


def _fp16(v: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16 (round to nearest even, subnormals included)."""
    return np.asarray(v, dtype=F32).astype(np.float16)


def _make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL) on x[n, M]: (L[n, M] int32, scale[M])."""
    n, m = x.shape
    ax = np.abs(x)
    first = np.argmax(ax, axis=0)  # C keeps the first strictly larger |x|
    cols = np.arange(m)
    amax = ax[first, cols]
    mx = x[first, cols]
    zero = amax < _GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)
    w = x * x

    def trial(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        l = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
        lf = l.astype(F32)
        return l, _seqsum(w * x * lf), _seqsum(w * lf * lf)

    l, sumlx, suml2 = trial(F32(-nmax) / mx)
    L = l + nmax
    scale = np.where(suml2 != 0, sumlx / np.where(suml2 != 0, suml2, F32(1)), F32(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(F32(nmax) + F32(0.1) * F32(step)) / mx
        l, sumlx, suml2 = trial(iscale)
        upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        if upd.any():
            L = np.where(upd, l + nmax, L)
            scale = np.where(upd, sumlx / np.where(upd, suml2, F32(1)), scale)
            best = np.where(upd, scale * sumlx, best)
    L = np.where(zero, 0, L)
    scale = np.where(zero, F32(0), scale)
    return L, scale


def _make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float,
                      nstep: int, use_mad: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, use_mad)
    on x[n, M]: (L[n, M] int32, scale[M], the_min[M])."""
    err = np.abs if use_mad else np.square
    mn = x.min(axis=0)
    mx = x.max(axis=0)
    # sum_w = w[0]; sum_x = w[0]*x[0]; then += over i >= 1
    sum_w = weights[0].copy()
    sum_x = weights[0] * x[0]
    for i in range(1, x.shape[0]):
        sum_w += weights[i]
        sum_x += weights[i] * x[i]
    mn = np.where(mn > 0, F32(0), mn)
    flat = mx == mn
    one = F32(1)

    rng = np.where(flat, one, mx - mn)
    iscale = F32(nmax) / rng
    scale = one / iscale
    L = np.clip(nearest_int(iscale * (x - mn)), 0, nmax)
    diff = scale * L.astype(F32) + mn - x
    best_error = _seqsum(weights * err(diff))
    live = ~flat
    for step in range(nstep + 1):
        rng = np.where(flat, one, mx - mn)
        iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / rng
        l = np.clip(nearest_int(iscale * (x - mn)), 0, nmax)
        lf = l.astype(F32)
        wl = weights * lf
        sum_l = _seqsum(wl)
        sum_l2 = _seqsum(wl * lf)
        sum_xl = _seqsum(wl * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = live & (D > 0)
        Ds = np.where(ok, D, one)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / Ds
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / Ds
        pos = this_min > 0
        this_min = np.where(pos, F32(0), this_min)
        this_scale = np.where(pos, sum_xl / np.where(pos & (sum_l2 != 0), sum_l2, one), this_scale)
        diff = this_scale * lf + this_min - x
        cur_error = _seqsum(weights * err(diff))
        upd = ok & (cur_error < best_error)
        if upd.any():
            L = np.where(upd, l, L)
            best_error = np.where(upd, cur_error, best_error)
            scale = np.where(upd, this_scale, scale)
            mn = np.where(upd, this_min, mn)
    L = np.where(flat, 0, L)
    scale = np.where(flat, F32(0), scale)
    return L, scale, -mn


def _make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_q3_quants(n, nmax, x, L, do_rmse=true) on x[n, M]: (L[n, M] int32, scale[M]).

    The C refinement visits the n values in order, each accepted change updating the running sums
    the next value sees; here each visit is one whole-array step over all sub-blocks. A sub-block
    whose pass changed nothing would change nothing on the next pass either, so running all five
    passes everywhere equals the C early exit."""
    n, m = x.shape
    ax = np.abs(x)
    first = np.argmax(ax, axis=0)
    cols = np.arange(m)
    amax = ax[first, cols]
    mx = x[first, cols]
    zero = amax < _GROUP_MAX_EPS
    iscale = F32(-nmax) / np.where(zero, F32(1), mx)
    L = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
    w = x * x
    wx = w * x
    lf = L.astype(F32)
    sumlx = _seqsum(wx * lf)
    suml2 = _seqsum(w * lf * lf)
    for _ in range(5):
        for i in range(n):
            li = L[i].astype(F32)
            slx = sumlx - wx[i] * li
            live = slx > 0
            sl2 = suml2 - w[i] * li * li
            new_l = np.clip(nearest_int(x[i] * sl2 / np.where(live, slx, F32(1))), -nmax, nmax - 1)
            nf = new_l.astype(F32)
            slx = slx + wx[i] * nf
            sl2 = sl2 + w[i] * nf * nf
            upd = live & (new_l != L[i]) & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            if upd.any():
                L[i] = np.where(upd, new_l, L[i])
                sumlx = np.where(upd, slx, sumlx)
                suml2 = np.where(upd, sl2, suml2)
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, F32(1)), F32(0))
    L = np.where(zero, 0, L + nmax)
    return L, np.where(zero, F32(0), scale)


def _pack_2bit_quads(L: np.ndarray) -> np.ndarray:
    """qs of q2_K / q3_K: per 128 values, byte l holds values l, l+32, l+64, l+96 (2 bits each)."""
    nb = L.shape[0]
    q = L.reshape(nb, 2, 4, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(nb, 64)


def _q2_k_blocks(x: np.ndarray) -> np.ndarray:
    """quantize_row_q2_K_ref on x[nb, 256] float32 → [nb, 84] uint8."""
    nb = x.shape[0]
    xs = np.ascontiguousarray(x.reshape(nb * 16, 16).T)  # [16, sub-blocks]
    L, scales, mins = _make_qkx2_quants(xs, np.abs(xs), 3, -0.5, 0.1, 15, use_mad=True)
    scales = scales.reshape(nb, 16)
    mins = mins.reshape(nb, 16)
    L = L.T.reshape(nb, 16, 16)
    one = F32(1)
    q4scale = F32(15)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    has_s = max_scale > 0
    has_m = max_min > 0
    ls = np.where(has_s[:, None], nearest_int((q4scale / np.where(has_s, max_scale, one))[:, None] * scales), 0)
    lm = np.where(has_m[:, None], nearest_int((q4scale / np.where(has_m, max_min, one))[:, None] * mins), 0)
    sc = ((ls & 0xFF) | (lm << 4)).astype(np.uint8)  # the C ORs an int into a uint8
    d16 = _fp16(np.where(has_s, max_scale / q4scale, F32(0)))
    dmin16 = _fp16(np.where(has_m, max_min / q4scale, F32(0)))
    d = d16.astype(F32)[:, None] * (sc & 0xF).astype(F32)
    dm = dmin16.astype(F32)[:, None] * (sc >> 4).astype(F32)
    has = d != 0
    xb = x.reshape(nb, 16, 16)
    l = np.clip(nearest_int((xb + dm[:, :, None]) / np.where(has, d, one)[:, :, None]), 0, 3)
    L = np.where(has[:, :, None], l, L).astype(np.uint8).reshape(nb, QK_K)
    return np.concatenate([sc, _pack_2bit_quads(L), d16.reshape(nb, 1).view(np.uint8),
                           dmin16.reshape(nb, 1).view(np.uint8)], axis=1)


def _q3_k_blocks(x: np.ndarray) -> np.ndarray:
    """quantize_row_q3_K_ref on x[nb, 256] float32 → [nb, 110] uint8."""
    nb = x.shape[0]
    xs = np.ascontiguousarray(x.reshape(nb * 16, 16).T)
    L, scales = _make_q3_quants(xs, 4)
    scales = scales.reshape(nb, 16)
    L = L.T.reshape(nb, 16, 16)
    abs_s = np.abs(scales)
    first = np.argmax(abs_s, axis=1)
    rows = np.arange(nb)
    max_scale = np.where(abs_s[rows, first] > 0, scales[rows, first], F32(0))
    live = max_scale != 0
    iscale = F32(-32) / np.where(live, max_scale, F32(1))
    l = np.clip(nearest_int(iscale[:, None] * scales), -32, 31) + 32
    l = np.where(live[:, None], l, 0).astype(np.uint8)
    sb = np.zeros((nb, 12), np.uint8)
    sb[:, 0:8] = (l[:, :8] & 0xF) | ((l[:, 8:] & 0xF) << 4)
    hi = (l >> 4).reshape(nb, 4, 4)  # [j // 4, j % 4]
    sb[:, 8:12] = hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)
    d16 = _fp16(np.where(live, F32(1) / iscale, F32(0)))
    sc = np.where(live[:, None], l.astype(np.int32) - 32, 0)
    d = d16.astype(F32)[:, None] * sc.astype(F32)
    has = d != 0
    xb = x.reshape(nb, 16, 16)
    q = np.clip(nearest_int(xb / np.where(has, d, F32(1))[:, :, None]), -4, 3) + 4
    L = np.where(has[:, :, None], q, L).astype(np.uint8).reshape(nb, QK_K)
    high = L > 3
    hmask = np.bitwise_or.reduce(high.reshape(nb, 8, 32).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None],
                                 axis=1).astype(np.uint8)
    L = np.where(high, L - 4, L).astype(np.uint8)
    return np.concatenate([hmask, _pack_2bit_quads(L), sb, d16.reshape(nb, 1).view(np.uint8)], axis=1)


def _q6_k_blocks(x: np.ndarray) -> np.ndarray:
    """quantize_row_q6_K_ref on x[nb, 256] float32 → [nb, 210] uint8."""
    nb = x.shape[0]
    xs = x.reshape(nb * 16, 16).T  # [16, sub-blocks]
    L, scales = _make_qx_quants(np.ascontiguousarray(xs), 32)
    scales = scales.reshape(nb, 16)
    L = L.T.reshape(nb, 16, 16)

    abs_s = np.abs(scales)
    first = np.argmax(abs_s, axis=1)
    rows = np.arange(nb)
    max_abs = abs_s[rows, first]
    max_scale = scales[rows, first]
    zero = ~(max_abs >= _GROUP_MAX_EPS)  # max_abs_scale < GROUP_MAX_EPS (and 0 when never updated)
    max_scale = np.where(zero, F32(1), max_scale)
    iscale = F32(-128) / max_scale
    d16 = _fp16(F32(1) / iscale)
    sc = np.minimum(127, nearest_int(iscale[:, None] * scales)).astype(np.int8)
    d = d16.astype(F32)[:, None] * sc.astype(F32)  # [nb, 16]
    has = d != 0
    xb = x.reshape(nb, 16, 16)
    l = np.clip(nearest_int(xb / np.where(has, d, F32(1))[:, :, None]), -32, 31) + 32
    L = np.where(has[:, :, None], l, L).astype(np.uint8).reshape(nb, 2, 4, 32)

    a, b, c, e = L[:, :, 0], L[:, :, 1], L[:, :, 2], L[:, :, 3]
    ql = np.concatenate([(a & 15) | ((c & 15) << 4), (b & 15) | ((e & 15) << 4)], axis=2).reshape(nb, 128)
    qh = ((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)).reshape(nb, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), d16.reshape(nb, 1).view(np.uint8)], axis=1)
    out[zero] = 0
    return out


def _q45_k_common(x: np.ndarray, nmax: int, rmin: float, nstep: int) -> tuple[np.ndarray, ...]:
    """The shared part of quantize_row_q4_K_ref / q5_K_ref: (d, dmin as f16 bytes, the 12 packed
    scale bytes, L[nb, 256])."""
    nb = x.shape[0]
    xs = np.ascontiguousarray(x.reshape(nb * 8, 32).T)  # [32, sub-blocks]
    av_x = np.sqrt(_seqsum(xs * xs) / F32(32))
    weights = av_x + np.abs(xs)
    L, scales, mins = _make_qkx2_quants(xs, weights, nmax, rmin, 0.1, nstep)
    scales = scales.reshape(nb, 8)
    mins = mins.reshape(nb, 8)
    L = L.T.reshape(nb, 8, 32)

    max_scale = scales.max(axis=1)
    max_scale = np.where(max_scale > 0, max_scale, F32(0))
    max_min = mins.max(axis=1)
    max_min = np.where(max_min > 0, max_min, F32(0))
    one = F32(1)
    inv_scale = np.where(max_scale > 0, F32(63) / np.where(max_scale > 0, max_scale, one), F32(0))
    inv_min = np.where(max_min > 0, F32(63) / np.where(max_min > 0, max_min, one), F32(0))
    ls = np.minimum(63, nearest_int(inv_scale[:, None] * scales) & 0xFF).astype(np.uint8)
    lm = np.minimum(63, nearest_int(inv_min[:, None] * mins) & 0xFF).astype(np.uint8)
    sb = np.empty((nb, 12), np.uint8)
    sb[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    sb[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    sb[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    d16 = _fp16(max_scale / F32(63))
    dmin16 = _fp16(max_min / F32(63))

    d = d16.astype(F32)[:, None] * ls.astype(F32)
    dm = dmin16.astype(F32)[:, None] * lm.astype(F32)
    has = d != 0
    xb = x.reshape(nb, 8, 32)
    l = np.clip(nearest_int((xb + dm[:, :, None]) / np.where(has, d, one)[:, :, None]), 0, nmax)
    L = np.where(has[:, :, None], l, L).astype(np.uint8).reshape(nb, QK_K)
    head = np.concatenate([d16.reshape(nb, 1).view(np.uint8), dmin16.reshape(nb, 1).view(np.uint8), sb], axis=1)
    return head, L


def _q4_k_blocks(x: np.ndarray) -> np.ndarray:
    """quantize_row_q4_K_ref on x[nb, 256] float32 → [nb, 144] uint8."""
    head, L = _q45_k_common(x, 15, -1.0, 20)
    nb = x.shape[0]
    L = L.reshape(nb, 4, 2, 32)
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(nb, 128)
    return np.concatenate([head, qs], axis=1)


def _q5_k_blocks(x: np.ndarray) -> np.ndarray:
    """quantize_row_q5_K_ref on x[nb, 256] float32 → [nb, 176] uint8."""
    head, L = _q45_k_common(x, 31, -0.5, 15)
    nb = x.shape[0]
    L = L.reshape(nb, 4, 2, 32)
    hi = (L >> 4).astype(np.uint8)
    shifts = (np.arange(8, dtype=np.uint8).reshape(1, 4, 2, 1))
    qh = np.bitwise_or.reduce(hi << shifts, axis=(1, 2)).astype(np.uint8)
    lo = L & 15
    qs = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(nb, 128)
    return np.concatenate([head, qh, qs], axis=1)


class _KQuant(GGUFNativeQuantizer):
    """A k-quant: gguf-py decodes it; bitconv encodes it (gguf-py has no encoder for these)."""

    _encode: ClassVar[Any]

    #: False: always the numpy port (tests compare both paths with ggml's C reference)
    use_extension: ClassVar[bool] = True

    def quantize(self, w: np.ndarray, state: Any = None) -> QuantizedTensor:
        w = np.asarray(w)
        shape = w.shape
        if not shape or shape[-1] % QK_K:
            raise ValueError(f"{self.name}: row length {shape[-1] if shape else 0} is not a multiple of {QK_K}")
        type_size = GGML_QUANT_SIZES[self.qtype][1]
        if self.use_extension and (fast := kernels.quantize_k(w, self.qtype)) is not None:
            return QuantizedTensor(fast.reshape(*shape[:-1], shape[-1] // QK_K * type_size))
        blocks = w.reshape(-1, QK_K)
        out = np.empty((blocks.shape[0], type_size), np.uint8)
        with np.errstate(all="ignore"):
            for s in range(0, blocks.shape[0], _SLAB_BLOCKS):
                chunk = np.ascontiguousarray(blocks[s:s + _SLAB_BLOCKS], dtype=F32)
                out[s:s + _SLAB_BLOCKS] = type(self)._encode(chunk)
        return QuantizedTensor(out.reshape(*shape[:-1], shape[-1] // QK_K * type_size))

    def encoded_nbytes(self, shape: tuple[int, ...]) -> int:
        block, nbytes = GGML_QUANT_SIZES[self.qtype]
        return math.prod(shape) // block * nbytes


@register_quantizer()
class Q2_K(_KQuant):
    name = "q2_k"
    qtype = GGMLQuantizationType.Q2_K
    file_type = llama_ftype = int(LlamaFileType.MOSTLY_Q2_K)
    description = ("llama-quantize's Q2_K mix: q2_k, attn_v q3_k/q4_k, ffn_down and attn_output q3_k, "
                   "output q6_k")
    _encode = staticmethod(_q2_k_blocks)


@register_quantizer()
class Q3_K(_KQuant):
    name = "q3_k"
    qtype = GGMLQuantizationType.Q3_K
    file_type = llama_ftype = int(LlamaFileType.MOSTLY_Q3_K_S)
    pure = True
    description = "every matrix 3-bit k-quant (llama-quantize --pure Q3_K_S): 6-bit scale per 16 values"
    _encode = staticmethod(_q3_k_blocks)


@register_quantizer()
class Q4_K(_KQuant):
    name = "q4_k"
    qtype = GGMLQuantizationType.Q4_K
    file_type = llama_ftype = int(LlamaFileType.MOSTLY_Q4_K_S)
    pure = True
    description = "every matrix 4-bit k-quant (llama-quantize --pure Q4_K_S): 6-bit scale + min per 32 values"
    _encode = staticmethod(_q4_k_blocks)


@register_quantizer()
class Q5_K(_KQuant):
    name = "q5_k"
    qtype = GGMLQuantizationType.Q5_K
    file_type = llama_ftype = int(LlamaFileType.MOSTLY_Q5_K_S)
    pure = True
    description = "every matrix 5-bit k-quant (llama-quantize --pure Q5_K_S): 6-bit scale + min per 32 values"
    _encode = staticmethod(_q5_k_blocks)


@register_quantizer()
class Q6_K(_KQuant):
    name = "q6_k"
    qtype = GGMLQuantizationType.Q6_K
    file_type = llama_ftype = int(LlamaFileType.MOSTLY_Q6_K)
    description = "6-bit k-quant, 256-value super-blocks, int8 scale per 16 values (llama-quantize's Q6_K)"
    _encode = staticmethod(_q6_k_blocks)


def _mix(base: type[_KQuant], name: str, ftype: LlamaFileType, description: str) -> type[_KQuant]:
    """A llama-quantize mix whose default type is `base`'s."""
    cls = type(name.upper(), (base,), {"name": name, "file_type": int(ftype), "llama_ftype": int(ftype),
                                        "pure": False, "description": description})
    return register_quantizer()(cls)


_mix(Q3_K, "q3_k_s", LlamaFileType.MOSTLY_Q3_K_S, "llama-quantize's Q3_K_S: q3_k, output q6_k")
_mix(Q3_K, "q3_k_m", LlamaFileType.MOSTLY_Q3_K_M,
     "llama-quantize's Q3_K_M: q3_k; attn_v q5_k/q4_k, ffn_down q5_k/q4_k, attn_output q4_k, output q6_k")
_mix(Q3_K, "q3_k_l", LlamaFileType.MOSTLY_Q3_K_L,
     "llama-quantize's Q3_K_L: q3_k; attn_v, ffn_down, attn_output q5_k, output q6_k")
_mix(Q4_K, "q4_k_s", LlamaFileType.MOSTLY_Q4_K_S,
     "llama-quantize's Q4_K_S: q4_k; first attn_v and first 1/8 of ffn_down q5_k, output q6_k")
_mix(Q4_K, "q4_k_m", LlamaFileType.MOSTLY_Q4_K_M,
     "llama-quantize's Q4_K_M: q4_k; attn_v and ffn_down of half the layers q6_k, output q6_k")
_mix(Q5_K, "q5_k_s", LlamaFileType.MOSTLY_Q5_K_S, "llama-quantize's Q5_K_S: q5_k, output q6_k")
_mix(Q5_K, "q5_k_m", LlamaFileType.MOSTLY_Q5_K_M,
     "llama-quantize's Q5_K_M: q5_k; attn_v and ffn_down of half the layers q6_k, output q6_k")
