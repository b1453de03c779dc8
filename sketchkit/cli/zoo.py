"""`sketchkit zoo`: list, inspect, download and remove pretrained models (default: list)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from sketchkit import hub as client
from sketchkit.dims import ModelDims
from sketchkit.errors import SketchkitError
from sketchkit.hub.cache import cached_files
from sketchkit.hub.table import did_you_mean
from sketchkit.io import cache_dir
from sketchkit.modelinfo import ModelInfo

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


UNKNOWN = "unknown until downloaded"


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 50_000 else f"{n / 1e3:.0f} kB"


def _size(name: str, row: dict) -> str:
    """The download size: the registry's, else what the cache holds of it, else unknown."""
    sizes = [f.get("size") for f in row["files"]] or [row.get("size")]
    if sizes and None not in sizes:
        return megabytes(sum(sizes))
    held = [p for p in cached_files(name) if not p.name.endswith(".part")]
    return megabytes(sum(p.stat().st_size for p in held)) if held else UNKNOWN


def _state(name: str, row: dict) -> str:
    local = client.is_cached(name)
    if row.get("shipped"):
        return "shipped" if local else "shipped, not exported"
    return "cached" if local else "-" if row["files"] else "unpublished"


def grouped(pattern: str | None, only: str | None, cached: bool) -> list[tuple[str, list[str]]]:
    """(heading, model names) in the order `zoo list` shows them: what is usable offline first
    (shipped and cached, any set), then each set's other models; names containing PATTERN
    (any case), of set `only`."""
    names = [
        n
        for n in client.available_models()
        if (not pattern or pattern.lower() in n.lower()) and (not only or client.model_set(n) == only)
    ]
    if pattern and not names:
        raise SketchkitError(f"no model name contains {pattern!r}{did_you_mean(pattern)}")
    local = [n for n in names if client.is_cached(n)]
    groups = [("shipped and cached: usable offline", local)]
    if not cached:
        for key, label in client.SETS.items():
            groups.append((f"{key}: {label}", [n for n in names if client.model_set(n) == key and n not in local]))
    return [(heading, group) for heading, group in groups if group]


@zoo.command("list")
@click.argument("pattern", required=False)
@click.option("--set", "only", type=click.Choice(list(client.SETS)), help="Only the models of one set.")
@click.option("--cached", is_flag=True, help="Only models usable offline.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model.")
def list_models(pattern: str | None, only: str | None, cached: bool, as_json: bool) -> None:
    """Models in the registry, usable offline first, then by set; PATTERN keeps the names that
    contain it (`sketchkit zoo list owl`)."""
    rows = client.registry()["models"]
    groups = grouped(pattern, only, cached)
    if as_json:
        for _, names in groups:
            for name in names:
                row = rows[name]
                click.echo(json.dumps({"name": name, "state": _state(name, row), "set": client.model_set(name), **row}))
        return
    header = ("NAME", "KIND", "CELL/H", "SIZE", "STATE", "LICENCE")
    table = {
        name: (
            name,
            rows[name]["dims"].get("kind") or "?",
            f"{rows[name]['dims'].get('cell') or '?'} {rows[name]['dims'].get('dec_size') or '?'}",
            _size(name, rows[name]),
            _state(name, rows[name]),
            (rows[name]["license"] or "?").split(" (")[0],
        )
        for _, names in groups
        for name in names
    }
    widths = [max(len(r[i]) for r in [header, *table.values()]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    click.echo(line(header))
    for heading, names in groups:
        click.echo(f"\n# {heading} ({len(names)})")
        for name in names:
            click.echo(line(table[name]))
    n_local = sum(client.is_cached(name) for name in table)
    click.echo(f"{len(table)} models, {n_local} local; cache: {cache_dir()}", err=True)


def metric_lines(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """{"test": {"loss": 0.16554...}, "step": 4878} -> [("test loss", "0.1655"), ("step", "4878")]:
    four decimals, so that right-aligned values line up at the point."""
    out = []
    for key, value in metrics.items():
        if key == "quality" and isinstance(value, dict) and "c2st_auc" in value:  # issue 28, beside L_R
            out.append((f"{prefix}{key}", (
                f"C2ST AUC {value['c2st_auc']:.3f} [{value.get('c2st_low', 0):.3f}, {value.get('c2st_high', 1):.3f}], "
                f"FD {value.get('fd', float('nan')):.2f} (n {value.get('n')}, tau {value.get('tau')})")))  # fmt: skip
        elif isinstance(value, dict):
            out += metric_lines(value, f"{prefix}{key} ")
        elif isinstance(value, float):
            out.append((f"{prefix}{key}", f"{value:.4f}"))
        else:
            out.append((f"{prefix}{key}", str(value)))
    return out


@zoo.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def info(name: str, as_json: bool) -> None:
    """What the registry knows about NAME, where it is cached and how each file is verified."""
    row = client.info(name)
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    known: dict[str, Any] = {**row["dims"], "max_seq_len": row.get("max_seq_len"), "scale_factor": row.get("scale_factor")}
    if row["cached"]:  # what the registry leaves open, the model itself says
        model = ModelInfo.load(Path(row["path"]))
        found = {**dataclasses.asdict(model.dims), "max_seq_len": model.max_seq_len, "scale_factor": model.scale_factor}
        known = {k: found.get(k) if v is None else v for k, v in {**found, **known}.items()}
    fields: list[tuple[str, str]] = [("name", row["name"]), ("set", client.model_set(row["name"]))]
    for key in (*DIM_FIELDS, "max_seq_len", "scale_factor"):  # every dimension, known or not
        value = known.get(key)
        fields.append((key, UNKNOWN if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)))
    for key in ("format", "origin", "license", "dataset"):
        fields.append((key, "?" if row.get(key) is None else str(row[key])))
    size = _size(row["name"], row)
    fields.append(("size", size))
    if row.get("shipped"):
        fields.append(("shipped", "yes"))
    fields.append(("cached", f"{'yes' if row['cached'] else 'no'} ({row['path']})"))
    width = max(len(k) for k, _ in fields) + 1
    for key, value in fields:
        click.echo(f"{key + ':':<{width}} {value}")
    metrics = metric_lines(row.get("metrics") or {})
    if metrics:
        click.echo("metrics:")
        mw = max(len(k) for k, _ in metrics) + 1
        numbers = [v for _, v in metrics if " " not in v]  # the numbers line up at the point; prose (quality) does not
        vw = max((len(v) for v in numbers), default=0)
        for key, value in metrics:
            click.echo(f"  {key + ':':<{mw}} {value:>{vw}}" if " " not in value else f"  {key + ':':<{mw}} {value}")
    for f in row["files"]:
        click.echo(f"file: {f['url']} ({UNKNOWN if f['size'] is None else megabytes(f['size'])})")
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
    click.echo(f"cache ok: {cache_dir()}", err=True)


@zoo.command("path")
@click.argument("name", required=False)
def path(name: str | None) -> None:
    """The cache directory, or the directory of a local model (never downloads)."""
    if name is None:
        click.echo(cache_dir())
        return
    local = next((c for c in client.candidates(name) if client.is_cached(c)), None)
    if local is None:
        raise SketchkitError(f"{name} is not cached; run `sketchkit zoo pull {name}`")
    click.echo(client.model_dir(local))
