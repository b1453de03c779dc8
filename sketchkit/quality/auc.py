"""ROC AUC of held-out scores and DeLong's confidence interval (DeLong et al. 1988, with Sun &
Xu's midrank computation): the classifier two-sample test's statistic and its uncertainty,
closed-form, so the same scores always give the same interval."""

from __future__ import annotations

import math

import numpy as np


def _midranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), np.float64)
    i = 0
    while i < len(xs):
        j = i
        while j < len(xs) and xs[j] == xs[i]:
            j += 1
        ranks[order[i:j]] = 0.5 * (i + j - 1) + 1
        i = j
    return ranks


def auc_delong(pos: np.ndarray, neg: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(auc, low, high): P(score of a positive > score of a negative), ties counted half, with
    DeLong's normal interval at `level`, clipped to [0, 1]."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    m, n = len(pos), len(neg)
    if m < 2 or n < 2:
        raise ValueError("auc_delong needs at least 2 scores of each class")
    tz = _midranks(np.concatenate([pos, neg]))
    tx, ty = _midranks(pos), _midranks(neg)
    auc = float((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
    v10 = (tz[:m] - tx) / n  # per positive: the fraction of negatives it beats
    v01 = 1.0 - (tz[m:] - ty) / m  # per negative: the fraction of positives that beat it
    se = math.sqrt(max(v10.var(ddof=1) / m + v01.var(ddof=1) / n, 0.0))
    zq = _normal_quantile(0.5 + level / 2)
    return auc, max(0.0, auc - zq * se), min(1.0, auc + zq * se)


def _normal_quantile(p: float) -> float:
    """Inverse standard normal CDF by bisection on erf (no scipy)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
