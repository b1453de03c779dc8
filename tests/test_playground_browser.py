"""The playground page in a real headless Chromium (Debian's package), driven by real pointer
events (mouse, pen and touch): draw half a sheep from aaron_sheep stroke by stroke, finish it,
turn the temperature.
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

from browser import Chromium, find_chromium, mouse_lines  # noqa: E402  (tests/browser.py)

from sketchkit.playground import Catalogue, create_app  # noqa: E402
from sketchkit.playground.canvas import Canvas  # noqa: E402
from sketchkit.playground.server import running  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("SKETCHKIT_ARTIFACTS", ROOT / "test-artifacts"))
SHEEP_INDEX, KEEP_STROKES = 1, 5  # aaron_sheep test sketch 1: head and woolly body, no legs yet

if find_chromium() is None:
    pytest.skip("no chromium (Debian: apt-get install chromium; .ci/run installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def page(tiny_uncond: Path):
    catalogue = Catalogue(["sheep", str(tiny_uncond)])
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
    page.evaluate("window.kinds = new Set(); document.getElementById('canvas')"
                  ".addEventListener('pointerdown', (e) => window.kinds.add(e.pointerType))")
    page.draw("#canvas", lines, pointers=("mouse", "pen", "touch"))
    assert page.evaluate("window.playground.strokes") == [[list(p) for p in line] for line in lines]
    assert set(page.evaluate("[...window.kinds]")) == {"mouse", "pen", "touch"}

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


def _run(page: Chromium, button: str) -> str:
    """Click a button that asks the server for sketches; the grid's action once they are drawn."""
    done = page.evaluate("window.playground.timings.length")
    page.click(button)
    page.wait_for(f"window.playground.timings.length === {done + 1}")
    return page.evaluate("document.getElementById('grid').dataset.action")


def test_samples_reconstruction_morph_and_svg_download(page: Chromium) -> None:
    page.click("#clear")
    box = [(100, 100), (300, 100), (300, 300), (100, 300), (100, 110)]
    page.draw("#canvas", [box])
    assert _run(page, "#generate") == "generate" and len(_cells(page)) == 8
    assert _run(page, "#reconstruct") == "reconstruct" and len(_cells(page)) == 8
    page.click("#keep-a")
    page.click("#clear")
    page.draw("#canvas", [[(80, 200), (200, 120), (320, 200), (200, 280), (90, 205)]])
    page.click("#keep-b")
    assert page.evaluate("document.querySelectorAll('#ends svg').length") == 2
    assert _run(page, "#morph") == "morph" and len(_cells(page)) == 8

    # the SVG button saves the cell as shown: catch the file the page hands to the browser
    page.evaluate("window.saved = []; HTMLAnchorElement.prototype.click = function () {"
                  " const name = this.download; fetch(this.href).then(r => r.text()).then(t => window.saved.push([name, t])); }")
    page.click("#grid figure:nth-child(3) figcaption button")
    name, svg = page.wait_for("window.saved.length && window.saved[0]")
    assert re.fullmatch(r"sheep-morph-\d+-2\.svg", name)
    shown = page.evaluate("document.querySelector('#grid figure:nth-child(3) svg path').getAttribute('d')")
    assert svg.startswith("<svg") and 'width="256"' in svg and f'd="{shown}"' in svg


def test_a_decoder_only_model_disables_the_latent_buttons(page: Chromium, tiny_uncond: Path) -> None:
    for name, disabled in ((str(tiny_uncond), True), ("sheep", False)):
        page.evaluate(f"(() => {{ const s = document.getElementById('model'); s.value = {json.dumps(name)};"
                      " s.dispatchEvent(new Event('change')); })()")
        page.wait_for(f"window.playground.model === {json.dumps(name)} && window.playground.card.name === {json.dumps(name)}")
        states = page.evaluate("[...document.querySelectorAll('button.vae')].map(b => b.disabled)")
        assert states == [disabled] * 4  # reconstruct, keep as A, keep as B, morph
    # issue 26: opening a model that is here already says nothing about downloading it
    said = page.evaluate("window.playground.said")
    assert f"opening {tiny_uncond}…" in said and "opening sheep…" in said
    assert not [line for line in said if "download" in line or "fetched" in line]


def test_a_refused_request_shows_its_one_line_in_the_page(page: Chromium) -> None:
    page.click("#clear")
    seq = _seq(page)
    page.click("#finish")
    page.wait_for("document.getElementById('status').classList.contains('error')")
    assert page.evaluate("document.getElementById('status').textContent") == (
        "drawing is empty (fewer than 2 points): draw something first"
    )
    assert _seq(page) == seq  # the grid stays as it was


def test_the_picker_has_a_group_per_set_and_a_name_filter(page: Chromium) -> None:
    """Issue 26 item 10: optgroups per (group, set), and typing in the filter keeps the names that
    contain it (the picked model stays)."""
    labels = page.evaluate("[...document.querySelectorAll('#model optgroup')].map(g => g.label)")
    assert labels[0] == "from the command line"
    assert "Magenta sketch-rnn, H = 512 (downloadable)" in labels
    assert "Magenta sketch-rnn, H = 1024 (downloadable)" in labels
    visible = (
        "[...document.querySelectorAll('#model option')].filter(o => !o.hidden && !o.parentElement.hidden)"
        ".map(o => o.value)"
    )
    page.click("#model-filter")
    page.evaluate("(() => { const f = document.getElementById('model-filter'); f.value = 'OWL';"
                  " f.dispatchEvent(new Event('input')); })()")  # fmt: skip
    shown = page.evaluate(visible)
    assert shown[0] == "sheep" and set(shown[1:]) == {
        "magenta/owl.gen", "magenta/owl.vae", "magenta-large/owl.gen", "magenta-large/owl.vae"
    }  # fmt: skip
    page.evaluate("(() => { const f = document.getElementById('model-filter'); f.value = '';"
                  " f.dispatchEvent(new Event('input')); })()")  # fmt: skip
    assert len(page.evaluate(visible)) == page.evaluate("document.querySelectorAll('#model option').length")


def test_picking_a_downloadable_model_says_it_downloads_it(page: Chromium, zoo_mirror, magenta_gen_dir: Path) -> None:
    """Issue 26: only a model that is not here yet is announced as downloaded (from the mirror)."""
    groups = page.evaluate("[...window.playground.groups.entries()]")
    name = next(n for n, g in groups if g == "downloadable" and n.startswith("magenta/") and n.endswith(".gen")
                and (magenta_gen_dir / f"{n.removeprefix('magenta/')}.json").exists())
    try:
        for pick in (name, "sheep"):
            page.evaluate(f"(() => {{ const s = document.getElementById('model'); s.value = {json.dumps(pick)};"
                          " s.dispatchEvent(new Event('change')); })()")  # fmt: skip
            page.wait_for(f"window.playground.model === {json.dumps(pick)} && window.playground.card.name === {json.dumps(pick)}",
                          timeout=120)  # fmt: skip
        said = page.evaluate("window.playground.said")
        assert f"opening {name}… (downloading and converting it first)" in said
        assert said[-2:] == ["opening sheep…", 'sheep ready: draw, then press "finish it"']
    finally:
        page.evaluate("(() => { const s = document.getElementById('model'); s.value = 'sheep';"
                      " s.dispatchEvent(new Event('change')); })()")  # fmt: skip
