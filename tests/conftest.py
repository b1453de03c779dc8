"""Shared fixtures: the real data in ../shared (tests skip with a reason when it is absent)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKETCHKIT_SHARED", ROOT.parent / "shared"))
SKETCHRNN = SHARED / "data" / "sketchrnn"
MAGENTA_GEN = SHARED / "data" / "magenta-gen"
QUICKDRAW = SHARED / "data" / "quickdraw"
# the release scripts (make_registry, ship) live in scripts/, outside the installed package
sys.path.append(str(ROOT / "scripts"))


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (tests read real data from ../shared)")
    return path


@pytest.fixture(scope="session")
def sheep_npz() -> Path:
    return need(SKETCHRNN / "aaron_sheep.npz")


@pytest.fixture(scope="session")
def sketchrnn_dir() -> Path:
    return need(SKETCHRNN)


@pytest.fixture(scope="session")
def magenta_gen_dir() -> Path:
    return need(MAGENTA_GEN)


@pytest.fixture(scope="session")
def quickdraw_dir() -> Path:
    return need(QUICKDRAW)


@pytest.fixture(scope="session")
def sheep(sheep_npz: Path):
    from sketchkit.datasets import load_npz

    return load_npz(sheep_npz)


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real vae model directory (random weights; tests/onnx_fixtures.py)."""
    from onnx_fixtures import make_model

    return make_model(tmp_path_factory.mktemp("tiny-vae"), "vae")


@pytest.fixture(scope="session")
def tiny_uncond(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real decoder-only model directory (random weights; tests/onnx_fixtures.py)."""
    from onnx_fixtures import make_model

    return make_model(tmp_path_factory.mktemp("tiny-uncond"), "decoder-only")


# ---- a real HTTP mirror on 127.0.0.1 for the zoo tests (stdlib only) --------------------------
class ZooMirror:
    """Serves files by name, with Range requests, and logs every request. `cut` makes the next
    responses of a file stop halfway (connection closed); `corrupt` flips one byte of a file;
    `ranges = False` makes the server ignore Range (200 with the whole file). Hostile modes
    (tests/test_hostile.py): `no_length` sends no Content-Length (the end is where the
    connection closes); `half` sends half the file as if it were all; `extra[name] = n` appends
    n zero bytes; `drip[name] = (bytes, seconds)` sends that many bytes per pause. `sent[name]`
    counts the bytes that reached the socket."""

    def __init__(self, root: Path) -> None:
        import http.server
        import threading

        self.root = root
        self.files: dict[str, Path] = {}  # extra name -> path
        self.log: list[tuple[str, str | None]] = []  # (name, Range header)
        self.cut: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.ranges = True
        self.no_length: set[str] = set()
        self.half: set[str] = set()
        self.extra: dict[str, int] = {}
        self.drip: dict[str, tuple[int, float]] = {}
        self.sent: dict[str, int] = {}
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                import urllib.parse

                name = urllib.parse.unquote(self.path.lstrip("/"))
                rng = self.headers.get("Range")
                mirror.log.append((name, rng))
                path = mirror.files.get(name, mirror.root / name)
                if not path.is_file():
                    self.send_error(404)
                    return
                data = bytearray(path.read_bytes())
                if name in mirror.corrupt:
                    data[len(data) // 2] ^= 0xFF
                start = int(rng.removeprefix("bytes=").rstrip("-")) if rng and mirror.ranges else 0
                if start >= len(data) and start:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if name in mirror.no_length | mirror.half | set(mirror.extra) | set(mirror.drip):
                    self.hostile(name, bytes(data))
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = bytes(data[start:])
                if mirror.cut.get(name):
                    mirror.cut[name] -= 1
                    self.wfile.write(body[: len(data) // 2 - start])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def hostile(self, name: str, data: bytes) -> None:
                import time

                extra = mirror.extra.get(name, 0)
                body = data[: len(data) // 2] if name in mirror.half else data
                self.send_response(200)
                if name not in mirror.no_length:
                    self.send_header("Content-Length", str(len(body) + extra))
                self.end_headers()
                step, pause = mirror.drip.get(name, (1 << 16, 0.0))
                mirror.sent[name] = 0
                try:
                    for i in range(0, len(body), step):
                        self.wfile.write(body[i : i + step])
                        self.wfile.flush()
                        mirror.sent[name] += len(body[i : i + step])
                        time.sleep(pause)
                    zeros = bytes(1 << 16)
                    while extra > 0:
                        self.wfile.write(zeros[: min(extra, len(zeros))])
                        mirror.sent[name] += min(extra, len(zeros))
                        extra -= len(zeros)
                except OSError:  # the client hung up: what we count is what it got
                    pass
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def requests(self, name: str) -> list[str | None]:
        return [r for n, r in self.log if n == name]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def zoo_mirror(magenta_gen_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """../shared/data/magenta-gen served on 127.0.0.1, SKETCHKIT_ZOO_MIRROR pointing at it and
    SKETCHKIT_CACHE = tmp_path/cache."""
    mirror = ZooMirror(magenta_gen_dir)
    monkeypatch.setenv("SKETCHKIT_ZOO_MIRROR", mirror.url)
    monkeypatch.setenv("SKETCHKIT_CACHE", str(tmp_path / "cache"))
    yield mirror
    mirror.close()


@pytest.fixture
def key_file_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """make(key): a fresh SKETCHKIT_CACHE whose server.key (0600) holds `key`, with
    $SKETCHKIT_SERVER_KEY unset, so that what a client sends comes from the key file."""

    def make(key: str) -> Path:
        cache = tmp_path / "cache"
        cache.mkdir()
        fd = os.open(cache / "server.key", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, (key + "\n").encode())
        os.close(fd)
        monkeypatch.setenv("SKETCHKIT_CACHE", str(cache))
        monkeypatch.delenv("SKETCHKIT_SERVER_KEY", raising=False)
        return cache

    return make
