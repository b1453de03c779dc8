"""The one version source (pyproject.toml reads it; `sketchkit.__version__` re-exports it)."""

__version__ = "0.1.0"
