"""`sketchkit data pull CLASS`: one class of QuickDraw's sketch-rnn .npz files, verified and cached."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("pull")
@click.argument("classes", nargs=-1, required=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory to write CLASS.npz into (default: the cache's data/).",
)
def pull(classes: tuple[str, ...], out: Path | None) -> None:
    """Download QuickDraw's sketch-rnn CLASS.npz (70000/2500/2500 sketches); prints its path.

    CLASS is a QuickDraw class name (`cat`, `palm tree` or `palm_tree`). The file is checked
    against the SHA-256 pinned on its first download (Google publishes none).
    """
    from sketchkit import hub

    for cls in classes:
        click.echo(hub.pull_data(cls, out))
