"""sketchkit.datasets: safe .npz loading (bad and malicious files), QuickDraw .ndjson (simplified
and raw, golden against Google's own simplification), multi-class datasets."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sketchkit import datasets, strokes
from sketchkit.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
CLASSES = ("cat", "crab", "face", "firetruck", "garden", "mosquito", "owl", "pig", "rabbit", "yoga")


def one_line_error(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(DataError, match=match) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


def obj_array(*sketches: np.ndarray) -> np.ndarray:
    out = np.empty(len(sketches), dtype=object)
    for i, s in enumerate(sketches):
        out[i] = s
    return out


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


GOOD = obj_array(np.array([[1, 2, 0], [3, 4, 1]], dtype=np.int16))


def point_to_polyline_distance(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Distance of each point to the nearest segment of `line`."""
    a, b = (line[:-1], line[1:]) if len(line) > 1 else (line, line)
    d = b - a
    length2 = (d * d).sum(axis=1)
    t = ((points[:, None] - a[None]) * d[None]).sum(-1) / np.where(length2 > 0, length2, 1)
    proj = a[None] + np.clip(t, 0, 1)[..., None] * d[None]
    return np.sqrt(((points[:, None] - proj) ** 2).sum(-1)).min(axis=1)


# ---------------------------------------------------------------------------------------------
# .npz


def test_load_sheep(sheep) -> None:
    assert (len(sheep.train), len(sheep.valid), len(sheep.test)) == (7400, 300, 300)
    assert sheep.test[0].dtype == np.int16 and sheep.test[0].shape[1] == 3
    assert max(len(s) for s in sheep.test) == 250
    assert sheep.classes == [] and sheep.labels == {}


class Payload:
    """Pickles as a call to os.system: what a crafted .npz would run under np.load(allow_pickle=True)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write_npz(tmp_path / "evil.npz", train=obj_array(Payload(marker)), valid=GOOD, test=GOOD)
    message = one_line_error(datasets.load_npz, path, match="unsafe or corrupt object array 'train'")
    assert "posix.system" in message or "os.system" in message
    assert not marker.exists()
    # the file is live: numpy's own loader with pickles allowed does run it
    np.load(path, allow_pickle=True)["train"]
    assert marker.exists()


def test_hand_written_pickle_opcodes_are_refused(tmp_path: Path) -> None:
    """A .npy member whose object payload is raw protocol-0 opcodes calling os.system directly."""
    marker = tmp_path / "pwned"
    header = {"descr": "|O", "fortran_order": False, "shape": (1,)}
    member = tmp_path / "train.npy"
    with open(member, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    path = tmp_path / "evil.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.write(member, "train.npy")
    one_line_error(datasets.load_npz, path, match="refusing to load os.system")
    assert not marker.exists()


def test_missing_file(tmp_path: Path) -> None:
    one_line_error(datasets.load_npz, tmp_path / "nope.npz", match="no such file")


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "text.npz"
    path.write_text("hello")
    one_line_error(datasets.load_npz, path, match="not a readable .npz")


def test_a_directory_is_not_an_npz(tmp_path: Path) -> None:
    one_line_error(datasets.load_npz, tmp_path, match="not a regular file \\(a directory\\)")


def test_truncated_npz(tmp_path: Path, sheep_npz: Path) -> None:
    path = tmp_path / "half.npz"
    data = sheep_npz.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    one_line_error(datasets.load_npz, path, match="not a readable .npz")


def test_corrupt_member_bytes(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "x.npz", train=GOOD, valid=GOOD, test=GOOD)
    data = bytearray(path.read_bytes())
    start = data.index(b"NUMPY")  # inside the first (stored, uncompressed) member
    data[start + 200 : start + 210] = b"\x00" * 10
    path.write_bytes(bytes(data))
    one_line_error(datasets.load_npz, path, match="readable .npz|corrupt")


@pytest.mark.parametrize("compressed", [True, False])
def test_damaged_npz_bytes_only_ever_raise_data_error(tmp_path: Path, sheep, compressed: bool) -> None:
    """Random byte flips and truncations of a small real .npz (zip headers, deflate streams,
    .npy headers, pickles): every failure is a DataError."""
    path = tmp_path / "small.npz"
    small = {k: obj_array(*sheep.split(k)[:3]) for k in datasets.SPLITS}
    (np.savez_compressed if compressed else np.savez)(path, **small)
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    failures = 0
    for _ in range(400):
        damaged = bytearray(data)
        for _ in range(rng.integers(1, 4)):
            damaged[rng.integers(len(damaged))] = rng.integers(256)
        if rng.random() < 0.2:
            damaged = damaged[: rng.integers(len(damaged))]
        path.write_bytes(bytes(damaged))
        try:
            datasets.load_npz(path)
        except DataError as e:
            assert "\n" not in str(e)
            failures += 1
    assert failures > 300


def test_npz_without_the_three_keys(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "x.npz", train=GOOD, other=GOOD)
    one_line_error(datasets.load_npz, path, match="missing key.*valid, test")


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (obj_array(np.zeros((4, 2), np.int16)), r"train\[0\]: expected shape \(n, 3\)"),
        (np.array(["a", "b"]), "expected an object array"),
        (np.zeros((5, 3)), "expected an object array"),
        (obj_array(GOOD[0], np.array([[1.0, np.nan, 0]])), r"train\[1\]: contains NaN"),
        (obj_array(np.array([[1e7, 0.0, 1]])), "absurd offset"),
        (obj_array(np.zeros((0, 3), np.int16)), "empty sketch"),
        (obj_array(np.array([[1, 2, 5]], np.int16)), "pen state"),
        (obj_array("not a sketch"), "numeric array"),
        (np.empty((), dtype=object), "expected an object array"),
        (np.empty((2, 3), dtype=object), "expected an object array"),
    ],
)
def test_bad_arrays_are_refused(tmp_path: Path, train: np.ndarray, message: str) -> None:
    path = write_npz(tmp_path / "x.npz", train=train, valid=GOOD, test=GOOD)
    one_line_error(datasets.load_npz, path, match=message)


def test_save_and_load_round_trip_with_classes(tmp_path: Path, sheep) -> None:
    small = [datasets.Dataset(sheep.train[:5], sheep.valid[:2], sheep.test[:3]),
             datasets.Dataset(sheep.train[5:7], sheep.valid[2:3], sheep.test[3:4])]  # fmt: skip
    ds = datasets.concat(small, ["a", "b"])
    datasets.save_npz(tmp_path / "m.npz", ds)
    back = datasets.load_npz(tmp_path / "m.npz")
    assert back.classes == ["a", "b"]
    np.testing.assert_array_equal(back.labels["train"], [0] * 5 + [1] * 2)
    np.testing.assert_array_equal(back.labels["test"], [0] * 3 + [1])
    for k in datasets.SPLITS:
        for a, b in zip(ds.split(k), back.split(k), strict=True):
            np.testing.assert_array_equal(a, b)
            assert b.dtype == np.int16


def test_save_refuses_offsets_beyond_int16_and_writes_nothing(tmp_path: Path) -> None:
    big = np.array([[40000.0, 0, 1]])
    target = tmp_path / "out.npz"
    one_line_error(datasets.save_npz, target, datasets.Dataset([big], [], []), match="int16")
    assert list(tmp_path.iterdir()) == []


def test_split_names() -> None:
    one_line_error(datasets.Dataset([], [], []).split, "training", match="unknown split")


# ---------------------------------------------------------------------------------------------
# .ndjson


def test_simplified_fixture_gives_the_npz_sketches_back(sheep) -> None:
    drawings = datasets.read_ndjson(FIXTURES / "sheep.ndjson")
    assert len(drawings) == 8 and not any(d.raw for d in drawings)
    for d in drawings:
        original = sheep.test[int(d.key_id.rsplit("-", 1)[1])]
        assert d.word == "sheep" and min(p.min() for p in d.polylines) == 0
        np.testing.assert_array_equal(strokes.from_polylines(d.polylines), original)
        np.testing.assert_array_equal(datasets.drawing_to_stroke3(d, epsilon=0.0), original)
        np.testing.assert_array_equal(datasets.drawing_to_stroke3(d), strokes.simplify(original, 2.0))


def test_raw_fixture_with_times(sheep) -> None:
    drawings = datasets.read_ndjson(FIXTURES / "sheep_raw.ndjson")
    assert len(drawings) == 4 and all(d.raw for d in drawings)
    for d in drawings:
        original = strokes.to_polylines(sheep.test[int(d.key_id.rsplit("-", 1)[1])])
        for got, want in zip(d.polylines, original, strict=True):
            np.testing.assert_allclose(got, want * 1.5 + [300.25, 220.5], atol=0.006)
        # Google's pipeline: into 0..255 (the longer side spans it), every point within
        # epsilon + rounding of the original drawing scaled the same way
        lines = datasets.normalize_raw(d.polylines)
        xy = np.concatenate(lines)
        assert xy.min() >= 0 and xy.max() <= 255 and (xy.max(axis=0) - xy.min(axis=0)).max() >= 250
        lo = np.concatenate(original).min(axis=0)
        scale = 255 / (np.concatenate(original).max(axis=0) - lo).max()
        for got, want in zip(lines, original, strict=True):
            assert point_to_polyline_distance(got, (want - lo) * scale).max() <= 2.0 + 0.5**0.5 + 1e-9
        assert datasets.drawing_to_stroke3(d).shape[1] == 3


def test_fixtures_are_what_make_fixtures_builds(sketchrnn_dir: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    built = module.build()
    assert sorted(built) == ["kanji.ndjson", "sheep.ndjson", "sheep_raw.ndjson"]
    for name, text in built.items():
        assert (FIXTURES / name).read_text(encoding="utf-8") == text, f"rerun {FIXTURES}/make_fixtures.py"
    assert sum((FIXTURES / name).stat().st_size for name in built) < 50_000


def test_normalize_raw_matches_googles_simplified_drawings(quickdraw_dir: Path) -> None:
    """The 218 drawings present in both raw-sample/ and simplified-25/ (same key_id)."""
    exact = total = 0
    for word in CLASSES:
        simplified = {
            d.key_id: d for d in datasets.read_ndjson(quickdraw_dir / "simplified-25" / f"{word}.ndjson")
        }
        for d in datasets.read_ndjson(quickdraw_dir / "raw-sample" / f"{word}.ndjson"):
            if d.key_id not in simplified:
                continue
            got, want = datasets.normalize_raw(d.polylines), simplified[d.key_id].polylines
            total += 1
            assert len(got) == len(want)
            exact += all(a.shape == b.shape and (a == b).all() for a, b in zip(got, want, strict=True))
            assert abs(sum(map(len, got)) - sum(map(len, want))) <= 3
            for a, b in zip(got, want, strict=True):  # same strokes up to epsilon and rounding
                assert point_to_polyline_distance(a, b).max() <= 2.0 + 0.5**0.5 + 0.1
                assert point_to_polyline_distance(b, a).max() <= 2.0 + 0.5**0.5 + 0.1
    assert total == 218
    assert exact >= 185  # 190 of 218 identical point for point (the rest: a point more or less)


def write_lines(tmp_path: Path, *lines: str | bytes) -> Path:
    path = tmp_path / "bad.ndjson"
    good = json.dumps({"word": "x", "drawing": [[[0, 5, 9], [0, 5, 1]]]})
    body = [good.encode()] + [line if isinstance(line, bytes) else line.encode() for line in lines]
    path.write_bytes(b"\n".join(body) + b"\n")
    return path


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"word": "x", "drawing": [[[0, 1], [0, 1]]', "bad.ndjson:2: not valid JSON"),
        ('{"word": "x"}', "bad.ndjson:2: no 'drawing' list"),
        ('{"drawing": 5}', "bad.ndjson:2: no 'drawing' list"),
        ("[1, 2, 3]", "bad.ndjson:2: no 'drawing' list"),
        ('{"drawing": [[[0, 1, 2], [0, 1]]]}', "bad.ndjson:2: stroke 0 has 3 xs but 2 ys"),
        (
            '{"drawing": [[[0, 1], [0, 1]], [1, 2, 3, 4]]}',
            r"bad.ndjson:2: stroke 1 is not \[\[xs\], \[ys\]\]",
        ),
        ('{"drawing": [[["a", 1], [0, 1]]]}', "bad.ndjson:2: stroke 0 has non-numeric"),
        ('{"drawing": [[[0, NaN], [0, 1]]]}', "bad.ndjson:2: stroke 0 has NaN"),
        ('{"drawing": [[[0, 1e12], [0, 1]]]}', "bad.ndjson:2: stroke 0 has absurd coordinates"),
        ('{"drawing": []}', "bad.ndjson:2: empty drawing"),
        (b'{"word": "caf\xe9", "drawing": []}', "bad.ndjson:2: not UTF-8"),
    ],
)
def test_bad_ndjson_line_reports_its_number(tmp_path: Path, line: str | bytes, message: str) -> None:
    path = write_lines(tmp_path, line)
    one_line_error(datasets.read_ndjson, path, match=message)


def test_empty_and_missing_ndjson(tmp_path: Path) -> None:
    (tmp_path / "empty.ndjson").write_text("\n\n")
    one_line_error(datasets.read_ndjson, tmp_path / "empty.ndjson", match="no drawings")
    one_line_error(datasets.read_ndjson, tmp_path / "missing.ndjson", match="no such file")


def test_multi_class_dataset_keeps_labels(sheep, sketchrnn_dir: Path) -> None:
    kanji = datasets.load_npz(sketchrnn_dir / "short_kanji.npz")
    ds = datasets.ndjson_to_dataset(
        [FIXTURES / "sheep.ndjson", FIXTURES / "kanji.ndjson"], epsilon=0.0, seed=3
    )
    assert ds.classes == ["sheep", "kanji"]
    sources = {0: sheep.test, 1: kanji.test}
    counts = np.zeros(2, int)
    for k in datasets.SPLITS:
        assert len(ds.labels[k]) == len(ds.split(k))
        for s, label in zip(ds.split(k), ds.labels[k], strict=True):
            assert any(len(s) == len(o) and (s == o).all() for o in sources[int(label)])
            counts[label] += 1
    assert counts.tolist() == [8, 6]
    again = datasets.ndjson_to_dataset(
        [FIXTURES / "sheep.ndjson", FIXTURES / "kanji.ndjson"], epsilon=0.0, seed=3
    )
    assert all((a == b).all() for a, b in zip(ds.train, again.train, strict=True))


def test_single_point_drawings_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "dots.ndjson"
    lines = [{"word": "dot", "drawing": [[[5], [5]]]}, {"word": "dot", "drawing": [[[0, 9], [0, 9]]]}]
    path.write_text("".join(json.dumps(o) + "\n" for o in lines))
    ds = datasets.ndjson_to_dataset([path], split=(1.0, 0.0, 0.0))
    assert len(ds.train) == 1 and not ds.valid and not ds.test
