"""The seam between the sampling loop and wherever the graphs run (in-process or Triton).

A runtime evaluates the three step-wise graphs of `sketchkit.graphs` on numpy batches and knows
nothing of temperature or randomness; the sampler knows nothing of where the graphs run.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from sketchkit.modelinfo import ModelInfo


@runtime_checkable
class Runtime(Protocol):
    info: ModelInfo

    def encode(self, strokes: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised stroke-5 [B, T, 5] float32 and lengths [B] int64 -> (mu, presig) [B, Nz]."""
        ...

    def init_state(self, z: np.ndarray | None, batch: int) -> np.ndarray:
        """Initial decoder state [B, S]: tanh(W z + b) for vae models, zeros for decoder-only."""
        ...

    def step(
        self, prev: np.ndarray, z: np.ndarray | None, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One decoder step: prev [B, 5], z [B, Nz] | None, state [B, S] -> (params [B, 6M+3], next state)."""
        ...

    def close(self) -> None: ...
