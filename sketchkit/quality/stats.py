"""Per-sketch statistics and the Kolmogorov-Smirnov distance between two sets of them: the
plainest side-by-side of generated and real sketches (how long, how many strokes, how often the
pen lifts, what shape of box)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sketchkit import strokes

STATS = ("points", "strokes", "pen_lift_fraction", "aspect")


def sketch_stats(sketches: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Each statistic [N]: points; strokes (pen lifts, the last stroke counted if unlifted);
    pen-lift fraction (lifts / points); aspect (bounding-box width / height, log-symmetric
    values clipped to [1/20, 20])."""
    pts, nstr, lift, aspect = [], [], [], []
    for s in sketches:
        s = np.asarray(s, np.float64)
        n = len(s)
        lifts = int((s[:, 2] > 0.5).sum()) if n else 0
        pts.append(n)
        nstr.append(lifts + (1 if n and s[-1, 2] < 0.5 else 0))
        lift.append(lifts / n if n else 0.0)
        if n:
            x0, x1, y0, y1 = strokes.bounds(s)
            w, h = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
            aspect.append(float(np.clip(w / h, 0.05, 20.0)))
        else:
            aspect.append(1.0)
    return {
        "points": np.asarray(pts, np.float64),
        "strokes": np.asarray(nstr, np.float64),
        "pen_lift_fraction": np.asarray(lift, np.float64),
        "aspect": np.asarray(aspect, np.float64),
    }


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample KS statistic: the largest gap between the empirical CDFs (0 = same, 1 = apart)."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    if not len(a) or not len(b):
        return float("nan")
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def compare_stats(generated: Sequence[np.ndarray], real: Sequence[np.ndarray]) -> dict[str, dict[str, float]]:
    """{stat: {generated (mean), real (mean), ks}} for every statistic in STATS."""
    g, r = sketch_stats(generated), sketch_stats(real)
    return {
        k: {"generated": float(g[k].mean()), "real": float(r[k].mean()), "ks": ks_distance(g[k], r[k])}
        for k in STATS
    }
