"""`<name>_generate`'s metrics on a real tritonserver's /metrics (serving/metrics.py): they show
up at zero, move under load (sketches in flight while requests run, back to 0 after), and the
counters add up to what the clients saw: sketches answered, steps and rows, errors by kind."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request

import pytest

from sketchkit.hub import resolve
from sketchkit.serving.repository import RepoOptions, build_repo
from sketchkit.serving.server import TritonServer, free_port

pytestmark = pytest.mark.triton

pytest.importorskip("pytriton", reason="needs nvidia-pytriton (pip install 'sketchkit[serve]')")

CAP = 128  # sketches in flight before "busy"
LABELS = '{model="sheep_generate",version="1"}'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    options = RepoOptions(stateful=False, max_sketches_per_request=64, max_sketches_in_flight=CAP)
    build_repo([resolve("sheep")], root / "repo", options, names=["sheep"])
    with TritonServer(root / "repo", free_port(), free_port(), log_path=root / "log", metrics_port=free_port()) as s:
        yield s


def scrape(server: TritonServer) -> dict[str, float]:
    """sketchkit_* samples by name and labels, e.g. 'sketchkit_steps_total{model=...}'."""
    assert server.metrics_url is not None
    with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
        text = r.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^(sketchkit_\S+\}) (\S+)$", text, re.M)}


def generate(server: TritonServer, body: dict) -> tuple[int, dict]:
    """POST the generate extension; (HTTP status, answer)."""
    headers = getattr(server, "headers", {})  # issue 22 may put inference behind a key header
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/sheep_generate/generate", json.dumps(body).encode(), headers
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def settled(server: TritonServer, name: str, want: float, timeout_s: float = 5.0) -> dict[str, float]:
    """The metrics once `name` reads `want` (pushed once a second)."""
    deadline = time.monotonic() + timeout_s
    while (now := scrape(server)).get(name) != want and time.monotonic() < deadline:
        time.sleep(0.2)
    return now


def test_metrics_show_up_at_zero(server):
    now = scrape(server)
    for name in ("sketches_in_flight", "sketches_waiting", "steps_total", "rows_stepped_total",
                 "sketches_generated_total"):  # fmt: skip
        assert now[f"sketchkit_{name}{LABELS}"] == 0
    for kind in ("invalid", "busy", "cancelled", "failed"):
        assert now[f'sketchkit_request_errors_total{{kind="{kind}",model="sheep_generate",version="1"}}'] == 0


def test_metrics_move_under_load(server):
    before = scrape(server)
    answers: list[tuple[int, dict]] = []
    seen_in_flight: list[float] = []
    enough = threading.Event()

    def client(k: int) -> None:
        for i in range(40):  # bounded: until the gauge moved (pushed once a second), 40 at most
            if enough.is_set():
                return
            answers.append(generate(server, {"n": 16, "tau": 0.5, "seed": 100 * k + i}))

    clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for c in clients:
        c.start()
    deadline = time.monotonic() + 20
    while any(c.is_alive() for c in clients):
        seen_in_flight.append(scrape(server)[f"sketchkit_sketches_in_flight{LABELS}"])
        if seen_in_flight[-1] > 0 or time.monotonic() > deadline:
            enough.set()
        time.sleep(0.1)
    for c in clients:
        c.join()
    ok = [a for status, a in answers if status == 200]
    busy = [a for status, a in answers if status != 200]
    assert all("busy" in a["error"] for a in busy), busy
    generated = 16 * len(ok)
    after = settled(server, f"sketchkit_sketches_generated_total{LABELS}",
                    before[f"sketchkit_sketches_generated_total{LABELS}"] + generated)  # fmt: skip
    assert max(seen_in_flight) > 0, "in-flight sketches never showed while requests ran"
    assert after[f"sketchkit_sketches_in_flight{LABELS}"] == 0 and after[f"sketchkit_sketches_waiting{LABELS}"] == 0
    assert after[f"sketchkit_sketches_generated_total{LABELS}"] - before[f"sketchkit_sketches_generated_total{LABELS}"] == generated
    steps = after[f"sketchkit_steps_total{LABELS}"] - before[f"sketchkit_steps_total{LABELS}"]
    rows = after[f"sketchkit_rows_stepped_total{LABELS}"] - before[f"sketchkit_rows_stepped_total{LABELS}"]
    assert steps > 0 and 1 <= rows / steps <= CAP  # rows per step: at least one row, at most the cap
    busy_key = 'sketchkit_request_errors_total{kind="busy",model="sheep_generate",version="1"}'
    assert after[busy_key] - before[busy_key] == len(busy)


def test_errors_are_counted_by_kind(server):
    key = 'sketchkit_request_errors_total{{kind="{}",model="sheep_generate",version="1"}}'.format
    before = scrape(server)
    status, answer = generate(server, {"n": -1})
    assert status >= 400, answer
    status, answer = generate(server, {"n": 1, "colour": "red"})
    assert status >= 400, answer
    # two 64-sketch requests fill the cap, a third at once is refused
    answers: list[tuple[int, dict]] = []
    threads = [threading.Thread(target=lambda: answers.append(generate(server, {"n": 64, "max_len": 1000, "seed": 1})))
               for _ in range(4)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    busy = sum(status != 200 for status, _ in answers)
    after = settled(server, key("invalid"), before[key("invalid")] + 2)
    assert after[key("invalid")] - before[key("invalid")] == 2
    assert busy >= 1 and after[key("busy")] - before[key("busy")] == busy
    assert after[key("failed")] == before[key("failed")]
