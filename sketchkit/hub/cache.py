"""The cache (`sketchkit.io.cache_dir`, SKETCHKIT_CACHE): where each model and download lives, the
pins, the locks, and the commands that inspect or clear it (`zoo info`, `zoo verify`, `zoo rm`).

Layout: `models/<name>/` (a model directory: model.json and its graphs), `downloads/<file>` (and
its `.part` while it arrives), `imports/<sha>/` (Magenta files converted from a local path),
`pins.json` and `locks/`. A file lock keeps two processes from writing the same file, files
appear only by an atomic rename, and the cache never holds links. Pins are trust on first use for
files whose SHA-256 upstream does not publish: recorded only once the file made a working model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sketchkit.errors import SketchkitError
from sketchkit.hub.table import available_models, candidates, check_against_registry, row, zoo_dir
from sketchkit.io import atomic_write, cache_dir, remove_stale_temps, sha256_file
from sketchkit.modelinfo import ModelInfo
from sketchkit.names import safe_name


def model_dir(name: str) -> Path:
    """Where a model's directory is (shipped) or goes (cached), whether or not it is there yet."""
    found = row(name)
    if found.get("shipped"):
        return zoo_dir() / found["shipped"]
    safe_name(name)  # a registry name, and still never a path out of the cache
    return cache_dir() / "models" / name


def is_cached(name: str) -> bool:
    """Ready to use: its directory (cached, or shipped) holds a model.json."""
    return (model_dir(name) / "model.json").is_file()


def is_local(name: str) -> bool:
    """Shipped (with or without its export yet) or cached: no download needed."""
    return bool(row(name).get("shipped")) or is_cached(name)


def local_models() -> list[str]:
    """Models usable without the network: shipped (with their export) and cached."""
    return [n for n in available_models() if is_cached(n)]


def download_path(file: dict[str, Any]) -> Path:
    return cache_dir() / "downloads" / file["name"]


@contextlib.contextmanager
def lock(path: Path) -> Iterator[None]:
    """An inter-process lock for `path`; the lock files live in cache/locks/, out of the way."""
    from filelock import FileLock

    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    with FileLock(locks / f"{path.name}-{key}.lock"):
        yield


def drop_planted(path: Path) -> None:
    """The cache never holds links: a symlink or a hard link where a download goes was planted;
    remove the link itself (what it points to stays untouched)."""
    if path.is_symlink() or (path.is_file() and path.stat().st_nlink > 1):
        path.unlink()


def remove_stale(out: Path) -> list[Path]:
    """What a killed pull left beside `out`: its temp (and old) directories, and the export's
    temp directory nested beside those. Call it holding `out`'s lock."""
    stale = sorted({*out.parent.glob(f".{out.name}.*"), *out.parent.glob(f"..{out.name}.*")})
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


# ---- pins: trust on first use for files whose SHA-256 upstream does not publish ---------------
def pins_path() -> Path:
    return cache_dir() / "pins.json"


def pins() -> dict[str, str]:
    """URL -> SHA-256 observed on its first download."""
    try:
        return json.loads(pins_path().read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise SketchkitError(f"{pins_path()}: corrupt ({e}); fix or delete it") from None


def set_pin(url: str, digest: str | None) -> None:
    """Record (or, with None, forget) the SHA-256 of an upstream URL."""
    path = pins_path()
    with lock(path):
        table = pins()
        if digest is None and url not in table:
            return
        if digest is None:
            del table[url]
        else:
            table[url] = digest
        remove_stale_temps(path.parent, [path.name])  # a write killed halfway
        with atomic_write(path, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)


def expected_sha256(file: dict[str, Any]) -> tuple[str | None, str]:
    """The hash a file must have, and where it comes from: "registry", "pinned" or "unknown"."""
    if file.get("sha256"):
        return file["sha256"], "registry"
    pinned = pins().get(file["url"])
    return (pinned, "pinned") if pinned else (None, "unknown")


# ---- what the cache holds of a model: inspect, check, remove ----------------------------------
def _pinned(name: str) -> bool:
    return any(f["url"] in pins() for f in row(name)["files"])


def cached_files(name: str) -> list[Path]:
    """A model's downloads in the cache, whole or partial (symlinks included: they go too)."""
    found = []
    for f in row(name)["files"]:
        p = download_path(f)
        found += [q for q in (p, p.with_name(p.name + ".part")) if q.is_file() or q.is_symlink()]
    return found


def info(name: str) -> dict[str, Any]:
    """A registry row, plus where the model is and how each of its files is verified."""
    found = candidates(name)
    name = next((c for c in found if is_local(c)), found[0])
    out = dict(row(name), name=name, cached=is_cached(name), path=str(model_dir(name)))
    out["files"] = []
    for f in row(name)["files"]:
        digest, how = expected_sha256(f)
        out["files"].append(dict(f, sha256=digest, verified_by=how))
    return out


def verify() -> dict[str, str]:
    """Re-check the cache: every cached model loads, and every download matches its registry
    hash or its pin. Returns {model: problem, or "" when it is fine}; fixes nothing."""
    report = {}
    for name in available_models():
        found = row(name)
        if found.get("shipped") or not (is_cached(name) or cached_files(name)):
            continue
        report[name] = ""
        try:
            if is_cached(name):
                check_against_registry(name, found, ModelInfo.load(model_dir(name)))
            for f in found["files"]:
                p = download_path(f)
                expected, how = expected_sha256(f)
                if p.is_symlink():
                    raise SketchkitError(f"{f['name']} is a symlink")
                if p.is_file() and expected is None:
                    raise SketchkitError(f"{f['name']} was never verified (no pin)")
                if p.is_file() and sha256_file(p) != expected:
                    raise SketchkitError(f"{f['name']} does not match its {how} SHA-256")
        except SketchkitError as e:
            report[name] = str(e)
    return report


def remove(name: str) -> list[Path]:
    """Delete everything the cache holds of a model: its directory, its downloads (whole or
    partial), their pins and what a killed pull left; also when the model itself never got there."""
    found = candidates(name)
    target = next((c for c in found if is_local(c) or cached_files(c)), found[0])
    if row(target).get("shipped"):
        raise SketchkitError(f"{target} is shipped with sketchkit; there is nothing to remove")
    out = model_dir(target)
    if not out.parent.is_dir() and not cached_files(target) and not _pinned(target):
        raise SketchkitError(f"{name} is not cached")  # (and without creating the cache to say so)
    removed: list[Path] = []
    with lock(out):
        for p in cached_files(target):
            p.unlink()
            removed.append(p)
        if _pinned(target):
            for f in row(target)["files"]:
                set_pin(f["url"], None)
            removed.append(pins_path())
        removed += remove_stale(out)
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
            removed.append(out)
        elif out.is_symlink():
            out.unlink()
            removed.append(out)
    if not removed:
        raise SketchkitError(f"{name} is not cached")
    return removed
