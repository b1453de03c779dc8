"""sketchkit.zoo.train: a tiny model overfits 8 real sheep, a killed run resumes to the very same
parameters, the run directory holds what it promises, and the CLI drives it all."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tiny_recipe import tiny  # noqa: E402

from sketchkit.datasets import Dataset, save_npz  # noqa: E402
from sketchkit.zoo import checkpoint  # noqa: E402
from sketchkit.zoo.config import Recipe  # noqa: E402
from sketchkit.zoo.train import learning_rate, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def eight_sheep(sheep, tmp_path: Path) -> Path:
    """8 real sheep of at most 40 points, as train, valid and test."""
    few = [s for s in sheep.train if len(s) <= 40][:8]
    path = tmp_path / "eight_sheep.npz"
    save_npz(path, Dataset(few, few, few))
    return path


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tiny_model_overfits_eight_sheep(eight_sheep: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    run = tmp_path / "run"
    best = train(tiny(eight_sheep), run, progress=False)
    recs = _records(run)
    first = next(r for r in recs if r["split"] == "train")
    assert best["step"] == 300
    assert best["lr"] < first["ls"] + first["lp"] - 1.0, (first, best)  # L_R: ~2.0 -> well below 1.0
    # the run directory: best + resume state, recipe, metrics, loss curve, sample pictures
    for name in ("best.safetensors", "last.safetensors", "recipe.toml", "loss.png"):
        assert (run / name).is_file(), name
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((run / "samples").glob("step_*.png"))) == 3
    _, hp, meta = checkpoint.load(run / "best.safetensors")
    assert meta["step"] == 300 and meta["max_seq_len"] == 40 and meta["scale_factor"] > 0
    assert len(meta["dataset_sha256"]) == 64 and meta["metrics"]["valid"]["loss"] == best["loss"]
    assert Recipe.from_toml(run / "recipe.toml") == hp


def _params(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.read_tensors(path)[0]


def test_resume_is_exact(eight_sheep: Path, tmp_path: Path) -> None:
    """Stopping at step 6 and resuming to 12 equals running to 12 (dropout on: RNG restored)."""
    kw = dict(cell="layer_norm", recurrent_keep_prob=0.9, eval_every=6, random_scale=0.15, augment_prob=0.2)
    train(tiny(eight_sheep, num_steps=12, **kw), tmp_path / "a", progress=False)
    train(tiny(eight_sheep, num_steps=6, **kw), tmp_path / "b", progress=False)
    train(tiny(eight_sheep, num_steps=12, **kw), tmp_path / "b", progress=False)
    a, b = _params(tmp_path / "a" / "last.safetensors"), _params(tmp_path / "b" / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    valid = [[r for r in _records(tmp_path / x) if r["split"] == "valid"] for x in "ab"]
    assert [(r["step"], r["loss"]) for r in valid[0]] == [(r["step"], r["loss"]) for r in valid[1]]


def test_resume_between_validations_on_another_machine(eight_sheep: Path, tmp_path: Path) -> None:
    """A run stopped at step 7 (not a validation step: the extra validation and samples must not
    disturb anything), carried to another directory with its data at another path, and resumed to
    14 equals a run straight to 14: weights, Adam's moments and step, RNG states, and the logged
    learning-rate and KL schedules (`last.safetensors` holds all of them)."""
    kw = dict(cell="layer_norm", recurrent_keep_prob=0.9, eval_every=4, log_every=1, random_scale=0.15, augment_prob=0.2)
    train(tiny(eight_sheep, num_steps=14, **kw), tmp_path / "straight", progress=False)
    train(tiny(eight_sheep, num_steps=7, **kw), tmp_path / "here", progress=False)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "data.npz").write_bytes(eight_sheep.read_bytes())
    os.rename(tmp_path / "here", moved / "run")
    train(tiny(moved / "data.npz", num_steps=14, **kw), moved / "run", progress=False)
    a, b = _params(tmp_path / "straight" / "last.safetensors"), _params(moved / "run" / "last.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("train.adam.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    train_recs = [[r for r in _records(d) if r["split"] == "train"] for d in (tmp_path / "straight", moved / "run")]
    schedule = [[(r["step"], r["learning_rate"], r["eta"], r["loss"]) for r in recs] for recs in train_recs]
    assert schedule[0] == schedule[1] and len(schedule[0]) == 14


def test_resume_refuses_other_data(eight_sheep: Path, sheep, tmp_path: Path) -> None:
    from sketchkit.errors import SketchkitError

    train(tiny(eight_sheep, num_steps=2, eval_every=2), tmp_path / "r", progress=False)
    other = [s for s in sheep.valid if len(s) <= 40][:8]
    save_npz(tmp_path / "other.npz", Dataset(other, other, other))
    with pytest.raises(SketchkitError, match="other data"):
        train(tiny(tmp_path / "other.npz", num_steps=4, eval_every=2), tmp_path / "r", progress=False)


def test_batch_is_a_function_of_seed_and_step(sheep) -> None:
    """The batch of a step is the same however it is asked for: again (a resumed run) or as shards
    (the ranks of a torchrun job), augmentation and VAE noise included; another step differs."""
    from sketchkit.zoo.train import make_batch

    hp = Recipe.of(batch_size=8, max_seq_len=250, random_scale=0.15, augment_prob=0.3, z_size=16)
    whole = make_batch(sheep.train, hp, 5)
    again = make_batch(sheep.train, hp, 5)
    shards = [make_batch(sheep.train, hp, 5, range(r * 2, r * 2 + 2)) for r in range(4)]
    for k in range(3):
        assert np.array_equal(whole[k], again[k])
        assert np.array_equal(whole[k], np.concatenate([s[k] for s in shards]))
    assert whole[2].shape == (8, 16) and abs(whole[2].std() - 1.0) < 0.3  # eps ~ N(0, I)
    other = make_batch(sheep.train, hp, 6)
    assert not np.array_equal(whole[1], other[1]) and not np.array_equal(whole[2], other[2])
    plain = make_batch(sheep.train, dataclasses.replace(hp, random_scale=0.0, augment_prob=0.0), 5)
    assert np.array_equal(plain[2], whole[2]) and not np.array_equal(plain[0], whole[0])  # same sketches, scaled


def test_resume_after_sigkill(eight_sheep: Path, tmp_path: Path) -> None:
    """A real `sketchkit train` killed with SIGKILL resumes to the parameters of an unkilled run."""
    hp = tiny(eight_sheep, num_steps=100_000, eval_every=5)
    recipe = tmp_path / "tiny.toml"
    hp.save_toml(recipe)
    run = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sketchkit",
            "train",
            str(recipe),
            "--out",
            str(run),
            "--quiet",
            "--threads",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 60
        while not (run / "last.safetensors").exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.time() < deadline, "no checkpoint within 60 s"
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    stopped = int(checkpoint.read_tensors(run / "last.safetensors")[1]["step"])
    target = stopped + 5
    torch.set_num_threads(1)
    train(dataclasses.replace(hp, num_steps=target), run, progress=False)
    train(dataclasses.replace(hp, num_steps=target), tmp_path / "straight", progress=False)
    a, b = _params(run / "last.safetensors"), _params(tmp_path / "straight" / "last.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_other_hparams(eight_sheep: Path, tmp_path: Path) -> None:
    from sketchkit.errors import SketchkitError

    train(tiny(eight_sheep, num_steps=2, eval_every=2), tmp_path / "r", progress=False)
    with pytest.raises(SketchkitError, match="other hyperparameters"):
        train(tiny(eight_sheep, num_steps=4, eval_every=2, dec_size=32), tmp_path / "r", progress=False)


def test_learning_rate_schedules() -> None:
    hp = Recipe(learning_rate=1e-3, learning_rate_decay=0.9999, min_learning_rate=1e-5)
    assert learning_rate(hp, 0) == pytest.approx(1e-3)
    assert learning_rate(hp, 10_000) == pytest.approx((1e-3 - 1e-5) * 0.9999**10_000 + 1e-5)
    assert learning_rate(hp, 10**7) == pytest.approx(1e-5)
    assert learning_rate(Recipe(learning_rate=1e-4), 10**6) == 1e-4  # the paper: constant


def test_cli_train_and_evaluate(eight_sheep: Path, tmp_path: Path) -> None:
    from sketchkit.cli import main

    recipe = tmp_path / "r.toml"
    tiny(eight_sheep, num_steps=4, eval_every=2).save_toml(recipe)
    run = tmp_path / "cli"
    main(["train", str(recipe), "--out", str(run), "--quiet", "--set", "dec_size=24", "--set", "cell=hyper"])
    _, hp, _ = checkpoint.load(run / "best.safetensors")
    assert hp.dims.dec_size == 24 and hp.dims.cell == "hyper"
    out = subprocess.run(
        [sys.executable, "-m", "sketchkit", "evaluate", str(run / "best.safetensors"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    m = json.loads(out.stdout)
    assert m["n"] == 8 and np.isfinite(m["lr"]) and m["kl_floored"] >= 0.2
    bad = subprocess.run(
        [sys.executable, "-m", "sketchkit", "train", "--set", "cell=gru"], capture_output=True, text=True
    )
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "unknown cell 'gru'" in bad.stderr


def test_zoo_and_cli_import_no_torch() -> None:
    code = "import sys, sketchkit.zoo, sketchkit.zoo.config, sketchkit.cli.train; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_multi_class_dataset(sheep, eight_sheep: Path, tmp_path: Path) -> None:
    from sketchkit.io import sha256_file
    from sketchkit.zoo.data import load_data

    other = [s for s in sheep.valid if len(s) <= 40][:5]
    second = tmp_path / "more_sheep.npz"
    save_npz(second, Dataset(other, other, other))
    hp = tiny(eight_sheep, num_steps=2, eval_every=2)
    hp = dataclasses.replace(hp, dataset=[str(eight_sheep), str(second)])
    data = load_data(hp)
    assert data.classes == ["eight_sheep", "more_sheep"] and len(data.train) == 13
    assert data.dataset_sha256 not in (sha256_file(eight_sheep), sha256_file(second))
    best = train(hp, tmp_path / "multi", progress=False)
    assert np.isfinite(best["loss"])
    _, _, meta = checkpoint.load(tmp_path / "multi" / "best.safetensors")
    assert meta["classes"] == ["eight_sheep", "more_sheep"] and meta["datasets"] == [
        "eight_sheep.npz",
        "more_sheep.npz",
    ]


def test_ship_writes_weights_samples_and_card(eight_sheep: Path, tmp_path: Path) -> None:
    from ship import ship  # scripts/, on sys.path from tests/conftest.py

    run = tmp_path / "run"
    train(tiny(eight_sheep, num_steps=20, eval_every=10), run, progress=False)
    out = tmp_path / "models" / "tiny"
    metrics = ship(run, out, "tiny", "CC BY-NC 4.0", "eight sheep", "a test machine")
    _, hp, meta = checkpoint.load(out / "tiny.safetensors")
    assert meta["dtype"] == "float16" and meta["license"] == "CC BY-NC 4.0" and meta["step"] == 20
    assert meta["metrics"]["test"]["lr"] == metrics["test"]["lr"]
    assert abs(metrics["test_float16"]["lr"] - metrics["test"]["lr"]) < 0.01
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG"
    card = (out / "MODEL_CARD.md").read_text()
    assert f"{metrics['test_float16']['lr']:.4f}" in card and "CC BY-NC 4.0" in card and "20 steps" in card
    q = metrics["quality"]  # issue 28: the drawings scored against real sketches, in the card and model.json
    assert 0 <= q["c2st_low"] <= q["c2st_auc"] <= q["c2st_high"] <= 1 and q["n"] == 24
    assert f"AUC {q['c2st_auc']:.3f}" in card
    assert json.loads((out / "model.json").read_text())["metrics"]["quality"]["fd"] == q["fd"]
    again = ship(run, out, "tiny", "CC BY-NC 4.0", "eight sheep", "a test machine")  # the score of the one it replaces
    assert again["quality_replaced"]["c2st_auc"] == q["c2st_auc"]


def test_resume_is_exact_with_quality_scores(eight_sheep: Path, tmp_path: Path) -> None:
    """Scoring drawings at each validation (`quality_samples`: a two-sample net trained with its
    own seed) leaves the run's RNG alone, so resuming stays exact (fails on 2d1e00f: the scoring
    reseeded torch's global RNG after the resume state was taken)."""
    kw = dict(cell="layer_norm", recurrent_keep_prob=0.9, eval_every=3, random_scale=0.15, quality_samples=8)
    train(tiny(eight_sheep, num_steps=6, **kw), tmp_path / "a", progress=False)
    train(tiny(eight_sheep, num_steps=3, **kw), tmp_path / "b", progress=False)
    train(tiny(eight_sheep, num_steps=6, **kw), tmp_path / "b", progress=False)
    a, b = _params(tmp_path / "a" / "last.safetensors"), _params(tmp_path / "b" / "last.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert all("quality" in r for r in _records(tmp_path / "a") if r["split"] == "valid")
