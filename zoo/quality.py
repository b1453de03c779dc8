"""How real are a model's sketches (issue 28): N generated sketches against N real ones of the
class, three ways, all seeded.

- C2ST (Lopez-Paz & Oquab 2017): `sketchnet.TwoSampleNet` (picture + stroke sequence) is trained
  from scratch to tell generated from real on one half of each set and scores the other half; the
  held-out ROC AUC, with DeLong's 95 % interval, is the statistic (0.5 = indistinguishable,
  1.0 = told apart every time).
- FD: the Fréchet distance of the two sets in the feature space of the shipped feature network
  (`sketchnet.FEATURES`, a QuickDraw classifier; see `scripts/train_features.py`).
- Per-sketch statistics (points, strokes, pen-lift fraction, box aspect) with a KS distance each.

The generated sketches come from the one Sampler (`generate`), so they are the sketches that
`sketchkit generate` draws with the same seed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from sketchkit import datasets
from sketchkit.errors import DataError
from sketchkit.quality import inputs
from sketchkit.quality.auc import auc_delong
from sketchkit.quality.frechet import frechet_distance
from sketchkit.quality.stats import compare_stats
from sketchkit.runtimes.base import Runtime
from sketchkit.sampling import Sampler, SamplingOptions
from sketchkit.zoo import sketchnet

C2ST_STEPS = 250  # Adam steps of batch 64 (at least C2ST_MIN_EPOCHS, at most C2ST_MAX_EPOCHS passes over the training half)
C2ST_MIN_EPOCHS = 4
C2ST_MAX_EPOCHS = 100  # bounds the cost of tiny sets (a shipped test model's 24 sketches)


@dataclasses.dataclass
class Quality:
    """One comparison of generated with real sketches."""

    n: int  # sketches of each set compared
    c2st_auc: float
    c2st_low: float
    c2st_high: float
    fd: float
    stats: dict[str, dict[str, float]]
    unfinished: float | None = None  # generated sketches cut at max_len (never ended)
    tau: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line: the numbers a model card or a training log shows."""
        return f"C2ST AUC {self.c2st_auc:.3f} [{self.c2st_low:.3f}, {self.c2st_high:.3f}], FD {self.fd:.2f}"


def c2st(generated: Sequence[np.ndarray], real: Sequence[np.ndarray], seed: int = 0, steps: int = C2ST_STEPS) -> tuple[float, float, float]:
    """(auc, low, high) of the classifier two-sample test on equal-sized sets: each set split in
    halves by `seed`, a fresh `TwoSampleNet` trained on the first halves and scored on the second."""
    n = min(len(generated), len(real))
    if n < 8:
        raise DataError(f"the two-sample test needs at least 8 sketches of each kind, got {n}")
    sketches = list(generated[:n]) + list(real[:n])
    pics = torch.from_numpy(inputs.rasterize(sketches))
    seqs = torch.from_numpy(inputs.sequences(sketches))
    y = np.r_[np.ones(n, np.float32), np.zeros(n, np.float32)]
    rng = np.random.default_rng(seed)
    halves = [rng.permutation(n), rng.permutation(n) + n]
    train = np.concatenate([h[: n // 2] for h in halves])
    test = np.concatenate([h[n // 2 :] for h in halves])
    epochs = min(C2ST_MAX_EPOCHS, max(C2ST_MIN_EPOCHS, -(-steps * 64 // len(train))))
    torch.manual_seed(seed)  # the initial weights too
    net = sketchnet.TwoSampleNet()
    sketchnet.fit(
        net, lambda idx: (pics[train[idx]], seqs[train[idx]]), y[train],
        F.binary_cross_entropy_with_logits, epochs, seed,
    )  # fmt: skip
    scores = sketchnet.predict(net, [pics[test], seqs[test]]).numpy()
    return auc_delong(scores[y[test] == 1], scores[y[test] == 0])


def compare(
    generated: Sequence[np.ndarray], real: Sequence[np.ndarray], seed: int = 0, feature_net: torch.nn.Module | None = None
) -> Quality:
    """All three measures on two sets of stroke-3 sketches (any units: each is scaled to its box)."""
    start = time.perf_counter()
    n = min(len(generated), len(real))
    generated, real = list(generated[:n]), list(real[:n])
    auc, low, high = c2st(generated, real, seed)
    net = feature_net or sketchnet.load_features()
    fd = frechet_distance(sketchnet.features(net, generated), sketchnet.features(net, real))
    stats = compare_stats(generated, real)
    return Quality(n, auc, low, high, fd, stats, seconds=time.perf_counter() - start)


def generate(runtime: Runtime, n: int, tau: float, seed: int, start: tuple[float, ...] | None = None) -> list[np.ndarray]:
    """n sketches through the one Sampler (engine), in pixel units."""
    options = SamplingOptions(tau=tau, seed=seed, start_token=start)
    return Sampler(runtime).generate(n, options=options)


def unfinished(sketches: Sequence[np.ndarray], max_len: int) -> float:
    """The fraction of sketches cut at max_len (they never drew the end token)."""
    return float(np.mean([len(s) >= max_len for s in sketches])) if len(sketches) else 0.0


def evaluate_samples(
    runtime: Runtime, real: Sequence[np.ndarray], n: int, tau: float = 0.5, seed: int = 0,
    start: tuple[float, ...] | None = None, feature_net: torch.nn.Module | None = None,
) -> Quality:  # fmt: skip
    """Draw n sketches from `runtime` at `tau` and compare them with n of `real`."""
    t0 = time.perf_counter()
    gen = generate(runtime, n, tau, seed, start)
    q = compare(gen, real[:n], seed, feature_net)
    return dataclasses.replace(
        q, unfinished=unfinished(gen, runtime.info.max_seq_len), tau=tau, seconds=time.perf_counter() - t0
    )


def real_sketches(path: str | Path, n: int, seed: int = 0) -> list[np.ndarray]:
    """n real sketches from a sketch-rnn .npz (its test split first, then valid, then train) or a
    QuickDraw .ndjson, shuffled by `seed` (fewer when the file has fewer)."""
    path = Path(path)
    if path.suffix == ".npz":
        ds = datasets.load_npz(path)
        pool = [*ds.test, *ds.valid, *ds.train][: max(n, 1)]
    elif path.suffix == ".ndjson":
        pool = [datasets.drawing_to_stroke3(d) for d in datasets.read_ndjson(path)]
    else:
        raise DataError(f"{path}: expected a .npz or .ndjson file of real sketches")
    pool = [np.asarray(s, np.float32) for s in pool if len(s)]
    if len(pool) < 8:
        raise DataError(f"{path}: {len(pool)} sketches, the comparison needs at least 8")
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[i] for i in order[:n]]
