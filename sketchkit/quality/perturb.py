"""Known damage to real sketches, for validating the quality measures: a measure worth trusting
scores these worse than the originals (tests/test_quality.py, benchmarks/bench_quality.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sketchkit import strokes


def shuffle_strokes(sketches: Sequence[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """Each sketch's strokes drawn in a random order, every stroke where it was (the same picture,
    moved so the new first stroke starts at the origin; the pen travels differently)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in sketches:
        lines = strokes.to_polylines(s)
        order = rng.permutation(len(lines))
        out.append(strokes.from_polylines([lines[i] for i in order]).astype(np.float32))
    return out


def jitter(sketches: Sequence[np.ndarray], amount: float = 0.15, seed: int = 0) -> list[np.ndarray]:
    """Gaussian noise on every offset, `amount` times the sketch's own offset std."""
    rng = np.random.default_rng(seed)
    out = []
    for s in sketches:
        s = np.asarray(s, np.float32).copy()
        s[:, :2] += rng.normal(0, amount * float(s[:, :2].std()), (len(s), 2)).astype(np.float32)
        out.append(s)
    return out
