"""The hub (being split into modules: see the next commit)."""

from sketchkit.hub.download import *  # noqa: F403
from sketchkit.hub.download import _pin  # noqa: F401
