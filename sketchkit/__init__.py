"""sketchkit: generative vector sketches with sketch-rnn (Ha & Eck, 2017).

The client needs numpy and onnxruntime only; torch lives in `zoo` and `export`.
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """`sketchkit.Client` without importing it (or tritonclient) at `import sketchkit`."""
    if name == "Client":
        from sketchkit.client import Client

        return Client
    raise AttributeError(f"module 'sketchkit' has no attribute {name!r}")
