"""`sketchkit playground`: draw in the browser and the model finishes it (needs the playground extra)."""

from __future__ import annotations

import click

from sketchkit.errors import SketchkitError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@click.command()
@click.option("--model", "models", multiple=True, default=("sheep",), show_default=True, metavar="NAME",
              help="A zoo name or model directory to offer first; repeat for several.")
@click.option("--server", default=None, metavar="URL", help="Sample through a Triton server instead of in process.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
def playground(models: tuple[str, ...], server: str | None, host: str, port: int) -> None:
    """Start a local web app: draw, and the model finishes it k ways; samples, morphs, SVG.

    \b
    sketchkit playground                      # http://127.0.0.1:8765, the shipped sheep first
    sketchkit playground --model owl --model out/cat
    sketchkit playground --model sheep --server grpc://127.0.0.1:8001
    """
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise SketchkitError("the playground needs its extra: pip install 'sketchkit[playground]'") from None
    from sketchkit.playground import Catalogue, create_app
    from sketchkit.playground.server import listen, serve, url_of

    sock = listen(host, port)  # a taken port fails before any model is opened
    catalogue = Catalogue(models, server)
    hosts = (*LOOPBACK, host) if host not in ("0.0.0.0", "::", "") else ("*",)
    click.echo(f"sketchkit playground on {url_of(sock)} (Ctrl-C to stop)", err=True)
    try:
        serve(create_app(catalogue, hosts), sock)
    finally:
        catalogue.close()
        sock.close()
