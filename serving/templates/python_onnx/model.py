"""Triton Python-backend model: the ONNX graph beside this file, run with onnxruntime.

One generic file for every stateless sketchkit graph (serving/repository.py copies it next to
each model.onnx): tensor names come from the model's config.pbtxt, never from this file. The
dynamic batcher hands over several clients' requests at once; rows of requests with equal shapes
are concatenated into one onnxruntime run and split again.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from sketchkit.runtimes.onnx import open_session


def session(path, parameters):
    """A CPU session (the project's one session helper); threads from the config's
    "intra_op_threads" (default 1: the server shares the machine with its clients, and a step is
    small)."""
    return open_session(path, threads=int(parameters.get("intra_op_threads", "1")))


def parameters_of(config):
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


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
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = session(path, parameters_of(config))
        check_names(self.session, self.inputs, self.outputs, path)
        # a [B] tensor arrives as [B, 1] (config reshape): squeeze it to the graph's rank
        self.ranks = {t.name: len(t.shape) for t in self.session.get_inputs()}

    def feeds(self, request):
        out = {}
        for name in self.inputs:
            array = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
            if array.ndim == self.ranks[name] + 1 and array.shape[-1] == 1:
                array = array[..., 0]
            out[name] = array
        return out

    def execute(self, requests):
        feeds = [self.feeds(r) for r in requests]
        responses = [None] * len(requests)
        groups = {}  # equal non-batch shapes -> request indices
        for i, f in enumerate(feeds):
            groups.setdefault(tuple(f[n].shape[1:] for n in self.inputs), []).append(i)
        for members in groups.values():
            try:
                batch = {n: np.concatenate([feeds[i][n] for i in members]) for n in self.inputs}
                results = self.session.run(self.outputs, batch)
            except Exception as e:  # one line back to the client, the server stays up
                for i in members:
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(str(e).splitlines()[0])
                    )
                continue
            offsets = np.cumsum([0] + [len(feeds[i][self.inputs[0]]) for i in members])
            for k, i in enumerate(members):
                lo, hi = offsets[k], offsets[k + 1]
                tensors = [
                    pb_utils.Tensor(n, np.ascontiguousarray(r[lo:hi]))
                    for n, r in zip(self.outputs, results, strict=True)
                ]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses
