"""Stroke formats and the preprocessing the paper applies to them (numpy only).

- stroke-3: `[n, 3]` rows `(dx, dy, pen_lifted)`, pixel units; pen_lifted = 1 on the last point
  of a stroke.
- stroke-5: `[N_max, 5]` rows `(dx, dy, p1, p2, p3)`; p1 = pen down, p2 = lifted after this
  point, p3 = the sketch has ended. Rows after the end are `(0, 0, 0, 0, 1)` (paper §3.2).
- polylines: a list of `[k, 2]` arrays of absolute coordinates, one per stroke.

All functions take and return plain numpy arrays: one representation through the code base.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sketchkit.errors import DataError

START_TOKEN = np.array([0, 0, 1, 0, 0], dtype=np.float32)  # S_0 of the paper (§3.1)
END_TOKEN = np.array([0, 0, 0, 0, 1], dtype=np.float32)  # padding after the end (§3.2)

Stroke3 = np.ndarray
Stroke5 = np.ndarray


# ---------------------------------------------------------------------------------------------
# validation


def check_stroke3(s: object, name: str = "sketch", limit: float = 1e5) -> np.ndarray:
    """Return `s` as a float array [n, 3] or raise DataError saying what is wrong with it."""
    arr = np.asarray(s)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DataError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise DataError(f"{name}: expected shape (n, 3) in stroke-3 format, got {arr.shape}")
    if arr.shape[0] == 0:
        raise DataError(f"{name}: empty sketch (no points)")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise DataError(f"{name}: contains NaN or infinite values")
    if np.abs(arr[:, :2]).max(initial=0) > limit:
        raise DataError(f"{name}: absurd offset {np.abs(arr[:, :2]).max():g} (limit {limit:g})")
    pen = arr[:, 2]
    if not np.isin(pen, (0, 1)).all():
        raise DataError(f"{name}: pen state column must be 0 or 1")
    return arr


# ---------------------------------------------------------------------------------------------
# stroke-3 <-> stroke-5


def to_stroke5(s: Stroke3, max_len: int | None = None) -> Stroke5:
    """stroke-3 [n, 3] -> stroke-5 [max_len, 5], padded with (0, 0, 0, 0, 1) after the end.

    The last real point keeps p1/p2 from its pen column; the row after it is the first p3 row
    (the end token), as magenta's `to_big_strokes` does: n real rows, then end rows.
    """
    s = np.asarray(s)
    n = len(s)
    max_len = n + 1 if max_len is None else max_len
    if n > max_len:
        raise DataError(f"sketch of {n} points is longer than max_len {max_len}")
    out = np.zeros((max_len, 5), dtype=np.float32)
    out[:n, :2] = s[:, :2]
    out[:n, 3] = s[:, 2]
    out[:n, 2] = 1 - s[:, 2]
    out[n:, 4] = 1
    return out


def to_stroke3(s5: Stroke5) -> Stroke3:
    """stroke-5 -> stroke-3, stopping at the first p3 row (the end of the sketch)."""
    s5 = np.asarray(s5)
    ends = np.flatnonzero(s5[:, 4] > 0.5)
    n = int(ends[0]) if len(ends) else len(s5)
    out = np.zeros((n, 3), dtype=np.float32)
    out[:, :2] = s5[:n, :2]
    out[:, 2] = s5[:n, 3]
    return out


# ---------------------------------------------------------------------------------------------
# stroke-3 <-> absolute polylines


def to_polylines(s: Stroke3, origin: tuple[float, float] = (0.0, 0.0)) -> list[np.ndarray]:
    """stroke-3 -> absolute polylines. The pen starts down at `origin` (S_0 = (0, 0, 1, 0, 0)), so
    the first stroke begins there, as in the data (its first row is a drawn segment) and in
    sketch-rnn-js; then `from_polylines(to_polylines(s))` gives `s` back."""
    s = np.asarray(s, dtype=np.float64)
    xy = np.vstack([np.zeros((1, 2)), np.cumsum(s[:, :2], axis=0)]) + np.asarray(origin)
    cuts = np.flatnonzero(s[:, 2] > 0.5) + 2  # point i + 1 ends a stroke when row i lifts the pen
    return [p for p in np.split(xy, cuts) if len(p)]


def from_polylines(lines: Sequence[np.ndarray]) -> Stroke3:
    """Absolute polylines -> stroke-3 (deltas); the first point is the origin and is dropped."""
    pts = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in lines]
    pts = [p for p in pts if len(p)]
    if not pts:
        raise DataError("drawing has no points")
    xy = np.concatenate(pts)
    pen = np.zeros(len(xy))
    pen[np.cumsum([len(p) for p in pts]) - 1] = 1
    out = np.zeros((len(xy) - 1, 3))
    out[:, :2] = np.diff(xy, axis=0)
    out[:, 2] = pen[1:]
    if len(out) == 0:
        raise DataError("drawing has a single point")
    return out


# ---------------------------------------------------------------------------------------------
# Ramer-Douglas-Peucker


def rdp(points: np.ndarray, epsilon: float = 2.0) -> np.ndarray:
    """Simplify one polyline: keep the points farther than `epsilon` from the chord (RDP, 1973).

    Iterative with an explicit stack and a vectorised distance per segment; keeps exactly the
    points the recursive reference algorithm keeps (first farthest point wins ties), except that
    epsilon <= 0 keeps every point (the reference would still drop exactly collinear ones).
    """
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    if n < 3 or epsilon <= 0:
        return points.copy()  # epsilon 0 means "no simplification": keep collinear points too
    keep = np.zeros(n, dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, n - 1)]
    while stack:
        i, j = stack.pop()
        if j - i < 2:
            continue
        seg = points[i + 1 : j]
        a, b = points[i], points[j]
        d = b - a
        norm = np.hypot(d[0], d[1])
        if norm == 0.0:
            dist = np.hypot(seg[:, 0] - a[0], seg[:, 1] - a[1])
        else:
            dist = np.abs(d[0] * (seg[:, 1] - a[1]) - d[1] * (seg[:, 0] - a[0])) / norm
        k = int(np.argmax(dist))
        if dist[k] > epsilon:
            m = i + 1 + k
            keep[m] = True
            stack.append((m, j))
            stack.append((i, m))
    return points[keep]


def simplify(s: Stroke3, epsilon: float = 2.0) -> Stroke3:
    """RDP on every stroke of a stroke-3 sketch; the start position is kept (RDP keeps endpoints)."""
    return from_polylines([rdp(p, epsilon) for p in to_polylines(s)])


# ---------------------------------------------------------------------------------------------
# normalisation and filtering


def scale_factor(sketches: Sequence[Stroke3]) -> float:
    """Std of all (dx, dy) offsets of a training set (paper A.1; magenta's
    `calculate_normalizing_scale_factor`)."""
    offsets = np.concatenate([np.asarray(s, dtype=np.float64)[:, :2].ravel() for s in sketches])
    return float(np.std(offsets))


def normalize(s: Stroke3, factor: float) -> Stroke3:
    out = np.asarray(s, dtype=np.float32).copy()
    out[:, :2] /= factor
    return out


def denormalize(s: Stroke3, factor: float) -> Stroke3:
    out = np.asarray(s, dtype=np.float32).copy()
    out[:, :2] *= factor
    return out


def clamp(s: Stroke3, limit: float = 1000.0) -> Stroke3:
    """Clamp offsets to +-limit, as magenta's loader does (`limit=1000`)."""
    out = np.asarray(s, dtype=np.float32).copy()
    np.clip(out[:, :2], -limit, limit, out=out[:, :2])
    return out


def filter_by_length(sketches: Sequence[Stroke3], max_len: int, min_len: int = 1) -> list[Stroke3]:
    return [s for s in sketches if min_len <= len(s) <= max_len]


# ---------------------------------------------------------------------------------------------
# training augmentations


def random_scale(s: Stroke3, rng: np.random.Generator, amount: float = 0.10) -> Stroke3:
    """Multiply dx and dy by two IID factors uniform in [1 - amount, 1 + amount] (paper A.3)."""
    out = np.asarray(s, dtype=np.float32).copy()
    out[:, 0] *= rng.uniform(1 - amount, 1 + amount)
    out[:, 1] *= rng.uniform(1 - amount, 1 + amount)
    return out


def drop_points(s: Stroke3, rng: np.random.Generator, prob: float = 0.15) -> Stroke3:
    """Magenta's `augment_strokes`: drop a pen-down point inside a straight-ish run with
    probability `prob`, merging its offset into the last kept point (the drawing barely changes).

    Vectorised, with magenta's loop's results bit for bit (tests/test_strokes.py keeps the loop):
    a point is a candidate when it and the point before are pen-down and more than two such points
    precede it since the last pen-up; one draw per candidate, in order; offsets summed in float64."""
    s = np.asarray(s, dtype=np.float32).reshape(-1, 3)
    n = len(s)
    pen = s[:, 2]
    prev_pen = np.concatenate([[1.0], pen[:-1]]).astype(np.float32)  # the loop starts from [0, 0, 1]
    reset = (pen == 1) | (prev_pen == 1)
    idx = np.arange(n)
    count = idx - np.maximum.accumulate(np.where(reset, idx, -1))  # row 0 always resets
    check = (pen == 0) & (prev_pen == 0) & (count > 2)
    drop = np.zeros(n, bool)
    drop[check] = rng.random(int(check.sum())) < prob
    keep = ~drop
    out = s[keep].astype(np.float64)
    group = np.cumsum(keep)[drop] - 1  # the kept point each dropped one merges into
    for k in (0, 1):
        np.add.at(out[:, k], group, s[drop, k].astype(np.float64))  # in order, as the loop adds
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# batching


def to_batch(sketches: Sequence[Stroke3], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Stroke-3 sketches -> (batch [B, max_len + 1, 5] with S_0 in row 0, lengths [B]).

    Row 0 is S_0 = (0, 0, 1, 0, 0); rows 1..n are the sketch; the rest are (0, 0, 0, 0, 1).
    The decoder reads rows 0..max_len-1 and predicts rows 1..max_len.
    """
    batch = np.zeros((len(sketches), max_len + 1, 5), dtype=np.float32)
    lengths = np.zeros(len(sketches), dtype=np.int64)
    for i, s in enumerate(sketches):
        batch[i, 0] = START_TOKEN
        batch[i, 1:] = to_stroke5(s, max_len)
        lengths[i] = len(s)
    return batch, lengths


def bounds(s: Stroke3) -> tuple[float, float, float, float]:
    """(min_x, max_x, min_y, max_y) of the absolute path, starting at the origin."""
    xy = np.cumsum(np.asarray(s, dtype=np.float64)[:, :2], axis=0)
    xy = np.vstack([[0.0, 0.0], xy])
    return float(xy[:, 0].min()), float(xy[:, 0].max()), float(xy[:, 1].min()), float(xy[:, 1].max())
