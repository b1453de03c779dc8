"""sketchkit's `Runtime` protocol over a PyTorch `SketchRNN`: the training previews sample with
the same engine as the client and the Triton generate model (`sketchkit.engine`), so the
temperature rule, S_0, the early stop and what a seed means are written once.

Torch stays out of `sketchkit`: this adapter lives here, beside the model.
"""

from __future__ import annotations

import numpy as np
import torch

from sketchkit.modelinfo import ModelInfo
from sketchkit.zoo.model import SketchRNN


def model_info(
    model: SketchRNN, name: str, scale_factor: float, max_seq_len: int, **fields: object
) -> ModelInfo:
    """The model.json of a SketchRNN (its `dims` as they are); `fields` sets the rest (source,
    license, metrics, ...)."""
    return ModelInfo(
        name=name,
        dims=model.dims,
        scale_factor=float(scale_factor),
        max_seq_len=int(max_seq_len),
        **fields,  # type: ignore[arg-type]
    )


class TorchRuntime:
    """The step-wise graphs evaluated by the torch model itself (eval mode, no autograd).

    scale_factor 1.0 (default): sketches come back in the model's normalised units.
    """

    def __init__(
        self, model: SketchRNN, name: str = "training", scale_factor: float = 1.0, max_seq_len: int = 250
    ) -> None:
        self.model = model
        self.info = model_info(model, name, scale_factor, max_seq_len)
        self.device = model.head.weight.device

    def _tensor(self, array: np.ndarray | None) -> torch.Tensor | None:
        return None if array is None else torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    @torch.no_grad()
    def encode(self, strokes: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, presig = self.model.encode(self._tensor(strokes), self._tensor(lengths))  # type: ignore[arg-type]
        return mu.cpu().numpy(), presig.cpu().numpy()

    @torch.no_grad()
    def init_state(self, z: np.ndarray | None, batch: int) -> np.ndarray:
        return self.model.init_state(self._tensor(z), batch).cpu().numpy()

    @torch.no_grad()
    def step(
        self, prev: np.ndarray, z: np.ndarray | None, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        params, next_state = self.model.step(self._tensor(prev), self._tensor(z), self._tensor(state))  # type: ignore[arg-type]
        return params.float().cpu().numpy(), next_state.float().cpu().numpy()

    def close(self) -> None:
        pass
