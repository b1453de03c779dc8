"""The models the page offers, each opened once and sampled by one request at a time.

The models named on the command line (default: the shipped sheep) come first and are opened at
start, so a typo fails there and not in the page. Without `--server` the rest of the zoo follows:
shipped, cached, then downloadable models set by set (`sketchkit.hub.SETS`, as `zoo list` groups
them), each opened (and downloaded) when first picked. With
`--server` only the named models are offered, through Triton. A request names a model by its
entry in this table, never by a path.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sketchkit.errors import SketchkitError
from sketchkit.playground.validate import RequestError
from sketchkit.runtimes.base import Runtime
from sketchkit.sampling import Sampler, SamplingOptions

GROUPS = ("command line", "shipped", "cached", "downloadable", "server")
MAX_OPEN = 8  # zoo models kept open at once (each holds its graphs' sessions); the command line's stay


@dataclass(frozen=True)
class Entry:
    name: str  # what the page shows and sends back
    group: str  # one of GROUPS
    kind: str  # "vae", "decoder-only" or "" (not known until opened)
    license: str
    set: str = ""  # the zoo set (a key of sketchkit.hub.SETS); "" for a directory or a served model


def _is_zoo_name(name: str) -> bool:
    """A registry name, not a model directory given on the command line."""
    from sketchkit.hub import available_models

    return name in available_models()


def _warm(sampler: Sampler) -> Sampler:
    """Run every graph once: onnxruntime's first run of a graph is several times slower than the
    next (allocations), and the first click should not pay for it."""
    sampler.complete(np.array([[1.0, 1.0, 0.0], [1.0, -1.0, 1.0]], np.float32), 1, SamplingOptions(max_len=4, seed=0))
    return sampler


class Catalogue:
    """Model name -> `Sampler`, opened lazily (downloads included) and shared by requests.

    models: zoo names or model directories, opened now; server: a Triton URL (then only `models`
    are offered); zoo: also offer the rest of the zoo (in process only); max_open: zoo models
    kept open beyond `models` (456 are listed: opening all would hold GBs).
    """

    def __init__(
        self, models: Sequence[str] = ("sheep",), server: str | None = None, zoo: bool = True, max_open: int = MAX_OPEN
    ) -> None:
        from sketchkit.hub import SETS, load, model_set

        self.server = server
        self.sets = dict(SETS)  # set -> what the picker calls it
        self.max_open = max_open  # zoo models open at once: the least recently used is closed
        self.entries: dict[str, Entry] = {}
        self._samplers: OrderedDict[str, Sampler] = OrderedDict()  # least recently used first
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        for name in dict.fromkeys(models):
            sampler = _warm(Sampler(load(name, server)))
            info = sampler.info
            group = "server" if server else "command line"
            zoo_set = model_set(name) if not server and _is_zoo_name(name) else ""  # served: Triton's name
            self.entries[name] = Entry(name, group, info.dims.kind, info.license, zoo_set)
            self._samplers[name] = sampler
        if zoo and not server:
            self._add_zoo()
        for name in self.entries:
            self._locks[name] = threading.Lock()

    def _add_zoo(self) -> None:
        from sketchkit import hub

        rows = hub.registry()["models"]
        found: dict[str, list[Entry]] = {"shipped": [], "cached": [], "downloadable": []}
        for name in hub.available_models():
            row = rows[name]
            if name in self.entries or not (row.get("shipped") or row["files"]):
                continue  # offered already, or not published yet
            group = "shipped" if row.get("shipped") else "cached" if hub.is_cached(name) else "downloadable"
            if group == "shipped" and not hub.is_cached(name):
                continue  # shipped without its ONNX export: nothing to sample
            licence = (row.get("license") or "").split(" (")[0]
            found[group].append(Entry(name, group, row["dims"].get("kind", ""), licence, hub.model_set(name)))
        order = {key: i for i, key in enumerate(self.sets)}
        for entries in found.values():  # within a group, set by set (stable: registry order within one)
            self.entries.update((e.name, e) for e in sorted(entries, key=lambda e: order.get(e.set, len(order))))

    def listing(self) -> list[dict[str, Any]]:
        """What the model picker shows, in order; the page groups it by (group, set)."""
        return [
            {"name": e.name, "group": e.group, "set": e.set, "kind": e.kind, "license": e.license,
             "open": e.name in self._samplers}
            for e in self.entries.values()
        ]  # fmt: skip

    def lock(self, name: str) -> threading.Lock:
        """Held while a request samples `name`: one request at a time per model."""
        self._check(name)
        return self._locks[name]

    def sampler(self, name: str) -> Sampler:
        """The model's sampler, opened (downloaded, converted) on first use. Call under `lock`."""
        self._check(name)
        with self._guard:
            sampler = self._samplers.get(name)
            if sampler is not None:
                self._samplers.move_to_end(name)
        if sampler is None:
            sampler = _warm(Sampler(self._open(name)))
            with self._guard:
                self._samplers[name] = sampler
                self._evict()
        return sampler

    def _evict(self) -> None:
        """Close the least recently used zoo models beyond `max_open` (call under `_guard`);
        never one named at start, nor one a request is using (its lock is held)."""
        opened = [n for n in self._samplers if self.entries[n].group not in ("command line", "server")]
        for victim in opened[: max(0, len(opened) - self.max_open)]:
            lock = self._locks[victim]
            if lock.acquire(blocking=False):
                try:
                    self._samplers.pop(victim).runtime.close()
                finally:
                    lock.release()

    def describe(self, name: str) -> dict[str, Any]:
        """The model's card for the page (opens it)."""
        info = self.sampler(name).info
        return {
            "name": name, "kind": info.dims.kind, "cell": info.dims.cell, "dec_size": info.dims.dec_size,
            "license": info.license, "source": info.source, "max_seq_len": info.max_seq_len, "scale_factor": info.scale_factor,
            "server": self.server,
        }

    def close(self) -> None:
        with self._guard:
            samplers, self._samplers = list(self._samplers.values()), OrderedDict()
        for s in samplers:
            s.runtime.close()

    def _check(self, name: str) -> None:
        if name not in self.entries:
            shown = name if len(name) <= 60 else name[:57] + "..."
            raise RequestError(f"unknown model {shown!r}: pick one from the list", 404)

    def _open(self, name: str) -> Runtime:
        from sketchkit import hub

        try:
            path: Path = hub.pull(name, progress=False)
        except hub.DownloadError as e:
            raise RequestError(f"cannot download {name}: {e}", 502) from None
        except SketchkitError as e:
            raise RequestError(f"cannot open {name}: {e}", 422) from None
        return hub.load(path)
