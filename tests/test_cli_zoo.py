"""`sketchkit zoo ...` and `sketchkit data pull` as a user runs them: a real process, the real
mirror on 127.0.0.1 (the `zoo_mirror` fixture), the cache in tmp_path."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sketchkit import hub


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [sys.executable, "-m", "sketchkit", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=300,
    )
    assert (p.returncode == 0) == ok, p.stderr
    return p


def table_rows(out: str) -> list[list[str]]:
    """The model rows of the `zoo list` table, as cells (columns are 2+ spaces apart)."""
    return [re.split(r"\s{2,}", line) for line in out.splitlines()[1:] if line and not line.startswith("# ")]


def states(out: str) -> dict[str, str]:
    """NAME -> STATE from the `zoo list` table."""
    return {r[0]: r[4] for r in table_rows(out)}


def headings(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("# ")]


def test_zoo_lists_downloadable_models_by_default(zoo_mirror) -> None:
    out = run("zoo").stdout
    assert out == run("zoo", "list").stdout
    assert out.splitlines()[0].split() == ["NAME", "KIND", "CELL/H", "SIZE", "STATE", "LICENCE"]
    table = states(out)
    assert len(table) == len(hub.available_models())
    assert table["magenta/owl.gen"] == "-" and table["sheep"].startswith("shipped")
    owl = run("zoo", "list", "owl", "--json").stdout.splitlines()
    rows = [json.loads(line) for line in owl]
    assert [(r["name"], r["set"]) for r in rows] == [
        ("magenta/owl.gen", "magenta"),
        ("magenta/owl.vae", "magenta"),
        ("magenta-large/owl.gen", "magenta-large"),
        ("magenta-large/owl.vae", "magenta-large"),
    ]
    assert rows[0]["files"][0]["sha256"] == "b557e5edc9e9e3cebe60e8973809a38c38ae7604078ccde7882ebf5b09560e47"


def test_zoo_list_groups_by_set_usable_offline_first(zoo_mirror) -> None:
    """457 models are grouped (issue 26 item 10): what works offline first, then each set; sizes
    in MB, and "unknown until downloaded" where upstream lists none."""
    out = run("zoo", "list").stdout
    n = {key: sum(hub.model_set(m) == key for m in hub.available_models()) for key in hub.SETS}
    assert headings(out) == [
        "# shipped and cached: usable offline (1)",
        f"# magenta: Magenta sketch-rnn, H = 512 ({n['magenta']})",
        f"# magenta-large: Magenta sketch-rnn, H = 1024 ({n['magenta-large']})",
    ]
    rows = {r[0]: r for r in table_rows(out)}
    assert [r[0] for r in table_rows(out)][0] == "sheep"
    assert rows["sheep"][3] == "8.8 MB" and rows["magenta/owl.gen"][3] == "3.0 MB"  # 2,997,381 bytes
    assert rows["magenta-large/owl.gen"][3] == "unknown until downloaded"
    assert not any("?" in cell for r in rows.values() for cell in r)
    owl = run("zoo", "list", "OWL").stdout  # a name filter, any case
    assert [r[0] for r in table_rows(owl)] == ["magenta/owl.gen", "magenta/owl.vae", "magenta-large/owl.gen", "magenta-large/owl.vae"]
    large = run("zoo", "list", "owl", "--set", "magenta-large").stdout
    assert headings(large) == ["# magenta-large: Magenta sketch-rnn, H = 1024 (2)"]
    err = run("zoo", "list", "owll", ok=False).stderr
    assert err == "error: no model name contains 'owll' (did you mean owl?)\n"


def test_info_formats_sizes_and_metrics(zoo_mirror) -> None:
    out = run("zoo", "info", "sheep").stdout
    assert "size:         8.8 MB\n" in out and "scale_factor: 18.5198\n" in out
    metrics = out[out.index("metrics:\n") :].splitlines()[1:8]
    assert metrics == [
        "  test ls:         -0.0582",
        "  test lp:          0.1234",
        "  test kl:          0.2006",
        "  test lr:          0.0653",
        "  test kl_floored:  0.2006",
        "  test loss:        0.1655",
        "  step:               4878",
    ]
    large = run("zoo", "info", "magenta-large/owl.gen").stdout
    assert "max_seq_len:  unknown until downloaded\n" in large and "{" not in large and "?" not in large


def test_info_says_how_each_file_is_verified(zoo_mirror, magenta_gen_dir: Path) -> None:
    out = run("zoo", "info", "magenta/owl.gen").stdout
    assert "sha256: b557e5edc9e9e3cebe60e8973809a38c38ae7604078ccde7882ebf5b09560e47" in out
    assert "max_seq_len:  174\n" in out and "cached:       no (" in out
    assert "sha256: unknown upstream, not pinned yet" in run("zoo", "info", "magenta-large/owl.gen").stdout
    zoo_mirror.files["large_models/owl.gen.json"] = magenta_gen_dir / "owl.gen.json"
    hub.fetch(hub.registry()["models"]["magenta-large/owl.gen"]["files"][0], progress=False)
    digest = hashlib.sha256((magenta_gen_dir / "owl.gen.json").read_bytes()).hexdigest()
    assert (
        f"sha256: unknown upstream, pinned on first download {digest}"
        in run("zoo", "info", "magenta-large/owl.gen").stdout
    )
    assert json.loads(run("zoo", "info", "owl", "--json").stdout)["name"] == "magenta/owl.vae"


def test_errors_are_one_line(zoo_mirror, tmp_path: Path) -> None:
    err = run("zoo", "info", "owll", ok=False).stderr
    assert err.startswith("error: unknown model 'owll' (did you mean") and err.count("\n") == 1
    err = run("zoo", "path", "owl", ok=False).stderr
    assert err == "error: owl is not cached; run `sketchkit zoo pull owl`\n"
    assert run("zoo", "path").stdout.strip() == str(tmp_path / "cache")
    err = run("zoo", "rm", "sheep", ok=False).stderr
    assert err == "error: sheep is shipped with sketchkit; there is nothing to remove\n"


def test_pull_from_an_unreachable_mirror_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKETCHKIT_ZOO_MIRROR", "http://127.0.0.1:9")  # discard port: refused
    monkeypatch.setenv("SKETCHKIT_CACHE", str(tmp_path / "cache"))
    err = run("zoo", "pull", "magenta/owl.gen", ok=False).stderr
    assert err.count("\n") == 1 and err.startswith("error: cannot download http://127.0.0.1:9/owl.gen.json (")
    assert err.endswith("available locally: sheep\n")  # the shipped default is always there


def test_pull_list_path_rm_generate(zoo_mirror, tmp_path: Path) -> None:
    """The whole round: `generate owl` pulls and converts on first use; then list, path, rm."""
    png = tmp_path / "owl.png"
    p = run("generate", "owl", "-n", "2", "--seed", "0", "-o", str(png))
    assert png.stat().st_size > 0 and "owl.gen.json" in p.stderr  # the progress label
    mirror = f"missing from the mirror SKETCHKIT_ZOO_MIRROR={zoo_mirror.url}"  # the mirror has no owl.vae.json
    assert f"magenta/owl.vae could not be fetched: {zoo_mirror.url}/owl.vae.json: not found (HTTP 404; {mirror}); using magenta/owl.gen instead\n" in p.stderr
    d = tmp_path / "cache" / "models" / "magenta" / "owl.gen"
    assert run("zoo", "path", "owl").stdout.strip() == str(d)
    table = states(run("zoo", "list", "owl").stdout)
    assert table == {
        "magenta/owl.gen": "cached",
        "magenta/owl.vae": "-",
        "magenta-large/owl.gen": "-",
        "magenta-large/owl.vae": "-",
    }
    cached = table_rows(run("zoo", "list", "--cached").stdout)
    assert [row for row in cached if row[0] != "sheep"] == table_rows(  # sheep: shipped, always local
        run("zoo", "list", "--cached", "owl.gen").stdout
    )
    assert [r[0] for r in table_rows(run("zoo", "list").stdout)][:2] == ["sheep", "magenta/owl.gen"]  # local first
    assert run("zoo", "pull", "magenta/owl.gen").stdout.strip() == str(d)  # cached: no download
    assert [n for n, _ in zoo_mirror.log] == ["owl.vae.json", "owl.gen.json"]
    err = run("zoo", "rm", "owl").stderr
    assert f"removed {d}" in err and not d.exists()
    assert states(run("zoo", "list", "owl").stdout)["magenta/owl.gen"] == "-"


def test_data_pull(zoo_mirror, sheep_npz: Path, tmp_path: Path) -> None:
    zoo_mirror.files["sheep.npz"] = sheep_npz
    out = run("data", "pull", "sheep", "--out", str(tmp_path / "d")).stdout.strip()
    assert out == str(tmp_path / "d" / "sheep.npz")
    assert Path(out).read_bytes() == sheep_npz.read_bytes()
    err = run("data", "pull", "sheeep", ok=False).stderr
    assert (
        err.startswith("error: unknown QuickDraw class 'sheeep' (did you mean sheep") and err.count("\n") == 1
    )
