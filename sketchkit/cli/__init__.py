"""The `sketchkit` command. Each command's module is imported only when that command runs, so
`sketchkit --help` and the sampling commands never pay for torch, tritonclient or cairosvg."""

from __future__ import annotations

import importlib
import sys

import click

from sketchkit._version import __version__
from sketchkit.errors import SketchkitError, printable

# command name -> "module:attribute"; one module per noun, read top-down like the docs
COMMANDS = {
    "generate": "sketchkit.cli.sample:generate",
    "reconstruct": "sketchkit.cli.sample:reconstruct",
    "interpolate": "sketchkit.cli.sample:interpolate",
    "complete": "sketchkit.cli.sample:complete",
    "render": "sketchkit.cli.render:render",
    "data": "sketchkit.cli.data:data",
    "zoo": "sketchkit.cli.zoo:zoo",
    "train": "sketchkit.cli.train:train",
    "evaluate": "sketchkit.cli.train:evaluate",
    "export": "sketchkit.cli.export:export",
    "import-magenta": "sketchkit.cli.export:import_magenta",
    "serve": "sketchkit.cli.serve:serve",
    "playground": "sketchkit.cli.playground:playground",
}

HELP = {
    "generate": "Sample new sketches from a model.",
    "reconstruct": "Encode sketches and decode them again.",
    "interpolate": "Morph between two sketches in latent space.",
    "complete": "Continue a partial sketch, several ways.",
    "render": "Draw sketches from a dataset as SVG or PNG.",
    "data": "Convert and inspect sketch datasets.",
    "zoo": "List, download and manage pretrained models.",
    "train": "Train a sketch-rnn model (needs the train extra).",
    "evaluate": "Report test losses of a checkpoint (needs the train extra).",
    "export": "Export a checkpoint to ONNX graphs (needs the export extra).",
    "import-magenta": "Convert a Magenta sketch-rnn-js JSON model to ONNX graphs.",
    "serve": "Build and run a Triton model repository.",
    "playground": "Draw in the browser and the model finishes it (needs the playground extra).",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # list commands without importing them (keeps `--help` fast)
        with formatter.section("Commands"):
            formatter.write_dl([(name, HELP[name]) for name in COMMANDS])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sketchkit")
def cli() -> None:
    """Generative vector sketches with sketch-rnn."""


# what people type for an option we spell otherwise; click suggests by spelling alone (`--temp`: `--help`)
SYNONYMS = {"--temp": "--tau", "--temperature": "--tau", "-t": "--tau"}


def suggest_synonym(e: click.exceptions.NoSuchOption) -> click.exceptions.NoSuchOption:
    """Suggest our name for an option typed under another name, where the command has it."""
    target = SYNONYMS.get(e.option_name)
    if target and e.ctx and any(target in p.opts for p in e.ctx.command.params):
        message = f"No such option {e.option_name!r}. Did you mean {target!r}?"  # as click words its own
        return click.exceptions.NoSuchOption(e.option_name, message, ctx=e.ctx)
    return e


def main(argv: list[str] | None = None) -> None:
    """Entry point: expected failures print one line and exit 1; Ctrl-C exits 130."""
    try:
        rv = cli.main(args=argv, standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except SketchkitError as e:
        click.echo(f"error: {printable(str(e))}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.exceptions.NoSuchOption as e:
        suggest_synonym(e).show()
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.exit(1)
    except OSError as e:  # a read-only cache, a full disk, a name too long for the file system
        where = f": {e.filename}" if e.filename else ""
        click.echo(printable(f"error: {e.strerror or e}{where}"[:1000].replace("\n", " ")), err=True)
        sys.exit(1)
