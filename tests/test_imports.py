"""The client stays light (click's test_light_imports): `import sketchkit` and the data/render
commands load only allowed top-level packages, never torch, tritonclient or cairosvg."""

from __future__ import annotations

import ast
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
    "sketchkit.zoo",
    "sketchkit.export",
    "sketchkit.serving",
}
OURS = ("sketchkit.zoo", "sketchkit.export", "sketchkit.serving")  # reported apart from sketchkit
# what a virtualenv / editable install / numpy itself put in sys.modules
INFRA = {"__main__", "_distutils_hack", "_virtualenv", "cython_runtime", "colorama"}
INFRA_PREFIXES = ("__editable__", "_cython_")

PROBE = """
import json, sys
{code}
ours = {ours!r}
print(json.dumps(sorted({{next((p for p in ours if m == p or m.startswith(p + ".")), m.split(".")[0]) for m in sys.modules}})))
"""


def loaded_packages(code: str) -> set[str]:
    """Top-level packages in sys.modules after running `code` in a fresh interpreter, minus the
    standard library and install machinery."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code, ours=OURS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    top = set(json.loads(result.stdout.strip().splitlines()[-1]))
    return {m for m in top - set(sys.stdlib_module_names) - INFRA if not m.startswith(INFRA_PREFIXES)}


def test_import_sketchkit_is_light() -> None:
    assert loaded_packages("import sketchkit, sketchkit.cli") <= {"sketchkit", "click"}


def test_no_generic_top_level_names() -> None:
    """zoo/, export/ and serving/ install as sketchkit.zoo, .export, .serving (pyproject.toml's
    package-dir): outside the source tree, `import export` finds nothing of ours."""
    code = (
        "import importlib.util, sketchkit.zoo, sketchkit.export, sketchkit.serving\n"
        "print([n for n in ('zoo', 'export', 'serving') if importlib.util.find_spec(n)])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1] / "tests" / "fixtures")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


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


# ---------------------------------------------------------------------------------------------
# no import cycles: each module stands above what it uses

def package_dirs(root: Path) -> dict[str, str]:
    """The installed packages and the folders they come from, as pyproject.toml maps them."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    return tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: modules of ours it imports}, read with `ast` from every file of our packages,
    imports inside functions included (a lazy import that closes a loop is still a loop)."""
    files = {
        ".".join([*package.split("."), *p.relative_to(root / folder).with_suffix("").parts]).removesuffix(".__init__"): p
        for package, folder in package_dirs(root).items()
        for p in (root / folder).rglob("*.py")
        if "templates" not in p.parts  # Triton's model.py files run in the server, not here
    }
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        edges = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # `from pkg import mod` uses the submodule when there is one, else the package
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                    for a in node.names
                ]
            else:
                continue
            edges.update(t for t in targets if t in files and t != module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycles_finds_a_loop() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    graph = import_graph(Path(__file__).resolve().parents[1])
    assert {"sketchkit.cli", "sketchkit.zoo.train", "sketchkit.export.magenta", "sketchkit.serving.repository"} <= set(graph)
    assert "sketchkit.zoo.data" in graph["sketchkit.zoo.evaluate"]
    assert {"sketchkit.hub", "sketchkit.runtimes.onnx", "sketchkit.runtimes.triton"} <= set(graph)  # the edge that replaced zoo.evaluate -> zoo.train
    assert cycles(graph) == []


def test_no_import_runs_back_up() -> None:
    """Inside sketchkit/, a module or folder imports only what stands below it: the folder-level
    import graph (a sub-package such as runtimes/ is one node) has no cycle, so every arrow runs
    down (the row table's columns, the draw graph and the runtimes were once tangled: runtimes/
    took the columns from rows.py and the draw from draw.py while both imported runtimes/)."""
    root = Path(__file__).resolve().parents[1] / "sketchkit"

    def node(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if parts[0] == "sketchkit" and len(parts) > 1 else None

    edges: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in ("__init__.py", "__main__.py"):
            continue  # the package's face
        src = rel.parts[0].removesuffix(".py")
        for n in ast.walk(ast.parse(path.read_text(), str(path))):  # imports inside functions too
            targets: list[str] = []
            if isinstance(n, ast.Import):
                targets = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
                targets = [f"{n.module}.{a.name}" if n.module == "sketchkit" else n.module for a in n.names]
            for t in targets:
                dst = node(t)
                if dst is not None and dst != src:
                    edges.setdefault(src, set()).add(dst)

    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for dst in sorted(edges.get(path[-1], ())):
            if dst == start:
                return [*path, dst]
            if dst not in path and dst > start:  # each cycle found once, from its smallest node
                found = cycle_from(start, [*path, dst])
                if found:
                    return found
        return None

    cycles = [c for s in sorted(edges) if (c := cycle_from(s, [s]))]
    assert not cycles, "imports that run back up: " + "; ".join(" -> ".join(c) for c in cycles)
