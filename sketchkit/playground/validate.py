"""Checks on what the page sends: every field parsed here or refused with one line and a 4xx.

The HTTP API is the only way in, and anything on this machine can reach it, so nothing is
trusted: sizes are capped before parsing, JSON's NaN and Infinity are refused, numbers must be
numbers (not strings or booleans), and model names are looked up, never used as paths.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from sketchkit.errors import SketchkitError

MAX_BODY_BYTES = 1 << 20  # about 60,000 points of JSON
MAX_POINTS = 20_000  # drawn points per drawing, before simplification
MAX_STROKES = 1_000
MAX_COUNT = 32  # sketches per request (k, n, steps)
MIN_CANVAS, MAX_CANVAS = 16, 4096  # canvas side, pixels
MAX_SEED = 2**32 - 1


class RequestError(SketchkitError):
    """A request the server refuses; `status` is its HTTP status (4xx, or 502 for a download)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def one_line(message: object) -> str:
    """An error message as the page shows it: one line, not too long."""
    text = " ".join(str(message).split())
    return text if len(text) <= 300 else text[:297] + "..."


def parse_body(body: bytes) -> dict[str, Any]:
    """A JSON object; NaN and Infinity (which Python's json accepts) are refused."""

    def refuse(token: str) -> float:
        raise RequestError(f"{token} is not a number this API takes")

    try:
        doc = json.loads(body, parse_constant=refuse)
    except RecursionError:
        raise RequestError("the request body is JSON nested too deeply") from None
    except ValueError as e:  # not JSON, or an integer of over 4,300 digits (Python's cap)
        raise RequestError(f"the request body is not JSON this API takes ({one_line(e)[:120]})") from None
    if not isinstance(doc, dict):
        raise RequestError("the request body must be a JSON object")
    return doc


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise RequestError(f"{key} must be a finite number, got {_shown(value)}")
    return float(value)


def _shown(value: object) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def count(doc: dict[str, Any], key: str, default: int, low: int = 1, high: int = MAX_COUNT) -> int:
    """An integer field in [low, high]."""
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"{key} must be an integer from {low} to {high}, got {_shown(value)}")
    return value


def temperature(doc: dict[str, Any], default: float = 0.5) -> float:
    """tau in (0, 2] (the sampler's range; Eq. 8)."""
    tau = _number(doc.get("tau", default), "tau")
    if not 0 < tau <= 2:
        raise RequestError(f"tau must be in (0, 2], got {tau:g}")
    return tau


def seed(doc: dict[str, Any]) -> int | None:
    """A seed in [0, 2^32), or None for a fresh one."""
    value = doc.get("seed")
    return None if value is None else count(doc, "seed", 0, 0, MAX_SEED)


def name(doc: dict[str, Any], key: str = "model") -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise RequestError(f"{key} must be a model name, got {_shown(value)}")
    return value


@dataclass(frozen=True)
class Drawing:
    """Polylines in canvas pixels, and the canvas's longer side."""

    lines: list[np.ndarray]
    size: float

    @property
    def points(self) -> int:
        return sum(len(line) for line in self.lines)


def drawing(doc: dict[str, Any], key: str = "drawing") -> Drawing:
    """`{"strokes": [[[x, y], ...], ...], "width": W, "height": H}`, in canvas pixels."""
    d = doc.get(key)
    if not isinstance(d, dict):
        raise RequestError(f"{key} must be an object with strokes, width and height")
    size = max(_number(d.get("width"), f"{key}.width"), _number(d.get("height"), f"{key}.height"))
    if not MIN_CANVAS <= size <= MAX_CANVAS:
        raise RequestError(f"{key}: the canvas must be {MIN_CANVAS} to {MAX_CANVAS} pixels, got {size:g}")
    raw = d.get("strokes")
    if not isinstance(raw, list):
        raise RequestError(f"{key}.strokes must be a list of strokes")
    if len(raw) > MAX_STROKES:
        raise RequestError(f"{key} has {len(raw)} strokes, more than {MAX_STROKES}")
    lines, total = [], 0
    for i, stroke in enumerate(raw):
        total += len(stroke) if isinstance(stroke, list) else 0
        if total > MAX_POINTS:
            raise RequestError(f"{key} has more than {MAX_POINTS} points", 413)
        lines.append(_stroke(stroke, f"{key} stroke {i}", size))
    if sum(len(line) for line in lines) < 2:
        raise RequestError(f"{key} is empty (fewer than 2 points): draw something first")
    return Drawing(lines, size)


def _stroke(stroke: object, what: str, size: float) -> np.ndarray:
    """One stroke: a non-empty list of [x, y] numbers, within reach of the canvas."""
    if not isinstance(stroke, list) or not stroke:
        raise RequestError(f"{what} must be a non-empty list of [x, y] points")
    try:
        arr = np.asarray(stroke)
    except ValueError:  # ragged
        arr = np.asarray([], dtype=object)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.dtype.kind not in "iuf":
        raise RequestError(f"{what} must be a list of [x, y] number pairs")
    arr = arr.astype(np.float64)
    if np.abs(arr).max() > 10 * size:
        raise RequestError(f"{what} has a point far outside the canvas (limit {10 * size:g} pixels)")
    return arr
