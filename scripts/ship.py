"""Ship a trained run into the repository as one model directory: the client's ONNX graphs and
`model.json` (exported from the float16-rounded weights, so graphs and checkpoint agree),
`<name>.safetensors` (float16 weights with the config, scale factor, dataset hash, valid and test
metrics in its header), `samples.png` and `MODEL_CARD.md`, all written from the run directory so
that re-shipping a later checkpoint regenerates every number in the card.

    python scripts/ship.py runs/sheep zoo/models/sheep --name sheep --license "CC BY-NC 4.0" \\
        --data-note "..." --hardware "..."
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from sketchkit.export.onnx import export_model, model_info
from sketchkit.io import atomic_write
from sketchkit.modelinfo import ModelInfo
from sketchkit.runtimes.onnx import OnnxRuntime
from sketchkit.zoo.checkpoint import load, save
from sketchkit.zoo.data import load_data
from sketchkit.zoo.evaluate import evaluate
from sketchkit.zoo.quality import evaluate_samples
from sketchkit.zoo.train import sample, sketches_png

QUALITY_N = 1000  # drawings scored against as many real sketches (the test split first)


def _wall_minutes(run: Path, step: int) -> float | None:
    """Training wall time up to `step`, from metrics.jsonl (the first log interval extrapolated)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return None
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in recs if r["split"] == "train" and r["step"] <= step]
    if len(train) < 2:
        return None
    first, last = train[0], train[-1]
    per_step = (last["time"] - first["time"]) / (last["step"] - first["step"])
    return ((last["time"] - first["time"]) + first["step"] * per_step) / 60


def _quality(model_dir: Path, real: list[Any], tau: float, seed: int) -> dict[str, Any]:
    """The model's drawings scored against real sketches (C2ST AUC, FD; `sketchkit.zoo.quality`)."""
    q = evaluate_samples(OnnxRuntime(model_dir, threads=1), real, len(real), tau=tau, seed=seed)
    return {k: v for k, v in q.to_dict().items() if k != "seconds"}


def quality_line(q: dict[str, Any]) -> str:
    return (f"C2ST AUC {q['c2st_auc']:.3f} [{q['c2st_low']:.3f}, {q['c2st_high']:.3f}], FD {q['fd']:.2f}, "
            f"never ended {q['unfinished']:.1%} (n {q['n']}, tau {q['tau']:g})")  # fmt: skip


def ship(
    run: Path,
    out: Path,
    name: str,
    license: str,
    data_note: str,
    hardware: str,
    status: str = "",
    tau: float = 0.5,
    seed: int = 0,
    data: str | None = None,
    train: str = "",
) -> dict[str, Any]:
    model, hp, meta = load(run / "best.safetensors")
    if data:  # a run trained elsewhere (a GPU machine) names its dataset by that machine's path
        hp = dataclasses.replace(hp, dataset=[str(Path(data).resolve())])
    ds = load_data(hp, scale_factor=meta["scale_factor"])
    metrics = dict(meta.get("metrics", {}), test=evaluate(model, ds.test, hp))
    keep = {k: v for k, v in meta.items() if k not in ("format", "version", "hparams", "dims", "recipe", "init_tanh_z", "dtype", "metrics")}
    extra = {"license": license, "source": f"sketchkit zoo/recipes, run {run.name}", "name": name}
    weights = out / f"{name}.safetensors"
    rounded = run / f"{name}.float16.safetensors"  # the float16 round trip, before `out` is replaced
    save(rounded, model, hp, dict(keep, metrics=metrics, **extra), dtype=torch.float16)
    half, _, _ = load(rounded)
    metrics["test_float16"] = evaluate(half, ds.test, hp)
    real = [*ds.test, *ds.valid, *ds.train][:QUALITY_N]
    replaced = _quality(out, real, tau, seed) if (out / "model.json").is_file() else None
    # the graphs first: the export replaces the whole directory (atomically), then the rest joins it
    info = model_info(
        half,
        name,
        meta["scale_factor"],
        meta["max_seq_len"],
        source=extra["source"],
        license=license,
        metrics={"test": metrics["test_float16"], "step": meta["step"]},
    )
    export_model(half, info, out)
    metrics["quality"] = _quality(out, real, tau, seed)
    if replaced:
        metrics["quality_replaced"] = replaced
    shipped = ModelInfo.load(out)  # model.json carries the score too (`zoo info` shows it)
    dataclasses.replace(shipped, metrics={**shipped.metrics, "quality": metrics["quality"]}).save(out)
    save(weights, model, hp, dict(keep, metrics=metrics, **extra), dtype=torch.float16)
    gen = torch.Generator().manual_seed(seed)
    sketches_png(out / "samples.png", sample(half, 25, tau=tau, generator=gen), cols=5)
    card = model_card(
        name,
        hp.flat(),
        meta,
        metrics,
        license,
        data_note,
        hardware,
        _wall_minutes(run, meta["step"]),
        status,
        tau,
        seed,
        train,
    )
    with atomic_write(out / "MODEL_CARD.md", "w") as f:
        f.write(card)
    return metrics


def model_card(
    name: str,
    hp: dict[str, Any],
    meta: dict[str, Any],
    metrics: dict[str, Any],
    license: str,
    data_note: str,
    hardware: str,
    wall: float | None,
    status: str,
    tau: float,
    seed: int,
    train: str = "",
) -> str:
    t, h, v = metrics["test"], metrics["test_float16"], metrics.get("valid", {})
    kind = "VAE" if hp["kind"] == "vae" else "decoder-only"
    recipe = "\n".join(f"{k} = {json.dumps(val)}" for k, val in hp.items() if k not in ("dataset", "note"))
    wall_text = f"about {wall:.0f} minutes" if wall else "unknown"
    return f"""# {name}: sketch-rnn {kind}

A sketch-rnn model (Ha & Eck, 2017) trained with sketchkit's PyTorch implementation (`zoo/`).
Weights: `{name}.safetensors` (float16; the header holds the
config, `scale_factor` {meta["scale_factor"]:.4f}, `max_seq_len` {meta["max_seq_len"]}, the dataset
SHA-256 and the metrics below). Load it with `sketchkit.zoo.checkpoint.load`. The ONNX graphs and `model.json` beside
it were exported from these float16-rounded weights; they are what `sketchkit generate {name}` runs.
{
        f'''
**Status:** {status}
'''
        if status
        else ""
    }
## Data
{data_note}
Dataset file SHA-256: `{meta["dataset_sha256"]}`. Offsets clamped to +-{hp["offset_limit"]:g} px,
normalised by the scale factor (std of all train offsets, paper A.1).

## Model and recipe
{kind}; encoder: bidirectional LSTM {hp["enc_size"]} per direction; decoder: {hp["cell"]} {hp["dec_size"]};
N_z {hp["z_size"]}; M {hp["num_mixture"]} mixture components; N_max {hp["max_seq_len"]}.

Deviations from the paper's A.3 recipe, and why: {hp["note"] or "none"}.

```toml
{recipe}
```

## Training
{meta["step"]} steps (best validation loss, Eq. 14) of batch {hp["batch_size"]}; wall time {wall_text};
hardware: {hardware}.

## Test set (Eq. 9-14, {len(meta.get("classes", [])) or 1} class, z drawn from q(z|S) with a fixed seed)
| | L_R | L_s | L_p | L_KL raw | L_KL floored max(L_KL, {hp["kl_min"]}) | loss (Eq. 14) |
|---|---|---|---|---|---|---|
| float32 | {t["lr"]:.4f} | {t["ls"]:.4f} | {t["lp"]:.4f} | {t["kl"]:.4f} | {t["kl_floored"]:.4f} | {
        t["loss"]:.4f} |
| float16 (this file) | {h["lr"]:.4f} | {h["ls"]:.4f} | {h["lp"]:.4f} | {h["kl"]:.4f} | {
        h["kl_floored"]:.4f} | {h["loss"]:.4f} |

Validation at the same step: L_R {v.get("lr", float("nan")):.4f}, L_KL {v.get("kl", float("nan")):.4f}.
The paper's Table 1 (QuickDraw classes, HyperLSTM 2048, w_KL 1.0) reports the floored KL as
magenta's evaluation prints it: compare our floored column with it (different data, so as a
sanity check of scale, not class for class).

{quality_section(metrics)}
## Samples
![samples](samples.png)

25 sketches from z ~ N(0, I) at temperature tau = {tau} (Eq. 8), seed {seed}, from the float16 weights.

## Licence
Weights: {license} (they derive from the training data's licence). Code: Apache-2.0.

## Reproduce
```
{train or f"sketchkit train zoo/recipes/{name if name != 'sheep' else 'aaron_sheep'}.toml --out runs/{name} --threads 1"}
sketchkit evaluate runs/{name}/best.safetensors --split test
python scripts/ship.py runs/{name} zoo/models/{name} --name {name} --license "{license}"
```
"""


def quality_section(metrics: dict[str, Any]) -> str:
    """The card's sample-quality section (`sketchkit evaluate --samples`), where measured."""
    q = metrics.get("quality")
    if not q:
        return ""
    rows = "\n".join(f"| {k} | {v['generated']:.3f} | {v['real']:.3f} | {v['ks']:.3f} |" for k, v in q["stats"].items())
    return f"""
## Sample quality (issue 28: `sketchkit evaluate MODEL --samples`)
{q['n']} drawings at tau {q['tau']:g} against {q['n']} real sketches of the data set (test split first):
classifier two-sample test AUC {q['c2st_auc']:.3f} (95 % DeLong interval {q['c2st_low']:.3f}-{q['c2st_high']:.3f};
0.5 = indistinguishable from real, 1 = always told apart), Fréchet distance {q['fd']:.2f} in the
features of `zoo/features/sketchnet.safetensors`, {q['unfinished']:.1%} never ended (cut at N_max).

| statistic | generated (mean) | real (mean) | KS distance |
|---|---|---|---|
{rows}
"""


def main() -> None:
    ap = argparse.ArgumentParser(prog="python scripts/ship.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="run directory with best.safetensors and metrics.jsonl")
    ap.add_argument("out", type=Path, help="model directory, e.g. zoo/models/sheep")
    ap.add_argument("--name", required=True)
    ap.add_argument("--license", required=True)
    ap.add_argument("--data-note", default="")
    ap.add_argument("--hardware", default="CPU")
    ap.add_argument("--status", default="", help="a sentence on the state of the model, shown first")
    ap.add_argument("--tau", type=float, default=0.5)
    ap.add_argument("--data", help="the dataset .npz, where the run's own path is not on this machine")
    ap.add_argument("--train", default="", help="the training command the card's Reproduce section shows")
    args = ap.parse_args()
    metrics = ship(
        args.run, args.out, args.name, args.license, args.data_note, args.hardware, args.status, args.tau,
        data=args.data, train=args.train,
    )  # fmt: skip
    print(json.dumps({k: metrics[k] for k in ("test", "test_float16")}, indent=2))
    print(f"quality of {args.name}: {quality_line(metrics['quality'])}")
    if "quality_replaced" in metrics:
        print(f"  the model it replaces: {quality_line(metrics['quality_replaced'])}")


if __name__ == "__main__":
    main()
