"""The Runtime protocol over a Triton server (gRPC or HTTP), for services that share one server.

Whole sketches (default for `generate`/`decode`/`complete` when the server has it):
`<model>_generate` runs the sampling loop on the server, one request per call, continuously
batched with every other client's (`TritonGenerator`; `sketchkit.wire` is its contract).
Step mode (`mode="step"`, `?step=1` on a URL given to `sketchkit.hub.load`, or whatever the generate model does not cover,
such as `encode`) drives the loop here, one request per decoder step:
Stateless (default): `<model>_decoder_step` takes the state with each request and returns the next
one, so any request can go to any instance and Triton's dynamic batcher can merge the steps of
many clients into one execution. `stateful=True`: `<model>_decoder_step_stateful` keeps the state
on the server (one Triton sequence per generation); a step sends only `prev` (and z) plus the rows
that go on. The repository layout is `sketchkit.serving.repository`'s; model.json travels in the step
model's config, so the client needs nothing but the URL and the model name.

tritonclient is imported when a runtime is made, never by `import sketchkit`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from sketchkit import wire
from sketchkit.errors import SketchkitError
from sketchkit.graphs import DECODER_INIT, DECODER_STEP, ENCODER, Graph, graphs_for
from sketchkit.modelinfo import ModelInfo
from sketchkit.names import safe_name
from sketchkit.wire import INFO_PARAMETER, ROWS, STATEFUL_STEP, WIRE_DTYPES, stateful_graph, triton_name

MODES = ("generate", "step")


class TritonError(SketchkitError):
    """The server is down or slow, the model is not served, or an inference failed."""


def parse_url(url: str) -> tuple[str, str]:
    """'grpc://host:8001' | 'http://host:8000' | 'host:port' (gRPC) -> (protocol, 'host:port')."""
    bad = TritonError(f"bad Triton URL {url!r} (expected grpc://host:8001 or http://host:8000)")
    try:
        parts = urlsplit(url if "://" in url else f"grpc://{url}")
        port = parts.port or (8001 if parts.scheme == "grpc" else 8000)
    except ValueError:  # a port that is no number or out of range, a broken [IPv6] literal
        raise bad from None
    if parts.scheme not in ("grpc", "http") or not parts.hostname:
        raise bad
    # an IPv6 literal keeps its brackets: unbracketed, gRPC reads `::1:8001` as the address
    # ::0.1.128.1 (port 443), which is not loopback, and the HTTP client cannot parse it
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return parts.scheme, f"{host}:{port}"


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:300]


class TritonRuntime:
    """`sketchkit.runtimes.base.Runtime` over tritonclient; safe to share between threads.

    url: grpc://host:8001 or http://host:8000. model: the served model name (Triton serves
    `<model>_<graph>`; a zoo name such as `magenta/owl.gen` is served as `magenta-owl.gen`).
    info: model.json; None reads it from the server. timeout_s: per request. retries: extra
    attempts when the server is UNAVAILABLE (connection refused, restarting). mode: "generate"
    samples whole sketches with `<model>_generate` when the server has it; "step" always runs the
    loop here. stateful: the step mode with server-held state. key: what inference sends in
    `wire.KEY_HEADER`; None: $SKETCHKIT_SERVER_KEY, else the local key file's key, sent only to a
    loopback server (`wire.key_for`).
    """

    def __init__(
        self,
        url: str = "grpc://127.0.0.1:8001",
        model: str = "",
        info: ModelInfo | None = None,
        *,
        timeout_s: float = 30.0,
        retries: int = 3,
        stateful: bool = False,
        mode: str = "generate",
        key: str | None = None,
    ) -> None:
        if not model:
            raise TritonError("no model name given for the Triton runtime")
        if mode not in MODES:
            raise TritonError(f"unknown Triton runtime mode {mode!r} (choose {' or '.join(MODES)})")
        self.protocol, self.address = parse_url(url)
        self.url = f"{self.protocol}://{self.address}"
        self.model = safe_name(model)
        self.mode = "step" if stateful else mode
        self.timeout_s = timeout_s
        self.retries = retries
        self.stateful = stateful
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list[Any] = []
        self._open: dict[int, int] = {}  # thread id -> its last sequence (ended when it starts the next)
        host, port = self.address.rsplit(":", 1)
        self._loopback = wire.is_loopback(host)
        # inference needs the server's key (`sketchkit serve key`); the local one goes only to a
        # loopback server of this user's, so it is looked up once a server answers (`_find_key`)
        header = wire.GRPC_KEY_HEADER if self.protocol == "grpc" else wire.KEY_HEADER
        self._headers = {header: key} if key else {}
        self._given_key, self._host, self._port = key, host, int(port)
        import tritonclient.utils  # fail here, in one line, if the client library is missing

        self._exception = tritonclient.utils.InferenceServerException
        self._generator: TritonGenerator | None = None
        try:
            config = self._config(triton_name(self.model, DECODER_STEP.name))
            self._find_key()
            self.max_batch_size = int(config["max_batch_size"]) or 1 << 30
            self.info = info or self._info(config)
            if stateful:
                self._config(triton_name(self.model, STATEFUL_STEP))  # absent: a clear error now, not mid-sketch
            if self.mode == "generate" and self._serves(triton_name(self.model, wire.GENERATE)):
                self._generator = TritonGenerator(self)
        except BaseException:  # no connection left open: the server would wait for it at shutdown
            self.close()
            raise

    def __repr__(self) -> str:
        return f"TritonRuntime({self.url!r}, {self.model!r}, mode={self.mode!r}{', stateful=True' if self.stateful else ''})"

    def remote_generator(self) -> TritonGenerator | None:
        """Whole sketches from `<model>_generate`, or None in step mode (`Sampler` asks)."""
        return self._generator

    # -- the Runtime protocol -------------------------------------------------------------------

    def encode(self, strokes: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.info.dims.vae:
            raise TritonError(f"{self.model} is a decoder-only model: it has no encoder")
        mu, presig = self._run(ENCODER, {"strokes": strokes, "lengths": lengths})
        return mu, presig

    def init_state(self, z: np.ndarray | None, batch: int) -> np.ndarray:
        if self.stateful:
            return self._new_sequence(batch)
        if not self.info.dims.vae:
            return np.zeros((batch, self.info.dims.state_size), dtype=np.float32)  # paper §3.3
        if z is None:
            raise TritonError(f"{self.model} is a vae model: its initial state needs z")
        (state,) = self._run(DECODER_INIT, {"z": z})
        return state

    def step(
        self, prev: np.ndarray, z: np.ndarray | None, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.info.dims.vae and z is None:
            raise TritonError(f"{self.model} is a vae model: its decoder step needs z")
        if self.stateful:
            return self._stateful_step(prev, z, state)
        graph = graphs_for(self.info.dims.kind)[-1]
        params, next_state = self._run(graph, {"prev": prev, "z": z, "state": state})
        return params, next_state

    def __enter__(self) -> TritonRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the stateful sequences still open (Triton holds them until END or idle timeout, and
        counts them as in flight at shutdown) and close the clients."""
        with self._lock:
            open_sequences, self._open = list(self._open.values()), {}
        for seq in open_sequences:
            self._end(seq)
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    # -- server-held state ----------------------------------------------------------------------

    def _new_sequence(self, batch: int) -> np.ndarray:
        """A handle that the sampler slices like a state: rows of (sequence id, row); row -1 =
        not started. Ends this thread's previous sequence, so Triton frees its slot."""
        seq = int.from_bytes(os.urandom(8), "little") >> 2 | 1  # unique across clients; 0 is invalid
        with self._lock:
            previous = self._open.pop(threading.get_ident(), None)
            self._open[threading.get_ident()] = seq
        if previous is not None:
            self._end(previous)
        return np.stack([np.full(batch, seq), np.full(batch, -1)], axis=1).astype(np.int64)

    def _stateful_step(
        self, prev: np.ndarray, z: np.ndarray | None, handle: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        handle = np.asarray(handle)
        if (
            handle.ndim != 2
            or handle.shape[1] != 2
            or len(handle) != len(prev)
            or (handle[:, 0] != handle[0, 0]).any()
        ):
            raise TritonError(
                "stateful Triton runtime: the state is not a handle from this runtime's init_state"
            )
        seq, rows = int(handle[0, 0]), handle[:, 1]
        start = bool((rows < 0).all())
        feeds = {"prev": prev, "z": z, ROWS.name: np.zeros_like(rows) if start else rows}
        (params,) = self._infer(
            triton_name(self.model, STATEFUL_STEP), stateful_graph(self.info.dims.kind), feeds, batched=False,
            sequence=(seq, start, False),
        )  # fmt: skip
        return params, np.stack([np.full(len(prev), seq), np.arange(len(prev))], axis=1).astype(np.int64)

    def _end(self, seq: int) -> None:
        """END a sequence (a one-row step whose result is dropped): the server frees its state."""
        feeds: dict[str, np.ndarray | None] = {
            "prev": np.zeros((1, 5), np.float32),
            "z": np.zeros((1, self.info.dims.z_size), np.float32),
            ROWS.name: np.zeros(1, np.int64),
        }
        with contextlib.suppress(TritonError):  # expired or server gone: nothing left to free
            self._infer(triton_name(self.model, STATEFUL_STEP), stateful_graph(self.info.dims.kind), feeds,
                        batched=False, sequence=(seq, False, True))  # fmt: skip

    # -- requests -------------------------------------------------------------------------------

    def _client(self) -> Any:
        """One client per thread (the HTTP client is not thread-safe; gRPC channels are cheap)."""
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "grpc":
                import tritonclient.grpc as tc

                client = tc.InferenceServerClient(self.address)
            else:
                import tritonclient.http as tc

                client = tc.InferenceServerClient(
                    self.address, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _call(self, what: str, fn: Any) -> Any:
        """fn(client) with retries while the server is UNAVAILABLE; every failure -> one line."""
        delay = 0.1
        for attempt in range(self.retries + 1):
            try:
                return fn(self._client())
            except self._exception as e:
                status, message = str(e.status() or ""), _first_line(e.message() or str(e))
                # not listening yet, restarting, or still loading its models: worth another try
                # (502/503 over HTTP: a proxy whose replica died under the request, serving/README.md,
                # "Replicas behind nginx"; the same request again gives the same sketches for a seed)
                unavailable = (
                    "UNAVAILABLE" in status
                    or status in ("502", "503")
                    or "failed to connect" in message.lower()
                    or "no available versions" in message
                )
                if "is restricted, expecting header" in message:
                    raise TritonError(f"Triton at {self.url}: {what} needs the server's key ({self._key_hint()})") from None
                if "DEADLINE_EXCEEDED" in status or "Deadline" in message:
                    raise TritonError(
                        f"Triton at {self.url}: {what} timed out after {self.timeout_s:g} s"
                    ) from None
                if not unavailable:
                    raise TritonError(f"Triton at {self.url}: {what} failed: {message}") from None
            except OSError as e:  # the HTTP client's socket errors
                if isinstance(e, TimeoutError):
                    raise TritonError(
                        f"Triton at {self.url}: {what} timed out after {self.timeout_s:g} s"
                    ) from None
                message = _first_line(str(e) or type(e).__name__)
            if attempt < self.retries:
                time.sleep(delay)
                delay *= 2
                self._find_key()  # a server that went away: who listens on its port now?
        raise TritonError(f"Triton server at {self.url} is unavailable ({message})")

    def _find_key(self) -> None:
        """Without a key given: the local one for a server on loopback that listens as this user
        (`wire.key_for`), asked once one answers and again before each retry; while nothing listens
        on a loopback port the headers stay (that attempt cannot connect). A remote server's port is
        not in this machine's tables: $SKETCHKIT_SERVER_KEY goes to it all the same."""
        if not self._given_key and (not self._loopback or wire.listener_uids(self._port) != set()):
            self._headers = wire.key_headers(self.protocol, self._host, self._port)

    def _key_hint(self) -> str:
        if self._loopback:
            return (f"set ${wire.KEY_ENV}, or run `sketchkit serve start` as this user: it keeps the key where "
                    "clients find it, and the local key goes only to a port this user listens on")  # fmt: skip
        return f"set ${wire.KEY_ENV} to its key: the local key file is sent only to servers on loopback"

    def _config(self, name: str) -> dict[str, Any]:
        def get(client: Any) -> dict[str, Any]:
            if self.protocol == "grpc":
                return client.get_model_config(name, as_json=True, client_timeout=self.timeout_s)["config"]
            return client.get_model_config(name)

        try:
            return self._call(f"reading the config of {name}", get)
        except TritonError as e:
            if "unknown model" not in str(e) and "not found" not in str(e):
                raise
            raise TritonError(
                f"model {self.model!r} is not served by {self.url}: no {name} ({self._served()})"
            ) from None

    def _serves(self, name: str) -> bool:
        try:
            self._config(name)
        except TritonError as e:
            if "is not served" in str(e):
                return False
            raise
        return True

    def _served(self) -> str:
        """The sketchkit models a server offers, for error messages."""
        suffix = "_" + DECODER_STEP.name
        try:
            self._find_key()
            stats = self._client().get_inference_statistics(  # the repository index is closed (serving/README.md)
                headers=self._headers, **({"as_json": True} if self.protocol == "grpc" else {})
            )
            names = [m["name"] for m in stats.get("model_stats", [])]
        except Exception:  # only for the message
            return "cannot list its models"
        models = sorted(n[: -len(suffix)] for n in names if n.endswith(suffix))
        return "it serves " + (", ".join(models) if models else "no sketchkit models")

    def _info(self, config: dict[str, Any]) -> ModelInfo:
        import json

        text = config.get("parameters", {}).get(INFO_PARAMETER, {}).get("string_value")
        if not text:
            raise TritonError(
                f"{self.url}: {config.get('name')} has no {INFO_PARAMETER} (not built by sketchkit serve build-repo)"
            )
        return ModelInfo.from_dict(json.loads(text))

    def _run(self, graph: Graph, feeds: dict[str, np.ndarray | None]) -> list[np.ndarray]:
        """A stateless graph; batches bigger than the model's max_batch_size go in chunks."""
        name = triton_name(self.model, graph.name)
        n = len(next(v for v in feeds.values() if v is not None))
        if n <= self.max_batch_size:
            return self._infer(name, graph, feeds, batched=True)
        chunks = [
            self._infer(
                name,
                graph,
                {k: None if v is None else v[i : i + self.max_batch_size] for k, v in feeds.items()},
                batched=True,
            )
            for i in range(0, n, self.max_batch_size)
        ]
        return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]

    def _infer(
        self, name: str, graph: Graph, feeds: dict[str, np.ndarray | None], *, batched: bool,
        sequence: tuple[int, bool, bool] | None = None,
    ) -> list[np.ndarray]:  # fmt: skip
        arrays = {}
        for t in graph.inputs:
            value = feeds[t.name]
            if value is None:
                raise TritonError(f"{name}: input {t.name} is missing")
            array = np.ascontiguousarray(value, dtype=t.dtype)
            if batched and len(t.dims) == 1:
                array = array.reshape(-1, 1)  # a [B] tensor is [B, 1] on the wire (config reshape)
            arrays[t.name] = array
        return self.infer(name, arrays, [t.name for t in graph.outputs], sequence=sequence)

    def infer(
        self, name: str, arrays: dict[str, np.ndarray], outputs: list[str], *,
        sequence: tuple[int, bool, bool] | None = None,
    ) -> list[np.ndarray]:  # fmt: skip
        """One inference on Triton model `name`: numpy inputs by name -> the named outputs."""
        if self.protocol == "grpc":
            import tritonclient.grpc as tc
        else:
            import tritonclient.http as tc
        inputs = []
        for key, array in arrays.items():
            dtype = "BYTES" if array.dtype == object else WIRE_DTYPES[array.dtype.name]
            inp = tc.InferInput(key, list(array.shape), dtype)
            inp.set_data_from_numpy(array)
            inputs.append(inp)
        requested = [tc.InferRequestedOutput(n) for n in outputs]
        seq_id, start, end = sequence or (0, False, False)
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}

        def infer(client: Any) -> Any:
            return client.infer(name, inputs, outputs=requested, sequence_id=seq_id, sequence_start=start,
                                sequence_end=end, headers=self._headers, **kwargs)  # fmt: skip

        result = self._call(f"inference on {name}", infer)
        return [result.as_numpy(n) for n in outputs]


class TritonGenerator:
    """Whole sketches from `<model>_generate` (the same sketches as in process for a seed)."""

    def __init__(self, runtime: TritonRuntime) -> None:
        self.runtime = runtime
        self.name = triton_name(runtime.model, wire.GENERATE)

    def generate(self, n: int, z: np.ndarray | None, options: Any) -> list[np.ndarray]:
        """n sketches (`options` is a `SamplingOptions`); z [n, Nz] decodes given latents."""
        arrays = self._options(n, options)
        if z is not None:
            arrays["z"] = np.ascontiguousarray(z, np.float32)
        return self._run(arrays)

    def complete(self, partial: np.ndarray, k: int, options: Any) -> list[np.ndarray]:
        """k completions of a partial stroke-3 sketch (pixels), partial included."""
        arrays = self._options(k, options)
        arrays["prefix"] = np.ascontiguousarray(partial, np.float32)
        return self._run(arrays)

    def _options(self, n: int, options: Any) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {"n": np.array([n], np.int64), "tau": np.array([options.tau], np.float32)}
        if options.seed is not None:
            arrays["seed"] = np.array([options.seed], np.int64)
        if options.greedy:
            arrays["greedy"] = np.array([True])
        if options.max_len is not None:
            arrays["max_len"] = np.array([options.max_len], np.int64)
        if options.temperature_rule is not None:
            arrays["rule"] = np.array([options.temperature_rule.encode()], dtype=object)
        return arrays

    def _run(self, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        strokes, lengths = self.runtime.infer(self.name, arrays, ["strokes", "lengths"])
        return wire.unpack(strokes, lengths)
