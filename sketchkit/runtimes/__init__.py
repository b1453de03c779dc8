"""Where the step-wise graphs run, behind one small protocol (`base.Runtime`: encode, init_state,
step over numpy batches):

- `sketchkit.runtimes.onnx`: in this process with onnxruntime (the default; it re-exports
  `sketchkit.onnx_session.open_session`, the one way to a session, which stands below the draw);
- `sketchkit.runtimes.triton`: a Triton server over gRPC or HTTP (tritonclient, imported only
  when a runtime is made).

A command never picks one itself: `sketchkit.hub.load(name_or_path, server=None)` does.
"""

from sketchkit.runtimes.base import Runtime

__all__ = ["Runtime"]
