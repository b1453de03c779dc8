"""The draw of the next point, written once as an ONNX graph (paper Eq. 3, 5-8).

One graph evaluation per step should return the next points, so the draw lives in the graph:
`with_draw(decoder_step)` appends it to any `decoder_step` (ours and Magenta's) and
`draw_graph(M)` is the draw alone, for runtimes that only return the mixture parameters (the
Triton step loop, the training previews' torch decoder). Every sampler in the project runs one
of these two graphs, so there is exactly one definition of the draw.

Per row and step (the row's `temperature` = (divisor of the logits, factor on sigma), Eq. 8):
    pen   ~ softmax(q-hat / div)                 inverse CDF of one uniform
    j     ~ softmax(Pi-hat / div)                inverse CDF of one uniform (both in one pass)
    (dx, dy) = mu_j + sig * sigma_j * (n1, rho_j n1 + sqrt(1 - rho_j^2) n2)   Box-Muller, two uniforms
and only component j's five parameters are gathered and worked on. Greedy rows (a per-row
switch) take argmax q, argmax Pi and the component's mean. A row whose parameters hold NaN or
infinity gets a NaN offset, so the caller sees it.

Random numbers belong to the row, not to the batch: the four uniforms of a step come from
`squares32(counter + k)`, k = 0..3, a counter-based generator (Widynski's "Squares", 2020) whose
integer arithmetic (uint64 multiply, add and divide; onnxruntime's CUDA provider has no shifts or
xor, which it does without) gives the same bits on every device. Each row's counter starts at its
key, `row_keys(seed, n)` made once on the host when a request arrives, and the graph returns it
plus 4: the same seed gives the same sketch whatever else is in flight, with no per-row Python
per step and nothing uploaded per step. What a seed means: k = 0 draws the pen, 1 the component,
2 the radius and 3 the angle of the bivariate normal (`_columns`).

Bits and devices: on the CPU every operation here gives an element the same bits wherever it
sits in the batch (onnxruntime's CPU Log, Sin and Cos do not: a vector loop with a scalar tail;
its Atanh and Tan call libm per element, and its Tanh, Exp and Softmax were measured position-free,
`tests/test_draw.py`), so a row's sketch does not depend on what else is in flight. The CUDA form (`exact_math=False`) uses Log, Sin and Cos instead of Atanh and Tan, and
Gather, Div and a counted Less where the CPU form has faster Pad, BitShift and Min + ArgMax: the
same distribution, the same random integers, other float bits.
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

    def split(self, x: str, sizes: list[int], axis: int = 1) -> list[str]:
        """Slices of x along `axis` (opset 13+ Split with a sizes input)."""
        from onnx import helper

        self._n += 1
        names = [f"draw/part{self._n}_{k}" for k in range(len(sizes))]
        self.nodes.append(
            helper.make_node(
                "Split", [x, self.const(sizes, np.int64)], names, axis=axis, name=f"draw/n{self._n}"
            )
        )
        return names


def _columns(exact_math: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the draw makes of a row's four 23-bit integers k (from counter + 0..3): per column,
    the counter offset, and the scale and shift of k (float32, k * scale + shift, at most two
    roundings). Columns: the pen's and the component's uniforms (k + 1/2) / 2^23 in (0, 1); the
    radius' v = k / 2^23 in [0, 1) and, for the CPU's atanh, 2 - v (for CUDA's log, 1 - v), both
    exact; the angle x = pi (k + 1/2) / 2^23 in (0, pi) and x + pi/4."""
    step, turn = 2.0**-23, np.pi * 2.0**-23
    offset = np.array([0, 1, 2, 2, 3, 3], np.uint64)
    scale = np.array([step, step, step, -step, turn, turn], np.float32)
    shift = np.array(
        [step / 2, step / 2, 0.0, 2.0 if exact_math else 1.0, turn / 2, turn / 2 + np.pi / 4], np.float32
    )
    return offset, scale, shift


def _uniforms(b: _Builder, counter: str, exact_math: bool = True) -> str:
    """The columns of `_columns` [B, 6] float32 from `counter` [B] uint64: Squares of
    counter + 0..3 (as [4, B]), its 23 high bits, widened to the six columns, scaled and shifted
    by one Gemm. Dividing by 2^32 is a shift on the CPU (faster, the same integers)."""
    u64 = lambda v: b.const(v, np.uint64)  # noqa: E731
    offset, scale, shift = _columns(exact_math)

    def down(x: str, bits: int) -> str:
        if exact_math:
            return b.op("BitShift", x, u64(bits), direction="RIGHT")
        return b.op("Div", x, u64(2**bits))

    c = b.op("Add", counter, u64(np.arange(DRAWS_PER_STEP)[:, None]))  # [4, B]: no Unsqueeze
    x = y = b.op("Mul", c, u64(SQUARES_KEY))
    z = b.op("Add", y, u64(SQUARES_KEY))
    for add in (y, z, y):
        x = b.op("Add", b.op("Mul", x, x), add)
        x = b.op("Add", down(x, 32), b.op("Mul", x, u64(2**32)))  # rotate by 32
    top23 = down(b.op("Add", b.op("Mul", x, x), z), 41)  # the output's 23 high bits
    # [4, B] -> [B, 6] in one Gemm: transposed, widened and scaled (one product by a nonzero weight
    # per column, exact zeros besides: the bits of a Mul), then shifted (the bits of an Add)
    weights = np.zeros((DRAWS_PER_STEP, len(offset)), np.float32)
    weights[offset.astype(np.int64), np.arange(len(offset))] = scale
    return b.op("Gemm", b.op("Cast", top23, to=1), b.const(weights), b.const(shift), transA=1)


def _categorical(b: _Builder, params: str, m: int, div: str, u: str, greedy: str, exact_math: bool) -> str:
    """The pen state and the component, [B, 2] int64 places in two rows of logits / div
    [B, 2, K]: both categoricals at once, each drawn by the inverse CDF of its uniform in `u`
    [B, 2] (never past the last category, never one of probability zero), or argmax for greedy
    rows (the first of equal maxima). K = max(3, M); row 0 holds the pen's 3 logits last, after
    K - 3 copies of its first; row 1 the M mixture weights (if M < 3, then copies of the first).
    On the CPU, with M >= 3, the rows are the parameters' first 2M columns after that padding (a
    Pad and a Reshape: a Gather of single elements is 4x slower) and the copies are 30 below the
    first logit, so their mass is under 1e-12 of it and, drawn or an argmax, they map to the pen's
    first state anyway (a softmax over -inf, or anything whose exp underflows, is 2.5-4x slower); the
    first place whose CDF reaches u is then the ArgMax of Min(CDF, u), or the last of nonzero
    probability where rounding left the CDF below u. Elsewhere a Gather of the same places, the
    copies' probability zeroed after the softmax and u scaled by the CDF's own total."""
    k = max(3, m)
    index = np.zeros((2, k), np.int64)
    index[0, k - 3 :], index[1, :] = np.arange(3), 3
    index[1, :m] = 3 + np.arange(m)
    real = np.stack([np.arange(k) >= k - 3, np.arange(k) < m]).astype(np.float32)
    padded_out = exact_math and m >= 3
    if padded_out:  # [pen_0 - 30 x (M - 3), pen, pi]: edge padding in front, - 30, the rest cut
        padded = b.op("Pad", params, b.const([0, m - 3, 0, -5 * m], np.int64), mode="edge")
        logits = b.op("Reshape", b.op("Div", padded, div), b.const([-1, 2, k], np.int64))
        logits = b.op("Add", logits, b.const((real - 1) * 30))
    else:
        logits = b.op("Gather", b.op("Div", params, div), b.const(index, np.int64), axis=1)  # [B, 2, K]
    p = b.op("Softmax", logits, axis=2)
    if not (real.all() or padded_out):
        p = b.op("Mul", p, b.const(real))
    cdf = b.op("CumSum", p, b.const(2, np.int64))
    threshold = b.op("Unsqueeze", u, b.const([2], np.int64))  # [B, 2, 1]
    if not padded_out:  # the copies' mass is in the total; counting must never run past the end
        threshold = b.op("Mul", threshold, b.op("Gather", cdf, b.const([k - 1], np.int64), axis=2))
    if exact_math:  # the first place whose CDF reaches the threshold: the first of the equal maxima
        drawn = b.op("ArgMax", b.op("Min", cdf, threshold), axis=2, keepdims=0)
    else:  # the places below it, counted (CUDA's ArgMax need not take the first of equal maxima)
        below = b.op("Cast", b.op("Less", cdf, threshold), to=7)
        drawn = b.op("ReduceSum", below, b.const([2], np.int64), keepdims=0)
    return b.op("Where", greedy, b.op("ArgMax", logits, axis=2, keepdims=0), drawn)


def _draw_nodes(b: _Builder, params: str, m: int, exact_math: bool) -> None:
    """The draw from `params` [B, 6M+3] and the inputs temperature [B, 2], greedy [B] bool,
    counter [B] uint64; outputs point [B, 5] and next_counter [B]. exact_math: the CPU's
    position-free Atanh and Tan, else Log, Sin and Cos (CUDA has them, per element)."""
    greedy = b.op("Unsqueeze", "greedy", b.const([1], np.int64))  # [B, 1]
    div, sig = b.split("temperature", [1, 1])
    u_choice, v, w, angle = b.split(_uniforms(b, "counter", exact_math), [2, 1, 1, 2])
    k = max(3, m)
    place = _categorical(b, params, m, div, u_choice, greedy, exact_math)  # [B, 2]: the pen's, component j's
    # component j's five numbers, gathered
    j = b.op("Gather", place, b.const([1], np.int64), axis=1)  # [B, 1]
    columns = b.op("Add", j, b.const(3 + m * np.arange(1, 6), np.int64))
    mu, sigma_hat, rho_hat = b.split(b.op("GatherElements", params, columns, axis=1), [2, 2, 1])
    # NaN or infinity anywhere in a row's parameters makes its offset NaN: mu + params @ 0 (Gemm:
    # one node) is mu or NaN
    mu = b.op("Gemm", params, b.const(np.zeros((6 * m + 3, 2))), mu)
    # two standard normals, the second correlated by rho (Box-Muller, radius r and angle theta):
    # (r sin theta, r sin(theta + alpha)) with cos alpha = rho = tanh(rho-hat) (Eq. 6), sin alpha >= 0.
    # r^2 = -2 ln(1 - v) = 4 atanh(v / (2 - v)); theta = 2x; sin 2y = 2 / (tan y + 1 / tan y); and
    # tan(alpha/2 - pi/4) = -tanh(rho-hat / 2), so theta + alpha = 2 (x + pi/4 + beta), tan beta that.
    if exact_math:
        half_r = b.op("Sqrt", b.op("Atanh", b.op("Div", v, w)))  # r / 2
        tan = b.op("Tan", angle)  # [B, 2]: tan x, tan(x + pi/4)
    else:
        half_r = b.op("Sqrt", b.op("Mul", b.op("Log", w), b.const(-0.5)))  # w = 1 - v here
        tan = b.op("Div", b.op("Sin", angle), b.op("Cos", angle))
    tan_beta = b.op("Tanh", b.op("Mul", rho_hat, b.const([0.0, -0.5])))  # [B, 2]: 0, tan beta
    num = b.op("Add", tan, tan_beta)  # tan(y) = num / den by the addition formula
    den = b.op("Sub", b.const(1.0), b.op("Mul", tan, tan_beta))
    two_sin = b.op("Div", b.const(4.0), b.op("Add", b.op("Div", num, den), b.op("Div", den, num)))  # 2 sin 2y
    scale = b.op("Mul", b.op("Exp", sigma_hat), b.op("Mul", half_r, sig))  # sigma = exp(sigma-hat), Eq. 6, 8
    offset = b.op("Add", mu, b.op("Mul", scale, two_sin))
    offset = b.op("Where", greedy, mu, offset)  # greedy: the mean, whatever sigma
    one_hot = np.eye(3, dtype=np.float32)[
        np.maximum(np.arange(k) - (k - 3), 0)
    ]  # [K, 3]: place -> pen one-hot
    pen = b.op("Gather", b.const(one_hot), b.op("Gather", place, b.const(0, np.int64), axis=1))  # [B, 3]
    b.op("Concat", offset, pen, axis=1, out="point")
    b.op("Add", "counter", b.const(DRAWS_PER_STEP, np.uint64), out="next_counter")


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
    (next_state,) = (
        onnx.ValueInfoProto.FromString(o.SerializeToString()) for o in g.output if o.name == "next_state"
    )
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
