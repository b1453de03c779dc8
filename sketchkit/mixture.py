"""The distribution of the next point (paper Eq. 3, 5-8), for a batch, written out.

Pure numpy on the raw mixture parameters a decoder step returns: the temperature rules and the
mixture itself, for analysis and tests. The draw from it is a graph (`sketchkit.draw`), the one
definition every sampler runs; `sketchkit.sampling` re-exports the public names here.
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
    what `sketchkit.draw` draws from, written out for analysis and tests."""

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
