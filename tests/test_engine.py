"""The one decode loop (`sketchkit.engine`) with real graphs in onnxruntime: many requests stepped
together give each exactly its own single-request sketches; the scheduler's budget, backpressure,
joining mid-flight, cancellation and a failing request that takes nobody else down."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sketchkit.engine import BackgroundEngine, Cancelled, Engine, EngineBusy, Scheduler
from sketchkit.errors import ModelError, SketchkitError
from sketchkit.hub import resolve
from sketchkit.runtimes.onnx import OnnxRuntime
from sketchkit.sampling import Sampler, SamplingOptions


@pytest.fixture(scope="module")
def sheep() -> Sampler:
    return Sampler(OnnxRuntime(resolve("sheep")))


@pytest.fixture(scope="module")
def tiny(tiny_uncond) -> Sampler:
    return Sampler(OnnxRuntime(tiny_uncond))


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


ASKS = [
    (3, SamplingOptions(tau=0.3, seed=1, max_len=100)),
    (1, SamplingOptions(tau=1.0, seed=2, temperature_rule="js")),
    (5, SamplingOptions(tau=0.6, seed=3, max_len=30)),
    (2, SamplingOptions(greedy=True, seed=5)),
    (4, SamplingOptions(tau=0.05, seed=4)),
]


def test_requests_stepped_together_equal_their_own_runs(sheep):
    engine = Engine(sheep.runtime)
    requests = [sheep.generation(n, options=o) for n, o in ASKS]
    # two start at once, the others join mid-flight, one per step
    engine.add(requests[0])
    engine.add(requests[1])
    waiting = requests[2:]
    while any(not r.done for r in requests):
        if waiting:
            engine.add(waiting.pop(0))
        engine.step()
    for r, (n, o) in zip(requests, ASKS, strict=True):
        assert same(r.sketches(), sheep.generate(n, options=o))
    # one evaluation per step for the union: fewer evaluations than the requests' steps together
    assert engine.evaluations < sum(r.t for r in requests)
    assert engine.rows_stepped / engine.evaluations > 2


def test_completion_and_vae_decode_stepped_together(tiny_vae):
    sampler = Sampler(OnnxRuntime(tiny_vae))
    partial = sampler.generate(1, options=SamplingOptions(seed=9))[0][:6]
    z = np.random.default_rng(0).standard_normal((3, sampler.info.dims.z_size)).astype(np.float32)
    o1, o2 = SamplingOptions(tau=0.7, seed=1), SamplingOptions(tau=0.4, seed=2)
    engine = Engine(sampler.runtime)
    a, b = sampler.completion(partial, 4, o1), sampler.generation(3, z, o2)
    engine.add(a)
    engine.add(b)
    while not (a.done and b.done):
        engine.step()
    assert same([np.vstack([partial, e]) for e in a.sketches()], sampler.complete(partial, 4, o1))
    assert same(b.sketches(), sampler.decode(z, o2))


def test_scheduler_admits_while_rows_fit_the_budget(tiny):
    scheduler = Scheduler(max_rows=6)
    engine = Engine(tiny.runtime, scheduler)
    big, small, late = (tiny.generation(n, options=SamplingOptions(seed=n)) for n in (5, 1, 3))
    for r in (big, small, late):
        engine.add(r)
    engine.step()
    assert scheduler.running == [big, small] and list(scheduler.waiting) == [late]  # 5 + 1 fit, 3 waits
    while not late.done:
        engine.step()
        assert sum(r.live for r in scheduler.running) <= 6
    assert same(late.sketches(), tiny.generate(3, options=SamplingOptions(seed=3)))
    # a request larger than the budget runs alone rather than never
    huge = tiny.generation(9, options=SamplingOptions(seed=0))
    assert len(Engine(tiny.runtime, Scheduler(max_rows=6)).run(huge)) == 9


def test_backpressure_is_a_clear_busy_error(tiny):
    engine = Engine(tiny.runtime, Scheduler(max_rows=4, max_pending_rows=10))
    engine.add(tiny.generation(6))
    engine.add(tiny.generation(4))
    with pytest.raises(EngineBusy, match=r"^busy: 10 sketches in flight, at most 10 \(retry later\)$"):
        engine.add(tiny.generation(1))
    while engine.scheduler.has_work():
        engine.step()
    engine.add(tiny.generation(10))  # room again


def test_cancelled_request_frees_its_rows(tiny):
    engine = Engine(tiny.runtime)
    cancelled = threading.Event()
    gone = tiny.generation(8, options=SamplingOptions(seed=1, max_len=40))
    gone.is_cancelled = cancelled.is_set
    kept = tiny.generation(2, options=SamplingOptions(seed=2))
    engine.add(gone)
    engine.add(kept)
    engine.step()
    cancelled.set()
    finished = engine.step()
    assert gone in finished and isinstance(gone.error, Cancelled)
    assert gone not in engine.scheduler.running
    while not kept.done:
        engine.step()
    assert same(kept.sketches(), tiny.generate(2, options=SamplingOptions(seed=2)))


def test_a_failing_request_takes_nobody_else_down(tiny):
    """NaN parameters for one request's rows fail that request alone."""

    class NanForBigBatches:
        def __init__(self, runtime):
            self.runtime, self.info = runtime, runtime.info

        def init_state(self, z, batch):
            return self.runtime.init_state(z, batch)

        def step(self, prev, z, state):
            params, next_state = self.runtime.step(prev, z, state)
            params[: len(prev) - 2][(np.abs(state[: len(prev) - 2]).sum(1) > 0)] = np.nan  # all but the last 2 rows
            return params, next_state

    engine = Engine(NanForBigBatches(tiny.runtime))
    bad = tiny.generation(3, options=SamplingOptions(seed=1))
    good = tiny.generation(2, options=SamplingOptions(seed=2))
    engine.add(bad)
    engine.add(good)
    while not good.done:
        engine.step()
    with pytest.raises(ModelError, match="NaN or infinite parameters"):
        bad.sketches()
    assert same(good.sketches(), tiny.generate(2, options=SamplingOptions(seed=2)))


def answers_through(background: BackgroundEngine, sampler, asks) -> dict[int, list[np.ndarray]]:  # type: ignore[no-untyped-def]
    """Submit every (n, options) of `asks` to `background`, each answered through its on_done
    callback; wait for all of them, stop the engine threads, return the sketches by ask."""
    done: dict[int, list[np.ndarray]] = {}
    all_done = threading.Event()

    def record(i):
        def on_done(request):
            done[i] = request.sketches()
            if len(done) == len(asks):
                all_done.set()

        return on_done

    try:
        for i, (n, o) in enumerate(asks):
            request = sampler.generation(n, options=o)
            request.on_done = record(i)
            background.submit(request)
        assert all_done.wait(60)
    finally:
        background.stop()
    return done


def test_background_engine_answers_each_request_when_it_finishes(sheep):
    done = answers_through(BackgroundEngine(Engine(sheep.runtime)), sheep, ASKS)
    for i, (n, o) in enumerate(ASKS):
        assert same(done[i], sheep.generate(n, options=o))


def test_several_background_engines_each_answer_as_alone(sheep):
    """Engines stepped by their own threads over one runtime: requests spread over them (the
    least loaded first), each request's sketches exactly its own run's."""
    engines = [Engine(sheep.runtime) for _ in range(2)]
    background = BackgroundEngine(engines)
    asks = ASKS * 2
    done = answers_through(background, sheep, asks)
    assert all(e.evaluations > 0 for e in engines)  # both engines stepped
    assert background.evaluations == sum(e.evaluations for e in engines)
    for i, (n, o) in enumerate(asks):
        assert same(done[i], sheep.generate(n, options=o))


@pytest.mark.parametrize("table", ["DeviceRows", "GraphRows"])
def test_rows_on_the_device_give_the_host_rows_sketches(sheep, table):
    """The row table's device forms (`sketchkit.runtimes.onnx_rows`), here on the CPU (GraphRows
    without capture): requests of 1..300 rows joining while others finish, the table growing
    past 256 slots and shrinking back, give each request exactly its host-row sketches."""
    runtime = OnnxRuntime(resolve("sheep"), device_rows=True, cuda_graphs=table == "GraphRows")
    engine = Engine(runtime, Scheduler(max_rows=2048))
    assert type(engine.rows).__name__ == table
    asks = [(300, SamplingOptions(tau=0.3, seed=0, max_len=60)), (5, SamplingOptions(tau=0.8, seed=1)),
            (70, SamplingOptions(greedy=True, seed=2, max_len=40)), (1, SamplingOptions(tau=0.2, seed=3)),
            (9, SamplingOptions(tau=1.0, seed=4, max_len=90))]  # fmt: skip
    requests = [Sampler(runtime).generation(n, options=o) for n, o in asks]
    waiting, capacities = list(requests), set()
    while any(not r.done for r in requests):
        if waiting and engine.evaluations % 7 == 0:
            engine.add(waiting.pop(0))
        engine.step()
        capacities.add(getattr(engine.rows, "capacity", 0))
    if table == "GraphRows":
        assert {64, 1024} <= capacities  # grew for the 300 rows and shrank when they were done
    for r, (n, o) in zip(requests, asks, strict=True):
        assert same(r.sketches(), sheep.generate(n, options=o))


def test_an_engine_failure_is_answered_and_the_engine_goes_on(sheep):
    """A row table that raises something unexpected mid-step: the requests in flight get one
    line each, the table is reset, and later requests are answered as alone."""
    engine = Engine(sheep.runtime)
    real_step, calls = engine.rows.step, [0]

    def step_once_broken():
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("CUDA out of memory, say")
        return real_step()

    engine.rows.step = step_once_broken  # type: ignore[method-assign]
    background = BackgroundEngine(engine)
    errors: list[str] = []
    failed = threading.Event()

    def on_done(request):
        errors.append(str(request.error))
        failed.set()

    first = sheep.generation(4, options=SamplingOptions(seed=1))
    first.on_done = on_done
    background.submit(first)
    assert failed.wait(30)
    assert errors == ["engine failure: RuntimeError: CUDA out of memory, say"]
    assert len(engine.rows) == 0 and not engine.scheduler.running
    done = answers_through(background, sheep, ASKS)
    for i, (n, o) in enumerate(ASKS):
        assert same(done[i], sheep.generate(n, options=o))


# -- steps that overlap: step t + 1 runs while the host records step t ---------------------------

TABLES = {"HostRows": {}, "DeviceRows": {"device_rows": True}, "GraphRows": {"device_rows": True, "cuda_graphs": True}}


def scripted_run(runtime: OnnxRuntime, overlap: bool) -> tuple[dict[str, object], Engine, set[str]]:
    """Requests joining and leaving mid-flight (generations, completions whose prefix the engine
    reads), one cancelled, and the table failing twice: once unexpectedly (handled as
    `BackgroundEngine` does: the requests in flight fail, the engine resets and goes on), once with
    the runtime's own error (the requests it stepped fail): each request's sketches, or its error."""
    sampler = Sampler(runtime)
    engine = Engine(runtime, Scheduler(max_rows=64), overlap=overlap)
    partial = sampler.generate(1, options=SamplingOptions(seed=5))[0]
    cancelled = threading.Event()
    script = {
        0: [("a", sampler.generation(3, options=SamplingOptions(tau=0.3, seed=1, max_len=100))),
            ("b", sampler.completion(partial[:12], 2, SamplingOptions(tau=0.5, seed=6, max_len=100)))],
        3: [("c", sampler.generation(5, options=SamplingOptions(tau=0.6, seed=3, max_len=30)))],
        5: [("cancelled", sampler.generation(4, options=SamplingOptions(tau=0.8, seed=4, max_len=200)))],
        8: [("d", sampler.completion(partial[:30], 3, SamplingOptions(tau=0.4, seed=7, max_len=90)))],
        12: [("e", sampler.generation(2, options=SamplingOptions(greedy=True, seed=2, max_len=80)))],
        16: [("f", sampler.generation(40, options=SamplingOptions(tau=1.0, seed=8, max_len=150)))],
        130: [("g", sampler.generation(2, options=SamplingOptions(tau=0.3, seed=9, max_len=60)))],
        135: [("h", sampler.completion(partial[:5], 2, SamplingOptions(tau=0.7, seed=10, max_len=50)))],
        195: [("i", sampler.generation(3, options=SamplingOptions(tau=0.5, seed=11, max_len=100)))],
        210: [("j", sampler.completion(partial[:8], 2, SamplingOptions(tau=0.3, seed=12, max_len=40)))],
    }  # fmt: skip
    script[5][0][1].is_cancelled = cancelled.is_set
    call, failures = 0, {125: RuntimeError("out of memory, say"), 200: ModelError("the runtime failed")}
    stepped_by: set[str] = set()

    def step_broken_twice() -> np.ndarray:
        # something unexpected (the engine resets), then the runtime's own error (the requests it stepped fail)
        stepped_by.add(threading.current_thread().name)
        for at in [at for at in failures if call >= at]:
            raise failures.pop(at)
        return type(engine.rows).step(engine.rows)  # the table's own step (a reset makes a new table)

    engine.rows.step = step_broken_twice  # type: ignore[method-assign]
    requests: dict[str, object] = {}
    while call <= max(script) or engine.scheduler.has_work():
        for name, r in script.get(call, []):
            requests[name] = r
            engine.add(r)
        if call == 20:
            cancelled.set()
        try:
            engine.step()
        except RuntimeError as e:
            for r in engine.scheduler.running:
                r.error = SketchkitError(f"engine failure: {e}")
            engine.reset()
            engine.rows.step = step_broken_twice  # type: ignore[method-assign]
        call += 1
    outcomes = {}
    for name, r in requests.items():
        try:
            outcomes[name] = r.sketches()  # type: ignore[attr-defined]
        except Exception as e:
            outcomes[name] = type(e).__name__
    return outcomes, engine, stepped_by


@pytest.mark.parametrize("table", list(TABLES))
def test_overlapping_steps_give_the_same_sketches(sheep, table):
    """Overlap on and off, on all three row tables (the device ones here on the CPU): every
    request answered has exactly its own single-request sketches, the cancelled one is
    cancelled, the ones in flight when the table failed fail, and later ones are answered."""
    runtime = OnnxRuntime(resolve("sheep"), **TABLES[table])  # type: ignore[arg-type]
    partial = sheep.generate(1, options=SamplingOptions(seed=5))[0]
    alone = {
        "a": sheep.generate(3, options=SamplingOptions(tau=0.3, seed=1, max_len=100)),
        "b": [e[12:] for e in sheep.complete(partial[:12], 2, SamplingOptions(tau=0.5, seed=6, max_len=100))],
        "c": sheep.generate(5, options=SamplingOptions(tau=0.6, seed=3, max_len=30)),
        "d": [e[30:] for e in sheep.complete(partial[:30], 3, SamplingOptions(tau=0.4, seed=7, max_len=90))],
        "e": sheep.generate(2, options=SamplingOptions(greedy=True, seed=2, max_len=80)),
        "f": sheep.generate(40, options=SamplingOptions(tau=1.0, seed=8, max_len=150)),
        "g": sheep.generate(2, options=SamplingOptions(tau=0.3, seed=9, max_len=60)),
        "h": [e[5:] for e in sheep.complete(partial[:5], 2, SamplingOptions(tau=0.7, seed=10, max_len=50))],
        "j": [e[8:] for e in sheep.complete(partial[:8], 2, SamplingOptions(tau=0.3, seed=12, max_len=40))],
    }
    for overlap in (False, True):
        outcomes, engine, stepped_by = scripted_run(runtime, overlap)
        assert type(engine.rows).__name__ == table and engine.overlap is overlap
        assert stepped_by == ({"sketchkit-step_0"} if overlap else {threading.current_thread().name})
        assert outcomes.pop("cancelled") == "Cancelled"
        failed = {k for k, v in outcomes.items() if isinstance(v, str)}
        assert failed == {"f", "i"}  # in flight when the table failed
        assert outcomes["f"] == "SketchkitError" and outcomes["i"] == "ModelError"
        for name in outcomes.keys() - failed:
            assert same(outcomes[name], alone[name]), (overlap, name)  # type: ignore[arg-type]


def test_prefixes_are_read_after_admission_batched_and_capped(sheep):
    """Issue 25 item 5: building a completion runs no graph; its rows count against the caps like
    any others; once admitted, the prefixes in flight are read together, one evaluation of the
    plain decoder step per engine step (one row each), and each request still gets its own
    in-process sketches."""

    class Counting:
        def __init__(self, runtime):  # type: ignore[no-untyped-def]
            self.runtime, self.info, self.steps = runtime, runtime.info, []

        def encode(self, strokes, lengths):  # type: ignore[no-untyped-def]
            self.steps.append(("encode", len(strokes)))
            return self.runtime.encode(strokes, lengths)

        def init_state(self, z, batch):  # type: ignore[no-untyped-def]
            return self.runtime.init_state(z, batch)

        def step(self, prev, z, state):  # type: ignore[no-untyped-def]
            self.steps.append(("step", len(prev)))
            return self.runtime.step(prev, z, state)

        def step_and_draw(self, *columns):  # type: ignore[no-untyped-def]
            return self.runtime.step_and_draw(*columns)

    runtime = Counting(sheep.runtime)
    sampler = Sampler(runtime)  # type: ignore[arg-type]
    partial = sheep.generate(1, options=SamplingOptions(seed=5))[0]
    o1, o2 = SamplingOptions(tau=0.5, seed=1, max_len=80), SamplingOptions(tau=0.9, seed=2, max_len=80)
    a, b = sampler.completion(partial[:20], 4, o1), sampler.completion(partial[:9], 3, o2)
    assert runtime.steps == []  # nothing read yet: that is the engine's work, after admission
    engine = Engine(runtime, Scheduler(max_rows=16, max_pending_rows=10))  # type: ignore[arg-type]
    engine.add(a)
    engine.add(b)
    assert engine.scheduler.rows_in_flight() == 7
    with pytest.raises(EngineBusy):
        engine.add(sampler.completion(partial[:5], 4, o1))  # 7 + 4 rows > 10
    while not (a.done and b.done):
        engine.step()
    assert runtime.steps[:2] == [("encode", 1), ("encode", 1)]
    reads = [n for what, n in runtime.steps if what == "step"]
    assert reads == [2] * 9 + [1] * 11  # both prefixes read together, then the longer one alone
    assert same([np.vstack([partial[:20], e]) for e in a.sketches()], sheep.complete(partial[:20], 4, o1))
    assert same([np.vstack([partial[:9], e]) for e in b.sketches()], sheep.complete(partial[:9], 3, o2))


def test_background_engine_with_overlap_answers_each_request_as_alone(sheep):
    """The stepping thread with a worker beside it: a step may still be in flight when the engine
    runs dry and waits; the next request lands it first."""
    engine = Engine(sheep.runtime, overlap=True)
    done = answers_through(BackgroundEngine(engine), sheep, ASKS)
    for i, (n, o) in enumerate(ASKS):
        assert same(done[i], sheep.generate(n, options=o))
    done = answers_through(BackgroundEngine(engine), sheep, ASKS[:2])  # again, after it ran dry
    for i, (n, o) in enumerate(ASKS[:2]):
        assert same(done[i], sheep.generate(n, options=o))
