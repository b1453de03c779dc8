"""The playground's HTTP API on a real uvicorn server on 127.0.0.1, sampling the shipped sheep:
what it returns, and what it refuses (one line, 4xx) while going on serving."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from sketchkit.playground import Catalogue, create_app  # noqa: E402
from sketchkit.playground.canvas import SPAN, Canvas  # noqa: E402
from sketchkit.playground.server import running  # noqa: E402
from sketchkit.sampling import SamplingOptions  # noqa: E402

SHEEP_SCALE = 18.519826873930498  # zoo/models/sheep/model.json


def request(url: str, path: str, body: object = None, *, raw: bytes | None = None,
            content_type: str = "application/json", headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """(status, JSON body) of GET (no body) or POST."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except json.JSONDecodeError:
            return e.code, {"text": text.decode(errors="replace")}


@pytest.fixture(scope="module")
def server(tiny_uncond: Path):
    catalogue = Catalogue(["sheep", str(tiny_uncond)])
    with running(create_app(catalogue)) as url:
        yield url
    catalogue.close()


def zigzag(n: int = 12, x0: float = 60, y0: float = 200) -> list[list[float]]:
    return [[x0 + 20 * i, y0 + (25 if i % 2 else 0)] for i in range(n)]


def drawing(*strokes: list[list[float]]) -> dict:
    return {"strokes": list(strokes), "width": 400, "height": 400}


# ---- units ------------------------------------------------------------------------------------
def test_the_canvas_side_spans_span_normalised_units_and_maps_back_exactly() -> None:
    canvas = Canvas(400, SHEEP_SCALE)
    lines = [np.array([[0.0, 0.0], [400.0, 0.0]]), np.array([[400.0, 10.0], [400.0, 20.0], [390.5, 20.25]])]
    sketch = canvas.to_model(lines)
    assert sketch[0, 0] / SHEEP_SCALE == pytest.approx(SPAN)  # across the canvas = SPAN normalised units
    assert list(sketch[:, 2]) == [1, 0, 0, 1]
    back = canvas.to_canvas(sketch, lines[0][0])
    for a, b in zip(back, lines, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_simplifying_keeps_drawn_points_only_endpoints_included() -> None:
    canvas = Canvas(400, SHEEP_SCALE)
    t = np.linspace(0, np.pi, 200)
    line = np.stack([200 + 100 * np.cos(t), 200 + 100 * np.sin(t)], 1)
    (simple,) = canvas.simplify([line])
    assert 8 < len(simple) < 60  # dense pointer samples thinned to about the training data's density
    assert (simple[0] == line[0]).all() and (simple[-1] == line[-1]).all()
    assert all((line == p).all(axis=1).any() for p in simple)


# ---- what the API returns ---------------------------------------------------------------------
def test_models_lists_the_command_line_models_first_then_the_zoo_with_licences(server: str) -> None:
    status, doc = request(server, "/api/models")
    assert status == 200 and doc["default"] == "sheep" and doc["server"] is None
    first = doc["models"][0]
    assert first == {
        "name": "sheep", "group": "command line", "set": "sketchkit", "kind": "vae", "license": "CC BY-NC 4.0", "open": True,
    }  # fmt: skip
    groups = {m["group"] for m in doc["models"]}
    assert "downloadable" in groups
    owl = next(m for m in doc["models"] if m["name"] == "magenta/owl.vae")
    assert owl["license"] == "Apache-2.0" and owl["kind"] == "vae" and owl["set"] == "magenta"


def test_the_picker_groups_the_zoo_as_zoo_list_does(server: str) -> None:
    """Issue 26 item 10: the picker's 457 models come in groups, the downloadable ones set by set,
    each set's label from the API (the page makes one optgroup per (group, set))."""
    from sketchkit import hub

    _, doc = request(server, "/api/models")
    assert doc["sets"] == hub.SETS
    order = [(m["group"], m["set"]) for m in doc["models"]]
    runs = [key for i, key in enumerate(order) if i == 0 or order[i - 1] != key]  # each group once, in a row
    assert len(runs) == len(set(runs))
    downloadable = [s for g, s in runs if g == "downloadable"]
    assert downloadable == [s for s in hub.SETS if s in downloadable] and {"magenta", "magenta-large"} <= set(downloadable)
    assert all(m["set"] == hub.model_set(m["name"]) for m in doc["models"] if m["group"] == "downloadable")


def test_model_card(server: str) -> None:
    status, card = request(server, "/api/model", {"model": "sheep"})
    assert status == 200
    assert (card["kind"], card["max_seq_len"], card["license"]) == ("vae", 250, "CC BY-NC 4.0")


def test_complete_returns_k_endings_that_start_with_the_simplified_drawing(server: str) -> None:
    strokes = [zigzag(), [[80, 120], [150, 90], [220, 120]]]
    body = {"model": "sheep", "drawing": drawing(*strokes), "k": 5, "tau": 0.4, "seed": 7}
    status, doc = request(server, "/api/complete", body)
    assert status == 200, doc
    assert (doc["seed"], doc["tau"], doc["drawn"], len(doc["sketches"])) == (7, 0.4, 2, 5)
    prefix = Canvas(400, SHEEP_SCALE).simplify([np.array(s, float) for s in strokes])
    for sketch in doc["sketches"]:
        for got, want in zip(sketch[:2], prefix, strict=True):
            np.testing.assert_allclose(got, want, atol=0.01)
    assert any(len(s) > 2 for s in doc["sketches"])  # the model drew something
    again = request(server, "/api/complete", body)[1]
    assert again["sketches"] == doc["sketches"]  # a seed replays


def test_a_request_without_a_seed_gets_one_that_replays_it(server: str) -> None:
    body = {"model": "sheep", "n": 3, "tau": 0.3}
    status, doc = request(server, "/api/generate", body)
    assert status == 200 and isinstance(doc["seed"], int) and len(doc["sketches"]) == 3
    assert request(server, "/api/generate", {**body, "seed": doc["seed"]})[1]["sketches"] == doc["sketches"]


def test_reconstruct_and_morph_on_the_vae(server: str) -> None:
    a, b = drawing(zigzag()), drawing([[100, 100], [300, 100], [300, 300], [100, 300], [100, 100]])
    status, rec = request(server, "/api/reconstruct", {"model": "sheep", "drawing": a, "n": 3, "seed": 1})
    assert status == 200 and len(rec["sketches"]) == 3
    status, path = request(server, "/api/morph", {"model": "sheep", "a": a, "b": b, "steps": 4, "tau": 0.1, "seed": 1})
    assert status == 200 and len(path["sketches"]) == 4


def test_a_decoder_only_model_refuses_latent_operations_but_completes(server: str, tiny_uncond: Path) -> None:
    name = str(tiny_uncond)
    status, doc = request(server, "/api/reconstruct", {"model": name, "drawing": drawing(zigzag())})
    assert status == 422 and "decoder-only" in doc["error"]
    status, doc = request(server, "/api/complete", {"model": name, "drawing": drawing(zigzag()), "k": 2, "seed": 0})
    assert status == 200 and len(doc["sketches"]) == 2


# ---- what it refuses --------------------------------------------------------------------------
MILLION = b'{"model": "sheep", "k": 8, "drawing": {"width": 400, "height": 400, "strokes": [[' + b",".join(
    [b"[123.5, 234.5]"] * 1_000_000) + b"]]}}"
LONG = [[10 + (i % 38) * 10, 10 + (i // 38) * 40 + (30 if i % 2 else 0)] for i in range(380)]  # 380 corners

BAD = {
    "empty drawing": ({"model": "sheep", "drawing": drawing()}, 400, "empty"),
    "a single point": ({"model": "sheep", "drawing": drawing([[5, 5]])}, 400, "empty"),
    "no drawing": ({"model": "sheep"}, 400, "drawing must be"),
    "a million points": (MILLION, 413, "over the limit"),
    "NaN": (b'{"model": "sheep", "drawing": {"width": 400, "height": 400, "strokes": [[[1, 2], [NaN, 3]]]}}', 400, "NaN"),
    "Infinity tau": (b'{"model": "sheep", "tau": Infinity, "drawing": {"width": 400, "height": 400, "strokes": [[[1, 2], [3, 4]]]}}', 400, "Infinity"),
    "huge number": (b'{"model": "sheep", "drawing": {"width": 400, "height": 400, "strokes": [[[1, 2], [1e999, 3]]]}}', 400, "outside the canvas"),
    "unknown model": ({"model": "no-such-model", "drawing": drawing(zigzag())}, 404, "unknown model"),
    "a path as model": ({"model": "/etc", "drawing": drawing(zigzag())}, 404, "unknown model"),
    "k = 0": ({"model": "sheep", "drawing": drawing(zigzag()), "k": 0}, 400, "k must be"),
    "k = 10^4": ({"model": "sheep", "drawing": drawing(zigzag()), "k": 10_000}, 400, "k must be"),
    "k a string": ({"model": "sheep", "drawing": drawing(zigzag()), "k": "8"}, 400, "k must be"),
    "tau 0": ({"model": "sheep", "drawing": drawing(zigzag()), "tau": 0}, 400, "tau must be"),
    "tau 5": ({"model": "sheep", "drawing": drawing(zigzag()), "tau": 5}, 400, "tau must be"),
    "negative seed": ({"model": "sheep", "drawing": drawing(zigzag()), "seed": -1}, 400, "seed must be"),
    "strings as points": ({"model": "sheep", "drawing": drawing([["1", "2"], ["3", "4"]])}, 400, "number pairs"),
    "ragged points": ({"model": "sheep", "drawing": drawing([[1, 2], [3]])}, 400, "number pairs"),
    "tiny canvas": ({"model": "sheep", "drawing": {"strokes": [zigzag()], "width": 2, "height": 2}}, 400, "canvas"),
    "too long for the model": ({"model": "sheep", "drawing": drawing(LONG)}, 422, "reads at most"),
    "not JSON": (b"{model: sheep", 400, "not JSON"),
    "a JSON list": (b"[1, 2]", 400, "JSON object"),
    # issue 22, item 8 (fail on b361367: 500, Python's ValueError / RecursionError)
    "a 5,001-digit seed": (b'{"model": "sheep", "seed": ' + b"9" * 5001 + b"}", 400, "not JSON this API takes"),
    "JSON nested 100,000 deep": (b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nested too deeply"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_4xx_with_one_line_and_the_server_goes_on(server: str, case: str) -> None:
    body, want_status, want_text = BAD[case]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, doc = request(server, "/api/complete", raw=raw)
    assert status == want_status, doc
    assert want_text in doc["error"] and "\n" not in doc["error"] and len(doc["error"]) <= 300
    assert request(server, "/api/models")[0] == 200  # still answering


def test_other_content_types_and_foreign_host_names_are_refused(server: str) -> None:
    status, doc = request(server, "/api/complete", {"model": "sheep"}, content_type="text/plain")
    assert status == 415 and "application/json" in doc["error"]  # a cross-site form post cannot get in
    status, _ = request(server, "/api/models", headers={"Host": "evil.example"})
    assert status == 400  # nor a page elsewhere through a DNS name pointed at 127.0.0.1


def test_ipv6_loopback_host_is_answered_and_others_are_not(tiny_uncond: Path) -> None:
    """Issue 22, item 8 (fails on b361367: `--host ::1` refused the browser's own `Host: [::1]:port`)."""
    from sketchkit.cli.playground import LOOPBACK

    with running(create_app(Catalogue([str(tiny_uncond)], zoo=False), LOOPBACK)) as url:
        for host, want in [("[::1]:8765", 200), ("[::1]", 200), ("localhost:1", 200), ("LOCALHOST", 200),
                           ("evil.example", 400), ("[::1].evil.example", 400), ("[evil]:1", 400), ("", 400)]:  # fmt: skip
            assert request(url, "/api/models", headers={"Host": host})[0] == want, host


def test_every_interface_keeps_a_host_allow_list_and_warns(tmp_path: Path) -> None:
    """Issue 22, item 8 (fails on b361367: `--host 0.0.0.0` answered any Host, without a word)."""
    proc = subprocess.Popen(_cli("playground", "--host", "0.0.0.0", "--port", "0", "--allow-host", "sketch.lan"),
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "SKETCHKIT_CACHE": str(tmp_path)})  # fmt: skip
    try:
        assert proc.stderr is not None
        warning, line = proc.stderr.readline(), proc.stderr.readline()
        assert warning.startswith("warning: listening on every interface") and "sketch.lan" in warning, warning
        port = re.search(r"http://0\.0\.0\.0:(\d+)", line)
        assert port, line
        url = f"http://127.0.0.1:{port.group(1)}"
        assert request(url, "/api/models")[0] == 200
        assert request(url, "/api/models", headers={"Host": f"sketch.lan:{port.group(1)}"})[0] == 200
        assert request(url, "/api/models", headers={"Host": f"{socket.gethostname()}:{port.group(1)}"})[0] == 200
        assert request(url, "/api/models", headers={"Host": "rebound.evil.example"})[0] == 400
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_open_zoo_models_are_capped_least_recently_used_first(zoo_mirror) -> None:
    """Issue 22, item 9 (fails on b361367: every model anyone picked stayed open for good)."""
    catalogue = Catalogue(["sheep"], max_open=1)
    try:
        catalogue.sampler("magenta/owl.gen")
        catalogue.sampler("magenta/cat.gen")  # closes owl: one zoo model open at a time
        opened = {m["name"] for m in catalogue.listing() if m["open"]}
        assert opened == {"sheep", "magenta/cat.gen"}
        with catalogue.lock("magenta/owl.gen"):  # reopened on its next pick, and sampled
            sketch = catalogue.sampler("magenta/owl.gen").generate(1, options=SamplingOptions(seed=1, max_len=20))
        assert len(sketch) == 1 and {m["name"] for m in catalogue.listing() if m["open"]} == {"sheep", "magenta/owl.gen"}
    finally:
        catalogue.close()


def test_the_page_and_its_files_are_served(server: str) -> None:
    with urllib.request.urlopen(server + "/", timeout=30) as r:
        page = r.read().decode()
    assert "finish it" in page
    for asset in re.findall(r'(?:href|src)="(static/[^"]+)"', page):
        with urllib.request.urlopen(f"{server}/{asset}", timeout=30) as r:
            assert r.status == 200 and r.read()


# ---- the command --------------------------------------------------------------------------------
def _cli(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("sketchkit")
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "sketchkit", *args]


def test_the_command_serves_the_page_on_loopback(tmp_path: Path) -> None:
    proc = subprocess.Popen(_cli("playground", "--port", "0"), stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SKETCHKIT_CACHE": str(tmp_path)})
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url, line
        status, doc = request(url.group(0), "/api/models")
        assert status == 200 and doc["default"] == "sheep"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_taken_port_is_one_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(_cli("playground", "--port", str(port)), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot listen on 127.0.0.1:") and result.stderr.count("\n") == 1


def test_playground_help_loads_no_web_stack() -> None:
    from test_imports import loaded_packages

    code = "from sketchkit.cli import main\ntry:\n    main(['playground', '--help'])\nexcept SystemExit:\n    pass"
    assert not loaded_packages(code) & {"starlette", "uvicorn", "onnxruntime", "torch"}


# ---- through Triton -----------------------------------------------------------------------------
@pytest.mark.triton
def test_with_server_the_page_gets_the_same_sketches_through_triton(tmp_path: Path) -> None:
    pytest.importorskip("pytriton", reason="needs nvidia-pytriton (pip install 'sketchkit[serve]')")
    from sketchkit.hub import resolve
    from sketchkit.serving.repository import RepoOptions, build_repo
    from sketchkit.serving.server import TritonServer, free_port

    build_repo([resolve("sheep")], tmp_path / "repo", RepoOptions(flavor="cpu"))
    body = {"model": "sheep", "drawing": drawing(zigzag()), "k": 3, "tau": 0.6, "seed": 11}
    local = Catalogue(["sheep"], zoo=False)
    with TritonServer(tmp_path / "repo", free_port(), grpc_port := free_port(), log_path=tmp_path / "log",
                      startup_timeout_s=120):
        remote = Catalogue(["sheep"], server=f"grpc://127.0.0.1:{grpc_port}")
        with running(create_app(local)) as here, running(create_app(remote)) as there:
            assert request(there, "/api/models")[1]["models"] == [
                {"name": "sheep", "group": "server", "set": "", "kind": "vae", "license": "CC BY-NC 4.0", "open": True}
            ]
            for path in ("/api/complete", "/api/generate"):
                want, got = request(here, path, body), request(there, path, body)
                assert got[0] == 200 and got[1]["sketches"] == want[1]["sketches"]
        remote.close()
    local.close()
