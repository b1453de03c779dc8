"""`sketchkit generate | reconstruct | interpolate | complete`: sampling from a model.

NAME is a zoo model name or a model directory (model.json + graphs). The graphs run in this
process with onnxruntime unless `--server URL` names a Triton server. Output: a PNG or SVG
(a grid by default, `--no-grid` for one file per sketch), or stroke-3 JSON with `--json`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from sketchkit.errors import DataError, SketchkitError

DEFAULT_MODEL = "sheep"
FORMATS = (".png", ".svg", ".json")


# ---------------------------------------------------------------------------------------------
# shared options


def sampling_options(tau: float) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options every sampling command takes; `tau` is the command's default temperature."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        options = [
            click.argument("name", default=DEFAULT_MODEL, required=False, metavar="[NAME]"),
            click.option("--tau", type=float, default=tau, show_default=True, help="Temperature in (0, 2] (paper Eq. 8)."),
            click.option("--seed", type=int, default=None, help="Seed: the same seed gives the same sketches."),
            click.option("--rule", default=None, metavar="eq8|js", help="Temperature rule [default: the model's]."),
            click.option("--start", default=None, metavar="paper|zeros|a,b,c,d,e",
                         help="First input S_0 [default: the model's start_token in model.json]."),
            click.option("--greedy", is_flag=True, help="Most likely point at every step (the tau -> 0 limit)."),
            click.option("--max-len", type=int, default=None, help="Stop after this many points [default: the model's N_max]."),
            click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
                         help="out.png | out.svg | out.json [default: <name>.png here (generate), <name>-<command>.png "
                              "for the others; <name>: NAME's last part]."),
            click.option("--json", "as_json", is_flag=True, help="Print the sketches as stroke-3 JSON."),
            click.option("--grid/--no-grid", default=True, show_default=True, help="One image of all sketches, or one file each."),
            click.option("--cols", type=int, default=None, help="Columns of the grid."),
            click.option("--server", default=None, metavar="URL", help="Sample through a Triton server (its <name>_generate; URL?step=1: the step loop here) instead of in process."),
        ]
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def data_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--rescale", default=None, metavar="auto|none|FACTOR",
                     help="Rescale input sketches: auto = make their offset std equal the model's scale_factor "
                          "[default: auto for .ndjson and .svg (0..255 units), none for .npz].")(f)
    f = click.option("--split", default="test", show_default=True, help="Split of an .npz file.")(f)
    f = click.option("--sketch", "sketch_files", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
                     help="A drawing of yours as an .svg file, instead of --data/--index (repeat for several).")(f)
    return click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        help="Input sketches: a sketch-rnn .npz or a QuickDraw .ndjson.")(f)


class Session:
    """A command's model, sampler and options, opened once from the shared options."""

    def __init__(self, name: str, server: str | None, tau: float, seed: int | None, rule: str | None,
                 greedy: bool, max_len: int | None, start: str | None = None) -> None:
        from sketchkit.hub import load
        from sketchkit.modelinfo import parse_start
        from sketchkit.sampling import Sampler, SamplingOptions

        self.options = SamplingOptions(tau=tau, temperature_rule=rule, greedy=greedy, max_len=max_len, seed=seed,
                                       start_token=None if start is None else parse_start(start))
        self.runtime = load(name, server)
        click.get_current_context().call_on_close(self.runtime.close)  # a Triton runtime ends its sequences
        self.info = self.runtime.info
        self.sampler = Sampler(self.runtime)
        self.seconds = 0.0  # time spent sampling (see `timed`)

    def timed(self, what: Callable[[], list[np.ndarray]]) -> list[np.ndarray]:
        start = time.perf_counter()
        out = what()
        self.seconds = time.perf_counter() - start
        return out


MAX_SKETCHES = 10_000  # per command: more is a job for a loop of commands, not one huge batch


def check_count(n: int, what: str) -> None:
    """How many sketches a command makes: at least one, at most MAX_SKETCHES."""
    if not 1 <= n <= MAX_SKETCHES:
        raise SketchkitError(f"{what} must be >= 1 and <= {MAX_SKETCHES}, got {n}")


def default_stem(typed: str, model_name: str, suffix: str = "") -> str:
    """The default output name, a flat file in this folder: the typed NAME (`owl` -> `owl.png`;
    `magenta/owl.gen` -> `owl.gen.png`), or the model's own name where NAME is a path (a model
    directory or a Magenta .json); only letters, digits, '_', '.' and '-'."""
    try:
        name = model_name if Path(typed).exists() else typed
    except OSError:  # a name too long to be a path
        name = typed
    last = re.split(r"[/\\]", name.strip().rstrip("/\\"))[-1]
    last = re.sub(r"\.json$", "", last, flags=re.IGNORECASE)
    last = re.sub(r"[^A-Za-z0-9_.-]+", "-", last).strip(".-")[:64] or "sketches"
    return last + suffix


def session_from(kwargs: dict[str, Any]) -> Session:
    """Check the output options (before any work), then open the model."""
    output, cols = kwargs["output"], kwargs["cols"]
    if output is not None and output.suffix.lower() not in FORMATS:
        raise SketchkitError(f"{output}: unknown output format (use {', '.join(FORMATS)})")
    if cols is not None and cols < 1:
        raise SketchkitError(f"--cols must be >= 1, got {cols}")
    keys = ("name", "server", "tau", "seed", "rule", "greedy", "max_len", "start")
    return Session(**{k: kwargs[k] for k in keys})


# ---------------------------------------------------------------------------------------------
# input sketches


class Inputs:
    """A command's input sketches, in the model's units, and what to call them in captions."""

    def __init__(self, sketches: list[np.ndarray], labels: list[str]) -> None:
        self.sketches, self.labels = sketches, labels


def load_inputs(data: Path | None, sketch_files: Sequence[Path], split: str, indices: Sequence[int],
                rescale: str | None, scale_factor: float) -> Inputs:
    """The input sketches of --data/--index or of --sketch FILE.svg (not both)."""
    if sketch_files:
        if data is not None:
            raise SketchkitError("give --data FILE --index I or --sketch FILE.svg, not both")
        from click.core import ParameterSource

        ctx = click.get_current_context()
        if any(ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE for k in ("indices", "index") if k in ctx.params):
            raise SketchkitError("--index picks from --data; with --sketch, the files are the sketches")
        from sketchkit import svg

        sketches = [np.asarray(svg.to_stroke3(p), np.float32) for p in sketch_files]
        return Inputs(_rescaled(sketches, sketches, rescale or "auto", scale_factor), [p.name for p in sketch_files])
    return Inputs(load_sketches(data, split, indices, rescale, scale_factor), [f"input {i}" for i in indices])


def load_sketches(path: Path | None, split: str, indices: Sequence[int], rescale: str | None,
                  scale_factor: float) -> list[np.ndarray]:
    """The sketches at `indices` of an .npz split or an .ndjson file, in the model's units."""
    from sketchkit import datasets

    if path is None:
        raise SketchkitError("this command needs input sketches: --data FILE.npz|FILE.ndjson --index I, "
                             "or --sketch FILE.svg")
    if path.suffix.lower() == ".svg":
        raise DataError(f"{path}: an SVG is one drawing: give it as --sketch {path}")
    if path.suffix == ".ndjson":
        drawings = datasets.read_ndjson(path)
        pool = list(range(min(len(drawings), 500)))  # enough drawings for a stable offset std
        _check_indices(indices, len(drawings), path)
        convert = {i: datasets.drawing_to_stroke3(drawings[i]) for i in sorted({*indices, *pool})}
        sketches = [convert[i] for i in indices]
        reference = [convert[i] for i in pool]
        rescale = rescale or "auto"
    elif path.suffix == ".npz":
        reference = datasets.load_npz(path).split(split)
        _check_indices(indices, len(reference), path)
        sketches = [reference[i] for i in indices]
        rescale = rescale or "none"
    else:
        raise DataError(f"{path}: expected a .npz or .ndjson file")
    sketches = [np.asarray(s, np.float32) for s in sketches]
    return _rescaled(sketches, reference, rescale, scale_factor)


def _rescaled(sketches: list[np.ndarray], reference: Sequence[np.ndarray], rescale: str, scale_factor: float) -> list[np.ndarray]:
    """`sketches` in the model's units: `auto` matches `reference`'s offset std to `scale_factor`."""
    from sketchkit.sampling import rescale as match_scale

    if rescale == "none":
        return sketches
    if rescale == "auto":
        _, factor = match_scale(reference, scale_factor)
    else:
        try:
            factor = float(rescale)
        except ValueError:
            raise SketchkitError(f"--rescale must be auto, none or a number, got {rescale!r}") from None
        if not 0 < factor < 1e30:  # inf (or a float32 overflow) would turn the sketch into NaN
            raise SketchkitError(f"--rescale factor must be a number in (0, 1e30), got {rescale}")
    click.echo(f"rescaled input sketches by x{factor:.3g} (model scale_factor {scale_factor:g})", err=True)
    return [s * np.array([factor, factor, 1], np.float32) for s in sketches]


def _check_indices(indices: Sequence[int], size: int, path: Path) -> None:
    for i in indices:
        if not 0 <= i < size:
            raise DataError(f"{path}: index {i} out of range (0..{size - 1})")


def first_strokes(s: np.ndarray, count: int | None) -> np.ndarray:
    """The first `count` strokes of a sketch (default: half of them, at least one)."""
    if count is not None and count < 1:
        raise SketchkitError(f"--strokes must be >= 1, got {count}")
    ends = np.flatnonzero(s[:, 2] > 0.5)
    if not len(ends) or ends[-1] != len(s) - 1:
        ends = np.append(ends, len(s) - 1)  # the last stroke ends with the sketch
    total = len(ends)
    count = max(1, total // 2) if count is None else count
    if count >= total:
        raise DataError(f"the sketch has {total} strokes: keep fewer than that to leave something to complete")
    return s[: ends[count - 1] + 1]


# ---------------------------------------------------------------------------------------------
# output


def write_output(
    sketches: list[np.ndarray], *, session: Session, stem: str, output: Path | None, as_json: bool,
    grid: bool, cols: int | None, captions: list[str] | None = None, given: list[int | None] | None = None,
    shown: list[np.ndarray] | None = None,
) -> None:
    """Print JSON and/or write the picture(s); one line on stderr says what was written. The grid
    shows `shown` (the sketches and the inputs around them) where given, with `captions` under each
    cell; `given[i]`: rows of cell i drawn by a person (black; the model's rows blue)."""
    json_file = output is not None and output.suffix.lower() == ".json"
    if as_json and not json_file:
        click.echo(_to_json(sketches, session))
        if output is None:
            return  # --json alone: the sketches go to stdout, no picture
    if json_file and output is not None:
        from sketchkit.io import atomic_write

        with atomic_write(output, "w") as f:
            f.write(_to_json(sketches, session) + "\n")
        _report(len(sketches), session, output)
        return
    from sketchkit import render

    path = output or Path(f"{stem}.png")
    if grid:
        cells = shown if shown is not None else sketches
        cols = cols or _default_cols(len(cells))
        render.save(path, render.grid_svg(cells, cols=cols, captions=captions, given=given))
        _report(len(sketches), session, path)
    else:
        width = len(str(len(sketches) - 1))
        for i, s in enumerate(sketches):
            mine = None if given is None or shown is not None else given[i]
            render.save(path.with_name(f"{path.stem}-{i:0{width}d}{path.suffix}"), render.to_svg(s, given=mine))
        _report(len(sketches), session, path.with_name(f"{path.stem}-*{path.suffix}"))


def _default_cols(n: int) -> int:
    return max(1, min(10, int(np.ceil(np.sqrt(n)))))


def _to_json(sketches: list[np.ndarray], session: Session) -> str:
    o = session.options
    doc = {
        "model": session.info.name,
        "scale_factor": session.info.scale_factor,
        "tau": None if o.greedy else o.tau,
        "temperature_rule": o.temperature_rule or session.info.temperature_rule,
        "seed": o.seed,
        "format": "stroke-3 (dx, dy, pen_lifted), pixels",
        "sketches": [np.round(s.astype(np.float64), 2).tolist() for s in sketches],
    }
    return json.dumps(doc)


def _report(n: int, session: Session, path: Path) -> None:
    rate = n / session.seconds if session.seconds > 0 else float("inf")
    click.echo(f"{n} sketches in {session.seconds:.2f} s ({rate:.0f}/s) -> {path}", err=True)


def output_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"output": kwargs["output"], "as_json": kwargs["as_json"], "grid": kwargs["grid"], "cols": kwargs["cols"]}


def _tau_caption(session: Session) -> str:
    return "greedy" if session.options.greedy else f"tau {session.options.tau:g}"


# ---------------------------------------------------------------------------------------------
# commands


@click.command()
@click.option("-n", "n", type=int, default=50, show_default=True, help="How many sketches.")
@sampling_options(tau=0.3)
def generate(n: int, **kwargs: Any) -> None:
    """Sample new sketches from model NAME (a zoo name or a model directory) [default: sheep].

    \b
    sketchkit generate sheep -n 50 --tau 0.3 -o sheep.png
    """
    check_count(n, "-n")
    s = session_from(kwargs)
    sketches = s.timed(lambda: s.sampler.generate(n, options=s.options))
    write_output(sketches, session=s, stem=default_stem(kwargs["name"], s.info.name), **output_args(kwargs))


@click.command()
@data_options
@click.option("--index", "indices", type=int, multiple=True, default=(0,), show_default=True,
              help="Sketch(es) to reconstruct; repeat for several.")
@click.option("-n", "n", type=int, default=4, show_default=True, help="Reconstructions per sketch.")
@sampling_options(tau=0.3)
def reconstruct(data: Path | None, sketch_files: tuple[Path, ...], split: str, rescale: str | None,
                indices: tuple[int, ...], n: int, **kwargs: Any) -> None:
    """Encode sketches and decode them again (vae models): one row per input, the input first."""
    check_count(n, "-n")
    check_count(n * max(len(indices), len(sketch_files)), "-n times the number of inputs")
    s = session_from(kwargs)
    inputs = load_inputs(data, sketch_files, split, indices, rescale, s.info.scale_factor)
    repeated = [x for x in inputs.sketches for _ in range(n)]
    outs = s.timed(lambda: s.sampler.reconstruct(repeated, s.options))
    sketches, captions = [], []
    for k, (label, x) in enumerate(zip(inputs.labels, inputs.sketches, strict=True)):
        sketches += [x, *outs[k * n : (k + 1) * n]]
        captions += [label] + [_tau_caption(s)] * n
    write_output(sketches, session=s, stem=default_stem(kwargs["name"], s.info.name, "-reconstruct"), captions=captions,
                 **dict(output_args(kwargs), cols=kwargs["cols"] or n + 1))


@click.command()
@data_options
@click.option("--index", "indices", type=int, multiple=True, default=(0, 1), show_default=True,
              help="Two sketches (a path) or four (the corners of a grid: top-left, top-right, bottom-left, bottom-right).")
@click.option("--corners", type=int, default=2, show_default=True,
              help="Without --data: 2 or 4 random latent vectors z ~ N(0, I).")
@click.option("--steps", type=int, default=10, show_default=True, help="Points along the path (or per side of the grid).")
@click.option("--method", default="slerp", show_default=True, metavar="slerp|lerp", help="Interpolation in latent space.")
@sampling_options(tau=0.1)
def interpolate(data: Path | None, sketch_files: tuple[Path, ...], split: str, rescale: str | None,
                indices: tuple[int, ...], corners: int, steps: int, method: str, **kwargs: Any) -> None:
    """Morph between two sketches in latent space, or fill the paper's 4-corner grid (vae models).
    The picture shows the input sketches beside the path (above and below the grid's corners) and
    t under every frame."""
    check_count(steps, "--steps")
    check_count(steps * steps, "--steps squared (a grid's size)")
    s = session_from(kwargs)
    inputs: Inputs | None = None
    if data is not None or sketch_files:
        count = len(sketch_files) or len(indices)
        if count not in (2, 4):
            what = "--sketch files" if sketch_files else "--index values"
            raise SketchkitError(f"give 2 or 4 {what}, got {count}")
        inputs = load_inputs(data, sketch_files, split, indices, rescale, s.info.scale_factor)
        ends: list[np.ndarray] = inputs.sketches
    else:
        if corners not in (2, 4):
            raise SketchkitError(f"--corners must be 2 or 4, got {corners}")
        if not s.info.dims.vae:
            raise SketchkitError(f"{s.info.name} is a decoder-only model: it has no latent space to interpolate")
        ends = list(np.random.default_rng(kwargs["seed"]).standard_normal((corners, s.info.dims.z_size)).astype(np.float32))
    ts = [f"{t:.2f}".rstrip("0").rstrip(".") if t else "0" for t in np.linspace(0.0, 1.0, steps)]
    if len(ends) == 4:
        sketches = s.timed(lambda: s.sampler.grid4(ends, steps, method, s.options))
        shown, captions = list(sketches), [f"x {tx}, y {ty}" for ty in ts for tx in ts]
        cols = steps
        if inputs is not None:  # each input above or below its corner
            blank, gap = np.zeros((0, 3), np.float32), [""] * max(0, steps - 2)
            top = [ends[0], *[blank] * (steps - 2), ends[1]] if steps > 1 else [ends[0]]
            bottom = [ends[2], *[blank] * (steps - 2), ends[3]] if steps > 1 else [ends[2]]
            labels = inputs.labels
            shown = top + shown + bottom
            captions = ([labels[0], *gap, labels[1]] if steps > 1 else [labels[0]]) + captions + (
                [labels[2], *gap, labels[3]] if steps > 1 else [labels[2]])
    else:
        sketches = s.timed(lambda: s.sampler.interpolate(ends[0], ends[1], steps, method, s.options))
        shown, captions = list(sketches), [f"t {t}" for t in ts]
        if inputs is not None:  # the two inputs at the ends of the path
            shown = [ends[0], *shown, ends[1]]
            captions = [inputs.labels[0], *captions, inputs.labels[1]]
        cols = kwargs["cols"] or min(len(shown), 12)
    write_output(sketches, session=s, stem=default_stem(kwargs["name"], s.info.name, "-interpolate"), captions=captions,
                 shown=shown, **dict(output_args(kwargs), cols=cols))


@click.command()
@data_options
@click.option("--index", type=int, default=0, show_default=True, help="The sketch to cut and complete.")
@click.option("--strokes", "keep_strokes", type=int, default=None, help="Keep its first K strokes [default: half].")
@click.option("-k", "k", type=int, default=8, show_default=True, help="How many endings.")
@sampling_options(tau=0.8)
def complete(data: Path | None, sketch_files: tuple[Path, ...], split: str, rescale: str | None, index: int,
             keep_strokes: int | None, k: int, **kwargs: Any) -> None:
    """Continue the beginning of a sketch k ways (paper §5.4); the partial sketch comes first.
    The given strokes are drawn black, the model's blue (as in the playground)."""
    check_count(k, "-k")
    if len(sketch_files) > 1:
        raise SketchkitError(f"complete takes one --sketch, got {len(sketch_files)}")
    s = session_from(kwargs)
    (sketch,) = load_inputs(data, sketch_files, split, [index], rescale, s.info.scale_factor).sketches
    partial = first_strokes(sketch, keep_strokes)
    endings = s.timed(lambda: s.sampler.complete(partial, k, s.options))
    captions = ["given"] + [_tau_caption(s)] * k
    write_output([partial, *endings], session=s, stem=default_stem(kwargs["name"], s.info.name, "-complete"), captions=captions,
                 given=[len(partial)] * (k + 1), **output_args(kwargs))

