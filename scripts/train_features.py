"""Train the Fréchet distance's feature network (`sketchkit.zoo.sketchnet.FeatureNet`) and write
`zoo/features/sketchnet.safetensors`: a 345-way classifier of 28 x 28 pictures of QuickDraw's
simplified drawings (the first 20 of each class in ../shared/data/quickdraw/simplified-25, the last 5
held out for the accuracy it prints). Seeded: the same command gives the same weights on the same
machine and torch build.

    python scripts/train_features.py [--data ../shared/data/quickdraw/simplified-25] [--epochs 30]
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from sketchkit import datasets
from sketchkit.quality import inputs
from sketchkit.zoo import sketchnet


def main() -> None:
    ap = argparse.ArgumentParser(prog="python scripts/train_features.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/quickdraw/simplified-25"))
    ap.add_argument("--out", type=Path, default=sketchnet.FEATURES)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--train-per-class", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    files = sorted(args.data.glob("*.ndjson"))
    digest = hashlib.sha256()
    train: tuple[list[np.ndarray], list[int]] = ([], [])
    test: tuple[list[np.ndarray], list[int]] = ([], [])
    for label, path in enumerate(files):
        digest.update(path.read_bytes())
        drawings = [datasets.drawing_to_stroke3(d) for d in datasets.read_ndjson(path)]
        for i, s in enumerate(drawings):
            part = train if i < args.train_per_class else test
            part[0].append(s)
            part[1].append(label)
    t0 = time.time()
    net = sketchnet.train_features(train[0], np.array(train[1]), len(files), args.epochs, args.seed)
    logits = sketchnet.predict(net, [torch.from_numpy(inputs.rasterize(test[0]))])
    acc = float((logits.argmax(1).numpy() == np.array(test[1])).mean())
    meta = {
        "what": "sketchkit.zoo.sketchnet.RasterNet: the picture half of a 345-way QuickDraw classifier",
        "classes": len(files), "train": len(train[0]), "held_out": len(test[0]), "held_out_top1": round(acc, 4),
        "epochs": args.epochs, "seed": args.seed, "data_sha256": digest.hexdigest(),
        "command": "python scripts/train_features.py",
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sketchnet.save_features(net, args.out, meta)
    print(f"{len(files)} classes, {len(train[0])} train, held-out top-1 {acc:.3f} (chance {1 / len(files):.4f}); "
          f"{time.time() - t0:.0f} s; wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
