"""sketchkit.strokes on real sketches: exact round trips, RDP against the reference algorithm,
the scale factor, the augmentations and batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sketchkit import strokes
from sketchkit.datasets import load_npz
from sketchkit.errors import DataError

FILES = ("aaron_sheep.npz", "short_kanji.npz", "omniglot.npz")


@pytest.fixture(scope="module", params=FILES)
def test_split(request: pytest.FixtureRequest, sketchrnn_dir: Path) -> list[np.ndarray]:
    return load_npz(sketchrnn_dir / request.param).test


def reference_rdp(m: np.ndarray, epsilon: float) -> np.ndarray:
    """The recursive algorithm as in the `rdp` package (fhirschmann/rdp, `rdp_rec` + `pldist`)."""
    dmax, index = 0.0, -1
    start, end = m[0], m[-1]
    for i in range(1, len(m)):
        if np.all(start == end):
            d = np.linalg.norm(m[i] - start)
        else:
            d = abs(np.cross(end - start, start - m[i])) / np.linalg.norm(end - start)
        if d > dmax:
            index, dmax = i, d
    if dmax > epsilon:
        left = reference_rdp(m[: index + 1], epsilon)
        right = reference_rdp(m[index:], epsilon)
        return np.vstack([left[:-1], right])
    return np.vstack([m[0], m[-1]])


def test_stroke3_to_stroke5_and_back_is_exact(test_split: list[np.ndarray]) -> None:
    n_max = max(len(s) for s in test_split)
    for s in test_split:
        s5 = strokes.to_stroke5(s, n_max)
        assert s5.shape == (n_max, 5)
        np.testing.assert_array_equal(s5[len(s) :], np.tile(strokes.END_TOKEN, (n_max - len(s), 1)))
        np.testing.assert_array_equal(s5[: len(s), 2:].sum(axis=1), 1)  # one-hot pen states
        np.testing.assert_array_equal(strokes.to_stroke3(s5), s)


def test_polylines_round_trip_is_exact(test_split: list[np.ndarray]) -> None:
    for s in test_split:
        lines = strokes.to_polylines(s)
        np.testing.assert_array_equal(lines[0][0], [0, 0])  # the pen starts down at the origin (S_0)
        assert len(lines) == int(s[:, 2].sum()) + (s[-1, 2] == 0)
        np.testing.assert_array_equal(strokes.from_polylines(lines), s)


def test_rdp_epsilon_zero_keeps_every_point(sheep) -> None:
    for s in sheep.test:
        for line in strokes.to_polylines(s):
            np.testing.assert_array_equal(strokes.rdp(line, 0.0), line)
        np.testing.assert_array_equal(strokes.simplify(s, 0.0), s)


def test_rdp_never_moves_a_kept_point(sheep) -> None:
    dropped = 0
    for s in sheep.test:
        before = strokes.to_polylines(s)
        after = strokes.to_polylines(strokes.simplify(s, 2.0))
        assert len(after) == len(before)
        for b, a in zip(before, after, strict=True):
            # every kept point is one of the original points, in order, with both ends kept
            idx = [0]
            for p in a[1:]:
                idx.append(idx[-1] + 1 + int(np.flatnonzero((b[idx[-1] + 1 :] == p).all(axis=1))[0]))
            assert idx[-1] == len(b) - 1
            dropped += len(b) - len(a)
    assert dropped > 0  # eps = 2 does simplify hand-drawn sheep


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 2.0, 5.0])
def test_rdp_matches_the_reference_algorithm(sheep, epsilon: float) -> None:
    lines = [p for s in sheep.test[:25] for p in strokes.to_polylines(s) if len(p) >= 2]
    for line in lines:
        np.testing.assert_array_equal(strokes.rdp(line, epsilon), reference_rdp(line, epsilon))


def test_rdp_degenerate_polylines() -> None:
    dot = np.array([[3.0, 4.0]])
    np.testing.assert_array_equal(strokes.rdp(dot), dot)
    loop = np.array([[0.0, 0], [10, 0], [10, 10], [0, 0]])  # first == last: distance to a point
    np.testing.assert_array_equal(strokes.rdp(loop, 2.0), reference_rdp(loop, 2.0))
    line = np.column_stack([np.arange(10.0), np.zeros(10)])
    np.testing.assert_array_equal(strokes.rdp(line, 0.1), line[[0, -1]])


def test_scale_factor_of_sheep_train_matches_numpy(sheep) -> None:
    direct = np.std(np.concatenate([s[:, :2] for s in sheep.train]).astype(np.float64))
    assert strokes.scale_factor(sheep.train) == pytest.approx(direct, rel=1e-12)
    assert 15 < direct < 25  # pixel offsets of hand-drawn sheep
    normalized = [strokes.normalize(s, direct) for s in sheep.train]
    assert strokes.scale_factor(normalized) == pytest.approx(1.0, rel=1e-5)
    back = strokes.denormalize(normalized[0], direct)
    np.testing.assert_allclose(back, sheep.train[0], rtol=1e-6)  # pixel offsets, up to ~100
    np.testing.assert_array_equal(normalized[0][:, 2], sheep.train[0][:, 2])


def test_filter_by_length_and_clamp(sheep) -> None:
    kept = strokes.filter_by_length(sheep.train, max_len=100, min_len=30)
    assert kept and all(30 <= len(s) <= 100 for s in kept)
    assert len(kept) == sum(30 <= len(s) <= 100 for s in sheep.train)
    big = np.array([[5000.0, -3000.0, 0], [1.0, 2.0, 1]])
    np.testing.assert_array_equal(strokes.clamp(big), [[1000, -1000, 0], [1, 2, 1]])


def test_random_scale_is_independent_per_axis(sheep) -> None:
    s = sheep.train[0].astype(np.float32)
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(200):
        out = strokes.random_scale(s, rng, 0.10)
        np.testing.assert_array_equal(out[:, 2], s[:, 2])
        nz = np.flatnonzero((s[:, 0] != 0) & (s[:, 1] != 0))[0]
        ratios.append(out[nz, :2] / s[nz, :2])
    r = np.array(ratios)
    assert r.min() >= 0.9 - 1e-6 and r.max() <= 1.1 + 1e-6
    assert not np.allclose(r[:, 0], r[:, 1])  # x and y get their own factors
    assert r.min() < 0.92 and r.max() > 1.08  # and they cover the range


def _magenta_augment_strokes(s: np.ndarray, rng: np.random.Generator, prob: float) -> np.ndarray:
    """Magenta's `augment_strokes` loop (utils.py), the reference for the vectorised drop_points."""
    result, prev, count, stroke = [], [0.0, 0.0, 1.0], 0, [0.0, 0.0, 1.0]
    for row in np.asarray(s, dtype=np.float32):
        candidate = [float(row[0]), float(row[1]), float(row[2])]
        count = 0 if candidate[2] == 1 or prev[2] == 1 else count + 1
        if candidate[2] == 0 and prev[2] == 0 and count > 2 and rng.random() < prob:
            stroke[0] += candidate[0]
            stroke[1] += candidate[1]
        else:
            stroke = prev = candidate
            result.append(stroke)
    return np.array(result, dtype=np.float32).reshape(-1, 3)


@pytest.mark.parametrize("prob", [0.1, 0.5, 1.0])
def test_drop_points_equals_magentas_loop(sheep, prob: float) -> None:
    """Bit for bit, and the generator left where the loop leaves it (one draw per candidate)."""
    ours, ref = np.random.default_rng(5), np.random.default_rng(5)
    for s in sheep.train[:500]:
        scaled = strokes.random_scale(s, np.random.default_rng(1), 0.15)
        for x in (s, scaled):
            a, b = strokes.drop_points(x, ours, prob), _magenta_augment_strokes(x, ref, prob)
            assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)
    assert ours.random() == ref.random()


def test_drop_points_keeps_every_stroke_end(sheep) -> None:
    rng = np.random.default_rng(1)
    total_before = total_after = 0
    for s in sheep.train[:200]:
        out = strokes.drop_points(s, rng, prob=0.15)
        np.testing.assert_array_equal(strokes.drop_points(s, rng, prob=0.0), s)
        # pen lifts are never dropped, and the offsets of dropped points move into kept ones,
        # so each stroke still ends where it did
        ends_before = np.cumsum(s[:, :2], axis=0)[s[:, 2] == 1]
        ends_after = np.cumsum(out[:, :2], axis=0)[out[:, 2] == 1]
        np.testing.assert_allclose(ends_after, ends_before)
        total_before, total_after = total_before + len(s), total_after + len(out)
    assert 0.8 * total_before < total_after < 0.97 * total_before


def test_to_batch_layout(sheep) -> None:
    sketches = sheep.test[:5]
    batch, lengths = strokes.to_batch(sketches, max_len=250)
    assert batch.shape == (5, 251, 5) and batch.dtype == np.float32
    np.testing.assert_array_equal(lengths, [len(s) for s in sketches])
    np.testing.assert_array_equal(batch[:, 0], np.tile(strokes.START_TOKEN, (5, 1)))
    for row, s in zip(batch, sketches, strict=True):
        np.testing.assert_array_equal(strokes.to_stroke3(row[1:]), s)
        np.testing.assert_array_equal(row[1 + len(s) :, 4], 1)


def test_to_stroke5_refuses_a_sketch_longer_than_max_len(sheep) -> None:
    with pytest.raises(DataError, match="longer than max_len"):
        strokes.to_stroke5(sheep.test[0], max_len=len(sheep.test[0]) - 1)


def test_bounds_include_the_origin() -> None:
    assert strokes.bounds(np.array([[5, 5, 0], [5, -20, 1]])) == (0.0, 10.0, -15.0, 5.0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros((0, 3)), "empty sketch"),
        (np.zeros((4, 2)), r"expected shape \(n, 3\)"),
        (np.zeros(3), r"expected shape \(n, 3\)"),
        (np.array([[1.0, np.nan, 0]]), "NaN or infinite"),
        (np.array([[np.inf, 0.0, 1]]), "NaN or infinite"),
        (np.array([[1e9, 0.0, 1]]), "absurd offset"),
        (np.array([[1.0, 2.0, 2]]), "pen state"),
        (np.array([["a", "b", "c"]]), "numeric array"),
        (np.array([None, None, None], dtype=object).reshape(1, 3), "numeric array"),
    ],
)
def test_check_stroke3_refuses_bad_sketches(value: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message) as e:
        strokes.check_stroke3(value)
    assert "\n" not in str(e.value)
