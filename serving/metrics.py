"""Prometheus metrics of `<name>_generate`, served on Triton's metrics port (`/metrics`) through
the Python backend's metrics API (`pb_utils.MetricFamily`): what an autoscaler and an operator
read. The HPA of serving/deploy scales on `sketchkit_sketches_in_flight` per replica.

Every metric update is an IPC round trip from the model's stub to the Triton process (like
`is_cancelled`, 0.06-0.24 ms measured), so nothing here runs per step or per request on the
stub's side of that pipe: the model counts answers and errors in plain Python, and a thread
reads those and the engines' counters once a second and pushes what changed.

Rows per step is the ratio of two counters, as Triton's own average batch size is
(`nv_inference_count / nv_inference_exec_count`):
`rate(sketchkit_rows_stepped_total[1m]) / rate(sketchkit_steps_total[1m])`.
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any

from sketchkit.engine import BackgroundEngine, Cancelled, EngineBusy, Request

# name -> (kind, help); kinds are MetricFamily's attribute names
FAMILIES = {
    "sketchkit_sketches_in_flight": ("GAUGE", "Sketches queued or being drawn (what the HPA scales on)"),
    "sketchkit_sketches_waiting": ("GAUGE", "Sketches queued, not yet admitted to a step"),
    "sketchkit_steps_total": ("COUNTER", "Decoder evaluations, one per engine step"),
    "sketchkit_rows_stepped_total": ("COUNTER", "Rows of all decoder evaluations (/ steps = rows per step)"),
    "sketchkit_sketches_generated_total": ("COUNTER", "Sketches answered"),
    "sketchkit_request_errors_total": ("COUNTER", "Requests answered with an error, by kind"),
}
# invalid: the request was refused (bad input); busy: the in-flight cap refused it (retry later);
# cancelled: the client went away; failed: the engine or the answer failed
ERROR_KINDS = ("invalid", "busy", "cancelled", "failed")


class GenerateMetrics:
    """The metrics of one `<name>_generate` instance; `labels` tell its model and version apart."""

    def __init__(
        self, pb_utils: ModuleType, engine: BackgroundEngine, labels: dict[str, str], interval_s: float = 1.0
    ) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self._log = pb_utils.Logger.log_error
        family = pb_utils.MetricFamily
        self._families = {
            name: family(name=name, description=text, kind=getattr(family, kind))
            for name, (kind, text) in FAMILIES.items()
        }
        self._metrics: dict[tuple[str, str], Any] = {}
        for name in FAMILIES:
            kinds = ERROR_KINDS if name == "sketchkit_request_errors_total" else ("",)
            for kind in kinds:
                extra = {"kind": kind} if kind else {}
                self._metrics[name, kind] = self._families[name].Metric(labels=labels | extra)
        self._lock = threading.Lock()
        self._generated = 0
        self._errors = dict.fromkeys(ERROR_KINDS, 0)
        self._pushed: dict[tuple[str, str], float] = dict.fromkeys(self._metrics, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sketchkit-metrics", daemon=True)
        self._thread.start()

    def refused(self, e: BaseException) -> None:
        """A request answered with an error before it reached the engine."""
        with self._lock:
            self._errors["busy" if isinstance(e, EngineBusy) else "invalid"] += 1

    def answered(self, request: Request) -> None:
        """A request the engine finished: its sketches, or why there are none."""
        with self._lock:
            if request.error is None:
                self._generated += request.n
            else:
                self._errors["cancelled" if isinstance(request.error, Cancelled) else "failed"] += 1

    def values(self) -> dict[tuple[str, str], float]:
        """Now, read from the engines' schedulers and counters (copies: their threads go on)."""
        running = waiting = 0
        for e in self.engine.engines:
            running += sum(r.live for r in list(e.scheduler.running))
            waiting += sum(r.n for r in list(e.scheduler.waiting))
        with self._lock:
            out = {
                ("sketchkit_sketches_in_flight", ""): running + waiting,
                ("sketchkit_sketches_waiting", ""): waiting,
                ("sketchkit_steps_total", ""): self.engine.evaluations,
                ("sketchkit_rows_stepped_total", ""): self.engine.rows_stepped,
                ("sketchkit_sketches_generated_total", ""): self._generated,
            }
            out |= {("sketchkit_request_errors_total", k): v for k, v in self._errors.items()}
        return {key: float(v) for key, v in out.items()}

    def push(self) -> None:
        """Gauges are set, counters incremented by what they grew since the last push."""
        for key, value in self.values().items():
            if value == self._pushed[key]:
                continue
            if FAMILIES[key[0]][0] == "GAUGE":
                self._metrics[key].set(value)
            else:
                self._metrics[key].increment(value - self._pushed[key])
            self._pushed[key] = value

    def _loop(self) -> None:
        failed = False
        while not self._stop.wait(self.interval_s):
            try:
                self.push()
            except Exception as e:  # the metrics stop moving; the model goes on serving
                if not failed:
                    self._log(f"sketchkit metrics: {type(e).__name__}: {e}")
                failed = True

    def stop(self) -> None:
        """Stop pushing; the metrics go before their families (the backend requires that order)."""
        self._stop.set()
        self._thread.join(5)
        self._metrics.clear()
        self._families.clear()
