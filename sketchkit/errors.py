"""The one exception type the CLI turns into a one-line message and a non-zero exit."""

import unicodedata


class SketchkitError(Exception):
    """An expected failure (bad input, missing model, server down): its message is shown as is."""


class DataError(SketchkitError):
    """A sketch, dataset or file that cannot be used as given."""


class ModelError(SketchkitError):
    """A model directory, graph or checkpoint that is missing, corrupt or inconsistent."""


TORCH = "torch==2.13.0"  # the train and export extras' pin (pyproject.toml; README.md)
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def needs_torch(what: str, extra: str) -> SketchkitError:
    """The one line for a command without torch: the CPU build from PyTorch's own index first
    (PyPI's torch on Linux x86_64 is the CUDA build, gigabytes of NVIDIA wheels), then the extra."""
    return SketchkitError(
        f"{what} needs torch: pip install {TORCH} --index-url {TORCH_CPU_INDEX} (the CPU build; "
        f"with a CUDA GPU: pip install {TORCH}), then pip install 'sketchkit[{extra}]'"
    )


def printable(text: str) -> str:
    """`text` safe for a terminal: control and format characters (ESC, BEL, NUL, newlines, the
    bidi overrides such as U+202E) escaped as in a Python literal. Untrusted names and paths
    reach error lines; an OSC escape in one could retitle the window or set the clipboard."""
    return "".join(
        c.encode("unicode_escape").decode() if unicodedata.category(c) in ("Cc", "Cf") else c for c in text
    )
