"""The tiny real-data recipe the training tests share (a VAE small enough for 2 CPU cores; each
test overrides what it is about)."""

from __future__ import annotations

from pathlib import Path

from sketchkit.zoo.config import Recipe


def tiny(dataset: Path, **kw) -> Recipe:  # type: ignore[no-untyped-def]
    base = dict(
        dataset=[str(dataset)],
        max_seq_len=40,
        cell="lstm",
        enc_size=16,
        dec_size=48,
        z_size=8,
        num_mixture=5,
        recurrent_keep_prob=1.0,
        batch_size=8,
        learning_rate=3e-3,
        random_scale=0.0,
        kl_decay=0.99,
        w_kl=0.5,
        eval_every=100,
        log_every=10,
        num_samples=4,
        num_steps=300,
    )
    return Recipe.of(**{**base, **kw})
