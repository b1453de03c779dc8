"""The sampling loop on tiny real ONNX models (tests/onnx_fixtures.py) run by onnxruntime."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from onnx_fixtures import make_model, random_sketch

from sketchkit.errors import DataError, ModelError, SketchkitError
from sketchkit.runtimes.onnx import OnnxRuntime
from sketchkit.sampling import Sampler, SamplingOptions, lerp, mixture, rescale, sample_points, slerp


class Recording:
    """A real runtime that records what the sampler asks of it, and can split every call into
    chunks of at most `chunk` rows (as a server with a small max batch size would)."""

    def __init__(self, runtime: OnnxRuntime, chunk: int | None = None) -> None:
        self.inner, self.info, self.chunk = runtime, runtime.info, chunk
        self.batches: list[int] = []
        self.prevs: list[np.ndarray] = []
        self.z_init: list[np.ndarray] = []

    def encode(self, strokes, lengths):
        return self.inner.encode(strokes, lengths)

    def init_state(self, z, batch):
        if z is not None:
            self.z_init.append(np.array(z))
        return self.inner.init_state(z, batch)

    def step(self, prev, z, state):
        self.batches.append(len(prev))
        self.prevs.append(np.array(prev))
        if not self.chunk:
            return self.inner.step(prev, z, state)
        parts = [
            self.inner.step(prev[i : i + self.chunk], None if z is None else z[i : i + self.chunk], state[i : i + self.chunk])
            for i in range(0, len(prev), self.chunk)
        ]
        return np.concatenate([p for p, _ in parts]), np.concatenate([s for _, s in parts])

    def close(self):
        self.inner.close()


@pytest.fixture(params=["vae", "decoder-only"])
def model(request, tiny_vae, tiny_uncond):
    return tiny_vae if request.param == "vae" else tiny_uncond


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize("tau", [0, -0.5, 2.01, float("nan"), True])
def test_tau_outside_range_is_refused(tau):
    with pytest.raises(SketchkitError, match="tau must be in"):
        SamplingOptions(tau=tau)


def test_bad_rule_and_max_len_are_refused():
    with pytest.raises(SketchkitError, match="temperature rule"):
        SamplingOptions(temperature_rule="magenta")
    with pytest.raises(SketchkitError, match="max_len"):
        SamplingOptions(max_len=0)
    with pytest.raises(SketchkitError, match="seed"):
        SamplingOptions(seed=-1)
    assert SamplingOptions(tau=2).tau == 2


@pytest.mark.parametrize("n", [0, -3])
def test_n_below_one_is_refused(tiny_uncond, n):
    with pytest.raises(SketchkitError, match="n must be >= 1"):
        Sampler(OnnxRuntime(tiny_uncond)).generate(n)


# ---------------------------------------------------------------------------------------------
# the loop: stop, removal of finished rows, seeds


def test_same_seed_same_sketches_other_seed_others(model):
    sampler = Sampler(OnnxRuntime(model))
    a = sampler.generate(12, options=SamplingOptions(tau=0.6, seed=7))
    b = sampler.generate(12, options=SamplingOptions(tau=0.6, seed=7))
    c = sampler.generate(12, options=SamplingOptions(tau=0.6, seed=8))
    assert same(a, b)
    assert not same(a, c)
    assert all(s.dtype == np.float32 and s.ndim == 2 and s.shape[1] == 3 for s in a)


def test_seed_gives_same_sketches_whatever_the_batching(model):
    """Chunked calls (a server with max batch 3) and a whole batch give the same sketches."""
    options = SamplingOptions(tau=0.7, seed=3)
    whole = Sampler(OnnxRuntime(model)).generate(10, options=options)
    chunked = Sampler(Recording(OnnxRuntime(model), chunk=3)).generate(10, options=options)
    for x, y in zip(whole, chunked, strict=True):
        assert len(x) == len(y)
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-4)  # pixels


def test_finished_rows_leave_the_batch(model):
    rt = Recording(OnnxRuntime(model))
    sketches = Sampler(rt).generate(30, options=SamplingOptions(tau=0.8, seed=0))
    lengths = np.array([len(s) for s in sketches])
    max_len = rt.info.max_seq_len
    assert lengths.min() < lengths.max() <= max_len  # rows stopped at different steps
    # a sketch of length L (ended by p3 at step L) took part in steps 0..L
    expected = [int((lengths >= t).sum()) for t in range(min(lengths.max() + 1, max_len))]
    assert rt.batches == expected
    assert all(b > 0 for b in rt.batches)


def test_max_len_cuts_every_sketch(model):
    sketches = Sampler(OnnxRuntime(model)).generate(8, options=SamplingOptions(tau=0.1, max_len=5, seed=1))
    assert all(len(s) <= 5 for s in sketches)
    assert any(len(s) == 5 for s in sketches)
    assert all(s[-1, 2] == 1 for s in sketches if len(s))  # the last stroke ends with the sketch


def test_start_token_comes_from_model_json(tmp_path):
    d = make_model(tmp_path / "m", "decoder-only")
    info = OnnxRuntime(d).info
    dataclasses.replace(info, start_token=(0.0, 0.0, 0.0, 0.0, 0.0)).save(d)
    rt = Recording(OnnxRuntime(d))
    Sampler(rt).generate(2, options=SamplingOptions(max_len=2, seed=0))
    np.testing.assert_array_equal(rt.prevs[0], np.zeros((2, 5), np.float32))
    rt = Recording(OnnxRuntime(make_model(tmp_path / "m2", "decoder-only")))
    Sampler(rt).generate(2, options=SamplingOptions(max_len=2, seed=0))
    np.testing.assert_array_equal(rt.prevs[0], np.tile([0, 0, 1, 0, 0], (2, 1)))


def test_sketch_that_stops_at_once_is_empty(tmp_path):
    d = make_model(tmp_path / "stopper", "decoder-only", pen_bias=(-20.0, -20.0, 20.0))
    sketches = Sampler(OnnxRuntime(d)).generate(3, options=SamplingOptions(seed=0))
    assert [s.shape for s in sketches] == [(0, 3)] * 3


def test_nan_parameters_raise_instead_of_picking_a_default(tmp_path):
    d = make_model(tmp_path / "nan", "decoder-only", nan=True)
    with pytest.raises(ModelError, match="NaN"):
        Sampler(OnnxRuntime(d)).generate(2, options=SamplingOptions(seed=0))


# ---------------------------------------------------------------------------------------------
# one step: temperature, the mixture, greedy


def fixed_params(model_dir, batch: int) -> tuple[np.ndarray, int]:
    """The first step's parameters, the same for every row (decoder-only: zero state)."""
    rt = OnnxRuntime(model_dir)
    prev = np.tile(np.asarray(rt.info.start_token, np.float32), (batch, 1))
    params, _ = rt.step(prev, None, rt.init_state(None, batch))
    return params, rt.info.dims.num_mixture


@pytest.mark.parametrize(("tau", "rule"), [(1.0, "eq8"), (0.5, "eq8"), (0.5, "js")])
def test_offsets_match_the_mixture_mean_and_covariance(tiny_uncond, tau, rule):
    """On a fixed state: sampled offsets and pens match the mixture of Eq. 3 at temperature tau."""
    N = 40000
    params, M = fixed_params(tiny_uncond, N)
    mix = mixture(params, tau, rule)
    pen, xy = sample_points(params, tau, rule, seed=0)
    mean, cov = mix.mean_cov()
    se = np.sqrt(np.diag(cov[0]) / N)
    assert np.all(np.abs(xy.mean(axis=0) - mean[0]) < 4 * se)
    np.testing.assert_allclose(np.cov(xy.T), cov[0], rtol=0.05, atol=0.05 * np.abs(cov[0]).max())
    div = tau if rule == "eq8" else 0.5 + 0.5 * tau
    q = np.exp(params[0, :3] / div - (params[0, :3] / div).max())
    q /= q.sum()
    np.testing.assert_allclose(np.bincount(pen, minlength=3) / N, q, atol=4 * np.sqrt(0.25 / N))


def test_the_full_loop_samples_the_same_distribution(tiny_uncond):
    """Through generate (max_len 1): the first offsets match the mixture on the fixed state."""
    N = 20000
    params, M = fixed_params(tiny_uncond, 1)
    mean, cov = mixture(params, tau=1.0).mean_cov()
    sketches = Sampler(OnnxRuntime(tiny_uncond)).generate(N, options=SamplingOptions(tau=1.0, max_len=1, seed=5))
    scale = OnnxRuntime(tiny_uncond).info.scale_factor
    xy = np.array([s[0, :2] for s in sketches if len(s)]) / scale  # a p3 draw is independent of the offset
    se = np.sqrt(np.diag(cov[0]) / len(xy))
    assert np.all(np.abs(xy.mean(axis=0) - mean[0]) < 4 * se)
    np.testing.assert_allclose(np.cov(xy.T), cov[0], rtol=0.06, atol=0.06 * np.abs(cov[0]).max())


def test_eq8_and_js_temperature_rules():
    rng = np.random.default_rng(1)
    M, tau = 4, 0.25
    params = rng.normal(size=(3, 6 * M + 3)).astype(np.float32)
    p = params.astype(np.float64)
    eq8, js = mixture(params, tau, "eq8"), mixture(params, tau, "js")
    np.testing.assert_allclose(eq8.pen_logits, p[:, :3] / tau)
    np.testing.assert_allclose(eq8.pi_logits, p[:, 3 : 3 + M] / tau)
    np.testing.assert_allclose(eq8.sigma[..., 0] ** 2, np.exp(p[:, 3 + 3 * M : 3 + 4 * M]) ** 2 * tau)  # sigma^2 * tau
    np.testing.assert_allclose(js.pen_logits, p[:, :3] / (0.5 + 0.5 * tau))
    np.testing.assert_allclose(js.pi_logits, p[:, 3 : 3 + M] / (0.5 + 0.5 * tau))
    np.testing.assert_allclose(js.sigma, eq8.sigma)
    np.testing.assert_allclose(eq8.rho, np.tanh(p[:, 3 + 5 * M :]))
    np.testing.assert_allclose(eq8.mu[..., 1], p[:, 3 + 2 * M : 3 + 3 * M])


def test_rule_defaults_to_the_models(tmp_path):
    d = make_model(tmp_path / "js", "decoder-only")
    dataclasses.replace(OnnxRuntime(d).info, temperature_rule="js").save(d)
    opts = SamplingOptions(tau=0.4, seed=2)
    by_default = Sampler(OnnxRuntime(d)).generate(6, options=opts)
    assert same(by_default, Sampler(OnnxRuntime(d)).generate(6, options=dataclasses.replace(opts, temperature_rule="js")))
    assert not same(by_default, Sampler(OnnxRuntime(d)).generate(6, options=dataclasses.replace(opts, temperature_rule="eq8")))


def test_correlation_rho_is_sampled():
    M, N = 1, 50000
    params = np.zeros((N, 6 * M + 3), np.float32)
    params[:, 3 + 5 * M] = np.arctanh(0.8)  # rho = 0.8, sigma = 1, mu = 0
    _, xy = sample_points(params, 1.0, "eq8", seed=3)
    assert abs(np.corrcoef(xy.T)[0, 1] - 0.8) < 0.01


def test_extreme_logits_never_pick_a_default_index():
    """Logits that overflow a softmax (inverse-CDF sampling fails there) still give the argmax."""
    M, N = 5, 1000
    params = np.zeros((N, 6 * M + 3), np.float32)
    params[:, 0:3] = [-3e4, 3e4, -3e4]
    params[:, 3 : 3 + M] = [-3e4, -3e4, 3e4, -3e4, -3e4]
    params[:, 3 + M : 3 + 2 * M] = np.arange(M)
    pen, xy = sample_points(params, 0.01, "eq8", seed=0)
    assert (pen == 1).all()
    np.testing.assert_allclose(xy[:, 0], 2.0, atol=0.5)  # component 2, sigma 0.1


def greedy_reference(rt: OnnxRuntime, z: np.ndarray | None, max_len: int) -> np.ndarray:
    """The argmax path written out plainly: one row, argmax of pi and of q, the chosen mean."""
    info, M = rt.info, rt.info.dims.num_mixture
    state = rt.init_state(None if z is None else z[None], 1)
    prev = np.asarray(info.start_token, np.float32)[None]
    rows = []
    for _ in range(max_len):
        params, state = rt.step(prev, None if z is None else z[None], state)
        p = params[0]
        pen = int(np.argmax(p[:3]))
        j = int(np.argmax(p[3 : 3 + M]))
        dx, dy = p[3 + M + j], p[3 + 2 * M + j]
        if pen == 2:
            break
        rows.append([dx * info.scale_factor, dy * info.scale_factor, float(pen == 1)])
        prev = np.array([[dx, dy, 0, 0, 0]], np.float32)
        prev[0, 2 + pen] = 1
    out = np.array(rows, np.float32).reshape(-1, 3)
    if len(out):
        out[-1, 2] = 1
    return out


def test_greedy_is_the_argmax_path_and_tau_to_0_tends_to_it(model):
    rt = OnnxRuntime(model)
    sampler = Sampler(rt)
    n = 3
    z = np.random.default_rng(0).standard_normal((n, rt.info.dims.z_size)).astype(np.float32) if rt.info.dims.vae else None
    greedy = sampler.generate(n, z=z, options=SamplingOptions(greedy=True))
    cold = sampler.generate(n, z=z, options=SamplingOptions(tau=1e-6, seed=4))
    for i in range(n):
        ref = greedy_reference(rt, None if z is None else z[i], rt.info.max_seq_len)
        np.testing.assert_allclose(greedy[i], ref, rtol=1e-5, atol=1e-4)
        assert len(cold[i]) == len(ref)
        np.testing.assert_array_equal(cold[i][:, 2], ref[:, 2])
        np.testing.assert_allclose(cold[i][:, :2], ref[:, :2], atol=0.05)


def test_generate_decodes_the_z_it_draws(tiny_vae):
    rt = Recording(OnnxRuntime(tiny_vae))
    sampler = Sampler(rt)
    opts = SamplingOptions(seed=11)
    a = sampler.generate(5, options=opts)
    z = rt.z_init[-1]
    assert z.shape == (5, rt.info.dims.z_size) and abs(z.std() - 1) < 0.5
    assert same(a, sampler.decode(z, opts))


# ---------------------------------------------------------------------------------------------
# encoder, reconstruction, latent space, completion


def test_encode_uses_the_real_lengths(tiny_vae):
    sampler = Sampler(OnnxRuntime(tiny_vae))
    rng = np.random.default_rng(0)
    short, long = random_sketch(rng, 6), random_sketch(rng, 30)
    mu_alone, _ = sampler.encode([short])
    mu_batch, presig = sampler.encode([long, short])
    np.testing.assert_allclose(mu_batch[1], mu_alone[0], atol=1e-5)
    assert mu_batch.shape == presig.shape == (2, sampler.info.dims.z_size)


def test_encode_refuses_bad_sketches(tiny_vae, tiny_uncond):
    sampler = Sampler(OnnxRuntime(tiny_vae))
    with pytest.raises(DataError, match="max_seq_len"):
        sampler.encode([random_sketch(np.random.default_rng(0), sampler.info.max_seq_len + 1)])
    with pytest.raises(DataError):
        sampler.encode([np.zeros((3, 2))])
    with pytest.raises(DataError):
        sampler.encode([])
    with pytest.raises(ModelError, match="decoder-only"):
        Sampler(OnnxRuntime(tiny_uncond)).reconstruct([random_sketch(np.random.default_rng(0), 5)])
    with pytest.raises(ModelError, match="decoder-only"):
        Sampler(OnnxRuntime(tiny_uncond)).decode(np.zeros((1, 4), np.float32))
    with pytest.raises(ModelError, match="decoder-only"):
        Sampler(OnnxRuntime(tiny_uncond)).generate(1, z=np.zeros((1, 4), np.float32))
    with pytest.raises(SketchkitError, match="2 latent vectors for n = 3"):
        sampler.generate(3, z=np.zeros((2, sampler.info.dims.z_size), np.float32))


def test_reconstruct_decodes_mu(tiny_vae):
    rt = Recording(OnnxRuntime(tiny_vae))
    sampler = Sampler(rt)
    sketches = [random_sketch(np.random.default_rng(i), 8 + i) for i in range(3)]
    out = sampler.reconstruct(sketches, SamplingOptions(tau=0.5, seed=1))
    assert len(out) == 3
    np.testing.assert_allclose(rt.z_init[-1], sampler.encode(sketches)[0], atol=1e-6)


def test_lerp_and_slerp():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(64), rng.standard_normal(64)
    for f in (lerp, slerp):
        np.testing.assert_allclose(f(a, b, 0.0), a, atol=1e-12)
        np.testing.assert_allclose(f(a, b, 1.0), b, atol=1e-12)
    # slerp between vectors of equal norm stays on the sphere; lerp cuts through it
    b = b / np.linalg.norm(b) * np.linalg.norm(a)
    assert math.isclose(np.linalg.norm(slerp(a, b, 0.5)), np.linalg.norm(a), rel_tol=1e-9)
    assert np.linalg.norm(lerp(a, b, 0.5)) < 0.9 * np.linalg.norm(a)
    np.testing.assert_allclose(slerp(a, a, 0.3), a)  # parallel: no division by sin(0)


def test_interpolate_grid4_and_analogy_in_latent_space(tiny_vae):
    rt = Recording(OnnxRuntime(tiny_vae))
    sampler = Sampler(rt)
    Nz = rt.info.dims.z_size
    za, zb, zc, zd = np.random.default_rng(0).standard_normal((4, Nz)).astype(np.float32)
    path = sampler.interpolate(za, zb, steps=5, method="lerp", options=SamplingOptions(seed=0))
    assert len(path) == 5
    zs = rt.z_init[-1]
    np.testing.assert_allclose(zs[[0, -1]], [za, zb], atol=1e-6)
    np.testing.assert_allclose(zs[2], (za + zb) / 2, atol=1e-6)

    grid = sampler.grid4([za, zb, zc, zd], size=3, options=SamplingOptions(seed=0))
    assert len(grid) == 9
    zs = rt.z_init[-1]
    np.testing.assert_allclose(zs[[0, 2, 6, 8]], [za, zb, zc, zd], atol=1e-5)

    sketch = sampler.analogy(za, zb, zc, SamplingOptions(seed=0))
    assert sketch.ndim == 2
    np.testing.assert_allclose(rt.z_init[-1][0], za - zb + zc, atol=1e-6)

    # sketches are encoded to their mu
    s0, s1 = (random_sketch(np.random.default_rng(i), 10) for i in range(2))
    sampler.interpolate(s0, s1, steps=3, options=SamplingOptions(seed=0))
    np.testing.assert_allclose(rt.z_init[-1][[0, -1]], sampler.encode([s0, s1])[0], atol=1e-5)

    with pytest.raises(SketchkitError, match="unknown interpolation"):
        sampler.interpolate(za, zb, method="cubic")
    with pytest.raises(SketchkitError, match="4 corners"):
        sampler.grid4([za, zb, zc])
    with pytest.raises(SketchkitError, match="shape"):
        sampler.interpolate(za[:2], zb)


@pytest.mark.parametrize("kind", ["vae", "decoder-only"])
def test_complete_continues_the_partial_sketch(tmp_path, kind):
    d = make_model(tmp_path / kind, kind)
    rt = Recording(OnnxRuntime(d))
    sampler = Sampler(rt)
    partial = random_sketch(np.random.default_rng(0), 7)
    out = sampler.complete(partial, k=5, options=SamplingOptions(tau=1.0, seed=3))
    assert len(out) == 5
    for s in out:
        np.testing.assert_array_equal(s[: len(partial)], partial)
        assert len(s) <= rt.info.max_seq_len
    assert len({len(s) for s in out}) > 1  # different endings
    # the decoder read S_0 and the first 6 points one by one, then sampled k rows from point 7
    assert rt.batches[:7] == [1] * 7 and rt.batches[7] == 5
    np.testing.assert_allclose(rt.prevs[7][:, :2], np.tile(partial[-1, :2] / rt.info.scale_factor, (5, 1)), atol=1e-6)
    assert same(out, sampler.complete(partial, k=5, options=SamplingOptions(tau=1.0, seed=3)))


def test_complete_greedy_equals_the_argmax_path_after_the_partial(tiny_uncond):
    """Greedy completion of the first points of the greedy path is the rest of that path."""
    rt = OnnxRuntime(tiny_uncond)
    full = greedy_reference(rt, None, rt.info.max_seq_len)
    partial = full[:10].copy()
    partial[-1, 2] = full[9, 2] if len(full) > 10 else 1
    (done,) = Sampler(rt).complete(partial, k=1, options=SamplingOptions(greedy=True))
    np.testing.assert_allclose(done[:-1], full[:-1], rtol=1e-5, atol=1e-4)


def test_complete_refuses_a_too_long_partial(tiny_uncond):
    sampler = Sampler(OnnxRuntime(tiny_uncond))
    with pytest.raises(DataError, match="nothing left"):
        sampler.complete(random_sketch(np.random.default_rng(0), sampler.info.max_seq_len), k=2)


def test_rescale_matches_the_scale_factor():
    rng = np.random.default_rng(0)
    sketches = [random_sketch(rng, 20, scale=3.0) for _ in range(10)]
    out, factor = rescale(sketches, 30.0)
    assert math.isclose(float(np.std(np.concatenate([s[:, :2].ravel() for s in out]))), 30.0, rel_tol=1e-4)
    assert factor > 5
    np.testing.assert_array_equal(out[0][:, 2], sketches[0][:, 2])
