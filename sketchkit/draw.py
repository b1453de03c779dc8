"""The draw of the next point, written once as an ONNX graph (paper Eq. 3, 5-8).

One graph evaluation per step should return the next points, so the draw lives in the graph:
`with_draw(decoder_step)` appends it to any `decoder_step` (ours and Magenta's) and
`draw_graph(M)` is the draw alone, for runtimes that only return the mixture parameters (the
Triton step loop, the training previews' torch decoder). Every sampler in the project runs one
of these two graphs, so there is exactly one definition of the draw.

Per row and step (the row's `temperature` = (divisor of the logits, factor on sigma), Eq. 8):
    pen   ~ softmax(q-hat / div)                 inverse CDF of one uniform
    j     ~ softmax(Pi-hat / div)                inverse CDF of one uniform
    (dx, dy) = mu_j + sig * sigma_j * (n1, rho_j n1 + sqrt(1 - rho_j^2) n2)   Box-Muller, two uniforms
Greedy rows (a per-row switch) take argmax q, argmax Pi and the component's mean. A row whose
parameters hold NaN or infinity gets a NaN offset, so the caller sees it.

Random numbers belong to the row, not to the batch: the four uniforms of a step are
`squares32(counter + k)`, k = 0..3, a counter-based generator (Widynski's "Squares", 2020) whose
integer arithmetic (uint64 multiply, add and divide; onnxruntime's CUDA provider has no shifts or
xor, which it does without) gives the same bits on every device. Each row's counter starts at its
key, `row_keys(seed, n)` made once on the host when a request arrives, and the graph returns it
plus 4: the same seed gives the same sketch whatever else is in flight, with no per-row Python
per step and nothing uploaded per step.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from sketchkit.errors import ModelError

if TYPE_CHECKING:
    import onnx

SQUARES_KEY = 0xC8E4FD154CE32F6D  # a Squares key: odd, no zero nibble, upper and lower halves unalike
DRAWS_PER_STEP = 4  # uniforms per row and step: pen, component, two for the bivariate normal
_U64 = np.uint64


# -- on the host: one key per row -----------------------------------------------------------


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Steele et al.'s 64-bit finaliser, vectorised: spreads nearby integers over all 64 bits."""
    with np.errstate(over="ignore"):
        x = x + _U64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
        return x ^ (x >> _U64(31))


def row_keys(seed: int | None, n: int) -> np.ndarray:
    """The starting counters [n] uint64 of a request's rows: row i's random numbers depend on
    (seed, i) and the step alone. Any non-negative int seed (SeedSequence folds large ones);
    None: fresh entropy."""
    base = np.random.SeedSequence(seed).generate_state(1, np.uint64)[0]
    return _splitmix64(base + np.arange(n, dtype=_U64) * _U64(0x9E3779B97F4A7C15))


def squares32(counter: np.ndarray) -> np.ndarray:
    """The generator in numpy (uint64 in, uint32 values out as uint64): the reference the graph is
    tested against. Rotating by 32 is x // 2^32 + x * 2^32 (wrapping), as in the graph."""
    with np.errstate(over="ignore"):
        key = _U64(SQUARES_KEY)
        x = y = counter * key
        z = y + key
        for add in (y, z, y):
            x = x * x + add
            x = (x >> _U64(32)) + (x << _U64(32))
        return (x * x + z) >> _U64(32)


# -- the graph --------------------------------------------------------------------------------


class _Builder:
    """Nodes and constants of the draw; every name it makes starts with `draw/`."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.consts: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        from onnx import numpy_helper

        self._n += 1
        name = f"draw/c{self._n}"
        self.consts.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        self._n += 1
        name = out or f"draw/{op_type.lower()}{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=f"draw/n{self._n}", **attrs))
        return name

    def split(self, x: str, sizes: list[int]) -> list[str]:
        """Columns of x [B, sum(sizes)] (opset 13+ Split with a sizes input)."""
        from onnx import helper

        self._n += 1
        names = [f"draw/part{self._n}_{k}" for k in range(len(sizes))]
        self.nodes.append(helper.make_node("Split", [x, self.const(sizes, np.int64)], names, axis=1, name=f"draw/n{self._n}"))
        return names


def _uniforms(b: _Builder, counter: str) -> list[str]:
    """Four uniforms in (0, 1) per row [B, 1] each (float32, 23 bits: k + 1/2 is exact), from
    `counter` [B] uint64."""
    u64 = lambda v: b.const(v, np.uint64)  # noqa: E731
    c = b.op("Add", b.op("Unsqueeze", counter, b.const([1], np.int64)), u64(np.arange(DRAWS_PER_STEP)))  # [B, 4]
    x = y = b.op("Mul", c, u64(SQUARES_KEY))
    z = b.op("Add", y, u64(SQUARES_KEY))
    high, shift = u64(2**32), u64(2**32)
    for add in (y, z, y):
        x = b.op("Add", b.op("Mul", x, x), add)
        x = b.op("Add", b.op("Div", x, high), b.op("Mul", x, shift))  # rotate by 32
    top23 = b.op("Div", b.op("Add", b.op("Mul", x, x), z), u64(2**41))  # the output's 23 high bits
    u = b.op("Mul", b.op("Add", b.op("Cast", top23, to=1), b.const(0.5)), b.const(2.0**-23))  # (k + 1/2) / 2^23, exact
    return b.split(u, [1] * DRAWS_PER_STEP)


def _categorical(b: _Builder, logits: str, u: str, greedy: str) -> str:
    """Index [B, 1] int64 drawn from softmax(logits) by inverse CDF (`u` scaled by the CDF's own
    total, so rounding never runs past the last category and a zero-probability one is never
    drawn), or argmax for greedy rows."""
    cdf = b.op("CumSum", b.op("Softmax", logits, axis=1), b.const(1, np.int64))
    total = b.op("Slice", cdf, b.const([-1], np.int64), b.const([2**62], np.int64), b.const([1], np.int64))
    below = b.op("Cast", b.op("Less", cdf, b.op("Mul", u, total)), to=7)
    drawn = b.op("ReduceSum", below, b.const([1], np.int64), keepdims=1)
    best = b.op("ArgMax", logits, axis=1, keepdims=1)
    return b.op("Where", greedy, best, drawn)


def _draw_nodes(b: _Builder, params: str, m: int, exact_math: bool) -> None:
    """The draw from `params` [B, 6M+3] and the inputs temperature [B, 2], greedy [B] bool,
    counter [B] uint64; outputs point [B, 5] and next_counter [B]. exact_math: ln, cos and sin
    from exact operations (every CPU), else onnxruntime's own (CUDA: fewer kernels per step)."""
    f32 = b.const
    greedy = b.op("Unsqueeze", "greedy", b.const([1], np.int64))  # [B, 1]
    div, sig = b.split("temperature", [1, 1])
    pen_hat, pi_hat, components = b.split(params, [3, m, 5 * m])  # q-hat, Pi-hat, then mu_x .. rho-hat
    u_pen, u_pi, u_r, u_theta = _uniforms(b, "counter")
    pen = _categorical(b, b.op("Div", pen_hat, div), u_pen, greedy)  # [B, 1]
    j = _categorical(b, b.op("Div", pi_hat, div), u_pi, greedy)
    # component j's five numbers: a one-hot mask over M times the five rows of M, summed (exact:
    # one term is nonzero)
    one_hot = b.op("Unsqueeze", b.op("Cast", b.op("Equal", b.const(np.arange(m), np.int64), j), to=1), b.const([1], np.int64))
    rows = b.op("Reshape", components, b.const([-1, 5, m], np.int64))  # [B, 5, M]
    chosen = b.op("ReduceSum", b.op("Mul", rows, one_hot), b.const([2], np.int64), keepdims=0)  # [B, 5]
    mx, my, sx, sy, rho = b.split(chosen, [1] * 5)
    rho = b.op("Tanh", rho)  # Eq. 6
    # Box-Muller: n1, n2 ~ N(0, 1) independent; y takes rho of x's noise and sqrt(1 - rho^2) of its own
    if exact_math:
        ln_u, (cos, sin) = _log(b, u_r), _cos_sin_turn(b, u_theta)
    else:
        theta = b.op("Mul", f32(2 * np.pi), u_theta)
        ln_u, cos, sin = b.op("Log", u_r), b.op("Cos", theta), b.op("Sin", theta)
    radius = b.op("Sqrt", b.op("Max", b.op("Mul", f32(-2.0), ln_u), f32(0.0)))  # ln u <= 0, also rounded
    n1, n2 = b.op("Mul", radius, cos), b.op("Mul", radius, sin)
    n2 = b.op("Add", b.op("Mul", rho, n1), b.op("Mul", b.op("Sqrt", b.op("Sub", f32(1.0), b.op("Mul", rho, rho))), n2))
    dx = b.op("Add", mx, b.op("Mul", b.op("Mul", b.op("Exp", sx), sig), n1))  # Eq. 6: sigma = exp(sigma-hat)
    dy = b.op("Add", my, b.op("Mul", b.op("Mul", b.op("Exp", sy), sig), n2))
    dx, dy = b.op("Where", greedy, mx, dx), b.op("Where", greedy, my, dy)  # greedy: the mean, whatever sigma
    # NaN or infinity anywhere in a row's parameters makes its offset NaN (0 * inf = NaN)
    poison = b.op("Mul", f32(0.0), b.op("ReduceSum", params, b.const([1], np.int64), keepdims=1))
    offset = b.op("Add", b.op("Concat", dx, dy, axis=1), poison)
    pen_one_hot = b.op("Cast", b.op("Equal", b.const(np.arange(3), np.int64), pen), to=1)  # [B, 3]
    b.op("Concat", offset, pen_one_hot, axis=1, out="point")
    b.op("Add", "counter", b.const(DRAWS_PER_STEP, np.uint64), out="next_counter")


# onnxruntime's CPU Log, Sin and Cos give an element different bits depending on where it sits in
# the batch (a vector loop with a scalar tail), which would make a sketch depend on what else is in
# flight. The two the draw needs are written here with exact operations (compare, multiply, add,
# divide, table lookup), whose bits depend on the element alone, on every device.


def _log(b: _Builder, u: str) -> str:
    """ln u for u [B, 1] in (0, 1), float32 to ~1e-7 (relative near 1 too): u = m 2^-e with m in
    [sqrt(1/2), sqrt(2)) found by comparisons, ln m = 2 atanh(s) = 2 (s + s^3/3 + ... + s^9/9),
    s = (m - 1)/(m + 1), |s| < 0.18."""
    f32 = b.const
    k = b.op("ReduceSum", b.op("Cast", b.op("Less", u, f32(2.0 ** -np.arange(1, 25))), to=7), b.const([1], np.int64), keepdims=1)
    m = b.op("Mul", u, b.op("Gather", f32(2.0 ** np.arange(1, 26)), k))  # u 2^(k+1) in [1, 2), exact
    high = b.op("Cast", b.op("Less", f32(np.sqrt(2.0)), m), to=1)  # 1 where m > sqrt(2): halve it
    m = b.op("Mul", m, b.op("Sub", f32(1.0), b.op("Mul", high, f32(0.5))))
    s = b.op("Div", b.op("Sub", m, f32(1.0)), b.op("Add", m, f32(1.0)))
    s2 = b.op("Mul", s, s)
    series = f32(1 / 9)
    for c in (1 / 7, 1 / 5, 1 / 3, 1.0):
        series = b.op("Add", f32(c), b.op("Mul", s2, series))
    ln_m = b.op("Mul", f32(2.0), b.op("Mul", s, series))
    e = b.op("Sub", b.op("Add", b.op("Cast", k, to=1), f32(1.0)), high)
    return b.op("Sub", ln_m, b.op("Mul", e, f32(np.log(2.0))))


def _cos_sin_turn(b: _Builder, v: str) -> tuple[str, str]:
    """(cos, sin) of 2 pi v for v [B, 1] in (0, 1): the quarter turn q = floor(4v) and the angle
    phi in [0, pi/2) within it, sin of [phi, pi/2 - phi] by its Taylor series to x^11 (error
    < 1e-7), then swapped and signed by quadrant."""
    f32 = b.const
    w = b.op("Mul", v, f32(4.0))
    q = b.op("Floor", w)
    phi = b.op("Mul", b.op("Sub", w, q), f32(np.pi / 2))
    x = b.op("Concat", phi, b.op("Sub", f32(np.pi / 2), phi), axis=1)  # [B, 2]
    x2 = b.op("Mul", x, x)
    series = f32(-1 / 39916800)
    for c in (1 / 362880, -1 / 5040, 1 / 120, -1 / 6, 1.0):
        series = b.op("Add", f32(c), b.op("Mul", x2, series))
    sin_phi, cos_phi = b.split(b.op("Mul", x, series), [1, 1])
    # quadrant q: (cos, sin) = (c, s), (-s, c), (-c, -s), (s, -c) for q = 0, 1, 2, 3
    odd = b.op("Equal", b.op("Mod", q, f32(2.0), fmod=1), f32(1.0))
    first, second = b.op("Where", odd, sin_phi, cos_phi), b.op("Where", odd, cos_phi, sin_phi)
    cos_sign = b.op("Where", b.op("Or", b.op("Equal", q, f32(1.0)), b.op("Equal", q, f32(2.0))), f32(-1.0), f32(1.0))
    sin_sign = b.op("Where", b.op("Less", q, f32(2.0)), f32(1.0), f32(-1.0))
    return b.op("Mul", cos_sign, first), b.op("Mul", sin_sign, second)


def _io() -> tuple[list[Any], list[Any]]:
    from onnx import TensorProto, helper

    inputs = [
        helper.make_tensor_value_info("temperature", TensorProto.FLOAT, ["B", 2]),
        helper.make_tensor_value_info("greedy", TensorProto.BOOL, ["B"]),
        helper.make_tensor_value_info("counter", TensorProto.UINT64, ["B"]),
    ]
    outputs = [
        helper.make_tensor_value_info("point", TensorProto.FLOAT, ["B", 5]),
        helper.make_tensor_value_info("next_counter", TensorProto.UINT64, ["B"]),
    ]
    return inputs, outputs


OPSET = 17


def draw_graph(num_mixture: int, exact_math: bool = True) -> onnx.ModelProto:
    """The draw alone: params [B, 6M+3] f32, temperature [B, 2] f32, greedy [B] bool, counter
    [B] uint64 -> point [B, 5] f32 (dx, dy, p1, p2, p3), next_counter [B] uint64."""
    from onnx import TensorProto, helper

    b = _Builder()
    _draw_nodes(b, "params", num_mixture, exact_math)
    inputs, outputs = _io()
    params = helper.make_tensor_value_info("params", TensorProto.FLOAT, ["B", 6 * num_mixture + 3])
    graph = helper.make_graph(b.nodes, "draw", [params, *inputs], outputs, b.consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def with_draw(decoder_step: onnx.ModelProto, num_mixture: int, exact_math: bool = True) -> onnx.ModelProto:
    """`decoder_step` (prev, [z,] state -> params, next_state) with the draw appended: prev, [z,]
    state, temperature, greedy, counter -> point, next_state, next_counter. The step's own nodes
    are untouched, so its numbers are the ones it computes alone. exact_math=False for CUDA:
    its Log, Cos and Sin give every element the same bits wherever it sits in the batch."""
    import onnx

    opset = next((o.version for o in decoder_step.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    if opset < 13:
        raise ValueError(f"decoder_step has opset {opset}; the draw needs 13 or later")
    b = _Builder()
    _draw_nodes(b, "params", num_mixture, exact_math)
    inputs, outputs = _io()
    model = onnx.ModelProto()
    model.CopyFrom(decoder_step)  # its functions, value_info and initializers as they are
    g = model.graph
    g.name = "decoder_step_draw"
    g.node.extend(b.nodes)
    g.initializer.extend(b.consts)
    g.input.extend(inputs)
    (next_state,) = (onnx.ValueInfoProto.FromString(o.SerializeToString()) for o in g.output if o.name == "next_state")
    del g.output[:]
    g.output.extend([outputs[0], next_state, outputs[1]])
    return model


# -- running the draw alone on the CPU --------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _draw_session(num_mixture: int) -> Any:
    from sketchkit.onnx_session import open_session

    return open_session(draw_graph(num_mixture).SerializeToString(), threads=1)


def run_draw(
    params: np.ndarray, temperature: np.ndarray, greedy: np.ndarray, counter: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The draw graph on the CPU for raw `params` [B, 6M+3] float32 (a runtime that returns only
    the mixture): (point [B, 5], next counter [B])."""
    m, rem = divmod(params.shape[1] - 3, 6)
    if rem or m < 1:
        raise ModelError(f"params of width {params.shape[1]} are not 6M + 3 mixture parameters")
    feeds = {"params": params, "temperature": temperature, "greedy": greedy, "counter": counter}
    point, next_counter = _draw_session(m).run(None, feeds)
    return point, next_counter


def sample_points(
    params: np.ndarray, tau: float, rule: str = "eq8", seed: int | None = 0, greedy: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One draw per row of raw `params` [B, 6M+3] at temperature tau, each row its own stream of
    `seed`: (pen index [B] in 0..2, offset [B, 2]). For analysis and tests."""
    from sketchkit.mixture import temperature

    b = len(params)
    t = np.tile(np.array((1.0, 1.0) if greedy else temperature(tau, rule), np.float32), (b, 1))
    point, _ = run_draw(np.asarray(params, np.float32), t, np.full(b, greedy), row_keys(seed, b))
    return point[:, 2:].argmax(axis=1), point[:, :2].astype(np.float64)
