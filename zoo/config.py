"""`HParams`: the one typed configuration of a sketch-rnn model and its training recipe.

It travels inside every checkpoint (JSON) and is written by hand as a recipe (TOML). The defaults
are the paper's A.3 setting (HyperLSTM decoder of 2048 with layer norm, encoder 512, Nz 128,
M 20, batch 100, Adam 1e-4, clip 1.0, KL_min 0.20, R 0.99999, scale augmentation 0.90-1.10,
w_KL 1.0, recurrent dropout keep 0.9). No torch here: the client and the CLI read it cheaply.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sketchkit.errors import SketchkitError
from sketchkit.io import atomic_write

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the tomli backport (pyproject: tomli; python_version < "3.11")
    import tomli as tomllib

CELLS = ("lstm", "layer_norm", "hyper")


@dataclass
class HParams:
    # --- data -------------------------------------------------------------------------------
    dataset: list[str] = field(
        default_factory=list
    )  # .npz paths; several = multi-class (relative: to the recipe)
    max_seq_len: int = 250  # N_max: sketches longer than this are dropped; L_s, L_p are divided by it
    offset_limit: float = 1000.0  # clamp pixel offsets to +-limit before normalising (magenta's loader)

    # --- model (paper §3, A.3) -----------------------------------------------------------------
    conditional: bool = True  # False: decoder-only model (paper §3.3: no encoder, zero initial state)
    enc_size: int = 512  # hidden size of each direction of the bidirectional LSTM encoder
    dec_size: int = 2048  # decoder hidden size H
    z_size: int = 128  # N_z, latent size
    num_mixture: int = 20  # M, Gaussian mixture components (output is 6M + 3 wide)
    cell: str = "hyper"  # decoder cell: "lstm" | "layer_norm" | "hyper" (HyperLSTM with layer norm)
    hyper_size: int = 256  # HyperLSTM: size of the small hyper LSTM
    hyper_embed: int = 32  # HyperLSTM: size of the embeddings that scale the main cell's weights
    recurrent_dropout: float = 0.9  # KEEP probability of the recurrent dropout (Semeniuta 2016); 1.0 = off

    # --- loss (Eq. 9-15) --------------------------------------------------------------------
    w_kl: float = 1.0  # w_KL
    kl_min: float = 0.2  # KL_min: floor of L_KL in the training loss
    kl_decay: float = 0.99999  # R in eta_step = 1 - (1 - eta_min) R^step
    eta_min: float = 0.01  # eta_min

    # --- optimisation -------------------------------------------------------------------------
    batch_size: int = 100
    lr: float = 1e-4
    lr_decay: float = 1.0  # magenta: lr_step = (lr - min_lr) * lr_decay^step + min_lr; 1.0 = constant (paper)
    min_lr: float = 1e-5
    grad_clip: float = 1.0  # gradients clipped by value to +-grad_clip (as magenta does)
    num_steps: int = 1_000_000
    seed: int = 0

    # --- augmentation (paper A.3; magenta) ---------------------------------------------------
    random_scale: float = 0.10  # dx, dy each multiplied by U(1 - s, 1 + s)
    augment_prob: float = 0.0  # magenta's augment_stroke_prob: drop points in straight runs

    # --- bookkeeping --------------------------------------------------------------------------
    eval_every: int = 500  # validate, keep the best checkpoint, save the resume state, draw samples
    log_every: int = 20  # a train line in metrics.jsonl every this many steps
    num_samples: int = 16  # sketches drawn at each validation
    note: str = ""  # free text: why this recipe deviates from the paper

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise SketchkitError(f"unknown cell {self.cell!r} (choose from {', '.join(CELLS)})")
        if not 0.0 < self.recurrent_dropout <= 1.0:
            raise SketchkitError(
                f"recurrent_dropout is a keep probability in (0, 1], got {self.recurrent_dropout}"
            )
        for name in ("enc_size", "dec_size", "z_size", "num_mixture", "max_seq_len", "batch_size",
                     "hyper_size", "hyper_embed", "num_steps", "eval_every", "log_every", "num_samples"):  # fmt: skip
            if getattr(self, name) < 1:
                raise SketchkitError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("lr", "grad_clip", "offset_limit"):  # > 0 and finite (nan fails both)
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise SketchkitError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("min_lr", "w_kl", "kl_min", "random_scale"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise SketchkitError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        for name in ("kl_decay", "eta_min", "lr_decay", "augment_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:  # nan fails this too
                raise SketchkitError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.random_scale >= 1.0:
            raise SketchkitError(
                f"random_scale must be < 1 (a scale of 1 - s must stay > 0), got {self.random_scale}"
            )

    # ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HParams:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise SketchkitError(f"unknown hyperparameter(s): {', '.join(unknown)}")
        out = {}
        for k, v in d.items():
            default = getattr(cls(), k)
            out[k] = _coerce(k, v, default)
        return cls(**out)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> HParams:
        """A recipe; dataset paths are resolved relative to the recipe file."""
        path = Path(path)
        try:
            d = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise SketchkitError(f"{path}: no such recipe") from None
        except tomllib.TOMLDecodeError as e:
            raise SketchkitError(f"{path}: invalid TOML ({e})") from None
        hp = cls.from_dict(d)
        hp.dataset = [str((path.parent / p).resolve()) if not os.path.isabs(p) else p for p in hp.dataset]
        return hp

    def to_toml(self) -> str:
        return "".join(f"{k} = {_toml_value(v)}\n" for k, v in self.to_dict().items())

    def save_toml(self, path: str | os.PathLike[str]) -> None:
        with atomic_write(path, "w") as f:
            f.write(self.to_toml())


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Check one value against the type of its default (ints may stand for floats)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(x, str) for x in value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise SketchkitError(f"hyperparameter {name}: expected {type(default).__name__}, got {value!r}")
    return value


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")
