"""Drawings made in other tools, as SVG files, in: untrusted SVG -> absolute polylines -> stroke-3.

One SVG file is one drawing. Its shapes (paths, lines, polylines, polygons, rects, circles,
ellipses, `<use>` copies) are read by svgelements with every transform applied, nested groups
included; each subpath becomes a stroke, in document order (the order it was drawn). Curves and
arcs are cut into straight pieces at most `FLATTEN_TOLERANCE` from the curve, in the units of the
converted drawing (0..255), and the polylines then take the path of a raw QuickDraw drawing
(`datasets.normalize_raw`: scaled so the longer side is 255, resampled, RDP, rounded): one
pipeline for every drawing that comes in.

The file is untrusted. Before svgelements sees it, defusedxml parses it with entities and
external references refused (billion laughs, XXE), and the file's size, element count (with
`<use>` copies expanded), nesting depth and number of coordinates are capped; the flattened
points are capped too. Every refusal is one `DataError` line.
"""

from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from sketchkit import datasets
from sketchkit.errors import DataError

MAX_SVG_BYTES = 8 << 20  # the clip art in ../shared/data/svg is 0.5-38 KB; 8 MB is a very busy drawing
MAX_ELEMENTS = 50_000  # after <use> copies are expanded: a <use> bomb multiplies them
MAX_DEPTH = 64  # nested elements; Inkscape files nest groups a few levels deep
MAX_NUMBERS = 1_000_000  # numbers in path data and point lists (a 1M-point path is refused unread)
MAX_POINTS = 200_000  # points after curves are flattened
MAX_COORD = 1e9  # user units after transforms: past this, float64 geometry is no longer a drawing
FLATTEN_TOLERANCE = 0.25  # in the converted drawing's units (its longer side is 255): well under RDP's 2.0
_SVG_NS = "{http://www.w3.org/2000/svg}"
_HREFS = ("href", "{http://www.w3.org/1999/xlink}href")
_NUMBER = re.compile(rb"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def read_polylines(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """The strokes of an SVG drawing as absolute `[k, 2]` polylines (SVG user units, y down),
    in document order, curves flattened for the 0..255 units of `to_stroke3`."""
    path = Path(path)
    data = _read_bounded(path)
    _check_structure(data, path)
    try:
        import svgelements as se
    except ImportError:
        raise DataError("SVG input needs svgelements: pip install svgelements") from None
    try:
        doc = se.SVG.parse(io.BytesIO(data), on_error="raise")
        paths = [abs(se.Path(e)) for e in doc.elements() if isinstance(e, se.Shape) and _visible(e)]
        boxes = [b for b in (p.bbox() for p in paths) if b is not None]
    except Exception as e:  # svgelements' own errors on a malformed attribute are of every kind
        raise DataError(f"{path}: not a drawing svgelements can read ({type(e).__name__}: {e})") from None
    if not boxes:
        raise DataError(f"{path}: no shapes to convert (paths, lines, polylines, polygons, rects, circles)")
    lo = np.min([b[:2] for b in boxes], axis=0)
    hi = np.max([b[2:] for b in boxes], axis=0)
    with np.errstate(over="ignore", invalid="ignore"):
        extent = float((hi - lo).max())
    if not (math.isfinite(extent) and np.isfinite(lo).all() and np.abs([lo, hi]).max() <= MAX_COORD):
        raise DataError(f"{path}: absurd coordinates (beyond {MAX_COORD:g} once transformed)")
    tolerance = FLATTEN_TOLERANCE * (extent / 255.0 if extent > 0 else 1.0)
    lines: list[np.ndarray] = []
    budget = [MAX_POINTS]
    for p in paths:
        lines += _flatten(p, tolerance, budget, path)
    lines = [line for line in lines if len(line) > 1]  # a lone "M x y" draws nothing
    if not lines:
        raise DataError(f"{path}: no shapes to convert (paths, lines, polylines, polygons, rects, circles)")
    return lines


def to_drawing(path: str | os.PathLike[str]) -> datasets.Drawing:
    """An SVG file as a raw drawing (absolute screen coordinates, like QuickDraw's raw format)."""
    return datasets.Drawing(Path(path).stem, Path(path).name, read_polylines(path), raw=True)


def to_stroke3(path: str | os.PathLike[str], epsilon: float = 2.0) -> np.ndarray:
    """An SVG drawing as stroke-3 in 0..255 units, through `datasets.drawing_to_stroke3`: the same
    scaling, resampling and RDP (`epsilon`) as a raw QuickDraw drawing."""
    try:
        return datasets.drawing_to_stroke3(to_drawing(path), epsilon)
    except DataError as e:
        if str(e).startswith(str(path)):
            raise
        raise DataError(f"{path}: {e}") from None  # "drawing has a single point"


# ---------------------------------------------------------------------------------------------
# the untrusted file, before svgelements


def _read_bounded(path: Path) -> bytes:
    try:
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        with open(path, "rb") as f:
            data = f.read(MAX_SVG_BYTES + 1)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(data) > MAX_SVG_BYTES:
        raise DataError(f"{path}: over {MAX_SVG_BYTES >> 20} MB, too big for one drawing")
    return data


def _check_structure(data: bytes, path: Path) -> None:
    """Parse with defusedxml (no entities, no external references) and refuse what would blow
    up in svgelements: deep nesting (its parser recurses), <use> copies that multiply or refer
    to themselves, path data of too many numbers."""
    import defusedxml
    from defusedxml.ElementTree import iterparse

    depth = 0
    elements = 0
    numbers = 0
    root: Any = None
    try:
        for event, elem in iterparse(io.BytesIO(data), events=("start", "end")):
            if event == "start":
                depth += 1
                elements += 1
                if root is None:
                    root = elem
                if depth > MAX_DEPTH:
                    raise DataError(f"{path}: elements nested over {MAX_DEPTH} deep")
                if elements > MAX_ELEMENTS:
                    raise DataError(f"{path}: over {MAX_ELEMENTS} elements")
            else:
                depth -= 1
                for key in ("d", "points"):
                    value = elem.get(key)
                    if value:
                        numbers += len(_NUMBER.findall(value.encode("ascii", "replace")))
                if numbers > MAX_NUMBERS:
                    raise DataError(f"{path}: over {MAX_NUMBERS} numbers of path data, too many points for a sketch")
    except defusedxml.DefusedXmlException as e:
        raise DataError(f"{path}: refused: the SVG declares {_what(e)}, which a drawing does not need") from None
    except SyntaxError as e:  # ElementTree.ParseError
        raise DataError(f"{path}: not valid XML ({e})") from None
    if root is None or root.tag not in (f"{_SVG_NS}svg", "svg"):
        raise DataError(f"{path}: not an SVG document (its root is not <svg>)")
    _check_uses(root, path)


def _what(e: Exception) -> str:
    name = type(e).__name__
    if "External" in name:
        return "an external reference"
    if "DTD" in name:
        return "a DTD"
    return "an entity"


def _check_uses(root: Any, path: Path) -> None:
    """The element count with every `<use>` expanded (as svgelements inlines them), refusing
    cycles: a small file of nested <use> can stand for billions of elements."""
    by_id = {e.get("id"): e for e in root.iter() if e.get("id") is not None}
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(e: Any) -> int:
        key = id(e)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise DataError(f"{path}: a <use> refers to itself")
        active.add(key)
        n = 1 + sum(size(c) for c in e)
        if e.tag in (f"{_SVG_NS}use", "use"):
            href = next((e.get(h) for h in _HREFS if e.get(h)), None)
            if href and href.startswith("#") and href[1:] in by_id:
                n += size(by_id[href[1:]])
        active.discard(key)
        sizes[key] = n
        if n > MAX_ELEMENTS:
            raise DataError(f"{path}: over {MAX_ELEMENTS} elements once <use> copies are expanded")
        return n

    size(root)


# ---------------------------------------------------------------------------------------------
# geometry


def _visible(e: Any) -> bool:
    """Drawn on white paper at all: not hidden, with a stroke or a fill that is not transparent,
    and a fill that is not white (an invisible guide, or a page's white background, draws nothing)."""
    if str(e.values.get("visibility", "")).lower() in ("hidden", "collapse"):
        return False

    def paints(color: Any, white_too: bool) -> bool:
        value = getattr(color, "value", None)
        if color is None or value is None or value & 0xFF == 0:  # none, or alpha 0 (0xRRGGBBAA)
            return False
        return white_too or value >> 8 != 0xFFFFFF

    return paints(e.stroke, white_too=True) or paints(e.fill, white_too=False)


def _flatten(p: Any, tolerance: float, budget: list[int], path: Path) -> list[np.ndarray]:
    """The subpaths of an svgelements Path as polylines, curves cut so that each straight piece
    is within `tolerance` of the curve; `budget[0]` is how many points may still be made."""
    import svgelements as se

    out: list[np.ndarray] = []
    current: list[np.ndarray] = []

    def take(points: np.ndarray) -> None:
        budget[0] -= len(points)
        if budget[0] < 0:
            raise DataError(f"{path}: over {MAX_POINTS} points once curves are flattened, too many for a sketch")
        current.append(points)

    def close_line() -> None:
        if current:
            out.append(np.concatenate(current))
            current.clear()

    for seg in p.segments():
        if isinstance(seg, se.Move):
            close_line()
            take(np.array([[seg.end.x, seg.end.y]], np.float64))
            continue
        if seg.start is None or seg.end is None:
            continue
        if not current:  # a segment that does not begin with a move starts where it is
            take(np.array([[seg.start.x, seg.start.y]], np.float64))
        if isinstance(seg, (se.Line, se.Close)):
            take(np.array([[seg.end.x, seg.end.y]], np.float64))
            continue
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # absurd numbers: refused just below
                n = _pieces(seg, tolerance, se)
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
        if n > budget[0]:
            raise DataError(f"{path}: over {MAX_POINTS} points once curves are flattened, too many for a sketch")
        t = np.linspace(0.0, 1.0, n + 1)[1:]
        take(np.asarray(seg.npoint(t), np.float64).reshape(-1, 2))
    close_line()
    for line in out:
        if not np.isfinite(line).all():
            raise DataError(f"{path}: coordinates that are not finite numbers")
    return out


def _pieces(seg: Any, tolerance: float, se: Any) -> int:
    """How many straight pieces keep a curve within `tolerance`: the bound on a uniformly cut
    Bezier's error, max|B''| / (8 n^2), and the sagitta of an arc's chord."""
    def xy(point: Any) -> np.ndarray:
        return np.array([point.x, point.y], np.float64)

    if isinstance(seg, se.CubicBezier):
        p0, p1, p2, p3 = (xy(q) for q in (seg.start, seg.control1, seg.control2, seg.end))
        curvature = 6.0 * max(np.hypot(*(p0 - 2 * p1 + p2)), np.hypot(*(p1 - 2 * p2 + p3)))
        n = math.sqrt(curvature / (8.0 * tolerance))
    elif isinstance(seg, se.QuadraticBezier):
        p0, p1, p2 = (xy(q) for q in (seg.start, seg.control, seg.end))
        n = math.sqrt(2.0 * float(np.hypot(*(p0 - 2 * p1 + p2))) / (8.0 * tolerance))
    elif isinstance(seg, se.Arc):
        r = max(abs(float(seg.rx)), abs(float(seg.ry)), tolerance)
        step = 2.0 * math.acos(max(-1.0, 1.0 - tolerance / r))
        n = abs(float(seg.sweep)) / step if step > 0 else 1.0
    else:  # a segment kind svgelements may add: sample it finely
        n = 32.0
    if not math.isfinite(n):
        raise DataError(f"absurd coordinates (beyond {MAX_COORD:g} once transformed)")
    return max(1, math.ceil(n))
