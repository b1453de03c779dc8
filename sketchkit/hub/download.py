"""The hub: the one way from a model's name (or path, or a Triton URL) to a runtime, `load`, beside
the registry table and the download client that it needs (whisper's `load_model` + `_MODELS`).

The table is data (`zoo/registry.json`, like whisper's `_MODELS`); this module adds what whisper
and timm leave out: the SHA-256 is checked while streaming (or, where upstream publishes none,
pinned on first download: trust on first use, and only once the file converted into a working
model), a download resumes with HTTP Range, a file lock keeps two processes from writing the same
file, and files appear only by an atomic rename. A download never follows a symlink in the cache,
stops as soon as more bytes arrive than the registry lists, and gives up past an overall deadline
or below a minimum rate.

Names: `owl` is the best available owl model (ours, else Magenta's vae, else its gen);
`magenta/owl.gen`, `magenta/owl.vae` (H = 512) and `magenta-large/owl.<gen|vae>` (H = 1024)
address one exactly. Environment: SKETCHKIT_CACHE (cache directory), SKETCHKIT_ZOO_MIRROR
(fetch every file from MIRROR/<its name> instead, for air-gapped sites), and the download limits
SKETCHKIT_DOWNLOAD_DEADLINE (seconds per file, default 3600), SKETCHKIT_DOWNLOAD_MIN_RATE (bytes
per second averaged over each SKETCHKIT_DOWNLOAD_RATE_WINDOW seconds; defaults 1024 and 30) and
SKETCHKIT_DOWNLOAD_MAX_BYTES (the cap for a file whose size the registry does not list; 1 GiB).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import http.client
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from sketchkit._version import __version__
from sketchkit.errors import ModelError, SketchkitError
from sketchkit.io import atomic_directory, atomic_write, cache_dir, remove_stale_temps, sha256_file
from sketchkit.modelinfo import ModelInfo
from sketchkit.names import is_valid_name, safe_name
from sketchkit.runtimes.base import Runtime

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
    """Upstream (or the mirror) has no such file: HTTP 404."""


# ---- the table --------------------------------------------------------------------------------
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


def _row(name: str) -> dict[str, Any]:
    row = registry()["models"].get(name)
    if row is None:
        raise SketchkitError(f"unknown model {name!r}{_did_you_mean(name)}")
    return row


def _did_you_mean(name: str) -> str:
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
        raise SketchkitError(f"unknown model {name!r}{_did_you_mean(name)}")
    return out


def _usable(name: str) -> bool:
    """Shipped, or downloadable: our not-yet-published rows are neither."""
    row = registry()["models"][name]
    return bool(row.get("shipped") or row["files"])


# ---- the cache (`sketchkit.io.cache_dir`) -----------------------------------------------------
def model_dir(name: str) -> Path:
    """Where a model's directory is (shipped) or goes (cached), whether or not it is there yet."""
    row = _row(name)
    if row.get("shipped"):
        return zoo_dir() / row["shipped"]
    safe_name(name)  # a registry name, and still never a path out of the cache
    return cache_dir() / "models" / name


def is_cached(name: str) -> bool:
    """Ready to use: its directory (cached, or shipped) holds a model.json."""
    return (model_dir(name) / "model.json").is_file()


def _local(name: str) -> bool:
    return bool(_row(name).get("shipped")) or is_cached(name)


def local_models() -> list[str]:
    """Models usable without the network: shipped (with their export) and cached."""
    return [n for n in available_models() if is_cached(n)]


def _download_path(file: dict[str, Any]) -> Path:
    return cache_dir() / "downloads" / file["name"]


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An inter-process lock for `path`; the lock files live in cache/locks/, out of the way."""
    from filelock import FileLock

    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    with FileLock(locks / f"{path.name}-{key}.lock"):
        yield


# ---- pins: trust on first use for files whose SHA-256 upstream does not publish ---------------
def _pins_path() -> Path:
    return cache_dir() / "pins.json"


def pins() -> dict[str, str]:
    """URL -> SHA-256 observed on its first download."""
    try:
        return json.loads(_pins_path().read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise SketchkitError(f"{_pins_path()}: corrupt ({e}); fix or delete it") from None


def _pin(url: str, digest: str | None) -> None:
    """Record (or, with None, forget) the SHA-256 of an upstream URL."""
    path = _pins_path()
    with _lock(path):
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
    dest = dest or _download_path(file)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _lock(dest):
        expected, _ = expected_sha256(file)
        _drop_planted(dest)
        if dest.is_file():
            if expected is not None and sha256_file(dest) == expected:
                return dest
            dest.unlink()  # changed since it was verified, or never verified (no pin): again
        part = dest.with_name(dest.name + ".part")
        _drop_planted(part)
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
            _pin(file["url"], digest)
    return dest


def _drop_planted(path: Path) -> None:
    """The cache never holds links: a symlink or a hard link where a download goes was planted;
    remove the link itself (what it points to stays untouched)."""
    if path.is_symlink() or (path.is_file() and path.stat().st_nlink > 1):
        path.unlink()


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
                raise NotPublished(f"{url}: not found (HTTP 404)") from None
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


# ---- models -----------------------------------------------------------------------------------
def pull(name: str, progress: bool = True) -> Path:
    """The directory of a model, downloaded (and, for Magenta's JSON, converted) if need be. A
    class name takes the best candidate that is local, else the best one upstream publishes."""
    found = candidates(name)
    for c in found:
        if _local(c):
            return _pull_one(c, progress)
    for c, fallback in zip(found, found[1:], strict=False):
        try:
            return _pull_one(c, progress)
        except NotPublished:
            if progress:
                click.echo(f"{c} is not published; trying {fallback}", err=True)
    return _pull_one(found[-1], progress)


def _pull_one(name: str, progress: bool) -> Path:
    row = _row(name)
    out = model_dir(name)
    if row.get("shipped"):
        return _shipped(name, out)
    if is_cached(name):
        try:
            ModelInfo.load(out)
        except ModelError as e:
            raise ModelError(f"the cached {name} is broken ({e}); `sketchkit zoo rm {name}` clears it") from None
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out):
        if is_cached(name):  # another process finished it while we waited
            return out
        _remove_stale(out)
        paths = [fetch(f, progress=progress, pin=False) for f in row["files"]]
        try:
            with atomic_directory(out) as tmp:  # a directory without model.json is not a model
                if row["format"] == "magenta-json":
                    say = (
                        (lambda msg: click.echo(msg.replace(str(tmp), str(out)), err=True)) if progress else None
                    )
                    convert_magenta(paths[0], tmp, name, row, say)
                else:
                    for f, p in zip(row["files"], paths, strict=True):
                        shutil.copyfile(p, tmp / f.get("path", f["name"]))
                _check_against_registry(name, row, ModelInfo.load(tmp))
        except BaseException:  # an unverified download that makes no model is not kept
            for f, p in zip(row["files"], paths, strict=True):
                if expected_sha256(f)[0] is None:
                    p.unlink(missing_ok=True)
            raise
        for f, p in zip(row["files"], paths, strict=True):
            if expected_sha256(f)[0] is None:  # trust on first use: pinned now that it works
                _pin(f["url"], sha256_file(p))
    return out


def _check_against_registry(name: str, row: dict[str, Any], info: ModelInfo) -> None:
    """A download is what the registry says it is (kind, H), or it is not kept: an unpinned
    upstream file could be any model under a trusted name."""
    want = row.get("dims") or {}
    got = {"kind": info.dims.kind, "dec_size": info.dims.dec_size}
    wrong = [f"{k} {got[k]} (the registry says {want[k]})" for k in got if want.get(k) is not None and want[k] != got[k]]
    if wrong:
        raise ModelError(f"{name}: the downloaded model has {', '.join(wrong)}; nothing kept")


def _remove_stale(out: Path) -> list[Path]:
    """What a killed pull left beside `out`: its temp (and old) directories, and the export's
    temp directory nested beside those. Call it holding `out`'s lock."""
    stale = sorted({*out.parent.glob(f".{out.name}.*"), *out.parent.glob(f"..{out.name}.*")})
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


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


# ---- the one way in: a name, a directory, a Magenta file or a Triton URL -> a runtime --------
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
    with _lock(out):
        if not (out / "model.json").is_file():
            _remove_stale(out)
            say = (lambda msg: click.echo(msg, err=True)) if progress else None
            stem = path.name.removesuffix(".json")
            name = stem if is_valid_name(stem) else f"import-{digest[:12]}"
            import_magenta(path, out, name=name, source=str(path.resolve()), progress=say)
    return out


def remove(name: str) -> list[Path]:
    """Delete everything the cache holds of a model: its directory, its downloads (whole or
    partial), their pins and what a killed pull left; also when the model itself never got there."""
    found = candidates(name)
    target = next((c for c in found if _local(c) or _cached_files(c)), found[0])
    if _row(target).get("shipped"):
        raise SketchkitError(f"{target} is shipped with sketchkit; there is nothing to remove")
    out = model_dir(target)
    if not out.parent.is_dir() and not _cached_files(target) and not _pinned(target):
        raise SketchkitError(f"{name} is not cached")  # (and without creating the cache to say so)
    removed: list[Path] = []
    with _lock(out):
        for p in _cached_files(target):
            p.unlink()
            removed.append(p)
        if _pinned(target):
            for f in _row(target)["files"]:
                _pin(f["url"], None)
            removed.append(_pins_path())
        removed += _remove_stale(out)
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
            removed.append(out)
        elif out.is_symlink():
            out.unlink()
            removed.append(out)
    if not removed:
        raise SketchkitError(f"{name} is not cached")
    return removed


def _pinned(name: str) -> bool:
    return any(f["url"] in pins() for f in _row(name)["files"])


def _cached_files(name: str) -> list[Path]:
    """A model's downloads in the cache, whole or partial (symlinks included: they go too)."""
    found = []
    for f in _row(name)["files"]:
        p = _download_path(f)
        found += [q for q in (p, p.with_name(p.name + ".part")) if q.is_file() or q.is_symlink()]
    return found


def verify() -> dict[str, str]:
    """Re-check the cache: every cached model loads, and every download matches its registry
    hash or its pin. Returns {model: problem, or "" when it is fine}; fixes nothing."""
    report = {}
    for name in available_models():
        row = _row(name)
        if row.get("shipped") or not (is_cached(name) or _cached_files(name)):
            continue
        report[name] = ""
        try:
            if is_cached(name):
                _check_against_registry(name, row, ModelInfo.load(model_dir(name)))
            for f in row["files"]:
                p = _download_path(f)
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


def info(name: str) -> dict[str, Any]:
    """A registry row, plus where the model is and how each of its files is verified."""
    found = candidates(name)
    name = next((c for c in found if _local(c)), found[0])
    row = dict(_row(name), name=name, cached=is_cached(name), path=str(model_dir(name)))
    row["files"] = []
    for f in _row(name)["files"]:
        digest, how = expected_sha256(f)
        row["files"].append(dict(f, sha256=digest, verified_by=how))
    return row


# ---- training data ----------------------------------------------------------------------------
def dataset_classes() -> list[str]:
    return list(registry()["datasets"]["quickdraw"]["classes"])


def pull_data(cls: str, out: Path | None = None, progress: bool = True) -> Path:
    """QuickDraw's sketch-rnn .npz of one class (e.g. `cat`, `palm tree` or `palm_tree`)."""
    table = registry()["datasets"]["quickdraw"]
    by_key = {c.lower().replace("_", " "): c for c in table["classes"]}
    key = cls.lower().replace("_", " ")
    if key not in by_key:
        close = difflib.get_close_matches(key, list(by_key), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(by_key[c] for c in close)}?)" if close else ""
        raise SketchkitError(f"unknown QuickDraw class {cls!r}{hint}")
    cls = by_key[key]
    file = {
        "url": table["url"].format(**{"class": urllib.parse.quote(cls)}),
        "name": f"{cls}.npz",
        "sha256": table["sha256"].get(cls),
        "size": table["size"].get(cls),
    }
    dest = (Path(out) if out else cache_dir() / "data") / file["name"]
    return fetch(file, dest, progress)
