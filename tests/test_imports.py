"""The client stays light (click's test_light_imports): `import sketchkit` and the data/render
commands load only allowed top-level packages, never torch, tritonclient or cairosvg."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = {
    "torch",
    "tritonclient",
    "cairosvg",
    "onnxruntime",
    "onnx",
    "safetensors",
    "zoo",
    "export",
    "serving",
}
# what a virtualenv / editable install / numpy itself put in sys.modules
INFRA = {"__main__", "_distutils_hack", "_virtualenv", "cython_runtime", "colorama"}
INFRA_PREFIXES = ("__editable__", "_cython_")

PROBE = """
import json, sys
{code}
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
"""


def loaded_packages(code: str) -> set[str]:
    """Top-level packages in sys.modules after running `code` in a fresh interpreter, minus the
    standard library and install machinery."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    top = set(json.loads(result.stdout.strip().splitlines()[-1]))
    return {m for m in top - set(sys.stdlib_module_names) - INFRA if not m.startswith(INFRA_PREFIXES)}


def test_import_sketchkit_is_light() -> None:
    assert loaded_packages("import sketchkit, sketchkit.cli") <= {"sketchkit", "click"}


@pytest.mark.parametrize("command", [["render", "--help"], ["data", "--help"], ["data", "convert", "--help"]])
def test_data_and_render_commands_load_no_heavy_package(command: list[str]) -> None:
    code = f"from sketchkit.cli import main\ntry:\n    main({command!r})\nexcept SystemExit:\n    pass"
    loaded = loaded_packages(code)
    assert not loaded & HEAVY, loaded & HEAVY
    assert loaded <= {"sketchkit", "click", "numpy"}


def test_rendering_an_svg_needs_no_cairosvg() -> None:
    code = (
        "import numpy as np\nfrom sketchkit import render\n"
        "render.grid_svg([np.array([[1, 2, 0], [3, 4, 1]])], captions=['x'])"
    )
    assert not loaded_packages(code) & HEAVY


def test_sketchkit_help_through_the_console_script() -> None:
    exe = Path(sys.executable).with_name("sketchkit")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sketchkit"]
    result = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in ("render", "data", "generate", "zoo"):
        assert f"  {name} " in result.stdout
    version = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("sketchkit, version ")


def test_client_is_light_until_used() -> None:
    """`sketchkit.Client` is there without importing tritonclient (or onnxruntime) until a model is used."""
    loaded = loaded_packages("import sketchkit\nclient = sketchkit.Client('grpc://127.0.0.1:1')")
    assert loaded <= {"sketchkit", "numpy"}, loaded
