"""sketchkit.render: SVG geometry, grids with captions, real PNGs through cairosvg, atomic save."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image  # installed with cairosvg

from sketchkit import render, strokes
from sketchkit.errors import DataError

SVG = "{http://www.w3.org/2000/svg}"


def paths(svg: str) -> list[ET.Element]:
    return list(ET.fromstring(svg).iter(f"{SVG}path"))


def points(path: ET.Element) -> np.ndarray:
    return np.array([[float(v) for v in xy.split(",")] for xy in re.split("[ML]", path.get("d"))[1:]])


def ink(png: bytes) -> np.ndarray:
    """Boolean mask of the non-white pixels."""
    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    return image < 200


def test_svg_fits_the_sketch_keeping_its_aspect(sheep) -> None:
    s = sheep.test[0]
    svg = render.to_svg(s, size=200, padding=0.1)
    root = ET.fromstring(svg)
    assert (root.get("width"), root.get("height"), root.get("viewBox")) == ("200", "200", "0 0 200 200")
    drawn = paths(svg)
    assert len(drawn) == len(strokes.to_polylines(s))
    xy = np.concatenate([points(p) for p in drawn])
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    assert (hi - lo).max() == pytest.approx(160, abs=0.02)  # the longer side fills size * (1 - 2 padding)
    np.testing.assert_allclose((lo + hi) / 2, [100, 100], atol=0.02)  # centred
    # same shape: absolute points scaled by one factor (no independent x/y stretch)
    original = np.concatenate(strokes.to_polylines(s))
    ratio = (hi - lo) / (original.max(axis=0) - original.min(axis=0))
    assert ratio[0] == pytest.approx(ratio[1], rel=1e-3)


def test_empty_and_degenerate_sketches_never_crash() -> None:
    for empty in (np.zeros((0, 3)), []):
        svg = render.to_svg(empty, size=64)
        assert paths(svg) == [] and 'width="64"' in svg
    dot = render.to_svg(np.array([[0.0, 0.0, 1.0]]), size=64)  # zero extent
    xy = np.concatenate([points(p) for p in paths(dot)])
    assert np.isfinite(xy).all()
    np.testing.assert_allclose(xy, 32)
    line = render.to_svg(np.array([[10.0, 0.0, 1.0]]), size=64)  # zero height
    assert np.isfinite(np.concatenate([points(p) for p in paths(line)])).all()
    png = render.svg_to_png(dot)
    assert ink(png).any()  # a dot is drawn as a round-capped zero-length segment


def test_bad_sketch_is_a_data_error() -> None:
    with pytest.raises(DataError, match="NaN"):
        render.to_svg(np.array([[np.nan, 0, 1]]))
    with pytest.raises(DataError, match="shape"):
        render.to_svg(np.zeros((3, 4)))
    with pytest.raises(DataError, match="size"):
        render.to_svg(np.ones((2, 3)), size=0)


def test_color_by_stroke_follows_stroke_order(sheep) -> None:
    s = sheep.test[1]
    drawn = paths(render.to_svg(s, color_by_stroke=True))
    colors = [p.get("stroke") for p in drawn]
    assert colors == render.stroke_colors(len(drawn))
    assert len(set(colors)) == len(colors) > 3
    assert colors[0] == "#440154"  # viridis starts dark
    # lightness grows with stroke order (a perceptual, sequential palette)
    luma = [0.299 * int(c[1:3], 16) + 0.587 * int(c[3:5], 16) + 0.114 * int(c[5:7], 16) for c in colors]
    assert luma == sorted(luma)
    assert all(p.get("stroke") is None for p in paths(render.to_svg(s)))


def test_png_has_the_requested_size_and_ink(sheep) -> None:
    png = render.svg_to_png(render.to_svg(sheep.test[2], size=300))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(png))
    assert image.size == (300, 300)
    mask = ink(png)
    assert 0.005 < mask.mean() < 0.3
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    assert rows[0] >= 10 and cols[0] >= 10 and rows[-1] <= 290 and cols[-1] <= 290  # inside the padding


def test_sheep_grid_png_is_4x4_with_a_sheep_in_every_cell(sheep) -> None:
    png = render.svg_to_png(render.grid_svg(sheep.test[:16], cell=128))
    assert Image.open(io.BytesIO(png)).size == (512, 512)
    mask = ink(png)
    for r in range(4):
        for c in range(4):
            cell = mask[r * 128 : (r + 1) * 128, c * 128 : (c + 1) * 128]
            assert cell.mean() > 0.01, (r, c)


def test_grid_layout_and_captions(sheep) -> None:
    svg = render.grid_svg(sheep.test[:5], cols=2, cell=100, captions=["a", "<b & c>", "c", "d", "e"])
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts == ["a", "<b & c>", "c", "d", "e"]  # escaped in the SVG, intact when parsed
    band = 16  # caption band for a 100 px cell: font 10 * 1.6
    assert (root.get("width"), root.get("height")) == ("200", str(3 * (100 + band)))
    cells = [g.get("transform") for g in root if g.tag == f"{SVG}g"]
    assert cells == [f"translate({x},{y})" for y in (0, 116, 232) for x in (0, 100)][:5]
    assert Image.open(io.BytesIO(render.svg_to_png(svg))).size == (200, 348)
    # default: a square-ish grid, no caption band
    root = ET.fromstring(render.grid_svg(sheep.test[:10], cell=50))
    assert (root.get("width"), root.get("height")) == ("200", "150")


def test_grid_with_empty_cells_and_style(sheep) -> None:
    svg = render.grid_svg([sheep.test[0], np.zeros((0, 3))], color="red", stroke_width=1.5, background=None)
    assert "<rect" not in svg and 'stroke="red"' in svg and 'stroke-width="1.5"' in svg
    with pytest.raises(TypeError):
        render.grid_svg([sheep.test[0]], colour="red")


def test_grid_bad_input() -> None:
    with pytest.raises(DataError, match="no sketches"):
        render.grid_svg([])
    with pytest.raises(DataError, match="2 captions for 1 sketches"):
        render.grid_svg([np.ones((2, 3))], captions=["a", "b"])


@pytest.mark.parametrize("name", ["out.svg", "out.png", "OUT.PNG"])
def test_save_picks_the_format_by_extension(tmp_path: Path, sheep, name: str) -> None:
    svg = render.to_svg(sheep.test[0], size=64)
    render.save(tmp_path / "sub" / name, svg)
    data = (tmp_path / "sub" / name).read_bytes()
    if name.lower().endswith(".png"):
        assert Image.open(io.BytesIO(data)).size == (64, 64)
    else:
        assert data.decode() == svg
    assert [p.name for p in (tmp_path / "sub").iterdir()] == [name]  # no temp file left


def test_unknown_extension_lists_the_supported_ones_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.jpg"
    with pytest.raises(DataError, match=r"unknown output extension '.jpg' \(supported: .png, .svg\)"):
        render.save(target, render.to_svg(np.ones((2, 3))))
    with pytest.raises(DataError, match=r"'\(none\)'"):
        render.save(tmp_path / "out", "<svg/>")
    assert list(tmp_path.iterdir()) == []


def test_failed_png_leaves_the_old_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(Exception):  # noqa: B017 (cairosvg's own parse error)
        render.save(target, "<svg this is not xml")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.png"]
