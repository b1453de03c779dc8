"""`sketchkit render FILE -o out.png`: a grid of sketches from a dataset, as SVG or PNG."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from sketchkit import datasets
from sketchkit.errors import DataError
from sketchkit.render import get_writer, grid_svg, save


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--split",
    type=click.Choice(datasets.SPLITS),
    default="test",
    show_default=True,
    help="Split of an .npz (an .ndjson has none).",
)
@click.option(
    "-n",
    "count",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Draw the first N sketches (unless indices are given).",
)
@click.option(
    "--index", "index", type=click.IntRange(min=0), multiple=True, help="Draw this sketch (repeatable)."
)
@click.option("--indices", help="Draw these sketches, comma-separated: 0,5,9.")
@click.option("--cols", type=click.IntRange(min=1), help="Columns of the grid [default: square].")
@click.option(
    "--size", type=click.IntRange(min=16), default=128, show_default=True, help="Cell size in pixels."
)
@click.option("--color-by-stroke", is_flag=True, help="Colour strokes by drawing order (dark to light).")
@click.option("--captions", is_flag=True, help="Write each sketch's index (and class) below it.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output file: .png or .svg.",
)
def render(
    file: Path,
    split: str,
    count: int,
    index: tuple[int, ...],
    indices: str | None,
    cols: int | None,
    size: int,
    color_by_stroke: bool,
    captions: bool,
    output: Path,
) -> None:
    """Draw sketches of FILE (.npz or QuickDraw .ndjson) in a grid."""
    get_writer(output)  # an unknown extension fails before any loading
    sketches, names = _load(file, split)
    picked = list(index) + _parse_indices(indices)
    if not picked:
        picked = list(range(min(count, len(sketches))))
    if not picked:
        raise DataError(f"{file}: the {split} split is empty")
    for i in picked:
        if i >= len(sketches):
            raise DataError(f"index {i} is out of range: {file} has {len(sketches)} sketches there")
    labels = [f"{i} {names[i]}".strip() for i in picked] if captions else None
    svg = grid_svg(
        [sketches[i] for i in picked], cols=cols, cell=size, captions=labels, color_by_stroke=color_by_stroke
    )
    save(output, svg)
    click.echo(f"wrote {output} ({len(picked)} sketches)", err=True)


def _load(file: Path, split: str) -> tuple[list[np.ndarray], list[str]]:
    """The sketches to choose from and their class names ('' when unknown)."""
    ext = file.suffix.lower()
    if ext == ".ndjson":
        sketches, names = [], []
        for d in datasets.read_ndjson(file):
            try:
                sketches.append(datasets.drawing_to_stroke3(d))
            except DataError:
                sketches.append(np.zeros((0, 3)))  # a single point: an empty cell keeps the numbering
            names.append(d.word)
        return sketches, names
    if ext != ".npz":
        raise DataError(f"{file}: unknown dataset extension {ext or '(none)'!r} (supported: .ndjson, .npz)")
    ds = datasets.load_npz(file)
    sketches = ds.split(split)
    if ds.classes:
        return sketches, [ds.classes[label] for label in ds.labels[split]]
    return sketches, [""] * len(sketches)


def _parse_indices(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        out = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DataError(f"--indices: expected comma-separated integers like 0,5,9, got {text!r}") from None
    if any(i < 0 for i in out):
        raise DataError(f"--indices: indices start at 0, got {text!r}")
    return out
