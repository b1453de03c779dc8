"""The download: one registry file from upstream (or SKETCHKIT_ZOO_MIRROR) into the cache, verified
and bounded, so that nothing unverified or unbounded is ever kept.

What whisper and timm leave out: the SHA-256 is checked while streaming (or, where upstream
publishes none, pinned on first download: trust on first use, see `sketchkit.hub.cache`), a cut
download resumes with HTTP Range, and the file appears only by an atomic rename, under a lock. A
download never follows a symlink in the cache, stops as soon as more bytes arrive than the
registry lists, and gives up past an overall deadline or below a minimum rate.

Environment: SKETCHKIT_ZOO_MIRROR (fetch every file from MIRROR/<its name> instead, for
air-gapped sites), and the limits SKETCHKIT_DOWNLOAD_DEADLINE (seconds per file, default 3600),
SKETCHKIT_DOWNLOAD_MIN_RATE (bytes per second averaged over each SKETCHKIT_DOWNLOAD_RATE_WINDOW
seconds; defaults 1024 and 30) and SKETCHKIT_DOWNLOAD_MAX_BYTES (the cap for a file whose size the
registry does not list; 1 GiB).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from sketchkit._version import __version__
from sketchkit.errors import SketchkitError
from sketchkit.hub.cache import download_path, drop_planted, expected_sha256, local_models, lock, set_pin
from sketchkit.hub.table import dataset_file
from sketchkit.io import cache_dir, sha256_file

ENV_MIRROR = "SKETCHKIT_ZOO_MIRROR"
TIMEOUT = 30.0  # seconds without a byte before a download counts as interrupted
RETRIES = 3  # resumed attempts after a download is cut, as long as each one makes progress
CHUNK = 1 << 16


@dataclass(frozen=True)
class Limits:
    """How long and how slow a download may be, and how big when the registry lists no size."""

    deadline_s: float = 3600.0  # SKETCHKIT_DOWNLOAD_DEADLINE: the whole file, all attempts
    min_rate: float = 1024.0  # SKETCHKIT_DOWNLOAD_MIN_RATE: bytes/s, averaged over each window
    rate_window_s: float = 30.0  # SKETCHKIT_DOWNLOAD_RATE_WINDOW
    max_bytes: int = 1 << 30  # SKETCHKIT_DOWNLOAD_MAX_BYTES

    @classmethod
    def from_env(cls) -> Limits:
        values: dict[str, float] = {}
        for field, var in (("deadline_s", "DEADLINE"), ("min_rate", "MIN_RATE"),
                           ("rate_window_s", "RATE_WINDOW"), ("max_bytes", "MAX_BYTES")):  # fmt: skip
            text = os.environ.get(f"SKETCHKIT_DOWNLOAD_{var}")
            if text is None:
                continue
            try:
                values[field] = float(text)
            except ValueError:
                values[field] = -1.0
            if not values[field] >= 0 or (field != "min_rate" and values[field] == 0):
                raise SketchkitError(f"SKETCHKIT_DOWNLOAD_{var} must be a positive number, got {text!r}")
        if "max_bytes" in values:
            values["max_bytes"] = int(values["max_bytes"])
        return cls(**values)  # type: ignore[arg-type]


class DownloadError(SketchkitError):
    """A file could not be fetched, or what arrived is not what the registry promises."""


class NotPublished(DownloadError):
    """Upstream (or the mirror) has no such file: HTTP 404. `url` is where it was asked for."""

    def __init__(self, url: str, status: int = 404) -> None:
        self.url, self.status = url, status
        mirror = os.environ.get(ENV_MIRROR)
        where = f"missing from the mirror {ENV_MIRROR}={mirror}" if mirror else "not published upstream"
        super().__init__(f"{url}: not found (HTTP {status}; {where})")


# ---- download ---------------------------------------------------------------------------------
def source_url(file: dict[str, Any]) -> str:
    mirror = os.environ.get(ENV_MIRROR)
    if not mirror:
        return file["url"]
    try:
        parts = urllib.parse.urlsplit(mirror)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise DownloadError(f"{ENV_MIRROR}={mirror!r} is not an http(s) URL")
    return f"{mirror.rstrip('/')}/{urllib.parse.quote(file['name'])}"


def fetch(file: dict[str, Any], dest: Path | None = None, progress: bool = True, pin: bool = True) -> Path:
    """One registry file, verified, at `dest` (default cache/downloads/<name>). A file whose SHA-256
    upstream does not publish is pinned only once it is known to work: here when it parses (`pin`),
    else by the caller (`pull` pins after converting it into a model). One that fails is deleted,
    and an unpinned file found later is fetched again, so nothing bad sticks in the cache."""
    dest = dest or download_path(file)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with lock(dest):
        expected, _ = expected_sha256(file)
        drop_planted(dest)
        if dest.is_file():
            if expected is not None and sha256_file(dest) == expected:
                return dest
            dest.unlink()  # changed since it was verified, or never verified (no pin): again
        part = dest.with_name(dest.name + ".part")
        drop_planted(part)
        limits = Limits.from_env()
        deadline = time.monotonic() + limits.deadline_s
        url, size = source_url(file), file.get("size")
        resumed = part.is_file()
        digest = _download(url, part, size, file["name"], progress, limits, deadline)
        if expected is not None and digest != expected and resumed:
            part.unlink()  # maybe a stale part of another version: once more from scratch
            digest = _download(url, part, size, file["name"], progress, limits, deadline)
        got = part.stat().st_size
        if size is not None and got != size:
            part.unlink()
            raise DownloadError(f"{url}: got {got} bytes, expected {size}; nothing kept")
        if expected is not None and digest != expected:
            part.unlink()
            raise DownloadError(
                f"{url}: SHA-256 mismatch (got {digest[:12]}..., expected {expected[:12]}...); nothing kept"
            )
        os.replace(part, dest)
        if expected is None and pin:  # trust on first use, but only in a file that works
            try:
                _parses(dest)
            except BaseException:
                dest.unlink(missing_ok=True)
                raise
            set_pin(file["url"], digest)
    return dest


def _parses(path: Path) -> None:
    """The default check before pinning a file: a .json parses, a .npz loads as a dataset."""
    if path.suffix == ".npz":
        from sketchkit.datasets import load_npz

        load_npz(path)
    elif path.suffix == ".json":
        try:
            with open(path, "rb") as f:
                json.load(f)
        except (ValueError, RecursionError) as e:
            raise DownloadError(f"{path.name}: not valid JSON ({str(e)[:80]}); nothing kept") from None


def _open_part(part: Path, append: bool) -> Any:
    """The partial download for writing, never through a symlink or a hard link planted in the
    cache: a new one is created exclusively, an old one is appended to only if it is ours alone."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    if append:
        fd = os.open(part, os.O_WRONLY | os.O_APPEND | nofollow)
    else:
        part.unlink(missing_ok=True)
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | nofollow, 0o666)
    if os.fstat(fd).st_nlink != 1:
        os.close(fd)
        raise DownloadError(f"{part}: has other hard links; refusing to write through it")
    return os.fdopen(fd, "ab" if append else "wb")


def _download(
    url: str, part: Path, size: int | None, label: str, progress: bool, limits: Limits, deadline: float
) -> str:
    """Stream `url` into `part` (resuming what is there with Range); return the SHA-256 of all of
    it. Stops at once when more than `size` bytes (else `limits.max_bytes`) arrive, past the
    deadline, and when a window of `limits.rate_window_s` brings less than `limits.min_rate`."""
    import http.client  # here, not above: a `generate` of a cached model never downloads
    import urllib.error
    import urllib.request

    cap = size if size is not None else limits.max_bytes
    h = hashlib.sha256()
    have = 0
    if part.is_file():
        with os.fdopen(os.open(part, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
                have += len(block)
        if have > cap:
            part.unlink()
            have, h = 0, hashlib.sha256()
    for _ in range(RETRIES + 1):
        start = have
        headers = {"User-Agent": f"sketchkit/{__version__}", "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        left = deadline - time.monotonic()
        if left <= 0:
            raise DownloadError(_too_slow(url, have, f"past the {limits.deadline_s:g} s deadline"))
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=min(TIMEOUT, left)
            ) as resp:
                if have and resp.status != 206:  # the server ignored Range: start over
                    have, h = 0, hashlib.sha256()
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length is not None and length.isdigit() else size
                if total is not None and total > cap:
                    _too_big(url, part, total, cap, size)
                with _open_part(part, append=bool(have)) as f, _progress(label, total, progress) as update:
                    update(have)
                    window, window_have = time.monotonic(), have
                    while chunk := resp.read1(CHUNK):  # what has arrived: a drip cannot stall a read
                        if have + len(chunk) > cap:
                            _too_big(url, part, have + len(chunk), cap, size)
                        try:
                            f.write(chunk)
                        except OSError as e:  # a full disk: free what we wrote, say so
                            part.unlink(missing_ok=True)
                            raise DownloadError(f"cannot write {part} ({e.strerror}); nothing kept") from None
                        h.update(chunk)
                        have += len(chunk)
                        update(len(chunk))
                        now = time.monotonic()
                        if now > deadline:
                            raise DownloadError(_too_slow(url, have, f"past the {limits.deadline_s:g} s deadline"))
                        if now - window >= limits.rate_window_s:
                            if have - window_have < limits.min_rate * (now - window):
                                rate = (have - window_have) / (now - window)
                                raise DownloadError(_too_slow(url, have, f"{rate:.0f} B/s, under {limits.min_rate:g} B/s"))
                            window, window_have = now, have
            if total is None or have >= total:
                return h.hexdigest()
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # the part is already whole: the checksum decides
                return h.hexdigest()
            if e.code == 404:
                raise NotPublished(url, e.code) from None
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            if have == start:
                reason = getattr(e, "reason", None) or e
                raise DownloadError(f"cannot download {url} ({reason}); {_local_hint()}") from None
        if have == start:
            break
    raise DownloadError(f"download of {url} stopped at {have} bytes; run the same command again to resume")


def _too_big(url: str, part: Path, got: int, cap: int, size: int | None) -> None:
    part.unlink(missing_ok=True)
    what = "the registry lists" if size is not None else "the cap for files of unlisted size (SKETCHKIT_DOWNLOAD_MAX_BYTES)"
    raise DownloadError(f"{url}: sends {got}+ bytes, more than the {cap} {what}; nothing kept")


def _too_slow(url: str, have: int, why: str) -> str:
    return (
        f"download of {url} stopped at {have} bytes ({why}; SKETCHKIT_DOWNLOAD_DEADLINE, "
        "SKETCHKIT_DOWNLOAD_MIN_RATE); run the same command again to resume"
    )


def _local_hint() -> str:
    local = local_models()
    return f"available locally: {', '.join(local)}" if local else "no models are available locally"


@contextlib.contextmanager
def _progress(label: str, total: int | None, enabled: bool) -> Iterator[Callable[[int], None]]:
    if not enabled or not total:
        yield lambda n: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


def pull_data(cls: str, out: Path | None = None, progress: bool = True) -> Path:
    """QuickDraw's sketch-rnn .npz of one class (e.g. `cat`, `palm tree` or `palm_tree`)."""
    file = dataset_file(cls)
    dest = (Path(out) if out else cache_dir() / "data") / file["name"]
    return fetch(file, dest, progress)
