"""sketchkit: generative vector sketches with sketch-rnn (Ha & Eck, 2017).

The client needs numpy and onnxruntime only; torch lives in `sketchkit.zoo` and `sketchkit.export`.
`sketchkit.load(name_or_path, server=None)` is the one way from a model to a runtime.
"""

from sketchkit._version import __version__ as __version__


def __getattr__(name: str) -> object:
    """`sketchkit.load` and `sketchkit.Client` without importing them (or onnxruntime,
    tritonclient) at `import sketchkit`."""
    if name == "load":  # sketchkit.load("owl") -> a runtime; sketchkit.hub.load's docstring says what it takes
        from sketchkit.hub import load

        return load
    if name == "Client":
        from sketchkit.client import Client

        return Client
    raise AttributeError(f"module 'sketchkit' has no attribute {name!r}")
