"""`Recipe`: how a sketch-rnn model is trained, around what it is (`sketchkit.dims.ModelDims`).

A recipe is the model's dimensions (`dims`) plus the data, loss, optimiser and bookkeeping
settings; it is written by hand as TOML (the dimensions in a `[dims]` table) and travels inside
every checkpoint (JSON: `dims` and `recipe`, `zoo.checkpoint`). The defaults are the paper's A.3
setting (HyperLSTM decoder of 2048 with layer norm, encoder 512, Nz 128, M 20, batch 100, Adam
learning rate 1e-4, clip 1.0, KL_min 0.20, R 0.99999, scale augmentation 0.90-1.10, w_KL 1.0,
recurrent dropout with keep probability 0.9). Frozen: change one with `dataclasses.replace`.

Names: `learning_rate` is the optimiser's step size; `lr` is never used for it (in the metrics
`lr` is the paper's reconstruction loss L_R = L_s + L_p, beside `ls`, `lp`, `kl`). Version 1
recipes and checkpoints (flat sizes, `conditional`, `lr`, `lr_decay`, `min_lr`,
`recurrent_dropout` holding a keep probability) load through `upgrade`. No torch here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sketchkit.dims import ModelDims
from sketchkit.errors import ModelError, SketchkitError
from sketchkit.io import atomic_write

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the tomli backport (pyproject: tomli; python_version < "3.11")
    import tomli as tomllib

VERSION = 2  # 2: dims in their own table, the names below; 1: flat (converted by `upgrade`)
LIMITS: dict[str, float] = {  # the largest value each number may take (issue 25): past these a
    # recipe asks for memory or time no machine has (batch_size 1e10, max_seq_len 1e9, num_samples
    # 1e8 grew past 3 GB) or overflows the loss (w_kl 1e308 wrote Infinity into metrics.jsonl)
    "max_seq_len": 10_000,  # QuickDraw sketches are under 200 points after simplification
    "batch_size": 10_000,
    "num_steps": 10**9,
    "eval_every": 10**9,
    "log_every": 10**9,
    "num_samples": 1_000,
    "seed": 2**63 - 1,  # torch.manual_seed takes 64 bits
    "offset_limit": 1e6,
    "w_kl": 1e3,
    "kl_min": 1e3,
    "learning_rate": 10.0,
    "min_learning_rate": 10.0,
    "grad_clip": 1e6,
}
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of TOML

DIM_FIELDS = tuple(f.name for f in dataclasses.fields(ModelDims))
V1_NAMES = {  # version 1 name -> today's
    "lr": "learning_rate",
    "lr_decay": "learning_rate_decay",
    "min_lr": "min_learning_rate",
    "recurrent_dropout": "recurrent_keep_prob",  # it always held the KEEP probability
}


@dataclass(frozen=True)
class Recipe:
    # --- the model (paper §3, A.3) -----------------------------------------------------------
    dims: ModelDims = field(default_factory=ModelDims)

    # --- data -------------------------------------------------------------------------------
    dataset: list[str] = field(
        default_factory=list
    )  # .npz paths; several = multi-class (relative: to the recipe)
    max_seq_len: int = 250  # N_max: sketches longer than this are dropped; L_s, L_p are divided by it
    offset_limit: float = 1000.0  # clamp pixel offsets to +-limit before normalising (magenta's loader)

    # --- regularisation -----------------------------------------------------------------------
    recurrent_keep_prob: float = 0.9  # keep probability of the recurrent dropout (Semeniuta 2016); 1.0 = off

    # --- loss (Eq. 9-15) --------------------------------------------------------------------
    w_kl: float = 1.0  # w_KL
    kl_min: float = 0.2  # KL_min: floor of L_KL in the training loss
    kl_decay: float = 0.99999  # R in eta_step = 1 - (1 - eta_min) R^step
    eta_min: float = 0.01  # eta_min

    # --- optimisation -------------------------------------------------------------------------
    batch_size: int = 100
    learning_rate: float = 1e-4  # Adam's step size
    learning_rate_decay: float = 1.0  # magenta: (learning_rate - min) * decay^step + min; 1.0 = constant (paper)
    min_learning_rate: float = 1e-5
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
    quality_samples: int = 0  # > 0: score that many drawings against valid sketches at each validation (C2ST, FD; zoo.quality)
    note: str = ""  # free text: why this recipe deviates from the paper
    version: int = VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.dims, ModelDims):
            raise SketchkitError(f"dims must be a ModelDims, got {type(self.dims).__name__}")
        if self.version != VERSION:
            raise SketchkitError(f"recipe version {self.version} (this sketchkit writes {VERSION})")
        if not 0.0 < self.recurrent_keep_prob <= 1.0:
            raise SketchkitError(
                f"recurrent_keep_prob is a keep probability in (0, 1], got {self.recurrent_keep_prob}"
            )
        for name in ("max_seq_len", "batch_size", "num_steps", "eval_every", "log_every", "num_samples"):
            if getattr(self, name) < 1:
                raise SketchkitError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.quality_samples <= 10_000:
            raise SketchkitError(f"quality_samples must be in [0, 10000] (0 = off), got {self.quality_samples}")
        if self.seed < 0:  # it seeds numpy's SeedSequence (zoo.train.make_batch)
            raise SketchkitError(f"seed must be >= 0, got {self.seed}")
        for name in ("learning_rate", "grad_clip", "offset_limit"):  # > 0 and finite (nan fails both)
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise SketchkitError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("min_learning_rate", "w_kl", "kl_min", "random_scale"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise SketchkitError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        for name in ("kl_decay", "eta_min", "learning_rate_decay", "augment_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:  # nan fails this too
                raise SketchkitError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name, high in LIMITS.items():
            if getattr(self, name) > high:
                raise SketchkitError(f"{name} must be <= {high:g}, got {getattr(self, name):g}")
        if self.random_scale >= 1.0:
            raise SketchkitError(
                f"random_scale must be < 1 (a scale of 1 - s must stay > 0), got {self.random_scale}"
            )

    # ---------------------------------------------------------------------------------------
    @classmethod
    def of(cls, **kw: Any) -> Recipe:
        """A recipe from flat keywords (today's names): `ModelDims`'s fields go into `dims`."""
        dims = {k: kw.pop(k) for k in DIM_FIELDS if k in kw}
        return cls.from_dict({**kw, "dims": dims, "version": VERSION})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # dims as a nested object

    def flat(self) -> dict[str, Any]:
        """Every setting at the top level (dims' fields included): for `--set KEY=VALUE`. Sizes
        the model does not have (0) are left out, so `--set cell=hyper` gets the default hyper
        sizes and `--set kind=vae` the default encoder."""
        d = self.to_dict()
        dims = {k: v for k, v in d.pop("dims").items() if not (type(v) is int and v == 0)}
        return {**dims, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        d = upgrade(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SketchkitError(f"unknown hyperparameter(s): {', '.join(unknown)}")
        try:
            dims = ModelDims.from_dict(d.get("dims", {}))
        except ModelError as e:
            raise SketchkitError(str(e)) from None
        out = {k: _coerce(k, v, getattr(DEFAULT, k)) for k, v in d.items() if k not in ("dims", "version")}
        return cls(dims=dims, **out)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Recipe:
        """A recipe; dataset paths are resolved relative to the recipe file."""
        path = Path(path)
        try:
            d = tomllib.loads(_read_recipe(path))
        except tomllib.TOMLDecodeError as e:
            raise SketchkitError(f"{path}: invalid TOML ({e})") from None
        except RecursionError:  # arrays or inline tables nested 100,000 deep
            raise SketchkitError(f"{path}: invalid TOML (nested too deeply)") from None
        hp = cls.from_dict(d)
        dataset = [str((path.parent / p).resolve()) if not os.path.isabs(p) else p for p in hp.dataset]
        return dataclasses.replace(hp, dataset=dataset)

    def to_toml(self) -> str:
        d = self.to_dict()
        dims = d.pop("dims")
        top = "".join(f"{k} = {_toml_value(v)}\n" for k, v in {"version": d.pop("version"), **d}.items())
        return top + "\n[dims]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in dims.items())

    def save_toml(self, path: str | os.PathLike[str]) -> None:
        with atomic_write(path, "w") as f:
            f.write(self.to_toml())


DEFAULT = Recipe()


def _read_recipe(path: Path) -> str:
    """The text of a recipe file: a regular file (a device or FIFO would be read forever or
    block) of at most MAX_RECIPE_BYTES, UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise SketchkitError(f"{path}: no such recipe") from None
    except OSError as e:
        raise SketchkitError(f"{path}: cannot read the recipe ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SketchkitError(f"{path}: not a regular file; a recipe is a TOML file")
        if st.st_size > MAX_RECIPE_BYTES:
            raise SketchkitError(f"{path}: {st.st_size} bytes, over the {MAX_RECIPE_BYTES}-byte cap for a recipe")
        os.set_blocking(fd, True)
        raw = f.read(MAX_RECIPE_BYTES + 1)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SketchkitError(f"{path}: not UTF-8 text (is this a TOML recipe?)") from None


def upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """A recipe of an older version (a dict from TOML or a checkpoint) as today's. Version 1
    (any recipe without a `dims` table and without `version = 2`): the sizes were flat, the
    kind was `conditional = true|false`, and the names of `V1_NAMES` were used."""
    if not isinstance(d, dict):
        raise SketchkitError(f"a recipe must be a table, got {type(d).__name__}")
    version = d.get("version", VERSION if "dims" in d else 1)
    if version == VERSION:
        return d
    if version != 1:
        raise SketchkitError(f"unknown recipe version {version!r} (this sketchkit reads 1 and {VERSION})")
    d = {V1_NAMES.get(k, k): v for k, v in d.items() if k != "version"}
    dims = dict(d.pop("dims", {}))
    if "conditional" in d:
        conditional = d.pop("conditional")
        if not isinstance(conditional, bool):
            raise SketchkitError(f"hyperparameter conditional: expected bool, got {conditional!r}")
        dims["kind"] = "vae" if conditional else "decoder-only"
    dims.update({k: d.pop(k) for k in DIM_FIELDS if k in d})
    return {**d, "dims": dims, "version": VERSION}


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Check one value against the type of its default (ints may stand for floats)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        try:
            value = float(value) if ok else value
        except OverflowError:  # an integer past 1e308
            raise SketchkitError(f"hyperparameter {name}: too large (an integer past 1e308)") from None
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
