"""The table and its names: what `zoo/registry.json` lists, and which model a typed name means.

The table is data (`zoo/registry.json`, like whisper's `_MODELS`). Names: `owl` is the best
available owl model (ours, else Magenta's vae, else its gen); `magenta/owl.gen`, `magenta/owl.vae`
(H = 512) and `magenta-large/owl.<gen|vae>` (H = 1024) address one exactly.
"""

from __future__ import annotations

import difflib
import functools
import json
import urllib.parse
from pathlib import Path
from typing import Any

from sketchkit.errors import ModelError, SketchkitError
from sketchkit.modelinfo import ModelInfo


@functools.cache
def zoo_dir() -> Path:
    """The `sketchkit.zoo` package's directory (the `zoo/` folder; importing it loads no torch)."""
    import importlib

    zoo = importlib.import_module("sketchkit.zoo")  # the zoo/ folder, mapped in pyproject.toml
    found = next((Path(p) for p in zoo.__path__ if Path(p, "registry.json").is_file()), None)
    if found is None:
        raise SketchkitError("zoo/registry.json is missing from this installation")
    return found


@functools.cache
def registry() -> dict[str, Any]:
    """The table: zoo/registry.json."""
    return json.loads((zoo_dir() / "registry.json").read_text())


def available_models() -> list[str]:
    """Every model name in the registry, ours first."""
    return list(registry()["models"])


def row(name: str) -> dict[str, Any]:
    """A model's registry row; an unknown name is one line with the closest names."""
    found = registry()["models"].get(name)
    if found is None:
        raise SketchkitError(f"unknown model {name!r}{did_you_mean(name)}")
    return found


SETS = {  # a model's set is its name's prefix (none: ours), in the registry's order
    "sketchkit": "sketchkit's own models",
    "magenta": "Magenta sketch-rnn, H = 512",
    "magenta-large": "Magenta sketch-rnn, H = 1024",
}


def model_set(name: str) -> str:
    """The set a model belongs to (a key of SETS): `magenta/owl.gen` -> "magenta", `sheep` -> "sketchkit"."""
    prefix = name.split("/")[0] if "/" in name else "sketchkit"
    return prefix if prefix in SETS else "sketchkit"


def did_you_mean(name: str) -> str:
    models = available_models()
    names = sorted(set(models) | {n.split("/")[-1].split(".")[0] for n in models})  # each name once
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else " (see `sketchkit zoo list`)"


def candidates(name: str) -> list[str]:
    """The models a name may stand for, best first. An exact name is itself; a class name is ours
    (when shipped or published), then Magenta's vae, then its gen: the H = 512 set, which is what
    the sketch-rnn-js demos use and 4x cheaper per step than the large one."""
    models = registry()["models"]
    out = [n for n in (name, f"magenta/{name}.vae", f"magenta/{name}.gen") if n in models and _usable(n)]
    if not out:
        raise SketchkitError(f"unknown model {name!r}{did_you_mean(name)}")
    return out


def _usable(name: str) -> bool:
    """Shipped, or downloadable: our not-yet-published rows are neither."""
    found = registry()["models"][name]
    return bool(found.get("shipped") or found["files"])


def check_against_registry(name: str, found: dict[str, Any], info: ModelInfo) -> None:
    """A download is what the registry says it is (kind, H), or it is not kept: an unpinned
    upstream file could be any model under a trusted name."""
    want = found.get("dims") or {}
    got = {"kind": info.dims.kind, "dec_size": info.dims.dec_size}
    wrong = [f"{k} {got[k]} (the registry says {want[k]})" for k in got if want.get(k) is not None and want[k] != got[k]]
    if wrong:
        raise ModelError(f"{name}: the downloaded model has {', '.join(wrong)}; nothing kept")


# ---- training data ----------------------------------------------------------------------------
def dataset_classes() -> list[str]:
    return list(registry()["datasets"]["quickdraw"]["classes"])


def dataset_file(cls: str) -> dict[str, Any]:
    """The registry file of QuickDraw's sketch-rnn .npz of one class (`cat`, `palm tree` or `palm_tree`)."""
    table = registry()["datasets"]["quickdraw"]
    by_key = {c.lower().replace("_", " "): c for c in table["classes"]}
    key = cls.lower().replace("_", " ")
    if key not in by_key:
        close = difflib.get_close_matches(key, list(by_key), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(by_key[c] for c in close)}?)" if close else ""
        raise SketchkitError(f"unknown QuickDraw class {cls!r}{hint}")
    cls = by_key[key]
    return {
        "url": table["url"].format(**{"class": urllib.parse.quote(cls)}),
        "name": f"{cls}.npz",
        "sha256": table["sha256"].get(cls),
        "size": table["size"].get(cls),
    }
