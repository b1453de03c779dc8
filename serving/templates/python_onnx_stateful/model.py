"""Triton Python-backend model: the stateful decoder step with its state kept in this process.

Triton's implicit state does not work with the Python backend (it never stores the returned
state), so this file does what the onnxruntime backend's implicit state does on GPU: feed the
stored state of the request's sequence (CORRID) to the graph's state input, store the state
output for the next request, drop it at END. At START the graph gets a 1-row zero placeholder,
as Triton gives it. States idle longer than the config's "idle_seconds" (= the sequence batcher's
max_sequence_idle_microseconds, after which Triton drops the sequence) are freed.

Limits (config parameters): a sequence holds at most "max_rows" rows, and all sequences together
at most "max_state_bytes" of state; a request past either gets a one-line error and its sequence
is dropped. Room held by sequences idle for "evict_idle_seconds" (default 1 s; a client steps
every few ms) goes, oldest first, to a sequence that needs it: one client cannot hold the whole
cap for the idle time by opening sequences and walking away. onnxruntime's memory arena is off, so memory goes back to the system when sequences end.
"""

import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from sketchkit.runtimes.onnx import open_session


def session(path, parameters):
    # no memory arena: it keeps the peak for good, and states come and go
    return open_session(path, threads=int(parameters.get("intra_op_threads", "1")), mem_arena=False)


def control(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]


def check_names(session, inputs, outputs, path):
    """Fail at load, not at the first request, when config.pbtxt and the graph disagree."""
    have_in = {t.name for t in session.get_inputs()}
    have_out = {t.name for t in session.get_outputs()}
    missing = [n for n in inputs if n not in have_in] + [n for n in outputs if n not in have_out]
    if missing:
        raise ValueError(f"{path} has no tensor(s) {', '.join(missing)} named in config.pbtxt")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        self.state_in, self.state_out = p["state_input"], p["state_output"]
        self.placeholder = np.zeros((1, int(p["state_size"])), np.float32)
        self.idle_s = float(p["idle_seconds"])
        self.max_rows = int(p.get("max_rows", "4096"))
        self.max_state_bytes = int(p.get("max_state_bytes", str(1 << 30)))
        self.evict_idle_s = float(p.get("evict_idle_seconds", "1"))
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = session(path, p)
        check_names(self.session, self.inputs, self.outputs, path)
        self.states = {}  # correlation id -> (state [B, S], last used)
        # control tensor names by kind (START is the enum's default, so its kind may be absent)
        kinds = {c["control"][0].get("kind", "CONTROL_SEQUENCE_START"): c["name"]
                 for c in config["sequence_batching"]["control_input"]}  # fmt: skip
        self.start = kinds["CONTROL_SEQUENCE_START"]
        self.end = kinds["CONTROL_SEQUENCE_END"]
        self.corrid = kinds["CONTROL_SEQUENCE_CORRID"]

    def step(self, request):
        corrid, start, end = (control(request, name) for name in (self.corrid, self.start, self.end))
        if start:
            state = self.placeholder
        elif corrid in self.states:
            state = self.states[corrid][0]
        else:
            raise KeyError(
                f"sequence {corrid} has no state (ended, idle longer than {self.idle_s:g} s, or idle longer than "
                f"{self.evict_idle_s:g} s while another sequence needed its room)"
            )
        feeds = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
        rows = len(feeds[self.inputs[0]])
        if rows > self.max_rows:
            self.states.pop(corrid, None)
            raise ValueError(f"sequence {corrid}: {rows} rows, over the cap of {self.max_rows} per sequence (max_rows)")
        stored = sum(s.nbytes for c, (s, _) in self.states.items() if c != corrid)
        need = rows * self.placeholder.nbytes
        if not end and stored + need > self.max_state_bytes:
            stored -= self.evict(stored + need - self.max_state_bytes, keep=corrid)
        if not end and stored + need > self.max_state_bytes:
            self.states.pop(corrid, None)
            raise ValueError(
                f"sequence {corrid}: {rows} more rows of state would pass the server's cap of "
                f"{self.max_state_bytes} bytes (max_state_bytes); end other sequences first"
            )
        feeds[self.start] = np.array([1 if start else 0], np.int32)  # the graph reads START too
        feeds[self.state_in] = state
        *outputs, next_state = self.session.run(self.outputs + [self.state_out], feeds)
        if end:
            self.states.pop(corrid, None)
        else:
            self.states[corrid] = (next_state, time.monotonic())
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(n, o) for n, o in zip(self.outputs, outputs, strict=True)]
        )

    def evict(self, wanted, keep):
        """Drop sequences idle for evict_idle_s, oldest first, until `wanted` bytes are free; the bytes freed."""
        now, freed = time.monotonic(), 0
        for corrid, (state, used) in sorted(self.states.items(), key=lambda item: item[1][1]):
            if freed >= wanted or now - used < self.evict_idle_s:
                break
            if corrid != keep:
                del self.states[corrid]
                freed += state.nbytes
        return freed

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self.step(request))
            except Exception as e:  # one line back to the client, the server stays up
                msg = str(e).strip("'\"").splitlines()[0]
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(msg)))
        now = time.monotonic()
        for corrid in [c for c, (_, used) in self.states.items() if now - used > self.idle_s]:
            del self.states[corrid]
        return responses
