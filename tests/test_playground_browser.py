"""The playground page in a real headless Chromium (Debian's package), driven by real pointer
events: draw half a sheep from aaron_sheep stroke by stroke, finish it, turn the temperature.
The last screenshot is kept as a test artefact (SKETCHKIT_ARTIFACTS, default test-artifacts/)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("websockets")

from sketchkit.playground import Catalogue, create_app  # noqa: E402
from sketchkit.playground.browser import Chromium, find_chromium, mouse_lines  # noqa: E402
from sketchkit.playground.canvas import Canvas  # noqa: E402
from sketchkit.playground.server import running  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("SKETCHKIT_ARTIFACTS", ROOT / "test-artifacts"))
SHEEP_INDEX, KEEP_STROKES = 1, 5  # aaron_sheep test sketch 1: head and woolly body, no legs yet

if find_chromium() is None:
    pytest.skip("no chromium (Debian: apt-get install chromium; .ci/run installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def page():
    catalogue = Catalogue(["sheep"])
    with running(create_app(catalogue)) as url, Chromium() as browser:
        browser.goto(url + "/")
        browser.wait_for("window.playground && window.playground.model === 'sheep'")
        yield browser
    catalogue.close()


def _cells(page: Chromium) -> list[list[tuple[str, list[list[float]]]]]:
    """Per result cell: (class, points) of each SVG path, points parsed from its `d`."""
    cells = page.evaluate(
        "[...document.querySelectorAll('#grid figure svg')].map(s =>"
        " [...s.querySelectorAll('path')].map(p => [p.getAttribute('class') || '', p.getAttribute('d')]))"
    )
    parse = lambda d: [[float(v) for v in xy.split(",")] for xy in re.split(r"[ML]", d) if xy]  # noqa: E731
    return [[(cls, parse(d)) for cls, d in paths] for paths in cells]


def _seq(page: Chromium) -> int:
    return int(page.evaluate("document.getElementById('grid').dataset.seq"))


def test_draw_half_a_sheep_finish_it_and_turn_the_temperature(page: Chromium, sheep) -> None:
    from sketchkit.cli.sample import first_strokes

    whole = sheep.test[SHEEP_INDEX].astype(np.float32)
    lines = mouse_lines(first_strokes(whole, KEEP_STROKES), whole=whole)
    page.draw("#canvas", lines)
    assert page.evaluate("window.playground.strokes") == [[list(p) for p in line] for line in lines]

    page.click("#finish")
    page.wait_for("window.playground.timings.length === 1")  # drawn, then timed
    k = page.evaluate("Number(document.getElementById('k').value)")
    cells = _cells(page)
    assert len(cells) == k == 8
    # the first paths of every ending are the drawn strokes, point for point (after RDP, which
    # keeps a subset of the drawn points, endpoints included)
    prefix = Canvas(400, page.evaluate("window.playground.card.scale_factor")).simplify(
        [np.array(line, float) for line in lines]
    )
    for cell in cells:
        drawn = [points for cls, points in cell if cls == "drawn"]
        assert [cls for cls, _ in cell[: len(lines)]] == ["drawn"] * len(lines)
        for got, want, raw in zip(drawn, prefix, lines, strict=True):
            np.testing.assert_allclose(got, want, atol=0.01)
            assert got[0] == list(raw[0]) and got[-1] == list(raw[-1])
    assert sum(len(cell) > len(lines) for cell in cells) >= k // 2  # the model drew on (legs, mostly)
    status = page.evaluate("document.getElementById('status').textContent")
    assert re.search(r"τ 0\.5 · seed \d+ · \d+ ms", status), status

    before = json.dumps(cells)
    page.click("#tau", at=(0.15, 0.5))  # a real click on the slider: input, then change
    page.wait_for("window.playground.timings.length === 2")
    tau = page.evaluate("Number(document.getElementById('tau').value)")
    assert tau < 0.5 and page.evaluate("document.getElementById('tau-value').textContent") == f"{tau:.2f}"
    assert page.evaluate("document.getElementById('status').textContent").startswith(f"τ {tau:g} ")
    after = _cells(page)
    assert len(after) == k and json.dumps(after) != before
    shot = page.screenshot(ARTIFACTS / "playground.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_refused_request_shows_its_one_line_in_the_page(page: Chromium) -> None:
    page.click("#clear")
    seq = _seq(page)
    page.click("#finish")
    page.wait_for("document.getElementById('status').classList.contains('error')")
    assert page.evaluate("document.getElementById('status').textContent") == (
        "drawing is empty (fewer than 2 points): draw something first"
    )
    assert _seq(page) == seq  # the grid stays as it was
