"""The sampler on a real model: Magenta's owl (decoder-only LSTM, H = 512), imported from
../shared/data/magenta-gen with the torch-free importer (skips without ../shared)."""

from __future__ import annotations

import numpy as np
import pytest

from sketchkit import datasets, strokes
from sketchkit.cli import main
from sketchkit.runtimes.onnx import OnnxRuntime
from sketchkit.sampling import Sampler, SamplingOptions, mixture, rescale, sample_points


@pytest.fixture(scope="module")
def owl(magenta_gen_dir, quickdraw_dir, tmp_path_factory):
    from sketchkit.magenta_onnx import import_magenta

    out = tmp_path_factory.mktemp("magenta") / "owl"
    import_magenta(magenta_gen_dir / "owl.gen.json", out)  # start token: zeros, as owls' L_R chose
    return out


@pytest.fixture(scope="module")
def real_owls(quickdraw_dir, owl):
    """QuickDraw's owls (0..255 units) rescaled to the model's units."""
    drawings = [datasets.drawing_to_stroke3(d) for d in datasets.read_ndjson(quickdraw_dir / "simplified-25" / "owl.ndjson")]
    return rescale(drawings, OnnxRuntime(owl).info.scale_factor)[0]


def n_strokes(s: np.ndarray) -> int:
    return int(s[:, 2].sum())


def extent(s: np.ndarray) -> float:
    x0, x1, y0, y1 = strokes.bounds(s)
    return max(x1 - x0, y1 - y0)


def test_generated_owls_are_shaped_like_real_ones(owl, real_owls):
    sampler = Sampler(OnnxRuntime(owl))
    max_len = sampler.info.max_seq_len
    owls = sampler.generate(50, options=SamplingOptions(tau=0.3, seed=0))
    lengths = np.array([len(s) for s in owls])
    assert lengths.min() >= 10
    assert (lengths == max_len).mean() < 0.25  # the model ends its sketches itself
    # strokes and size like real owls (generated ones have more points: the model's training
    # data was simplified at another scale than QuickDraw's 0..255 files)
    gen_strokes, real_strokes = np.mean([n_strokes(s) for s in owls]), np.mean([n_strokes(s) for s in real_owls])
    assert 0.5 < gen_strokes / real_strokes < 2.0
    gen_size, real_size = np.median([extent(s) for s in owls]), np.median([extent(s) for s in real_owls])
    assert 0.5 < gen_size / real_size < 2.0


def test_seed_and_greedy_on_the_real_model(owl):
    sampler = Sampler(OnnxRuntime(owl))
    a = sampler.generate(4, options=SamplingOptions(tau=0.5, seed=3))
    b = sampler.generate(4, options=SamplingOptions(tau=0.5, seed=3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    greedy = sampler.generate(1, options=SamplingOptions(greedy=True))[0]
    cold = sampler.generate(1, options=SamplingOptions(tau=1e-8, temperature_rule="eq8", seed=1))[0]
    assert len(cold) == len(greedy)
    np.testing.assert_array_equal(cold[:, 2], greedy[:, 2])
    np.testing.assert_allclose(cold[:, :2], greedy[:, :2], atol=0.5)  # pixels


def test_first_offsets_match_the_real_mixture(owl):
    """At tau = 1 from the start state (the same for every row), offsets match Eq. 3's moments."""
    rt = OnnxRuntime(owl)
    N = 20000
    prev = np.tile(np.asarray(rt.info.start_token, np.float32), (N, 1))
    params, _ = rt.step(prev, None, rt.init_state(None, N))
    for rule in ("eq8", "js"):
        _, xy = sample_points(params, 1.0, rule, seed=0)
        mean, cov = mixture(params[:1], 1.0, rule).mean_cov()
        se = np.sqrt(np.diag(cov[0]) / N)
        assert np.all(np.abs(xy.mean(axis=0) - mean[0]) < 4 * se)
        np.testing.assert_allclose(np.cov(xy.T), cov[0], rtol=0.08, atol=0.05 * np.abs(cov[0]).max())


def test_complete_real_owls_from_quickdraw(owl, quickdraw_dir, tmp_path, capsys):
    path = tmp_path / "owl-complete.png"
    main(["complete", str(owl), "--data", str(quickdraw_dir / "simplified-25" / "owl.ndjson"), "--index", "0",
          "-k", "4", "--seed", "1", "-o", str(path)])
    err = capsys.readouterr().err
    assert "rescaled input sketches by x2." in err  # QuickDraw's 0..255 units are ~2.6x smaller
    assert path.read_bytes().startswith(b"\x89PNG")
