"""`sketchkit data convert | info`: QuickDraw .ndjson or SVG drawings to sketch-rnn .npz, and what a
dataset holds."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from sketchkit import datasets, strokes
from sketchkit.errors import DataError


@click.group()
def data() -> None:
    """Convert and inspect sketch datasets (.npz, .ndjson)."""


@data.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--epsilon", type=click.FloatRange(min=0), default=2.0, show_default=True, help="RDP tolerance in pixels."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the train/valid/test shuffle.")
def convert(inputs: tuple[Path, ...], output: Path, epsilon: float, seed: int) -> None:
    """Convert QuickDraw INPUTS (.ndjson, simplified or raw) or your own drawings (.svg, one
    drawing per file) into a sketch-rnn OUTPUT .npz.

    Several .ndjson inputs make a multi-class dataset: each sketch keeps its class label. SVG
    drawings make one class; each is scaled, resampled and simplified as a raw QuickDraw drawing
    (longer side 255, RDP --epsilon), its strokes in document order. Splits are 90/5/5 per class
    after a seeded shuffle.

    \b
    sketchkit data convert drawings/*.svg mine.npz
    """
    if output.suffix.lower() != ".npz":
        raise DataError(f"{output}: the output must be a .npz file")
    for path in inputs:
        if not path.is_file():
            raise DataError(f"{path}: no such file")
    kinds = {p.suffix.lower() == ".svg" for p in inputs}
    if kinds == {True, False}:
        raise DataError("give either .ndjson files or .svg drawings, not both (convert them apart)")
    if kinds == {True}:
        _convert_svgs(inputs, output, epsilon, seed)
        return
    total = sum(_count_lines(p) for p in inputs)
    with click.progressbar(length=total, label="converting", file=sys.stderr) as bar:
        ds = datasets.ndjson_to_dataset(inputs, epsilon=epsilon, seed=seed, progress=bar.update)
    datasets.save_npz(output, ds)
    counts = "/".join(str(len(ds.split(k))) for k in datasets.SPLITS)
    kept = sum(len(ds.split(k)) for k in datasets.SPLITS)
    classes = f", classes: {', '.join(ds.classes)}" if ds.classes else ""
    click.echo(
        f"wrote {output}: train/valid/test {counts}{classes} ({total - kept} empty drawings skipped)",
        err=True,
    )


def _convert_svgs(inputs: tuple[Path, ...], output: Path, epsilon: float, seed: int) -> None:
    from sketchkit import svg

    with click.progressbar(inputs, label="converting", file=sys.stderr) as bar:
        sketches = [svg.to_stroke3(p, epsilon) for p in bar]
    ds = datasets.shuffle_split(sketches, np.random.default_rng(seed))
    datasets.save_npz(output, ds)
    counts = "/".join(str(len(ds.split(k))) for k in datasets.SPLITS)
    click.echo(f"wrote {output}: train/valid/test {counts} ({len(inputs)} SVG drawings)", err=True)


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in datasets.ndjson_lines(f, path) if line.strip())


@data.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(file: Path, as_json: bool) -> None:
    """Counts per split, lengths, the scale factor of train, and classes of FILE (.npz or .ndjson)."""
    summary = summarize(file)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{file} ({summary['format']})")
    click.echo(f"  {'split':<6} {'count':>7} {'len min':>8} {'mean':>7} {'max':>5}")
    for name, s in summary["splits"].items():
        if s["count"]:
            click.echo(
                f"  {name:<6} {s['count']:>7} {s['len_min']:>8} {s['len_mean']:>7.1f} {s['len_max']:>5}"
            )
        else:
            click.echo(f"  {name:<6} {0:>7}")
    if summary["scale_factor"] is not None:
        click.echo(f"  scale factor ({summary['scale_split']}): {summary['scale_factor']:.4f}")
    if summary["classes"]:
        click.echo("  classes: " + ", ".join(f"{c} ({n})" for c, n in summary["classes"].items()))


def summarize(path: Path) -> dict[str, Any]:
    """What `data info` prints, as a dict."""
    ext = path.suffix.lower()
    if ext == ".npz":
        ds = datasets.load_npz(path)
        splits = {k: ds.split(k) for k in datasets.SPLITS}
        classes = {}
        if ds.classes:
            counts = np.bincount(
                np.concatenate([ds.labels[k] for k in datasets.SPLITS]), minlength=len(ds.classes)
            )
            classes = {c: int(n) for c, n in zip(ds.classes, counts, strict=True)}
        fmt, scale_split = "sketch-rnn npz", "train"
    elif ext == ".ndjson":
        drawings = datasets.read_ndjson(path)
        sketches = []
        for d in drawings:
            with contextlib.suppress(DataError):  # a drawing of a single point has no stroke-3 form
                sketches.append(datasets.drawing_to_stroke3(d))
        splits = {"all": sketches}
        words = [d.word for d in drawings if d.word]
        classes = {w: words.count(w) for w in dict.fromkeys(words)}
        fmt = "QuickDraw ndjson, " + ("raw" if any(d.raw for d in drawings) else "simplified")
        scale_split = "all"
    else:
        raise DataError(f"{path}: unknown dataset extension {ext or '(none)'!r} (supported: .ndjson, .npz)")
    scale_set = splits[scale_split]
    return {
        "file": str(path),
        "format": fmt,
        "splits": {name: _lengths(s) for name, s in splits.items()},
        "scale_split": scale_split,
        "scale_factor": strokes.scale_factor(scale_set) if scale_set else None,
        "classes": classes,
    }


def _lengths(split: list[np.ndarray]) -> dict[str, Any]:
    if not split:
        return {"count": 0, "len_min": None, "len_mean": None, "len_max": None}
    n = np.array([len(s) for s in split])
    return {"count": len(n), "len_min": int(n.min()), "len_mean": float(n.mean()), "len_max": int(n.max())}


# Subcommands that live in their own modules join the group here, one line each.
from sketchkit.cli.data_pull import pull  # noqa: E402  (the zoo's `data pull`)

data.add_command(pull)
