"""Training throughput (sketches/s) of zoo's train step against a straightforward per-timestep
PyTorch loop with the same sizes, in one process, on CPU.

Both do the same work on the same real sheep batches: encoder over the sketch (both directions),
decoder over N_max steps with [S_{i-1}; z] inputs, mixture head, the Eq. 9-15 loss, backward,
value clipping, Adam. zoo's step runs each LSTM as one fused nn.LSTM call and the head and loss
once over (B, N_max); the baseline steps nn.LSTMCell through time in Python and applies the head
at every step, as most ports do.

    .venv/bin/python benchmarks/bench_train.py [--threads 2] [--steps 3] [--dec 256 --enc 128]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from torch import nn

from zoo.config import HParams
from zoo.loss import Losses, kl_loss, reconstruction_loss, train_loss
from zoo.model import SketchRNN
from zoo.train import load_data, make_batch

SHEEP = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "sketchrnn", "aaron_sheep.npz")


class LoopSketchRNN(nn.Module):
    """The straightforward baseline: nn.LSTMCell stepped through time, head applied per step."""

    def __init__(self, hp: HParams):
        super().__init__()
        self.hp = hp
        self.fw = nn.LSTMCell(5, hp.enc_size)
        self.bw = nn.LSTMCell(5, hp.enc_size)
        self.mu = nn.Linear(2 * hp.enc_size, hp.z_size)
        self.presig = nn.Linear(2 * hp.enc_size, hp.z_size)
        self.init = nn.Linear(hp.z_size, 2 * hp.dec_size)
        self.dec = nn.LSTMCell(5 + hp.z_size, hp.dec_size)
        self.head = nn.Linear(hp.dec_size, 6 * hp.num_mixture + 3)

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


def step_fn(model: nn.Module, hp: HParams):
    opt = torch.optim.Adam(model.parameters(), lr=hp.lr)

    def step(batch: torch.Tensor, lengths: torch.Tensor, i: int) -> None:
        losses = model(batch, lengths)
        loss = train_loss(losses, i, hp.w_kl, hp.kl_min, hp.eta_min, hp.kl_decay)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), hp.grad_clip)
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per implementation (after 1 warm-up)")
    ap.add_argument("--enc", type=int, default=128)
    ap.add_argument("--dec", type=int, default=256)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--data", default=SHEEP)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    hp = HParams(
        dataset=[args.data],
        cell="lstm",
        enc_size=args.enc,
        dec_size=args.dec,
        z_size=128,
        num_mixture=20,
        recurrent_dropout=1.0,
        batch_size=args.batch,
        max_seq_len=250,
        lr=1e-3,
    )
    data = load_data(hp)
    rng = np.random.default_rng(0)
    batches = [make_batch(data.train, hp, rng) for _ in range(args.steps + 1)]
    batches = [(torch.from_numpy(b), torch.from_numpy(n)) for b, n in batches]
    torch.manual_seed(0)
    impls = {
        "zoo (fused nn.LSTM)": step_fn(SketchRNN(hp), hp),
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
