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
