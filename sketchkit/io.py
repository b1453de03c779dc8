"""Atomic file writes (a crash or a bad input never leaves a half-written output behind), and
where the cache is (here, below everything that uses it: the zoo, the server's key)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from sketchkit.errors import ModelError

_UMASK = os.umask(0)  # the only way to read the umask is to set it: read once, put it back
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the result should be like open()'s
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temps(directory: str | os.PathLike[str], names: list[str]) -> list[Path]:
    """The temp files `atomic_write` left beside these files when a kill cut it short. Only call
    it where no other process writes them (a run's own directory, or holding their lock)."""
    stale = [p for name in names for p in Path(directory).glob(f".{name}.*.tmp") if not p.is_dir()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory in a temp dir beside `path`; it replaces `path` only if the block
    succeeds, so a failed build leaves neither half a directory nor a lost old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make a published model or repo private
        yield tmp
        old = tmp.with_suffix(".old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def staging_dir(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """`atomic_directory` for a model directory (graphs + model.json): an existing `out_dir`
    must be one, so an export never replaces a directory of something else."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelError(f"{out_dir}: exists and is not a directory")
    if out_dir.exists() and not (out_dir / "model.json").is_file() and any(out_dir.iterdir()):
        raise ModelError(f"{out_dir}: exists and is not a model directory; refusing to replace it")
    with atomic_directory(out_dir) as tmp:
        yield tmp


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


ENV_CACHE = "SKETCHKIT_CACHE"


def cache_dir() -> Path:
    """SKETCHKIT_CACHE, else the platform's user cache directory / sketchkit."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("sketchkit", appauthor=False))
