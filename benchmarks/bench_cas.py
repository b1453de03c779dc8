"""Classification accuracy score across the 40 Magenta models, for both start tokens (issue 28).

For each model in ../shared/data/magenta-gen and each start token (`zeros`, the legacy
sketch-rnn-js first input; `paper`, (0, 0, 1, 0, 0) as in the paper and @magenta/sketch 0.2):
N sketches at tau through the one Sampler, cached in --cache; the fraction that never ends (cut
at max_seq_len); then, for the 35 models whose class has real drawings in
../shared/data/quickdraw/simplified-25 (25 each), a classifier trained on the generated sketches
alone (`sketchkit.zoo.cas`) and its recall on the real drawings, per class; and a pooled C2ST and
FD of 25 generated against the 25 real drawings of every class. Prints markdown tables.

    python benchmarks/bench_cas.py --n 300 --tau 0.3 --cache /tmp/sketchkit-cas
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from sketchkit import datasets
from sketchkit.hub import load
from sketchkit.modelinfo import START_TOKENS
from sketchkit.zoo import cas, quality, sketchnet

STARTS = ("zeros", "paper")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench_cas.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--magenta", type=Path, default=Path("../shared/data/magenta-gen"))
    ap.add_argument("--real", type=Path, default=Path("../shared/data/quickdraw/simplified-25"))
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--tau", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/sketchkit-cas"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    models = {p.name.removesuffix(".gen.json"): p for p in sorted(args.magenta.glob("*.gen.json"))}
    t0 = time.time()
    gen: dict[str, dict[str, list[np.ndarray]]] = {s: {} for s in STARTS}
    unfinished: dict[str, dict[str, float]] = {s: {} for s in STARTS}
    for name, path in models.items():
        runtime = None
        for start in STARTS:
            key = cas.cache_key(path, n=args.n, tau=args.tau, seed=args.seed, start=START_TOKENS[start])
            f = args.cache / f"{name}-{start}-{key}.npz"
            if not f.exists():
                runtime = runtime or load(str(path), threads=args.threads)
                cas.save_set(f, quality.generate(runtime, args.n, args.tau, args.seed, START_TOKENS[start]))
            gen[start][name] = cas.load_set(f)
            max_len = load(str(path)).info.max_seq_len if runtime is None else runtime.info.max_seq_len
            unfinished[start][name] = quality.unfinished(gen[start][name], max_len)
    t_gen = time.time() - t0
    real = {}
    for name in models:
        f = args.real / f"{name.replace('_', ' ')}.ndjson"
        if f.exists():
            real[name] = [datasets.drawing_to_stroke3(d) for d in datasets.read_ndjson(f)]
    classes = [k for k in models if k in real]
    recall, pooled = {}, {}
    net = sketchnet.load_features()
    for start in STARTS:
        recall[start] = cas.cas({k: gen[start][k] for k in classes}, {k: real[k] for k in classes}, args.seed)
        g = [s for k in classes for s in gen[start][k][: len(real[k])]]
        r = [s for k in classes for s in real[k]]
        rng = np.random.default_rng(args.seed)
        g = [g[i] for i in rng.permutation(len(g))]
        r = [r[i] for i in rng.permutation(len(r))]
        pooled[start] = quality.compare(g, r, args.seed, net)
    t_all = time.time() - t0

    print(f"{len(models)} models, n = {args.n} per model and start, tau {args.tau}, seed {args.seed}; "
          f"{len(classes)} classes with real drawings ({sum(len(real[k]) for k in classes)} in all); "
          f"generation {t_gen:.0f} s, all {t_all:.0f} s (threads {args.threads})\n")  # fmt: skip
    print("| class | never ends, zeros | never ends, paper | CAS recall, zeros | CAS recall, paper |")
    print("|---|---|---|---|---|")
    for k in models:
        rz = f"{recall['zeros'][k]:.2f}" if k in recall["zeros"] else "n/a (no real class)"
        rp = f"{recall['paper'][k]:.2f}" if k in recall["paper"] else "n/a"
        print(f"| {k} | {unfinished['zeros'][k]:.1%} | {unfinished['paper'][k]:.1%} | {rz} | {rp} |")
    print()
    print("| start | mean never ends (40) | mean CAS recall (35) | models with higher recall | pooled C2ST AUC [95 %] | pooled FD |")
    print("|---|---|---|---|---|---|")
    for s in STARTS:
        other = STARTS[1 - STARTS.index(s)]
        wins = sum(recall[s][k] > recall[other][k] for k in classes)
        q = pooled[s]
        print(f"| {s} {START_TOKENS[s]} | {np.mean(list(unfinished[s].values())):.1%} | "
              f"{np.mean(list(recall[s].values())):.3f} | {wins} | "
              f"{q.c2st_auc:.3f} [{q.c2st_low:.3f}, {q.c2st_high:.3f}] | {q.fd:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
