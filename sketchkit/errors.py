"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class SketchkitError(Exception):
    """An expected failure (bad input, missing model, server down): its message is shown as is."""


class DataError(SketchkitError):
    """A sketch, dataset or file that cannot be used as given."""


class ModelError(SketchkitError):
    """A model directory, graph or checkpoint that is missing, corrupt or inconsistent."""
