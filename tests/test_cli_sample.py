"""`sketchkit generate | reconstruct | interpolate | complete` end to end on tiny real models."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx_fixtures import random_sketch

from sketchkit.cli import main
from sketchkit.datasets import Dataset, save_npz

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run(capsys, monkeypatch, tmp_path):
    """Run the CLI in-process in a fresh cwd and cache; -> (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKETCHKIT_CACHE", str(tmp_path / "cache"))

    def _run(*argv: object) -> tuple[int, str, str]:
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return code, out.out, out.err

    return _run


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    split = [random_sketch(rng, int(n), scale=20.0) for n in rng.integers(8, 30, 6)]
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    save_npz(path, Dataset(split, split, split))
    return path


@pytest.fixture(scope="module")
def ndjson(tmp_path_factory) -> Path:
    """QuickDraw simplified format: absolute coordinates in 0..255."""
    rng = np.random.default_rng(1)
    lines = []
    for k in range(4):
        strokes = []
        for _ in range(3):
            xy = np.clip(np.cumsum(rng.integers(-12, 13, (6, 2)), axis=0) + 128, 0, 255)
            strokes.append([xy[:, 0].tolist(), xy[:, 1].tolist()])
        lines.append(json.dumps({"word": "thing", "key_id": str(k), "drawing": strokes}))
    path = tmp_path_factory.mktemp("data") / "thing.ndjson"
    path.write_text("\n".join(lines) + "\n")
    return path


def one_error_line(code: int, err: str) -> str:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# generate


def test_generate_writes_a_png_grid_named_after_the_model(run, tiny_vae, tmp_path):
    code, out, err = run("generate", tiny_vae, "-n", 6, "--tau", 0.5, "--seed", 1)
    assert code == 0, err
    png = tmp_path / "tiny-vae.png"
    assert png.read_bytes().startswith(PNG)
    assert "6 sketches in" in err and "tiny-vae.png" in err


def test_generate_svg_and_no_grid(run, tiny_uncond, tmp_path):
    code, _, err = run("generate", tiny_uncond, "-n", 3, "--seed", 1, "-o", "out.svg", "--no-grid")
    assert code == 0, err
    files = sorted(p.name for p in tmp_path.glob("out-*.svg"))
    assert files == ["out-0.svg", "out-1.svg", "out-2.svg"]
    assert (tmp_path / "out-0.svg").read_text().startswith("<svg")
    code, _, err = run("generate", tiny_uncond, "-n", 4, "--seed", 1, "-o", "grid.svg", "--cols", 2)
    assert code == 0 and (tmp_path / "grid.svg").read_text().count("<path") >= 4


def test_generate_json_is_reproducible_with_a_seed(run, tiny_vae, tmp_path):
    args = ("generate", tiny_vae, "-n", 5, "--tau", 0.7, "--seed", 42, "--json")
    code, out1, _ = run(*args)
    _, out2, _ = run(*args)
    _, out3, _ = run("generate", tiny_vae, "-n", 5, "--tau", 0.7, "--seed", 43, "--json")
    assert code == 0 and out1 == out2 and out1 != out3
    doc = json.loads(out1)
    assert doc["model"] == "tiny-vae" and doc["tau"] == 0.7 and doc["seed"] == 42
    assert len(doc["sketches"]) == 5 and all(len(row) == 3 for s in doc["sketches"] for row in s)
    assert not list(tmp_path.glob("*.png"))  # --json alone writes no picture
    code, _, _ = run("generate", tiny_vae, "-n", 2, "--seed", 1, "-o", "s.json", "--greedy", "--rule", "js")
    doc = json.loads((tmp_path / "s.json").read_text())
    assert code == 0 and doc["tau"] is None and doc["temperature_rule"] == "js"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-n", 0), "n must be >= 1"),
        (("-n", -5), "n must be >= 1"),
        (("--tau", 0), "tau must be in (0, 2]"),
        (("--tau", -1), "tau must be in (0, 2]"),
        (("--tau", 2.5), "tau must be in (0, 2]"),
        (("--rule", "magenta"), "temperature rule"),
        (("-o", "x.gif"), "unknown output format"),
        (("--cols", 0), "--cols"),
        (("--seed", -1), "seed must be"),
        (("--max-len", 0), "max_len must be"),
    ],
)
def test_generate_bad_options_give_one_line(run, tiny_uncond, args, message):
    code, _, err = run("generate", tiny_uncond, *args)
    assert message in one_error_line(code, err)


def test_unknown_model_and_not_a_model(run, tmp_path, tiny_uncond):
    line = one_error_line(*run("generate", "no-such-model-anywhere", "-n", 2)[::2])
    assert "no-such-model-anywhere" in line
    (tmp_path / "empty").mkdir()
    assert "no model.json" in one_error_line(*run("generate", tmp_path / "empty")[::2])
    magenta_like = tmp_path / "owl.gen.json"
    magenta_like.write_text('{"not": "a magenta model"}')
    # a .json file is read as a Magenta model (converted by the loader): this one is not
    assert "not a Magenta model" in one_error_line(*run("generate", magenta_like)[::2])
    bad = tmp_path / "bad"
    shutil.copytree(tiny_uncond, bad)
    (bad / "model.json").write_text('[{"name": "owl", "mode": 2}, [], []]')
    assert "model.json" in one_error_line(*run("generate", bad)[::2])


def test_corrupt_onnx_gives_one_line(run, tiny_vae, tmp_path):
    bad = tmp_path / "corrupt"
    shutil.copytree(tiny_vae, bad)
    (bad / "decoder_step.onnx").write_bytes(b"garbage" * 100)
    assert "not a loadable ONNX graph" in one_error_line(*run("generate", bad, "-n", 2)[::2])


def test_server_option_reaches_the_runtime_seam(run, tiny_uncond):
    code, _, err = run("generate", tiny_uncond, "-n", 2, "--server", "127.0.0.1:1")
    assert code == 1 and err.startswith("error: ")


def test_sampling_commands_import_no_torch(tiny_uncond, tmp_path):
    code = (
        "import sys; from sketchkit.cli import main; "
        f"main(['generate', {str(tiny_uncond)!r}, '-n', '3', '--seed', '0', '-o', {str(tmp_path / 'x.png')!r}]); "
        "print(sorted(m for m in ('torch', 'sketchkit.zoo.model', 'sketchkit.export', 'tritonclient') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "x.png").read_bytes().startswith(PNG)


# ---------------------------------------------------------------------------------------------
# reconstruct, interpolate, complete


def test_reconstruct_rows_of_input_and_reconstructions(run, tiny_vae, npz, tmp_path):
    code, _, err = run("reconstruct", tiny_vae, "--data", npz, "--index", 0, "--index", 3, "-n", 2, "--seed", 0, "-o", "r.svg")
    assert code == 0, err
    svg = (tmp_path / "r.svg").read_text()
    assert svg.count("input 0") == 1 and svg.count("input 3") == 1 and svg.count("tau 0.3") == 4
    assert "6 sketches" in err  # 2 inputs + 2 x 2 reconstructions


def test_reconstruct_errors(run, tiny_vae, tiny_uncond, npz):
    assert "decoder-only" in one_error_line(*run("reconstruct", tiny_uncond, "--data", npz)[::2])
    assert "out of range" in one_error_line(*run("reconstruct", tiny_vae, "--data", npz, "--index", 99)[::2])
    assert "--data" in one_error_line(*run("reconstruct", tiny_vae)[::2])
    assert "unknown split" in one_error_line(*run("reconstruct", tiny_vae, "--data", npz, "--split", "dev")[::2])


def test_interpolate_two_four_and_random(run, tiny_vae, npz, tmp_path):
    code, out, err = run("interpolate", tiny_vae, "--data", npz, "--index", 1, "--index", 2, "--steps", 4,
                         "--method", "lerp", "--json")
    assert code == 0, err
    assert len(json.loads(out)["sketches"]) == 4
    code, out, err = run("interpolate", tiny_vae, "--data", npz, "--index", 0, "--index", 1, "--index", 2, "--index", 3,
                         "--steps", 3, "--json", "--seed", 0)
    assert code == 0 and len(json.loads(out)["sketches"]) == 9
    code, out, err = run("interpolate", tiny_vae, "--corners", 4, "--steps", 2, "--json", "--seed", 0)
    assert code == 0 and len(json.loads(out)["sketches"]) == 4
    code, _, err = run("interpolate", tiny_vae, "--seed", 0)
    assert code == 0 and (tmp_path / "tiny-vae-interpolate.png").read_bytes().startswith(PNG)
    assert "2 or 4" in one_error_line(*run("interpolate", tiny_vae, "--data", npz, "--index", 1, "--index", 2, "--index", 3)[::2])
    assert "slerp" in one_error_line(*run("interpolate", tiny_vae, "--method", "cubic")[::2])


def test_complete_npz_and_ndjson_with_rescale(run, tiny_uncond, tiny_vae, npz, ndjson, tmp_path):
    code, out, err = run("complete", tiny_uncond, "--data", npz, "--index", 2, "-k", 3, "--seed", 0, "--json")
    assert code == 0, err
    sketches = json.loads(out)["sketches"]
    assert len(sketches) == 4  # the partial sketch, then 3 completions
    partial = sketches[0]
    assert all(s[: len(partial)] == partial for s in sketches[1:])
    code, out, err = run("complete", tiny_vae, "--data", ndjson, "--index", 1, "--strokes", 1, "-k", 2, "--seed", 0, "-o", "c.png")
    assert code == 0, err
    assert "rescaled input sketches by x" in err and (tmp_path / "c.png").read_bytes().startswith(PNG)
    code, _, err = run("complete", tiny_vae, "--data", ndjson, "--rescale", "none", "-k", 1, "-o", "d.svg")
    assert code == 0 and "rescaled" not in err
    assert "--rescale" in one_error_line(*run("complete", tiny_vae, "--data", ndjson, "--rescale", "big")[::2])
    assert "--rescale" in one_error_line(*run("complete", tiny_vae, "--data", ndjson, "--rescale", "inf")[::2])
    assert "strokes" in one_error_line(*run("complete", tiny_vae, "--data", ndjson, "--rescale", "none", "--strokes", 3)[::2])
    assert "k must be" in one_error_line(*run("complete", tiny_vae, "--data", ndjson, "-k", 0)[::2])


def test_reconstruct_real_sheep(run, tiny_vae, sheep_npz, tmp_path):
    """Real data path: the sheep .npz from ../shared (skips when absent)."""
    code, _, err = run("reconstruct", tiny_vae, "--data", sheep_npz, "--index", 5, "-n", 1, "--max-len", 10, "-o", "s.png")
    # the tiny model's max_seq_len (40) is shorter than many sheep: either it fits, or a one-line error
    if code:
        assert "max_seq_len" in one_error_line(code, err)
    else:
        assert (tmp_path / "s.png").read_bytes().startswith(PNG)


def test_temp_suggests_tau(run):
    """Issue 26: `--temp` suggested `--help` (click's spelling match); our name for it now, where the command has one."""
    for typed in ("--temp", "--temperature"):
        code, _, err = run("generate", "sheep", typed, "0.3", "-n", 1)
        assert code == 2 and f"No such option '{typed}'. Did you mean '--tau'?" in err
    code, _, err = run("data", "info", "x.npz", "--temp", "1")  # no --tau there: click's own suggestion stays
    assert code == 2 and "--tau" not in err


# ---------------------------------------------------------------------------------------------
# pictures that explain themselves (issue 26 item 8), default names (item 7), SVG input (item 11)

SVG_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "svg"


def _svg_texts(path: Path) -> list[str]:
    import xml.etree.ElementTree as ET

    return [t.text or "" for t in ET.parse(path).getroot().iter("{http://www.w3.org/2000/svg}text")]


def _pixels(png: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def _blue(rgb: np.ndarray) -> np.ndarray:
    """Pixels of the model's colour (#1c6fd1) and its anti-aliased edges: clearly blue."""
    return (rgb[..., 2] - rgb[..., 0] > 80) & (rgb[..., 2] > 150)


def _dark(rgb: np.ndarray) -> np.ndarray:
    return rgb.max(axis=-1) < 60


def test_interpolate_shows_its_inputs_at_the_ends_and_t_under_each_frame(run, tiny_vae, npz, tmp_path):
    code, _, err = run("interpolate", tiny_vae, "--data", npz, "--index", 1, "--index", 4, "--steps", 3,
                       "--seed", 0, "-o", "i.svg")
    assert code == 0, err
    assert _svg_texts(tmp_path / "i.svg") == ["input 1", "t 0", "t 0.5", "t 1", "input 4"]
    assert "3 sketches" in err  # the frames; the inputs are shown, not sampled
    code, _, err = run("interpolate", tiny_vae, "--data", npz, *[a for i in (0, 1, 2, 3) for a in ("--index", i)],
                       "--steps", 2, "--seed", 0, "-o", "g.svg")
    assert code == 0, err
    texts = _svg_texts(tmp_path / "g.svg")  # inputs above and below their corners, x and y under the frames
    assert texts == ["input 0", "input 1", "x 0, y 0", "x 1, y 0", "x 0, y 1", "x 1, y 1", "input 2", "input 3"]
    code, _, err = run("interpolate", tiny_vae, "--seed", 0, "--steps", 4, "-o", "z.svg")  # random z: no inputs
    assert code == 0 and _svg_texts(tmp_path / "z.svg") == ["t 0", "t 0.33", "t 0.67", "t 1"]


def test_complete_draws_given_strokes_black_and_the_models_blue(run, tiny_uncond, npz, tmp_path):
    code, out, err = run("complete", tiny_uncond, "--data", npz, "--index", 2, "-k", 3, "--seed", 0,
                         "--cols", 4, "-o", "c.png")
    assert code == 0, err
    rgb = _pixels(tmp_path / "c.png")
    cell = rgb.shape[1] // 4
    given, endings = rgb[:, :cell], rgb[:, cell:]
    assert _dark(given).sum() > 50 and _blue(given).sum() == 0  # the given sketch alone: black only
    assert _dark(endings).sum() > 50 and _blue(endings).sum() > 50  # endings: the given strokes and the model's
    svg = run("complete", tiny_uncond, "--data", npz, "--index", 2, "-k", 1, "--seed", 0, "-o", "c.svg")
    assert svg[0] == 0 and 'stroke="#1c6fd1"' in (tmp_path / "c.svg").read_text()
    assert _svg_texts(tmp_path / "c.svg") == ["given", "tau 0.8"]


def test_default_output_names_are_flat_files_here(run, tiny_vae, tmp_path):
    from sketchkit.cli.sample import default_stem

    assert default_stem("owl", "magenta/owl.gen") == "owl"
    assert default_stem("magenta/owl.gen", "magenta/owl.gen") == "owl.gen"
    assert default_stem("../../etc/x y", "m") == "x-y"
    code, _, err = run("generate", tiny_vae, "-n", 2, "--seed", 1)  # NAME is a directory: the model's name
    assert code == 0, err
    assert (tmp_path / "tiny-vae.png").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.is_dir() and p.name != "cache"] == []  # no folder for the picture


def _svg_drawing(path: Path) -> Path:
    """A drawing as another tool writes it: groups, a transform, a curve, a circle."""
    path.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100"><g transform="translate(10 10)">'
        '<path d="M0 40 C 10 0 60 0 70 40" fill="none" stroke="#000"/><circle cx="20" cy="30" r="4" fill="#000"/>'
        '<g transform="scale(0.5)"><rect x="20" y="100" width="100" height="30" fill="none" stroke="#000"/></g>'
        '<polyline points="0,60 20,80 40,60" fill="none" stroke="#000"/></g></svg>'
    )
    return path


def test_sketch_svg_into_reconstruct_interpolate_complete(run, tiny_vae, tmp_path):
    a, b = _svg_drawing(tmp_path / "a.svg"), _svg_drawing(tmp_path / "b.svg")
    code, out, err = run("complete", tiny_vae, "--sketch", a, "--strokes", 2, "-k", 2, "--seed", 0, "--json")
    assert code == 0, err
    sketches = json.loads(out)["sketches"]
    partial = sketches[0]
    assert sum(row[2] for row in partial) == 2 and all(s[: len(partial)] == partial for s in sketches[1:])
    assert "rescaled input sketches by x" in err  # 0..255 units, to the model's scale
    code, _, err = run("reconstruct", tiny_vae, "--sketch", a, "--sketch", b, "-n", 1, "--seed", 0, "-o", "r.svg")
    assert code == 0 and _svg_texts(tmp_path / "r.svg") == ["a.svg", "tau 0.3", "b.svg", "tau 0.3"]
    code, _, err = run("interpolate", tiny_vae, "--sketch", a, "--sketch", b, "--steps", 2, "--seed", 0, "-o", "i.svg")
    assert code == 0 and _svg_texts(tmp_path / "i.svg") == ["a.svg", "t 0", "t 1", "b.svg"]
    # mistakes: one line each
    assert "--sketch" in one_error_line(*run("complete", tiny_vae, "--data", a)[::2])
    assert "not both" in one_error_line(*run("complete", tiny_vae, "--data", a, "--sketch", a)[::2])
    assert "--index" in one_error_line(*run("reconstruct", tiny_vae, "--sketch", a, "--index", 1)[::2])
    assert "one --sketch" in one_error_line(*run("complete", tiny_vae, "--sketch", a, "--sketch", b)[::2])
    assert "2 or 4 --sketch" in one_error_line(*run("interpolate", tiny_vae, "--sketch", a)[::2])
    bomb = tmp_path / "bomb.svg"
    bomb.write_text('<!DOCTYPE svg [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><svg xmlns="http://www.w3.org/2000/svg">&b;</svg>')
    assert "entity" in one_error_line(*run("complete", tiny_vae, "--sketch", bomb)[::2])


@pytest.mark.skipif(not SVG_DIR.is_dir(), reason=f"{SVG_DIR} is absent (the shared real SVG drawings)")
def test_the_shipped_sheep_completes_a_drawing_made_in_inkscape(run, tmp_path):
    """An Inkscape sheep from ../shared/data/svg, its first 3 strokes, completed by the shipped
    sheep: the picture has the given strokes in black and the model's in blue."""
    drawing = SVG_DIR / "openclipart" / "pecora_architetto_france_01.svg"
    code, out, err = run("complete", "sheep", "--sketch", drawing, "--strokes", 3, "-k", 3, "--tau", 0.4,
                         "--seed", 3, "--cols", 4, "-o", "sheep.png")
    assert code == 0, err
    rgb = _pixels(tmp_path / "sheep.png")
    endings = rgb[:, rgb.shape[1] // 4 :]
    assert _dark(endings).sum() > 100 and _blue(endings).sum() > 100
