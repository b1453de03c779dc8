"""The hub: the one way from a model's name (or path, or a Triton URL) to a runtime, `load`, beside
the registry table and the download client that it needs (whisper's `load_model` + `_MODELS`).

Each module holds one concept and imports only those above it in this list:
  table     the registry (zoo/registry.json) and what a typed name means
  cache     the cache layout, pins (trust on first use) and locks; zoo info / verify / rm
  download  one registry file, verified and bounded (SHA-256 while streaming, Range resume, limits)
  pull      a model's files into a model directory (Magenta JSON converted into ONNX)
  load      name / directory / Magenta file / Triton URL -> a runtime
"""

from sketchkit.hub.cache import (
    expected_sha256,
    info,
    is_cached,
    local_models,
    model_dir,
    pins,
    remove,
    verify,
)
from sketchkit.hub.download import (
    ENV_MIRROR,
    DownloadError,
    Limits,
    NotPublished,
    fetch,
    pull_data,
    source_url,
)
from sketchkit.hub.load import SERVER_MODES, load, resolve, served_name, split_server_url
from sketchkit.hub.pull import convert_local_magenta, convert_magenta, pull
from sketchkit.hub.table import (
    SETS,
    available_models,
    candidates,
    dataset_classes,
    model_set,
    registry,
    zoo_dir,
)
from sketchkit.io import cache_dir, sha256_file  # reached as hub.X by callers since hub.py

__all__ = [
    "ENV_MIRROR", "SERVER_MODES", "SETS", "DownloadError", "Limits", "NotPublished",
    "available_models", "cache_dir", "candidates", "convert_local_magenta", "convert_magenta", "dataset_classes",
    "expected_sha256", "fetch", "info", "is_cached", "load", "local_models", "model_dir", "model_set", "pins",
    "pull", "pull_data", "registry", "remove", "resolve", "served_name", "sha256_file", "source_url",
    "split_server_url", "verify", "zoo_dir",
]  # fmt: skip
