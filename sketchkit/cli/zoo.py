"""`sketchkit zoo`: list, inspect, download and remove pretrained models (default: list)."""

from __future__ import annotations

import dataclasses
import json

import click

from sketchkit import hub as client
from sketchkit.dims import ModelDims
from sketchkit.errors import SketchkitError

DIM_FIELDS = tuple(f.name for f in dataclasses.fields(ModelDims))


@click.group(invoke_without_command=True)
@click.pass_context
def zoo(ctx: click.Context) -> None:
    """List, download and manage pretrained models.

    NAME is a class (`owl`: ours, else Magenta's vae, else its gen) or an exact model
    (`magenta/owl.gen`, `magenta/owl.vae`; `magenta-large/...` for H = 1024). Cache:
    SKETCHKIT_CACHE; air-gapped sites: SKETCHKIT_ZOO_MIRROR=URL serves every file as URL/<name>.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_models)


def _size(row: dict) -> str:
    sizes = [f.get("size") for f in row["files"]] or [row.get("size")]
    if not sizes or None in sizes:
        return "?"
    return f"{sum(sizes) / 1e6:.1f} MB"


@zoo.command("list")
@click.argument("pattern", required=False)
@click.option("--cached", is_flag=True, help="Only models usable offline.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model.")
def list_models(pattern: str | None, cached: bool, as_json: bool) -> None:
    """Models in the registry (those whose name contains PATTERN) and whether each is cached."""
    rows = []
    for name in client.available_models():
        if pattern and pattern not in name:
            continue
        row = client.registry()["models"][name]
        local = client.is_cached(name)
        if cached and not local:
            continue
        if row.get("shipped"):
            state = "shipped" if local else "shipped, not exported"
        else:
            state = "cached" if local else "-" if row["files"] else "unpublished"
        rows.append((name, row, state))
    if as_json:
        for name, row, state in rows:
            click.echo(json.dumps({"name": name, "state": state, **row}))
        return
    table = [("NAME", "KIND", "CELL/H", "SIZE", "STATE", "LICENCE")]
    for name, row, state in rows:
        table.append(
            (
                name,
                row["dims"].get("kind", "?"),
                f"{row['dims'].get('cell', '?')} {row['dims'].get('dec_size', '?')}",
                _size(row),
                state,
                (row["license"] or "?").split(" (")[0],
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    n_local = sum(client.is_cached(name) for name, _, _ in rows)
    click.echo(f"{len(rows)} models, {n_local} local; cache: {client.cache_dir()}", err=True)


@zoo.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def info(name: str, as_json: bool) -> None:
    """What the registry knows about NAME, where it is cached and how each file is verified."""
    row = client.info(name)
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    click.echo(f"name: {row['name']}")
    for key in DIM_FIELDS:  # every dimension, known or not (the dataclass's fields, in order)
        click.echo(f"{key}: {'?' if row['dims'].get(key) is None else row['dims'][key]}")
    for key in (
        "max_seq_len",
        "scale_factor",
        "format",
        "origin",
        "license",
        "dataset",
    ):
        click.echo(f"{key}: {'?' if row.get(key) is None else row[key]}")
    for key, value in row["metrics"].items():
        if key == "quality" and isinstance(value, dict) and "c2st_auc" in value:  # issue 28, beside L_R
            value = (f"C2ST AUC {value['c2st_auc']:.3f} [{value.get('c2st_low', 0):.3f}, {value.get('c2st_high', 1):.3f}], "
                     f"FD {value.get('fd', float('nan')):.2f} (n {value.get('n')}, tau {value.get('tau')})")  # fmt: skip
        click.echo(f"metric {key}: {value}")
    if row.get("shipped"):
        click.echo("shipped: yes")
    click.echo(f"cached: {'yes' if row['cached'] else 'no'} ({row['path']})")
    for f in row["files"]:
        click.echo(f"file: {f['url']} ({'?' if f['size'] is None else f['size']} bytes)")
        if f["verified_by"] == "registry":
            click.echo(f"  sha256: {f['sha256']}")
        elif f["verified_by"] == "pinned":
            click.echo(f"  sha256: unknown upstream, pinned on first download {f['sha256']}")
        else:
            click.echo("  sha256: unknown upstream, not pinned yet (pinned on first download)")
    if row.get("notes"):
        click.echo(f"notes: {row['notes']}")


@zoo.command("pull")
@click.argument("names", nargs=-1, required=True)
def pull(names: tuple[str, ...]) -> None:
    """Download (and convert) models now; prints each model's directory."""
    for name in names:
        click.echo(client.pull(name))


@zoo.command("rm")
@click.argument("name")
def rm(name: str) -> None:
    """Delete a cached model, its downloads (whole or partial) and their pins."""
    for path in client.remove(name):
        click.echo(f"removed {path}", err=True)


@zoo.command("verify")
def verify() -> None:
    """Re-check the cache: each cached model loads, each download matches its SHA-256."""
    report = client.verify()
    for name, problem in report.items():
        click.echo(f"{name}: {problem or 'ok'}")
    problems = [f"{name}: {problem}" for name, problem in report.items() if problem]
    if problems:
        raise SketchkitError(
            f"{len(problems)} cached model(s) failed: {'; '.join(problems)} (`sketchkit zoo rm NAME` clears one)"
        )
    click.echo(f"cache ok: {client.cache_dir()}", err=True)


@zoo.command("path")
@click.argument("name", required=False)
def path(name: str | None) -> None:
    """The cache directory, or the directory of a local model (never downloads)."""
    if name is None:
        click.echo(client.cache_dir())
        return
    local = next((c for c in client.candidates(name) if client.is_cached(c)), None)
    if local is None:
        raise SketchkitError(f"{name} is not cached; run `sketchkit zoo pull {name}`")
    click.echo(client.model_dir(local))
