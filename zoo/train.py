"""Training (paper §3.4, A.2-A.3): Adam, gradient clipping, KL annealing, augmentation,
validation every `eval_every` steps with the un-annealed Eq. 14, best checkpoint kept, exact
resume after a kill.

A run directory holds
    best.safetensors   the best validation loss so far (weights + config + metrics)
    last.safetensors   the resume state: weights, Adam moments, RNG states, step (train.* tensors)
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
from sketchkit.zoo.config import Recipe
from sketchkit.zoo.data import load_data
from sketchkit.zoo.evaluate import evaluate
from sketchkit.zoo.loss import kl_weight, train_loss
from sketchkit.zoo.model import SketchRNN

log = logging.getLogger(__name__)
# ---------------------------------------------------------------------------------------------
# data


def make_batch(
    sketches: Sequence[np.ndarray], hp: Recipe, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random training batch with magenta's augmentation: scale each axis by
    U(1 - s, 1 + s) (paper A.3), then drop points in straight runs with augment_prob."""
    idx = rng.choice(len(sketches), size=hp.batch_size, replace=len(sketches) < hp.batch_size)
    chosen = []
    for i in idx:
        s = sketches[i]
        if hp.random_scale > 0:
            s = strokes.random_scale(s, rng, hp.random_scale)
        if hp.augment_prob > 0:
            s = strokes.drop_points(s, rng, hp.augment_prob)
        chosen.append(s)
    return strokes.to_batch(chosen, hp.max_seq_len)


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
    path: Path, model: SketchRNN, hp: Recipe, opt: torch.optim.Adam, rng: np.random.Generator, meta: dict[str, Any]
) -> None:
    tensors = dict(model.state_dict())
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if st:
                for k in ("step", "exp_avg", "exp_avg_sq"):
                    tensors[f"train.adam.{names[id(p)]}.{k}"] = torch.as_tensor(st[k]).float()
    tensors["train.rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["train.rng.cuda"] = torch.cuda.get_rng_state()
    meta = dict(meta, numpy_rng=rng.bit_generator.state)
    checkpoint.write_tensors(path, tensors, dict(meta, **checkpoint.recipe_meta(hp), dtype="float32"))


def _load_state(
    path: Path, model: SketchRNN, hp: Recipe, opt: torch.optim.Adam
) -> tuple[dict[str, Any], np.random.Generator]:
    tensors, meta = checkpoint.read_tensors(path)
    if dataclasses.replace(checkpoint.recipe_of(meta), num_steps=1) != dataclasses.replace(hp, num_steps=1):
        raise SketchkitError(
            f"{path}: the run was started with other hyperparameters (start a new run directory)"
        )
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
    torch.set_rng_state(tensors["train.rng.torch"])
    if torch.cuda.is_available() and "train.rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["train.rng.cuda"])
    rng = np.random.default_rng()
    rng.bit_generator.state = meta["numpy_rng"]
    return meta, rng


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
) -> dict[str, Any]:
    """Train until hp.num_steps, or until `time_limit` seconds have passed since this call began
    (then the step under way finishes and is validated and saved like a last step); resume from
    out_dir/last.safetensors if it exists. Returns the best validation metrics."""
    started = time.perf_counter()
    out = Path(out_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    remove_stale_temps(
        out, ["best.safetensors", "last.safetensors", "metrics.jsonl", "recipe.toml"]
    )  # killed writes
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    data = load_data(hp)
    torch.manual_seed(hp.seed)
    model = SketchRNN(hp.dims, hp.recurrent_keep_prob).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=hp.learning_rate)
    rng = np.random.default_rng(hp.seed)
    step, best = 0, {"loss": math.inf}
    last = out / "last.safetensors"
    records: list[dict[str, Any]] = []
    if resume and last.exists():
        meta, rng = _load_state(last, model, hp, opt)
        step, best = int(meta["step"]), meta["best"]
        records = [r for r in _read_jsonl(out / "metrics.jsonl") if r["step"] <= step]
        _write_jsonl(out / "metrics.jsonl", records)  # forget lines logged after the last save
    hp.save_toml(out / "recipe.toml")
    base_meta = {
        "scale_factor": data.scale_factor,
        "max_seq_len": hp.max_seq_len,
        "dataset_sha256": data.dataset_sha256,
        "datasets": data.datasets,
        "classes": data.classes,
    }
    model.train()
    # loss, L_s, L_p, L_KL summed on the device between logs: a float() per step would wait for
    # the GPU every step
    window, n_window = torch.zeros(4, device=device), 0
    t_window = time.perf_counter()
    bar = _progress(hp.num_steps, step, progress)
    stop = step >= hp.num_steps
    while not stop:
        rate = learning_rate(hp, step)
        for g in opt.param_groups:
            g["lr"] = rate  # torch's name
        batch, lengths = make_batch(data.train, hp, rng)
        losses = model(torch.from_numpy(batch).to(device), torch.from_numpy(lengths).to(device))
        loss = train_loss(losses, step, hp.w_kl, hp.kl_min, hp.eta_min, hp.kl_decay)  # Eq. 15
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), hp.grad_clip)
        opt.step()
        step += 1
        window += torch.stack([loss.detach(), losses.ls.detach(), losses.lp.detach(), losses.kl.detach()])
        n_window += 1
        bar.update(1)
        out_of_time = time_limit is not None and time.perf_counter() - started >= time_limit
        stop = step >= hp.num_steps or out_of_time
        if step % hp.log_every == 0 or stop:
            dt = time.perf_counter() - t_window
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
            records.append(rec)
            _append_jsonl(out / "metrics.jsonl", rec)
            bar.set_postfix_str(f"L_s {means['ls']:.3f} L_p {means['lp']:.3f} L_KL {means['kl']:.3f}")
            window, n_window, t_window = torch.zeros(4, device=device), 0, time.perf_counter()
        if step % hp.eval_every == 0 or stop:
            metrics = evaluate(model, data.valid, hp, batch_size=hp.batch_size)
            is_best = metrics["loss"] < best["loss"]
            if is_best:
                best = dict(metrics, step=step)
                checkpoint.save(
                    out / "best.safetensors",
                    model,
                    hp,
                    dict(base_meta, step=step, metrics={"valid": metrics}),
                )
            rec = {"split": "valid", "step": step, **metrics, "best": is_best, "time": time.time()}
            records.append(rec)
            _append_jsonl(out / "metrics.jsonl", rec)
            _save_state(last, model, hp, opt, rng, dict(base_meta, step=step, best=best))
            loss_curve_png(out / "loss.png", records)
            gen = torch.Generator(device=device).manual_seed(hp.seed + 1)
            sketches_png(
                out / "samples" / f"step_{step:07d}.png", sample(model, hp.num_samples, generator=gen, max_seq_len=hp.max_seq_len)
            )
            model.train()
            bar.write(
                f"step {step}: valid loss {metrics['loss']:.4f} L_R {metrics['lr']:.4f} "
                f"L_KL {metrics['kl']:.4f}{' (best)' if is_best else ''}"
            )
            if out_of_time:
                bar.write(f"time limit of {time_limit:g} s reached at step {step}")
    bar.close()
    return best


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

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
