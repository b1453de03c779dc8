"""Three cpu-flavor tritonservers behind a real nginx, configured as the manifests' Ingress
(serving/deploy/nginx/nginx.conf): a seeded request gives the same sketches through any replica
and through the proxy (HTTP and gRPC), requests go round robin, the management APIs stop at the
proxy, no response names a replica. Retries (issue 25, item 2): one key holder's query of death
takes down only the replica it reached (the other two answer the same seeds), a request that
times out at the proxy ran on one replica only, and killing a replica in the middle of a load run
loses no seeded request: what was never sent to it nginx sends to a survivor, and what was in
flight on it comes back 502, which the client sends again (the same seed, the same sketches)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from sketchkit.client import Client
from sketchkit.hub import resolve
from sketchkit.serving.manifests import DEPLOY
from sketchkit.serving.repository import RepoOptions, build_repo
from sketchkit.serving.server import TritonServer, free_port

pytestmark = pytest.mark.triton

pytest.importorskip("pytriton", reason="needs nvidia-pytriton (pip install 'sketchkit[serve]')")
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
if NGINX is None:
    pytest.skip("needs nginx (apt-get install nginx-light)", allow_module_level=True)

GENERATE = "/v2/models/sheep_generate/generate"


class Nginx:
    """nginx with serving/deploy/nginx/nginx.conf in front of `replicas`, on 127.0.0.1; `edits`:
    text replaced in the file (a shorter timeout)."""

    def __init__(self, replicas: list[TritonServer], root: Path, edits: dict[str, str] | None = None) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        root.mkdir(parents=True, exist_ok=True)
        conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
        for old, new in (edits or {}).items():
            assert old in conf, old
            conf = conf.replace(old, new)
        for key, value in {
            "@DIR@": str(root), "@HTTP_PORT@": str(self.http_port), "@GRPC_PORT@": str(self.grpc_port),
            "@HTTP_SERVERS@": " ".join(f"server 127.0.0.1:{r.http_port} max_fails=1 fail_timeout=10s;" for r in replicas),
            "@GRPC_SERVERS@": " ".join(f"server 127.0.0.1:{r.grpc_port} max_fails=1 fail_timeout=10s;" for r in replicas),
        }.items():  # fmt: skip
            conf = conf.replace(key, value)
        assert not re.search(r"@[A-Z_]+@", conf)
        (root / "nginx.conf").write_text(conf)
        self.root = root
        self.process = subprocess.Popen([NGINX, "-p", str(root), "-c", str(root / "nginx.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.monotonic() + 30
        while not ready(f"http://127.0.0.1:{self.http_port}"):
            assert self.process.poll() is None, self.process.stderr.read().decode() if self.process.stderr else ""
            assert time.monotonic() < deadline, "nginx did not come up"
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log_size(self) -> int:
        return (self.root / "access.log").stat().st_size

    def upstreams(self, since: int = 0) -> list[list[str]]:
        """Per POST logged after byte `since`: the replicas nginx sent it to, in order."""
        with open(self.root / "access.log", "rb") as f:
            f.seek(since)
            lines = f.read().decode().splitlines()
        return [m[1].split(", ") for line in lines
                if '"POST ' in line and (m := re.search(r"upstream=(\S+(?:, \S+)*) upstream_status", line))]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Replicas a, b and c (the same repository, as the Deployment's pods build it) and nginx."""
    root = tmp_path_factory.mktemp("replicas")
    build_repo([resolve("sheep")], root / "repo", RepoOptions(stateful=False), names=["sheep"])
    replicas = []
    try:
        for name in ("a", "b", "c"):
            replicas.append(TritonServer(root / "repo", free_port(), free_port(), log_path=root / f"{name}.log").start())
        proxy = Nginx(replicas, root / "nginx")
        try:
            yield replicas, proxy
        finally:
            proxy.stop()
    finally:
        for r in replicas:
            r.stop()


def generate(url: str, seed: int, headers: dict[str, str], n: int = 4) -> tuple[int, dict]:
    """(status, answer) of a seeded n-sketch generate; no response names a replica."""
    body = json.dumps({"n": n, "tau": 0.4, "seed": seed}).encode()
    request = urllib.request.Request(url + GENERATE, body, headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            assert "X-Upstream" not in r.headers
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        assert "X-Upstream" not in e.headers
        text = e.read()
        try:
            return e.code, json.loads(text or b"{}")
        except ValueError:  # nginx's own HTML error page
            return e.code, {"error": text.decode(errors="replace")[:100]}


def generate_retrying(url: str, seed: int, headers: dict[str, str]) -> tuple[int, dict]:
    """As a client does with a seeded request: once more when the proxy says the replica it was
    sent to died under it (502; sketchkit's gRPC client retries the UNAVAILABLE this becomes)."""
    status, answer = generate(url, seed, headers)
    return generate(url, seed, headers) if status == 502 else (status, answer)


def alive(replicas: list[TritonServer]) -> list[TritonServer]:
    return [r for r in replicas if r.process is not None and r.process.poll() is None]


def key_headers(server: TritonServer) -> dict[str, str]:
    return dict(getattr(server, "headers", {}))  # issue 22 may put inference behind a key header


def test_same_seed_same_sketches_through_every_replica_and_the_proxy(cluster):
    replicas, proxy = cluster
    headers = key_headers(replicas[0])
    since = proxy.log_size()
    for seed in range(3):
        want = generate(replicas[0].http_url, seed, headers)
        assert want[0] == 200, want
        for r in replicas[1:]:
            assert generate(r.http_url, seed, headers)[1] == want[1]
        for _ in range(2):
            assert generate(proxy.url, seed, headers) == want
    # round robin: every replica answered through the proxy, each on the first try
    tried = proxy.upstreams(since)
    assert {u[0] for u in tried} == {f"127.0.0.1:{r.http_port}" for r in replicas} and all(len(u) == 1 for u in tried)


def test_grpc_through_the_proxy_gives_the_same_sketches(cluster):
    from sketchkit.client import Client

    (a, _, _), proxy = cluster
    direct = Client(a.grpc_url).generate("sheep", n=3, tau=0.4, seed=11)
    for _ in range(3):  # every replica, round robin
        via = Client(f"grpc://127.0.0.1:{proxy.grpc_port}").generate("sheep", n=3, tau=0.4, seed=11)
        assert len(via) == len(direct) and all(np.array_equal(x, y) for x, y in zip(via, direct, strict=True))


def test_the_proxy_passes_no_management_api(cluster):
    (a, _, _), proxy = cluster
    for method, path in (("GET", "/v2/systemsharedmemory/status"), ("POST", "/v2/repository/index"),
                         ("GET", "/v2/models/stats"), ("GET", "/v2/logging"), ("GET", "/v2/trace/setting")):  # fmt: skip
        request = urllib.request.Request(proxy.url + path, method=method, data=b"{}" if method == "POST" else None)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 404, path
    with urllib.request.urlopen(proxy.url + "/v2/health/ready", timeout=10) as r:  # issue 25 (LOW)
        assert r.status == 200 and "X-Upstream" not in r.headers


def test_a_request_that_times_out_at_the_proxy_ran_on_one_replica(cluster, tmp_path):
    """Issue 25 (R6): nginx's read timeout ends the request with 504; it is not sent to the next
    replica (on b401ed7 it ran in full on all three and the client still got 504)."""
    replicas, _ = cluster
    short = Nginx(replicas, tmp_path / "nginx", {"proxy_read_timeout 120s": "proxy_read_timeout 100ms"})
    try:
        status, _ = generate(short.url, 5, key_headers(replicas[0]), n=64)
        assert status == 504
        deadline = time.monotonic() + 10  # nginx logs the request just after the client has its 504
        while not (tried := short.upstreams()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(tried) == 1 and len(tried[0]) == 1, tried
    finally:
        short.stop()
    time.sleep(3)  # the replica finishes the 64 sketches nobody waits for


def test_a_query_of_death_takes_down_only_the_replica_it_reached(cluster):
    """Issue 25, item 2: a key holder's /infer claiming shape [2^62] (75 bytes) crashes the
    Triton 2.51 it reaches (SIGSEGV); the proxy does not send it on, so the other two stay up and
    answer the same seeds (on b401ed7 nginx retried it on each replica and all three died)."""
    replicas, proxy = cluster
    assert len(alive(replicas)) == 3
    headers = key_headers(replicas[0])
    want = {seed: generate(replicas[0].http_url, seed, headers) for seed in range(20, 26)}
    assert all(status == 200 for status, _ in want.values())
    since = proxy.log_size()
    death = json.dumps({"inputs": [{"name": "n", "shape": [2**62], "datatype": "INT64", "data": [1]}]})
    infer = urllib.request.Request(proxy.url + GENERATE.replace("/generate", "/infer"), death.encode(), headers)
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(infer, timeout=60)
    assert failed.value.code == 502
    failed.value.close()  # nginx logs the request once the client has closed its connection
    deadline = time.monotonic() + 10
    while len(alive(replicas)) == 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)  # had it been sent on, the next replica would be dying now
    survivors = alive(replicas)
    assert len(survivors) == 2, "the query of death was sent to more than one replica"
    (tried,) = proxy.upstreams(since)
    assert len(tried) == 1  # sent to one replica, never to another
    since = proxy.log_size()
    for seed in (*want, *want):  # the survivors answer the same sketches; the dead one is skipped
        assert generate(proxy.url, seed, headers) == want[seed]
    answered = {u[-1] for u in proxy.upstreams(since)}
    assert answered == {f"127.0.0.1:{r.http_port}" for r in survivors}


def test_killing_a_replica_mid_load_loses_no_seeded_request(cluster):
    replicas, proxy = cluster
    survivors = alive(replicas)
    assert len(survivors) >= 2
    victim, keeper = survivors[-1], survivors[0]
    headers = key_headers(keeper)
    seeds = list(range(100, 124))  # bounded: 24 requests, 3 clients
    want = {}
    for seed in seeds:  # the survivor's answers before the run
        status, answer = generate(keeper.http_url, seed, headers)
        assert status == 200
        want[seed] = answer
    got: dict[int, tuple[int, dict]] = {}
    todo = list(seeds)
    lock = threading.Lock()
    since = proxy.log_size()

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                seed = todo.pop(0)
            got[seed] = generate_retrying(proxy.url, seed, headers)

    def sketchkit_client() -> None:  # sketchkit's own HTTP client sends a 502 again by itself
        with Client(proxy.url, timeout_s=120) as via:
            while True:
                with lock:
                    if not ours_todo:
                        return
                    seed = ours_todo.pop(0)
                try:
                    ours[seed] = via.generate("sheep", n=4, tau=0.4, seed=seed)
                except Exception as e:  # a lost request: reported by the assertion below
                    ours[seed] = e

    ours_seeds = list(range(200, 212))
    with Client(keeper.http_url) as direct:
        ours_want = {seed: direct.generate("sheep", n=4, tau=0.4, seed=seed) for seed in ours_seeds}
    ours: dict[int, object] = {}
    ours_todo = list(ours_seeds)
    clients = [threading.Thread(target=client) for _ in range(3)] + [threading.Thread(target=sketchkit_client)]
    for c in clients:
        c.start()
    deadline = time.monotonic() + 60
    while len(got) < 6 and time.monotonic() < deadline:  # some answered: the run is under way
        time.sleep(0.01)
    assert victim.process is not None
    os.killpg(victim.process.pid, signal.SIGKILL)  # the replica dies, its model stubs with it
    killed_at = len(got)
    for c in clients:
        c.join(120)
    assert not any(c.is_alive() for c in clients)
    assert victim.process.wait(10) == -signal.SIGKILL
    assert killed_at < len(seeds), "the run ended before the kill"
    lost = [seed for seed in seeds if got[seed][0] != 200]
    assert lost == [], {seed: got[seed] for seed in lost}
    assert all(got[seed][1] == want[seed] for seed in seeds)  # same sketches as before the kill
    assert sorted(ours) == ours_seeds and not [s for s in ours_seeds if isinstance(ours[s], Exception)], ours
    assert all(
        all(np.array_equal(a, b) for a, b in zip(ours[s], ours_want[s], strict=True)) for s in ours_seeds  # type: ignore[arg-type]
    )
    tried = proxy.upstreams(since)
    addr = f"127.0.0.1:{victim.http_port}"
    assert any(u == [addr] for u in tried), "the victim answered nothing before it died"
    # nginx sent a request on only where the replica it tried first was dead (connection refused)
    dead = {f"127.0.0.1:{r.http_port}" for r in replicas if r not in alive(replicas)}
    assert all(set(u[:-1]) <= dead for u in tried), tried
