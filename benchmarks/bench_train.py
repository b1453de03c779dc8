"""Training throughput (sketches/s) of zoo's train step against a straightforward per-timestep
PyTorch loop with the same sizes, in one process, on CPU; with --device, the decoder cells' table
(issue 11): eager against fast cells, in one run.

Both do the same work on the same real sheep batches: encoder over the sketch (both directions),
decoder over N_max steps with [S_{i-1}; z] inputs, mixture head, the Eq. 9-15 loss, backward,
value clipping, Adam. zoo's step runs each LSTM as one fused nn.LSTM call and the head and loss
once over (B, N_max); the baseline steps nn.LSTMCell through time in Python and applies the head
at every step, as most ports do.

    .venv/bin/python benchmarks/bench_train.py [--threads 2] [--steps 3] [--dec 256 --enc 128]
    .venv/bin/python benchmarks/bench_train.py --device cuda --out bench   # bench.json + bench.md

With --device, every row is a whole train step (encoder, decoder, head, loss, backward, clipping,
Adam) on real sheep batches of a fixed shape (batch, N_max 250): LSTM 256 / enc 128, the fused
(cuDNN) LSTM 512 / enc 256, then the layer-norm LSTM 512 / enc 256 and the HyperLSTM 2048 / enc 512
with recurrent dropout keep 0.9, each eager (zoo.sequence.set_fast(False)) and fast. s/step is the
median over blocks of steps, the device synchronised at the end of each block (so a row that calls
float() on the four losses every step, as zoo.train did, shows what those syncs cost); the first
step (compile and CUDA-graph capture of a fast row) is reported on its own. --device cpu uses
sizes divided by --cpu-scale and adds today's loop from a git commit (--baseline-ref) as a row.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import subprocess
import time
import traceback
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sketchkit.zoo.config import Recipe
from sketchkit.zoo.loss import Losses, kl_loss, reconstruction_loss, train_loss
from sketchkit.zoo.model import SketchRNN
from sketchkit.zoo.train import load_data, make_batch

SHEEP = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "sketchrnn", "aaron_sheep.npz")


class LoopSketchRNN(nn.Module):
    """The straightforward baseline: nn.LSTMCell stepped through time, head applied per step."""

    def __init__(self, hp: Recipe):
        super().__init__()
        self.hp = hp
        d = hp.dims
        self.fw = nn.LSTMCell(5, d.enc_size)
        self.bw = nn.LSTMCell(5, d.enc_size)
        self.mu = nn.Linear(2 * d.enc_size, d.z_size)
        self.presig = nn.Linear(2 * d.enc_size, d.z_size)
        self.init = nn.Linear(d.z_size, 2 * d.dec_size)
        self.dec = nn.LSTMCell(5 + d.z_size, d.dec_size)
        self.head = nn.Linear(d.dec_size, 6 * d.num_mixture + 3)

    def encode_direction(self, cell: nn.LSTMCell, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        h = c = x.new_zeros(B, cell.hidden_size)
        for t in range(T):
            h_new, c_new = cell(x[:, t], (h, c))
            live = (t < lengths).unsqueeze(1)  # keep each sequence's last real state
            h, c = torch.where(live, h_new, h), torch.where(live, c_new, c)
        return h

    def forward(self, batch: torch.Tensor, lengths: torch.Tensor) -> Losses:
        x, target = batch[:, :-1], batch[:, 1:]
        B, T, _ = target.shape
        rev = torch.stack(
            [torch.cat([target[b, : int(n)].flip(0), target[b, int(n) :]]) for b, n in enumerate(lengths)]
        )
        h = torch.cat(
            [self.encode_direction(self.fw, target, lengths), self.encode_direction(self.bw, rev, lengths)], 1
        )
        mu, presig = self.mu(h), self.presig(h)
        z = mu + torch.exp(presig / 2) * torch.randn_like(mu)
        hd, cd = torch.tanh(self.init(z)).chunk(2, 1)
        outs = []
        for t in range(T):
            hd, cd = self.dec(torch.cat([x[:, t], z], 1), (hd, cd))
            outs.append(self.head(hd))
        ls, lp = reconstruction_loss(torch.stack(outs, 1), target, lengths)
        return Losses(ls=ls, lp=lp, kl=kl_loss(mu, presig))


def step_fn(model: nn.Module, hp: Recipe):
    opt = torch.optim.Adam(model.parameters(), lr=hp.learning_rate)

    def step(batch: torch.Tensor, lengths: torch.Tensor, i: int) -> None:
        losses = model(batch, lengths)
        loss = train_loss(losses, i, hp.w_kl, hp.kl_min, hp.eta_min, hp.kl_decay)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), hp.grad_clip)
        opt.step()

    return step


# ---------------------------------------------------------------------------------------------
# --device: the cells table


@dataclass
class Row:
    name: str
    cell: str
    dec: int
    enc: int
    keep: float
    fast: bool = True
    sync_every_step: bool = False  # float() on the four losses every step, as zoo.train used to
    baseline_ref: str = ""  # run zoo/model.py of this git commit instead (CPU: today's loop)
    fused: bool = True  # the cells' fused loops (zoo.fused); False: their step functions only


def cell_rows(scale: int, baseline_ref: str) -> list[Row]:
    d = lambda n: max(n // scale, 8)  # noqa: E731
    rows = [
        Row(f"LSTM {d(256)}, enc {d(128)}", "lstm", d(256), d(128), 1.0),
        Row(f"LSTM {d(512)}, enc {d(256)} (cuDNN)", "lstm", d(512), d(256), 1.0),
        Row(f"layer-norm LSTM {d(512)}, enc {d(256)}, keep 0.9: eager step loop", "layer_norm", d(512), d(256), 0.9, False, fused=False),
        Row(f"layer-norm LSTM {d(512)}, enc {d(256)}, keep 0.9: compiled step + graph (before)", "layer_norm", d(512), d(256), 0.9, fused=False),
        Row(f"layer-norm LSTM {d(512)}, enc {d(256)}, keep 0.9: fused loop", "layer_norm", d(512), d(256), 0.9, False),
        Row(f"layer-norm LSTM {d(512)}, enc {d(256)}, keep 0.9: fast", "layer_norm", d(512), d(256), 0.9),
        Row(
            f"layer-norm LSTM {d(512)}, enc {d(256)}, keep 0.9: fast, float() x4 per step",
            "layer_norm", d(512), d(256), 0.9, sync_every_step=True,
        ),
        Row(f"HyperLSTM {d(2048)}, enc {d(512)}, keep 0.9: eager", "hyper", d(2048), d(512), 0.9, False),
        Row(f"HyperLSTM {d(2048)}, enc {d(512)}, keep 0.9: fast", "hyper", d(2048), d(512), 0.9),
    ]  # fmt: skip
    if baseline_ref:
        for r in list(rows):
            if r.keep < 1.0 and not r.fast and not r.fused:
                rows.insert(rows.index(r), Row(r.name.replace("eager step loop", f"the loop of {baseline_ref}"),
                            r.cell, r.dec, r.enc, r.keep, False, baseline_ref=baseline_ref, fused=False))  # fmt: skip
    return rows


def model_at(ref: str) -> Any:
    """zoo/model.py as it was at git commit `ref`, as a module (the baseline of a CPU run)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = subprocess.run(["git", "show", f"{ref}:zoo/model.py"], cwd=root, check=True, capture_output=True)
    mod = types.ModuleType(f"zoo_model_{ref}")
    # that code imports `zoo.*` (installed as sketchkit.zoo.* since issue 14): alias it while it runs
    import sys

    import sketchkit.zoo

    names = ["zoo"] + [f"zoo.{m}" for m in ("config", "loss", "sequence", "fused")]
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules["zoo"] = sketchkit.zoo
    for n in names[1:]:
        sys.modules[n] = importlib.import_module(f"sketchkit.{n}")
    config = types.ModuleType("zoo.config")  # the old name of the recipe class (annotations only)
    config.HParams = Recipe  # type: ignore[attr-defined]
    sys.modules["zoo.config"] = config
    try:
        exec(compile(code.stdout, f"{ref}:zoo/model.py", "exec"), mod.__dict__)  # our own repository's code
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    return mod


def v1_view(hp: Recipe) -> Any:
    """A recipe as the flat, version 1 `HParams` that zoo/model.py of an older commit reads."""
    d = hp.to_dict()
    return types.SimpleNamespace(**d.pop("dims"), **d, conditional=hp.dims.vae, recurrent_dropout=hp.recurrent_keep_prob)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_rows(rows: list[Row], args: argparse.Namespace, batches: list, device: str) -> list[dict[str, Any]]:
    """Time `rows` block by block in turn (interleaved, so on a shared CPU they see the same load;
    on CUDA each row is timed alone)."""
    from sketchkit.zoo import sequence

    steps, models, firsts, captured = [], [], [], []
    for row in rows:
        hp = Recipe.of(
            dataset=[args.data], cell=row.cell, enc_size=row.enc, dec_size=row.dec, z_size=128,
            num_mixture=20, hyper_size=max(256 // args.cpu_scale if device == "cpu" else 256, 8),
            hyper_embed=32, recurrent_keep_prob=row.keep, batch_size=args.batch, max_seq_len=250, learning_rate=1e-3,
        )  # fmt: skip
        torch.manual_seed(0)
        if row.baseline_ref:
            model = model_at(row.baseline_ref).SketchRNN(v1_view(hp)).to(device)
        else:
            model = SketchRNN(hp.dims, hp.recurrent_keep_prob).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=hp.learning_rate)

        def step(i: int, row: Row = row, model: Any = model, opt: Any = opt, hp: Recipe = hp) -> None:
            sequence.set_fast(row.fast)
            sequence.set_fused(row.fused)
            b, n = batches[i % len(batches)]
            losses = model(b, n)
            loss = train_loss(losses, i, hp.w_kl, hp.kl_min, hp.eta_min, hp.kl_decay)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_value_(model.parameters(), hp.grad_clip)
            opt.step()
            if row.sync_every_step:
                [float(v.detach()) for v in (loss, losses.ls, losses.lp, losses.kl)]

        before = len(sequence.stats())
        t = time.perf_counter()
        step(0)
        sync(device)
        firsts.append(time.perf_counter() - t)
        step(1)  # a second warm-up: the first replay, allocator settled
        sync(device)
        captured.append(sequence.stats()[before:])
        steps.append(step)
        models.append(model)
    per_block = max(args.steps // args.blocks, 1)
    times: list[list[float]] = [[] for _ in rows]
    for k in range(args.blocks):
        for r, step in enumerate(steps):
            t = time.perf_counter()
            for j in range(per_block):
                step(2 + k * per_block + j)
            sync(device)
            times[r].append((time.perf_counter() - t) / per_block)
    sequence.set_fast(True)
    sequence.set_fused(True)
    out = []
    for row, model, first, caps, ts in zip(rows, models, firsts, captured, times, strict=True):
        s_step = float(np.median(ts))
        out.append({
            "row": row.name, "cell": row.cell, "dec": row.dec, "enc": row.enc, "keep": row.keep,
            "fast": row.fast, "fused": row.fused, "sync_every_step": row.sync_every_step, "baseline_ref": row.baseline_ref,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "s_per_step": s_step, "sketches_per_s": args.batch / s_step, "first_step_s": first,
            "steps": per_block * args.blocks, "block_s_per_step": ts,
            "fast_paths": sorted({c["mode"] for c in caps}), "capture_s": sum(c["seconds"] for c in caps),
        })  # fmt: skip
    return out


def machine(device: str, threads: int) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "CPU")
    return f"{model}, {threads} threads, torch {torch.__version__}"


def write_table(path: str, meta: dict[str, Any], results: list[dict[str, Any]]) -> list[str]:
    """OUT.md (the table) and OUT.json (every number); returns the table's lines."""
    ref = next(
        (
            r
            for r in results
            if r["cell"] == "lstm" and r["dec"] == max(x["dec"] for x in results if x["cell"] == "lstm")
        ),
        None,
    )  # noqa: E501
    lines = [
        f"{meta['machine']}; batch {meta['batch']}, N_max 250, real sheep batches; s/step: median over "
        f"{meta['blocks']} blocks, synchronised per block",
        "",
        "| train step | params | s / step | sketches / s | x fused LSTM | first step (compile, capture) | fast path |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['row']} | | failed: {r['error']} | | | | |")
            continue
        ratio = f"{r['s_per_step'] / ref['s_per_step']:.2f}" if ref and "s_per_step" in ref else ""
        fast = ", ".join(r["fast_paths"]) or (
            "cuDNN/MKL" if r["cell"] == "lstm" and r["keep"] == 1
            else "fused loop" if r.get("fused", False) and r["cell"] != "hyper"
            else "eager step loop"
        )  # fmt: skip
        lines.append(
            f"| {r['row']} | {r['params_m']:.2f} M | {r['s_per_step']:.4f} | {r['sketches_per_s']:,.0f} | "
            f"{ratio} | {r['first_step_s']:.1f} s | {fast} |"
        )
    with open(path + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(path + ".json", "w") as f:
        json.dump({**meta, "results": results}, f, indent=2)
    return lines


def cells_main(args: argparse.Namespace) -> None:
    device = args.device
    if device == "cpu":
        torch.set_num_threads(args.threads)
    hp = Recipe(dataset=[args.data], batch_size=args.batch, max_seq_len=250)
    data = load_data(hp)
    batches = []
    for step in range(4):
        b, n, _ = make_batch(data.train, hp, step)
        batches.append((torch.from_numpy(b).to(device), torch.from_numpy(n).to(device)))
    meta = {
        "machine": machine(device, args.threads),
        "device": device,
        "batch": args.batch,
        "blocks": args.blocks,
    }
    print(meta["machine"], flush=True)
    results: list[dict[str, Any]] = []
    lines: list[str] = []
    rows = cell_rows(args.cpu_scale if device == "cpu" else 1, args.baseline_ref if device == "cpu" else "")
    rows = [r for r in rows if not args.only or any(k in r.name for k in args.only)]
    rows = [r for r in rows if not any(k in r.name for k in args.skip or [])]
    # on a shared CPU the rows of one cell size are interleaved (same load); on CUDA, one by one
    groups: dict[Any, list[Row]] = {}
    for i, row in enumerate(rows):
        groups.setdefault((row.cell, row.dec, row.enc, row.keep) if device == "cpu" else i, []).append(row)
    for group in groups.values():
        t = time.perf_counter()
        try:
            results += time_rows(group, args, batches, device)
        except Exception as e:  # one failing row must not cost the others
            traceback.print_exc()
            results += [{"row": row.name, "cell": row.cell, "dec": row.dec, "keep": row.keep,
                         "error": f"{type(e).__name__}: {str(e)[:120]}"} for row in group]  # fmt: skip
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        lines = write_table(args.out, meta, results)  # after every row: a killed run keeps what it measured
        print("\n".join(lines[-len(group) :]) + f"  [{time.perf_counter() - t:.1f} s]", flush=True)
    print("\n".join(lines), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", help="cpu or cuda: the cells table (eager vs fast) instead")
    ap.add_argument("--out", default="bench_cells", help="--device: write OUT.json and OUT.md")
    ap.add_argument("--blocks", type=int, default=3, help="--device: timed blocks (median)")
    ap.add_argument("--cpu-scale", type=int, default=8, help="--device cpu: sizes divided by this")
    ap.add_argument("--baseline-ref", default="56ec108", help="--device cpu: git commit of today's loop")
    ap.add_argument("--only", action="append", help="--device: rows whose name contains this")
    ap.add_argument("--skip", action="append", help="--device: not the rows whose name contains this")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per implementation (after 1 warm-up)")
    ap.add_argument("--enc", type=int, default=128)
    ap.add_argument("--dec", type=int, default=256)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--data", default=SHEEP)
    args = ap.parse_args()
    if args.device:
        return cells_main(args)
    torch.set_num_threads(args.threads)
    hp = Recipe.of(
        dataset=[args.data],
        cell="lstm",
        enc_size=args.enc,
        dec_size=args.dec,
        z_size=128,
        num_mixture=20,
        recurrent_keep_prob=1.0,
        batch_size=args.batch,
        max_seq_len=250,
        learning_rate=1e-3,
    )
    data = load_data(hp)
    batches = [make_batch(data.train, hp, step)[:2] for step in range(args.steps + 1)]
    batches = [(torch.from_numpy(b), torch.from_numpy(n)) for b, n in batches]
    torch.manual_seed(0)
    impls = {
        "zoo (fused nn.LSTM)": step_fn(SketchRNN(hp.dims, hp.recurrent_keep_prob), hp),
        "per-timestep loop (nn.LSTMCell)": step_fn(LoopSketchRNN(hp), hp),
    }
    times: dict[str, list[float]] = {k: [] for k in impls}
    for step in impls.values():
        step(*batches[0], 0)  # warm-up
    for i, batch in enumerate(batches[1:], 1):  # interleaved, so both see the same machine load
        for name, step in impls.items():
            t = time.perf_counter()
            step(*batch, i)
            times[name].append(time.perf_counter() - t)
    rates = {k: args.batch / float(np.median(v)) for k, v in times.items()}
    ours, base = rates.values()
    print(
        f"CPU, {args.threads} threads, torch {torch.__version__}; LSTM enc {args.enc} x2, dec {args.dec}, "
        f"Nz 128, M 20, batch {args.batch}, N_max 250, {args.steps} timed steps (median)"
    )
    for k, v in rates.items():
        print(f"  {k:34s} {v:8.1f} sketches/s   ({args.batch / v:.2f} s/step)")
    print(f"  ratio zoo / loop: {ours / base:.2f}x")
    print(json.dumps({"sketches_per_s": rates, "ratio": ours / base, "threads": args.threads}))


if __name__ == "__main__":
    main()
