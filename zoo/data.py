"""Training data: a recipe's datasets loaded, clamped, filtered and normalised (paper A.1).

Torch-free, so evaluation and shipping use it without the training loop (`sketchkit.zoo.train`, which
stands above it)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sketchkit import strokes
from sketchkit.datasets import Dataset, concat, load_npz
from sketchkit.errors import SketchkitError
from sketchkit.io import sha256_file
from sketchkit.zoo.config import Recipe


@dataclass
class TrainData:
    """Normalised stroke-3 splits and what a checkpoint must remember about them."""

    train: list[np.ndarray]
    valid: list[np.ndarray]
    test: list[np.ndarray]
    scale_factor: float
    dataset_sha256: str
    datasets: list[str]
    classes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[np.ndarray]:
        if name not in ("train", "valid", "test"):
            raise SketchkitError(f"unknown split {name!r} (choose from train, valid, test)")
        return getattr(self, name)


def load_data(hp: Recipe, scale_factor: float | None = None) -> TrainData:
    """Load the recipe's datasets (several = multi-class), clamp offsets to +-offset_limit (as
    magenta's loader), drop sketches longer than max_seq_len, and normalise by the scale factor
    = std of all train offsets (paper A.1), or by `scale_factor` when given (evaluation)."""
    if not hp.dataset:
        raise SketchkitError("the recipe names no dataset")
    parts = [load_npz(p) for p in hp.dataset]
    names = [Path(p).stem for p in hp.dataset]
    ds: Dataset = parts[0] if len(parts) == 1 else concat(parts, names)
    hashes = [sha256_file(p) for p in hp.dataset]
    digest = hashes[0] if len(hashes) == 1 else _sha256_text("\n".join(hashes))

    def prep(split: list[np.ndarray]) -> list[np.ndarray]:
        return strokes.filter_by_length([strokes.clamp(s, hp.offset_limit) for s in split], hp.max_seq_len)

    train, valid, test = prep(ds.train), prep(ds.valid), prep(ds.test)
    if not train or not valid:
        raise SketchkitError(f"no train or valid sketches of at most {hp.max_seq_len} points")
    factor = strokes.scale_factor(train) if scale_factor is None else float(scale_factor)
    return TrainData(
        train=[strokes.normalize(s, factor) for s in train],
        valid=[strokes.normalize(s, factor) for s in valid],
        test=[strokes.normalize(s, factor) for s in test],
        scale_factor=factor,
        dataset_sha256=digest,
        datasets=[Path(p).name for p in hp.dataset],
        classes=ds.classes or names,
    )


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
