"""The wheel: built from the sources as pyproject.toml declares them, it holds the data the code
reads at run time (Triton templates, the playground page, recipes, registry and shipped models),
one top-level name, and the build prints no setuptools warning (setuptools has announced it will
stop installing data folders that are not declared; its warning is the only notice we would get).
Then the unpacked wheel, outside the source tree, loads the shipped sheep and draws with it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "sketchkit", "zoo", "export", "serving"]  # what a build reads
WARNING = re.compile(r"\w*Warning\b")  # SetuptoolsDeprecationWarning, _Warning, ... (not pip's "WARNING:")


def setuptools_required() -> str:
    """The lowest setuptools the build backend asks for (build-system.requires)."""
    text = (ROOT / "pyproject.toml").read_text()
    found = re.search(r'"setuptools>=([0-9.]+)"', text)
    assert found, "build-system.requires names no setuptools>=X"
    return found.group(1)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the wheel, pip's verbose build output): built from a copy of the sources, so that no build/
    or .egg-info of an earlier build in the checkout can add to it or hide a missing declaration."""
    from packaging.version import Version

    need = setuptools_required()
    have = metadata.version("setuptools")
    if Version(have) < Version(need):
        pytest.skip(f"this venv's setuptools {have} is older than the {need} the build asks for")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation"]
    proc = subprocess.run([*pip, "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    (wheel,) = (tmp / "dist").glob("sketchkit-*.whl")
    return wheel, log


def test_the_build_prints_no_setuptools_warning(built: tuple[Path, str]) -> None:
    _, log = built
    warned = [line.strip() for line in log.splitlines() if WARNING.search(line)]
    assert not warned, "\n".join(warned)


def test_the_wheel_holds_the_data_the_code_reads(built: tuple[Path, str]) -> None:
    wheel, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())

    def installed(folder: str, pattern: str) -> set[str]:
        """The wheel's paths of the source files folder/pattern (zoo/ installs as sketchkit/zoo/ etc.)."""
        prefix = "sketchkit/" if folder.split("/")[0] in ("zoo", "export", "serving") else ""
        found = {prefix + p.relative_to(ROOT).as_posix() for p in (ROOT / folder).glob(pattern) if p.is_file()}
        assert found, f"no {folder}/{pattern} in the sources"
        return found

    want = (
        installed("serving/templates", "*/model.py")
        | installed("sketchkit/playground/static", "*")
        | installed("zoo/recipes", "*.toml")
        | installed("zoo", "registry.json")
        | installed("zoo/features", "*.safetensors")  # the quality measure's feature network (issue 28)
        | {"sketchkit/py.typed"}
    )
    registry = json.loads((ROOT / "zoo" / "registry.json").read_text())
    shipped = [row["shipped"] for row in registry["models"].values() if row.get("shipped")]
    assert "models/sheep" in shipped
    for folder in shipped:
        want |= installed(f"zoo/{folder}", "*")
    assert want <= names, sorted(want - names)
    sheep = {Path(n).name for n in names if n.startswith("sketchkit/zoo/models/sheep/")}
    assert {"model.json", "encoder.onnx", "decoder_init.onnx", "decoder_step.onnx", "sheep.safetensors"} <= sheep
    static = {Path(n).name for n in names if n.startswith("sketchkit/playground/static/")}
    assert {"index.html", "playground.js", "playground.css"} <= static


def test_the_wheel_holds_no_test_tooling(built: tuple[Path, str]) -> None:
    """What only tests and benchmarks use stays in the checkout: no test files, no browser driver,
    no module that needs a dev-only package (pytest, websockets)."""
    wheel, _ = built
    with zipfile.ZipFile(wheel) as z:
        modules = {n: z.read(n).decode() for n in z.namelist() if n.endswith(".py")}
    assert "sketchkit/playground/browser.py" not in modules and "sketchkit/browser.py" not in modules
    tooling = re.compile(r"^\s*(import|from) (pytest|websockets)\b", re.M)
    assert [n for n, text in modules.items() if tooling.search(text)] == []
    assert [n for n in modules if Path(n).name.startswith(("test_", "conftest"))] == []


def test_the_wheel_has_one_top_level_name(built: tuple[Path, str]) -> None:
    wheel, _ = built
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert z.read(top_level).decode().split() == ["sketchkit"]
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"sketchkit"}


def test_the_unpacked_wheel_draws_a_sheep(built: tuple[Path, str], tmp_path: Path) -> None:
    """Installed from the wheel alone (not the checkout, not the editable install): the shipped
    sheep resolves inside it and samples; the Triton templates and the playground page are found."""
    wheel, _ = built
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import sketchkit\n"
        "from sketchkit import hub\n"
        "from sketchkit.sampling import Sampler\n"
        "from sketchkit.serving.repository import TEMPLATES\n"
        "print(sketchkit.__file__, hub.model_dir('sheep'), TEMPLATES, sep='\\n')\n"
        "assert sorted(p.parent.name for p in TEMPLATES.glob('*/model.py'))\n"
        "out = Sampler(sketchkit.load('sheep')).generate(2)\n"
        "assert len(out) == 2 and all(len(s) > 1 for s in out), out\n"
    )
    env = dict(os.environ, PYTHONPATH=str(site), SKETCHKIT_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    paths = proc.stdout.split()
    assert len(paths) == 3 and all(p.startswith(str(site)) for p in paths), proc.stdout
