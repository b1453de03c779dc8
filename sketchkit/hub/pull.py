"""A model's files into a model directory in the cache: pulled (downloaded, verified, and for
Magenta's JSON converted into ONNX), or a local Magenta file converted once; `pull` picks the
best candidate of a class name that is local, else the best one upstream publishes.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sketchkit.errors import ModelError
from sketchkit.hub.cache import expected_sha256, is_cached, is_local, lock, model_dir, remove_stale, set_pin
from sketchkit.hub.download import NotPublished, fetch
from sketchkit.hub.table import candidates, check_against_registry, row
from sketchkit.io import atomic_directory, cache_dir, sha256_file
from sketchkit.modelinfo import ModelInfo
from sketchkit.names import is_valid_name


def pull(name: str, progress: bool = True) -> Path:
    """The directory of a model, downloaded (and, for Magenta's JSON, converted) if need be. A
    class name takes the best candidate that is local, else the best one upstream publishes."""
    found = candidates(name)
    for c in found:
        if is_local(c):
            return _pull_one(c, progress)
    for c, fallback in zip(found, found[1:], strict=False):
        try:
            return _pull_one(c, progress)
        except NotPublished as e:  # say what happened, and what is used instead
            if progress:
                click.echo(f"{c} could not be fetched: {e}; using {fallback} instead", err=True)
    return _pull_one(found[-1], progress)


def _pull_one(name: str, progress: bool) -> Path:
    found = row(name)
    out = model_dir(name)
    if found.get("shipped"):
        return _shipped(name, out)
    if is_cached(name):
        try:
            ModelInfo.load(out)
        except ModelError as e:
            raise ModelError(f"the cached {name} is broken ({e}); `sketchkit zoo rm {name}` clears it") from None
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with lock(out):
        if is_cached(name):  # another process finished it while we waited
            return out
        remove_stale(out)
        paths = [fetch(f, progress=progress, pin=False) for f in found["files"]]
        try:
            with atomic_directory(out) as tmp:  # a directory without model.json is not a model
                if found["format"] == "magenta-json":
                    say = (
                        (lambda msg: click.echo(msg.replace(str(tmp), str(out)), err=True)) if progress else None
                    )
                    convert_magenta(paths[0], tmp, name, found, say)
                else:
                    for f, p in zip(found["files"], paths, strict=True):
                        shutil.copyfile(p, tmp / f.get("path", f["name"]))
                check_against_registry(name, found, ModelInfo.load(tmp))
        except BaseException:  # an unverified download that makes no model is not kept
            for f, p in zip(found["files"], paths, strict=True):
                if expected_sha256(f)[0] is None:
                    p.unlink(missing_ok=True)
            raise
        for f, p in zip(found["files"], paths, strict=True):
            if expected_sha256(f)[0] is None:  # trust on first use: pinned now that it works
                set_pin(f["url"], sha256_file(p))
    return out


def _shipped(name: str, path: Path) -> Path:
    if not (path / "model.json").is_file():
        raise ModelError(
            f"the shipped model {name} has no ONNX export yet ({path}/model.json is missing): "
            f"run `sketchkit export` on its checkpoint into {path}"
        )
    ModelInfo.load(path)
    return path


def convert_magenta(
    src: Path, out: Path, name: str, row: dict[str, Any], say: Callable[[str], None] | None = None
) -> None:
    """The one seam to the importer: Magenta JSON -> our ONNX model directory, built with numpy
    and onnx (no torch). No drawings are passed, so the start token is sketch-rnn-js's zeros."""
    from sketchkit.magenta_onnx import import_magenta

    import_magenta(src, out, name=name, source=row["files"][0]["url"], progress=say)


def convert_local_magenta(path: Path, progress: bool = True) -> Path:
    """A Magenta sketch-rnn JSON file on disk -> our model directory in the cache, keyed by the
    file's SHA-256 (converted once, like a pulled one; the file itself is never changed)."""
    digest = sha256_file(path)
    out = cache_dir() / "imports" / digest[:16]
    if (out / "model.json").is_file():
        return out
    from sketchkit.magenta import read_magenta
    from sketchkit.magenta_onnx import import_magenta

    read_magenta(path)  # not a Magenta model: one line, and nothing written to the cache
    out.parent.mkdir(parents=True, exist_ok=True)
    with lock(out):
        if not (out / "model.json").is_file():
            remove_stale(out)
            say = (lambda msg: click.echo(msg, err=True)) if progress else None
            stem = path.name.removesuffix(".json")
            name = stem if is_valid_name(stem) else f"import-{digest[:12]}"
            import_magenta(path, out, name=name, source=str(path.resolve()), progress=say)
    return out
