"""The playground's routes: the page, and a small JSON API over `Sampler`.

    GET  /                 the page (static/index.html; static/ holds its script and style)
    GET  /api/models       the model picker: [{name, group, set, kind, license, open}], sets, default
    POST /api/model        {model} -> its card (opens it; downloads it on first use)
    POST /api/complete     {model, drawing, k, tau, seed} -> k endings of the drawing
    POST /api/generate     {model, n, tau, seed} -> n fresh sketches
    POST /api/reconstruct  {model, drawing, n, tau, seed} -> n decodings of the drawing's z (vae)
    POST /api/morph        {model, a, b, steps, tau, seed} -> the slerp path from a to b (vae)

Sketches come back as polylines in canvas pixels (`canvas.Canvas`); a completion starts with
the drawn prefix, point for point. Errors are `{"error": "one line"}` with a 4xx status (5xx
only for a download that failed or a bug); the server goes on either way.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sketchkit.errors import SketchkitError
from sketchkit.playground import validate
from sketchkit.playground.canvas import Canvas
from sketchkit.playground.catalogue import Catalogue
from sketchkit.playground.validate import RequestError
from sketchkit.sampling import Sampler, SamplingOptions

STATIC = Path(__file__).parent / "static"
DRAIN_BYTES = 64 << 20  # read (and drop) an oversized body up to here, so the client sees the 413
log = logging.getLogger("sketchkit.playground")

Work = Callable[[Catalogue, dict[str, Any]], dict[str, Any]]


# ---- requests in, JSON out ---------------------------------------------------------------------
async def _read_json(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise RequestError("send JSON with Content-Type: application/json", 415)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= validate.MAX_BODY_BYTES:
            chunks.append(chunk)
        elif size > DRAIN_BYTES:
            break
    if size > validate.MAX_BODY_BYTES:
        raise RequestError(
            f"the request is {size / 1e6:.1f} MB, over the limit of {validate.MAX_BODY_BYTES / 1e6:.1f} MB "
            f"(a drawing has at most {validate.MAX_POINTS} points)", 413,
        )
    return validate.parse_body(b"".join(chunks))


def _error(status: int, message: object) -> JSONResponse:
    return JSONResponse({"error": validate.one_line(message)}, status_code=status)


def api(work: Work) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint: parse the body, run `work` off the event loop, answer JSON or one line."""

    async def endpoint(request: Request) -> Response:
        try:
            doc = await _read_json(request) if request.method == "POST" else {}
            return JSONResponse(await run_in_threadpool(work, request.app.state.catalogue, doc))
        except RequestError as e:
            return _error(e.status, e)
        except SketchkitError as e:  # the sampler refused what it was given
            return _error(422, e)
        except Exception as e:  # a bug: say so in one line, log the trace, keep serving
            log.exception("playground request failed")
            return _error(500, f"internal error ({type(e).__name__}: {e})")

    return endpoint


def _sketches(canvas: Canvas, sketches: Sequence[np.ndarray], origin: Sequence[float] = (0.0, 0.0)) -> list:
    """Stroke-3 sketches in model pixels -> JSON polylines in canvas pixels."""
    return [[np.round(line, 2).tolist() for line in canvas.to_canvas(s, origin)] for s in sketches]


def _options(doc: dict[str, Any], tau: float = 0.5) -> SamplingOptions:
    """tau and seed; a request without a seed gets a fresh one, returned so it can be replayed."""
    seed = validate.seed(doc)
    return SamplingOptions(tau=validate.temperature(doc, tau), seed=secrets.randbelow(2**31) if seed is None else seed)


def _reply(name: str, options: SamplingOptions, sketches: list, started: float, **extra: Any) -> dict[str, Any]:
    return {"model": name, "tau": options.tau, "seed": options.seed, "sketches": sketches,
            "sample_ms": round((time.perf_counter() - started) * 1e3, 1), **extra}


def _model_input(sampler: Sampler, drawing: validate.Drawing) -> tuple[Canvas, list[np.ndarray], np.ndarray]:
    """(canvas, simplified polylines, stroke-3 in model pixels) of a drawing, checked for length."""
    canvas = Canvas(drawing.size, sampler.info.scale_factor)
    lines = canvas.simplify(drawing.lines)
    sketch = canvas.to_model(lines)
    most = sampler.info.max_seq_len - 1
    if len(sketch) > most:
        raise RequestError(
            f"the drawing has {len(sketch)} points after simplification and {sampler.info.name} reads at most "
            f"{most}: clear a few strokes", 422,
        )
    return canvas, lines, sketch


def _need_vae(sampler: Sampler, name: str, what: str) -> None:
    if not sampler.info.dims.vae:
        raise RequestError(f"{name} is a decoder-only model: {what} needs a vae model (one with an encoder)", 422)


# ---- the API -----------------------------------------------------------------------------------
def models(catalogue: Catalogue, doc: dict[str, Any]) -> dict[str, Any]:
    listing = catalogue.listing()
    default = listing[0]["name"] if listing else None
    return {"models": listing, "sets": catalogue.sets, "default": default, "server": catalogue.server}


def model(catalogue: Catalogue, doc: dict[str, Any]) -> dict[str, Any]:
    name = validate.name(doc)
    with catalogue.lock(name):
        return catalogue.describe(name)


def complete(catalogue: Catalogue, doc: dict[str, Any]) -> dict[str, Any]:
    name, drawing = validate.name(doc), validate.drawing(doc)
    k, options = validate.count(doc, "k", 8), _options(doc)
    with catalogue.lock(name):
        sampler = catalogue.sampler(name)
        canvas, lines, partial = _model_input(sampler, drawing)
        started = time.perf_counter()
        endings = sampler.complete(partial, k, options)
    return _reply(name, options, _sketches(canvas, endings, lines[0][0]), started, drawn=len(lines))


def generate(catalogue: Catalogue, doc: dict[str, Any]) -> dict[str, Any]:
    name, n, options = validate.name(doc), validate.count(doc, "n", 8), _options(doc)
    with catalogue.lock(name):
        sampler = catalogue.sampler(name)
        started = time.perf_counter()
        sketches = sampler.generate(n, options=options)
    return _reply(name, options, _sketches(Canvas(400, sampler.info.scale_factor), sketches), started)


def reconstruct(catalogue: Catalogue, doc: dict[str, Any]) -> dict[str, Any]:
    name, drawing = validate.name(doc), validate.drawing(doc)
    n, options = validate.count(doc, "n", 8), _options(doc)
    with catalogue.lock(name):
        sampler = catalogue.sampler(name)
        _need_vae(sampler, name, "reconstruction")
        canvas, _, sketch = _model_input(sampler, drawing)
        started = time.perf_counter()
        mu, _ = sampler.encode([sketch])
        sketches = sampler.decode(np.repeat(mu, n, axis=0), options)
    return _reply(name, options, _sketches(canvas, sketches), started)


def morph(catalogue: Catalogue, doc: dict[str, Any]) -> dict[str, Any]:
    name, a, b = validate.name(doc), validate.drawing(doc, "a"), validate.drawing(doc, "b")
    steps, options = validate.count(doc, "steps", 8, 2), _options(doc)
    with catalogue.lock(name):
        sampler = catalogue.sampler(name)
        _need_vae(sampler, name, "morphing")
        canvas, _, start = _model_input(sampler, a)
        _, _, end = _model_input(sampler, b)
        started = time.perf_counter()
        sketches = sampler.interpolate(start, end, steps, "slerp", options)
    return _reply(name, options, _sketches(canvas, sketches), started)


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


def host_name(header: str) -> str:
    """The host of a Host header, without its port: `[::1]:8765` -> `::1`, `Localhost:80` -> `localhost`;
    "" for anything else (`127.0.0.1:evil`, `a:1:2`): only a port of digits may follow the host."""
    header = header.strip().lower()
    if header.startswith("["):  # an IPv6 literal
        address, _, rest = header[1:].partition("]")
    else:
        address, colon, port = header.partition(":")
        rest = colon + port
    return address if rest == "" or rest[0] == ":" and rest[1:].isascii() and rest[1:].isdigit() else ""


class HostCheck:
    """Answer only requests whose Host header names this server (`hosts`): a web page elsewhere
    cannot reach a local server through a DNS name it controls (DNS rebinding). Unlike
    Starlette's TrustedHostMiddleware, it reads IPv6 literals (`[::1]:8765`)."""

    def __init__(self, app: Any, hosts: Sequence[str]) -> None:
        self.app = app
        self.hosts = {host_name(h) if h.startswith("[") else h.lower() for h in hosts}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_name(header) not in self.hosts:
                await PlainTextResponse("Invalid host header", status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(catalogue: Catalogue, hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> Starlette:
    """The ASGI app. `hosts`: the Host headers it answers (a web page elsewhere cannot reach a
    local server through a DNS name it controls)."""
    routes = [
        Route("/", index),
        Route("/api/models", api(models), methods=["GET"]),
        *(Route(f"/api/{w.__name__}", api(w), methods=["POST"]) for w in (model, complete, generate, reconstruct, morph)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(HostCheck, hosts=list(hosts))])
    app.state.catalogue = catalogue
    return app
