"""Draw stroke-3 sketches as SVG (one sketch, or a grid with captions) and PNG through cairosvg.

A sketch is drawn the way the data encodes it: the pen starts down at the origin (S_0) and lifts
after every row whose pen column is 1 (`strokes.to_polylines`). Each sketch is scaled to fit its
cell with the aspect ratio kept and centred, so sketches in pixel or normalised units look alike.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from sketchkit import strokes
from sketchkit.errors import DataError, SketchkitError
from sketchkit.io import atomic_write

# viridis at t = 0, 1/8, ..., 1 (perceptually uniform and colour-blind safe); stroke order runs
# from dark purple to yellow-green, stopping before the pale yellow end that vanishes on white
_VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#fde725"]
_VIRIDIS_RGB = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in _VIRIDIS], dtype=np.float64)
_PALETTE_END = 0.85
# the playground's colours: what a person drew, and what the model added (complete)
GIVEN_COLOR = "black"
MODEL_COLOR = "#1c6fd1"


def stroke_colors(n: int) -> list[str]:
    """`n` colours in stroke order (first stroke dark purple), as `#rrggbb`."""
    t = np.linspace(0.0, _PALETTE_END, n)
    pos = t * (len(_VIRIDIS) - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(_VIRIDIS) - 1)
    rgb = _VIRIDIS_RGB[lo] + (pos - lo)[:, None] * (_VIRIDIS_RGB[hi] - _VIRIDIS_RGB[lo])
    return ["#{:02x}{:02x}{:02x}".format(*np.rint(c).astype(int)) for c in rgb]


def _num(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _sketch_paths(
    sketch: np.ndarray,
    size: float,
    *,
    padding: float = 0.05,
    stroke_width: float = 2.0,
    color_by_stroke: bool = False,
    color: str = "black",
    given: int | None = None,
) -> str:
    """The `<g>` that draws one sketch fitted into a `size` x `size` square at (0, 0). With
    `given`, its first `given` rows are drawn in `color` and the rest in `MODEL_COLOR`."""
    if not size > 0:
        raise DataError(f"image size must be positive, got {size}")
    if not 0 <= padding < 0.5:
        raise DataError(f"padding must be in [0, 0.5), got {padding}")
    arr = np.asarray(sketch)
    if arr.size == 0:
        return ""  # an empty sketch is an empty cell
    lines = strokes.to_polylines(strokes.check_stroke3(arr))
    xy = np.concatenate(lines)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    extent = float((hi - lo).max())
    inner = size * (1.0 - 2.0 * padding)
    scale = inner / extent if extent > 0 else 1.0  # a dot or a single point: draw it, unscaled
    shift = size / 2.0 - (lo + hi) / 2.0 * scale
    colors: list[str | None] = list(stroke_colors(len(lines))) if color_by_stroke else [None] * len(lines)
    if given is not None:
        lines, colors = _split_given(lines, given)
    paths = []
    for k, line in enumerate(lines):
        p = line * scale + shift
        if len(p) == 1:
            p = np.vstack([p, p])  # a zero-length segment with round caps draws a dot
        d = "M" + "L".join(f"{_num(x)},{_num(y)}" for x, y in p)
        mine = colors[k]
        stroke = f" stroke={quoteattr(mine)}" if mine else ""
        paths.append(f'<path d="{d}"{stroke}/>')
    return (
        f'<g fill="none" stroke={quoteattr(color)} stroke-width="{_num(stroke_width)}" '
        f'stroke-linecap="round" stroke-linejoin="round">{"".join(paths)}</g>'
    )


def _split_given(lines: list[np.ndarray], given: int) -> tuple[list[np.ndarray], list[str | None]]:
    """The polylines cut after point `given` (row `given - 1`; point 0 is the origin): the
    points up to it keep the group's colour (None), the rest are the model's."""
    out: list[np.ndarray] = []
    colors: list[str | None] = []
    start = 0  # index of the line's first point in the whole sketch
    for line in lines:
        cut = given + 1 - start  # how many of this line's points are given
        if cut >= len(line):
            out.append(line)
            colors.append(None)
        elif cut <= 0:
            out.append(line)
            colors.append(MODEL_COLOR)
        else:  # a stroke the model continues: both parts share the cut point
            out += [line[:cut], line[cut - 1 :]]
            colors += [None, MODEL_COLOR]
        start += len(line)
    return out, colors


def _svg(width: float, height: float, body: str, background: str | None) -> str:
    bg = f'<rect width="100%" height="100%" fill={quoteattr(background)}/>' if background else ""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_num(width)}" height="{_num(height)}" '
        f'viewBox="0 0 {_num(width)} {_num(height)}">{bg}{body}</svg>\n'
    )


def to_svg(
    sketch: np.ndarray,
    *,
    size: int = 256,
    padding: float = 0.05,
    stroke_width: float = 2.0,
    color_by_stroke: bool = False,
    color: str = "black",
    background: str | None = "white",
    given: int | None = None,
) -> str:
    """One stroke-3 sketch as a `size` x `size` SVG; `padding` is a fraction of `size` per side;
    `given`: its first rows a person drew (in `color`, the rest in `MODEL_COLOR`)."""
    body = _sketch_paths(
        sketch, size, padding=padding, stroke_width=stroke_width, color_by_stroke=color_by_stroke, color=color,
        given=given,
    )
    return _svg(size, size, body, background)


def grid_svg(
    sketches: Sequence[np.ndarray],
    *,
    cols: int | None = None,
    cell: int = 128,
    captions: Sequence[str] | None = None,
    given: Sequence[int | None] | None = None,
    **style: Any,
) -> str:
    """Many sketches in a grid of `cell`-pixel squares, row by row, each with an optional caption
    below it. `given[i]`: how many first rows of sketch i a person drew (in `color`; the rest in
    `MODEL_COLOR`, as the playground draws them). `style` takes `to_svg`'s keywords (padding,
    stroke_width, color_by_stroke, color, background)."""
    n = len(sketches)
    if n == 0:
        raise DataError("no sketches to draw")
    if captions is not None and len(captions) != n:
        raise DataError(f"{len(captions)} captions for {n} sketches")
    if given is not None and len(given) != n:
        raise DataError(f"{len(given)} given counts for {n} sketches")
    cols = cols or math.ceil(math.sqrt(n))
    if cols < 1:
        raise DataError(f"cols must be at least 1, got {cols}")
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    background = style.pop("background", "white")
    font = max(8, cell // 10)
    band = math.ceil(font * 1.6) if captions is not None else 0
    parts = []
    for i, sketch in enumerate(sketches):
        x, y = (i % cols) * cell, (i // cols) * (cell + band)
        body = _sketch_paths(sketch, cell, given=None if given is None else given[i], **style)
        if captions is not None:
            body += (
                f'<text x="{_num(cell / 2)}" y="{_num(cell + font)}" font-family="sans-serif" '
                f'font-size="{font}" text-anchor="middle" fill="#333">{escape(str(captions[i]))}</text>'
            )
        parts.append(f'<g transform="translate({x},{y})">{body}</g>')
    return _svg(cols * cell, rows * (cell + band), "".join(parts), background)


MAX_PNG_SVG_BYTES = 2 << 20  # ~150,000 points, ~2 s; cairosvg's time grows faster than linearly past it


def svg_to_png(svg: str) -> bytes:
    """Rasterise an SVG at its own width and height (cairosvg is imported only here); bounded:
    a 1,000,000-point sketch ran past 120 s at 1.6 GB, so an SVG over `MAX_PNG_SVG_BYTES` is refused."""
    if len(svg) > MAX_PNG_SVG_BYTES:
        raise DataError(
            f"the drawing is {len(svg) / 1e6:.1f} MB of SVG, over the {MAX_PNG_SVG_BYTES / 1e6:.1f} MB that PNG "
            "output rasterises (about 150,000 points): write .svg instead, or pick fewer sketches"
        )
    try:
        import cairosvg
    except (ImportError, OSError) as e:  # OSError: cairosvg is there but the cairo library is not
        raise SketchkitError(
            f"PNG output needs cairosvg and the cairo library ({e}); write .svg instead"
        ) from None
    return cairosvg.svg2png(bytestring=svg.encode("utf-8"))


# output formats: extension -> function turning the SVG text into the file's bytes
WRITERS: dict[str, Callable[[str], bytes]] = {
    ".svg": lambda svg: svg.encode("utf-8"),
    ".png": svg_to_png,
}


def get_writer(path: str | os.PathLike[str]) -> Callable[[str], bytes]:
    """The writer for `path`'s extension; check it before doing any work."""
    ext = Path(path).suffix.lower()
    if ext not in WRITERS:
        supported = ", ".join(sorted(WRITERS))
        raise DataError(f"{path}: unknown output extension {ext or '(none)'!r} (supported: {supported})")
    return WRITERS[ext]


def save(path: str | os.PathLike[str], svg: str) -> None:
    """Write `svg` as SVG or PNG, chosen by the extension of `path`, atomically."""
    data = get_writer(path)(svg)
    with atomic_write(path) as f:
        f.write(data)
