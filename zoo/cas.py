"""Classification accuracy score (Ravuri & Vinyals 2019): a classifier trained only on sketches
that models generated, one model per class, then tested on real drawings of those classes. A
class's recall says how well its model's drawings stand in for real ones (a model whose
drawings are off-class or degenerate teaches the classifier nothing that holds on real data).

The classifier is `sketchnet.FeatureNet` (pictures), trained from scratch with a fixed seed.
Recall is also limited by how confusable the classes are: compare models on the same class set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from sketchkit.io import atomic_write
from sketchkit.quality import inputs
from sketchkit.zoo import sketchnet

CAS_EPOCHS = 12


def train_classifier(generated: Mapping[str, Sequence[np.ndarray]], seed: int = 0, epochs: int = CAS_EPOCHS) -> sketchnet.FeatureNet:
    """A classifier of the classes in `generated` (its key order), trained on those sketches alone."""
    names = list(generated)
    sketches = [s for k in names for s in generated[k]]
    labels = np.concatenate([np.full(len(generated[k]), i, np.int64) for i, k in enumerate(names)])
    pics = torch.from_numpy(inputs.rasterize(sketches))
    torch.manual_seed(seed)
    net = sketchnet.FeatureNet(len(names))
    return sketchnet.fit(net, lambda idx: (pics[idx],), labels, F.cross_entropy, epochs, seed)  # type: ignore[return-value]


def recall(net: torch.nn.Module, names: Sequence[str], real: Mapping[str, Sequence[np.ndarray]]) -> dict[str, float]:
    """Per class: the fraction of its real drawings that `net` (trained on `names`) calls that class."""
    out = {}
    for k, sketches in real.items():
        pred = sketchnet.predict(net, [torch.from_numpy(inputs.rasterize(sketches))]).argmax(1).numpy()
        out[k] = float((pred == names.index(k)).mean())
    return out


def cas(
    generated: Mapping[str, Sequence[np.ndarray]], real: Mapping[str, Sequence[np.ndarray]], seed: int = 0
) -> dict[str, float]:
    """Per-class recall on `real` of a classifier trained on `generated` (same keys)."""
    net = train_classifier(generated, seed)
    return recall(net, list(generated), real)


# ---- a cache of generated sets (no pickle: points and lengths) -------------------------------


def cache_key(model: Path, **what: object) -> str:
    h = hashlib.sha256(model.read_bytes())
    h.update(repr(sorted(what.items())).encode())
    return h.hexdigest()[:20]


def save_set(path: Path, sketches: Sequence[np.ndarray]) -> None:
    """Atomically (`sketchkit.io.atomic_write`: a temp file of its own, so two runs filling the
    same cache never write into one temp file)."""
    with atomic_write(path) as f:
        np.savez(f, points=np.concatenate(sketches).astype(np.float32), lengths=np.array([len(s) for s in sketches]))


def load_set(path: Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        points, lengths = f["points"], f["lengths"]
    return np.split(points, np.cumsum(lengths)[:-1])
