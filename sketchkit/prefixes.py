"""A completion's partial sketch, read by the engine after admission (`sketchkit.engine`).

Each request with a `prefix` is one host row while it reads (prev, z, state): every engine step
evaluates the plain decoder step once for all readers together, one point each. Then its n rows
branch from the state that reading left and join the engine's row table like any others. So a
prefix is queued, capped and batched like every other row, and nothing that receives a request
(the Triton model's `execute`) runs a graph for it. The same reading, one row and the plain step,
that `Sampler.complete` always did, so a seed's completions keep their bits.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from sketchkit.errors import SketchkitError
from sketchkit.runtimes.base import Runtime


class Reading(Protocol):
    """What a reader needs of an engine request (`sketchkit.engine.Request`)."""

    prefix: np.ndarray | None
    prev: np.ndarray
    z: np.ndarray | None
    state: np.ndarray | None
    n: int
    error: SketchkitError | None


class PrefixReaders:
    """Requests reading their prefix: one host row each (prev, z, state), stepped together with
    the runtime's plain decoder step. Row i reads `reads[offset[i] + pos[i]]`: prev[0], then the
    prefix's points but its last (from which the n rows sample on)."""

    def __init__(self) -> None:
        self.requests: list[Reading] = []
        self.reads = np.zeros((0, 5), np.float32)
        self.offset = np.zeros(0, np.intp)
        self.length = np.zeros(0, np.intp)
        self.pos = np.zeros(0, np.intp)
        self.z: np.ndarray | None = None
        self.state = np.zeros((0, 0), np.float32)

    def add(self, r: Reading, runtime: Runtime) -> None:
        """Start reading r's prefix: its latent first (vae models), then its initial state."""
        assert r.prefix is not None
        prefix = np.asarray(r.prefix, np.float32)
        try:
            z1 = None
            if runtime.info.dims.vae:
                mu, _ = runtime.encode(prefix[None], np.array([len(prefix)], np.int64))
                z1 = np.asarray(mu, np.float32)
                r.z = np.repeat(z1, r.n, axis=0)
            state = np.asarray(runtime.init_state(z1, 1))
        except SketchkitError as e:
            r.error = e
            return
        reads = np.vstack([np.asarray(r.prev, np.float32)[:1], prefix[:-1]])
        self.offset = np.append(self.offset, len(self.reads))
        self.reads = np.concatenate([self.reads, reads])
        self.length = np.append(self.length, len(reads))
        self.pos = np.append(self.pos, 0)
        if z1 is not None:
            self.z = z1 if self.z is None else np.concatenate([self.z, z1])
        self.state = state if not len(self.requests) else np.concatenate([self.state, state])
        self.requests.append(r)

    def step(self, runtime: Runtime) -> None:
        reading = self.pos < self.length
        if not reading.any():
            return
        rows = np.flatnonzero(reading)
        z = self.z[rows] if self.z is not None else None
        _, state = runtime.step(self.reads[self.offset[rows] + self.pos[rows]], z, self.state[rows])
        self.state[rows] = state
        self.pos[rows] += 1

    def done(self) -> bool:
        return bool(len(self.requests)) and bool((self.pos >= self.length).any())

    def pop_done(self) -> list[Reading]:
        """The requests whose prefix is read, their rows ready to join the table (prev: the
        prefix's last point; state: the one reading left, one copy per row)."""
        done = self.pos >= self.length
        out = []
        for i in np.flatnonzero(done):
            r = self.requests[i]
            assert r.prefix is not None
            r.prev = np.repeat(np.asarray(r.prefix, np.float32)[-1:], r.n, axis=0)
            r.state = np.repeat(self.state[i : i + 1], r.n, axis=0)
            out.append(r)
        self._keep(~done)
        return out

    def remove(self, r: Reading) -> None:
        keep = np.array([x is not r for x in self.requests], bool)
        if not keep.all():
            self._keep(keep)

    def _keep(self, keep: np.ndarray) -> None:
        index = np.flatnonzero(keep)
        self.requests = [self.requests[i] for i in index]
        parts = [self.reads[o : o + n] for o, n in zip(self.offset[index], self.length[index], strict=True)]
        self.reads = np.concatenate(parts) if parts else np.zeros((0, 5), np.float32)
        self.length, self.pos = self.length[index], self.pos[index]
        self.offset = np.concatenate([[0], np.cumsum(self.length)[:-1]]).astype(np.intp) if len(index) else self.length.copy()
        self.state = self.state[index]
        self.z = self.z[index] if self.z is not None else None
