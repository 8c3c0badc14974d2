"""Comparisons every artifact format shares: array statistics, the relative-error bound a cos
threshold implies, and the ternary code/scale check (codes identical to re-ternarizing the reference)."""
from __future__ import annotations

import math

import numpy as np

from ..forward import TernaryWeight
from .report import TensorCheck


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return compare_arrays(a, b)["cos"]


def compare_arrays(got: np.ndarray, want: np.ndarray, chunk: int = 1 << 18) -> dict[str, float]:
    """cos, max |got − want| and ‖got − want‖ / ‖want‖ in one float64 pass over cache-sized chunks."""
    g, w = got.reshape(-1), want.reshape(-1)
    dot = gg = ww = ee = 0.0
    emax = 0.0
    for lo in range(0, g.size, chunk):
        a, b = g[lo:lo + chunk].astype(np.float64), w[lo:lo + chunk].astype(np.float64)
        e = a - b
        dot += float(a @ b)
        gg += float(a @ a)
        ww += float(b @ b)
        ee += float(e @ e)
        emax = max(emax, float(np.abs(e).max(initial=0.0)))
    if gg == 0 and ww == 0:
        cos = 1.0
    elif gg == 0 or ww == 0:
        cos = 0.0
    else:
        cos = dot / np.sqrt(gg * ww)
    return {"cos": float(cos), "max_abs_err": emax, "rel_err": float(np.sqrt(ee / ww)) if ww else float(np.sqrt(ee))}


def all_finite(a: np.ndarray, chunk: int = 1 << 22) -> bool:
    flat = a.reshape(-1)
    return all(np.isfinite(flat[i:i + chunk]).all() for i in range(0, flat.size, chunk))


def rel_err_bound(min_cos: float) -> float:
    """‖got − want‖ / ‖want‖ allowed next to a cos threshold: quantization noise orthogonal to the
    weights at cos c has relative size tan θ = sqrt(1 − c²) / c; 1.5× that for headroom (int4 0.98:
    0.30, int8 0.999: 0.067, f16: 0.021, f32: 0.0067)."""
    c = min(max(min_cos, 1e-6), 1.0)
    return 1.5 * math.sqrt(max(1.0 - c * c, 0.0)) / c


def set_stats(tc: TensorCheck, got: np.ndarray, want: np.ndarray) -> None:
    stats = compare_arrays(got, want)
    tc.cos, tc.max_abs_err, tc.rel_err = stats["cos"], stats["max_abs_err"], stats["rel_err"]


def float_threshold(tc: TensorCheck, kind: str, thresholds: dict[str, float], *, magnitude: bool) -> None:
    """Fail `tc` below its type's cos threshold; with `magnitude`, also past the relative error that
    threshold implies (cos cannot see a wrong magnitude, e.g. a scale multiplied by a constant)."""
    need = thresholds.get(kind)
    if need is None:
        return
    if tc.cos is not None and tc.cos < need:
        tc.ok, tc.message = False, f"cos {tc.cos:.6f} < {need} ({kind})"
    elif magnitude and tc.rel_err is not None and tc.rel_err > rel_err_bound(need):
        tc.ok, tc.message = False, f"rel err {tc.rel_err:.4f} > {rel_err_bound(need):.4f} ({kind}: wrong scale?)"


def code_diff(tc: TensorCheck, got: np.ndarray, want: np.ndarray, verb: str = "re-quantizing") -> int:
    """Record how many ternary codes differ from the reference's; the message names the rows."""
    diff = int(np.count_nonzero(got != want))
    tc.codes_identical, tc.codes_differing = diff == 0, diff
    if diff:
        rows = np.nonzero((got != want).any(axis=1))[0]
        tc.message = f"{diff} codes differ from {verb} the reference (rows {rows[0]}…{rows[-1]})"
    return diff


def ternary_check(tc: TensorCheck, got: TernaryWeight, want: TernaryWeight, rtol: float, *,
                  reference_scale: float | None = None, verb: str = "re-quantizing",
                  scale_word: str = "scale") -> None:
    """Codes identical to re-ternarizing the reference and the scale within `rtol` of
    `reference_scale` (default: the reference's own scale)."""
    diff = code_diff(tc, got.codes, want.codes, verb)
    tc.scale, tc.reference_scale = float(got.scale), float(want.scale)
    ref_scale = float(want.scale) if reference_scale is None else reference_scale
    scale_ok = not want.codes.any() or abs(float(got.scale) - ref_scale) <= rtol * abs(ref_scale)
    set_stats(tc, got.dense(), want.dense())
    tc.ok = diff == 0 and scale_ok
    if not diff and not scale_ok:
        tc.message = f"{scale_word} {float(got.scale)!r} but the reference gives {ref_scale!r}"
