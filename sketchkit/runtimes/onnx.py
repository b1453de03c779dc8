"""The default runtime: the step-wise graphs in this process with onnxruntime.

Each graph is loaded on first use (a decoder-only `generate` never pays for an encoder), and
checked against the contract in `sketchkit.graphs` so that a wrong or corrupt file fails at load
with one line instead of deep inside the sampling loop. Sampling runs `decoder_step` with the draw
appended (`sketchkit.draw.with_draw`, built in memory): one evaluation per step. On CUDA the
engine's rows stay in GPU memory between steps (`DeviceRows`, onnxruntime's IOBinding); only the
drawn points come back to the host.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sketchkit.errors import ModelError
from sketchkit.graphs import (
    DECODER_INIT,
    DECODER_STEP,
    DECODER_STEP_DRAW,
    DECODER_STEP_DRAW_UNCOND,
    DECODER_STEP_UNCOND,
    ENCODER,
    Graph,
    concrete_dims,
)
from sketchkit.modelinfo import ModelInfo, graph_path
from sketchkit.onnx_session import open_session as open_session  # the one way to a session
from sketchkit.onnx_session import session_options as session_options
from sketchkit.runtimes.onnx_rows import DeviceRows, GraphRows, with_passthrough

if TYPE_CHECKING:
    import onnxruntime as ort

_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)", "bool": "tensor(bool)", "uint64": "tensor(uint64)"}


def _first_line(e: BaseException) -> str:
    """onnxruntime's message, without its "[ONNXRuntimeError] : 7 : CODE : Load model from P failed:"."""
    text = (str(e).strip() or type(e).__name__).splitlines()[0]
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : (\w+) : ", r"\1: ", text)
    text = re.sub(r"Load model from .* failed:", "", text)
    return text[:300]


class OnnxRuntime:
    """`Runtime` over onnxruntime InferenceSessions built from a model directory (model.json).

    device_rows: keep an engine's rows in device memory (default: when the step runs on CUDA).
    cuda_graphs: on CUDA, step them as captured CUDA graphs (`GraphRows`); each engine captures
    its own, so it pays for engines that live long (the Triton generate model keeps one), not for
    a `Sampler` call that makes a fresh engine each time."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        providers: list[str] | None = None,
        threads: int | None = None,
        device_rows: bool | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.info: ModelInfo = ModelInfo.load(self.model_dir)
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads
        # the engine's rows in device memory: by default exactly when the step runs on CUDA; with
        # cuda_graphs, in fixed-capacity slots stepped by captured CUDA graphs (GraphRows)
        self.device_rows = device_rows
        self.cuda_graphs = cuda_graphs
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._wants: dict[str, list[tuple[int, ...]]] = {}  # per graph: its outputs' dims after the batch

    def __repr__(self) -> str:
        return f"OnnxRuntime({str(self.model_dir)!r}, providers={self.providers})"

    # -- the Runtime protocol -------------------------------------------------------------------

    def encode(self, strokes: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.info.dims.vae:
            raise ModelError(f"{self.info.name} is a decoder-only model: it has no encoder")
        mu, presig = self._run(ENCODER, {"strokes": strokes, "lengths": lengths})
        return mu, presig

    def init_state(self, z: np.ndarray | None, batch: int) -> np.ndarray:
        if not self.info.dims.vae:
            return np.zeros((batch, self.info.dims.state_size), dtype=np.float32)  # paper §3.3
        if z is None:
            raise ModelError(f"{self.info.name} is a vae model: its initial state needs z")
        (state,) = self._run(DECODER_INIT, {"z": z})
        return state

    def step(
        self, prev: np.ndarray, z: np.ndarray | None, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.info.dims.vae:
            if z is None:
                raise ModelError(f"{self.info.name} is a vae model: its decoder step needs z")
            params, next_state = self._run(DECODER_STEP, {"prev": prev, "z": z, "state": state})
        else:
            params, next_state = self._run(DECODER_STEP_UNCOND, {"prev": prev, "state": state})
        return params, next_state

    def step_and_draw(
        self, prev: np.ndarray, z: np.ndarray | None, state: np.ndarray,
        temperature: np.ndarray, greedy: np.ndarray, counter: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        """One decoder step and the draw (`sketchkit.draw`), on host arrays: (point [B, 5],
        next_state, next_counter)."""
        feeds = {"prev": prev, "state": state, "temperature": temperature, "greedy": greedy, "counter": counter}
        if self.info.dims.vae:
            if z is None:
                raise ModelError(f"{self.info.name} is a vae model: its decoder step needs z")
            feeds["z"] = z
        try:
            point, next_state, next_counter = self._run(self._step_draw_graph, feeds)
        except ModelError:
            self.step(prev, z, state)  # the plain step's contract check says what is wrong, if it can
            raise
        return point, next_state, next_counter

    def row_table(self) -> DeviceRows | GraphRows | None:
        """The engine's row table in device memory when the step runs on CUDA (or when asked
        for with `device_rows=True`); None: the engine keeps host arrays (`sketchkit.rows`)."""
        import onnxruntime as ort

        session = self._sessions.get("decoder_step_draw") or self._load(self._step_draw_graph)
        device = "cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu"
        if not (self.device_rows if self.device_rows is not None else device == "cuda"):
            return None
        cuda = next((p for p in self.providers if _names([p]) == ["CUDAExecutionProvider"]), None)
        device_id = int(_options(cuda).get("device_id", 0)) if device == "cuda" and cuda else 0
        # one CUDA graph per capacity and parity (`gpu_graph_id`) came with onnxruntime 1.18; before
        # it a session replays its one graph for every id, which would step the wrong buffers
        graphs_ok = device == "cpu" or _version(ort.__version__) >= (1, 18)
        if not (self.cuda_graphs and graphs_ok):
            return DeviceRows(self, session, device, device_id)
        names = ("z", "temperature", "greedy") if self.info.dims.vae else ("temperature", "greedy")
        path = graph_path(self.model_dir, self.info, "decoder_step")
        model = with_passthrough(_with_draw(path, self.info.dims.num_mixture, exact_math=device == "cpu"), names)
        providers = [
            ("CUDAExecutionProvider", {**_options(p), "enable_cuda_graph": "1"}) if _names([p]) == ["CUDAExecutionProvider"] else p
            for p in self.providers
        ]  # fmt: skip
        try:
            graphed = open_session(model, self.threads, providers)
        except Exception as e:  # e.g. a node the CUDA provider does not run: no capture, rows still on the GPU
            logging.getLogger("sketchkit").warning("no CUDA graphs (%s): rows on the device, uncaptured", _first_line(e))
            return DeviceRows(self, session, device, device_id)
        return GraphRows(self, graphed, device, device_id, capture=device == "cuda")

    @property
    def _step_draw_graph(self) -> Graph:
        return DECODER_STEP_DRAW if self.info.dims.vae else DECODER_STEP_DRAW_UNCOND

    def close(self) -> None:
        self._sessions.clear()

    # -- sessions -------------------------------------------------------------------------------

    def _run(self, graph: Graph, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        session = self._sessions.get(graph.name) or self._load(graph)
        feeds = {t.name: np.ascontiguousarray(feeds[t.name], dtype=t.dtype) for t in graph.inputs}
        try:
            outputs = session.run([t.name for t in graph.outputs], feeds)
        except Exception as e:  # onnxruntime raises its own exception types, all Exception
            raise ModelError(f"{self.info.name}: {graph.name} failed: {_first_line(e)}") from None
        batch = len(next(iter(feeds.values())))
        wants = self._wants.get(graph.name)
        if wants is None:  # model.json's dims after the batch, once per graph (checked every call)
            wants = self._wants[graph.name] = [tuple(concrete_dims(t, self.info.sizes)[1:]) for t in graph.outputs]
        for t, out, want in zip(graph.outputs, outputs, wants, strict=True):  # a symbolic dim may hide a wrong size
            if out.shape[:1] != (batch,) or out.shape[1:] != want:
                raise ModelError(
                    f"{self.info.name}: {graph.name} returned {t.name} of shape {list(out.shape)}, "
                    f"model.json says {[batch, *want]}"
                )
        return outputs

    def _load(self, graph: Graph) -> ort.InferenceSession:
        path = graph_path(self.model_dir, self.info, "decoder_step" if graph.name == "decoder_step_draw" else graph.name)
        try:
            if graph.name == "decoder_step_draw":  # exact ln/cos/sin unless CUDA runs the draw (sketchkit.draw)
                m, cuda = self.info.dims.num_mixture, "CUDAExecutionProvider" in _names(self.providers)
                session = open_session(_with_draw(path, m, exact_math=not cuda), self.threads, self.providers)
                if cuda and "CUDAExecutionProvider" not in session.get_providers():
                    session = open_session(_with_draw(path, m, exact_math=True), self.threads, self.providers)
            else:
                session = open_session(path, self.threads, self.providers)
        except Exception as e:
            raise ModelError(f"{path}: not a loadable ONNX graph ({_first_line(e)})") from None
        _check_contract(session, graph, self.info.sizes, path)
        self._sessions[graph.name] = session
        return session


def _check_contract(session: Any, graph: Graph, sizes: dict[str, int], path: Path) -> None:
    """The graph file has the tensors `sketchkit.graphs` promises, with model.json's sizes."""
    have = {t.name: t for t in session.get_inputs()}
    have.update({t.name: t for t in session.get_outputs()})
    want = graph.inputs + graph.outputs
    missing = [t.name for t in want if t.name not in have]
    if missing:
        raise ModelError(f"{path}: not a sketchkit {graph.name} graph (no tensor {', '.join(missing)})")
    extra = [t.name for t in session.get_inputs() if t.name not in {w.name for w in graph.inputs}]
    if extra:
        raise ModelError(f"{path}: unexpected input(s) {', '.join(extra)} for {graph.name}")
    for t in want:
        got = have[t.name]
        if got.type != _ORT_TYPES[t.dtype]:
            raise ModelError(f"{path}: {t.name} is {got.type}, expected {_ORT_TYPES[t.dtype]}")
        dims = concrete_dims(t, sizes)
        if len(got.shape) != len(dims) or any(
            want_d > 0 and isinstance(got_d, int) and got_d != want_d for want_d, got_d in zip(dims, got.shape, strict=True)
        ):
            raise ModelError(f"{path}: {t.name} has shape {got.shape}, model.json says {dims}")


def _with_draw(path: Path, num_mixture: int, exact_math: bool) -> bytes:
    """decoder_step at `path` with the draw appended, serialised for a session. For a model in the
    cache (the zoo's), built once and kept beside its step as `decoder_step_draw-<math>-<key>.onnx`
    (exact or fast math: both may be needed, a CUDA session may fall back to the CPU), the key the
    SHA-256 of the step's bytes, of the draw's source and of the arguments (a changed step or
    draw builds anew and the old file of that math is removed): building it took onnx's import, a parse
    and two copies of the step's weights, a fifth of a one-sketch `generate`'s CPU time. Models
    elsewhere (a training run's, a test's) are built in memory each time, leaving nothing behind."""
    import hashlib

    from sketchkit import draw
    from sketchkit.io import atomic_write, cache_dir

    step = path.read_bytes()
    cached: Path | None = None
    if path.resolve().is_relative_to(cache_dir().resolve()):
        key = hashlib.sha256(step)
        key.update(Path(draw.__file__).read_bytes())
        key.update(f"{num_mixture} {exact_math}".encode())
        variant = f"decoder_step_draw-{'exact' if exact_math else 'fast'}-"
        cached = path.parent / f"{variant}{key.hexdigest()[:40]}.onnx"
        try:
            return cached.read_bytes()
        except OSError:
            pass
    import onnx

    model = draw.with_draw(onnx.load_from_string(step), num_mixture, exact_math).SerializeToString()
    if cached is not None:
        try:
            with atomic_write(cached) as f:
                f.write(model)
            for old in path.parent.glob(f"{variant}*.onnx"):
                if old != cached:
                    old.unlink(missing_ok=True)
        except OSError as e:  # a read-only cache: no harm, only slower
            logging.getLogger("sketchkit").debug("decoder_step_draw not kept (%s)", e)
    return model


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def _options(provider: Any) -> dict[str, str]:
    return {} if isinstance(provider, str) else dict(provider[1])


def _names(providers: list[Any]) -> list[str]:
    """Provider names of a providers list (names, or (name, options) pairs)."""
    return [p if isinstance(p, str) else p[0] for p in providers]
