"""Checkpoints: one `.safetensors` file = weights + a JSON header under the key "sketchkit"
(`dims`: what the model is, `sketchkit.dims.ModelDims`; `recipe`: how it was trained, without
the dims; scale_factor, max_seq_len, dataset_sha256, step, metrics, ...). Loading a model needs
`dims` only (whisper's ckpt["dims"]). Version 1 headers (one flat `hparams` object, and
`init_tanh_z` for imported Magenta VAEs) are converted on load (`zoo.config.upgrade`).

The header also holds "sketchkit_sha256", a SHA-256 over the JSON and every tensor's name,
dtype, shape and bytes, so a flipped bit anywhere is refused with a ModelError rather than
sampled from. Never pickle: safetensors holds raw tensors only. Writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from sketchkit.errors import ModelError, SketchkitError
from sketchkit.io import atomic_write
from sketchkit.zoo.config import Recipe
from sketchkit.zoo.model import SketchRNN

MAX_BYTES = int(os.environ.get("SKETCHKIT_MAX_CHECKPOINT_BYTES", 2 << 30))
"""Largest checkpoint read (2 GiB: the paper's largest model with Adam's state is under 300 MB;
`SKETCHKIT_MAX_CHECKPOINT_BYTES` moves it): the file is read whole, so a 30 GB sparse file would
be 30 GB of memory."""

FORMAT = "sketchkit-checkpoint"
VERSION = 2
VERSIONS = (1, 2)  # what `read_tensors` accepts


def _digest(header: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(header.encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_tensors(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Tensors + JSON metadata as one safetensors file, hashed, written atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = json.dumps(dict(meta, format=FORMAT, version=VERSION), sort_keys=True)
    data = st_save(tensors, metadata={"sketchkit": header, "sketchkit_sha256": _digest(header, tensors)})
    with atomic_write(path) as f:
        f.write(data)


def read_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and metadata of a file written by `write_tensors`, verified."""
    path = Path(path)
    if not path.is_file():  # (after symlinks) a device or FIFO would be read forever
        raise ModelError(f"{path}: no such checkpoint" if not path.exists() else f"{path}: not a regular file")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_BYTES:
            raise ModelError(f"{path}: {size} bytes, over the {MAX_BYTES}-byte cap for a checkpoint (SKETCHKIT_MAX_CHECKPOINT_BYTES)")
        raw = f.read(MAX_BYTES + 1)
    try:
        tensors = st_load(raw)
        n = int.from_bytes(raw[:8], "little")
        header_meta = json.loads(raw[8 : 8 + n]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError, OSError) as e:
        raise ModelError(
            f"{path}: not a readable safetensors checkpoint ({str(e).splitlines()[0]})"
        ) from None
    header, digest = header_meta.get("sketchkit"), header_meta.get("sketchkit_sha256")
    if header is None or digest is None:
        raise ModelError(f"{path}: not a sketchkit checkpoint (no 'sketchkit' metadata)")
    if _digest(header, tensors) != digest:
        raise ModelError(f"{path}: checksum mismatch: the file was modified or corrupted")
    meta = json.loads(header)
    if meta.get("format") != FORMAT or meta.get("version") not in VERSIONS:
        raise ModelError(
            f"{path}: unsupported checkpoint format {meta.get('format')!r} v{meta.get('version')}"
        )
    return tensors, meta


def recipe_meta(recipe: Recipe) -> dict[str, Any]:
    """A recipe as checkpoint metadata: `dims`, and `recipe` (the rest)."""
    d = recipe.to_dict()
    return {"dims": d.pop("dims"), "recipe": d}


def recipe_of(meta: dict[str, Any]) -> Recipe:
    """The recipe in checkpoint metadata of any version (KeyError when there is none)."""
    if meta.get("version") == 1:
        if not isinstance(meta.get("hparams"), dict):
            raise KeyError("hparams")
        d = dict(meta["hparams"], version=1)
        if meta.get("init_tanh_z"):  # an imported Magenta VAE of version < 6
            d["tanh_z"] = True
        return Recipe.from_dict(d)
    if not isinstance(meta.get("recipe"), dict):
        raise KeyError("recipe")
    return Recipe.from_dict({**meta["recipe"], "dims": meta["dims"]})


def save(
    path: str | os.PathLike[str],
    model: SketchRNN,
    recipe: Recipe,
    meta: dict[str, Any],
    dtype: torch.dtype = torch.float32,
) -> None:
    """Save a model. `meta` should hold scale_factor, max_seq_len, dataset_sha256, step,
    metrics; `dtype=torch.float16` halves the file (the loader casts back to float32)."""
    if recipe.dims != model.dims:
        raise SketchkitError(f"the recipe's dims {recipe.dims} are not the model's {model.dims}")
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    meta = dict(meta, **recipe_meta(recipe), dtype=str(dtype).removeprefix("torch."))
    meta.setdefault("max_seq_len", recipe.max_seq_len)
    write_tensors(path, tensors, meta)


def load(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[SketchRNN, Recipe, dict[str, Any]]:
    """(model in eval mode, float32, recipe, meta) from a checkpoint of any version; any
    inconsistency is a ModelError with a one-line message."""
    tensors, meta = read_tensors(path)
    try:
        hp = recipe_of(meta)
    except (KeyError, TypeError) as e:
        raise ModelError(f"{path}: checkpoint has no usable recipe ({e})") from None
    except SketchkitError as e:
        raise ModelError(f"{path}: {e}") from None
    model = SketchRNN(hp.dims)
    weights = {
        k: v.float() if v.is_floating_point() else v for k, v in tensors.items() if not k.startswith("train.")
    }
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise ModelError(
            f"{path}: weights do not match the config (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for k, v in weights.items():
        if v.shape != expected[k].shape:
            raise ModelError(
                f"{path}: {k} has shape {tuple(v.shape)}, the config needs {tuple(expected[k].shape)}"
            )
    model.load_state_dict(weights)
    return model.to(device).eval(), hp, meta
