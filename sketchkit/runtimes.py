"""Which runtime a command gets: a model name or directory, and optionally a Triton server URL."""

from __future__ import annotations

import os
from pathlib import Path

from sketchkit.errors import ModelError
from sketchkit.runtime import Runtime


def resolve_model(name: str | os.PathLike[str]) -> Path:
    """A model directory (one holding model.json) or a zoo model name -> the model directory."""
    path = Path(name)
    if path.is_dir():
        return path  # ModelInfo.load says what is wrong with it, if anything
    if path.is_file():
        if path.name == "model.json":
            return path.parent
        if path.suffix == ".json":
            raise ModelError(
                f"{path}: not a model directory; a Magenta sketch-rnn JSON model must be converted "
                f"first: sketchkit import-magenta {path} DIR"
            )
        raise ModelError(f"{path}: not a model directory (expected a directory with model.json)")
    from sketchkit.zoo import resolve  # the zoo client: shipped, cached or downloaded models

    return resolve(str(name))


def open_runtime(model: str | os.PathLike[str], server: str | None = None) -> Runtime:
    """The in-process onnxruntime runtime, or the Triton client when `server` is a URL."""
    if server:
        from sketchkit.runtime_triton import TritonRuntime  # imports tritonclient: only when asked

        return TritonRuntime.from_url(server, str(model))
    from sketchkit.runtime_onnx import OnnxRuntime

    return OnnxRuntime(resolve_model(model))
