"""Evaluation as in the paper's Table 1: L_R and L_KL of a split, averaged over its sketches.

The KL is reported twice: raw (Eq. 10, what Eq. 14 and our early stopping use) and floored
max(L_KL, KL_min) (what magenta's evaluation prints; Table 1's smallest KL is exactly 0.20).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from sketchkit import strokes
from sketchkit.zoo.checkpoint import load
from sketchkit.zoo.config import Recipe
from sketchkit.zoo.data import load_data
from sketchkit.zoo.model import SketchRNN


@torch.no_grad()
def evaluate(
    model: SketchRNN,
    sketches: Sequence[np.ndarray],
    hp: Recipe,
    batch_size: int = 100,
    seed: int = 1234,
) -> dict[str, float]:
    """Loss terms over normalised stroke-3 `sketches`, z drawn with a fixed seed (Eq. 2)."""
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    sums = {"ls": 0.0, "lp": 0.0, "kl": 0.0}
    for i in range(0, len(sketches), batch_size):
        chunk = sketches[i : i + batch_size]
        batch, lengths = strokes.to_batch(chunk, hp.max_seq_len)
        losses = model(
            torch.from_numpy(batch).to(device), torch.from_numpy(lengths).to(device), generator=gen
        )
        for k in sums:
            sums[k] += float(getattr(losses, k)) * len(chunk)  # batch means back to sums
    model.train(was_training)
    n = max(len(sketches), 1)
    out = {k: v / n for k, v in sums.items()}
    out["lr"] = out["ls"] + out["lp"]
    out["kl_floored"] = max(out["kl"], hp.kl_min) if hp.dims.vae else 0.0
    out["loss"] = out["lr"] + hp.w_kl * out["kl"]  # Eq. 14 (zoo.loss.eval_loss), raw KL
    return out


def evaluate_checkpoint(path: str, split: str = "test", data: list[str] | None = None) -> dict[str, float]:
    """Load a checkpoint and its dataset (or `data`), normalise with the checkpoint's own scale
    factor, and evaluate one split."""
    model, hp, meta = load(path, device="cuda" if torch.cuda.is_available() else "cpu")
    if data:
        hp = dataclasses.replace(hp, dataset=list(data))
    ds = load_data(hp, scale_factor=meta.get("scale_factor"))
    out = evaluate(model, ds.split(split), hp)
    out.update(n=len(ds.split(split)), step=int(meta.get("step", 0)))
    return out
