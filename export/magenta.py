"""Magenta's sketch-rnn-js JSON models -> a PyTorch SketchRNN, exported like our checkpoints.

The reference importer (the default one, `sketchkit.magenta_onnx`, needs no torch), and the one
that can measure the start token on real drawings (`--drawings`) or save a checkpoint. The file
format is read by `sketchkit.magenta`. TF's LSTMs pack gates (i, j, f, o) as [in, 4H] with the
forget bias +1 inside the cell; PyTorch packs (i, f, g, o) as [4H, in] and has no built-in forget
bias, so we reorder, transpose and add the +1 to b_f. A VAE's initial decoder state is
tanh(W z + b) split (c, h); ours is packed [h | c].
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sketchkit import strokes
from sketchkit.datasets import drawing_to_stroke3, read_ndjson
from sketchkit.errors import DataError
from sketchkit.export.onnx import CHECKPOINT_META, Progress, export_model
from sketchkit.magenta import (
    DEFAULT_START,
    START_TOKENS,
    MagentaModel,
    magenta_info,
    read_magenta,
    torch_lstm,
)
from sketchkit.modelinfo import ModelInfo
from sketchkit.zoo.checkpoint import save as save_checkpoint
from sketchkit.zoo.config import Recipe
from sketchkit.zoo.model import SketchRNN

# ---------------------------------------------------------------------------------------------
# Magenta weights -> SketchRNN


def _tf_lstm(w_xh: np.ndarray, w_hh: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    """A TF LSTM as nn.LSTM parameters (`sketchkit.magenta.torch_lstm`; b_hh is zero)."""
    w_ih, w_hh, b = torch_lstm(w_xh, w_hh, bias)
    return {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh, "bias_ih_l0": b, "bias_hh_l0": np.zeros_like(b)}


def state_dict(mm: MagentaModel) -> dict[str, np.ndarray]:
    """The weights under SketchRNN's parameter names (cell "lstm"; the mapping is in `SketchRNN`'s docstring, zoo/model.py)."""
    w = mm.weights
    out = {f"cell.rnn.{k}": v for k, v in _tf_lstm(w["dec_W_xh"], w["dec_W_hh"], w["dec_bias"]).items()}
    out["head.weight"] = w["dec_output_w"].T
    out["head.bias"] = w["dec_output_b"]
    if mm.dims.vae:
        for d in ("fw", "bw"):
            lstm = _tf_lstm(w[f"enc_{d}_W_xh"], w[f"enc_{d}_W_hh"], w[f"enc_{d}_bias"])
            out.update({f"encoder.{d}.{k}": v for k, v in lstm.items()})
        for head in ("mu", "presig"):
            out[f"encoder.{head}.weight"] = w[f"enc_{head}_w"].T
            out[f"encoder.{head}.bias"] = w[f"enc_{head}_b"]
        # Magenta's initial state is (c, h); ours is [h | c]
        H = mm.dims.dec_size
        out["init.weight"] = np.concatenate([w["init_w"][:, H:], w["init_w"][:, :H]], axis=1).T
        out["init.bias"] = np.concatenate([w["init_b"][H:], w["init_b"][:H]])
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def magenta_recipe(mm: MagentaModel) -> Recipe:
    """The recipe saved with an imported model's checkpoint: its dims, N_max and where it came from."""
    return Recipe(
        dims=mm.dims,
        max_seq_len=mm.max_seq_len,
        recurrent_keep_prob=1.0,
        note=f"imported from Magenta sketch-rnn-js {mm.source} (version {mm.version})",
    )


def to_sketchrnn(mm: MagentaModel) -> SketchRNN:
    """A SketchRNN (cell "lstm", eval mode) holding the Magenta model's weights exactly."""
    model = SketchRNN(mm.dims)  # tanh_z included: decoder_init squashes z like sketch-rnn-js
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict(mm).items()}, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# start token: the one under which real drawings are more likely


def quickdraw_sketches(path: str | os.PathLike[str], max_len: int) -> list[np.ndarray]:
    """The drawings of a QuickDraw `.ndjson` as stroke-3 with unit offset std.

    Magenta's scale_factor belongs to the pixel units of its .npz training data; Google's
    simplified ndjson is rescaled to 0..255 (offsets ~2.6x smaller), so we normalise these
    drawings by their own std, which is what normalising the training data by its scale_factor
    did. Drawings longer than `max_len` points are left out.
    """
    sketches = []
    for d in read_ndjson(path):
        with contextlib.suppress(DataError):  # a single-point drawing has no stroke
            sketches.append(drawing_to_stroke3(d))
    sketches = strokes.filter_by_length(sketches, max_len)
    if not sketches:
        raise DataError(f"{path}: no drawing of at most {max_len} points")
    factor = strokes.scale_factor(sketches)
    return [strokes.normalize(s, factor) for s in sketches]


def reconstruction_loss(
    model: SketchRNN, sketches: list[np.ndarray], start: tuple[float, ...], max_len: int, seed: int = 0
) -> float:
    """L_R = L_s + L_p (paper Eq. 9, over N_max = the model's max_seq_len) of normalised
    sketches, with `start` as the first decoder input instead of S_0; lower is more likely."""
    batch, lengths = strokes.to_batch(sketches, max_len)
    batch[:, 0] = start
    with torch.no_grad():
        losses = model(
            torch.from_numpy(batch), torch.from_numpy(lengths), torch.Generator().manual_seed(seed)
        )
    return float(losses.lr)


def choose_start_token(
    model: SketchRNN, sketches: list[np.ndarray], max_len: int
) -> tuple[tuple[float, ...], dict[str, float]]:
    """The start token ((0,0,1,0,0) of the paper, or the zeros of the legacy sketch-rnn-js
    `generate()`) under which `sketches` have the lower L_R, and L_R under each."""
    losses = {name: reconstruction_loss(model, sketches, token, max_len) for name, token in START_TOKENS.items()}
    return START_TOKENS[min(losses, key=losses.__getitem__)], losses


# ---------------------------------------------------------------------------------------------
# the whole import


def import_magenta(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    name: str | None = None,
    drawings: str | os.PathLike[str] | None = None,
    fp16: bool = False,
    source: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> tuple[ModelInfo, dict[str, float]]:
    """Magenta JSON -> OUT_DIR (graphs + model.json) through the same export as our checkpoints.

    `drawings`: a QuickDraw .ndjson of the model's class; the start token is then the one under
    which they are more likely (else zeros, which won on every class measured). `checkpoint`:
    also save our .safetensors.
    """
    say = progress or (lambda _: None)
    mm = read_magenta(path)
    say(f"read {mm.source}: {mm.summary}")
    model = to_sketchrnn(mm)
    start, metrics = DEFAULT_START, dict[str, Any]()
    if drawings is not None:
        sketches = quickdraw_sketches(drawings, mm.max_seq_len)
        start, losses = choose_start_token(model, sketches, mm.max_seq_len)
        metrics["start_token_lr"] = {"drawings": Path(drawings).name, "n": len(sketches), **losses}
        say(
            f"start token {list(start)}: L_R of {len(sketches)} drawings "
            + ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
        )
    info = magenta_info(mm, name=name, start_token=start, source=source, metrics=metrics)
    info, diffs = export_model(model, info, out_dir, fp16=fp16, progress=progress)
    if checkpoint is not None:  # after the export: a model that failed its checks is not saved
        meta = {k: v for k, v in dataclasses.asdict(info).items() if k in CHECKPOINT_META}
        save_checkpoint(checkpoint, model, magenta_recipe(mm), meta)
        say(f"wrote {checkpoint}")
    return info, diffs
