"""The one decode loop: many requests' sketches advanced together, one graph evaluation per step.

The split is vllm's. The `Scheduler` only decides who steps: requests wait in a queue and are
admitted while their rows fit a budget; it never runs the model. The `Engine` runs the runtime's
decoder step once for the live rows of every running request, samples each row with its own
request's temperature and random generator, drops rows that drew p3 (end of sketch) and hands
back the requests that are finished. A request added mid-flight joins at the next step.

Every caller drives this loop: `Sampler` (one request, stepped until done), the Triton
`<name>_generate` model (a background thread stepping whatever is in flight) and the training
previews (`zoo.runtime_torch`). Each request draws exactly what the old single-request loop drew
for it, a fixed-shape block per step from its own `numpy.random.Generator`, so its sketches are
the same bit for bit whatever else is in flight (as long as the runtime computes each row
independently of the others, as onnxruntime's CPU kernels do).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sketchkit.errors import ModelError, SketchkitError
from sketchkit.mixture import Draws, draw_points, temperature
from sketchkit.runtime import Runtime

_ONE_HOT = np.eye(3, dtype=np.float32)


class EngineBusy(SketchkitError):
    """More sketches are in flight than the engine accepts (backpressure): retry later."""


class Cancelled(SketchkitError):
    """The caller went away (`Request.is_cancelled`); its rows were dropped."""


@dataclass(eq=False)
class Request:
    """One caller's n sketches in flight, all from the same start (or the same partial sketch).

    prev [n, 5], z [n, Nz] | None and state [n, S] | None (None: the engine makes the initial
    state from z when it admits the request). rng: this request's generator for the steps (None
    with greedy). max_len: steps before a row is cut. scale_factor: normalised -> pixel units.
    """

    prev: np.ndarray
    z: np.ndarray | None
    state: np.ndarray | None
    tau: float
    rule: str
    greedy: bool
    max_len: int
    rng: np.random.Generator | None
    scale_factor: float
    is_cancelled: Callable[[], bool] = lambda: False  # a caller that went away frees its rows
    on_done: Callable[[Request], None] | None = None  # called from the stepping thread
    # -- progress (the engine's) ------------------------------------------------------------
    t: int = 0  # steps taken
    error: SketchkitError | None = None  # why the request failed (raised by `sketches`)
    out: np.ndarray = field(init=False, repr=False)  # [n, max_len, 3] stroke-3, normalised
    lengths: np.ndarray = field(init=False)  # [n]
    rows: np.ndarray = field(init=False)  # original index of each live row

    def __post_init__(self) -> None:
        n = len(self.prev)
        self.out = np.zeros((n, self.max_len, 3), np.float32)
        self.lengths = np.full(n, self.max_len)
        self.rows = np.arange(n)

    @property
    def n(self) -> int:
        return len(self.out)

    @property
    def live(self) -> int:
        return len(self.rows)

    @property
    def done(self) -> bool:
        return self.error is not None or self.live == 0 or self.t >= self.max_len

    def sketches(self) -> list[np.ndarray]:
        """The finished sketches in pixel units; raises the request's error, if it failed."""
        if self.error is not None:
            raise self.error
        out = self.out.copy()
        out[:, :, :2] *= self.scale_factor
        sketches = [out[i, : self.lengths[i]].copy() for i in range(self.n)]  # own arrays, not views
        for s in sketches:
            if len(s):
                s[-1, 2] = 1.0  # the sketch is over: its last stroke ends
        return sketches


class Scheduler:
    """Who steps next: FIFO admission while the running rows fit `max_rows` (a request larger
    than the budget runs alone rather than never). Never runs the model. Thread-safe `add`."""

    def __init__(self, max_rows: int = 1024, max_pending_rows: int | None = None) -> None:
        self.max_rows = max_rows
        self.max_pending_rows = max_pending_rows  # waiting + running; None = unbounded
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._lock = threading.Lock()

    def rows_in_flight(self) -> int:
        return sum(r.live for r in self.running) + sum(r.n for r in self.waiting)

    def add(self, request: Request) -> None:
        with self._lock:
            if self.max_pending_rows is not None and self.rows_in_flight() + request.n > self.max_pending_rows:
                raise EngineBusy(
                    f"busy: {self.rows_in_flight()} sketches in flight, at most {self.max_pending_rows} "
                    "(retry later)"
                )
            self.waiting.append(request)

    def admit(self) -> list[Request]:
        """Move waiting requests to running while they fit; returns the admitted ones."""
        admitted = []
        with self._lock:
            rows = sum(r.live for r in self.running)
            while self.waiting and (rows + self.waiting[0].n <= self.max_rows or not self.running and not admitted):
                request = self.waiting.popleft()
                admitted.append(request)
                rows += request.n
        self.running += admitted
        return admitted

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)


class Engine:
    """Steps a runtime for all running requests at once; `step()` returns the finished ones."""

    def __init__(self, runtime: Runtime, scheduler: Scheduler | None = None) -> None:
        self.runtime = runtime
        self.info = runtime.info
        self.scheduler = scheduler or Scheduler()
        self.evaluations = 0  # graph evaluations (steps) so far
        self.rows_stepped = 0  # sum of the batch sizes of those evaluations

    def add(self, request: Request) -> None:
        self.scheduler.add(request)

    def run(self, request: Request) -> list[np.ndarray]:
        """One request on its own, stepped until done: its sketches (pixel units)."""
        self.add(request)
        while not request.done:
            self.step()
        return request.sketches()

    def step(self) -> list[Request]:
        """Admit, evaluate the decoder once for every live row, sample, retire; the requests
        that finished (or failed, or were cancelled) in this step."""
        finished = []
        for request in self.scheduler.admit():
            if request.state is None:
                try:
                    request.state = self.runtime.init_state(request.z, request.n)
                except SketchkitError as e:
                    request.error = e
        running = []
        for request in self.scheduler.running:
            if request.error is None and request.is_cancelled():
                request.error = Cancelled("cancelled")
            (finished if request.done else running).append(request)
        if running:
            finished += self._advance(running)
        self.scheduler.running = [r for r in self.scheduler.running if not r.done]
        for request in finished:
            if request.on_done is not None:
                request.on_done(request)
        return finished

    def _advance(self, running: list[Request]) -> list[Request]:
        prev = np.concatenate([r.prev for r in running])
        state = np.concatenate([r.state for r in running])  # type: ignore[misc]
        z = np.concatenate([r.z for r in running]) if self.info.conditional else None  # type: ignore[misc]
        try:
            params, next_state = self.runtime.step(prev, z, state)
        except SketchkitError as e:  # the runtime failed: every request in this step fails
            for r in running:
                r.error = e
            return running
        self.evaluations += 1
        self.rows_stepped += len(prev)
        bounds = np.cumsum([0] + [r.live for r in running])
        M = self.info.num_mixture
        # the random numbers and temperatures of every row, each request from its own generator
        sampled: list[int] = []  # indices into `running` of the non-greedy requests
        gumbel, normal, divs, sigs = [], [], [], []
        for i, r in enumerate(running):
            if not np.isfinite(params[bounds[i] : bounds[i + 1]]).all():
                r.error = ModelError(f"{self.info.name}: the model produced NaN or infinite parameters at step {r.t}")
                continue
            if r.greedy:
                continue
            draws = Draws.draw(r.rng, r.n, M)  # type: ignore[arg-type]
            if r.live < r.n:
                draws = draws[r.rows]
            div, sig = temperature(r.tau, r.rule)
            sampled.append(i)
            gumbel.append(draws.gumbel)
            normal.append(draws.normal)
            divs.append(np.full((r.live, 1), div))
            sigs.append(np.full((r.live, 1), sig))
        pen = np.zeros(len(prev), np.int64)
        offset = np.zeros((len(prev), 2))
        if sampled:
            idx = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in sampled])
            pen[idx], offset[idx] = draw_points(
                params[idx], np.concatenate(divs), np.concatenate(sigs),
                Draws(np.concatenate(gumbel), np.concatenate(normal)),
            )  # fmt: skip
        greedy = [i for i, r in enumerate(running) if r.greedy and r.error is None]
        if greedy:
            idx = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in greedy])
            pen[idx], offset[idx] = draw_points(params[idx], 1.0, 1.0, None)
        finished = []
        for i, r in enumerate(running):
            if r.error is not None:
                finished.append(r)
                continue
            lo, hi = bounds[i], bounds[i + 1]
            r_pen, r_offset = pen[lo:hi], offset[lo:hi]
            r.out[r.rows, r.t, :2] = r_offset
            r.out[r.rows, r.t, 2] = r_pen == 1
            r.prev = np.empty((r.live, 5), np.float32)
            r.prev[:, :2] = r_offset
            r.prev[:, 2:] = _ONE_HOT[r_pen]
            r.state = next_state[lo:hi]
            ended = r_pen == 2  # p3: the p3 point itself is not part of the sketch
            if ended.any():
                r.lengths[r.rows[ended]] = r.t
                keep = ~ended
                r.rows, r.prev, r.state = r.rows[keep], r.prev[keep], r.state[keep]
                r.z = None if r.z is None else r.z[keep]
            r.t += 1
            if r.done:
                finished.append(r)
        return finished


class BackgroundEngine:
    """An `Engine` stepped by its own thread while requests are in flight (the Triton generate
    model): `submit` queues a request and returns at once; `request.on_done` fires when it is
    finished, from the engine's thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="sketchkit-engine", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> None:
        self.engine.add(request)  # EngineBusy when full
        with self._wake:
            self._wake.notify()

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopped and not self.engine.scheduler.has_work():
                    self._wake.wait()
                if self._stopped:
                    return
            try:
                self.engine.step()
            except Exception as e:  # never let the thread die with requests in flight
                for r in list(self.engine.scheduler.running):
                    if r.error is None:
                        r.error = SketchkitError(f"engine failure: {type(e).__name__}: {e}".splitlines()[0])
                    if r.on_done is not None:
                        r.on_done(r)
                self.engine.scheduler.running = []
