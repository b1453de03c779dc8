"""`sketchkit.Client`: finished sketches from a Triton server in one call per request.

    client = sketchkit.Client("grpc://127.0.0.1:8001")
    owls = client.generate("owl", n=50, tau=0.3, seed=1)  # list of stroke-3 arrays, pixels

Each call is one request to `<name>_generate` (the server runs the sampling loop, batched with
every other client's); the same seed gives the same sketches as in-process `sketchkit generate`.
Thread-safe. tritonclient is imported when the first model is opened.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from sketchkit.names import safe_name


class Client:
    """url: grpc://host:8001 or http://host:8000. timeout_s: per request. retries: extra
    attempts while the server is unavailable. key: the server's key (None: $SKETCHKIT_SERVER_KEY,
    else the local `sketchkit serve key`, which is sent only to a server on loopback)."""

    def __init__(
        self, url: str = "grpc://127.0.0.1:8001", *, timeout_s: float = 60.0, retries: int = 3, key: str | None = None
    ) -> None:
        self.url = url
        self._key = key
        self.timeout_s = timeout_s
        self.retries = retries
        self._runtimes: dict[str, Any] = {}
        self._lock = threading.Lock()

    def generate(
        self, model: str, n: int = 1, tau: float = 0.3, seed: int | None = None, *, greedy: bool = False,
        max_len: int | None = None, rule: str | None = None, z: np.ndarray | None = None,
    ) -> list[np.ndarray]:  # fmt: skip
        """n sketches from `model` (a served name; `magenta/owl.gen` is served as
        `magenta-owl.gen`); z [n, Nz] decodes given latents of a vae model."""
        from sketchkit.sampling import SamplingOptions

        options = SamplingOptions(tau=tau, temperature_rule=rule, greedy=greedy, max_len=max_len, seed=seed)
        return self._generator(model).generate(n, z, options)

    def complete(
        self, model: str, partial: np.ndarray, k: int = 8, tau: float = 0.3, seed: int | None = None, *,
        greedy: bool = False, max_len: int | None = None, rule: str | None = None,
    ) -> list[np.ndarray]:  # fmt: skip
        """k completions of a partial stroke-3 sketch (pixels), each with the partial sketch first."""
        from sketchkit.sampling import SamplingOptions

        options = SamplingOptions(tau=tau, temperature_rule=rule, greedy=greedy, max_len=max_len, seed=seed)
        return self._generator(model).complete(np.asarray(partial, np.float32), k, options)

    def close(self) -> None:
        with self._lock:
            runtimes, self._runtimes = list(self._runtimes.values()), {}
        for runtime in runtimes:
            runtime.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _generator(self, model: str) -> Any:
        from sketchkit.hub import load
        from sketchkit.runtimes.triton import TritonError

        name = safe_name(model)
        with self._lock:
            runtime: Any = self._runtimes.get(name)
            if runtime is None:
                runtime = load(model, server=self.url, timeout_s=self.timeout_s, retries=self.retries, key=self._key)
                self._runtimes[name] = runtime
        generator = runtime.remote_generator()
        if generator is None:
            raise TritonError(f"{self.url} serves no {name}_generate (rebuild the repository with --generate)")
        return generator
