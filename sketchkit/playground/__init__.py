"""`sketchkit playground`: a local web app where you draw and the model finishes it.

Why these parts: Starlette (routing, static files, JSON responses) and uvicorn (the ASGI server)
are small, typed, well kept and pure Python with pure-Python dependencies (anyio, h11); FastAPI
would add pydantic for the handful of checks `validate` does in plain code, and Flask would need a
WSGI server beside it. The page is one HTML file, one stylesheet and one plain JavaScript file
served from this package: no build step, no CDN, so it works offline.

Modules, in the order a request flows: `validate` (parse and check a JSON body), `canvas` (canvas
pixels <-> the model's units), `catalogue` (which models the page offers, opened once each),
`app` (the routes), `server` (bind and run uvicorn). The tests and the latency benchmark drive the
page in headless Chromium with tests/browser.py (test tooling: not installed).
"""

from __future__ import annotations

from sketchkit.playground.app import create_app
from sketchkit.playground.catalogue import Catalogue

__all__ = ["Catalogue", "create_app"]
