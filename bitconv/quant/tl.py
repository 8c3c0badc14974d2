"""TL1 / TL2: bitnet.cpp's lookup-table layouts (TL1 for its ARM kernels, TL2 for x86).

Both regroup a tensor's ternary codes for kernels generated per matrix shape (M output rows, K
inputs) with a tiling: BM rows per tile, BK columns per tile, bm rows per SIMD block. The bytes
depend on the tiling, so a file only runs on a bitnet.cpp build whose generated kernels use the
same tiling; bitconv writes that tiling as bitnet.cpp's `kernel_config.ini` next to the GGUF, or
packs for an existing build's file (`--kernel-config`). The layouts are in FORMATS-TL.md:

* TL2 (type 39): columns [0, K3) (K3 = K − K mod BK) in triples as a 4-bit |9a+3b+c| index plus a
  sign bit, columns [K3, K) in pairs as a 4-bit 3a+b+4 index; index bytes interleave 32-row blocks
  with a fixed row permutation; then zero padding up to bitnet.cpp's size formula (which
  over-allocates), the per-tensor f32 scale and 28 zero bytes.
* TL1 (type 38): pairs as 4-bit 3a+b+4 indices, 16 rows × 4 columns per 16 bytes; M·K/4 bytes, then
  the scale and 28 zero bytes (the same size as I2_S).
"""
from __future__ import annotations

import configparser
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import QuantizationError, UsageError
from .base import QuantizedTensor, Quantizer
from .i2s import i2s_trailer
from .registry import register_quantizer
from .ternary import TernaryScale, converter_scale, ternarize

TL1_TYPE_ID = 38
TL2_TYPE_ID = 39
TRAILER_BYTES = 32
#: byte position p of a 32-byte TL2 index chunk holds row _ROWPERM[p] of its 32-row block
_ROWPERM = np.r_[0:8, 16:24, 8:16, 24:32]
#: the kernels sum a BK tile in 16-bit lanes: TL2 adds BK/3 triple sums of up to 3·127, so BK
#: above 256 can overflow (upstream presets use 64–192)
MAX_BK = 256
#: BK values tried when bitconv picks a tiling, best first (upstream presets use these)
_TL2_BK_PREFERENCE = (96, 192, 48, 144, 240, 120, 168, 216, 72, 24)
_TL1_BK_PREFERENCE = (128, 64, 256, 192, 32, 96, 160, 224, 16, 8)
#: BM is the largest multiple of bm dividing M up to this (upstream presets use 128–320)
_MAX_AUTO_BM = 256


@dataclass(frozen=True)
class Tiling:
    """One kernel_config.ini section: shape (m, k), tile rows `bm`, tile columns `bk`, SIMD rows
    `bmm` (ConfigParser's lower-cased names for codegen's BM, BK and bm)."""

    m: int
    k: int
    bm: int
    bk: int
    bmm: int


def tl2_problems(t: Tiling) -> list[str]:
    """Why the TL2 kernels cannot run this tiling (empty when they can)."""
    out = []
    if t.bmm != 32:
        out.append("bm (bmm) must be 32")
    if t.bm <= 0 or t.bm % 32 or t.m % t.bm:
        out.append(f"BM={t.bm} must be a multiple of 32 dividing M={t.m}")
    if t.k < 256:
        out.append(f"K={t.k} must be at least 256 (bitnet.cpp's TL2 size formula)")
    if t.bk <= 0 or t.bk % 24 or t.bk > min(MAX_BK, t.k):
        out.append(f"BK={t.bk} must be a multiple of 24 up to {min(MAX_BK, t.k)}")
    elif (t.k % t.bk) % 32:
        out.append(f"K mod BK = {t.k % t.bk} must be a multiple of 32")
    elif t.k >= 256 and tl2_payload_nbytes(t.m, t.k, t.bk) > tl2_padded_nbytes(t.m, t.k):
        out.append("K mod BK is too large for bitnet.cpp's TL2 size formula")
    return out


def tl1_problems(t: Tiling) -> list[str]:
    """Why the TL1 kernels cannot run this tiling (empty when they can)."""
    out = []
    if t.bmm not in (32, 64):
        return [f"bm (bmm) must be 32 or 64, not {t.bmm}"]
    if t.bm <= 0 or t.bm % t.bmm or t.m % t.bm:
        out.append(f"BM={t.bm} must be a multiple of bm={t.bmm} dividing M={t.m}")
    by = 256 // t.bmm
    if t.bk <= 0 or t.k % t.bk or t.bk % by:
        out.append(f"BK={t.bk} must divide K={t.k} and be a multiple of {by} (256/bm)")
    return out


def tl2_payload_nbytes(m: int, k: int, bk: int) -> int:
    k3 = k // bk * bk
    return m * k3 // 6 + m * k3 // 24 + m * (k - k3) // 4


def tl2_padded_nbytes(m: int, k: int) -> int:
    """bitnet.cpp's TL2 allocation before the scale (ggml_nbytes and codegen use this expression,
    evaluated left to right in integers), rounded up to 32."""
    p = (k - 256) * m // 3 * 5 // 8 + 256 * m // 2 * 4 // 8
    return -(-p // 32) * 32


def tl2_nbytes(m: int, k: int) -> int:
    return tl2_padded_nbytes(m, k) + TRAILER_BYTES


def tl1_nbytes(m: int, k: int) -> int:
    return m * k // 4 + TRAILER_BYTES


def _largest_bm(m: int, step: int) -> int | None:
    return next((bm for bm in range(min(m, _MAX_AUTO_BM) // step * step, 0, -step) if m % bm == 0), None)


def choose_tl2_tiling(m: int, k: int) -> Tiling | None:
    """A TL2 tiling for (m, k): no two-part remainder when some BK allows it (bitnet.cpp's LUT
    workspace is sized for that case), else the smallest remainder; None when none exists."""
    bm = _largest_bm(m, 32)
    if bm is None:
        return None
    valid = [Tiling(m, k, bm, bk, 32) for bk in _TL2_BK_PREFERENCE if not tl2_problems(Tiling(m, k, bm, bk, 32))]
    return min(valid, key=lambda t: t.k % t.bk, default=None)  # min keeps the preference order on ties


def choose_tl1_tiling(m: int, k: int) -> Tiling | None:
    bm = _largest_bm(m, 32)
    if bm is None:
        return None
    return next((t for bk in _TL1_BK_PREFERENCE if not tl1_problems(t := Tiling(m, k, bm, bk, 32))), None)


class KernelConfig:
    """bitnet.cpp's `include/kernel_config.ini`: (M, K) → tiling, one section per shape."""

    def __init__(self, tilings: Iterable[Tiling] = (), source: str | None = None) -> None:
        self.source = source
        self._by_shape: dict[tuple[int, int], Tiling] = {}
        for t in tilings:
            self.add(t)

    def add(self, t: Tiling) -> None:
        old = self._by_shape.setdefault((t.m, t.k), t)
        if old != t:
            where = f"{self.source}: " if self.source else ""
            raise UsageError(f"{where}two sections for m={t.m}, k={t.k} with different tilings")

    def get(self, m: int, k: int) -> Tiling | None:
        return self._by_shape.get((m, k))

    @property
    def tilings(self) -> list[Tiling]:
        return list(self._by_shape.values())

    def __len__(self) -> int:
        return len(self._by_shape)

    @classmethod
    def read(cls, path: str | Path) -> "KernelConfig":
        p = Path(path)
        parser = configparser.ConfigParser()
        try:
            with open(p, encoding="utf-8") as f:
                parser.read_file(f)
        except OSError as e:
            raise UsageError(f"--kernel-config {p}: cannot read ({e.strerror or e})") from None
        except (configparser.Error, UnicodeDecodeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UsageError(f"--kernel-config {p}: not a kernel_config.ini ({first})") from None
        cfg = cls(source=str(p))
        for section in parser.sections():
            try:
                values = {key: int(parser.get(section, key)) for key in ("m", "k", "bm", "bk", "bmm")}
            except (configparser.Error, ValueError) as e:
                first = str(e).splitlines()[0]
                raise UsageError(f"--kernel-config {p}: section [{section}]: {first}") from None
            cfg.add(Tiling(**values))
        if not len(cfg):
            raise UsageError(f"--kernel-config {p}: no kernel sections")
        return cfg

    def to_ini(self) -> str:
        """The file as bitnet.cpp's codegen scripts write it (ConfigParser's format)."""
        return "".join(f"[Kernels_{i}]\nm = {t.m}\nk = {t.k}\nbm = {t.bm}\nbk = {t.bk}\nbmm = {t.bmm}\n\n"
                       for i, t in enumerate(self.tilings))

    def codegen_text(self, layout: str, model_key: str) -> str:
        """What a user passes to bitnet.cpp's codegen_tl1.py / codegen_tl2.py for these shapes."""
        ts = self.tilings
        shapes = ", ".join(f"[{t.m}, {t.k}]" for t in ts)
        lists = {"BM": ",".join(str(t.bm) for t in ts), "BK": ",".join(str(t.bk) for t in ts),
                 "bm": ",".join(str(t.bmm) for t in ts)}
        build = "-DBITNET_X86_TL2=ON" if layout == "tl2" else "-DBITNET_ARM_TL1=ON"
        lines = [
            f"# bitnet.cpp kernel generation for this {layout} file (written by bitconv).",
            f"# 1. In utils/codegen_{layout}.py, add to ModelShapeDict:",
            f'#        "{model_key}": [{shapes}],',
            "# 2. From the BitNet root (writes include/bitnet-lut-kernels.h and include/kernel_config.ini,",
            "#    the same tilings as the .kernel_config.ini next to this file):",
            f"python utils/codegen_{layout}.py --model {model_key} --BM {lists['BM']} --BK {lists['BK']} --bm {lists['bm']}",
            f"# 3. Build bitnet.cpp with cmake {build}.",
        ]
        if layout == "tl2":
            lines.append("# Run with micro-batch 1 (llama-cli/llama-server -ub 1): upstream TL2 kernels give wrong "
                         "results for larger micro-batches (an open upstream bug).")
        lines += ["", f"shapes = [{shapes}]"] + [f"{k} = {v}" for k, v in lists.items()]
        return "\n".join(lines) + "\n"


def pack_tl2(codes: np.ndarray, t: Tiling) -> np.ndarray:
    """Codes in {−1, 0, 1}, shape (M, K) → TL2 payload bytes (index part, sign part, two-part)."""
    c = np.asarray(codes, dtype=np.int8)
    m, k = c.shape
    bm, bk = t.bm, t.bk
    k3 = k // bk * bk
    k2 = k - k3
    tri = c[:, :k3].reshape(m, k3 // 3, 3)
    v = tri[..., 0] * np.int8(9) + tri[..., 1] * np.int8(3) + tri[..., 2]
    # indices: (tileM, blk, row in block, tileK, pair of triples in BK, triple in pair)
    idx = np.abs(v).astype(np.uint8).reshape(m // bm, bm // 32, 32, k3 // bk, bk // 6, 2)[:, :, _ROWPERM]
    idx = idx.transpose(0, 3, 1, 4, 2, 5)
    parts = [((idx[..., 0] << np.uint8(4)) | idx[..., 1]).reshape(-1)]
    # signs: word c of a 32-row block holds rows c (even bits) and 16+c (odd bits) for 8 triples,
    # the first triple in the most significant bits
    neg = (v < 0).reshape(m // bm, bm // 32, 2, 16, k3 // bk, bk // 24, 8).transpose(0, 4, 1, 5, 3, 6, 2)
    words = np.packbits(neg.reshape(*neg.shape[:5], 16), axis=-1, bitorder="big")  # [high byte, low byte]
    parts.append(words[..., ::-1].reshape(-1))  # little-endian uint16
    if k2:
        pair = c[:, k3:].reshape(m, k2 // 2, 2)
        u = (pair[..., 0] * np.int8(3) + pair[..., 1] + np.int8(4)).astype(np.uint8)
        u = u.reshape(m // bm, bm // 32, 32, k2 // 32, 8, 2)[:, :, _ROWPERM].transpose(0, 3, 1, 4, 2, 5)
        parts.append(((u[..., 0] << np.uint8(4)) | u[..., 1]).reshape(-1))
    return np.concatenate(parts)


def unpack_tl2(payload: np.ndarray, t: Tiling) -> np.ndarray:
    """Inverse of `pack_tl2` (codes int8, shape (M, K)); reads only the payload bytes."""
    m, k, bm, bk = t.m, t.k, t.bm, t.bk
    k3 = k // bk * bk
    k2 = k - k3
    data = np.asarray(payload, dtype=np.uint8).reshape(-1)
    na, ns = m * k3 // 6, m * k3 // 24
    a = data[:na].reshape(m // bm, k3 // bk, bm // 32, bk // 6, 32)
    idx = np.stack([a >> np.uint8(4), a & np.uint8(15)], axis=-1)  # (tileM, tileK, blk, kk, p, j)
    idx = idx.transpose(0, 2, 4, 1, 3, 5)  # (tileM, blk, p, tileK, kk, j)
    rows = np.empty_like(idx)
    rows[:, :, _ROWPERM] = idx
    mag = rows.reshape(m, k3 // 3).astype(np.int8)
    w = data[na:na + ns].reshape(m // bm, k3 // bk, bm // 32, bk // 24, 16, 2)[..., ::-1]
    bits = np.unpackbits(np.ascontiguousarray(w), axis=-1, bitorder="big")  # (.., c, 16 bits)
    bits = bits.reshape(m // bm, k3 // bk, bm // 32, bk // 24, 16, 8, 2).transpose(0, 2, 6, 4, 1, 3, 5)
    v = np.where(bits.reshape(m, k3 // 3).astype(bool), -mag, mag)
    tri = np.stack([(v + 13) // 9 - 1, ((v + 13) // 3) % 3 - 1, (v + 13) % 3 - 1], axis=-1)
    out = np.empty((m, k), dtype=np.int8)
    out[:, :k3] = tri.reshape(m, k3)
    if k2:
        b = data[na + ns:na + ns + m * k2 // 4].reshape(m // bm, k2 // 32, bm // 32, 8, 32)
        u = np.stack([b >> np.uint8(4), b & np.uint8(15)], axis=-1).transpose(0, 2, 4, 1, 3, 5)
        urows = np.empty_like(u)
        urows[:, :, _ROWPERM] = u
        out[:, k3:] = _pairs_to_codes(urows.reshape(m, k2 // 2))
    return out


def pack_tl1(codes: np.ndarray, t: Tiling) -> np.ndarray:
    """Codes in {−1, 0, 1}, shape (M, K) → TL1 payload bytes (M·K/4)."""
    c = np.asarray(codes, dtype=np.int8)
    m, k = c.shape
    by = 256 // t.bmm
    pair = c.reshape(m, k // 2, 2)
    u = (pair[..., 0] * np.int8(3) + pair[..., 1] + np.int8(4)).astype(np.uint8)
    # rows (tileM, blk, rb, r), pairs (tileK, kb, pp, j) → (tileM, tileK, blk, kb, rb, pp, r, j)
    u = u.reshape(m // t.bm, t.bm // t.bmm, t.bmm // 16, 16, k // t.bk, t.bk // by, by // 4, 2)
    u = u.transpose(0, 4, 1, 5, 2, 6, 3, 7)
    return ((u[..., 0] << np.uint8(4)) | u[..., 1]).reshape(-1)


def unpack_tl1(payload: np.ndarray, t: Tiling) -> np.ndarray:
    """Inverse of `pack_tl1` (codes int8, shape (M, K))."""
    m, k = t.m, t.k
    by = 256 // t.bmm
    b = np.asarray(payload, dtype=np.uint8).reshape(-1)[:m * k // 4]
    b = b.reshape(m // t.bm, k // t.bk, t.bm // t.bmm, t.bk // by, t.bmm // 16, by // 4, 16)
    u = np.stack([b >> np.uint8(4), b & np.uint8(15)], axis=-1).transpose(0, 2, 4, 6, 1, 3, 5, 7)
    return _pairs_to_codes(u.reshape(m, k // 2))


def _pairs_to_codes(u: np.ndarray) -> np.ndarray:
    """4-bit pair indices 3a + b + 4 → codes [..., 2·n]."""
    u = u.astype(np.int8)
    return np.stack([u // 3 - 1, u % 3 - 1], axis=-1).reshape(*u.shape[:-1], -1)


class LutQuantizer(Quantizer):
    """Shared by TL1/TL2: per-tensor absmean scale, codes per row chunk, then the whole tensor is
    regrouped for its tiling (`assemble`), because the layouts interleave rows across tiles.

    The scale is bitnet.cpp's converter's to the bit (`converter_scale`: torch's float32 mean in
    torch's summation order, no torch needed), as a converter process with `torch_threads` intra-op
    threads computes it; the default 1 is the serial sum (the converter under OMP_NUM_THREADS=1, or
    any tensor of at most 32768 weights). A packed checkpoint's own scale is kept as it is."""

    layout = ""
    block_size = 2
    bits_per_weight = 2.0
    embedding_type = "f16"  # as bitnet.cpp's converter writes token_embd
    ternary = True

    def __init__(self, kernel_config: KernelConfig | None = None, torch_threads: int = 1) -> None:
        #: an existing build's tilings (strict), or None: bitconv picks one per shape
        self.kernel_config = kernel_config
        if int(torch_threads) < 1:
            raise UsageError(f"torch_threads must be at least 1, not {torch_threads}")
        #: the intra-op thread count of the converter run whose scales to reproduce
        self.torch_threads = int(torch_threads)
        self._chosen: dict[tuple[int, int], Tiling] = {}

    # per-layout hooks
    def _problems(self, t: Tiling) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _choose(self, m: int, k: int) -> Tiling | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _requirements(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _tiling_or_reason(self, shape: tuple[int, ...]) -> tuple[Tiling | None, str]:
        if len(shape) != 2:
            return None, f"{self.name} packs 2-D matrices"
        m, k = (int(d) for d in shape)
        if (m, k) in self._chosen:
            return self._chosen[(m, k)], ""
        if self.kernel_config is not None:
            t = self.kernel_config.get(m, k)
            if t is None:
                have = ", ".join(f"{x.m}x{x.k}" for x in self.kernel_config.tilings)
                return None, (f"{self.kernel_config.source or 'the kernel config'} has no section for m={m}, k={k} "
                              f"(it has {have}); regenerate the kernels for this model or omit --kernel-config")
            if (problems := self._problems(t)):
                return None, f"the kernel config's tiling for m={m}, k={k} is invalid: {'; '.join(problems)}"
        else:
            t = self._choose(m, k)
            if t is None:
                return None, f"no {self.name} tiling exists for M={m}, K={k}: {self._requirements()}"
        self._chosen[(m, k)] = t
        return t, ""

    def tiling(self, shape: tuple[int, ...]) -> Tiling:
        t, reason = self._tiling_or_reason(shape)
        if t is None:
            raise QuantizationError(reason)
        return t

    def shape_error(self, shape: tuple[int, ...]) -> str | None:
        return self._tiling_or_reason(shape)[1] or None

    def can_quantize(self, shape: tuple[int, ...]) -> bool:
        return self.shape_error(shape) is None

    def used_config(self) -> KernelConfig:
        """The tilings of every shape this quantizer packed or planned, in first-use order."""
        return KernelConfig(self._chosen.values())

    def prepare(self, chunks: Iterable[np.ndarray], stored_dtype: str | None = None,
                known_scale: Any = None) -> TernaryScale:
        return known_scale if known_scale is not None else converter_scale(chunks, self.torch_threads)

    def quantize(self, w: np.ndarray, state: Any = None) -> QuantizedTensor:
        if not isinstance(state, TernaryScale):
            raise QuantizationError(f"{self.name} needs the per-tensor scale from prepare()")
        return QuantizedTensor(ternarize(w, state))

    def trailer(self, state: Any) -> bytes:
        return i2s_trailer(state.scale)


@register_quantizer()
class TL2(LutQuantizer):
    name = "tl2"
    layout = "tl2"
    ggml_type = TL2_TYPE_ID
    file_type = 39
    bits_per_weight = 1.67
    runtimes = ("bitnet.cpp (x86, TL2 build)",)
    description = "ternary LUT layout for bitnet.cpp's x86 TL2 kernels (+ kernel_config.ini)"

    def _problems(self, t: Tiling) -> list[str]:
        return tl2_problems(t)

    def _choose(self, m: int, k: int) -> Tiling | None:
        return choose_tl2_tiling(m, k)

    def _requirements(self) -> str:
        return ("TL2 needs M a multiple of 32, K ≥ 256, and a BK (multiple of 24, ≤ 240) leaving K mod BK a "
                "multiple of 32")

    def assemble(self, out: np.ndarray, state: Any) -> np.ndarray:
        m, k = out.shape
        payload = pack_tl2(out, self.tiling((m, k)))
        padded = np.zeros(tl2_padded_nbytes(m, k), dtype=np.uint8)
        padded[:payload.size] = payload
        return padded

    def encoded_nbytes(self, shape: tuple[int, ...]) -> int:
        return tl2_nbytes(*shape)

    def dequantize(self, q: QuantizedTensor, shape: tuple[int, ...]) -> np.ndarray:
        data = q.data.reshape(-1).view(np.uint8)
        scale = data[tl2_padded_nbytes(*shape):][:4].view(np.float32)[0]
        return unpack_tl2(data, self.tiling(shape)).astype(np.float32) * scale


@register_quantizer()
class TL1(LutQuantizer):
    name = "tl1"
    layout = "tl1"
    ggml_type = TL1_TYPE_ID
    file_type = 38
    runtimes = ("bitnet.cpp (ARM, TL1 build)",)
    description = "ternary LUT layout for bitnet.cpp's ARM TL1 kernels (+ kernel_config.ini)"

    def _problems(self, t: Tiling) -> list[str]:
        return tl1_problems(t)

    def _choose(self, m: int, k: int) -> Tiling | None:
        return choose_tl1_tiling(m, k)

    def _requirements(self) -> str:
        return "TL1 needs M a multiple of 32 and K a multiple of 8"

    def assemble(self, out: np.ndarray, state: Any) -> np.ndarray:
        return pack_tl1(out, self.tiling(out.shape))

    def encoded_nbytes(self, shape: tuple[int, ...]) -> int:
        return tl1_nbytes(*shape)

    def dequantize(self, q: QuantizedTensor, shape: tuple[int, ...]) -> np.ndarray:
        data = q.data.reshape(-1).view(np.uint8)
        scale = data[math.prod(shape) // 4:][:4].view(np.float32)[0]
        return unpack_tl1(data, self.tiling(shape)).astype(np.float32) * scale
