"""`sketchkit zoo ...` and `sketchkit data pull` as a user runs them: a real process, the real
mirror on 127.0.0.1 (the `zoo_mirror` fixture), the cache in tmp_path."""

from __future__ import annotations

import hashlib
import json
import os
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


def states(out: str) -> dict[str, str]:
    """NAME -> STATE from the `zoo list` table."""
    rows = [line.split("  ") for line in out.splitlines()[1:]]
    return {r[0].strip(): [c.strip() for c in r if c.strip()][4] for r in rows}


def test_zoo_lists_downloadable_models_by_default(zoo_mirror) -> None:
    out = run("zoo").stdout
    assert out == run("zoo", "list").stdout
    assert out.splitlines()[0].split() == ["NAME", "KIND", "CELL/H", "SIZE", "STATE", "LICENCE"]
    table = states(out)
    assert len(table) == len(hub.available_models())
    assert table["magenta/owl.gen"] == "-" and table["sheep"].startswith("shipped")
    owl = run("zoo", "list", "owl", "--json").stdout.splitlines()
    rows = [json.loads(line) for line in owl]
    assert [r["name"] for r in rows] == [
        "magenta/owl.gen",
        "magenta/owl.vae",
        "magenta-large/owl.gen",
        "magenta-large/owl.vae",
    ]
    assert rows[0]["files"][0]["sha256"] == "b557e5edc9e9e3cebe60e8973809a38c38ae7604078ccde7882ebf5b09560e47"


def test_info_says_how_each_file_is_verified(zoo_mirror, magenta_gen_dir: Path) -> None:
    out = run("zoo", "info", "magenta/owl.gen").stdout
    assert "sha256: b557e5edc9e9e3cebe60e8973809a38c38ae7604078ccde7882ebf5b09560e47" in out
    assert "max_seq_len: 174" in out and "cached: no" in out
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
    d = tmp_path / "cache" / "models" / "magenta" / "owl.gen"
    assert run("zoo", "path", "owl").stdout.strip() == str(d)
    table = states(run("zoo", "list", "owl").stdout)
    assert table == {
        "magenta/owl.gen": "cached",
        "magenta/owl.vae": "-",
        "magenta-large/owl.gen": "-",
        "magenta-large/owl.vae": "-",
    }
    cached = [row.split() for row in run("zoo", "list", "--cached").stdout.splitlines()[1:]]
    assert [row for row in cached if row[0] != "sheep"] == [  # sheep: shipped, always local
        row.split() for row in run("zoo", "list", "--cached", "owl.gen").stdout.splitlines()[1:]
    ]
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
