"""Triton Python-backend model `<name>_generate`: one request in, finished sketches out.

The installed sketchkit package does the work: `sketchkit.engine` steps every in-flight request's
sketches together (continuous batching: one graph evaluation per step for the union of live rows,
a request arriving mid-flight joins at the next step, a finished request is answered at once),
and `sketchkit.sampling.Sampler` builds each request exactly as in-process `generate`/`complete`
would, so a seed gives the same sketches here as in process. The graphs beside this file
(model.json + ONNX) run in onnxruntime: CPU for KIND_CPU, CUDA for KIND_GPU.

`execute` only parses, checks and queues (returning None); the engine's thread answers each request
through its response sender with one final response. That needs no decoupled mode: the model
stays callable with v2 `infer` (HTTP and gRPC) and with the HTTP `generate` extension.
"""

import json
import queue
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from sketchkit.engine import BackgroundEngine, Cancelled, Engine, EngineBusy, Scheduler
from sketchkit.errors import SketchkitError
from sketchkit.graphs import DECODER_STEP
from sketchkit.modelinfo import graph_path
from sketchkit.runtimes.onnx import OnnxRuntime, open_session
from sketchkit.sampling import Sampler, SamplingOptions
from sketchkit.serving.metrics import GenerateMetrics
from sketchkit.wire import Limits, inputs_for, pack, parse_inputs

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def one_line(e):
    return (str(e).strip().strip("'\"").splitlines() or [type(e).__name__])[0][:300]


def error_response(e):
    """One line, with the gRPC status a client can act on: INVALID_ARGUMENT for its own mistakes,
    UNAVAILABLE for the retryable busy, INTERNAL for ours (HTTP answers 400 for all on 2.51)."""
    code = (pb_utils.TritonError.UNAVAILABLE if isinstance(e, EngineBusy)
            else pb_utils.TritonError.INVALID_ARG if isinstance(e, SketchkitError)
            else pb_utils.TritonError.INTERNAL)  # fmt: skip
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(one_line(e), code))


def require_provider(model_dir, info, providers, threads):
    """A KIND_GPU model whose CUDA provider failed to load would silently run on the CPU (the
    session falls back): refuse to start instead, with the reason in one line."""
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    if wanted == "CPUExecutionProvider":
        return  # always there
    session = open_session(graph_path(model_dir, info, DECODER_STEP.name), threads, providers)
    active = session.get_providers()
    if active[0] != wanted:
        raise pb_utils.TritonModelException(
            f"{wanted} is not active in onnxruntime (active: {', '.join(active)}): "
            "install the onnxruntime-gpu that matches this image's CUDA (serving/Dockerfile)"
        )


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        gpu = args.get("model_instance_kind") == "GPU"
        provider = p.get("execution_provider") or ("CUDAExecutionProvider" if gpu else "CPUExecutionProvider")
        providers = [provider, "CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [provider]
        if provider == "CUDAExecutionProvider":  # this instance's GPU (an instance group may span several)
            providers[0] = (provider, {"device_id": str(args.get("model_instance_device_id", "0"))})
        model_dir = Path(args["model_repository"]) / args["model_version"]
        runtime = OnnxRuntime(model_dir, providers=providers, threads=int(p.get("intra_op_threads", "1")),
                              cuda_graphs=provider == "CUDAExecutionProvider" and p.get("cuda_graphs", "0") == "1")
        require_provider(model_dir, runtime.info, providers, runtime.threads)
        self.sampler = Sampler(runtime)
        self.info = runtime.info
        self.model_name = args["model_name"]
        self.names = [t.name for t in inputs_for(self.info)]
        self.limits = Limits(max_n=int(p["max_sketches_per_request"]), max_len=int(p["max_len"]))
        # several engines (config "engines"), each stepped by its own thread, share the in-flight cap
        k = int(p.get("engines", "1"))
        in_flight = -(-int(p["max_sketches_in_flight"]) // k)
        engines = [
            Engine(runtime, Scheduler(max_rows=int(p["max_rows_per_step"]), max_pending_rows=in_flight),
                   cancel_check_s=float(p.get("cancel_check_s", "0.2")))
            for _ in range(k)
        ]  # fmt: skip
        self.engine = BackgroundEngine(engines, on_idle=self.log_statistics)
        self.metrics = GenerateMetrics(pb_utils, self.engine, {"model": args["model_name"], "version": args["model_version"]})
        # answers are packed and sent by a thread of their own: the engine's thread, the one that
        # every step waits for, only hands finished requests over
        self._answers = queue.SimpleQueue()
        self._responder = threading.Thread(target=self._respond_loop, name="sketchkit-responder", daemon=True)
        self._responder.start()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self.submit(request, sender)
            except Exception as e:  # one line back to this client; the others and the server go on
                self.metrics.refused(e)
                sender.send(error_response(e), flags=FINAL)
        return None

    def submit(self, request, sender):
        tensors = {}
        for name in self.names:
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t is not None:
                tensors[name] = t.as_numpy()
        # the generate extension passes JSON keys that are no input as request parameters
        unknown = sorted(json.loads(request.parameters() or "{}"))
        if unknown:
            raise ValueError(f"unknown input(s) {', '.join(unknown)} (this model takes {', '.join(self.names)})")
        r = parse_inputs(tensors, self.info, self.limits)
        options = SamplingOptions(tau=r.tau, temperature_rule=r.rule, greedy=r.greedy, max_len=r.max_len, seed=r.seed)
        if r.prefix is not None:
            job = self.sampler.completion(r.prefix, r.n, options)
        else:
            job = self.sampler.generation(r.n, r.z, options)
        # a prefix is read (and, for vae models, encoded) by the engine after admission, like
        # every other row: nothing here runs a graph
        job.is_cancelled = request.is_cancelled
        job.on_done = lambda done: self._answers.put((sender, done, r.prefix))
        self.engine.submit(job)  # EngineBusy (one line) when too many sketches are in flight

    def _respond_loop(self):
        """Never dies: one answer that cannot be sent must not leave every later request
        unanswered (a dead responder wedged the model for everyone, issue 22)."""
        while (answer := self._answers.get()) is not None:
            try:
                self.respond(*answer)
            except Exception as e:
                pb_utils.Logger.log_error(f"sketchkit responder: an answer was not sent: {one_line(e)}")

    def respond(self, sender, job, prefix):
        self.metrics.answered(job)
        if isinstance(job.error, Cancelled):
            # a non-decoupled model must send a response before the final flag, even to a
            # request nobody waits for any more (a bare final flag raises)
            error = pb_utils.TritonError("cancelled", pb_utils.TritonError.CANCELLED)
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
            return
        try:
            sketches = job.sketches()
            if prefix is not None:
                sketches = [np.vstack([prefix, s]) for s in sketches]
            strokes, lengths = pack(sketches)
            tensors = [pb_utils.Tensor("strokes", strokes), pb_utils.Tensor("lengths", lengths)]
            if self.info.dims.vae:  # the latents decoded (the prefix's own, for a completion)
                tensors.append(pb_utils.Tensor("z", np.ascontiguousarray(job.z, np.float32)))
            response = pb_utils.InferenceResponse(output_tensors=tensors)
        except Exception as e:  # the model failed (NaN parameters, ...): not the client's fault
            response = pb_utils.InferenceResponse(error=pb_utils.TritonError(one_line(e)))
        sender.send(response, flags=FINAL)

    def log_statistics(self, engine):
        """One line in the server log each time an engine runs dry, the totals of all engines
        (benchmarks read it)."""
        pb_utils.Logger.log_info(
            f"sketchkit engine: {engine.evaluations} evaluations, {engine.rows_stepped} rows stepped, "
            f"{engine.rows_stepped / engine.evaluations:.2f} rows per evaluation ({self.model_name})"
        )

    def finalize(self):
        self.engine.stop()
        self.metrics.stop()
        self._answers.put(None)
        self._responder.join(10)
