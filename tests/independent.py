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
