"""Canvas pixels <-> a model's units: where a drawing in the browser meets the model.

The mapping is fixed per canvas size, as in the sketch-rnn-js demos, not fitted to the drawing:
a small circle must stay small to the model. The side of the canvas spans `SPAN` normalised units
(pixels / scale_factor), so a drawing that fills most of it is as large, to the model, as a
typical training sketch (median extent / scale_factor: 13 for aaron_sheep, about 9 for QuickDraw;
the shipped sheep is the default, so the span leans its way). Pointer events arrive every few
pixels; the training data was simplified with RDP (2 pixels: 0.11 normalised units for
aaron_sheep, about 0.07 for QuickDraw), so the drawing is simplified the same way before the
model reads it. RDP keeps a subset of the drawn points, endpoints included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sketchkit import strokes

SPAN = 14.0  # normalised units across the canvas side
EPSILON = 0.1  # RDP tolerance, normalised units


@dataclass(frozen=True)
class Canvas:
    """A canvas of `size` pixels (its longer side) drawn for a model of `scale_factor`."""

    size: float
    scale_factor: float

    @property
    def factor(self) -> float:
        """Model pixels per canvas pixel."""
        return SPAN * self.scale_factor / self.size

    def simplify(self, lines: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The drawn polylines as the model should read them: RDP in canvas pixels."""
        epsilon = EPSILON * self.size / SPAN
        return [strokes.rdp(np.asarray(line, np.float64), epsilon) for line in lines]

    def to_model(self, lines: Sequence[np.ndarray]) -> np.ndarray:
        """Polylines in canvas pixels -> stroke-3 in model pixels (the first point is the origin)."""
        s = strokes.from_polylines(lines)
        return (s * np.array([self.factor, self.factor, 1.0])).astype(np.float32)

    def to_canvas(self, sketch: np.ndarray, origin: Sequence[float] = (0.0, 0.0)) -> list[np.ndarray]:
        """Stroke-3 in model pixels -> polylines in canvas pixels, starting at `origin`."""
        s = np.asarray(sketch, np.float64) * np.array([1.0 / self.factor, 1.0 / self.factor, 1.0])
        return strokes.to_polylines(s, (float(origin[0]), float(origin[1]))) if len(s) else []
