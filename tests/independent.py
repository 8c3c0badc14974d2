"""Decoders written from FORMATS.md alone, never shared with bitconv's packers, so a test that
round-trips through them checks the layout rather than our own consistency."""
from __future__ import annotations

import numpy as np


def unpack_i2s(blob: bytes | np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.float32, bytes]:
    """I2_S: groups of 128 row-major values → 32 bytes; byte j holds values j, 32+j, 64+j, 96+j in
    bit pairs 7–6, 5–4, 3–2, 1–0; code = value + 1; then the f32 scale and 28 padding bytes."""
    raw = np.frombuffer(bytes(blob), dtype=np.uint8)
    packed, tail = raw[: n * k // 4], raw[n * k // 4:]
    groups = packed.reshape(-1, 32)
    values = np.empty((groups.shape[0], 128), dtype=np.int8)
    for shift, first in ((6, 0), (4, 32), (2, 64), (0, 96)):
        values[:, first:first + 32] = ((groups >> shift) & 3).astype(np.int8) - 1
    return values.reshape(n, k), tail[:4].view(np.float32)[0], tail[4:].tobytes()


def ulps_apart(a: np.float32, b: np.float32) -> int:
    return abs(int(np.float32(a).view(np.int32)) - int(np.float32(b).view(np.int32)))


# --- TL1 / TL2, from FORMATS-TL.md: each byte's (row, column) computed from its loop indices ---

_TL2_ROWPERM = np.array(list(range(0, 8)) + list(range(16, 24)) + list(range(8, 16)) + list(range(24, 32)))


def _loop_indices(*extents: int) -> list[np.ndarray]:
    """Index arrays of a loop nest (outermost first), flattened in iteration order."""
    return [a.reshape(-1) for a in np.indices(extents)]


def tl2_padded_size(m: int, k: int) -> int:
    p = (k - 256) * m // 3 * 5 // 8 + 256 * m // 2 * 4 // 8
    return (p + 31) // 32 * 32


def unpack_tl2(blob: bytes | np.ndarray, m: int, k: int, bm: int, bk: int) -> tuple[np.ndarray, np.float32, bytes]:
    """TL2 tensor bytes → (codes [m, k], scale, the bytes between payload end and the scale + after it)."""
    raw = np.frombuffer(bytes(blob), dtype=np.uint8)
    k3 = (k // bk) * bk
    k2 = k - k3
    codes = np.full((m, k), 99, dtype=np.int8)
    # A: three-part indices, one byte per (tileM, tileK, blk, kk, p)
    tm, tk, blk, kk, p = _loop_indices(m // bm, k3 // bk, bm // 32, bk // 6, 32)
    a = raw[:m * k3 // 6]
    row = tm * bm + blk * 32 + _TL2_ROWPERM[p]
    g0 = tk * bk // 3 + 2 * kk
    mags = {0: a >> 4, 1: a & 15}
    # S: sign words, bit (15 - i) of word c
    s_words = raw[m * k3 // 6: m * k3 // 6 + m * k3 // 24].view("<u2")
    tm2, tk2, blk2, q, c = _loop_indices(m // bm, k3 // bk, bm // 32, bk // 24, 16)
    sign = np.zeros((m, k3 // 3), dtype=bool)
    for i in range(16):
        srow = tm2 * bm + blk2 * 32 + (i % 2) * 16 + c
        sg = tk2 * bk // 3 + 8 * q + i // 2
        sign[srow, sg] = (s_words >> (15 - i)) & 1
    for j in (0, 1):
        g = g0 + j
        v = np.where(sign[row, g], -mags[j].astype(np.int16), mags[j].astype(np.int16))
        # v = 9a + 3b + c with a, b, c in {-1, 0, 1}: balanced ternary digits
        digits = []
        rest = v.copy()
        for _ in range(3):
            d = ((rest + 1) % 3) - 1
            digits.append(d)
            rest = (rest - d) // 3
        codes[row, 3 * g + 2], codes[row, 3 * g + 1], codes[row, 3 * g] = digits
    end = m * k3 // 6 + m * k3 // 24
    if k2:
        b = raw[end:end + m * k2 // 4]
        tm3, t2, blk3, kk3, p3 = _loop_indices(m // bm, k2 // 32, bm // 32, 8, 32)
        brow = tm3 * bm + blk3 * 32 + _TL2_ROWPERM[p3]
        h0 = t2 * 16 + 2 * kk3
        for j, u in ((0, b >> 4), (1, b & 15)):
            col = k3 + 2 * (h0 + j)
            codes[brow, col] = u // 3 - 1
            codes[brow, col + 1] = u % 3 - 1
        end += m * k2 // 4
    assert (codes != 99).all(), "some weight was not covered by the layout"
    p32 = tl2_padded_size(m, k)
    return codes, raw[p32:p32 + 4].view(np.float32)[0], raw[end:p32].tobytes() + raw[p32 + 4:].tobytes()


def unpack_tl1(blob: bytes | np.ndarray, m: int, k: int, bm: int, bk: int, bmm: int) -> tuple[np.ndarray, np.float32, bytes]:
    """TL1 tensor bytes → (codes [m, k], scale, the 28 bytes after the scale)."""
    raw = np.frombuffer(bytes(blob), dtype=np.uint8)
    by = 256 // bmm
    codes = np.full((m, k), 99, dtype=np.int8)
    tm, tk, blk, kb, rb, pp, r = _loop_indices(m // bm, k // bk, bm // bmm, bk // by, bmm // 16, by // 4, 16)
    b = raw[:m * k // 4]
    row = tm * bm + blk * bmm + rb * 16 + r
    h0 = tk * bk // 2 + kb * by // 2 + 2 * pp
    for j, u in ((0, b >> 4), (1, b & 15)):
        codes[row, 2 * (h0 + j)] = u // 3 - 1
        codes[row, 2 * (h0 + j) + 1] = u % 3 - 1
    assert (codes != 99).all(), "some weight was not covered by the layout"
    return codes, raw[m * k // 4:m * k // 4 + 4].view(np.float32)[0], raw[m * k // 4 + 4:].tobytes()


# --- bitnet.cpp's converter arithmetic, in torch (utils/convert-hf-to-gguf-bitnet.py) -------------

def bitnet_cpp_tl_weight(w, threads: int = 1) -> tuple[np.ndarray, np.float32]:
    """What bitnet.cpp's converter hands a tl1/tl2 packer for one linear, and the scale it stores,
    step by step as its code does it with torch: tensors neither f16 nor f32 are widened to f32
    before `BitnetModel.weight_quant`, which takes s = 1 / mean|w| (clamped at 1e-5) in float32,
    returns round(w·s).clamp(−1, 1) / s cast back to the tensor's dtype; `transform_to_tl1/tl2`
    stores max|x| as the scale and packs sign(x) (|x| < 1e-6 set to 0). `threads`: torch's
    intra-op threads while it runs (the mean's last bit depends on them).
    Returns (codes int8, scale as the converter's numpy value)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t = w if isinstance(w, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(w))
        if t.dtype not in (torch.float16, torch.float32):
            t = t.to(torch.float32)
        dtype = t.dtype
        x = t.float()
        s = 1 / x.abs().mean().clamp(min=1e-5)
        x = ((x * s).round().clamp(-1, 1) / s).type(dtype).numpy()
    finally:
        torch.set_num_threads(before)
    scale = np.max(np.abs(x))
    codes = np.sign(np.where(np.abs(x) < 1e-6, 0, x)).astype(np.int8)
    return codes, scale
