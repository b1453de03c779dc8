"""Two cpu-flavor tritonservers behind a real nginx, configured as the manifests' Ingress
(serving/deploy/nginx/nginx.conf): a seeded request gives the same sketches through either
replica and through the proxy (HTTP and gRPC), requests go round robin, the management APIs
stop at the proxy, and killing one replica in the middle of a load run loses no seeded request:
nginx retries it on the survivor, whose answers are the ones it gave before."""

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
    """nginx with serving/deploy/nginx/nginx.conf in front of `replicas`, on 127.0.0.1."""

    def __init__(self, replicas: list[TritonServer], root: Path) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        root.mkdir(parents=True, exist_ok=True)
        conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
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
    """Replicas a and b (the same repository, as the Deployment's pods build it) and nginx."""
    root = tmp_path_factory.mktemp("replicas")
    build_repo([resolve("sheep")], root / "repo", RepoOptions(stateful=False), names=["sheep"])
    replicas = []
    try:
        for name in ("a", "b"):
            replicas.append(TritonServer(root / "repo", free_port(), free_port(), log_path=root / f"{name}.log").start())
        proxy = Nginx(replicas, root / "nginx")
        try:
            yield replicas, proxy
        finally:
            proxy.stop()
    finally:
        for r in replicas:
            r.stop()


def generate(url: str, seed: int, headers: dict[str, str]) -> tuple[int, dict, str]:
    """(status, answer, X-Upstream) of a seeded 4-sketch generate."""
    body = json.dumps({"n": 4, "tau": 0.4, "seed": seed}).encode()
    request = urllib.request.Request(url + GENERATE, body, headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read()), r.headers.get("X-Upstream", "")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), e.headers.get("X-Upstream", "")


def key_headers(server: TritonServer) -> dict[str, str]:
    return dict(getattr(server, "headers", {}))  # issue 22 may put inference behind a key header


def test_same_seed_same_sketches_through_either_replica_and_the_proxy(cluster):
    (a, b), proxy = cluster
    headers = key_headers(a)
    upstreams = set()
    for seed in range(4):
        want = generate(a.http_url, seed, headers)
        assert want[0] == 200, want
        assert generate(b.http_url, seed, headers)[1] == want[1]
        status, got, upstream = generate(proxy.url, seed, headers)
        assert status == 200 and got == want[1]
        upstreams.add(upstream)
    # round robin: both replicas answered through the proxy
    assert upstreams == {f"127.0.0.1:{a.http_port}", f"127.0.0.1:{b.http_port}"}


def test_grpc_through_the_proxy_gives_the_same_sketches(cluster):
    from sketchkit.client import Client

    (a, _), proxy = cluster
    direct = Client(a.grpc_url).generate("sheep", n=3, tau=0.4, seed=11)
    for _ in range(2):  # both replicas, round robin
        via = Client(f"grpc://127.0.0.1:{proxy.grpc_port}").generate("sheep", n=3, tau=0.4, seed=11)
        assert len(via) == len(direct) and all(np.array_equal(x, y) for x, y in zip(via, direct, strict=True))


def test_the_proxy_passes_no_management_api(cluster):
    (a, _), proxy = cluster
    for method, path in (("GET", "/v2/systemsharedmemory/status"), ("POST", "/v2/repository/index"),
                         ("GET", "/v2/models/stats"), ("GET", "/v2/logging"), ("GET", "/v2/trace/setting")):  # fmt: skip
        request = urllib.request.Request(proxy.url + path, method=method, data=b"{}" if method == "POST" else None)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 404, path


def test_killing_a_replica_mid_load_loses_no_seeded_request(cluster):
    (a, b), proxy = cluster
    headers = key_headers(a)
    seeds = list(range(100, 124))  # bounded: 24 requests, 3 clients
    want = {}
    for seed in seeds:  # the survivor's answers before the run
        status, answer, _ = generate(a.http_url, seed, headers)
        assert status == 200
        want[seed] = answer
    got: dict[int, tuple[int, dict, str]] = {}
    todo = list(seeds)
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                seed = todo.pop(0)
            got[seed] = generate(proxy.url, seed, headers)

    clients = [threading.Thread(target=client) for _ in range(3)]
    for c in clients:
        c.start()
    deadline = time.monotonic() + 60
    while len(got) < 6 and time.monotonic() < deadline:  # some answered: the run is under way
        time.sleep(0.01)
    assert b.process is not None
    os.killpg(b.process.pid, signal.SIGKILL)  # replica b dies, its model stubs with it
    killed_at = len(got)
    for c in clients:
        c.join(120)
    assert not any(c.is_alive() for c in clients)
    assert b.process.wait(10) == -signal.SIGKILL
    assert killed_at < len(seeds), "the run ended before the kill"
    lost = [seed for seed in seeds if got[seed][0] != 200]
    assert lost == [], {seed: got[seed][:2] for seed in lost}
    assert all(got[seed][1] == want[seed] for seed in seeds)  # same sketches as before the kill
    b_addr = f"127.0.0.1:{b.http_port}"
    assert any(upstream == b_addr for _, _, upstream in got.values()), "b answered nothing before it died"
    # a request b could not answer went on to a: X-Upstream lists both, b first
    assert any(upstream.startswith(b_addr + ", ") for _, _, upstream in got.values())
