"""The one way in: a name, a model directory, a Magenta file or a Triton URL -> a runtime
(whisper's `load_model`). `resolve` finds (or pulls, or converts) the model directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sketchkit.errors import ModelError
from sketchkit.hub.pull import convert_local_magenta, pull
from sketchkit.modelinfo import ModelInfo
from sketchkit.names import safe_name
from sketchkit.runtimes.base import Runtime


def load(
    name_or_path: str | os.PathLike[str], server: str | None = None, *, progress: bool = True, **options: Any
) -> Runtime:
    """The runtime every command and `sketchkit.load` use (whisper's `load_model`).

    name_or_path: a zoo name (`sheep`, `owl`, `magenta/owl.gen`), a model directory or its
    model.json, or a Magenta sketch-rnn JSON file (converted once into the cache, no torch);
    `~` is expanded. server: a Triton URL (`grpc://host:8001`, `http://host:8000`); `?step=1`
    drives the step loop here, `?stateful=1` with server-held state. With a server the model is
    the served name: a zoo name as Triton spells it (`magenta-owl.gen`), or a local directory's
    model.json name. options: passed on to the runtime (`threads`, `timeout_s`, ...)."""
    if server:
        from sketchkit.runtimes.triton import TritonRuntime  # tritonclient: only when asked

        url, mode = split_server_url(server)
        return TritonRuntime(url, served_name(name_or_path), **mode, **options)
    from sketchkit.runtimes.onnx import OnnxRuntime

    return OnnxRuntime(resolve(name_or_path, progress), **options)


SERVER_MODES: dict[str, dict[str, Any]] = {"step": {"mode": "step"}, "stateful": {"stateful": True}}


def split_server_url(url: str) -> tuple[str, dict[str, Any]]:
    """'grpc://host:8001?step=1' -> ('grpc://host:8001', {'mode': 'step'})."""
    base, _, query = url.partition("?")
    if not query:
        return base, {}
    key, _, value = query.partition("=")
    if key not in SERVER_MODES or value not in ("", "1", "true"):
        from sketchkit.runtimes.triton import TritonError

        raise TritonError(f"unknown Triton URL option {query!r} (only ?step=1 or ?stateful=1)")
    return base, dict(SERVER_MODES[key])


def served_name(name_or_path: str | os.PathLike[str]) -> str:
    """The name a Triton server serves a model under: a local model's own name (its model.json
    says it), else the typed name made Triton-safe (`magenta/owl.gen` -> `magenta-owl.gen`)."""
    path = Path(name_or_path).expanduser()
    if path.name == "model.json" and path.is_file():
        path = path.parent
    if (path / "model.json").is_file():
        return safe_name(ModelInfo.load(path).name)
    return safe_name(str(name_or_path))


def resolve(name_or_path: str | os.PathLike[str], progress: bool = True) -> Path:
    """A model directory for a path or a name: a local directory (or its model.json), a Magenta
    JSON file converted into the cache, or a zoo name (shipped, cached, or pulled now)."""
    path = Path(name_or_path).expanduser()
    if (path / "model.json").is_file():
        return path
    if path.name == "model.json" and path.is_file():
        return path.parent
    if path.is_dir():
        raise ModelError(f"{path}: not a model directory (no model.json)")
    if path.is_file():
        if path.suffix == ".json":
            return convert_local_magenta(path, progress)
        raise ModelError(f"{path}: not a model directory (expected a directory with model.json)")
    name = str(name_or_path)
    is_name = name.split("/")[0] in ("magenta", "magenta-large") or not ("/" in name or os.sep in name)
    if not is_name:
        raise ModelError(f"{name}: no such model directory")
    return pull(name, progress)
