"""Sketch datasets: the sketch-rnn `.npz` format (loaded without running pickles) and QuickDraw
`.ndjson` (simplified and raw), single- and multi-class."""

from __future__ import annotations

import ast
import contextlib
import json
import math
import os
import pickle
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from sketchkit import strokes
from sketchkit.errors import DataError
from sketchkit.io import atomic_write

SPLITS = ("train", "valid", "test")
INT16_MAX = 32767
COORD_LIMIT = 1e5  # screen pixels; anything larger is a corrupt drawing, not a big one


@dataclass
class Dataset:
    """Three splits of stroke-3 sketches; `labels[split][i]` indexes `classes` (multi-class)."""

    train: list[np.ndarray]
    valid: list[np.ndarray]
    test: list[np.ndarray]
    classes: list[str] = field(default_factory=list)
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def split(self, name: str) -> list[np.ndarray]:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r} (choose from {', '.join(SPLITS)})")
        return getattr(self, name)


# ---------------------------------------------------------------------------------------------
# .npz without pickle execution


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and dtypes, and refuses every other global a pickle names."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


MAX_NPZ_MEMBER_BYTES = int(os.environ.get("SKETCHKIT_MAX_NPZ_BYTES", 4 << 30))
"""Largest uncompressed `.npz` member we inflate (4 GiB; `SKETCHKIT_MAX_NPZ_BYTES` moves it): a
zip bomb is refused from its directory entry, before anything is decompressed."""


def _npy_header(f: IO[bytes], key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Parse the documented `.npy` header (magic, version, little-endian length, a dict literal)
    ourselves: numpy's own parser is private and moved between 1.x and 2.x."""
    magic = f.read(8)
    if len(magic) != 8 or magic[:6] != b"\x93NUMPY":
        raise DataError(f"{key!r}: not a .npy array")
    major = magic[6]
    if major not in (1, 2, 3):
        raise DataError(f"{key!r}: unsupported .npy version {major}.{magic[7]}")
    size_bytes = f.read(2 if major == 1 else 4)
    header_len = int.from_bytes(size_bytes, "little")
    if len(size_bytes) not in (2, 4) or header_len > 1 << 20:
        raise DataError(f"{key!r}: corrupt .npy header")
    text = f.read(header_len).decode("utf-8" if major == 3 else "latin1", errors="replace")
    try:
        header = ast.literal_eval(text)
        shape = tuple(int(d) for d in header["shape"])
        fortran = bool(header["fortran_order"])
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except Exception:
        raise DataError(f"{key!r}: corrupt .npy header") from None
    if any(d < 0 for d in shape):
        raise DataError(f"{key!r}: negative dimension in .npy header")
    return shape, fortran, dtype


def _read_npy(f: IO[bytes], size: int, key: str) -> np.ndarray:
    """One `.npy` member of `size` uncompressed bytes; a plain array's header must account for
    exactly the bytes that follow it, so a lying shape never reaches an allocation."""
    shape, fortran, dtype = _npy_header(f, key)
    if not dtype.hasobject:
        data_bytes = size - f.tell()
        expected = math.prod(shape) * dtype.itemsize
        if expected != data_bytes:
            raise DataError(
                f"{key!r}: header claims shape {shape} of {dtype} ({expected} bytes) "
                f"but the member holds {data_bytes} bytes"
            )
        arr = np.frombuffer(f.read(data_bytes), dtype=dtype)
        return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    try:
        arr = _ArrayOnlyUnpickler(f, encoding="latin1").load()  # latin1: Python 2 era files
    except pickle.UnpicklingError as e:
        raise DataError(f"unsafe or corrupt object array {key!r}: {e}") from None
    except Exception as e:  # truncated pickles raise EOFError, ValueError, ...
        raise DataError(f"corrupt object array {key!r}: {type(e).__name__}: {e}") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{key!r} is not an array")
    return arr


# what zipfile raises on damaged archives (RuntimeError: a flipped "encrypted" flag)
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, OSError)


def load_npz_arrays(
    path: str | os.PathLike[str], max_member_bytes: int | None = None
) -> dict[str, np.ndarray]:
    """All arrays of an `.npz`; object arrays are rebuilt by an unpickler that only knows numpy.
    Members larger than `max_member_bytes` (default `MAX_NPZ_MEMBER_BYTES`) are refused unread."""
    path = Path(path)
    cap = MAX_NPZ_MEMBER_BYTES if max_member_bytes is None else max_member_bytes
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as z:
            out = {}
            for info in z.infolist():
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if info.file_size > cap:
                    raise DataError(
                        f"{path}: member {key!r} inflates to {info.file_size} bytes, over the "
                        f"{cap}-byte cap (SKETCHKIT_MAX_NPZ_BYTES)"
                    )
                with z.open(info) as f:  # zipfile stops at the declared size, so the cap holds
                    out[key] = _read_npy(f, info.file_size, key)
            return out
    except _ZIP_ERRORS as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    except ValueError as e:
        raise DataError(f"{path}: corrupt .npz member ({e})") from None


def _as_sketches(arr: np.ndarray, key: str) -> list[np.ndarray]:
    if not ((arr.dtype == object and arr.ndim == 1) or (arr.ndim == 3 and arr.shape[2] == 3)):  # or dense
        raise DataError(f"{key!r}: expected an object array of (n, 3) sketches, got {arr.dtype} {arr.shape}")
    out = []
    for i, s in enumerate(arr):
        out.append(strokes.check_stroke3(s, name=f"{key}[{i}]"))
    return out


def load_npz(path: str | os.PathLike[str]) -> Dataset:
    """A sketch-rnn `.npz` (keys train/valid/test of stroke-3 arrays), safely."""
    arrays = load_npz_arrays(path)
    missing = [k for k in SPLITS if k not in arrays]
    if missing:
        raise DataError(
            f"{path}: missing key(s) {', '.join(missing)} (a sketch-rnn .npz has train, valid, test)"
        )
    try:
        train, valid, test = (_as_sketches(arrays[k], k) for k in SPLITS)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    ds = Dataset(train, valid, test)
    if "classes" in arrays and all(f"{k}_labels" in arrays for k in SPLITS):
        ds.classes = [str(c) for c in arrays["classes"]]
        ds.labels = {k: arrays[f"{k}_labels"].astype(np.int64) for k in SPLITS}
    return ds


def save_npz(path: str | os.PathLike[str], ds: Dataset) -> None:
    """Write the sketch-rnn format (int16 stroke-3 object arrays), atomically."""
    arrays: dict[str, np.ndarray] = {}
    for k in SPLITS:
        split = ds.split(k)
        obj = np.empty(len(split), dtype=object)
        for i, s in enumerate(split):
            s = np.rint(np.asarray(s))
            if np.abs(s).max(initial=0) > INT16_MAX:  # astype would wrap around silently
                raise DataError(f"{k}[{i}]: offset {np.abs(s).max():g} does not fit the int16 .npz format")
            obj[i] = s.astype(np.int16)
        arrays[k] = obj
    if ds.classes:
        arrays["classes"] = np.array(ds.classes)
        for k in SPLITS:
            arrays[f"{k}_labels"] = ds.labels[k]
    with atomic_write(path) as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]


def concat(datasets: Sequence[Dataset], names: Sequence[str]) -> Dataset:
    """Several single-class datasets as one multi-class dataset; each sketch keeps its label."""
    out = Dataset([], [], [], classes=list(names))
    for k in SPLITS:
        labels = []
        for label, ds in enumerate(datasets):
            out.split(k).extend(ds.split(k))
            labels.append(np.full(len(ds.split(k)), label, dtype=np.int64))
        out.labels[k] = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    return out


# ---------------------------------------------------------------------------------------------
# QuickDraw .ndjson


@dataclass
class Drawing:
    """One QuickDraw drawing: its class word, key and absolute polylines (timestamps dropped)."""

    word: str
    key_id: str
    polylines: list[np.ndarray]
    raw: bool


def _parse_drawing(line: str, where: str) -> Drawing:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to be a drawing") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("drawing"), list):
        raise DataError(f"{where}: no 'drawing' list")
    lines = []
    raw = False
    for k, stroke in enumerate(obj["drawing"]):
        if not isinstance(stroke, list) or len(stroke) not in (2, 3):
            raise DataError(f"{where}: stroke {k} is not [[xs], [ys]] or [[xs], [ys], [ts]]")
        raw = raw or len(stroke) == 3
        try:
            xs = np.asarray(stroke[0], dtype=np.float64)
            ys = np.asarray(stroke[1], dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"{where}: stroke {k} has non-numeric coordinates") from None
        if xs.ndim != 1 or xs.shape != ys.shape:
            raise DataError(f"{where}: stroke {k} has {xs.size} xs but {ys.size} ys")
        if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
            raise DataError(f"{where}: stroke {k} has NaN or infinite coordinates")
        if max(np.abs(xs).max(initial=0), np.abs(ys).max(initial=0)) > COORD_LIMIT:
            raise DataError(f"{where}: stroke {k} has absurd coordinates (beyond {COORD_LIMIT:g})")
        if xs.size:
            lines.append(np.stack([xs, ys], axis=1))
    if not lines:
        raise DataError(f"{where}: empty drawing")
    return Drawing(str(obj.get("word", "")), str(obj.get("key_id", "")), lines, raw)


def read_ndjson(path: str | os.PathLike[str]) -> list[Drawing]:
    """Every drawing of a QuickDraw `.ndjson` file; a bad line is reported with its number."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    out = []
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                where = f"{path}:{number}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(f"{where}: not UTF-8 text (is this an .ndjson file?)") from None
                if line.strip():
                    out.append(_parse_drawing(line, where))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if not out:
        raise DataError(f"{path}: no drawings")
    return out


def normalize_raw(polylines: Sequence[np.ndarray], epsilon: float = 2.0) -> list[np.ndarray]:
    """Google's 'simplified' pipeline for raw drawings: align to the top-left, scale uniformly so
    the longer side is 255, resample at 1 px spacing, then RDP with `epsilon`, round to integers.

    On the 218 drawings of ../shared/data/quickdraw present in both formats this gives Google's
    simplified drawing point for point in 190 cases; the others differ by a point or two in one
    stroke (tests/test_datasets.py)."""
    xy = np.concatenate(polylines)
    lo = xy.min(axis=0)
    extent = float((xy.max(axis=0) - lo).max()) or 1.0
    out = []
    for p in polylines:
        q = strokes.rdp(_resample((p - lo) * (255.0 / extent), 1.0), epsilon)
        if len(q) == 1:  # a tap: Google's RDP returns (first, last) even for one point
            q = np.vstack([q, q])
        out.append(np.rint(q))
    return out


def _resample(p: np.ndarray, spacing: float) -> np.ndarray:
    if len(p) < 2:
        return p
    seg = np.hypot(*np.diff(p, axis=0).T)
    dist = np.concatenate([[0.0], np.cumsum(seg)])
    if dist[-1] == 0:
        return p[:1]
    t = np.arange(0.0, dist[-1], spacing)
    t = np.append(t, dist[-1]) if t[-1] < dist[-1] else t
    return np.stack([np.interp(t, dist, p[:, 0]), np.interp(t, dist, p[:, 1])], axis=1)


def drawing_to_stroke3(d: Drawing, epsilon: float = 2.0) -> np.ndarray:
    """A drawing as stroke-3: raw drawings go through `normalize_raw`; simplified ones get RDP."""
    lines = normalize_raw(d.polylines, epsilon) if d.raw else [strokes.rdp(p, epsilon) for p in d.polylines]
    return strokes.from_polylines(lines)


def ndjson_to_dataset(
    paths: Iterable[str | os.PathLike[str]],
    epsilon: float = 2.0,
    split: tuple[float, float, float] = (0.9, 0.05, 0.05),
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Dataset:
    """Convert one or more `.ndjson` files into a (multi-class) Dataset, shuffled and split."""
    per_class: list[Dataset] = []
    names = []
    rng = np.random.default_rng(seed)
    for path in paths:
        drawings = read_ndjson(path)
        sketches = []
        for d in drawings:
            with contextlib.suppress(DataError):  # single-point drawings carry no stroke
                sketches.append(drawing_to_stroke3(d, epsilon))
            if progress:
                progress(1)
        order = rng.permutation(len(sketches))
        sketches = [sketches[i] for i in order]
        n_train = int(round(split[0] * len(sketches)))
        n_valid = int(round(split[1] * len(sketches)))
        per_class.append(
            Dataset(sketches[:n_train], sketches[n_train : n_train + n_valid], sketches[n_train + n_valid :])
        )
        names.append(drawings[0].word or Path(path).stem)
    if len(per_class) == 1:
        return per_class[0]
    return concat(per_class, names)
