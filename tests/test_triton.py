"""A real tritonserver (the nvidia-pytriton wheel's binary) on 127.0.0.1 serving tiny real models:
sketches through Triton equal the in-process ones for the same seed, over gRPC and HTTP, stateless
and stateful, from many threads at once; and every failure is one clear line, never a hang."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from sketchkit.hub import load
from sketchkit.runtimes.onnx import OnnxRuntime
from sketchkit.runtimes.triton import TritonError, TritonRuntime
from sketchkit.sampling import Sampler, SamplingOptions
from sketchkit.serving.repository import RepoOptions, build_repo
from sketchkit.serving.server import ServerError, TritonServer, free_port

pytestmark = pytest.mark.triton

pytest.importorskip("pytriton", reason="needs nvidia-pytriton (pip install 'sketchkit[serve]')")

OPTS = SamplingOptions(seed=7, tau=0.6)


@pytest.fixture(scope="session")
def repo(tmp_path_factory, tiny_vae: Path, tiny_uncond: Path) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    build_repo([tiny_vae, tiny_uncond], out, RepoOptions(flavor="cpu"))
    return out


@pytest.fixture(scope="session")
def small_repo(tmp_path_factory, tiny_uncond: Path) -> Path:
    """One model: for the tests that start servers of their own."""
    out = tmp_path_factory.mktemp("triton-small") / "repo"
    build_repo([tiny_uncond], out, RepoOptions(flavor="cpu", stateful=False))
    return out


@pytest.fixture(scope="session")
def server(repo: Path, tmp_path_factory):
    log = tmp_path_factory.mktemp("triton-log") / "server.log"
    with TritonServer(repo, free_port(), free_port(), log_path=log, startup_timeout_s=120) as s:
        yield s
    assert s.process is not None and s.process.returncode == 0  # SIGTERM: a clean exit


@pytest.fixture(scope="session")
def local(tiny_vae: Path, tiny_uncond: Path) -> dict[str, Sampler]:
    return {
        "tiny-vae": Sampler(OnnxRuntime(tiny_vae)),
        "tiny-decoder-only": Sampler(OnnxRuntime(tiny_uncond)),
    }


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_ready(server):
    with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=5) as r:
        assert r.status == 200
    assert server.ready()
    assert len(server.models) == 8  # per model: the graphs, the stateful step and <name>_generate


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("mode", ["generate", "step", "stateful"])
@pytest.mark.parametrize("model", ["tiny-vae", "tiny-decoder-only"])
def test_generate_same_as_in_process(server, local, protocol, mode, model):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    stateful = mode == "stateful"
    runtime = TritonRuntime(url, model, stateful=stateful, mode="step" if stateful else mode, timeout_s=20)
    assert (runtime.remote_generator() is not None) == (mode == "generate")
    try:
        assert runtime.info == local[model].info  # model.json came from the server's config
        got = Sampler(runtime).generate(12, options=OPTS)
    finally:
        runtime.close()
    want = local[model].generate(12, options=OPTS)
    assert same(got, want)
    assert len({len(s) for s in got}) > 1  # rows finished at different steps: the batch shrank


@pytest.mark.parametrize("stateful", [False, True], ids=["stateless", "stateful"])
def test_encode_reconstruct_complete_same_as_in_process(server, local, stateful):
    ref = local["tiny-vae"]
    sketches = ref.generate(3, options=OPTS)
    with_triton = Sampler(TritonRuntime(server.grpc_url, "tiny-vae", stateful=stateful))
    np.testing.assert_array_equal(with_triton.encode(sketches)[0], ref.encode(sketches)[0])
    assert same(with_triton.reconstruct(sketches, OPTS), ref.reconstruct(sketches, OPTS))
    # complete: 1-row steps over the partial sketch, then the row repeated k times
    assert same(
        with_triton.complete(sketches[0][:6], k=5, options=OPTS),
        ref.complete(sketches[0][:6], k=5, options=OPTS),
    )
    with_triton.runtime.close()


def test_batches_bigger_than_max_batch_size_go_in_chunks(server, local):
    runtime = TritonRuntime(server.grpc_url, "tiny-vae", mode="step")
    runtime.max_batch_size = 5
    assert same(Sampler(runtime).generate(13, options=OPTS), local["tiny-vae"].generate(13, options=OPTS))


@pytest.mark.parametrize("stateful", [False, True], ids=["stateless", "stateful"])
def test_concurrent_generations_share_one_runtime(server, local, stateful):
    runtime = TritonRuntime(server.grpc_url, "tiny-decoder-only", stateful=stateful)
    seeds = range(8)
    results: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for _ in range(2):  # a second generation on the same thread ends the first sequence
                results[seed] = Sampler(runtime).generate(6, options=SamplingOptions(seed=seed))
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    runtime.close()
    assert not errors
    for s in seeds:
        assert same(results[s], local["tiny-decoder-only"].generate(6, options=SamplingOptions(seed=s)))


def test_stateful_sequence_is_ended_by_the_next_one(server):
    runtime = TritonRuntime(server.grpc_url, "tiny-decoder-only", stateful=True)
    prev = np.zeros((2, 5), np.float32)
    first = runtime.init_state(None, 2)
    _, first = runtime.step(prev, None, first)
    runtime.init_state(None, 2)  # same thread: the first sequence is ENDed, its state freed
    with pytest.raises(TritonError, match="must specify the START flag"):  # Triton ended it
        runtime.step(prev, None, first)
    runtime.close()


def test_model_absent_is_one_line(server):
    with pytest.raises(TritonError) as e:
        TritonRuntime(server.grpc_url, "owl")
    msg = str(e.value)
    assert "model 'owl' is not served by" in msg and "tiny-vae" in msg and "\n" not in msg
    with pytest.raises(TritonError, match="not served"):
        TritonRuntime(server.http_url, "owl")


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_server_down_is_one_line(scheme):
    t = time.monotonic()
    with pytest.raises(TritonError) as e:
        TritonRuntime(f"{scheme}://127.0.0.1:{free_port()}", "tiny-vae", retries=2, timeout_s=5)
    assert "is unavailable" in str(e.value) and "\n" not in str(e.value)
    assert time.monotonic() - t < 5


def test_bad_url():
    with pytest.raises(TritonError, match="bad Triton URL"):
        TritonRuntime("ftp://x:1", "m")
    with pytest.raises(TritonError, match="only \\?step=1 or \\?stateful=1"):
        load("m", server="grpc://127.0.0.1:1?fast=1")


def test_kill_server_mid_generation(small_repo, tmp_path):
    """SIGKILL the server (and its stubs) after a few steps: the next step fails in one line."""
    server = TritonServer(small_repo, free_port(), free_port(), log_path=tmp_path / "log").start()
    try:

        class Killer(TritonRuntime):
            steps = 0

            def step(self, prev, z, state):
                Killer.steps += 1
                if Killer.steps == 4:
                    os.killpg(server.process.pid, signal.SIGKILL)
                    server.process.wait(10)
                return super().step(prev, z, state)

        runtime = Killer(server.grpc_url, "tiny-decoder-only", retries=2, timeout_s=5, mode="step")
        t = time.monotonic()
        with pytest.raises(TritonError) as e:
            Sampler(runtime).generate(8, options=OPTS)
        assert time.monotonic() - t < 10
        assert Killer.steps == 4
        assert str(e.value).startswith(f"Triton server at {server.grpc_url} is unavailable")
        assert "\n" not in str(e.value)
    finally:
        server.stop()


def test_start_errors(repo, server, tmp_path, tiny_vae):
    with pytest.raises(ServerError, match=f"port {server.grpc_port} on 127.0.0.1 is already in use"):
        TritonServer(repo, free_port(), server.grpc_port).start()
    with pytest.raises(ServerError, match="no such model repository"):
        TritonServer(tmp_path / "nothing").start()
    gpu = tmp_path / "gpu"
    build_repo([tiny_vae], gpu, RepoOptions(flavor="gpu", stateful=False))
    with pytest.raises(ServerError, match="only the Python backend: build the repository with --flavor cpu"):
        TritonServer(gpu, free_port(), free_port()).start()


def test_model_that_fails_to_load_shows_tritons_reason(small_repo, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(small_repo, bad)
    (bad / "tiny-decoder-only_decoder_step" / "1" / "model.onnx").write_bytes(b"not onnx")
    t = time.monotonic()
    with pytest.raises(ServerError) as e:
        TritonServer(bad, free_port(), free_port(), log_path=tmp_path / "log").start()
    msg = str(e.value)
    assert msg.startswith("a model failed to load: tiny-decoder-only_decoder_step: ")
    assert "Protobuf parsing failed" in msg and "\n" not in msg
    assert time.monotonic() - t < 60


def test_generate_model_refuses_to_start_without_its_execution_provider(small_repo, tmp_path):
    """Issue 22: a KIND_GPU <name>_generate whose CUDA provider does not load would silently run on
    the CPU (onnxruntime falls back). Here the CPU onnxruntime has no CUDA provider: asked for it
    (the `execution_provider` config parameter; KIND_GPU asks by default), the model refuses to
    load with one line (fails on b361367: it loaded and ran on the CPU)."""
    bad = tmp_path / "bad"
    shutil.copytree(small_repo, bad)
    config = bad / "tiny-decoder-only_generate" / "config.pbtxt"
    config.write_text(config.read_text() + 'parameters { key: "execution_provider" value { string_value: "CUDAExecutionProvider" } }\n')
    with pytest.raises(ServerError) as e:
        TritonServer(bad, free_port(), free_port(), log_path=tmp_path / "log").start()
    msg = str(e.value)
    assert msg.startswith("a model failed to load: tiny-decoder-only_generate: ") and "\n" not in msg
    assert "CUDAExecutionProvider is not active in onnxruntime (active: CPUExecutionProvider)" in msg


def test_stub_that_cannot_start_fails_fast(small_repo, tmp_path):
    """A copied stub without the wheel's libraries makes Triton hang in "loading"; we fail fast."""

    class CopiedStub(TritonServer):
        def environment(self, env, triton):
            return super().environment(env, triton) | {"LD_LIBRARY_PATH": env.libdir}

        def command(self, backends):
            copy = tmp_path / "backends" / "python"
            copy.mkdir(parents=True)
            for f in (backends / "python").iterdir():
                if f.is_file():
                    shutil.copy2(f.resolve(), copy / f.name)
            return super().command(copy.parent)

    t = time.monotonic()
    with pytest.raises(ServerError, match="stub cannot start: .*error while loading shared libraries"):
        CopiedStub(small_repo, free_port(), free_port(), log_path=tmp_path / "log").start()
    assert time.monotonic() - t < 30


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_cli_start_prints_urls_and_stops_on_signal(small_repo, tmp_path, sig):
    """Its own temp log is removed after a clean stop (issue 26: logs were left in /tmp); a --log is kept."""
    http, grpc, metrics = free_port(), free_port(), free_port()
    log = ["--log", str(tmp_path / "log")] if sig == signal.SIGTERM else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "sketchkit", "serve", "start", str(small_repo), "--http-port", str(http), "--grpc-port", str(grpc),
         "--metrics-port", str(metrics), *log],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()  # blocks until ready (or the command fails)
        assert line.startswith(f"ready: grpc://127.0.0.1:{grpc}  http://127.0.0.1:{http}"), proc.stderr.read()
        url = f"http://127.0.0.1:{metrics}/metrics"
        assert f"metrics: {url}" in line
        with urllib.request.urlopen(url, timeout=5) as r:  # the port it reports serves Prometheus text
            assert b"nv_inference_count" in r.read()
        proc.send_signal(sig)
        assert proc.wait(30) == 0
        err = proc.stderr.read()
        assert "stopped" in err
        used = Path(re.search(r"\(log: (.*)\)", err)[1])
        assert used.exists() == bool(log) and (not log or used == tmp_path / "log")
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("query", ["", "?step=1", "?stateful=1"], ids=["generate", "step", "stateful"])
def test_cli_generate_with_server_same_as_in_process(server, tiny_uncond, query):
    from click.testing import CliRunner

    from sketchkit.cli import cli

    args = ["generate", str(tiny_uncond), "-n", "4", "--seed", "3", "--json"]
    local = CliRunner().invoke(cli, args)
    remote = CliRunner().invoke(cli, [*args, "--server", server.grpc_url + query])
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    assert remote.output == local.output


def test_cli_generate_with_server_down_is_one_line(tiny_uncond):
    url = f"grpc://127.0.0.1:{free_port()}"
    proc = subprocess.run([sys.executable, "-m", "sketchkit", "generate", str(tiny_uncond), "-n", "2", "--json",
                           "--server", url], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: Triton server at {url} is unavailable")
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_hung_server_times_out_in_one_line(scheme):
    """A server that accepts connections and never answers: the request's timeout, not a hang."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"{scheme}://127.0.0.1:{listener.getsockname()[1]}"
        t = time.monotonic()
        with pytest.raises(TritonError, match=f"^Triton at {url}: .* timed out after 1 s$"):
            TritonRuntime(url, "tiny-vae", timeout_s=1, retries=1)
        assert time.monotonic() - t < 10


def test_missing_binary_is_one_line(small_repo, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pytriton" else find_spec(name, *a)
    )
    with pytest.raises(ServerError, match=r"tritonserver not found: pip install 'sketchkit\[serve\]'"):
        TritonServer(small_repo, free_port(), free_port()).start()


def test_retries_ride_out_a_server_that_is_starting(small_repo, tmp_path, local):
    """UNAVAILABLE (nothing listening yet) is retried with backoff until the server is up."""
    server = TritonServer(small_repo, free_port(), free_port(), log_path=tmp_path / "log")
    starter = threading.Thread(target=server.start)
    starter.start()
    try:
        runtime = TritonRuntime(server.grpc_url, "tiny-decoder-only", retries=8, timeout_s=10)
        assert same(
            Sampler(runtime).generate(3, options=OPTS), local["tiny-decoder-only"].generate(3, options=OPTS)
        )
        runtime.close()
    finally:
        starter.join(60)
        server.stop()
