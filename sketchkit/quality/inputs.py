"""Sketches as what the quality networks read: a picture (rasterised with numpy) and a stroke-5
sequence, both scaled to the sketch's own bounding box, so that pixels, QuickDraw's 0..255 units
and a model's scale factor all look alike and only shape and drawing order remain."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sketchkit import strokes

RASTER = 28  # QuickDraw's bitmap size
SEQ_LEN = 256  # points kept of each sketch for the sequence branch


def _fit(points: np.ndarray, size: float, margin: float) -> tuple[float, np.ndarray]:
    """Scale and shift that put `points` in a size x size box, centred, aspect kept."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    extent = float(max(hi[0] - lo[0], hi[1] - lo[1], 1e-6))
    scale = (size - 2 * margin) / extent
    shift = size / 2 - (lo + hi) / 2 * scale
    return scale, shift


def rasterize(sketches: Sequence[np.ndarray], size: int = RASTER) -> np.ndarray:
    """float32 [N, size, size] in [0, 1]: each sketch's pen-down lines, drawn at twice the size
    (a point every half pixel) and averaged 2 x 2 (anti-aliasing), fitted to its bounding box."""
    big = 2 * size
    out = np.zeros((len(sketches), big, big), np.float32)
    for k, s in enumerate(sketches):
        lines = [p for p in strokes.to_polylines(np.asarray(s, np.float64)) if len(p)]
        if not lines:
            continue
        scale, shift = _fit(np.concatenate(lines), big, 2.0)
        p0 = [p[:-1] if len(p) > 1 else p for p in lines]
        p1 = [p[1:] if len(p) > 1 else p for p in lines]
        a = np.concatenate(p0) * scale + shift
        b = np.concatenate(p1) * scale + shift
        n = np.ceil(np.linalg.norm(b - a, axis=1) / 0.5).astype(np.int64) + 1
        seg = np.repeat(np.arange(len(a)), n)
        t = (np.arange(len(seg)) - np.repeat(np.cumsum(n) - n, n)) / np.maximum(n[seg] - 1, 1)
        xy = a[seg] + (b[seg] - a[seg]) * t[:, None]
        ij = np.clip(np.floor(xy).astype(np.int64), 0, big - 1)
        out[k, ij[:, 1], ij[:, 0]] = 1.0
    return out.reshape(len(sketches), size, 2, size, 2).mean(axis=(2, 4))


def sequences(sketches: Sequence[np.ndarray], length: int = SEQ_LEN) -> np.ndarray:
    """float32 [N, length, 5]: stroke-5 with offsets divided by the bounding box's longer side,
    cut at `length` points, padded with end rows (0, 0, 0, 0, 1)."""
    out = np.zeros((len(sketches), length, 5), np.float32)
    for k, s in enumerate(sketches):
        s = np.asarray(s, np.float64)[:length]
        if not len(s):
            out[k, :, 4] = 1
            continue
        x0, x1, y0, y1 = strokes.bounds(s)
        extent = max(x1 - x0, y1 - y0, 1e-6)
        out[k] = strokes.to_stroke5(np.column_stack([s[:, :2] / extent, s[:, 2]]), length)
    return out
