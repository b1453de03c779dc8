"""`sketchkit playground`: draw in the browser and the model finishes it (needs the playground extra)."""

from __future__ import annotations

import click

from sketchkit.errors import SketchkitError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def machine_names() -> list[str]:
    """This machine's host names and addresses (what a browser on the network puts in Host)."""
    import contextlib
    import socket

    names = {socket.gethostname(), socket.getfqdn()}
    for name in list(names):
        with contextlib.suppress(OSError):
            names |= {str(info[4][0]) for info in socket.getaddrinfo(name, None)}
    return sorted(n for n in names if n)


@click.command()
@click.option("--model", "models", multiple=True, default=("sheep",), show_default=True, metavar="NAME",
              help="A zoo name or model directory to offer first; repeat for several.")
@click.option("--server", default=None, metavar="URL", help="Sample through a Triton server instead of in process.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer requests for this Host name (a DNS name the machine is reached by).")
def playground(models: tuple[str, ...], server: str | None, host: str, port: int, allow_hosts: tuple[str, ...]) -> None:
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
    hosts = [*LOOPBACK, host, *allow_hosts]
    if host in ("0.0.0.0", "::", ""):  # every interface: this machine's names, never any Host
        hosts += machine_names()
        click.echo(
            f"warning: listening on every interface: anyone who can reach this machine can use the playground; "
            f"it answers Host {', '.join(sorted(set(hosts) - {host}))} (add names with --allow-host)", err=True,
        )  # fmt: skip
    click.echo(f"sketchkit playground on {url_of(sock)} (Ctrl-C to stop)", err=True)
    try:
        serve(create_app(catalogue, hosts), sock)
    finally:
        catalogue.close()
        sock.close()
