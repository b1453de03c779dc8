"""sketchkit.svg: drawings from other tools in (real clip art and line icons), shapes and nested
transforms read exactly, curves within tolerance, our own `render` output back to within RDP
tolerance, and hostile SVGs refused in one line."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest

from sketchkit import datasets, render, strokes, svg
from sketchkit.errors import DataError

SVG_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "svg"
REAL = sorted(SVG_DIR.glob("*/*.svg")) if SVG_DIR.is_dir() else []
needs_real = pytest.mark.skipif(not REAL, reason=f"{SVG_DIR} is absent (the shared real SVG drawings)")


def write(tmp_path: Path, body: str, head: str = "", name: str = "d.svg") -> Path:
    path = tmp_path / name
    path.write_text(f'{head}<svg xmlns="http://www.w3.org/2000/svg" width="300" height="300">{body}</svg>')
    return path


# ---------------------------------------------------------------------------------------------
# real drawings from other tools


@needs_real
@pytest.mark.parametrize("path", REAL, ids=[p.name for p in REAL])
def test_real_drawings_land_on_the_originals_ink(path: Path) -> None:
    """Every point we read lies on what cairosvg paints for the original (within 1.5 units, 6 px at 4x),
    and the stroke-3 form is in 0..255 units with its longer side 255."""
    cairosvg = pytest.importorskip("cairosvg")
    from PIL import Image

    lines = svg.read_polylines(path)
    xy = np.concatenate(lines)
    scale = 4.0
    png = cairosvg.svg2png(url=str(path), scale=scale)  # transparent where nothing is painted
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))[:, :, 3] > 0
    ink = image.copy()
    for dy in range(-6, 7):  # dilate by 6 px (1.5 units): outlines of fills sit on the fill's edge,
        for dx in range(-6, 7):  # and cairosvg's edges of Illustrator's curves lie up to a unit off ours
            ink |= np.roll(np.roll(image, dy, axis=0), dx, axis=1)
    px = np.clip(np.rint(xy * scale).astype(int), 0, np.array(ink.shape[::-1]) - 1)
    on_ink = ink[px[:, 1], px[:, 0]].mean()
    assert on_ink > 0.99, on_ink
    s = svg.to_stroke3(path)
    absolute = np.concatenate(strokes.to_polylines(s))
    extent = absolute.max(axis=0) - absolute.min(axis=0)
    assert 255 - 4 <= extent.max() <= 255 and (s[:, 2] == 1).sum() == len(lines)


@needs_real
def test_line_icons_keep_their_strokes_in_document_order() -> None:
    """lucide's snail: four paths and a circle, so five strokes; the circle (4th element) is closed."""
    lines = svg.read_polylines(SVG_DIR / "lucide" / "snail.svg")
    assert len(lines) == 5
    first = lines[0]
    assert np.allclose(first[0], (2, 13))  # "M2 13a6 6 ..." : the first path starts the drawing
    circle = lines[1]
    assert np.allclose(np.hypot(*(circle - (10, 13)).T), 8, atol=1e-6)
    assert np.allclose(circle[0], circle[-1])


# ---------------------------------------------------------------------------------------------
# shapes, transforms, curves


def test_shapes_and_nested_transforms_are_exact(tmp_path: Path) -> None:
    path = write(tmp_path, """
        <line x1="0" y1="0" x2="10" y2="0" stroke="black"/>
        <g transform="translate(100,0)"><g transform="scale(2)">
            <rect x="0" y="0" width="10" height="5" fill="black"/></g></g>
        <polyline points="0,50 10,60 20,50" fill="none" stroke="black"/>
        <polygon points="0,100 10,100 10,110" fill="red"/>
        <defs><path id="tri" d="M0 0 L5 0 L0 5 Z"/></defs>
        <use href="#tri" transform="translate(200,200)" fill="black"/>
        <path d="M0 0 L1 1" fill="none" stroke="none"/>
        <rect width="300" height="300" fill="white"/>
    """)
    lines = svg.read_polylines(path)
    assert len(lines) == 5  # invisible path and white background left out
    line, rect, polyline, polygon, used = lines
    assert np.allclose(line, [[0, 0], [10, 0]])
    assert np.allclose(rect, [[100, 0], [120, 0], [120, 10], [100, 10], [100, 0]])
    assert np.allclose(polyline, [[0, 50], [10, 60], [20, 50]])
    assert np.allclose(polygon, [[0, 100], [10, 100], [10, 110], [0, 100]])
    assert np.allclose(used, [[200, 200], [205, 200], [200, 205], [200, 200]])


def test_curves_and_arcs_are_flattened_within_tolerance(tmp_path: Path) -> None:
    path = write(tmp_path, """
        <path d="M0 100 A 100 100 0 0 1 200 100" fill="none" stroke="black"/>
        <path d="M0 150 C 50 0 150 300 200 150" fill="none" stroke="black"/>
        <ellipse cx="100" cy="250" rx="100" ry="40" transform="rotate(10 100 250)" fill="none" stroke="black"/>
    """)
    arc, cubic, ellipse = svg.read_polylines(path)
    everything = np.concatenate([arc, cubic, ellipse])
    extent = (everything.max(axis=0) - everything.min(axis=0)).max()
    tolerance = svg.FLATTEN_TOLERANCE * extent / 255 * 1.01  # in units of the 0..255 drawing
    assert np.allclose(np.hypot(arc[:, 0] - 100, arc[:, 1] - 100), 100)  # on the circle
    chord = np.hypot(*np.diff(arc, axis=0).T)
    sagitta = 100 - np.sqrt(100**2 - (chord / 2) ** 2)
    assert sagitta.max() <= tolerance and len(arc) > 10
    # the cubic: the true curve's points lie within the tolerance of our polyline
    t = np.linspace(0, 1, 2001)[:, None]
    p0, p1, p2, p3 = (np.array(q, float) for q in ((0, 150), (50, 0), (150, 300), (200, 150)))
    true = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3
    assert _distance_to_polyline(true, cubic).max() <= tolerance
    assert np.allclose(ellipse[0], ellipse[-1]) and len(ellipse) > 20


def _distance_to_polyline(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    a, b = line[:-1], line[1:]
    d = b - a
    t = np.clip(((points[:, None] - a) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-12), 0, 1)
    nearest = a + t[..., None] * d
    return np.hypot(*(points[:, None] - nearest).transpose(2, 0, 1)).min(axis=1)


def test_to_stroke3_is_the_raw_quickdraw_pipeline(tmp_path: Path) -> None:
    """The same scaling, resampling and RDP as a raw QuickDraw drawing: one pipeline."""
    path = write(tmp_path, '<path d="M10 10 C 60 -40 110 60 160 10 M 10 100 L 160 120" stroke="black" fill="none"/>')
    expected = strokes.from_polylines(datasets.normalize_raw(svg.read_polylines(path), 2.0))
    assert np.array_equal(svg.to_stroke3(path), expected)
    assert len(svg.to_stroke3(path, epsilon=0.5)) > len(expected)


# ---------------------------------------------------------------------------------------------
# our own render output, back


def test_render_output_round_trips_within_rdp_tolerance(sheep, tmp_path: Path) -> None:
    for i in (0, 7, 42):
        sketch = sheep.test[i]
        path = tmp_path / f"sheep{i}.svg"
        path.write_text(render.to_svg(sketch, size=256))
        back = svg.to_stroke3(path, epsilon=2.0)
        want = strokes.from_polylines(datasets.normalize_raw(strokes.to_polylines(sketch), 2.0))
        assert (back[:, 2] == 1).sum() == (want[:, 2] == 1).sum()  # the same strokes
        a = _dense(strokes.to_polylines(back))
        b = _dense(strokes.to_polylines(want))
        gap = max(_nearest(a, b).max(), _nearest(b, a).max())
        assert gap <= 2.0 + 1.0, (i, gap)  # RDP's epsilon, plus rounding to whole units


def _dense(lines: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([datasets._resample(p, 0.5) for p in lines])


def _nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min(axis=1)


# ---------------------------------------------------------------------------------------------
# hostile files: one line each


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa">'
    + "".join(f'<!ENTITY {chr(98 + k)} "{("&" + chr(97 + k) + ";") * 10}">' for k in range(8))
    + "]>"
)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: write(p, '<text>&i;</text><path d="M0 0 L9 9" stroke="black"/>', LAUGHS), "entity"),
        (lambda p: write(p, '<text>&x;</text>', '<!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'), "entity|external"),
        (lambda p: write(p, '<path d="M0 0' + " L1 1" * 600_000 + '" stroke="black"/>'), "numbers of path data"),
        (lambda p: write(p, "<g>" * 200 + '<path d="M0 0 L1 1" stroke="black"/>' + "</g>" * 200), "nested"),
        (lambda p: write(p, "<!--" + "x" * (9 << 20) + "-->"), "too big"),
        (lambda p: write(p, '<path id="p0" d="M0 0 L1 1" stroke="black"/>' + "".join(
            f'<g id="p{k + 1}">' + f'<use href="#p{k}"/>' * 10 + "</g>" for k in range(8))), "<use> copies"),
        (lambda p: write(p, '<g id="me"><use href="#me"/></g>'), "refers to itself"),
        (lambda p: write(p, '<text>no shapes</text>'), "no shapes"),
        (lambda p: write(p, '<path d="M0 0 Q 1e308 1e308 10 10" stroke="black"/>'), "absurd coordinates"),
        (lambda p: write(p, '<g transform="scale(1e300)"><path d="M0 0 L 1e10 1" stroke="black"/></g>'), "absurd"),
        (lambda p: _file(p / "x.svg", b"\x89PNG\r\n\x1a\n...."), "not valid XML"),
        (lambda p: _file(p / "h.svg", b"<html><body/></html>"), "not an SVG"),
        (lambda p: p / "missing.svg", "no such file"),
    ],
    ids=["billion-laughs", "xxe", "1M-point-path", "deep-nesting", "huge-file", "use-bomb", "use-cycle",
         "no-shapes", "huge-control-point", "huge-transform", "not-xml", "not-svg", "missing"],
)
def test_hostile_svgs_get_one_line(tmp_path: Path, make, match: str) -> None:
    path = make(tmp_path)
    with pytest.raises(DataError, match=match) as e:
        svg.to_stroke3(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_flattened_points_are_capped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(svg, "MAX_POINTS", 1000)
    path = write(tmp_path, "".join(f'<circle cx="{k}" cy="0" r="{50 + k}" stroke="black" fill="none"/>' for k in range(60)))
    with pytest.raises(DataError, match="over 1000 points once curves are flattened"):
        svg.read_polylines(path)
    assert math.isfinite(svg.FLATTEN_TOLERANCE)
