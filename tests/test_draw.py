"""The draw as a graph (`sketchkit.draw`): its generator, its exact maths, and that it draws the
mixture of Eq. 3 at the temperature of Eq. 8 — against the mixture written out in numpy and
against the previous release's numpy draw, statistically (the bits changed once, by design)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from sketchkit import draw
from sketchkit.hub import resolve
from sketchkit.mixture import mixture, temperature
from sketchkit.rows import HostRows
from sketchkit.runtimes.onnx import OnnxRuntime


def run_nodes(build, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """Evaluate a few of the draw's nodes (made by `build(builder)`) on the CPU."""
    b = draw._Builder()
    names = build(b)
    for name, out in zip(names, outputs, strict=True):
        b.op("Identity", name, out=out)
    elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.uint64): TensorProto.UINT64}
    ins = [helper.make_tensor_value_info(k, elem[v.dtype], list(v.shape)) for k, v in inputs.items()]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    model = helper.make_model(helper.make_graph(b.nodes, "t", ins, outs, b.consts), opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)


@pytest.mark.parametrize("exact_math", [True, False])
def test_uniforms_are_squares32_of_the_counter(exact_math):
    """Both forms (BitShift on the CPU, Div for CUDA) give Squares' integers; each column is its
    23 high bits scaled and shifted as `_columns` says, in its interval."""
    counter = draw.row_keys(12345, 1000)
    (got,) = run_nodes(lambda b: [draw._uniforms(b, "counter", exact_math)], {"counter": counter}, ["u"])
    offset, scale, shift = draw._columns(exact_math)
    k = (draw.squares32(counter[:, None] + offset) >> np.uint64(9)).astype(np.float32)  # [B, 6], exact
    np.testing.assert_array_equal(got, k * scale + shift)  # float32, the graph's two roundings
    u = k[:, :2].astype(np.float64) / 2**23 + 2.0**-24
    np.testing.assert_array_equal(got[:, :2], u)  # the choices' uniforms are exact, in (0, 1)
    assert u.min() > 0 and u.max() < 1
    np.testing.assert_array_equal(got[:, 2], k[:, 2] / 2**23)  # v in [0, 1), exact
    np.testing.assert_array_equal(got[:, 3], (2.0 if exact_math else 1.0) - k[:, 2] / 2**23)  # exact too
    np.testing.assert_array_equal(k[:, 3], k[:, 2])  # one counter each: radius (v, w), angle
    np.testing.assert_allclose(got[:, 4], np.pi * (k[:, 4] + 0.5) / 2**23, rtol=3e-7)
    np.testing.assert_allclose(got[:, 5] - got[:, 4], np.pi / 4, atol=1e-6)
    # uniform: each decile holds a tenth, within 5 standard errors
    counts = np.histogram(got[:, :3], bins=10, range=(0, 1))[0] / got[:, :3].size
    assert np.abs(counts - 0.1).max() < 5 * np.sqrt(0.09 / got[:, :3].size)


def test_the_cuda_form_uses_only_what_the_cuda_provider_has():
    """onnxruntime's CUDA provider has no shifts or xor, a cropping Pad was never tried there, and
    its ArgMax need not take the first of equal maxima: the CUDA form keeps to uint64 Mul/Add/Div,
    Gather, a counted Less and Log/Sin/Cos (the CPU form's Atanh and Tan are libm's, per element)."""
    cuda = {n.op_type for n in draw.draw_graph(20, exact_math=False).graph.node}
    assert not cuda & {"BitShift", "BitwiseXor", "Pad", "Min", "Atanh", "Tan"}
    allowed = {"Add", "ArgMax", "Cast", "Concat", "Cos", "CumSum", "Div", "Exp", "Gather", "GatherElements",
               "Gemm", "Less", "Log", "MatMul", "Mul", "ReduceSum", "Sin", "Softmax", "Split", "Sqrt", "Sub", "Tanh",
               "Unsqueeze", "Where"}  # fmt: skip
    assert cuda <= allowed, cuda - allowed
    assert len(draw.draw_graph(20).graph.node) <= 65  # issue 27: at most half of b401ed7's 146


def test_row_keys_depend_on_seed_and_row_only():
    a, b = draw.row_keys(7, 5), draw.row_keys(7, 9)
    np.testing.assert_array_equal(a, b[:5])  # row i's key does not depend on n
    assert len(set(b.tolist())) == 9
    assert not set(draw.row_keys(8, 9).tolist()) & set(b.tolist())
    assert draw.row_keys(2**200, 2).dtype == np.uint64  # any non-negative int seed


def test_a_row_draws_the_same_bits_wherever_it_sits():
    """The CPU form's point for a row depends on the row alone: the same rows drawn in batches of
    1 to 70, in another order, give the same bits (onnxruntime's CPU Log, Sin and Cos would not:
    a vector loop with a scalar tail). Greedy and non-greedy rows, tau 0.3 and 1, mixed."""
    rng = np.random.default_rng(5)
    M, N = 20, 70
    params = (rng.normal(size=(N, 6 * M + 3)) * 2).astype(np.float32)
    t = np.array([temperature(0.3, "eq8"), temperature(1.0, "eq8")], np.float32)[rng.integers(0, 2, N)]
    greedy, counter = rng.random(N) < 0.2, draw.row_keys(9, N)
    session = ort.InferenceSession(draw.draw_graph(M).SerializeToString(), providers=["CPUExecutionProvider"])

    def run(rows: np.ndarray) -> np.ndarray:
        feeds = {"params": params[rows], "temperature": t[rows], "greedy": greedy[rows], "counter": counter[rows]}
        return session.run(None, feeds)[0]

    alone = np.concatenate([run(np.array([i])) for i in range(N)])
    for rows in (np.arange(N), rng.permutation(N), np.arange(N)[::-1][:17], np.r_[3:N:3]):
        np.testing.assert_array_equal(run(rows).view(np.uint32), alone[rows].view(np.uint32))


@pytest.mark.parametrize("exact_math", [True, False])
@pytest.mark.parametrize(("tau", "rule"), [(1.0, "eq8"), (0.4, "eq8"), (0.4, "js")])
def test_draws_follow_the_mixture(tau, rule, exact_math):
    """One row's parameters drawn 100,000 times: pen and component frequencies, the offset's mean
    and covariance and, given the component, the correlation rho match Eq. 3 / Eq. 6-8."""
    rng = np.random.default_rng(0)
    M, N = 5, 100_000
    p1 = rng.normal(size=(1, 6 * M + 3)).astype(np.float32)
    p1[0, 3 + M : 3 + 3 * M] *= 4  # separated means: the chosen component shows in the offset
    session = ort.InferenceSession(draw.draw_graph(M, exact_math).SerializeToString(), providers=["CPUExecutionProvider"])
    t = np.tile(np.array(temperature(tau, rule), np.float32), (N, 1))
    point, nxt = session.run(None, {"params": np.repeat(p1, N, 0), "temperature": t, "greedy": np.zeros(N, bool),
                                    "counter": draw.row_keys(3, N)})  # fmt: skip
    mix = mixture(p1, tau, rule)
    pen_p = np.exp(mix.pen_logits[0] - mix.pen_logits[0].max())
    pen_p /= pen_p.sum()
    np.testing.assert_allclose(point[:, 2:].mean(0), pen_p, atol=5 * np.sqrt(0.25 / N))
    assert (point[:, 2:].sum(1) == 1).all()
    mean, cov = mix.mean_cov()
    se = np.sqrt(np.diag(cov[0]) / N)
    assert np.all(np.abs(point[:, :2].mean(0) - mean[0]) < 5 * se)
    np.testing.assert_allclose(np.cov(point[:, :2].T), cov[0], rtol=0.03, atol=0.03 * np.abs(cov[0]).max())
    np.testing.assert_array_equal(nxt, draw.row_keys(3, N) + np.uint64(4))


def test_correlation_and_greedy():
    M, N = 1, 50_000
    params = np.zeros((N, 6 * M + 3), np.float32)
    params[:, 3 + 5 * M] = np.arctanh(0.8)  # rho = 0.8, sigma = 1, mu = 0
    _, xy = draw.sample_points(params, 1.0, seed=3)
    assert abs(np.corrcoef(xy.T)[0, 1] - 0.8) < 0.01
    rng = np.random.default_rng(1)
    params = rng.normal(size=(64, 6 * 4 + 3)).astype(np.float32)
    pen, xy = draw.sample_points(params, 1.0, greedy=True)
    j = params[:, 3:7].argmax(1)
    np.testing.assert_array_equal(pen, params[:, :3].argmax(1))
    np.testing.assert_array_equal(xy, np.stack([params[np.arange(64), 7 + j], params[np.arange(64), 11 + j]], 1))


def test_extreme_logits_and_bad_parameters():
    """Logits that overflow a softmax still pick the argmax; NaN or infinity anywhere in a row
    makes its offset NaN (the engine fails that request), and only that row's."""
    M, N = 5, 1000
    params = np.zeros((N, 6 * M + 3), np.float32)
    params[:, 0:3] = [-3e4, 3e4, -3e4]
    params[:, 3 : 3 + M] = [-3e4, -3e4, 3e4, -3e4, -3e4]
    params[:, 3 + M : 3 + 2 * M] = np.arange(M)
    pen, xy = draw.sample_points(params, 0.01, seed=0)
    assert (pen == 1).all()
    np.testing.assert_allclose(xy[:, 0], 2.0, atol=0.5)  # component 2, sigma 0.1
    params[3, 20], params[7, 0] = np.nan, np.inf
    _, xy = draw.sample_points(params, 0.5, seed=0)
    assert np.isnan(xy[[3, 7], 0]).all() and np.isfinite(xy[np.r_[0:3, 4:7, 8:N]]).all()


# ---- against the previous release's draw, over whole sketches ----------------------------------


def old_draw(params: np.ndarray, div: float, sig: float, rng: np.random.Generator) -> np.ndarray:
    """The previous release's numpy draw (Gumbel-max pen and component, numpy normals), as a
    stroke-5 point: the reference distribution."""
    m = (params.shape[1] - 3) // 6
    logits = params[:, : 3 + m].astype(np.float64) / div - np.log(rng.standard_exponential((len(params), 3 + m)))
    pen, j = logits[:, :3].argmax(1), logits[:, 3:].argmax(1)
    c = params[np.arange(len(params))[:, None], (3 + j)[:, None] + m * np.arange(1, 6)].astype(np.float64)
    n = rng.standard_normal((len(params), 2))
    rho = np.tanh(c[:, 4])
    noise = np.stack([n[:, 0], rho * n[:, 0] + np.sqrt(1 - rho * rho) * n[:, 1]], 1)
    point = np.zeros((len(params), 5), np.float32)
    point[:, :2] = c[:, :2] + np.exp(c[:, 2:4]) * sig * noise
    point[np.arange(len(params)), 2 + pen] = 1
    return point


def sketch_statistics(runtime, n: int, tau: float, new: bool) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """n sketches from the start token, decoded with the new draw (the graph) or the old one:
    lengths, pen-state frequencies and offset moments over every drawn point."""
    info = runtime.info
    div, sig = temperature(tau, "eq8")
    rows = HostRows(runtime)
    z = np.random.default_rng(9).standard_normal((n, info.dims.z_size)).astype(np.float32) if info.dims.vae else None
    cols = {"prev": np.tile(np.asarray(info.start_token, np.float32), (n, 1)), "state": runtime.init_state(z, n),
            "temperature": np.tile(np.array([div, sig], np.float32), (n, 1)), "greedy": np.zeros(n, bool),
            "counter": draw.row_keys(1, n)}  # fmt: skip
    if z is not None:
        cols["z"] = z
    rows.append(cols)
    rng, live, length, points = np.random.default_rng(1), np.arange(n), np.full(n, info.max_seq_len), []
    for t in range(info.max_seq_len):
        if new:
            point = rows.step()
        else:
            c = rows.columns
            params, c["state"] = runtime.step(c["prev"], c.get("z"), c["state"])
            point = c["prev"] = old_draw(params, div, sig, rng)
        points.append(point)
        ended = point[:, 4] == 1
        length[live[ended]] = t
        rows.keep(np.flatnonzero(~ended))
        live = live[~ended]
        if not len(live):
            break
    p = np.concatenate(points)
    return {"length": length, "pen": p[:, 2:].mean(0), "mean": p[:, :2].mean(0), "std": p[:, :2].std(0), "n_points": len(p)}


def assert_same_statistics(new: dict, old: dict) -> None:
    """Mean length, pen-state frequencies and offset moments within their sampling error (5 SE;
    the offsets of one sketch correlate, so the mean's error is taken 5x the independent one).
    Prints both (pytest -s) for benchmarks/RESULTS.md."""
    for name, s in (("graph", new), ("previous", old)):
        print(f"{name}: length {s['length'].mean():.2f} ({s['length'].std():.1f}), pen {np.round(s['pen'], 4)}, "
              f"offset mean {np.round(s['mean'], 4)}, sd {np.round(s['std'], 4)}")  # fmt: skip
    n = len(new["length"])
    len_se = np.hypot(new["length"].std(), old["length"].std()) / np.sqrt(n)
    assert abs(new["length"].mean() - old["length"].mean()) < 5 * len_se
    points = min(new["n_points"], old["n_points"])
    np.testing.assert_allclose(new["pen"], old["pen"], atol=5 * np.sqrt(0.25 / points) * 3)
    std_se = np.hypot(new["std"], old["std"]) / np.sqrt(points)
    np.testing.assert_allclose(new["mean"], old["mean"], atol=float(5 * std_se.max()) * 5)
    np.testing.assert_allclose(new["std"], old["std"], rtol=0.05)


@pytest.mark.parametrize("n", [3000, pytest.param(10_000, marks=pytest.mark.slow)])
def test_sheep_sketches_match_the_previous_draw(n):
    runtime = OnnxRuntime(resolve("sheep"))
    assert_same_statistics(*(sketch_statistics(runtime, n, 0.6, flag) for flag in (True, False)))


@pytest.mark.slow
def test_owl_sketches_match_the_previous_draw(magenta_gen_dir, tmp_path):
    from sketchkit.magenta_onnx import import_magenta

    import_magenta(magenta_gen_dir / "owl.gen.json", tmp_path / "owl")
    runtime = OnnxRuntime(tmp_path / "owl")
    assert_same_statistics(*(sketch_statistics(runtime, 10_000, 0.6, flag) for flag in (True, False)))


def test_greedy_is_the_mean_whatever_sigma():
    """A greedy row takes the chosen component's mean even where exp(sigma-hat) overflows (the
    noise is not multiplied by zero: 0 x inf would be NaN and fail the request)."""
    params = np.zeros((3, 6 + 3), np.float32)
    params[:, 4], params[:, 5] = [1.5, -2.0, 0.0], [0.25, 3.0, -1.0]  # mu_x, mu_y
    params[:, 6] = params[:, 7] = 100.0  # sigma-hat: exp overflows float32
    pen, xy = draw.sample_points(params, 1.0, greedy=True)
    np.testing.assert_array_equal(xy, params[:, 4:6])
