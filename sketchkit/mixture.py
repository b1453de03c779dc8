"""The distribution of the next point and one draw from it (paper Eq. 3, 5-8), for a batch.

Pure numpy on the raw mixture parameters a decoder step returns: the temperature rules, the
mixture written out, the random numbers of one step and the draw itself. `sketchkit.engine`
samples every step with `draw_points`; `sketchkit.sampling` re-exports the public names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sketchkit.errors import SketchkitError


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
        exponential, normal = np.empty((n, 3 + num_mixture)), np.empty((n, 2))
        cls.fill(rng, exponential, normal)
        return cls(-np.log(exponential), normal)  # Gumbel(0, 1) = -log Exp(1), 4x faster than rng.gumbel

    @staticmethod
    def fill(rng: np.random.Generator, exponential: np.ndarray, normal: np.ndarray) -> None:
        """The raw numbers of one step, in place: Exp(1) [n, 3 + M] (the Gumbel noise is
        -log of it), then N(0, 1) [n, 2]. The order of the two draws is what a seed means."""
        rng.standard_exponential(out=exponential)
        rng.standard_normal(out=normal)

    def __getitem__(self, rows: np.ndarray) -> Draws:
        return Draws(self.gumbel[rows], self.normal[rows])


def sample_points(
    params: np.ndarray, tau: float, rule: str, draws: Draws | None
) -> tuple[np.ndarray, np.ndarray]:
    """(pen index [B] in 0..2, offset [B, 2]) drawn from raw `params`; `draws=None` is greedy."""
    if draws is None:
        return draw_points(params, 1.0, 1.0, None)
    div, sig = temperature(tau, rule)
    return draw_points(params, div, sig, draws)


def draw_points(
    params: np.ndarray, div: float | np.ndarray, sig: float | np.ndarray, draws: Draws | None
) -> tuple[np.ndarray, np.ndarray]:
    """`sample_points` with the temperature already applied: `div` and `sig` (see `temperature`)
    are scalars or one per row ([B, 1]), so rows of requests at different temperatures are drawn
    together, each exactly as it would be alone.

    Categorical draws are Gumbel-max (argmax of logits + Gumbel noise): exact, and it cannot fail
    the way an inverse-CDF search does (magenta's returns index -1, silently picking the last
    component or the end of the sketch). Only the chosen component is transformed (Eq. 6): the
    same draw as from `mixture(params, tau, rule)` for a fraction of the work. Greedy: argmax of
    q and of Pi, offset = that component's mean.
    """
    m = (params.shape[1] - 3) // 6
    if draws is None:
        pen_logits, c = _split(params)
        return pen_logits.argmax(axis=1), c[np.arange(len(c)), 1:3, c[:, 0].argmax(axis=1)]
    return _draw(params, m, div, sig, draws.gumbel, draws.normal)


_COMPONENT = np.arange(1, 6)  # mu_x, mu_y, sigma-hat_x, sigma-hat_y, rho-hat: rows 1..5 of the six


def _draw(
    params: np.ndarray, m: int, div: float | np.ndarray, sig: float | np.ndarray, gumbel: np.ndarray, normal: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The draw of `draw_points` in as few array operations as it takes (the engine calls it
    every step for every live row): the same float64 arithmetic, so the same bits. The pen and
    Pi logits are adjacent in `params` ([B, 3 + M]): one division, one addition, two argmaxes."""
    logits = params[:, : 3 + m].astype(np.float64)
    logits /= div
    logits += gumbel
    pen = logits[:, :3].argmax(axis=1)
    j = logits[:, 3:].argmax(axis=1)
    # component j's mu_x, mu_y, sigma-hat_x, sigma-hat_y, rho-hat: columns 3 + k M + j, k = 1..5
    chosen = params[np.arange(len(params))[:, None], (3 + j)[:, None] + m * _COMPONENT].astype(np.float64)
    rho = np.tanh(chosen[:, 4])
    # bivariate normal with correlation rho: y takes rho of x's noise and sqrt(1 - rho^2) of its own
    noise = normal.copy()
    noise[:, 1] = rho * normal[:, 0] + np.sqrt(1.0 - rho * rho) * normal[:, 1]
    offset = np.exp(chosen[:, 2:4])
    offset *= sig
    offset *= noise
    offset += chosen[:, :2]
    return pen, offset
