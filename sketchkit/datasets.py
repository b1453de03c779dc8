"""Sketch datasets: the sketch-rnn `.npz` format (loaded without running pickles) and QuickDraw
`.ndjson` (simplified and raw), single- and multi-class."""

from __future__ import annotations

import ast
import collections
import contextlib
import itertools
import json
import math
import os
import pickle
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
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


MAX_NPZ_MEMBER_BYTES = int(os.environ.get("SKETCHKIT_MAX_NPZ_BYTES", 512 << 20))
"""Largest uncompressed `.npz` member we inflate (512 MiB, several times a QuickDraw class's
largest split; `SKETCHKIT_MAX_NPZ_BYTES` moves it): a zip bomb is refused from its directory
entry, before anything is decompressed."""


MAX_NPZ_TOTAL_BYTES = 4 * MAX_NPZ_MEMBER_BYTES
"""Largest sum of an `.npz`'s uncompressed members (2 GiB with the default member cap)."""

MAX_DATASET_BYTES = int(os.environ.get("SKETCHKIT_MAX_DATASET_BYTES", 4 << 30))
"""Largest dataset file read (`.npz` or `.ndjson`, 4 GiB: a QuickDraw class's raw `.ndjson` is
under 1 GiB; `SKETCHKIT_MAX_DATASET_BYTES` moves it)."""

_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))  # fmt: skip


def open_dataset(path: str | os.PathLike[str], max_bytes: int | None = None, *, stream: bool = False) -> IO[bytes]:
    """`path` opened for reading if it is a regular file (after its symlinks) of at most
    `max_bytes` (default `MAX_DATASET_BYTES`); else a one-line DataError, nothing read. A device
    reads forever (`/dev/zero`: gigabytes before any parser gives up) and a FIFO blocks; the file
    is opened non-blocking, so even a FIFO without a writer is refused at once, and checked on
    the open descriptor, so what is checked is what is read. `stream`: a FIFO (a pipe) is taken
    too, opened as usual (waiting for its writer), for a reader whose memory stays bounded
    whatever the length (`convert_ndjson`, line by line and chunk by chunk)."""
    path = Path(path)
    cap = MAX_DATASET_BYTES if max_bytes is None else max_bytes
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | (0 if stream else getattr(os, "O_NONBLOCK", 0))
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or (stream and stat.S_ISFIFO(st.st_mode))):
            kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a file")
            raise DataError(f"{path}: not a regular file ({kind}); datasets are read from regular files only")
        if stat.S_ISREG(st.st_mode) and st.st_size > cap:
            raise DataError(f"{path}: {st.st_size} bytes, over the {cap}-byte cap for a dataset (SKETCHKIT_MAX_DATASET_BYTES)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


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
    try:
        with open_dataset(path) as file, zipfile.ZipFile(file) as z:
            out = {}
            total = sum(info.file_size for info in z.infolist())
            if total > MAX_NPZ_TOTAL_BYTES:
                raise DataError(f"{path}: its members inflate to {total} bytes, over the {MAX_NPZ_TOTAL_BYTES}-byte cap")
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
            if isinstance(s, np.ndarray) and s.dtype == np.int16:
                obj[i] = s  # already what we would write
                continue
            s = np.rint(np.asarray(s))
            if np.abs(s).max(initial=0) > INT16_MAX:  # astype would wrap around silently
                raise DataError(f"{k}[{i}]: offset {np.abs(s).max():g} does not fit the int16 .npz format")
            obj[i] = s.astype(np.int16)
        arrays[k] = obj
    if ds.classes:
        arrays["classes"] = np.array(ds.classes)
        for k in SPLITS:
            arrays[f"{k}_labels"] = ds.labels[k]
    # what np.savez_compressed writes, with the zip closed even when a write fails (a full disk),
    # and object arrays pickled with protocol 4, whose frames stream into the zip: numpy's
    # protocol 3 builds the whole pickle in memory first (as big as the dataset again)
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as z:
        for key, arr in arrays.items():
            with z.open(f"{key}.npy", "w", force_zip64=True) as member:
                if arr.dtype.hasobject:
                    np.lib.format.write_array_header_1_0(member, np.lib.format.header_data_from_array_1_0(arr))
                    pickle.dump(arr, member, protocol=4)
                else:
                    np.lib.format.write_array(member, arr)


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


def _parse_json(line: str, where: str) -> object:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to be a drawing") from None


def _parse_drawing(line: str, where: str) -> Drawing:
    return _drawing(_parse_json(line, where), where)


def _drawing(obj: object, where: str) -> Drawing:
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


MAX_LINE_BYTES = 16 << 20  # one drawing per line: QuickDraw's largest raw drawings are far smaller


def ndjson_lines(f: IO[bytes], label: object) -> Iterator[bytes]:
    """The lines of an .ndjson file, none read whole beyond `MAX_LINE_BYTES` (memory stays
    bounded whatever the file): a longer line is a one-line DataError with its number."""
    for number in itertools.count(1):
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES:
            raise DataError(f"{label}:{number}: a line of over {MAX_LINE_BYTES >> 20} MB (an .ndjson has one drawing per line)")
        yield raw


def read_ndjson(path: str | os.PathLike[str]) -> list[Drawing]:
    """Every drawing of a QuickDraw `.ndjson` file; a bad line is reported with its number."""
    path = Path(path)
    out = []
    try:
        with open_dataset(path) as f:
            for number, raw in enumerate(ndjson_lines(f, path), 1):
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
    extent = float((xy.max(axis=0) - lo).max())
    # no extent (one point), or one so small (subnormal) that 255 / extent overflows: a point
    scale = 255.0 / extent if extent >= 1e-300 else 255.0
    out = []
    for p in polylines:
        q = strokes.rdp(_resample((p - lo) * scale, 1.0), epsilon)
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


# ---- conversion: streamed in chunks of lines over worker processes, results kept compact -----
CHUNK_LINES = 2000  # lines per task: big enough to amortise a task, small enough to stream


def _int_coords(stroke: object) -> bool:
    """A simplified stroke [[xs], [ys]] of plain ints within COORD_LIMIT (the fast path's input)."""
    if not (isinstance(stroke, list) and len(stroke) == 2):
        return False
    xs, ys = stroke
    return (
        isinstance(xs, list) and isinstance(ys, list) and len(xs) == len(ys)
        and set(map(type, xs)) <= {int} and set(map(type, ys)) <= {int}
        and (not xs or (min(xs) >= -COORD_LIMIT and max(xs) <= COORD_LIMIT
                        and min(ys) >= -COORD_LIMIT and max(ys) <= COORD_LIMIT))
    )  # fmt: skip


def _rdp_ints(points: list[tuple[int, int]], epsilon: float) -> list[tuple[int, int]]:
    """`strokes.rdp` for a polyline of integer points in plain Python, keeping exactly the same
    points. There, a point's distance is |cross| / chord in float64; with integers below 2^36 the
    cross product is exact and dividing it by one chord keeps its order, so the farthest point is
    the first with the largest integer |cross|, and only a near tie with epsilon needs the float
    division by numpy's own hypot (which is not always correctly rounded)."""
    n = len(points)
    if n < 3 or epsilon <= 0:
        return points
    keep = [False] * n
    keep[0] = keep[-1] = True
    eps2 = epsilon * epsilon
    stack = [(0, n - 1)]
    while stack:
        i, j = stack.pop()
        if j - i < 2:
            continue
        (ax, ay), (bx, by) = points[i], points[j]
        dx, dy = bx - ax, by - ay
        chord2 = dx * dx + dy * dy
        best, k = -1, i
        if chord2:
            for m in range(i + 1, j):
                x, y = points[m]
                c = dx * (y - ay) - dy * (x - ax)
                if c < 0:
                    c = -c
                if c > best:
                    best, k = c, m
            square, limit = best * best, eps2 * chord2  # best / chord > epsilon, decided exactly
            if abs(square - limit) > 1e-9 * limit:
                far = square > limit
            else:  # a near tie: the float division of strokes.rdp decides
                far = best / float(np.hypot(dx, dy)) > epsilon
        else:  # a closed stroke: distances to the point itself; ties decided by numpy's hypot
            for m in range(i + 1, j):
                x, y = points[m]
                c = (x - ax) ** 2 + (y - ay) ** 2
                if c > best:
                    best, k = c, m
            tied = [m for m in range(i + 1, j) if (points[m][0] - ax) ** 2 + (points[m][1] - ay) ** 2 == best]
            hyp = [float(np.hypot(points[m][0] - ax, points[m][1] - ay)) for m in tied]
            k = tied[hyp.index(max(hyp))]
            far = max(hyp) > epsilon
        if far:
            keep[k] = True
            stack.append((k, j))
            stack.append((i, k))
    return [p for p, kept in zip(points, keep, strict=True) if kept]


def _fast_stroke3(obj: object, epsilon: float) -> np.ndarray | None:
    """A simplified drawing of integer points as an int16 stroke-3, without numpy per point;
    None when the drawing is anything else (the general path then decides, errors included)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("drawing"), list) or not obj["drawing"]:
        return None
    if not all(_int_coords(stroke) for stroke in obj["drawing"]):
        return None
    lines = [_rdp_ints(list(zip(xs, ys, strict=True)), epsilon) for xs, ys in obj["drawing"] if xs]
    if not lines:
        return None
    rows: list[tuple[int, int, int]] = []
    px, py = lines[0][0]
    for line in lines:
        for x, y in line:
            rows.append((x - px, y - py, 0))
            px, py = x, y
        rows[-1] = (*rows[-1][:2], 1)
    del rows[0]  # the first point is the origin (strokes.from_polylines)
    if not rows or max(max(abs(a), abs(b)) for a, b, _ in rows) > INT16_MAX:
        return None
    return np.array(rows, dtype=np.int16)


def _compact(s: np.ndarray) -> np.ndarray:
    """int16 when the values are whole and fit (what save_npz writes anyway), else as is."""
    if np.abs(s).max(initial=0) <= INT16_MAX and np.array_equal(s, np.rint(s)):
        return s.astype(np.int16)
    return s


def _convert_lines(label: str, first: int, lines: list[bytes], epsilon: float) -> tuple[list[np.ndarray], str | None, int]:
    """One chunk of an .ndjson file: (its sketches, the word of its first drawing, its drawings).
    Runs in a worker process; a bad line raises the same one-line DataError as `read_ndjson`."""
    sketches: list[np.ndarray] = []
    word: str | None = None
    count = 0
    for number, raw in enumerate(lines, first):
        where = f"{label}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{where}: not UTF-8 text (is this an .ndjson file?)") from None
        if not line.strip():
            continue
        obj = _parse_json(line, where)
        count += 1
        fast = _fast_stroke3(obj, epsilon)
        if fast is not None and isinstance(obj, dict):  # (the fast path takes only objects)
            word = str(obj.get("word", "")) if word is None else word
            sketches.append(fast)
            continue
        d = _drawing(obj, where)
        word = d.word if word is None else word
        with contextlib.suppress(DataError):  # single-point drawings carry no stroke
            sketches.append(_compact(drawing_to_stroke3(d, epsilon)))
    return sketches, word, count


def _chunks(f: IO[bytes], size: int, label: object) -> Iterable[tuple[int, list[bytes]]]:
    number = 1
    bounded = ndjson_lines(f, label)
    while True:
        lines = list(itertools.islice(bounded, size))
        if not lines:
            return
        yield number, lines
        number += len(lines)


def convert_ndjson(
    path: str | os.PathLike[str], epsilon: float = 2.0, workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[np.ndarray], str]:
    """Every drawing of a QuickDraw `.ndjson` as stroke-3 (single-point drawings skipped), in file
    order, and the class word of its first drawing. The file is read in chunks of CHUNK_LINES
    lines that `workers` processes (default: every core) convert, at most two per worker in
    flight, so memory holds the compact results and a few chunks, never the whole file."""
    path = Path(path)
    workers = workers or os.cpu_count() or 1
    out: list[np.ndarray] = []
    word: str | None = None
    total = 0

    def take(result: tuple[list[np.ndarray], str | None, int]) -> None:
        nonlocal word, total
        sketches, first_word, count = result
        out.extend(sketches)
        word = first_word if word is None else word
        total += count
        if progress:
            progress(count)

    try:
        with open_dataset(path, stream=True) as f:  # a pipe streams: `zcat x.ndjson.gz | ... /dev/stdin`
            if workers == 1:
                for first, lines in _chunks(f, CHUNK_LINES, path):
                    take(_convert_lines(str(path), first, lines, epsilon))
            else:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                # forkserver: workers start clean, holding none of this process's threads or
                # open files (a forked worker would keep a pipe's writer open: no EOF, ever)
                with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
                    pending: collections.deque = collections.deque()
                    for first, lines in _chunks(f, CHUNK_LINES, path):
                        pending.append(pool.submit(_convert_lines, str(path), first, lines, epsilon))
                        if len(pending) >= 2 * workers:
                            take(pending.popleft().result())
                    while pending:
                        take(pending.popleft().result())
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if not total:
        raise DataError(f"{path}: no drawings")
    return out, word or ""


def ndjson_to_dataset(
    paths: Iterable[str | os.PathLike[str]],
    epsilon: float = 2.0,
    split: tuple[float, float, float] = (0.9, 0.05, 0.05),
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> Dataset:
    """Convert one or more `.ndjson` files into a (multi-class) Dataset, shuffled and split;
    streamed over `workers` processes (`convert_ndjson`). Sketches whose values are whole and
    fit int16 (all of QuickDraw's) are kept as int16, the dtype the .npz format stores."""
    per_class: list[Dataset] = []
    names = []
    rng = np.random.default_rng(seed)
    for path in paths:
        sketches, word = convert_ndjson(path, epsilon, workers, progress)
        per_class.append(shuffle_split(sketches, rng, split))
        names.append(word or Path(path).stem)
    if len(per_class) == 1:
        return per_class[0]
    return concat(per_class, names)


def shuffle_split(
    sketches: Sequence[np.ndarray], rng: np.random.Generator, split: tuple[float, float, float] = (0.9, 0.05, 0.05)
) -> Dataset:
    """One class's sketches shuffled by `rng` and cut into train/valid/test by the `split` fractions
    (every converter's split: QuickDraw .ndjson and SVG drawings alike)."""
    order = rng.permutation(len(sketches))
    shuffled = [sketches[i] for i in order]
    n_train = int(round(split[0] * len(shuffled)))
    n_valid = int(round(split[1] * len(shuffled)))
    return Dataset(shuffled[:n_train], shuffled[n_train : n_train + n_valid], shuffled[n_train + n_valid :])
