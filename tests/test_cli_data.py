"""`sketchkit data convert | info` and `sketchkit render` through the real entry point
(`sketchkit.cli:main`): results on real data, and one-line errors with exit code 1 for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sketchkit import datasets, strokes
from sketchkit.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def sketchkit(capsys: pytest.CaptureFixture[str]):
    """Run `sketchkit ARGS` in this process through `main`: (exit code, stdout, stderr)."""

    def run(*args: str | Path) -> tuple[int, str, str]:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def console_script(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `sketchkit` command (the `sketchkit.cli:main` console script) in a subprocess."""
    exe = Path(sys.executable).with_name("sketchkit")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sketchkit"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


def assert_one_line_error(code: int, err: str, match: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("converting")]  # progress
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert match in lines[0], err


def cells(svg_path: Path) -> list[str]:
    root = ET.parse(svg_path).getroot()
    return [t.text or "" for t in root.iter(f"{SVG}text")]


# ---------------------------------------------------------------------------------------------
# data convert / info


def test_convert_simplified_ndjson(sketchkit, tmp_path: Path, sheep) -> None:
    out = tmp_path / "sheep.npz"
    code, _, err = sketchkit("data", "convert", FIXTURES / "sheep.ndjson", out, "--epsilon", "0")
    assert code == 0, err
    assert "converting" in err and "wrote" in err and "train/valid/test 7/0/1" in err
    ds = datasets.load_npz(out)
    assert ds.classes == []
    originals = [
        sheep.test[i] for i in (int(k.rsplit("-", 1)[1]) for k in _key_ids(FIXTURES / "sheep.ndjson"))
    ]
    for s in ds.train + ds.test:  # the same sketches, shuffled
        assert any(len(s) == len(o) and (s == o).all() for o in originals)


def _key_ids(path: Path) -> list[str]:
    return [json.loads(line)["key_id"] for line in path.read_text().splitlines()]


def test_convert_several_files_is_multi_class_and_info_shows_it(sketchkit, tmp_path: Path) -> None:
    out = tmp_path / "two.npz"
    code, _, err = sketchkit(
        "data", "convert", FIXTURES / "sheep.ndjson", FIXTURES / "kanji.ndjson", out, "--seed", "7"
    )
    assert code == 0, err
    assert "classes: sheep, kanji" in err
    code, stdout, err = sketchkit("data", "info", out, "--json")
    assert code == 0, err
    info = json.loads(stdout)
    assert info["classes"] == {"sheep": 8, "kanji": 6}
    assert sum(s["count"] for s in info["splits"].values()) == 14
    ds = datasets.load_npz(out)
    assert info["scale_factor"] == pytest.approx(strokes.scale_factor(ds.train))


def test_convert_raw_ndjson(sketchkit, tmp_path: Path) -> None:
    out = tmp_path / "raw.npz"
    code, _, err = sketchkit("data", "convert", FIXTURES / "sheep_raw.ndjson", out)
    assert code == 0, err
    ds = datasets.load_npz(out)
    sketches = ds.train + ds.valid + ds.test
    assert len(sketches) == 4
    for s in sketches:  # Google's 0..255 box
        lo_x, hi_x, lo_y, hi_y = strokes.bounds(s)
        assert max(hi_x - lo_x, hi_y - lo_y) <= 255


def test_convert_a_drawing_of_subnormal_size(sketchkit, tmp_path: Path) -> None:
    """A raw drawing (or an SVG) whose extent is a subnormal float converts as the point it is
    (fails on 2d1e00f: 255 / extent overflowed, and the resampling raised a traceback)."""
    raw = tmp_path / "tiny.ndjson"
    raw.write_text(json.dumps({"word": "x", "key_id": "1", "recognized": True, "countrycode": "US",
                               "timestamp": "2017-01-01 00:00:00.0",
                               "drawing": [[[0, 1e-320, 2e-320], [0, 1e-320, 0], [0, 1, 2]]]}) + "\n")  # fmt: skip
    drawing = tmp_path / "tiny.svg"
    drawing.write_text('<svg xmlns="http://www.w3.org/2000/svg"><path d="M 0 0 Q 1e-320 1e-320 1e-320 0 z"/></svg>')
    for source in (raw, drawing):
        code, _, err = sketchkit("data", "convert", source, tmp_path / f"{source.stem}{source.suffix}.npz")
        assert code == 0, err
        (sketch,) = datasets.load_npz(tmp_path / f"{source.stem}{source.suffix}.npz").train
        assert np.all(sketch[:, :2] == 0)


def test_info_of_sheep_npz(sketchkit, sheep_npz: Path, sheep) -> None:
    code, stdout, err = sketchkit("data", "info", sheep_npz, "--json")
    assert code == 0, err
    info = json.loads(stdout)
    assert {k: v["count"] for k, v in info["splits"].items()} == {"train": 7400, "valid": 300, "test": 300}
    assert info["splits"]["test"]["len_max"] == 250
    assert info["scale_factor"] == pytest.approx(strokes.scale_factor(sheep.train))
    code, stdout, _ = sketchkit("data", "info", sheep_npz)
    assert code == 0
    assert "train" in stdout and "7400" in stdout and f"{strokes.scale_factor(sheep.train):.4f}" in stdout


def test_info_of_ndjson(sketchkit) -> None:
    code, stdout, err = sketchkit("data", "info", FIXTURES / "sheep_raw.ndjson")
    assert code == 0, err
    assert "raw" in stdout and "sheep (4)" in stdout and "scale factor (all)" in stdout


# ---------------------------------------------------------------------------------------------
# render


def test_render_sheep_grid_png(tmp_path: Path, sheep_npz: Path) -> None:
    """The issue's acceptance command, run as a user would."""
    result = console_script(
        "render", sheep_npz, "--split", "test", "-n", "16", "-o", "sheep.png", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    image = Image.open(tmp_path / "sheep.png").convert("L")
    assert image.size == (512, 512)
    mask = np.asarray(image) < 200
    for r in range(4):
        for c in range(4):
            assert mask[r * 128 : (r + 1) * 128, c * 128 : (c + 1) * 128].mean() > 0.01


def test_render_picks_by_index(sketchkit, tmp_path: Path, sheep_npz: Path) -> None:
    out = tmp_path / "pick.svg"
    code, _, err = sketchkit(
        "render", sheep_npz, "--index", "3", "--indices", "0,5,9", "--captions", "-o", out
    )
    assert code == 0, err
    assert cells(out) == ["3", "0", "5", "9"]
    code, _, err = sketchkit("render", sheep_npz, "--split", "train", "-n", "6", "--cols", "3", "-o", out)
    assert code == 0, err
    root = ET.parse(out).getroot()
    assert (root.get("width"), root.get("height")) == ("384", "256")


def test_render_ndjson_and_multi_class_captions(sketchkit, tmp_path: Path) -> None:
    out = tmp_path / "fixture.png"
    code, _, err = sketchkit(
        "render", FIXTURES / "kanji.ndjson", "--color-by-stroke", "--size", "64", "-o", out
    )
    assert code == 0, err
    assert Image.open(out).size == (192, 128)  # 6 sketches: 3 x 2 cells of 64 px
    npz = tmp_path / "two.npz"
    assert sketchkit("data", "convert", FIXTURES / "sheep.ndjson", FIXTURES / "kanji.ndjson", npz)[0] == 0
    svg = tmp_path / "two.svg"
    code, _, err = sketchkit("render", npz, "--split", "train", "-n", "20", "--captions", "-o", svg)
    assert code == 0, err
    names = [c.split(" ", 1)[1] for c in cells(svg)]
    assert sorted(set(names)) == ["kanji", "sheep"] and len(names) == 12


# ---------------------------------------------------------------------------------------------
# errors: one line, exit code 1, nothing written


def test_errors_through_the_console_script(tmp_path: Path, sheep_npz: Path) -> None:
    bad = tmp_path / "bad.ndjson"
    bad.write_text(FIXTURES.joinpath("sheep.ndjson").read_text().splitlines()[0] + "\n{oops\n")
    half = tmp_path / "half.npz"
    half.write_bytes(sheep_npz.read_bytes()[:5000])
    cases = [
        (("render", tmp_path / "missing.npz", "-o", tmp_path / "a.png"), "missing.npz: no such file"),
        (
            ("render", sheep_npz, "-o", tmp_path / "a.jpg"),
            "unknown output extension '.jpg' (supported: .png, .svg)",
        ),
        (("data", "convert", bad, tmp_path / "a.npz"), "bad.ndjson:2: not valid JSON"),
        (("data", "info", half), "half.npz: not a readable .npz file"),
    ]
    for args, match in cases:
        result = console_script(*args)
        assert_one_line_error(result.returncode, result.stderr, match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ndjson", "half.npz"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("render", "{sheep}", "--index", "300", "-o", "{tmp}/a.png"), "index 300 is out of range"),
        (
            ("render", "{sheep}", "--indices", "1,x", "-o", "{tmp}/a.png"),
            "--indices: expected comma-separated",
        ),
        (("render", "{sheep}", "--indices", "-1", "-o", "{tmp}/a.png"), "--indices: indices start at 0"),
        (("render", "{tmp}/keys.npz", "-o", "{tmp}/a.png"), "missing key(s) valid, test"),
        (("render", "{tmp}/sketch.txt", "-o", "{tmp}/a.png"), "unknown dataset extension '.txt'"),
        (
            ("render", "{tmp}/nan.npz", "-o", "{tmp}/a.svg"),
            "nan.npz: train[0]: contains NaN or infinite values",
        ),
        (("data", "convert", "{fixtures}/sheep.ndjson", "{tmp}/a.zip"), "the output must be a .npz file"),
        (("data", "convert", "{tmp}/none.ndjson", "{tmp}/a.npz"), "none.ndjson: no such file"),
        (("data", "info", "{tmp}/sketch.txt"), "unknown dataset extension '.txt'"),
        (("data", "info", "{tmp}/empty.ndjson"), "empty.ndjson: no drawings"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(sketchkit, tmp_path: Path, sheep_npz: Path, args, match) -> None:
    np.savez(tmp_path / "keys.npz", train=np.zeros((1, 2, 3)))
    nan = np.empty(1, dtype=object)
    nan[0] = np.array([[0.0, np.nan, 1]])
    np.savez(tmp_path / "nan.npz", train=nan, valid=nan, test=nan)
    (tmp_path / "sketch.txt").write_text("hi")
    (tmp_path / "empty.ndjson").write_text("")
    before = sorted(p.name for p in tmp_path.iterdir())
    fill = {"sheep": sheep_npz, "tmp": tmp_path, "fixtures": FIXTURES}
    code, _, err = sketchkit(*(a.format(**fill) for a in args))
    assert_one_line_error(code, err, match)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp files


def test_failed_convert_keeps_the_old_output(sketchkit, tmp_path: Path) -> None:
    out = tmp_path / "out.npz"
    out.write_bytes(b"previous")
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"word": "x", "drawing": [[[0, 1, 2], [0, 1]]]}\n')
    code, _, err = sketchkit("data", "convert", FIXTURES / "sheep.ndjson", bad, out)
    assert_one_line_error(code, err, "bad.ndjson:1: stroke 0 has 3 xs but 2 ys")
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ndjson", "out.npz"]


# ---------------------------------------------------------------------------------------------
# data convert *.svg (issue 26 item 11)

SVG_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "svg"


@pytest.mark.skipif(not SVG_DATA.is_dir(), reason=f"{SVG_DATA} is absent (the shared real SVG drawings)")
def test_convert_real_svg_drawings(sketchkit, tmp_path: Path) -> None:
    """18 drawings from Inkscape, Sodipodi, Illustrator and lucide into one .npz: every one kept, in
    0..255 units, and `render` draws them back."""
    drawings = sorted(SVG_DATA.glob("*/*.svg"))
    out = tmp_path / "mine.npz"
    code, _, err = sketchkit("data", "convert", *drawings, out)
    assert code == 0, err
    assert f"{len(drawings)} SVG drawings" in err
    ds = datasets.load_npz(out)
    converted = ds.train + ds.valid + ds.test
    assert len(converted) == len(drawings) and len(ds.train) >= 0.8 * len(drawings)
    for s in converted:
        xy = np.concatenate(strokes.to_polylines(s))
        assert s.dtype == np.int16 and 240 <= (xy.max(axis=0) - xy.min(axis=0)).max() <= 255
    code, _, err = sketchkit("render", out, "--split", "train", "-n", 4, "-o", tmp_path / "mine.png")
    assert code == 0 and Image.open(tmp_path / "mine.png").size == (256, 256)


def test_convert_svg_mistakes_are_one_line(sketchkit, tmp_path: Path) -> None:
    drawing = tmp_path / "d.svg"
    drawing.write_text('<svg xmlns="http://www.w3.org/2000/svg"><path d="M0 0 L50 50" stroke="black"/></svg>')
    quickdraw = tmp_path / "q.ndjson"
    quickdraw.write_text(json.dumps({"word": "x", "drawing": [[[0, 9], [0, 9]]]}) + "\n")
    assert_one_line_error(*sketchkit("data", "convert", drawing, quickdraw, tmp_path / "o.npz")[::2], "not both")
    laughs = tmp_path / "l.svg"
    laughs.write_text('<!DOCTYPE svg [<!ENTITY a "aa"><!ENTITY b "&a;&a;">]><svg xmlns="http://www.w3.org/2000/svg">&b;</svg>')
    assert_one_line_error(*sketchkit("data", "convert", drawing, laughs, tmp_path / "o.npz")[::2], "entity")
    assert not (tmp_path / "o.npz").exists()
