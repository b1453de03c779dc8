"""Training (paper §3.4, A.2-A.3): Adam, gradient clipping, KL annealing, augmentation,
validation every `eval_every` steps with the un-annealed Eq. 14, best checkpoint kept, exact
resume after a kill or on another machine, and DistributedDataParallel ranks under torchrun.

A run directory holds
    best.safetensors   the best validation loss so far (weights + config + metrics)
    last.safetensors   the resume state: weights, Adam moments, every rank's RNG states (train.*
                       tensors), step; the data order is a function of the step (`make_batch`)
    recipe.toml        the Recipe of the run
    metrics.jsonl      one JSON line per log / validation
    loss.png           the loss curves, redrawn at each validation
    samples/           sketches drawn at each validation (z ~ N(0, I), tau = 0.5)
Pictures are written as .svg instead of .png (one warning) where cairosvg or the cairo library is
missing: training needs neither, nor platformdirs (a bare GPU machine has none of them).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sketchkit import strokes
from sketchkit.errors import SketchkitError
from sketchkit.io import atomic_write, remove_stale_temps
from sketchkit.zoo import checkpoint
from sketchkit.zoo.config import LIMITS, Recipe
from sketchkit.zoo.data import load_data
from sketchkit.zoo.evaluate import evaluate
from sketchkit.zoo.loss import kl_weight, train_loss
from sketchkit.zoo.model import SketchRNN

log = logging.getLogger(__name__)
# ---------------------------------------------------------------------------------------------
# data


def make_batch(
    sketches: Sequence[np.ndarray], hp: Recipe, step: int, rows: range | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training batch of `step` (or its `rows`: one rank's shard) with magenta's augmentation:
    scale each axis by U(1 - s, 1 + s) (paper A.3), then drop points in straight runs with
    augment_prob; and each row's VAE noise eps (Eq. 2). Returns (batch, lengths, eps (rows, N_z)).

    A pure function of (seed, step): the sketches are chosen by a generator seeded with
    (seed, step), and each row's randomness comes from one seeded with (seed, step, row). So a
    resumed run draws exactly what an uninterrupted one would (no sampler state to carry), and N
    ranks taking B/N rows each train on exactly the batch of one process."""
    rows = range(hp.batch_size) if rows is None else rows
    pick = np.random.default_rng([hp.seed, step, 0])  # [seed, step, 0] is [seed, step]: rows use 1
    idx = pick.choice(len(sketches), size=hp.batch_size, replace=len(sketches) < hp.batch_size)
    chosen, eps = [], np.zeros((len(rows), hp.dims.z_size), np.float32)
    for k, row in enumerate(rows):
        rng = np.random.default_rng([hp.seed, step, 1, row])
        eps[k] = rng.standard_normal(hp.dims.z_size)  # first: the same whatever the augmentation
        s = sketches[idx[row]]
        if hp.random_scale > 0:
            s = strokes.random_scale(s, rng, hp.random_scale)
        if hp.augment_prob > 0:
            s = strokes.drop_points(s, rng, hp.augment_prob)
        chosen.append(s)
    batch, lengths = strokes.to_batch(chosen, hp.max_seq_len)
    return batch, lengths, eps


# ---------------------------------------------------------------------------------------------
# sampling (for the pictures drawn during training; the client samples from ONNX graphs)


def sample(
    model: SketchRNN,
    n: int,
    tau: float = 0.5,
    z: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    max_seq_len: int = 250,
) -> list[np.ndarray]:
    """n normalised stroke-3 sketches from sketchkit's engine (the client's decode loop: S_0,
    Eq. 8 temperature, early stop) over the torch model; the seed is `generator`'s, z ~ N(0, I)
    for a VAE unless given."""
    from sketchkit.sampling import Sampler, SamplingOptions
    from sketchkit.zoo.runtime_torch import TorchRuntime

    model.eval()
    seed = None if generator is None else int(generator.initial_seed())
    options = SamplingOptions(tau=tau, temperature_rule="eq8", seed=seed)
    return Sampler(TorchRuntime(model, max_seq_len=max_seq_len)).generate(n, None if z is None else z.detach().cpu().numpy(), options)


# ---------------------------------------------------------------------------------------------
# pictures


_png_warned = False


def save_picture(path: Path, svg: str) -> Path:
    """Write `svg` as the PNG `path`, or beside it as .svg where PNG needs what is not installed
    (cairosvg, libcairo): one warning per process, and training goes on. Returns the file written."""
    global _png_warned
    from sketchkit import render

    try:
        render.save(path, svg)
        return path
    except SketchkitError as e:
        if path.suffix.lower() != ".png":
            raise
        if not _png_warned:
            log.warning("training pictures written as .svg: %s", e)
            _png_warned = True
    svg_path = path.with_suffix(".svg")
    render.save(svg_path, svg)
    return svg_path


def sketches_png(path: Path, sketches: Sequence[np.ndarray], cols: int = 4, cell: int = 160) -> Path:
    """A grid of stroke-3 sketches as one PNG (sketchkit.render; each sketch fitted to its cell)."""
    from sketchkit import render

    drawable = [s for s in sketches if len(s)] or [np.zeros((1, 3), np.float32)]
    return save_picture(path, render.grid_svg(drawable, cols=cols, cell=cell))


def loss_curve_png(path: Path, records: list[dict[str, Any]]) -> None:
    """Train and valid loss against step, as a PNG."""
    series = {
        "train loss": [(r["step"], r["loss"]) for r in records if r["split"] == "train"],
        "valid L_R": [(r["step"], r["lr"]) for r in records if r["split"] == "valid"],
        "valid L_KL": [(r["step"], r["kl"]) for r in records if r["split"] == "valid"],
    }
    pts = [p for s in series.values() for p in s]
    if len(pts) < 2:
        return
    W, Hh, pad = 640, 400, 50
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs) or 1, min(ys), max(ys)
    y1 = y1 if y1 > y0 else y0 + 1

    def sx(x: float) -> float:
        return pad + (x - x0) / max(x1 - x0, 1) * (W - 2 * pad)

    def sy(y: float) -> float:
        return Hh - pad - (y - y0) / (y1 - y0) * (Hh - 2 * pad)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{Hh}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<line x1="{pad}" y1="{Hh - pad}" x2="{W - pad}" y2="{Hh - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{Hh - pad}" stroke="black"/>',
        f'<text x="{pad}" y="{Hh - pad + 16}">{x0}</text><text x="{W - pad - 40}" y="{Hh - pad + 16}">step {x1}</text>',
        f'<text x="4" y="{pad}">{y1:.2f}</text><text x="4" y="{Hh - pad}">{y0:.2f}</text>',
    ]
    y_zero = sy(0.0)
    if pad < y_zero < Hh - pad:
        out.append(f'<line x1="{pad}" y1="{y_zero:.1f}" x2="{W - pad}" y2="{y_zero:.1f}" stroke="#ccc"/>')
    for (name, s), colour, k in zip(
        series.items(), ("#1f77b4", "#d62728", "#2ca02c"), range(3), strict=False
    ):
        if s:
            line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
            out.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
            if name.startswith("valid"):  # a dot per validation, so the first one shows too
                out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in s]
            out.append(f'<text x="{W - pad - 110}" y="{pad + 16 * k}" fill="{colour}">{name}</text>')
    out.append("</svg>")
    save_picture(path, "".join(out))


# ---------------------------------------------------------------------------------------------
# resume state


def _save_state(
    path: Path,
    model: SketchRNN,
    hp: Recipe,
    opt: torch.optim.Adam,
    rng_states: dict[str, torch.Tensor],
    meta: dict[str, Any],
) -> None:
    """Everything a resumed run needs to continue exactly: weights, Adam's moments and step, every
    rank's torch RNG states (recurrent dropout), the step (which fixes the data order, the LR and
    the KL schedules) and the best metrics so far."""
    tensors = dict(model.state_dict())
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if st:
                for k in ("step", "exp_avg", "exp_avg_sq"):
                    tensors[f"train.adam.{names[id(p)]}.{k}"] = torch.as_tensor(st[k]).float()
    tensors.update(rng_states)
    checkpoint.write_tensors(path, tensors, dict(meta, **checkpoint.recipe_meta(hp), dtype="float32"))


def _load_state(
    path: Path, model: SketchRNN, hp: Recipe, opt: torch.optim.Adam, dataset_sha256: str, rank: int, device: str
) -> dict[str, Any]:
    """Restore `_save_state`'s file. The dataset may have moved (another machine): it is compared by
    content, the other settings as they are (num_steps may grow)."""
    tensors, meta = checkpoint.read_tensors(path)
    try:
        recipe = checkpoint.recipe_of(meta)
    except (KeyError, TypeError) as e:
        raise SketchkitError(f"{path}: not a resume state (no usable recipe: {e})") from None
    same = dataclasses.replace(recipe, num_steps=1, dataset=[], quality_samples=0)
    if same != dataclasses.replace(hp, num_steps=1, dataset=[], quality_samples=0):
        raise SketchkitError(
            f"{path}: the run was started with other hyperparameters (start a new run directory)"
        )
    if meta.get("dataset_sha256") != dataset_sha256:
        raise SketchkitError(f"{path}: the run was started on other data (start a new run directory)")
    _check_state(path, tensors, meta, model)
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("train.")})
    for name, p in model.named_parameters():
        key = f"train.adam.{name}"
        if f"{key}.exp_avg" in tensors:
            dev = p.device
            opt.state[p] = {
                "step": tensors[f"{key}.step"].clone(),
                "exp_avg": tensors[f"{key}.exp_avg"].to(dev),
                "exp_avg_sq": tensors[f"{key}.exp_avg_sq"].to(dev),
            }
    suffix = "" if rank == 0 else f".rank{rank}"
    try:
        if f"train.rng.torch{suffix}" in tensors:
            torch.set_rng_state(tensors[f"train.rng.torch{suffix}"])
        else:  # a run saved by fewer ranks: this rank's dropout starts afresh
            torch.manual_seed(hp.seed + rank)
        if device.startswith("cuda") and f"train.rng.cuda{suffix}" in tensors:
            torch.cuda.set_rng_state(tensors[f"train.rng.cuda{suffix}"], device)
    except (RuntimeError, ValueError) as e:
        raise SketchkitError(f"{path}: not a resume state of this run (an RNG state torch refuses: "
                             f"{str(e).splitlines()[0]}); start a new run directory") from None  # fmt: skip
    return meta


_ADAM = ("step", "exp_avg", "exp_avg_sq")
_RNG = re.compile(r"train\.rng\.(torch|cuda)(\.rank[1-9][0-9]*)?")


def _check_state(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], model: SketchRNN) -> None:
    """A resume file can come from anywhere (a copied run directory): before anything is loaded,
    it must hold what `_save_state` writes and nothing else - the model's weights in their shapes,
    Adam's state per parameter in its shapes with a step count, RNG states, a step in
    [0, LIMITS["num_steps"]] and best metrics that are numbers. Anything else is one line (it
    was a traceback deep in Adam, or a run that silently did nothing)."""

    def refuse(why: str) -> SketchkitError:
        return SketchkitError(f"{path}: not a resume state of this run ({why}); start a new run directory")

    weights = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    params = {name: tuple(p.shape) for name, p in model.named_parameters()}
    adam: dict[str, set[str]] = {}
    for name, t in tensors.items():
        if name in weights:
            want = weights[name]
        elif name.startswith("train.adam.") and name.rpartition(".")[2] in _ADAM:
            param, _, part = name.removeprefix("train.adam.").rpartition(".")
            if param not in params:
                raise refuse(f"Adam state for {param!r}, which the model does not have")
            adam.setdefault(param, set()).add(part)
            want = () if part == "step" else params[param]
            if not bool(torch.isfinite(t).all()) or (part == "step" and not 0 <= float(t) <= LIMITS["num_steps"]):
                raise refuse(f"{name} is not a finite {'step count' if part == 'step' else 'moment'}")
        elif _RNG.fullmatch(name):
            if t.dtype != torch.uint8 or t.dim() != 1:
                raise refuse(f"{name} is not an RNG state ({t.dtype} {tuple(t.shape)})")
            continue
        else:
            raise refuse(f"unexpected tensor {name!r}")
        if tuple(t.shape) != want:
            raise refuse(f"{name} has shape {tuple(t.shape)}, the model needs {want}")
    missing = sorted(set(weights) - set(tensors))
    if missing:
        raise refuse(f"no {missing[0]!r}")
    partial = sorted(p for p, parts in adam.items() if parts != set(_ADAM))
    if partial:
        raise refuse(f"Adam state for {partial[0]!r} without all of {', '.join(_ADAM)}")
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= LIMITS["num_steps"]:
        raise refuse(f"step {step!r} is not a step count in [0, {LIMITS['num_steps']}]")
    best = meta.get("best")
    if not isinstance(best, dict) or "loss" not in best or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in best.values()
    ):
        raise refuse(f"best {best!r:.60} is not a table of numbers with a loss")


# ---------------------------------------------------------------------------------------------
# several processes (torchrun): DistributedDataParallel


def _start_ranks(device: str | None) -> tuple[int, int, str]:
    """(rank, world size, device). Under torchrun (RANK and WORLD_SIZE set) this joins the job:
    NCCL between GPUs (rank r on cuda:LOCAL_RANK), gloo between CPU processes. Otherwise (0, 1)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, device
    import torch.distributed as dist

    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _rng_states(world: int, device: str) -> dict[str, torch.Tensor]:
    """Every rank's torch RNG states as checkpoint tensors (train.rng.torch, .cuda for rank 0;
    .rank<r> appended for rank r). Under torchrun a collective: every rank calls it."""
    mine = {"torch": torch.get_rng_state()}
    if device.startswith("cuda"):
        mine["cuda"] = torch.cuda.get_rng_state(device)
    if world == 1:
        return {f"train.rng.{k}": v for k, v in mine.items()}
    import torch.distributed as dist

    out = {}
    for k, v in mine.items():
        v = v.to(device)  # NCCL gathers GPU tensors only
        parts = [torch.empty_like(v) for _ in range(world)]
        dist.all_gather(parts, v)
        out.update({f"train.rng.{k}" + (f".rank{r}" if r else ""): t.cpu() for r, t in enumerate(parts)})
    return out


def _mean_over_ranks(t: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of `t` over the ranks (every rank calls it); `t` itself in one process."""
    if world == 1:
        return t
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t)
    return t / world


# ---------------------------------------------------------------------------------------------
# the loop


def learning_rate(hp: Recipe, step: int) -> float:
    """Constant (paper), or magenta's decay (learning_rate - min) * decay^step + min."""
    if hp.learning_rate_decay >= 1.0:
        return hp.learning_rate
    return (hp.learning_rate - hp.min_learning_rate) * hp.learning_rate_decay**step + hp.min_learning_rate


def train(
    hp: Recipe,
    out_dir: str | os.PathLike[str],
    device: str | None = None,
    resume: bool = True,
    progress: bool = True,
    time_limit: float | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """Train until hp.num_steps, or until `time_limit` seconds have passed since this call began;
    resume from out_dir/last.safetensors if it exists. Returns the best validation metrics (rank 0;
    {} elsewhere). A time-limited run stops before a step that would end past the limit once its
    validation and save are counted (`_Budget`: measured step and validation times), validates and
    saves like a last step, and its progress bar counts seconds to the limit. `started`: the
    `time.perf_counter()` the limit counts from (the CLI's start, so torch's import counts too).

    Under torchrun each of the N ranks trains on its B/N rows of every batch (`make_batch`) and
    DistributedDataParallel averages the gradients, so N ranks take the steps of one process with
    the recipe's batch; rank 0 alone validates and writes the run directory. Ranks stop at the same
    step: the time limit is agreed on at each log line. A rank that dies stops the job with one
    line from each survivor."""
    started = time.perf_counter() if started is None else started
    rank, world, device = _start_ranks(device)
    main = rank == 0
    if main and not device.startswith("cuda") and re.search(r"\bGPU\b", hp.note):
        print(f"warning: a GPU recipe on {device} ({hp.note.split(':')[0]}): expect seconds per step, "
              "not milliseconds; zoo/recipes/aaron_sheep.toml is the CPU recipe", file=sys.stderr)
    out = Path(out_dir)
    if main:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        remove_stale_temps(
            out, ["best.safetensors", "last.safetensors", "metrics.jsonl", "recipe.toml"]
        )  # killed writes
    if hp.batch_size % world:
        raise SketchkitError(f"batch_size {hp.batch_size} does not split over {world} ranks")
    shard = range(rank * hp.batch_size // world, (rank + 1) * hp.batch_size // world)
    data = load_data(hp)
    torch.manual_seed(hp.seed)
    model = SketchRNN(hp.dims, hp.recurrent_keep_prob).to(device)
    if rank:
        torch.manual_seed(hp.seed + rank)  # each rank its own dropout masks
    opt = torch.optim.Adam(model.parameters(), lr=hp.learning_rate)
    step, best = 0, {"loss": math.inf}
    last = out / "last.safetensors"
    records: list[dict[str, Any]] = []
    if resume and last.exists():
        meta = _load_state(last, model, hp, opt, data.dataset_sha256, rank, device)
        step, best = int(meta["step"]), meta["best"]
        if main:
            records = [r for r in _read_jsonl(out / "metrics.jsonl") if r["step"] <= step]
            _write_jsonl(out / "metrics.jsonl", records)  # forget lines logged after the last save
    if main:
        hp.save_toml(out / "recipe.toml")
    net: torch.nn.Module = model
    if world > 1:  # the weights are broadcast from rank 0, gradients averaged in backward
        ids = [torch.device(device)] if device.startswith("cuda") else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        why = "torchrun stopped the job: another rank failed"
        signal.signal(signal.SIGTERM, lambda *_: _lost_rank(rank, world, step, last, why))
    base_meta = {
        "scale_factor": data.scale_factor,
        "max_seq_len": hp.max_seq_len,
        "dataset_sha256": data.dataset_sha256,
        "datasets": data.datasets,
        "classes": data.classes,
    }
    net.train()
    # loss, L_s, L_p, L_KL summed on the device between logs: a float() per step would wait for
    # the GPU every step
    window, n_window = torch.zeros(4, device=device), 0
    t_window = time.perf_counter()
    bar = _progress(hp.num_steps, step, progress and main, time_limit, time.perf_counter() - started)
    budget = None if time_limit is None else _Budget(started + time_limit, hp, world)
    stop = step >= hp.num_steps
    try:
        while not stop:
            rate = learning_rate(hp, step)
            for g in opt.param_groups:
                g["lr"] = rate  # torch's name
            batch, lengths, eps = (torch.from_numpy(a).to(device) for a in make_batch(data.train, hp, step, shard))
            losses = net(batch, lengths, eps=eps)
            # Eq. 15, with KL_min applied to the whole batch's L_KL (the mean of the ranks' shards)
            kl_batch = _mean_over_ranks(losses.kl.detach(), world)
            loss = train_loss(losses, step, hp.w_kl, hp.kl_min, hp.eta_min, hp.kl_decay, kl_batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_value_(model.parameters(), hp.grad_clip)
            opt.step()
            step += 1
            window += torch.stack([loss.detach(), losses.ls.detach(), losses.lp.detach(), losses.kl.detach()])
            n_window += 1
            if budget is None:
                bar.update(1)
                out_of_time = False
            else:
                bar.update(min(time.perf_counter() - started, bar.total) - bar.n)
                if main and budget.validation is None:  # after the first step: what validating will cost
                    t_probe = time.perf_counter()
                    budget.validation = _probe_validation(model, data, hp)
                    net.train()
                    budget.pause(time.perf_counter() - t_probe)
                out_of_time = budget.out_of_time(step)
            if world > 1:  # one answer for all ranks, at log lines only (a sync per step would stall the GPU)
                flag = torch.tensor([float(out_of_time)], device=device)
                out_of_time = step % hp.log_every == 0 and bool(_mean_over_ranks(flag, world) > 0)
            stop = step >= hp.num_steps or out_of_time
            if step % hp.log_every == 0 or stop:
                dt = time.perf_counter() - t_window
                window = _mean_over_ranks(window, world)
                means = dict(zip(("loss", "ls", "lp", "kl"), (window / n_window).tolist(), strict=True))
                rec = {
                    "split": "train",
                    "step": step,
                    **means,
                    "eta": kl_weight(step - 1, hp.eta_min, hp.kl_decay),
                    "learning_rate": rate,
                    "sketches_per_s": n_window * hp.batch_size / dt,
                    "time": time.time(),
                }
                if main:
                    records.append(rec)
                    _append_jsonl(out / "metrics.jsonl", rec)
                bar.set_postfix_str(f"step {step} L_s {means['ls']:.3f} L_p {means['lp']:.3f} L_KL {means['kl']:.3f}")
                window, n_window, t_window = torch.zeros(4, device=device), 0, time.perf_counter()
            if step % hp.eval_every == 0 or stop:
                t_validation = time.perf_counter()
                rng_states = _rng_states(world, device)  # every rank's: a collective
                if main:
                    best = _validate(model, data, hp, out, step, best, records, base_meta, bar)
                    _save_state(last, model, hp, opt, rng_states, dict(base_meta, step=step, best=best))
                    net.train()
                if budget is not None:
                    budget.validated(time.perf_counter() - t_validation)
                if out_of_time:
                    took = time.perf_counter() - started
                    bar.update(min(took, bar.total) - bar.n)
                    over = " (a step and a validation take longer than that here)" if took > (time_limit or 0) else ""
                    bar.write(f"time limit of {time_limit:g} s: stopped at step {step} after {took:.0f} s{over}")
    except RuntimeError as e:  # what a collective raises when a peer is gone (gloo: "Connection reset")
        if world > 1:
            # gloo: "[pair.cc:537] Read error [127.0.0.1]:1463: Connection reset by peer. This is ..."
            first = re.sub(r"^\[[^\]]*\] ", "", (str(e).strip().splitlines() or [type(e).__name__])[0])
            _lost_rank(rank, world, step, last, first.split(". ")[0][:200])
        raise
    bar.close()
    if world > 1:  # every rank here before any tears the group down (gloo aborted a rank that left early)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return best if main else {}


def _validate(
    model: SketchRNN,
    data: Any,
    hp: Recipe,
    out: Path,
    step: int,
    best: dict[str, Any],
    records: list[dict[str, Any]],
    base_meta: dict[str, Any],
    bar: Any,
) -> dict[str, Any]:
    """Validate, keep the best checkpoint, log, redraw the loss curve and draw samples (rank 0).
    Returns the best metrics so far."""
    metrics = evaluate(model, data.valid, hp, batch_size=hp.batch_size)
    is_best = metrics["loss"] < best["loss"]
    if is_best:
        best = dict(metrics, step=step)
        meta = dict(base_meta, step=step, metrics={"valid": metrics})
        checkpoint.save(out / "best.safetensors", model, hp, meta)
    rec = {"split": "valid", "step": step, **metrics, "best": is_best, "time": time.time()}
    if hp.quality_samples and len(data.valid) >= 8:  # the two-sample test needs 8 of each
        rec["quality"] = _quality(model, data.valid, hp)
    records.append(rec)
    _append_jsonl(out / "metrics.jsonl", rec)
    loss_curve_png(out / "loss.png", records)
    device = model.head.weight.device
    gen = torch.Generator(device=device).manual_seed(hp.seed + 1)
    drawn = sample(model, hp.num_samples, generator=gen, max_seq_len=hp.max_seq_len)
    sketches_png(out / "samples" / f"step_{step:07d}.png", drawn)
    q = rec.get("quality")
    scored = f" C2ST AUC {q['c2st_auc']:.3f} FD {q['fd']:.2f}" if q else ""
    bar.write(
        f"step {step}: valid loss {metrics['loss']:.4f} L_R {metrics['lr']:.4f} "
        f"L_KL {metrics['kl']:.4f}{scored}{' (best)' if is_best else ''}"
    )
    return best


def _quality(model: SketchRNN, valid: Sequence[np.ndarray], hp: Recipe) -> dict[str, Any]:
    """`quality_samples` drawings (tau 0.5, seeded) against as many valid sketches: C2ST AUC with
    its interval, FD and the fraction that never ended (`zoo.quality`)."""
    from sketchkit.zoo import quality

    gen = torch.Generator().manual_seed(hp.seed + 2)
    n = min(hp.quality_samples, len(valid))
    drawn = sample(model, n, tau=0.5, generator=gen, max_seq_len=hp.max_seq_len)
    with torch.random.fork_rng(devices=[]):  # the two-sample net seeds torch's CPU RNG: not the run's
        q = quality.compare(drawn, valid[:n], hp.seed)
    return {"tau": 0.5, "n": q.n, "c2st_auc": q.c2st_auc, "c2st_low": q.c2st_low, "c2st_high": q.c2st_high,
            "fd": q.fd, "unfinished": quality.unfinished(drawn, hp.max_seq_len), "seconds": q.seconds}  # fmt: skip


def _lost_rank(rank: int, world: int, step: int, last: Path, why: str) -> None:
    """A torchrun job that lost a rank: one line, and every rank stops (no hang in a collective)."""
    raise SketchkitError(
        f"rank {rank} of {world} stopped at step {step} ({why}); the same command resumes from {last}"
    )


class _Budget:
    """When a time-limited run stops: before a step that would end past the deadline with the
    final validation and save after it. Costs are measured: a step's is a running mean of the time
    between steps (validations excluded), a validation's the last one taken (before the first,
    `_probe_validation`'s estimate). Under torchrun the ranks agree only at log lines, so the next
    chance to stop is `log_every` steps away."""

    def __init__(self, deadline: float, hp: Recipe, world: int) -> None:
        self.deadline, self.hp, self.world = deadline, hp, world
        self.step_cost: float | None = None
        self.validation: float | None = None
        self._last = time.perf_counter()

    def out_of_time(self, step: int) -> bool:
        now = time.perf_counter()
        took, self._last = now - self._last, now
        self.step_cost = took if self.step_cost is None else 0.8 * self.step_cost + 0.2 * took
        horizon = 1 if self.world == 1 else self.hp.log_every
        validation = self.validation or 0.0
        due_now = validation if step % self.hp.eval_every == 0 else 0.0  # this step validates anyway
        return now + due_now + horizon * self.step_cost + validation > self.deadline

    def pause(self, seconds: float) -> None:
        """Time spent between steps on something else (the probe): not a step's cost."""
        self._last += seconds

    def validated(self, seconds: float) -> None:
        self.validation = 1.1 * seconds
        self._last = time.perf_counter()  # the validation is not a step's cost


def _probe_validation(model: SketchRNN, data: Any, hp: Recipe) -> float:
    """Seconds a validation and save will take, measured before the first one: one batch of
    `evaluate` times the valid set's batches, plus 16 steps of the sampler scaled to max_seq_len
    (an untrained model draws to the end), plus a margin for the pictures and the checkpoint.
    The torch RNG states are restored: the run trains as it would without a time limit."""
    cpu_rng = torch.get_rng_state()
    cuda = model.head.weight.device
    cuda_rng = torch.cuda.get_rng_state(cuda) if cuda.type == "cuda" else None
    t0 = time.perf_counter()
    evaluate(model, data.valid[: hp.batch_size], hp, batch_size=hp.batch_size)
    t1 = time.perf_counter()
    probe_len = min(16, hp.max_seq_len)
    sample(model, hp.num_samples, generator=torch.Generator(device=cuda).manual_seed(0), max_seq_len=probe_len)
    t2 = time.perf_counter()
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng, cuda)
    batches = math.ceil(len(data.valid) / hp.batch_size)
    return 1.1 * ((t1 - t0) * batches + (t2 - t1) * hp.max_seq_len / probe_len) + 0.5


def _progress(total: int, initial: int, enabled: bool, time_limit: float | None = None, elapsed: float = 0.0) -> Any:
    """The progress bar: steps against num_steps, or, under a time limit, seconds against it (the
    ETA is the time left, the step in the postfix)."""
    from tqdm import tqdm

    if time_limit is not None:
        return tqdm(
            total=time_limit, initial=min(elapsed, time_limit), disable=not enabled, file=sys.stderr,
            dynamic_ncols=True, unit="s",
            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]",
        )
    return tqdm(
        total=total, initial=initial, disable=not enabled, file=sys.stderr, dynamic_ncols=True, unit="step"
    )


def _append_jsonl(path: Path, rec: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by the kill
    return out


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with atomic_write(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
