"""Sample quality as numbers (issue 28): the measures' parts, and the measures validated on real
data before they are trusted: real vs real is indistinguishable, known damage and bad
temperatures score worse, a briefly trained model worse than the shipped one, same seed same
numbers. The numpy parts run in the light venv; the rest needs torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sketchkit.quality.auc import auc_delong
from sketchkit.quality.frechet import frechet_distance
from sketchkit.quality.inputs import rasterize, sequences
from sketchkit.quality.perturb import jitter, shuffle_strokes
from sketchkit.quality.stats import compare_stats, ks_distance, sketch_stats

SQUARE = np.array([[10, 0, 0], [0, 10, 0], [-10, 0, 0], [0, -10, 1], [30, 0, 0], [0, 5, 1]], np.float32)


# ---- numpy parts ---------------------------------------------------------------------------


def test_auc_delong_matches_the_normal_shift() -> None:
    rng = np.random.default_rng(0)
    auc, low, high = auc_delong(rng.normal(1, 1, 2000), rng.normal(0, 1, 2000))
    expected = 0.5 * (1 + math.erf(1 / 2))  # P(X > Y) for N(1, 1) vs N(0, 1): Phi(1 / sqrt 2)
    assert low < expected < high and high - low < 0.04
    assert auc_delong(np.array([3.0, 4.0]), np.array([1.0, 2.0]))[0] == 1.0
    assert auc_delong(np.ones(5), np.ones(5))[0] == 0.5  # ties count half


def test_ks_and_frechet() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 4000)
    assert ks_distance(a, a) == 0.0
    assert ks_distance(a, a + 10) == 1.0
    x = rng.normal(0, 1, (3000, 4))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    shifted = frechet_distance(x + np.array([2.0, 0, 0, 0]), x)
    assert shifted == pytest.approx(4.0, rel=1e-6)  # same covariance: |mu1 - mu2|^2
    assert frechet_distance(x * 2, x) == pytest.approx(4.0, rel=0.1)  # trace terms: 4 (4 + 1 - 4)


def test_rasterize_and_sequences_are_scale_free() -> None:
    pics = rasterize([SQUARE, SQUARE * np.array([7, 7, 1], np.float32)])
    assert pics.shape == (2, 28, 28) and 0 < pics.max() <= 1
    np.testing.assert_allclose(pics[0], pics[1], atol=1e-6)
    assert rasterize([np.zeros((0, 3), np.float32)]).sum() <= 1  # a dot at the origin, as render draws it
    seq = sequences([SQUARE], length=8)
    assert seq.shape == (1, 8, 5) and seq[0, 6:, 4].tolist() == [1, 1]
    assert np.abs(seq[0, :6, :2]).max() == pytest.approx(1.0)  # offsets / the box's longer side (30)


def test_sketch_stats() -> None:
    s = sketch_stats([SQUARE])
    assert s["points"][0] == 6 and s["strokes"][0] == 2
    assert s["pen_lift_fraction"][0] == pytest.approx(2 / 6)
    assert s["aspect"][0] == pytest.approx(30 / 10)
    assert compare_stats([SQUARE] * 3, [SQUARE] * 2)["points"]["ks"] == 0.0


def test_shuffle_strokes_keeps_the_picture() -> None:
    sketches = [SQUARE, np.vstack([SQUARE, [[5, 5, 0], [3, 0, 1]]]).astype(np.float32)]
    shuffled = shuffle_strokes(sketches, seed=3)
    assert [len(s) for s in shuffled] == [len(s) for s in sketches]
    np.testing.assert_allclose(rasterize(shuffled), rasterize(sketches), atol=1e-6)
    assert not np.allclose(jitter(sketches, 0.2)[0], SQUARE)


# ---- the measures on real data (torch) -----------------------------------------------------


@pytest.fixture(scope="module")
def quality():  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")
    import torch

    from sketchkit.zoo import quality

    torch.set_num_threads(1)
    return quality


@pytest.fixture(scope="module")
def real_sheep(sheep):  # type: ignore[no-untyped-def]
    return [np.asarray(s, np.float32) for s in sheep.train[:600]]


def test_real_vs_real_is_indistinguishable_and_seeded(quality, real_sheep) -> None:  # type: ignore[no-untyped-def]
    q = quality.compare(real_sheep[:300], real_sheep[300:600], seed=0)
    assert q.c2st_low < 0.5 < q.c2st_high and abs(q.c2st_auc - 0.5) < 0.1
    assert all(v["ks"] < 0.15 for v in q.stats.values())
    again = quality.compare(real_sheep[:300], real_sheep[300:600], seed=0)
    assert again.to_dict() | {"seconds": 0} == q.to_dict() | {"seconds": 0}  # same seed, same numbers


def test_damage_scores_worse(quality, real_sheep) -> None:  # type: ignore[no-untyped-def]
    a, b = real_sheep[:300], real_sheep[300:600]
    base = quality.compare(a, b, seed=0)
    shuffled = quality.compare(shuffle_strokes(a), b, seed=0)
    assert shuffled.c2st_low > base.c2st_high  # the same pictures: only the sequence branch sees it
    jittered = quality.compare(jitter(a, 0.3), b, seed=0)
    assert jittered.fd > 1.5 * base.fd  # n = 300: 4.6 against 2.0 (FD's small-sample bias is in both)
    assert jittered.stats["aspect"]["ks"] > 2 * base.stats["aspect"]["ks"]


def test_temperature_extremes_score_worse(quality, real_sheep) -> None:  # type: ignore[no-untyped-def]
    import sketchkit

    runtime = sketchkit.load("sheep", threads=1)
    auc = {t: quality.evaluate_samples(runtime, real_sheep, 200, tau=t, seed=0) for t in (0.05, 0.5, 2.0)}
    assert auc[0.05].c2st_auc > auc[0.5].c2st_auc and auc[2.0].c2st_auc > auc[0.5].c2st_auc
    assert auc[2.0].fd > auc[0.5].fd


def test_a_briefly_trained_model_scores_worse(quality, real_sheep, sheep_npz, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tiny_recipe import tiny

    import sketchkit
    from sketchkit.zoo.checkpoint import load
    from sketchkit.zoo.train import sample, train

    train(tiny(sheep_npz, num_steps=20, eval_every=20, num_samples=1, max_seq_len=250), tmp_path, progress=False)
    model, _, _ = load(tmp_path / "best.safetensors")
    import torch

    brief = sample(model, 200, tau=0.5, generator=torch.Generator().manual_seed(0))
    q_brief = quality.compare(brief, real_sheep, seed=0)
    q_shipped = quality.evaluate_samples(sketchkit.load("sheep", threads=1), real_sheep, 200, tau=0.5, seed=0)
    assert q_brief.c2st_auc > q_shipped.c2st_auc + 0.05 and q_brief.fd > q_shipped.fd


@pytest.mark.slow
def test_an_early_checkpoint_scores_worse_than_a_later_one(quality, real_sheep, sheep_npz, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The same tiny recipe at 50 and at 1,500 steps (3-4 minutes on 2 loaded cores)."""
    import torch
    from tiny_recipe import tiny

    from sketchkit.zoo.checkpoint import load
    from sketchkit.zoo.train import sample, train

    scores = {}
    for steps in (50, 1500):
        run = tmp_path / str(steps)
        train(tiny(sheep_npz, num_steps=steps, eval_every=steps, num_samples=1, max_seq_len=250, batch_size=32), run, progress=False)
        model, _, _ = load(run / "best.safetensors")
        drawn = sample(model, 400, tau=0.5, generator=torch.Generator().manual_seed(0))
        scores[steps] = quality.compare(drawn, real_sheep[:400], seed=0)
    # the tiny recipe's drawings are told from real ones every time at both steps (AUC 0.999 and
    # 1.000: a saturated C2ST ranks nothing); FD ranks them (547 at 50 steps, 91 at 1,500)
    assert min(scores[50].c2st_auc, scores[1500].c2st_auc) > 0.95
    assert scores[50].fd > 2 * scores[1500].fd


def test_start_token_option(tiny_uncond) -> None:  # type: ignore[no-untyped-def]
    import sketchkit
    from sketchkit.errors import SketchkitError
    from sketchkit.modelinfo import START_TOKENS, parse_start
    from sketchkit.sampling import Sampler, SamplingOptions

    assert parse_start("zeros") == START_TOKENS["zeros"] and parse_start("0,0,1,0,0") == START_TOKENS["paper"]
    with pytest.raises(SketchkitError, match="--start"):
        parse_start("1,2")
    sampler = Sampler(sketchkit.load(tiny_uncond))
    own = sampler.generate(4, options=SamplingOptions(seed=1, max_len=20))
    same = sampler.generate(4, options=SamplingOptions(seed=1, max_len=20, start_token=sampler.info.start_token))
    other = sampler.generate(4, options=SamplingOptions(seed=1, max_len=20, start_token=(0, 0, 0, 0, 1.0)))
    assert all(np.array_equal(a, b) for a, b in zip(own, same, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(own, other, strict=True))


def test_cas_on_three_magenta_classes(quality, magenta_gen_dir, quickdraw_dir) -> None:  # type: ignore[no-untyped-def]
    import sketchkit
    from sketchkit import datasets
    from sketchkit.zoo import cas

    names = ("owl", "cat", "key")
    gen = {k: quality.generate(sketchkit.load(magenta_gen_dir / f"{k}.gen.json", threads=1), 60, 0.3, 0) for k in names}
    real = {k: [datasets.drawing_to_stroke3(d) for d in datasets.read_ndjson(quickdraw_dir / "simplified-25" / f"{k}.ndjson")] for k in names}
    recall = cas.cas(gen, real, seed=0)
    assert set(recall) == set(names) and np.mean(list(recall.values())) > 0.5  # well above chance (1/3)
    assert cas.cas(gen, real, seed=0) == recall


def test_a_set_of_generated_sketches_is_cached_whole(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`zoo.cas`'s cache of generated sets: points and lengths back as they went in, written
    through a temp file of its own (nothing left beside it)."""
    pytest.importorskip("torch", reason="zoo.cas is the torch half (pip install 'sketchkit[train]')")
    from sketchkit.zoo import cas

    sketches = [np.array([[1, 2, 0], [3, -4, 1]], np.float32), np.array([[5, 6, 1]], np.float32)]
    path = tmp_path / "owl-paper-0123.npz"
    cas.save_set(path, sketches)
    back = cas.load_set(path)
    assert len(back) == 2 and all(np.array_equal(a, b) for a, b in zip(back, sketches, strict=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# ---- the command -----------------------------------------------------------------------------


def _sketchkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sketchkit", *args], capture_output=True, text=True, timeout=600)


def test_evaluate_samples_command(quality, sheep_npz, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "sweep.png"
    r = _sketchkit("evaluate", "sheep", "--samples", "--data", str(sheep_npz), "-n", "32", "--tau", "0.3,1.0", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert [q["tau"] for q in rep["results"]] == [0.3, 1.0]
    assert all(0 <= q["c2st_auc"] <= 1 and q["fd"] >= 0 and q["n"] == 32 for q in rep["results"])
    assert set(rep["results"][0]["stats"]) == {"points", "strokes", "pen_lift_fraction", "aspect"}
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for bad, message in ((["--tau", "3"], "--tau"), ([], "--data"), (["--start", "x"], "--start")):
        data = [] if not bad else ["--data", str(sheep_npz)]
        r = _sketchkit("evaluate", "sheep", "--samples", *data, "-n", "16", *bad)
        assert r.returncode == 1 and r.stderr.startswith("error:") and message in r.stderr and "Traceback" not in r.stderr


def test_start_token_on_the_command_line(magenta_gen_dir, tiny_uncond, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from sketchkit.modelinfo import ModelInfo

    r = _sketchkit("import-magenta", str(magenta_gen_dir / "key.gen.json"), str(tmp_path / "key"), "--start", "paper")
    assert r.returncode == 0, r.stderr
    assert ModelInfo.load(tmp_path / "key").start_token == (0, 0, 1, 0, 0)
    out = {}
    for start in ("zeros", "paper"):
        r = _sketchkit("generate", str(tiny_uncond), "-n", "3", "--seed", "2", "--max-len", "15", "--start", start, "--json")
        assert r.returncode == 0, r.stderr
        out[start] = r.stdout
    assert out["zeros"] != out["paper"]
    r = _sketchkit("generate", str(tiny_uncond), "--start", "0,0,1", "--json")
    assert r.returncode == 1 and "--start" in r.stderr and "Traceback" not in r.stderr


def test_training_logs_quality_at_validation(quality, sheep_npz, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tiny_recipe import tiny

    from sketchkit.zoo.train import train

    train(tiny(sheep_npz, num_steps=10, eval_every=10, num_samples=1, max_seq_len=250, quality_samples=16), tmp_path, progress=False)
    valid = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"valid"' in x]
    q = valid[-1]["quality"]
    assert q["n"] == 16 and 0 <= q["c2st_low"] <= q["c2st_auc"] <= q["c2st_high"] <= 1 and q["fd"] >= 0
