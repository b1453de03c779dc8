"""Sampling sketches from the step-wise graphs (paper §3.2-3.3, Eq. 3-8).

`Sampler(runtime)` runs the autoregressive loop on numpy batches; the runtime (in-process
onnxruntime or Triton) only evaluates graphs, and all randomness lives here in one seeded
`numpy.random.Generator`. Every step draws a fixed-shape block of random numbers for all n rows,
finished or not, so a seed gives the same sketches whatever order rows finish in and whatever
runtime runs the graphs.

Units: the graphs work in normalised offsets (pixels / scale_factor); everything the Sampler
takes and returns is stroke-3 in pixel units.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sketchkit import strokes
from sketchkit.errors import DataError, ModelError, SketchkitError
from sketchkit.modelinfo import MAX_SEQ_LEN, RULES
from sketchkit.runtime import Runtime


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample; override fields with `dataclasses.replace(options, tau=...)`.

    tau: temperature in (0, 2]; `greedy=True` is the tau -> 0 limit.
    temperature_rule: "eq8" (the paper) or "js" (sketch-rnn-js); None = the model's own rule.
    max_len: steps before a sketch is cut; None = the model's max_seq_len (N_max).
    seed: for numpy.random.default_rng; None = fresh entropy.
    """

    tau: float = 0.3
    temperature_rule: str | None = None
    greedy: bool = False
    max_len: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.tau, bool) or not isinstance(self.tau, numbers.Real) or not 0 < self.tau <= 2:
            raise SketchkitError(f"tau must be in (0, 2], got {self.tau} (use greedy for the tau -> 0 limit)")
        if self.temperature_rule not in (None, *RULES):
            raise SketchkitError(f"unknown temperature rule {self.temperature_rule!r} (choose eq8 or js)")
        if self.max_len is not None and not 1 <= self.max_len <= MAX_SEQ_LEN:
            raise SketchkitError(f"max_len must be in [1, {MAX_SEQ_LEN}], got {self.max_len}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0):
            raise SketchkitError(f"seed must be a non-negative integer, got {self.seed}")


# ---------------------------------------------------------------------------------------------
# one step: mixture parameters -> a point (Eq. 5-8)


def temperature(tau: float, rule: str = "eq8") -> tuple[float, float]:
    """(divisor of the pen and Pi logits, factor on sigma) of a temperature rule.

    eq8 (the paper's Eq. 8): q-hat / tau, Pi-hat / tau, sigma^2 * tau (so sigma * sqrt(tau)).
    js (sketch-rnn-js): q-hat and Pi-hat / (0.5 + 0.5 tau), sigma * sqrt(tau).
    """
    if rule == "eq8":
        return tau, math.sqrt(tau)
    if rule == "js":
        return 0.5 + 0.5 * tau, math.sqrt(tau)
    raise SketchkitError(f"unknown temperature rule {rule!r} (choose eq8 or js)")


@dataclass(frozen=True)
class Mixture:
    """The whole distribution of the next point (Eq. 3, 6-8) for a batch, temperature applied:
    what `sample_points` draws from, written out for analysis and tests."""

    pen_logits: np.ndarray  # [B, 3]  q-hat / temperature
    pi_logits: np.ndarray  # [B, M]  Pi-hat / temperature
    mu: np.ndarray  # [B, M, 2]
    sigma: np.ndarray  # [B, M, 2]
    rho: np.ndarray  # [B, M]

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean [B, 2] and covariance [B, 2, 2] of the offset under the mixture."""
        pi = _softmax(self.pi_logits)
        mean = np.einsum("bm,bmk->bk", pi, self.mu)
        sx, sy = self.sigma[..., 0], self.sigma[..., 1]
        cov_m = np.stack([np.stack([sx * sx, self.rho * sx * sy], -1), np.stack([self.rho * sx * sy, sy * sy], -1)], -2)
        second = np.einsum("bm,bmij->bij", pi, cov_m + self.mu[..., :, None] * self.mu[..., None, :])
        return mean, second - mean[:, :, None] * mean[:, None, :]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _split(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw params [B, 6M+3] (layout of ARCHITECTURE.md, as Magenta's) -> pen logits [B, 3] and
    the mixture's six rows [B, 6, M]: Pi-hat, mu_x, mu_y, sigma-hat_x, sigma-hat_y, rho-hat (Eq. 5)."""
    p = params.astype(np.float64)
    return p[:, :3], p[:, 3:].reshape(len(p), 6, -1)


def mixture(params: np.ndarray, tau: float, rule: str = "eq8") -> Mixture:
    """The distribution of raw `params` [B, 6M+3] at temperature tau (Eq. 6-8)."""
    pen, c = _split(params)
    div, sig = temperature(tau, rule)
    return Mixture(
        pen_logits=pen / div,
        pi_logits=c[:, 0] / div,
        mu=c[:, 1:3].transpose(0, 2, 1),
        sigma=np.exp(c[:, 3:5].transpose(0, 2, 1)) * sig,  # Eq. 6
        rho=np.tanh(c[:, 5]),
    )


@dataclass(frozen=True)
class Draws:
    """The random numbers of one step: Gumbel noise for the pen and component draws, N(0, 1) pairs."""

    gumbel: np.ndarray  # [n, 3 + M]
    normal: np.ndarray  # [n, 2]

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, num_mixture: int) -> Draws:
        gumbel = -np.log(rng.standard_exponential((n, 3 + num_mixture)))  # Gumbel(0, 1), 4x faster than rng.gumbel
        return cls(gumbel, rng.standard_normal((n, 2)))

    def __getitem__(self, rows: np.ndarray) -> Draws:
        return Draws(self.gumbel[rows], self.normal[rows])


def sample_points(
    params: np.ndarray, tau: float, rule: str, draws: Draws | None
) -> tuple[np.ndarray, np.ndarray]:
    """(pen index [B] in 0..2, offset [B, 2]) drawn from raw `params`; `draws=None` is greedy.

    Categorical draws are Gumbel-max (argmax of logits + Gumbel noise): exact, and it cannot fail
    the way an inverse-CDF search does (magenta's returns index -1, silently picking the last
    component or the end of the sketch). Only the chosen component is transformed (Eq. 6): the
    same draw as from `mixture(params, tau, rule)` for a fraction of the work. Greedy: argmax of
    q and of Pi, offset = that component's mean.
    """
    pen_logits, c = _split(params)
    rows = np.arange(len(c))
    if draws is None:
        return pen_logits.argmax(axis=1), c[rows, 1:3, c[:, 0].argmax(axis=1)]
    div, sig = temperature(tau, rule)
    pen = (pen_logits / div + draws.gumbel[:, :3]).argmax(axis=1)
    j = (c[:, 0] / div + draws.gumbel[:, 3:]).argmax(axis=1)
    chosen = c[rows, :, j]  # [B, 6]: Pi-hat, mu_x, mu_y, sigma-hat_x, sigma-hat_y, rho-hat of component j
    rho = np.tanh(chosen[:, 5])
    e1, e2 = draws.normal.T
    # bivariate normal with correlation rho: y takes rho of x's noise and sqrt(1 - rho^2) of its own
    noise = np.stack([e1, rho * e1 + np.sqrt(1.0 - rho * rho) * e2], axis=1)
    return pen, chosen[:, 1:3] + np.exp(chosen[:, 3:5]) * sig * noise


# ---------------------------------------------------------------------------------------------
# latent space


def lerp(z0: np.ndarray, z1: np.ndarray, t: float) -> np.ndarray:
    return (1.0 - t) * z0 + t * z1


def slerp(z0: np.ndarray, z1: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation (as magenta's sketch-rnn notebooks): keeps the norm that
    z ~ N(0, I) concentrates on, where lerp's midpoints shrink towards the origin."""
    cos = np.dot(z0, z1) / max(float(np.linalg.norm(z0) * np.linalg.norm(z1)), 1e-12)
    omega = math.acos(float(np.clip(cos, -1.0, 1.0)))
    if math.sin(omega) < 1e-6:  # (anti)parallel: no unique great circle
        return lerp(z0, z1, t)
    return (math.sin((1.0 - t) * omega) * z0 + math.sin(t * omega) * z1) / math.sin(omega)


INTERPOLATIONS = {"lerp": lerp, "slerp": slerp}


def rescale(sketches: Sequence[np.ndarray], scale_factor: float) -> tuple[list[np.ndarray], float]:
    """Rescale sketches so the std of their offsets equals a model's `scale_factor`.

    A model's scale_factor belongs to the units of its training data; QuickDraw's simplified
    ndjson (0..255) has offsets ~2.6x smaller than the sketch-rnn `.npz` files. Returns the
    rescaled sketches and the factor applied.
    """
    std = strokes.scale_factor(sketches)
    if std <= 0:
        raise DataError("cannot rescale: the sketches have no extent")
    factor = scale_factor / std
    return [np.asarray(s, np.float32) * np.array([factor, factor, 1], np.float32) for s in sketches], factor


# ---------------------------------------------------------------------------------------------
# the sampler


class Sampler:
    """Sketches from a runtime: generate, reconstruct, interpolate, analogies, completion."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.info = runtime.info
        self.start_token = np.asarray(self.info.start_token, dtype=np.float32)

    # -- public API ----------------------------------------------------------------------------

    def generate(self, n: int, z: np.ndarray | None = None, options: SamplingOptions | None = None) -> list[np.ndarray]:
        """n new sketches: z ~ N(0, I) for vae models (unless given), none for decoder-only."""
        options = options or SamplingOptions()
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise SketchkitError(f"n must be >= 1, got {n}")
        if not self.info.conditional:
            if z is not None:
                raise ModelError(f"{self.info.name} is a decoder-only model: it takes no latent vector z")
            return self._decode_from_start(None, n, options)
        if z is None:
            z_rng, _ = _rngs(options.seed)
            z = z_rng.standard_normal((n, self.info.z_size)).astype(np.float32)
        if len(self._check_z(z)) != n:
            raise SketchkitError(f"got {len(z)} latent vectors for n = {n}")
        return self.decode(z, options)

    def decode(self, z: np.ndarray | None, options: SamplingOptions | None = None) -> list[np.ndarray]:
        """One sketch per latent vector z [B, Nz] (the decoder half of the VAE)."""
        options = options or SamplingOptions()
        if not self.info.conditional:
            raise ModelError(f"{self.info.name} is a decoder-only model: it takes no latent vector z")
        z = self._check_z(z)
        return self._decode_from_start(z, len(z), options)

    def encode(self, sketches: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(mu, presig) [B, Nz] of stroke-3 sketches in pixel units; sigma = exp(presig / 2)."""
        self._need_encoder("encode")
        if len(sketches) == 0:
            raise DataError("no sketches to encode")
        checked = [strokes.check_stroke3(s, name=f"sketch {i}") for i, s in enumerate(sketches)]
        for i, s in enumerate(checked):
            if len(s) > self.info.max_seq_len:
                raise DataError(
                    f"sketch {i} has {len(s)} points, more than the model's max_seq_len {self.info.max_seq_len} "
                    "(simplify it with RDP first)"
                )
        lengths = np.array([len(s) for s in checked], dtype=np.int64)
        T = int(lengths.max())
        # normalised stroke-5 without the S_0 row; the encoder reads only the first `lengths` rows
        batch = np.stack([strokes.to_stroke5(strokes.normalize(s, self.info.scale_factor), T) for s in checked])
        mu, presig = self.runtime.encode(batch, lengths)
        return np.asarray(mu, np.float32), np.asarray(presig, np.float32)

    def reconstruct(self, sketches: Sequence[np.ndarray], options: SamplingOptions | None = None) -> list[np.ndarray]:
        """Encode each sketch to its most likely latent (mu) and decode it again."""
        mu, _ = self.encode(sketches)
        return self.decode(mu, options)

    def interpolate(
        self, a: np.ndarray, b: np.ndarray, steps: int = 10, method: str = "slerp", options: SamplingOptions | None = None
    ) -> list[np.ndarray]:
        """`steps` sketches along the latent path from a to b (each a stroke-3 sketch or a z)."""
        interp = _interpolation(method)
        if steps < 2:
            raise SketchkitError(f"steps must be >= 2, got {steps}")
        za, zb = self._latents([a, b])
        return self.decode(np.stack([interp(za, zb, t) for t in np.linspace(0.0, 1.0, steps)]), options)

    def grid4(
        self, corners: Sequence[np.ndarray], size: int = 5, method: str = "slerp", options: SamplingOptions | None = None
    ) -> list[np.ndarray]:
        """The paper's four-way interpolation (Fig. 14): corners (top-left, top-right,
        bottom-left, bottom-right) and the size x size grid between them, row-major."""
        interp = _interpolation(method)
        if len(corners) != 4:
            raise SketchkitError(f"grid4 needs 4 corners, got {len(corners)}")
        if size < 2:
            raise SketchkitError(f"size must be >= 2, got {size}")
        tl, tr, bl, br = self._latents(corners)
        ts = np.linspace(0.0, 1.0, size)
        zs = [interp(interp(tl, tr, tx), interp(bl, br, tx), ty) for ty in ts for tx in ts]
        return self.decode(np.stack(zs), options)

    def analogy(self, a: np.ndarray, b: np.ndarray, c: np.ndarray, options: SamplingOptions | None = None) -> np.ndarray:
        """The sketch at z_a - z_b + z_c ("a is to b as ? is to c", paper §5.3)."""
        za, zb, zc = self._latents([a, b, c])
        return self.decode((za - zb + zc)[None], options)[0]

    def complete(self, partial: np.ndarray, k: int = 8, options: SamplingOptions | None = None) -> list[np.ndarray]:
        """k continuations of a partial sketch (paper §5.4): the decoder reads the partial
        sketch to build its state, then samples on from there. Vae models condition on the
        partial sketch's own latent (mu). Returns the full sketches, partial included."""
        options = options or SamplingOptions()
        if k < 1:
            raise SketchkitError(f"k must be >= 1, got {k}")
        s = strokes.check_stroke3(partial, name="partial sketch").astype(np.float32)
        max_len = options.max_len or self.info.max_seq_len
        if len(s) >= max_len:
            raise DataError(f"the partial sketch has {len(s)} points: nothing left to complete (max_len {max_len})")
        z1 = self.encode([s])[0] if self.info.conditional else None
        seq = strokes.to_stroke5(strokes.normalize(s, self.info.scale_factor), len(s))
        state = self.runtime.init_state(z1, 1)
        for prev in np.vstack([self.start_token, seq[:-1]]):  # read S_0, s_1 .. s_{n-1}
            _, state = self.runtime.step(prev[None], z1, state)
        z = None if z1 is None else np.repeat(z1, k, axis=0)
        _, step_rng = _rngs(options.seed)
        endings = self._loop(np.repeat(seq[-1:], k, axis=0), z, np.repeat(state, k, axis=0), options, step_rng, max_len - len(s))
        return [np.vstack([s, e]) for e in endings]

    # -- the loop -------------------------------------------------------------------------------

    def _decode_from_start(self, z: np.ndarray | None, n: int, options: SamplingOptions) -> list[np.ndarray]:
        state = self.runtime.init_state(z, n)
        prev = np.repeat(self.start_token[None], n, axis=0)
        _, step_rng = _rngs(options.seed)
        return self._loop(prev, z, state, options, step_rng, options.max_len or self.info.max_seq_len)

    def _loop(
        self, prev: np.ndarray, z: np.ndarray | None, state: np.ndarray,
        options: SamplingOptions, rng: np.random.Generator, max_len: int,
    ) -> list[np.ndarray]:
        """Sample until each row draws p3 or reaches max_len; finished rows leave the batch."""
        n, M = len(prev), self.info.num_mixture
        rule = options.temperature_rule or self.info.temperature_rule
        out = np.zeros((n, max_len, 3), np.float32)  # stroke-3, normalised units
        lengths = np.full(n, max_len)
        rows = np.arange(n)  # the original index of each active batch row
        one_hot = np.eye(3, dtype=np.float32)
        for t in range(max_len):
            params, state = self.runtime.step(prev, z, state)
            if not np.isfinite(params).all():
                raise ModelError(f"{self.info.name}: the model produced NaN or infinite parameters at step {t}")
            draws = None
            if not options.greedy:
                # one fixed-shape block per step for all n rows, then the active ones: reproducible
                draws = Draws.draw(rng, n, M)
                draws = draws if len(rows) == n else draws[rows]
            pen, offset = sample_points(params, options.tau, rule, draws)
            out[rows, t, :2] = offset
            out[rows, t, 2] = pen == 1
            prev = np.empty((len(rows), 5), np.float32)
            prev[:, :2] = offset
            prev[:, 2:] = one_hot[pen]
            ended = pen == 2  # p3: the p3 point itself is not part of the sketch
            if ended.any():
                lengths[rows[ended]] = t
                keep = ~ended
                rows, prev, state = rows[keep], prev[keep], state[keep]
                z = None if z is None else z[keep]
                if len(rows) == 0:
                    break
        out[:, :, :2] *= self.info.scale_factor
        sketches = [out[i, : lengths[i]].copy() for i in range(n)]  # own arrays, not views of `out`
        for s in sketches:
            if len(s):
                s[-1, 2] = 1.0  # the sketch is over: its last stroke ends
        return sketches

    # -- helpers --------------------------------------------------------------------------------

    def _need_encoder(self, what: str) -> None:
        if not self.info.conditional:
            raise ModelError(f"{self.info.name} is a decoder-only model: {what} needs a vae model (with an encoder)")

    def _check_z(self, z: np.ndarray | None) -> np.ndarray:
        arr = np.asarray(z, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != self.info.z_size or len(arr) == 0:
            raise SketchkitError(f"z must have shape (n, {self.info.z_size}), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise SketchkitError("z contains NaN or infinite values")
        return arr

    def _latents(self, items: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each item as a latent vector: 1-D arrays are latents already, 2-D ones are sketches
        to encode (to their mu)."""
        self._need_encoder("latent-space operations")
        arrays = [np.asarray(x) for x in items]
        if any(a.ndim not in (1, 2) for a in arrays):
            raise SketchkitError("expected stroke-3 sketches (n, 3) or latent vectors (Nz,)")
        to_encode = [i for i, a in enumerate(arrays) if a.ndim == 2]
        out = [self._check_z(a[None])[0] if a.ndim == 1 else None for a in arrays]
        if to_encode:
            mu, _ = self.encode([arrays[i] for i in to_encode])
            for i, m in zip(to_encode, mu, strict=True):
                out[i] = m
        return [np.asarray(o, np.float32) for o in out]


def _interpolation(method: str):
    try:
        return INTERPOLATIONS[method]
    except KeyError:
        raise SketchkitError(f"unknown interpolation {method!r} (choose lerp or slerp)") from None


def _rngs(seed: int | None) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams for z and for the steps: `generate(n, seed=s)` decodes exactly the
    z that it draws, as `decode(z, seed=s)` would."""
    z_seq, step_seq = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(z_seq), np.random.default_rng(step_seq)
