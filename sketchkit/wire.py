"""The wire contracts between the client and a Triton server, in one module that both import:
the step models' names (`<model>_<graph>`, the stateful step, model.json as a config parameter)
and the `<name>_generate` model's request and answer.

Written once as data (like `sketchkit.graphs`, the ONNX graphs they serve): `sketchkit.serving.repository`
makes the configs from it, the Triton models (`serving/templates/*/model.py`) parse requests with
it, and the client (`sketchkit.runtimes.triton`, `sketchkit.client`) builds requests and reads
answers from the same tables.

Step models: `<model>_encoder`, `<model>_decoder_init`, `<model>_decoder_step` (the graphs of
`sketchkit.graphs`; a [B] tensor is [B, 1] on the wire), and `<model>_decoder_step_stateful`
(`stateful_graph`: no state tensors, `rows` says which rows of the previous step go on; the
sequence batcher's START control is `CONTROL_START`). `<model>_decoder_step` carries model.json
in its config parameter `INFO_PARAMETER`.

Generate model, one request in, finished sketches out:

Inputs (all [1] unless said; only `n` is required):
  n INT64 (sketches; with `prefix`: endings), tau FP32, seed INT64 (absent: fresh entropy),
  greedy BOOL, max_len INT64, rule BYTES ("eq8" | "js"), z FP32 [n, Nz] (vae: decode these
  latents), prefix FP32 [L, 3] (a stroke-3 partial sketch in pixels to complete).
Outputs: strokes FP32 [n, L, 3] stroke-3 in pixels, zero-padded, lengths INT32 [n] (each
  sketch is strokes[i, :lengths[i]]), z FP32 [n, Nz] for vae models (the latents decoded).
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sketchkit.errors import SketchkitError
from sketchkit.graphs import DECODER_STEP, Graph, Tensor, graphs_for
from sketchkit.modelinfo import ModelInfo

# ---- the step models ---------------------------------------------------------------------------
INFO_PARAMETER = "sketchkit_model_info"  # config parameter of <model>_decoder_step holding model.json
STATEFUL_STEP = "decoder_step_stateful"
STATE_IN = next(t.name for t in DECODER_STEP.inputs if t.dims[-1] == "S")  # "state"
STATE_OUT = next(t.name for t in DECODER_STEP.outputs if t.dims[-1] == "S")  # "next_state"
CONTROL_START = "START"
ROWS = Tensor("rows", "int64", ("B",))
WIRE_DTYPES = {"float32": "FP32", "int64": "INT64", "int32": "INT32", "bool": "BOOL", "bytes": "BYTES"}


def triton_name(model: str, graph: str) -> str:
    """The Triton model serving one graph (or the generate loop) of a sketchkit model."""
    return f"{model}_{graph}"


def stateful_graph(kind: str) -> Graph:
    """The stateful step's tensors on the wire: the step's inputs without the state, plus `rows`
    (which rows of the previous step go on); outputs without the next state."""
    step = graphs_for(kind)[-1]
    return Graph(
        STATEFUL_STEP,
        inputs=tuple(t for t in step.inputs if t.name != STATE_IN) + (ROWS,),
        outputs=tuple(t for t in step.outputs if t.name != STATE_OUT),
    )


# ---- the key -----------------------------------------------------------------------------------
# `sketchkit serve start` puts inference behind this header (Triton's restricted APIs), so neither
# a web page's blind cross-origin POST nor a client without the key reaches Triton 2.51's JSON
# parser (serving/README.md, "Who may call the server"). Over gRPC, Triton reads the key from the
# metadata `GRPC_KEY_HEADER` (its prefix for restricted protocols; metadata keys are lower case).
KEY_HEADER = "x-sketchkit-key"
GRPC_KEY_HEADER = f"triton-grpc-protocol-{KEY_HEADER}"
KEY_ENV = "SKETCHKIT_SERVER_KEY"


def key_file() -> Path:
    """Where `serve start` keeps the local server's key (mode 0600): the client reads it there."""
    from sketchkit.io import cache_dir

    return cache_dir() / "server.key"


def read_key_file(path: Path) -> str | None:
    """The key in `path`, None without the file; a one-line error for a link, or a file that is
    not this user's alone (another user could have set it, or read it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SketchkitError(f"{path}: cannot read the server key ({e.strerror}); remove it and retry") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise SketchkitError(f"{path}: the server key must be a file of this user's alone (mode 0600); remove it and retry")
        return f.read(4096).decode("utf-8", "replace").strip() or None


def server_key() -> str | None:
    """The local server's key: $SKETCHKIT_SERVER_KEY, else the key file, else none."""
    key = os.environ.get(KEY_ENV)
    if key:
        return key.strip()
    return read_key_file(key_file())


def is_loopback(host: str) -> bool:
    """`host` is this machine as typed: localhost, 127.0.0.0/8 or ::1 (no other name is resolved:
    a DNS answer is not trusted with the key; `localhost.` and `127.0.0.1.`, with a final dot,
    are names that glibc and gRPC ask DNS for)."""
    import ipaddress

    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listener_uids(port: int) -> set[int] | None:
    """The uids owning the TCP sockets that listen on `port` on this machine (Linux: /proc/net/tcp
    and tcp6, LISTEN rows); None where the kernel does not say."""
    uids: set[int] = set()
    tables = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        tables += 1
        for row in rows:  # sl local_address rem_address st ... uid
            fields = row.split()
            if len(fields) > 7 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                uids.add(int(fields[7]))
    return uids if tables else None


def key_for(host: str, port: int | None = None) -> str | None:
    """The key to send to a server on `host`: $SKETCHKIT_SERVER_KEY to any server (it is given
    for the server in use), the local key file's only to loopback (it belongs to `serve start`
    on this machine; a remote or a proxy in between must not learn it), and, given the `port`,
    only while what listens there is this user's: any uid may listen on a free loopback port (the
    default 8001 while the server is down), and would otherwise receive the key."""
    key = os.environ.get(KEY_ENV)
    if key:
        return key.strip()
    if not is_loopback(host):
        return None
    uids = listener_uids(port) if port is not None else None
    if uids is not None and uids != {os.geteuid()}:
        return None
    return read_key_file(key_file())


def key_headers(protocol: str, host: str, port: int | None = None) -> dict[str, str]:
    """The key for `host` (and `port`: `key_for`) as an HTTP header or ("grpc") gRPC metadata;
    {} without one."""
    key = key_for(host, port)
    return {GRPC_KEY_HEADER if protocol == "grpc" else KEY_HEADER: key} if key else {}


# ---- the generate model ------------------------------------------------------------------------
GENERATE = "generate"

INPUTS = (
    Tensor("n", "int64", ("1",)),  # INT64: Triton 2.51's JSON reader wraps INT32 (2^32 + 4 -> 4)
    Tensor("tau", "float32", ("1",)),
    Tensor("seed", "int64", ("1",)),
    Tensor("greedy", "bool", ("1",)),
    Tensor("max_len", "int64", ("1",)),
    Tensor("rule", "bytes", ("1",)),
    Tensor("z", "float32", ("n", "Nz")),
    Tensor("prefix", "float32", ("L", "3")),
)
OUTPUTS = (
    Tensor("strokes", "float32", ("n", "L", "3")),
    Tensor("lengths", "int32", ("n",)),
    Tensor("z", "float32", ("n", "Nz")),
)
REQUIRED = ("n",)
VAE_ONLY = ("z",)


def inputs_for(info: ModelInfo) -> tuple[Tensor, ...]:
    return tuple(t for t in INPUTS if info.dims.vae or t.name not in VAE_ONLY)


def outputs_for(info: ModelInfo) -> tuple[Tensor, ...]:
    return tuple(t for t in OUTPUTS if info.dims.vae or t.name not in VAE_ONLY)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (config parameters of the generate model)."""

    max_n: int = 256  # sketches per request
    max_len: int = 1000  # steps per sketch (and points of a prefix)


@dataclass(frozen=True)
class GenerateRequest:
    """A parsed, checked request: what `Sampler.generation`/`completion` need."""

    n: int
    tau: float
    seed: int | None
    greedy: bool
    max_len: int | None
    rule: str | None
    z: np.ndarray | None
    prefix: np.ndarray | None


def _scalar(name: str, array: np.ndarray, kind: str) -> object:
    """The one value of a [1] input, checked for its numpy kind ('i', 'f', 'b')."""
    if array.size != 1:
        raise SketchkitError(f"input {name} must hold one value, got shape {list(array.shape)}")
    if kind == "i" and array.dtype.kind not in "iu":
        raise SketchkitError(f"input {name} must be an integer, got {array.dtype}")
    if kind == "f" and array.dtype.kind not in "fiu":
        raise SketchkitError(f"input {name} must be a number, got {array.dtype}")
    return array.reshape(-1)[0]


def parse_inputs(get: dict[str, np.ndarray], info: ModelInfo, limits: Limits) -> GenerateRequest:
    """Check one request's tensors (name -> array, absent = not sent); one-line errors."""
    known = {t.name for t in inputs_for(info)}
    unknown = sorted(set(get) - known)
    if unknown:
        raise SketchkitError(f"unknown input(s) {', '.join(unknown)} (this model takes {', '.join(sorted(known))})")
    if "n" not in get:
        raise SketchkitError("input n (sketches in this request) is required")
    n = int(_scalar("n", get["n"], "i"))  # type: ignore[call-overload]
    if not 1 <= n <= limits.max_n:
        raise SketchkitError(f"n must be in 1..{limits.max_n}, got {n}")
    tau = _decimal(_scalar("tau", get["tau"], "f")) if "tau" in get else 0.3
    if not (math.isfinite(tau) and 0 < tau <= 2):
        raise SketchkitError(f"tau must be in (0, 2], got {tau}")
    seed = int(_scalar("seed", get["seed"], "i")) if "seed" in get else None  # type: ignore[call-overload]
    if seed is not None and seed < 0:
        raise SketchkitError(f"seed must be a non-negative integer, got {seed}")
    greedy = bool(_scalar("greedy", get["greedy"], "b")) if "greedy" in get else False
    max_len = int(_scalar("max_len", get["max_len"], "i")) if "max_len" in get else None  # type: ignore[call-overload]
    if max_len is not None and not 1 <= max_len <= limits.max_len:
        raise SketchkitError(f"max_len must be in 1..{limits.max_len}, got {max_len}")
    rule = None
    if "rule" in get:
        raw = _scalar("rule", get["rule"], "s")
        rule = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        if rule not in ("eq8", "js"):
            raise SketchkitError(f"unknown temperature rule {rule[:20]!r} (choose eq8 or js)")
    z = None
    if "z" in get:
        z = _float_array("z", get["z"], (n, info.dims.z_size))
    prefix = None
    if "prefix" in get:
        prefix = _float_array("prefix", get["prefix"], (-1, 3))
        if not 1 <= len(prefix) < (max_len or info.max_seq_len):
            raise SketchkitError(
                f"prefix must have 1..{(max_len or info.max_seq_len) - 1} points (fewer than max_len), got {len(prefix)}"
            )
        if z is not None:
            raise SketchkitError("give z or prefix, not both (a vae completion encodes its prefix)")
    return GenerateRequest(n, tau, seed, greedy, max_len, rule, z, prefix)


def _decimal(value: object) -> float:
    """An FP32 value as the shortest decimal that rounds to it (float32 0.3 -> 0.3, not
    0.30000001192...): tau means on the server exactly what the same number means in process."""
    return float(np.format_float_positional(np.float32(value), unique=True))  # type: ignore[arg-type]


def _float_array(name: str, array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if array.dtype.kind != "f":
        raise SketchkitError(f"input {name} must be float32, got {array.dtype}")
    if array.ndim != 2 or any(want not in (-1, got) for want, got in zip(shape, array.shape, strict=True)):
        want = ", ".join("any" if d == -1 else str(d) for d in shape)
        raise SketchkitError(f"input {name} must have shape [{want}], got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise SketchkitError(f"input {name} contains NaN or infinite values")
    return np.ascontiguousarray(array, np.float32)


def pack(sketches: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sketches -> (strokes [n, L, 3] zero-padded, lengths [n] int32), L = the longest (>= 1)."""
    lengths = np.array([len(s) for s in sketches], np.int32)
    out = np.zeros((len(sketches), max(1, int(lengths.max(initial=0))), 3), np.float32)
    for i, s in enumerate(sketches):
        out[i, : len(s)] = s
    return out, lengths


def unpack(strokes: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """The inverse of `pack`: each sketch its own array."""
    strokes = np.asarray(strokes, np.float32).reshape(len(lengths), -1, 3)
    return [strokes[i, : int(n)].copy() for i, n in enumerate(np.asarray(lengths).reshape(-1))]
