"""The temperature sweep picture: C2ST AUC (with its interval) and FD against tau on top, and
under it one row of generated sketches per tau, as SVG (`sketchkit.render` draws the rows and
writes PNG through cairosvg)."""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape

import numpy as np

from sketchkit import render

WIDTH, PLOT_H, ROW_H, LABEL_W = 880, 300, 110, 170


def _text(x: float, y: float, s: str, size: int = 13, anchor: str = "start", color: str = "#222") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-family="sans-serif" font-size="{size}" '
            f'text-anchor="{anchor}" fill="{color}">{escape(s)}</text>')  # fmt: skip


def sweep_svg(
    title: str, taus: Sequence[float], scores: Sequence[dict[str, float]], samples: Sequence[Sequence[np.ndarray]]
) -> str:
    """`scores[i]` has c2st_auc, c2st_low, c2st_high, fd for `taus[i]`; `samples[i]` the sketches of its row."""
    x0, x1, y0, y1 = 70.0, WIDTH - 70.0, 50.0, PLOT_H - 40.0
    n = len(taus)
    xs = [x0 + (x1 - x0) * (i + 0.5) / n for i in range(n)]

    def ya(v: float) -> float:  # AUC axis 0.4 .. 1.0
        return y1 - (min(max(v, 0.4), 1.0) - 0.4) / 0.6 * (y1 - y0)

    fd_max = max(max(s["fd"] for s in scores) * 1.1, 1e-9)

    def yf(v: float) -> float:
        return y1 - v / fd_max * (y1 - y0)

    parts = [_text(WIDTH / 2, 24, title, 16, "middle")]
    parts.append(f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="none" stroke="#999"/>')
    for v in (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        dash = ' stroke-dasharray="4 3"' if v == 0.5 else ""
        parts.append(f'<line x1="{x0}" x2="{x1}" y1="{ya(v):.1f}" y2="{ya(v):.1f}" stroke="#ddd"{dash}/>')
        parts.append(_text(x0 - 6, ya(v) + 4, f"{v:.1f}", 11, "end", "#1f5fa8"))
    for k in range(5):
        v = fd_max * k / 4
        parts.append(_text(x1 + 6, yf(v) + 4, f"{v:.2g}", 11, "start", "#c0392b"))
    parts.append(_text(x0 - 50, y0 - 12, "C2ST AUC (0.5 = like real)", 12, "start", "#1f5fa8"))
    parts.append(_text(x1 + 50, y0 - 12, "FD", 12, "end", "#c0392b"))
    auc_pts = " ".join(f"{x:.1f},{ya(s['c2st_auc']):.1f}" for x, s in zip(xs, scores, strict=True))
    fd_pts = " ".join(f"{x:.1f},{yf(s['fd']):.1f}" for x, s in zip(xs, scores, strict=True))
    parts.append(f'<polyline points="{auc_pts}" fill="none" stroke="#1f5fa8" stroke-width="2"/>')
    parts.append(f'<polyline points="{fd_pts}" fill="none" stroke="#c0392b" stroke-width="2" stroke-dasharray="6 4"/>')
    for x, t, s in zip(xs, taus, scores, strict=True):
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{ya(s["c2st_low"]):.1f}" y2="{ya(s["c2st_high"]):.1f}" stroke="#1f5fa8" stroke-width="2"/>')
        parts.append(f'<circle cx="{x:.1f}" cy="{ya(s["c2st_auc"]):.1f}" r="4" fill="#1f5fa8"/>')
        parts.append(f'<rect x="{x - 4:.1f}" y="{yf(s["fd"]) - 4:.1f}" width="8" height="8" fill="#c0392b"/>')
        parts.append(_text(x, y1 + 18, f"tau {t:g}", 12, "middle"))
    for i, (t, s, row) in enumerate(zip(taus, scores, samples, strict=True)):
        y = PLOT_H + i * ROW_H
        parts.append(_text(10, y + ROW_H / 2 - 6, f"tau {t:g}", 14))
        parts.append(_text(10, y + ROW_H / 2 + 12, f"AUC {s['c2st_auc']:.3f}  FD {s['fd']:.2f}", 11, "start", "#555"))
        if row:
            cols = len(row)
            cell = min(ROW_H - 10, (WIDTH - LABEL_W - 10) // cols)
            grid = render.grid_svg(list(row), cols=cols, cell=cell, background=None).replace("\n", "")
            parts.append(f'<g transform="translate({LABEL_W},{y + 5})">{grid}</g>')
    height = PLOT_H + len(taus) * ROW_H + 10
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">'
            f'<rect width="100%" height="100%" fill="white"/>{"".join(parts)}</svg>\n')  # fmt: skip
