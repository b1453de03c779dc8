"""`sketchkit export` and `sketchkit import-magenta`: a checkpoint or a Magenta sketch-rnn-js JSON
model -> OUT_DIR with the step-wise ONNX graphs and model.json.

`export` traces our PyTorch model and checks the graphs against it (the export extra: torch).
`import-magenta` builds the graphs from the JSON's weights with numpy and onnx (no torch); only
`--drawings` and `--checkpoint` run the PyTorch importer. Heavy modules load only when a command runs.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import click

from sketchkit.errors import SketchkitError, needs_torch, printable
from sketchkit.modelinfo import ModelInfo


def _load(module: str, what: str = "export") -> ModuleType:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise needs_torch(what, "export") from None
    return importlib.import_module(module)


def _say(line: str) -> None:
    click.echo(line, err=True)


def _report(info: ModelInfo, out_dir: Path, diffs: dict[str, float] | None = None) -> None:
    check = f"onnxruntime vs PyTorch: max diff {max(diffs.values()):.1e} (|a - b| / (1 + |b|))" if diffs else "built with onnx"
    click.echo(printable(
        f"{info.name}: {info.dims.kind}, {info.dims.cell} H={info.dims.dec_size}, {info.precision} -> {out_dir} ({check})"
    ))  # fmt: skip


fp16_option = click.option(
    "--fp16", is_flag=True, help="float16 weights and arithmetic (inputs and outputs stay float32)."
)
name_option = click.option("--name", default=None, help="Model name in model.json [default: from the input].")


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@fp16_option
@name_option
def export(checkpoint: Path, out_dir: Path, fp16: bool, name: str | None) -> None:
    """Export CHECKPOINT (.safetensors) to OUT_DIR: ONNX graphs + model.json, verified."""
    onnx_export = _load("sketchkit.export.onnx")
    info, diffs = onnx_export.export_checkpoint(checkpoint, out_dir, fp16=fp16, name=name, progress=_say)
    _report(info, out_dir, diffs)


@click.command("import-magenta")
@click.argument("model_json", metavar="FILE.json", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--drawings",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="QuickDraw .ndjson of the class: keep the start token under which they are more likely (needs torch).",
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also save the weights as a sketchkit checkpoint (.safetensors; needs torch).",
)
@click.option(
    "--start",
    default=None,
    metavar="zeros|paper|a,b,c,d,e",
    help="The start token written into model.json [default: zeros, the better by CAS recall and never-ending fraction; benchmarks/RESULTS.md].",
)
@fp16_option
@name_option
def import_magenta(
    model_json: Path,
    out_dir: Path,
    drawings: Path | None,
    checkpoint: Path | None,
    start: str | None,
    fp16: bool,
    name: str | None,
) -> None:
    """Convert a Magenta sketch-rnn-js model (FILE.json, gen or vae) to OUT_DIR."""
    if start is not None:
        if drawings is not None or checkpoint is not None:
            raise SketchkitError("--start goes without --drawings/--checkpoint (--drawings chooses the start token by L_R)")
        from sketchkit.magenta_onnx import import_magenta as build
        from sketchkit.modelinfo import parse_start

        _report(build(model_json, out_dir, name=name, fp16=fp16, progress=_say, start_token=parse_start(start)), out_dir)
        return
    if drawings is None and checkpoint is None:
        from sketchkit.magenta_onnx import import_magenta as build

        _report(build(model_json, out_dir, name=name, fp16=fp16, progress=_say), out_dir)
        return
    magenta = _load("sketchkit.export.magenta", "import-magenta --drawings/--checkpoint")
    info, diffs = magenta.import_magenta(
        model_json, out_dir, name=name, drawings=drawings, fp16=fp16, checkpoint=checkpoint, progress=_say
    )
    _report(info, out_dir, diffs)
