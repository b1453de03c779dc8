"""Shared fixtures: the real data in ../shared (tests skip with a reason when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKETCHKIT_SHARED", ROOT.parent / "shared"))
SKETCHRNN = SHARED / "data" / "sketchrnn"
MAGENTA_GEN = SHARED / "data" / "magenta-gen"
QUICKDRAW = SHARED / "data" / "quickdraw"


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
    `ranges = False` makes the server ignore Range (200 with the whole file)."""

    def __init__(self, root: Path) -> None:
        import http.server
        import threading

        self.root = root
        self.files: dict[str, Path] = {}  # extra name -> path
        self.log: list[tuple[str, str | None]] = []  # (name, Range header)
        self.cut: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.ranges = True
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
