"""The small networks that judge sketches (issue 28), and their one training loop.

- `RasterNet`: a 3-layer CNN on 28 x 28 pictures (`sketchkit.quality.inputs.rasterize`).
- `SeqNet`: a 1-D CNN on bounding-box-scaled stroke-5 (`inputs.sequences`): it sees drawing
  order, point spacing and pen lifts, which the picture cannot.
- `FeatureNet` (RasterNet + a 345-way head): the Fréchet distance's feature space. It is trained
  by `python scripts/train_features.py` on ../shared/data/quickdraw/simplified-25 (20 drawings of
  each of QuickDraw's 345 classes, 5 held out) and ships as `zoo/features/sketchnet.safetensors`.
- `TwoSampleNet` (RasterNet + SeqNet + a logit): the classifier two-sample test's network, trained
  from scratch on each comparison.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from sketchkit.errors import ModelError
from sketchkit.quality import inputs

FEATURES = Path(__file__).parent / "features" / "sketchnet.safetensors"


class RasterNet(nn.Module):
    """[B, 28, 28] pictures -> [B, width] features (ReLU); `channels` of the first convolution
    (doubled twice)."""

    def __init__(self, width: int = 128, channels: int = 16) -> None:
        super().__init__()
        c = channels
        self.c1 = nn.Conv2d(1, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.c3 = nn.Conv2d(2 * c, 4 * c, 3, padding=1)
        self.fc = nn.Linear(4 * c, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c1(x[:, None])), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        x = F.relu(self.c3(x)).mean(dim=(2, 3))
        return F.relu(self.fc(x))


class SeqNet(nn.Module):
    """[B, T, 5] stroke-5 -> [B, 2 * width] features: dilated 1-D convolutions, max and mean over time."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(5, width, 5, padding=2)
        self.c2 = nn.Conv1d(width, width, 5, padding=4, dilation=2)
        self.c3 = nn.Conv1d(width, width, 5, padding=8, dilation=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x))
        x = F.relu(self.c3(x))
        return torch.cat([x.amax(dim=2), x.mean(dim=2)], dim=1)


class FeatureNet(nn.Module):
    def __init__(self, classes: int, width: int = 128) -> None:
        super().__init__()
        self.raster = RasterNet(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.raster(x))


class TwoSampleNet(nn.Module):
    """Picture and sequence -> one logit (generated vs real)."""

    def __init__(self, channels: int = 8, width: int = 24) -> None:
        super().__init__()
        self.raster = RasterNet(32, channels)
        self.seq = SeqNet(width)
        self.head = nn.Linear(32 + 2 * width, 1)

    def forward(self, pics: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.raster(pics), self.seq(seqs)], dim=1))[:, 0]


def fit(
    net: nn.Module,
    batches: Callable[[np.ndarray], tuple[torch.Tensor, ...]],
    labels: np.ndarray,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    epochs: int,
    seed: int,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
) -> nn.Module:
    """Adam on minibatches in an order fixed by `seed`; `batches(idx)` gives the inputs of rows idx
    (so augmentation can draw fresh pictures per epoch). Seed torch before making `net`: then the
    same seed gives the same network."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    y = torch.from_numpy(labels)
    net.train()
    for _ in range(epochs):
        order = rng.permutation(len(labels))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            opt.zero_grad()
            loss(net(*batches(idx)), y[idx]).backward()
            opt.step()
    net.eval()
    return net


@torch.no_grad()
def predict(net: nn.Module, tensors: Sequence[torch.Tensor], batch_size: int = 512) -> torch.Tensor:
    net.eval()
    n = len(tensors[0])
    return torch.cat([net(*(t[i : i + batch_size] for t in tensors)) for i in range(0, n, batch_size)])


# ---- the feature network -------------------------------------------------------------------


def augment(s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A sketch stretched (x, y by 0.85..1.15) and turned (+-12 degrees): the same drawing."""
    a = np.deg2rad(rng.uniform(-12, 12))
    m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.diag(rng.uniform(0.85, 1.15, 2))
    out = np.asarray(s, np.float64).copy()
    out[:, :2] = out[:, :2] @ m.T
    return out


def train_features(
    sketches: Sequence[np.ndarray], labels: np.ndarray, classes: int, epochs: int = 30, seed: int = 0
) -> FeatureNet:
    """The feature network, trained as a classifier on freshly augmented pictures each epoch."""
    rng = np.random.default_rng(seed + 1)
    torch.manual_seed(seed)
    net = FeatureNet(classes)

    def batches(idx: np.ndarray) -> tuple[torch.Tensor]:
        return (torch.from_numpy(inputs.rasterize([augment(sketches[i], rng) for i in idx])),)

    return fit(net, batches, labels.astype(np.int64), F.cross_entropy, epochs, seed)  # type: ignore[return-value]


def save_features(net: FeatureNet, path: Path, meta: dict[str, object]) -> None:
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in net.raster.state_dict().items()}
    save_file(state, str(path), metadata={"sketchkit": json.dumps(meta)})


def load_features(path: Path = FEATURES) -> RasterNet:
    """The shipped feature network's picture half (float16 weights, computed in float32)."""
    if not path.is_file():
        raise ModelError(f"{path}: no feature network (build it: python scripts/train_features.py)")
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    net = RasterNet(state["fc.weight"].shape[0], state["c1.weight"].shape[0])
    net.load_state_dict(state)
    return net.eval()


@torch.no_grad()
def features(net: RasterNet, sketches: Sequence[np.ndarray]) -> np.ndarray:
    """[N, width] float64 features of stroke-3 sketches."""
    return predict(net, [torch.from_numpy(inputs.rasterize(sketches))]).double().numpy()
