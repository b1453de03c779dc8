"""The losses of the paper (Eq. 9-15), numerically safe: log-densities throughout, log-sum-exp
over the mixture, log(sigma) = sigma-hat (no exp then log), and three clamps that only act far
outside any trained model's range (|sigma-hat| <= 40, |rho| <= 1 - 1e-5, |z-score| <= 1e6) so that
no offset or parameter, however absurd, gives inf or NaN."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

RHO_LIMIT = 1.0 - 1e-5  # keeps 1 - rho^2 >= 2e-5
Z_LIMIT = 1e6  # |dx - mu| / sigma beyond this has density 0 in float32 anyway
LOG_SIGMA_LIMIT = 40.0  # |sigma-hat| <= 40 keeps exp(-sigma-hat) finite (sigma >= 4e-18)
LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class Losses:
    """Loss terms averaged over a batch: L_s, L_p (Eq. 9) and the raw L_KL (Eq. 10)."""

    ls: torch.Tensor
    lp: torch.Tensor
    kl: torch.Tensor

    @property
    def lr(self) -> torch.Tensor:
        return self.ls + self.lp  # L_R


def split_params(params: torch.Tensor, num_mixture: int) -> tuple[torch.Tensor, ...]:
    """(..., 6M+3) -> pen logits (..., 3) and pi logits, mu_x, mu_y, sigma-hat_x, sigma-hat_y,
    rho-hat (..., M) each (Eq. 5; the column order is Magenta's)."""
    pen = params[..., :3]
    return (pen, *params[..., 3:].split(num_mixture, dim=-1))


def mixture_log_prob(params: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """log p(dx, dy) under the Gaussian mixture of Eq. 3, params (..., 6M+3), dx, dy (...)."""
    M = (params.shape[-1] - 3) // 6
    _, pi, mu_x, mu_y, ls_x, ls_y, rho_hat = split_params(params, M)
    ls_x = ls_x.clamp(-LOG_SIGMA_LIMIT, LOG_SIGMA_LIMIT)
    ls_y = ls_y.clamp(-LOG_SIGMA_LIMIT, LOG_SIGMA_LIMIT)
    rho = torch.tanh(rho_hat).clamp(-RHO_LIMIT, RHO_LIMIT)  # Eq. 6
    zx = ((dx.unsqueeze(-1) - mu_x) * torch.exp(-ls_x)).clamp(-Z_LIMIT, Z_LIMIT)
    zy = ((dy.unsqueeze(-1) - mu_y) * torch.exp(-ls_y)).clamp(-Z_LIMIT, Z_LIMIT)
    one_m_rho2 = 1.0 - rho * rho
    # log N(dx, dy | mu, sigma, rho) of the bivariate normal, with log sigma = sigma-hat (Eq. 6)
    log_n = (
        -LOG_2PI
        - ls_x
        - ls_y
        - 0.5 * torch.log(one_m_rho2)
        - (zx * zx + zy * zy - 2.0 * rho * zx * zy) / (2.0 * one_m_rho2)
    )
    return torch.logsumexp(F.log_softmax(pi, dim=-1) + log_n, dim=-1)  # Eq. 7 for Pi


def reconstruction_loss(
    params: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_s and L_p of Eq. 9, averaged over the batch.

    params (B, N_max, 6M+3) predict target (B, N_max, 5) = S_1..S_N_max. L_s sums over the N_s
    real points only; L_p over all N_max points (so the model learns to stop); both are divided
    by N_max.
    """
    B, N_max, _ = target.shape
    real = torch.arange(N_max, device=target.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, N_max)
    log_p = mixture_log_prob(params, target[..., 0], target[..., 1])  # (B, N_max)
    ls = -(log_p * real).sum(1) / N_max
    pen_logp = F.log_softmax(params[..., :3], dim=-1)  # Eq. 7 for q
    lp = -(target[..., 2:] * pen_logp).sum((1, 2)) / N_max
    return ls.mean(), lp.mean()


def kl_loss(mu: torch.Tensor, presig: torch.Tensor) -> torch.Tensor:
    """L_KL of Eq. 10: KL(N(mu, sigma) || N(0, I)) divided by N_z, averaged over the batch."""
    return (-0.5 * (1.0 + presig - mu * mu - torch.exp(presig))).mean()


def kl_weight(step: int, eta_min: float, decay: float) -> float:
    """eta_step = 1 - (1 - eta_min) R^step (Eq. 15)."""
    return 1.0 - (1.0 - eta_min) * decay**step


def train_loss(
    losses: Losses,
    step: int,
    w_kl: float,
    kl_min: float,
    eta_min: float,
    decay: float,
    kl_batch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loss_train = L_R + w_KL eta_step max(L_KL, KL_min) (Eq. 15). `kl_batch`: the whole batch's
    L_KL when `losses` are one rank's shard of it (torchrun): the floor is the batch's, as in one
    process, and the gradient flows through this shard's L_KL only where the batch's is above it."""
    eta = kl_weight(step, eta_min, decay)
    kl_batch = losses.kl.detach() if kl_batch is None else kl_batch
    return losses.lr + w_kl * eta * torch.where(kl_batch >= kl_min, losses.kl, kl_min)


def eval_loss(losses: Losses, w_kl: float) -> torch.Tensor:
    """Loss = L_R + w_KL L_KL (Eq. 14, raw KL, no annealing): validation, test, early stopping."""
    return losses.lr + w_kl * losses.kl
