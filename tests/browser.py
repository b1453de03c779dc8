"""Headless Chromium driven over the DevTools protocol: real pointer events on the real page.

Test tooling, so it lives in tests/ and not in the wheel: tests/test_playground_browser.py and
benchmarks/bench_playground.py (which puts tests/ on its path) draw with it. It uses the
distribution's `chromium` (Debian: `apt-get install chromium`), started with a fresh profile and
everything that would reach the network switched off, and talks to it over one websocket (the
`websockets` package, in the dev extra). Playwright would do the same through a Node.js driver; this is the
sixty lines of it that the playground needs.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sketchkit import strokes
from sketchkit.errors import SketchkitError

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--hide-scrollbars", "--mute-audio", "--remote-debugging-port=0",
)


def find_chromium() -> str | None:
    """The distribution's Chromium, if installed."""
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def mouse_lines(sketch: np.ndarray, size: float = 400, fill: float = 0.8, whole: np.ndarray | None = None) -> list[list[tuple[int, int]]]:
    """A stroke-3 sketch as whole-pixel polylines to draw with the mouse on a `size` canvas:
    scaled and centred so that `whole` (default: the sketch itself) would fill `fill` of it, with
    repeated points dropped (a mouse that does not move sends no event)."""
    x0, x1, y0, y1 = strokes.bounds(sketch if whole is None else whole)
    scale = fill * size / max(x1 - x0, y1 - y0, 1e-9)
    shift = np.array([size / 2 - (x0 + x1) / 2 * scale, size / 2 - (y0 + y1) / 2 * scale])
    out = []
    for line in strokes.to_polylines(sketch):
        points = [(int(x), int(y)) for x, y in np.rint(line * scale + shift)]
        out.append([p for i, p in enumerate(points) if i == 0 or p != points[i - 1]])
    return out


class Chromium:
    """One headless browser with one page; a context manager."""

    def __init__(self, executable: str | None = None, width: int = 1280, height: int = 820, timeout: float = 30.0) -> None:
        from websockets.sync.client import connect

        exe = executable or find_chromium()
        if exe is None:
            raise SketchkitError("no chromium found (Debian: apt-get install chromium)")
        self.timeout = timeout
        self.profile = Path(tempfile.mkdtemp(prefix="sketchkit-chromium-"))
        self.process = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            port = self._port()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as r:
                page = next(t for t in json.load(r) if t["type"] == "page")
            self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout)
        except BaseException:
            self.close()
            raise
        self._ids = itertools.count(1)
        self._touch_enabled = False
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _port(self) -> int:
        """Chromium writes the port it picked to DevToolsActivePort in its profile."""
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if marker.is_file() and (lines := marker.read_text().splitlines()):
                return int(lines[0])
            if self.process.poll() is not None:
                raise SketchkitError(f"chromium exited with code {self.process.returncode}")
            time.sleep(0.05)
        raise SketchkitError("chromium did not open its DevTools port")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result (events in between are dropped)."""
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=self.timeout))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise SketchkitError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})

    def evaluate(self, expression: str, *, wait: bool = False) -> Any:
        """The JSON value of a JavaScript expression (awaited if `wait`)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=wait)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise SketchkitError(f"javascript: {details.get('exception', {}).get('description') or details.get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None) -> Any:
        """Poll until `expression` is truthy; return its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise SketchkitError(f"timed out waiting for: {expression}")
            time.sleep(0.02)
        return value

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def mouse(self, kind: str, x: float, y: float, pressed: bool = False, pointer: str = "mouse") -> None:
        """A mouse (or pen: `pointer="pen"`) event at viewport (x, y); kind is mousePressed,
        mouseMoved or mouseReleased; `pressed` for moves with the button down."""
        down = kind == "mousePressed" or (kind == "mouseMoved" and pressed)
        self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left" if down or kind == "mouseReleased" else "none",
                  buttons=1 if down else 0, clickCount=1, pointerType=pointer)

    def touch(self, points: Sequence[tuple[float, float]]) -> None:
        """One finger along viewport points: touchStart, touchMove..., touchEnd."""
        if not self._touch_enabled:
            self.send("Emulation.setTouchEmulationEnabled", enabled=True, maxTouchPoints=1)
            self._touch_enabled = True
        for i, (x, y) in enumerate(points):
            self.send("Input.dispatchTouchEvent", type="touchStart" if i == 0 else "touchMove", touchPoints=[{"x": x, "y": y}])
        self.send("Input.dispatchTouchEvent", type="touchEnd", touchPoints=[])

    def box(self, selector: str) -> tuple[float, float, float, float]:
        """(left, top, width, height) of the inside of the first element matching `selector` (its
        content and padding, without the border), viewport pixels."""
        r = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}), r = e.getBoundingClientRect();"
            " return [r.left + e.clientLeft, r.top + e.clientTop, e.clientWidth, e.clientHeight]; })()"
        )
        return tuple(r)  # type: ignore[return-value]

    def click(self, selector: str, at: tuple[float, float] = (0.5, 0.5)) -> None:
        """Press and release the mouse at a fraction `at` of the element's box."""
        left, top, width, height = self.box(selector)
        x, y = left + at[0] * width, top + at[1] * height
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y)

    def draw(self, selector: str, lines: Sequence[Sequence[Sequence[float]]], pointers: Sequence[str] = ("mouse",)) -> None:
        """Draw polylines (pixels from the element's inner top left) stroke by stroke; stroke i
        with `pointers[i % len(pointers)]`: "mouse", "pen" or "touch"."""
        left, top, _, _ = self.box(selector)
        for i, line in enumerate(lines):
            points = [(left + x, top + y) for x, y in line]
            pointer = pointers[i % len(pointers)]
            if pointer == "touch":
                self.touch(points)
                continue
            self.mouse("mouseMoved", *points[0], pointer=pointer)
            self.mouse("mousePressed", *points[0], pointer=pointer)
            for x, y in points[1:]:
                self.mouse("mouseMoved", x, y, pressed=True, pointer=pointer)
            self.mouse("mouseReleased", *points[-1], pointer=pointer)

    def screenshot(self, path: str | Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
