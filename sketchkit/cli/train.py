"""`sketchkit train` and `sketchkit evaluate`: the torch-backed commands. `zoo` (and torch) are
imported inside the commands only, so the rest of the CLI never pays for them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from sketchkit.errors import SketchkitError, needs_torch


def _need_torch(what: str) -> None:
    try:
        import safetensors  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise needs_torch(what, "train") from None


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string, e.g. cell=lstm


@click.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory (default: runs/<recipe name>).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a hyperparameter, e.g. --set dec_size=256 --set cell=lstm (repeatable).",
)
@click.option(
    "--data",
    "data",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Dataset .npz (repeatable: multi-class); replaces the recipe's.",
)
@click.option("--steps", type=int, help="Train until this many steps.")
@click.option(
    "--time-limit",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Be done within this much wall time: stop before a step that would pass it, counting the "
    "validation and save that end the run (measured as it goes); the bar then shows the time left.",
)
@click.option(
    "--quality-samples",
    type=int,
    metavar="N",
    help="At each validation, score N drawings against N valid sketches (C2ST AUC, FD; off by default).",
)
@click.option("--device", help="cpu, cuda, cuda:1 (default: cuda when present).")
@click.option("--threads", type=int, help="CPU threads for torch.")
@click.option("--fresh", is_flag=True, help="Do not resume from RUN/last.safetensors.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(
    recipe: Path | None,
    out_dir: Path | None,
    overrides: tuple[str, ...],
    data: tuple[str, ...],
    steps: int | None,
    time_limit: float | None,
    quality_samples: int | None,
    device: str | None,
    threads: int | None,
    fresh: bool,
    quiet: bool,
) -> None:
    """Train a sketch-rnn model from a RECIPE.toml (or from flags alone); resumes a killed run
    exactly. Under `torchrun --nproc-per-node=N -m sketchkit train ...` N ranks share each batch."""
    started = time.perf_counter()  # --time-limit counts from here: importing torch is part of the run
    _need_torch("train")
    import torch

    from sketchkit.zoo.config import Recipe
    from sketchkit.zoo.train import train as run

    hp = Recipe.from_toml(recipe) if recipe else Recipe()
    d = hp.flat()  # --set dec_size=256 sets a dimension like any other setting
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SketchkitError(f"--set expects KEY=VALUE, got {item!r}")
        d[key.strip()] = _parse_value(value.strip())
    if data:
        d["dataset"] = [str(Path(p).resolve()) for p in data]
    if steps is not None:
        d["num_steps"] = steps
    if quality_samples is not None:
        d["quality_samples"] = quality_samples
    hp = Recipe.from_dict(dict(d, version=1))  # flat, and the version 1 names (lr=...) still work
    if threads:
        torch.set_num_threads(threads)
    out = out_dir or Path("runs") / (recipe.stem if recipe else "run")
    best = run(hp, out, device=device, resume=not fresh, progress=not quiet, time_limit=time_limit,
               started=started)
    if not best:  # a torchrun rank other than 0: rank 0 reports
        return
    click.echo(
        f"best valid loss {best.get('loss', float('nan')):.4f} at step {best.get('step')}; "
        f"checkpoint {out / 'best.safetensors'}"
    )


@click.command()
@click.argument("model", metavar="CHECKPOINT|MODEL")
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="test", show_default=True)
@click.option(
    "--data",
    "data",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Dataset .npz (default: the checkpoint's own recipe); with --samples: the real sketches (.npz or .ndjson).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--samples", is_flag=True, help="Score MODEL's own drawings against real ones (C2ST AUC, FD, statistics).")
@click.option("-n", "n", type=int, default=2000, show_default=True, help="--samples: sketches of each kind.")
@click.option("--tau", default="0.5", show_default=True, metavar="T[,T...]", help="--samples: temperature(s); several draw a sweep.")
@click.option("--seed", type=int, default=0, show_default=True, help="--samples: the same seed gives the same numbers.")
@click.option("--start", default=None, metavar="paper|zeros|a,b,c,d,e", help="--samples: first input S_0 [default: the model's].")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="--samples: the sweep picture (score against tau, samples under each tau), .png or .svg.")  # fmt: skip
def evaluate(
    model: str, split: str, data: tuple[str, ...], as_json: bool, samples: bool, n: int, tau: str, seed: int,
    start: str | None, output: Path | None,
) -> None:  # fmt: skip
    """Report L_R and L_KL of a CHECKPOINT on a split, as in the paper's Table 1; with --samples,
    how real MODEL's (a zoo name or model directory) drawings are against --data."""
    _need_torch("evaluate")
    if samples:
        from sketchkit.cli.quality import evaluate_samples

        evaluate_samples(model, data, n, tau, seed, start, output, as_json)
        return
    from sketchkit.zoo.evaluate import evaluate_checkpoint

    checkpoint = Path(model)
    if not checkpoint.is_file():
        raise SketchkitError(f"{model}: no such checkpoint (to score a model's drawings: --samples --data REAL)")
    m = evaluate_checkpoint(str(checkpoint), split, [str(Path(p).resolve()) for p in data] or None)
    if as_json:
        click.echo(json.dumps(m, indent=2))
        return
    click.echo(f"{checkpoint} ({split}, {m['n']} sketches, step {m['step']})")
    click.echo(f"  L_R  {m['lr']:.4f}   (L_s {m['ls']:.4f} + L_p {m['lp']:.4f})")
    click.echo(
        f"  L_KL {m['kl']:.4f} raw   {m['kl_floored']:.4f} floored max(L_KL, KL_min) (magenta's evaluation prints the floored one: compare it with Table 1)"
    )
    click.echo(f"  loss {m['loss']:.4f}   (Eq. 14: L_R + w_KL L_KL, raw KL)")
