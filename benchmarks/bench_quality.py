"""The quality measures validated on real data (issue 28), as a table for benchmarks/RESULTS.md:
real sheep against other real sheep, against damaged copies (strokes shuffled, offsets jittered),
and the shipped sheep at temperatures from near 0 to 2. Seeded; prints wall and CPU seconds
(the machine may be shared: compare CPU seconds).

    python benchmarks/bench_quality.py --n 1000 [--taus 0.05,0.3,0.6,1.0,2.0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from sketchkit import datasets
from sketchkit.hub import load
from sketchkit.quality import perturb
from sketchkit.zoo import quality, sketchnet


def main() -> None:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench_quality.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/sketchrnn/aaron_sheep.npz"))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--taus", default="0.05,0.3,0.6,1.0,2.0")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = datasets.load_npz(args.data)
    pool = [np.asarray(s, np.float32) for s in ds.train]
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(pool))
    a, b = [pool[i] for i in order[: args.n]], [pool[i] for i in order[args.n : 2 * args.n]]
    net = sketchnet.load_features()
    rows = [("real vs other real", a), ("strokes shuffled", perturb.shuffle_strokes(a, args.seed)),
            ("offsets jittered (0.3 std)", perturb.jitter(a, 0.3, args.seed))]  # fmt: skip
    runtime = load("sheep", threads=1)
    print(f"{args.n} against {args.n} real sketches of {args.data.name} (train split), seed {args.seed}, 1 thread\n")
    print("| set | C2ST AUC [95 %] | FD | KS points | KS strokes | KS pen lifts | KS aspect | never ends | wall s | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def line(name: str, q: quality.Quality, wall: float, cpu: float) -> None:
        ks = " | ".join(f"{q.stats[k]['ks']:.3f}" for k in ("points", "strokes", "pen_lift_fraction", "aspect"))
        unf = "" if q.unfinished is None else f"{q.unfinished:.1%}"
        print(f"| {name} | {q.c2st_auc:.3f} [{q.c2st_low:.3f}, {q.c2st_high:.3f}] | {q.fd:.3f} | {ks} | {unf} | {wall:.0f} | {cpu:.0f} |", flush=True)

    for name, g in rows:
        w, c = time.perf_counter(), time.process_time()
        q = quality.compare(g, b, args.seed, net)
        line(name, q, time.perf_counter() - w, time.process_time() - c)
    for t in (float(x) for x in args.taus.split(",")):
        w, c = time.perf_counter(), time.process_time()
        q = quality.evaluate_samples(runtime, b, args.n, tau=t, seed=args.seed, feature_net=net)
        line(f"shipped sheep, tau {t:g}", q, time.perf_counter() - w, time.process_time() - c)


if __name__ == "__main__":
    main()
