"""The engine's row table: what the step graph reads and writes for every live row.

Columns (aligned, one entry per live row): the inputs of the step graph (`sketchkit.graphs`
DECODER_STEP_DRAW): prev [B, 5], z [B, Nz] (vae models), state [B, S], temperature [B, 2]
(divisor of the logits, factor on sigma: Eq. 8), greedy [B] bool and counter [B] uint64 (the
row's place in its random stream, `sketchkit.draw`). The engine only ever appends
rows, keeps a subset in order, and steps; so the table can live where the graph runs. `HostRows`
keeps numpy arrays (every CPU runtime, Triton's step loop, the torch previews); a runtime that
runs on a device offers its own table (`OnnxRuntime.row_table()` on CUDA: the columns stay in
GPU memory and only the step's points come back).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from sketchkit.draw import run_draw
from sketchkit.runtimes.base import Runtime


class RowTable(Protocol):
    def __len__(self) -> int: ...

    def append(self, columns: dict[str, np.ndarray]) -> None:
        """New rows at the end (host arrays, one per column; z only for vae models)."""
        ...

    def keep(self, index: np.ndarray) -> None:
        """Keep the rows at `index` (increasing), drop the others."""
        ...

    def step(self) -> np.ndarray:
        """One decoder step and draw for every row: the drawn points [B, 5] (dx, dy, p1, p2, p3)
        on the host; prev, state and counter move on in the table."""
        ...


def row_table(runtime: Runtime) -> RowTable:
    """The runtime's own table if it keeps rows on a device, else a host one."""
    own = getattr(runtime, "row_table", None)
    table = own() if callable(own) else None
    return table if table is not None else HostRows(runtime)


class HostRows:
    """The row table as numpy arrays. Steps with the runtime's `step_and_draw` (one graph) when it
    has one, else with its `step` and then the draw graph on the CPU."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.columns: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.columns["prev"]) if self.columns else 0

    def append(self, columns: dict[str, np.ndarray]) -> None:
        if not self.columns:  # an empty table takes the rows as they are: a state need not be
            self.columns = dict(columns)  # [B, S] float32 (the stateful Triton step hands out handles)
        else:
            self.columns = {k: np.concatenate([v, columns[k]]) for k, v in self.columns.items()}

    def keep(self, index: np.ndarray) -> None:
        self.columns = {k: v[index] for k, v in self.columns.items()}

    def step(self) -> np.ndarray:
        c = self.columns
        fused = getattr(self.runtime, "step_and_draw", None)
        if callable(fused):
            point, c["state"], c["counter"] = fused(c["prev"], c.get("z"), c["state"], c["temperature"], c["greedy"], c["counter"])
        else:
            params, c["state"] = self.runtime.step(c["prev"], c.get("z"), c["state"])
            point, c["counter"] = run_draw(np.asarray(params, np.float32), c["temperature"], c["greedy"], c["counter"])
        c["prev"] = point
        return point
