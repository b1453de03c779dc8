"""The one decode loop: many requests' sketches advanced together, one graph evaluation per step.

The split is vllm's. The `Scheduler` only decides who steps: requests wait in a queue and are
admitted while their rows fit a budget; it never runs the model. The `Engine` evaluates the
decoder step and the draw (`sketchkit.draw`: one graph) once for the live rows of every running
request, each row at its own request's temperature and from its own random stream, drops rows
that drew p3 (end of sketch) and hands back the requests that are finished. A request added
mid-flight joins at the next step; a completion's partial sketch is read here too, after
admission, batched with every other (`Request.prefix`). With `overlap`, step t + 1 runs while
the host records step t. The rows live in a `sketchkit.rows.RowTable`, on the host or,
with onnxruntime on CUDA, on the GPU.

Every caller drives this loop: `Sampler` (one request, stepped until done), the Triton
`<name>_generate` model (a background thread stepping whatever is in flight) and the training
previews (`zoo.runtime_torch`). A row's random numbers depend only on its request's seed, its row
and the step (`sketchkit.draw.row_keys`), so its sketches are the same bit for bit whatever else
is in flight (as long as the runtime computes each row independently of the others, as
onnxruntime's CPU kernels do).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from sketchkit.errors import ModelError, SketchkitError
from sketchkit.mixture import temperature
from sketchkit.prefixes import PrefixReaders
from sketchkit.rows import RowTable, row_table
from sketchkit.runtimes.base import Runtime

_STROKE3 = np.array([0, 1, 3])  # stroke-5 (dx, dy, p1, p2, p3) -> stroke-3 (dx, dy, p2: the pen lifts)


class EngineBusy(SketchkitError):
    """More sketches are in flight than the engine accepts (backpressure): retry later."""


class Cancelled(SketchkitError):
    """The caller went away (`Request.is_cancelled`); its rows were dropped."""


@dataclass(eq=False)
class Request:
    """One caller's n sketches in flight, all from the same start (or the same partial sketch).

    prev [n, 5], z [n, Nz] | None and state [n, S] | None (None: the engine makes the initial
    state from z when it admits the request). keys: each row's first counter, uint64 [n]
    (`sketchkit.draw.row_keys`; None with greedy). max_len: steps before a row is cut.
    scale_factor: normalised -> pixel units. prefix: a partial sketch (normalised stroke-5, its
    points in order) that the decoder reads first, one row stepped with the plain decoder step
    from prev[0]; the n rows then branch from the state it leaves and sample on from its last
    point (z, for vae models, is the prefix's own latent, encoded when the request is admitted).
    """

    prev: np.ndarray
    z: np.ndarray | None
    state: np.ndarray | None
    tau: float
    rule: str
    greedy: bool
    max_len: int
    keys: np.ndarray | None
    scale_factor: float
    prefix: np.ndarray | None = field(default=None, repr=False)  # [P, 5] normalised stroke-5, see above
    is_cancelled: Callable[[], bool] = lambda: False  # a caller that went away frees its rows
    on_done: Callable[[Request], None] | None = None  # called from the stepping thread
    n: int = field(init=False)  # sketches
    temperature: tuple[float, float] = field(init=False)  # (divisor of the logits, factor on sigma), Eq. 8
    # -- progress (the engine's) ------------------------------------------------------------
    t: int = 0  # steps taken (sampling steps; reading the prefix is none)
    joined: bool = False  # its rows are in the engine's row table (a prefix is read first)
    live: int = field(init=False)  # rows still drawing
    error: SketchkitError | None = None  # why the request failed (raised by `sketches`)
    out: np.ndarray | None = field(default=None, repr=False)  # [n, max_len, 3] stroke-3, normalised, when done
    lengths: np.ndarray | None = None  # [n], when done

    def __post_init__(self) -> None:
        self.n = len(self.prev)
        self.live = self.n
        self.temperature = temperature(self.tau, self.rule) if not self.greedy else (1.0, 1.0)

    @property
    def done(self) -> bool:
        return self.error is not None or self.live == 0 or self.t >= self.max_len

    def sketches(self) -> list[np.ndarray]:
        """The finished sketches in pixel units; raises the request's error, if it failed."""
        if self.error is not None:
            raise self.error
        assert self.out is not None and self.lengths is not None, "the request is not finished"
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
        admitted: list[Request] = []
        if not self.waiting:
            return admitted
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
    """Steps a runtime for all running requests at once; `step()` returns the finished ones.

    The live rows of every running request sit in one table, grouped by request in admission
    order: what the graph reads and writes (prev, z, state, temperature, greedy, counter) in
    `rows`, a `RowTable` that the runtime may keep on its device, and beside it, on the host, each
    row's request, its slot in the output store and its step. A step is one graph
    evaluation (decoder step and draw, `sketchkit.draw`) and a few array operations over the
    union, whatever the number of requests: no per-request work per step.

    overlap: launch step t + 1 before the host's bookkeeping of step t (storing its points,
    finished rows, answers, admissions), in a worker thread (onnxruntime releases the GIL), so
    the two run at once. The table is never touched while a step is in flight: rows that finish
    at step t are stepped once more at t + 1 and that output is ignored (they are dropped when it
    lands), requests admitted during t's bookkeeping join at t + 2. A row's sketch depends on its
    own inputs alone, so the sketches are the same bits either way. Default: on where the table
    lives on a GPU (the host is idle while the device steps), off on the CPU, where the step and
    the bookkeeping share the cores: on 2 shared cores the worker thread cost more than it saved
    (benchmarks/RESULTS.md, "Steps that overlap").

    Prefixes (`Request.prefix`) are read here too, after admission like every other row
    (`sketchkit.prefixes`: one host row per request, all readers stepped together with the plain
    decoder step once per engine step); a request whose prefix is read joins the table with its
    n rows.
    """

    def __init__(
        self, runtime: Runtime, scheduler: Scheduler | None = None, cancel_check_s: float = 0.0, overlap: bool | None = None
    ) -> None:
        self.runtime = runtime
        self.info = runtime.info
        self.scheduler = scheduler or Scheduler()
        # how often to ask requests whether they were cancelled (Triton's is_cancelled is an IPC
        # round trip of ~0.1 ms: asking every request every step would cost more than the step)
        self.cancel_check_s = cancel_check_s
        self._cancel_checked = 0.0
        self.evaluations = 0  # graph evaluations (steps) so far
        self.rows_stepped = 0  # sum of the batch sizes of those evaluations
        self.rows: RowTable = row_table(runtime)
        # by default only where the step runs on a GPU: on the CPU the host and the step share the cores
        self.overlap = overlap if overlap is not None else getattr(self.rows, "device", "cpu") != "cpu"
        self._pool: ThreadPoolExecutor | None = None
        self._flight: tuple[Future[np.ndarray], list[Request]] | None = None  # a step launched, not yet recorded
        # the host side of the row table: one entry per row, aligned with `rows`
        self._owner = np.zeros(0, np.intp)  # index of its request in scheduler.running
        self._slot = np.zeros(0, np.intp)  # its slot in the output store
        self._t = np.zeros(0, np.intp)  # steps its request has taken
        self._dropping = np.zeros(0, bool)  # finished: dropped when the step in flight lands
        self._store = np.zeros((0, 0, 3), np.float32)  # slot -> stroke-3 points, normalised
        self._length = np.zeros(0, np.intp)  # slot -> final length (max_len until p3)
        self._free: list[int] = []
        self._slots: dict[int, np.ndarray] = {}  # id(request) -> its n slots
        self._readers = PrefixReaders()

    def add(self, request: Request) -> None:
        self.scheduler.add(request)

    def reset(self) -> None:
        """Forget every running request and its rows (after a failure the table may no longer
        match the bookkeeping): a fresh row table, the output slots free again."""
        if self._flight is not None:
            with contextlib.suppress(Exception):
                self._flight[0].result()  # let the worker finish with the old table
            self._flight = None
        self.rows = row_table(self.runtime)
        self._owner, self._slot, self._t = (np.zeros(0, np.intp) for _ in range(3))
        self._dropping = np.zeros(0, bool)
        for slots in self._slots.values():
            self._free += slots.tolist()
        self._slots.clear()
        self._readers = PrefixReaders()
        self.scheduler.running = []

    def run(self, request: Request) -> list[np.ndarray]:
        """One request on its own, stepped until done: its sketches (pixel units)."""
        self.add(request)
        while not request.done:
            self.step()
        return request.sketches()

    def step(self) -> list[Request]:
        """Admit, evaluate the decoder and the draw once for every row, retire; the requests that
        finished (or failed, or were cancelled) in this step. With overlap, the points recorded
        are those of the step launched by the previous call."""
        landed = self._land() if self.overlap else None
        failed = landed is False
        running = self._admit()
        if time.monotonic() - self._cancel_checked >= self.cancel_check_s:
            self._cancel_checked = time.monotonic()
            for request in running:
                if request.error is None and request.is_cancelled():
                    request.error = Cancelled("cancelled")
        if not failed and len(self._owner) and any(r.error is None and r.joined for r in running):
            self._launch([r for r in running if r.joined])
        self._read(running)  # the prefixes, on the host while the step runs
        if not self.overlap:
            landed = self._land()
        if isinstance(landed, tuple):
            self._record(*landed, running)
        finished = [r for r in running if r.error is not None or r.live == 0 or r.t >= r.max_len]  # r.done, inlined
        if finished:
            self._retire(running)
        for request in finished:
            if request.on_done is not None:
                request.on_done(request)
        return finished

    # -- a step: launched, landed, recorded -----------------------------------------------------

    def _launch(self, stepped: list[Request]) -> None:
        """Start one step of the whole table: at once in this thread, or with overlap in the worker."""
        if self.overlap:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="sketchkit-step")
            future = self._pool.submit(self.rows.step)
        else:
            future = Future()
            try:
                future.set_result(self.rows.step())
            except Exception as e:  # raised again where it lands
                future.set_exception(e)
        self._flight = (future, stepped)

    def _land(self) -> tuple[np.ndarray, list[Request]] | bool | None:
        """Wait for the step in flight and drop the rows that finished meanwhile: (its points
        for the rows kept, the requests it stepped); False when the runtime failed (every request
        in that step fails); None when nothing was in flight."""
        if self._flight is None:
            return None
        future, stepped = self._flight
        self._flight = None
        try:
            point: np.ndarray | None = future.result()
        except SketchkitError as e:  # the runtime failed: every request in this step fails
            for r in stepped:
                r.error = r.error or e
            point = None
        if point is not None:
            self.evaluations += 1
            self.rows_stepped += len(point)
        if self._dropping.any():
            kept = ~self._dropping
            self._keep(kept)
            point = point[kept] if point is not None else None
        return (point, stepped) if point is not None else False

    def _record(self, point: np.ndarray, stepped: list[Request], running: list[Request]) -> None:
        """The bookkeeping of a step's points, which cover the first len(point) rows."""
        m = len(point)
        owner, slot, t = self._owner[:m], self._slot[:m], self._t[:m].copy()
        bad = np.isnan(point[:, 0])  # the draw's mark of NaN or infinite parameters
        if bad.any():  # those requests fail; the others go on
            for i in np.unique(owner[bad]):
                r = running[i]
                r.error = r.error or ModelError(
                    f"{self.info.name}: the model produced NaN or infinite parameters at step {r.t}"
                )
        self._store[slot, t] = point[:, _STROKE3]
        self._t[:m] = t + 1
        for r in stepped:
            if not r.done:  # with overlap, one retired since the step was launched may be among them
                r.t += 1
        ended = point[:, 4] == 1  # p3: the p3 point itself is not part of the sketch
        if ended.any():
            self._length[slot[ended]] = t[ended]
            self._drop(np.concatenate([ended, np.zeros(len(self._owner) - m, bool)]))
            live = np.bincount(self._owner[~self._dropping], minlength=len(running))
            for r, k in zip(running, live.tolist(), strict=True):
                if r.joined:
                    r.live = k

    # -- the row table ------------------------------------------------------------------------

    def _admit(self) -> list[Request]:
        """Waiting requests the scheduler admits start reading their prefix or join the table,
        as do requests whose prefix is read; the running requests."""
        admitted = self.scheduler.admit()
        running = self.scheduler.running
        if self._readers.done():
            joining = set(map(id, self._readers.pop_done()))
            admitted = [r for r in running if id(r) in joining] + admitted
        if not admitted:
            return running
        index = {id(r): i for i, r in enumerate(running)}
        new = []
        for r in admitted:
            if r.prefix is not None and not r.joined and r.state is None:
                self._readers.add(r, self.runtime)
            else:
                new.append(self._new_rows(r, index[id(r)]))
        if new:
            self.rows.append({k: np.concatenate([cols[k] for cols, _ in new]) for k in new[0][0]})
            host = {k: np.concatenate([meta[k] for _, meta in new]) for k in new[0][1]}
            self._owner = np.concatenate([self._owner, host["owner"]])
            self._slot = np.concatenate([self._slot, host["slot"]])
            self._t = np.concatenate([self._t, host["t"]])
            self._dropping = np.concatenate([self._dropping, np.zeros(len(host["t"]), bool)])
        return running

    def _new_rows(self, r: Request, index: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The table rows of `r`, which is `scheduler.running[index]` (its initial state made
        now): the graph's columns and the host's."""
        if r.state is None:
            try:
                r.state = self.runtime.init_state(r.z, r.n)
            except SketchkitError as e:
                r.error = e
                r.state = np.zeros((r.n, self.info.dims.state_size), np.float32)
        slots = self._take_slots(r.n, r.max_len)
        self._slots[id(r)] = slots
        self._length[slots] = r.max_len  # rows that never draw p3 are cut at max_len
        cols = {
            "prev": np.asarray(r.prev, np.float32), "state": np.asarray(r.state),
            "temperature": np.tile(np.array(r.temperature, np.float32), (r.n, 1)),
            "greedy": np.full(r.n, r.greedy), "counter": r.keys if r.keys is not None else np.zeros(r.n, np.uint64),
        }  # fmt: skip
        if self.info.dims.vae:
            cols["z"] = np.asarray(r.z, np.float32)
        host = {"owner": np.full(r.n, index, np.intp), "slot": slots, "t": np.full(r.n, r.t, np.intp)}
        r.prev = r.state = None  # type: ignore[assignment]  # the table holds them now
        r.joined = True
        return cols, host

    def _take_slots(self, n: int, width: int) -> np.ndarray:
        if width > self._store.shape[1]:
            grown = np.zeros((len(self._store), width, 3), np.float32)
            grown[:, : self._store.shape[1]] = self._store
            self._store = grown
        if len(self._free) < n:
            old = len(self._store)
            size = max(2 * old, old + n, 64)
            self._store = np.concatenate([self._store, np.zeros((size - old, *self._store.shape[1:]), np.float32)])
            self._length = np.concatenate([self._length, np.zeros(size - old, np.intp)])
            self._free += range(old, size)
        slots, self._free = self._free[-n:], self._free[:-n]
        return np.array(slots, np.intp)

    def _keep(self, keep: np.ndarray) -> None:
        """Drop the rows that are not in `keep` (a mask over the rows); never while a step is in flight."""
        index = np.flatnonzero(keep)
        self.rows.keep(index)
        self._owner, self._slot, self._t, self._dropping = (a[index] for a in (self._owner, self._slot, self._t, self._dropping))

    def _drop(self, mask: np.ndarray) -> None:
        """Drop the rows in `mask` now, or when the step in flight lands."""
        if self._flight is None:
            self._keep(~mask)
        else:
            self._dropping |= mask

    def _retire(self, running: list[Request]) -> None:
        """Hand finished requests their sketches, free their slots and drop their rows."""
        gone = np.array([r.done for r in running])
        for r in (r for r in running if r.done):
            slots = self._slots.pop(id(r), None)
            if slots is None:  # it never joined the table: still reading its prefix, or not even that
                self._readers.remove(r)
                continue
            if r.error is None:
                r.out = self._store[slots, : r.max_len].copy()
                r.lengths = self._length[slots].copy()
            self._free += slots.tolist()
        if len(self._owner):
            # rows already dropping may name requests retired before (their index is stale)
            self._drop(gone[self._owner] & ~self._dropping)
            self._owner = (np.cumsum(~gone) - 1)[self._owner]  # old request index -> new one
        self.scheduler.running = [r for r in running if not r.done]

    def _read(self, running: list[Request]) -> None:
        """One step of every prefix being read."""
        try:
            self._readers.step(self.runtime)
        except SketchkitError as e:
            for r in self._readers.requests:
                r.error = r.error or e


class BackgroundEngine:
    """Engines stepped by their own threads while requests are in flight (the Triton generate
    model): `submit` queues a request and returns at once; `request.on_done` fires when it is
    finished, from the stepping thread.

    One engine by default. Given several (each with its own scheduler, over one runtime), each
    runs in its own thread and a request goes to the one with the fewest sketches in flight:
    a request lives in one engine, so its sketches stay what they are alone, and the engines'
    graph evaluations run at once (onnxruntime releases the GIL). That is how free cores get
    used (onnxruntime's intra-op threads speed a batch-16 LSTM 512 step up only ~1.2x), at the
    price of smaller batches: on 2 shared cores two engines cost more CPU per sketch than they
    gained (benchmarks/RESULTS.md, "Issue 9: the throughput ceiling")."""

    def __init__(self, engine: Engine | list[Engine], on_idle: Callable[[BackgroundEngine], None] | None = None) -> None:
        self.engines = [engine] if isinstance(engine, Engine) else list(engine)
        self.engine = self.engines[0]
        self.on_idle = on_idle  # called when an engine runs out of requests (statistics)
        self._wake = [threading.Condition() for _ in self.engines]
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._loop, args=(k,), name=f"sketchkit-engine-{k}", daemon=True)
            for k in range(len(self.engines))
        ]
        for thread in self._threads:
            thread.start()

    @property
    def evaluations(self) -> int:
        """Graph evaluations so far, all engines together."""
        return sum(e.evaluations for e in self.engines)

    @property
    def rows_stepped(self) -> int:
        return sum(e.rows_stepped for e in self.engines)

    def submit(self, request: Request) -> None:
        k = 0
        if len(self.engines) > 1:
            load = [e.scheduler.rows_in_flight() for e in self.engines]
            k = load.index(min(load))
        self.engines[k].add(request)  # EngineBusy when full
        with self._wake[k]:
            self._wake[k].notify()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopped = True
        for wake in self._wake:
            with wake:
                wake.notify()
        for thread in self._threads:
            thread.join(timeout_s)

    def _loop(self, k: int) -> None:
        engine, wake = self.engines[k], self._wake[k]
        while True:
            with wake:
                if not engine.scheduler.has_work() and self.on_idle is not None and engine.evaluations:
                    self.on_idle(self)
                while not self._stopped and not engine.scheduler.has_work():
                    wake.wait()
                if self._stopped:
                    return
            try:
                engine.step()
            except Exception as e:  # never let the thread die with requests in flight
                for r in list(engine.scheduler.running):
                    if r.error is None:
                        r.error = SketchkitError(f"engine failure: {type(e).__name__}: {e}".splitlines()[0])
                    if r.on_done is not None:
                        r.on_done(r)
                engine.reset()  # the next requests start from an empty table
