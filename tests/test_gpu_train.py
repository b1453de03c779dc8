"""benchmarks/gpu_train.sh, the one-shot GPU run of issue 21: its candidates are real recipes of the
intended shapes, and (slow) its TINY dry run takes the whole path on the CPU within its budget."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sketchkit.zoo.config import Recipe

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_train.sh"
DATA = ROOT.parent / "shared" / "data" / "sketchrnn" / "aaron_sheep.npz"


def candidates() -> list[str]:
    return re.search(r'CANDIDATES:-([a-z0-9 ]+)\}', SCRIPT.read_text()).group(1).split()


def test_candidates_are_recipes_a_few_minutes_can_train() -> None:
    names = candidates()
    assert "gpu" in names and len(names) >= 3
    for name in names:
        path = ROOT / "zoo" / "recipes" / ("aaron_sheep_gpu.toml" if name == "gpu" else f"aaron_sheep_gpu_{name}.toml")
        hp = Recipe.from_toml(path)
        assert hp.dims.vae and hp.dims.cell in ("layer_norm", "hyper"), name
        assert hp.learning_rate_decay < 1 and hp.kl_decay == 0.999 and hp.dataset[0].endswith("aaron_sheep.npz")


def test_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.slow
def test_tiny_dry_run(tmp_path: Path) -> None:
    """The whole path on the CPU (about 100 s on 2 shared cores): probes, continuation, test split,
    at most 8 files under OUT, and resume parts that join into a valid checkpoint."""
    if not DATA.exists():
        pytest.skip(f"{DATA} is absent (the dry run trains on the real sheep)")
    data = tmp_path / "aaron_sheep.npz"
    data.write_bytes(DATA.read_bytes())
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), TINY="1", PYTHON=sys.executable, SKETCHKIT_GPU_DATA=str(data), TMPDIR=str(tmp_path))
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:]
    done = re.search(r"done in (\d+)s \(budget (\d+)s\)", proc.stdout)
    assert done and int(done.group(1)) <= int(done.group(2)), proc.stdout[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"log.txt", "summary.json", "table.md", "best.safetensors", "runs.tar.gz"} <= set(files)
    summary = json.loads((out / "summary.json").read_text())
    winner = summary["candidates"][summary["winner"]]
    assert winner["test"]["n"] > 0 and winner["steps"] > winner["probe_valid"]["step"]  # it went on
    assert "joined parts: step" in proc.stdout
