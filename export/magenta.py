"""Magenta's sketch-rnn-js JSON models -> our SketchRNN checkpoint form.

The format (../shared/data/README.md): a JSON list `[info, shapes, blobs]`; each blob is base64 of
little-endian int16 and weight = int16 / 32767 * 10. Decoder-only ("gen") files hold 5 blobs, VAE
files 17 (encoder first). The LSTMs are TensorFlow's: gates packed (i, j, f, o) along 4H with the
forget bias +1 added inside the cell, weights stored [in, 4H]; PyTorch packs (i, f, g, o) as
[4H, in] and has no built-in forget bias, so we reorder, transpose and add the +1 to b_f.
A VAE's initial decoder state is tanh(W z + b) split (c, h); ours is packed [h | c].
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.onnx import CHECKPOINT_META, Progress, export_model, model_info
from sketchkit import strokes
from sketchkit.datasets import drawing_to_stroke3, read_ndjson
from sketchkit.errors import DataError, ModelError
from sketchkit.modelinfo import ModelInfo
from zoo.checkpoint import save as save_checkpoint
from zoo.config import HParams
from zoo.model import SketchRNN

MAX_WEIGHT = 10.0  # sketch-rnn-js: weight = int16 / 32767 * max_weight
LICENSE = "Apache-2.0 (Magenta sketch-rnn pretrained models, Google)"

DECODER_BLOBS = ("dec_output_w", "dec_output_b", "dec_W_xh", "dec_W_hh", "dec_bias")
ENCODER_BLOBS = (
    "enc_fw_W_xh",
    "enc_fw_W_hh",
    "enc_fw_bias",
    "enc_bw_W_xh",
    "enc_bw_W_hh",
    "enc_bw_bias",
    "enc_mu_w",
    "enc_mu_b",
    "enc_presig_w",
    "enc_presig_b",
    "init_w",
    "init_b",
)


@dataclass(frozen=True)
class MagentaModel:
    """A parsed Magenta JSON model: its info and its weights by name, in TensorFlow layout."""

    info: dict[str, Any]
    weights: dict[str, np.ndarray]
    source: str

    @property
    def conditional(self) -> bool:
        return not (self.info["mode"] == 2 or self.info["mode"] == "gen")

    @property
    def version(self) -> int:
        return int(self.info.get("version", 0))

    @property
    def name(self) -> str:
        return str(self.info["name"])

    @property
    def dec_size(self) -> int:
        return self.weights["dec_W_hh"].shape[0]

    @property
    def enc_size(self) -> int:
        return self.weights["enc_fw_W_hh"].shape[0] if self.conditional else 0

    @property
    def z_size(self) -> int:
        return self.weights["init_w"].shape[0] if self.conditional else 0

    @property
    def num_mixture(self) -> int:
        return (self.weights["dec_output_b"].shape[0] - 3) // 6

    @property
    def scale_factor(self) -> float:
        return float(self.info["scale_factor"])

    @property
    def max_seq_len(self) -> int:
        return int(self.info["max_seq_len"])


def read_magenta(path: str | os.PathLike[str]) -> MagentaModel:
    """Parse and check a sketch-rnn-js JSON model; anything else raises a one-line ModelError."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: not a Magenta model (not JSON: {e})") from None
    if not (isinstance(data, list) and len(data) == 3):
        raise ModelError(f"{path}: not a Magenta model (expected a JSON list [info, shapes, blobs])")
    info, shapes, blobs = data
    where = f"{path}: Magenta model"
    _check_info(info, where)
    if not (isinstance(shapes, list) and isinstance(blobs, list)):
        raise ModelError(f"{where}: shapes and blobs must be lists")
    if len(shapes) != len(blobs):
        raise ModelError(f"{where}: {len(shapes)} shapes but {len(blobs)} blobs")
    gen = info["mode"] == 2 or info["mode"] == "gen"
    names = DECODER_BLOBS if gen else ENCODER_BLOBS + DECODER_BLOBS
    if len(blobs) != len(names):
        kind = "decoder-only (mode gen)" if gen else "vae"
        raise ModelError(f"{where}: a {kind} model has {len(names)} blobs, this file has {len(blobs)}")
    weights = {
        name: _decode_blob(blob, shape, f"{where}, blob {k} ({name})")
        for k, (name, shape, blob) in enumerate(zip(names, shapes, blobs, strict=True))
    }
    _check_shapes(weights, gen, where)
    return MagentaModel(info, weights, source=path.name)


def _check_info(info: object, where: str) -> None:
    if not isinstance(info, dict):
        raise ModelError(f"{where}: the first element (info) is not an object")
    for key in ("name", "mode", "max_seq_len", "scale_factor"):
        if key not in info:
            raise ModelError(f"{where}: info has no {key!r}")
    if info["mode"] not in (0, 1, 2, "gen", "vae"):
        raise ModelError(f"{where}: unknown mode {info['mode']!r}")
    sf, msl = info["scale_factor"], info["max_seq_len"]
    if isinstance(sf, bool) or not isinstance(sf, (int, float)) or not math.isfinite(sf) or sf <= 0:
        raise ModelError(f"{where}: scale_factor must be a positive number, got {sf!r}")
    if isinstance(msl, bool) or not isinstance(msl, int) or msl <= 0:
        raise ModelError(f"{where}: max_seq_len must be a positive integer, got {msl!r}")
    if not isinstance(info.get("version", 0), int):
        raise ModelError(f"{where}: version must be an integer, got {info['version']!r}")


def _decode_blob(blob: object, shape: object, where: str) -> np.ndarray:
    if not (
        isinstance(shape, list)
        and 1 <= len(shape) <= 2
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise ModelError(f"{where}: bad shape {shape!r}")
    if not isinstance(blob, str):
        raise ModelError(f"{where}: not a base64 string")
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ModelError(f"{where}: bad base64 ({e})") from None
    n = math.prod(shape)
    if len(raw) != 2 * n:
        raise ModelError(f"{where}: {len(raw)} bytes, shape {shape} needs {2 * n}")
    ints = np.frombuffer(raw, dtype="<i2")
    return (ints.astype(np.float64) / 32767.0 * MAX_WEIGHT).astype(np.float32).reshape(shape)


def _lstm_sizes(w: dict[str, np.ndarray], prefix: str, where: str) -> tuple[int, int]:
    """(input size, hidden size) of one TF LSTM, after checking its three blobs agree."""
    w_xh, w_hh, b = w[f"{prefix}W_xh"], w[f"{prefix}W_hh"], w[f"{prefix}bias"]
    if w_hh.ndim != 2 or w_hh.shape[1] != 4 * w_hh.shape[0]:
        raise ModelError(f"{where}: {prefix}W_hh has shape {list(w_hh.shape)}, expected [H, 4H]")
    h = w_hh.shape[0]
    if w_xh.ndim != 2 or w_xh.shape[1] != 4 * h:
        raise ModelError(f"{where}: {prefix}W_xh has shape {list(w_xh.shape)}, expected [in, {4 * h}]")
    if b.shape != (4 * h,):
        raise ModelError(f"{where}: {prefix}bias has shape {list(b.shape)}, expected [{4 * h}]")
    return w_xh.shape[0], h


def _expect(w: dict[str, np.ndarray], name: str, shape: tuple[int, ...], where: str) -> None:
    if w[name].shape != shape:
        raise ModelError(f"{where}: {name} has shape {list(w[name].shape)}, expected {list(shape)}")


def _check_shapes(w: dict[str, np.ndarray], gen: bool, where: str) -> None:
    """Every size is read from the blobs (the large set has H = 1024); they must agree."""
    n_in, h = _lstm_sizes(w, "dec_", where)
    out_w = w["dec_output_w"]
    if out_w.ndim != 2 or out_w.shape[0] != h or (out_w.shape[1] - 3) % 6 or out_w.shape[1] < 9:
        raise ModelError(f"{where}: dec_output_w has shape {list(out_w.shape)}, expected [{h}, 6M+3]")
    _expect(w, "dec_output_b", (out_w.shape[1],), where)
    if gen:
        if n_in != 5:
            raise ModelError(f"{where}: decoder input is {n_in} wide, a decoder-only model takes 5")
        return
    e_in, e = _lstm_sizes(w, "enc_fw_", where)
    if _lstm_sizes(w, "enc_bw_", where) != (e_in, e) or e_in != 5:
        raise ModelError(f"{where}: the encoder LSTMs must both take 5 inputs and share one size")
    init_w = w["init_w"]
    if init_w.ndim != 2:
        raise ModelError(f"{where}: init_w has shape {list(init_w.shape)}, expected [Nz, {2 * h}]")
    nz = init_w.shape[0]
    _expect(w, "init_w", (nz, 2 * h), where)
    _expect(w, "init_b", (2 * h,), where)
    for head in ("mu", "presig"):
        _expect(w, f"enc_{head}_w", (2 * e, nz), where)
        _expect(w, f"enc_{head}_b", (nz,), where)
    if n_in != 5 + nz:
        raise ModelError(f"{where}: decoder input is {n_in} wide, expected 5 + Nz = {5 + nz}")


# ---------------------------------------------------------------------------------------------
# Magenta weights -> SketchRNN


def _tf_lstm(w_xh: np.ndarray, w_hh: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    """A TF LSTM as nn.LSTM parameters: gates (i, j, f, o) -> (i, f, g=j, o), [in, 4H] -> [4H, in],
    and TF's forget bias +1.0 (inside its cell) moved into b_f."""
    H = w_hh.shape[0]

    def reorder(a: np.ndarray) -> np.ndarray:
        i, j, f, o = np.split(a, 4, axis=-1)
        return np.concatenate([i, f, j, o], axis=-1)

    b = reorder(bias).copy()
    b[H : 2 * H] += 1.0
    return {
        "weight_ih_l0": reorder(w_xh).T,
        "weight_hh_l0": reorder(w_hh).T,
        "bias_ih_l0": b,
        "bias_hh_l0": np.zeros_like(b),
    }


def state_dict(mm: MagentaModel) -> dict[str, np.ndarray]:
    """The weights under SketchRNN's parameter names (cell "lstm"; see /work/notes/MODEL_API.md)."""
    w = mm.weights
    out = {f"cell.rnn.{k}": v for k, v in _tf_lstm(w["dec_W_xh"], w["dec_W_hh"], w["dec_bias"]).items()}
    out["head.weight"] = w["dec_output_w"].T
    out["head.bias"] = w["dec_output_b"]
    if mm.conditional:
        for d in ("fw", "bw"):
            lstm = _tf_lstm(w[f"enc_{d}_W_xh"], w[f"enc_{d}_W_hh"], w[f"enc_{d}_bias"])
            out.update({f"encoder.{d}.{k}": v for k, v in lstm.items()})
        for head in ("mu", "presig"):
            out[f"encoder.{head}.weight"] = w[f"enc_{head}_w"].T
            out[f"encoder.{head}.bias"] = w[f"enc_{head}_b"]
        # Magenta's initial state is (c, h); ours is [h | c]
        H = mm.dec_size
        out["init.weight"] = np.concatenate([w["init_w"][:, H:], w["init_w"][:, :H]], axis=1).T
        out["init.bias"] = np.concatenate([w["init_b"][H:], w["init_b"][:H]])
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


class TanhZSketchRNN(SketchRNN):
    """A Magenta VAE of version < 6: sketch-rnn-js (`get_init_state_from_latent_vector`) squashes
    a given z with tanh before the initial-state projection, so our `decoder_init` graph does too.
    The decoder input keeps the raw z, as in the JS `update()`."""

    def init_state(self, z: torch.Tensor | None, batch: int | None = None) -> torch.Tensor:
        return super().init_state(None if z is None else torch.tanh(z), batch)


def to_sketchrnn(mm: MagentaModel) -> SketchRNN:
    """A SketchRNN (cell "lstm", eval mode) holding the Magenta model's weights exactly."""
    hp = HParams(
        conditional=mm.conditional,
        cell="lstm",
        dec_size=mm.dec_size,
        num_mixture=mm.num_mixture,
        max_seq_len=mm.max_seq_len,
        recurrent_dropout=1.0,
        enc_size=mm.enc_size if mm.conditional else HParams.enc_size,
        z_size=mm.z_size if mm.conditional else HParams.z_size,
        note=f"imported from Magenta sketch-rnn-js {mm.source} (version {mm.version})",
    )
    cls = TanhZSketchRNN if mm.conditional and mm.version < 6 else SketchRNN
    model = cls(hp)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict(mm).items()}, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# start token: the one under which real drawings are more likely

START_TOKENS: dict[str, tuple[float, ...]] = {
    "paper": (0.0, 0.0, 1.0, 0.0, 0.0),
    "zeros": (0.0, 0.0, 0.0, 0.0, 0.0),
}


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
    model: SketchRNN, sketches: list[np.ndarray], start: tuple[float, ...], seed: int = 0
) -> float:
    """L_R = L_s + L_p (paper Eq. 9, over N_max = the model's max_seq_len) of normalised
    sketches, with `start` as the first decoder input instead of S_0; lower is more likely."""
    batch, lengths = strokes.to_batch(sketches, model.hp.max_seq_len)
    batch[:, 0] = start
    with torch.no_grad():
        losses = model(
            torch.from_numpy(batch), torch.from_numpy(lengths), torch.Generator().manual_seed(seed)
        )
    return float(losses.lr)


def choose_start_token(
    model: SketchRNN, sketches: list[np.ndarray]
) -> tuple[tuple[float, ...], dict[str, float]]:
    """The start token ((0,0,1,0,0) of the paper, or the zeros of the legacy sketch-rnn-js
    `generate()`) under which `sketches` have the lower L_R, and L_R under each."""
    losses = {name: reconstruction_loss(model, sketches, token) for name, token in START_TOKENS.items()}
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
    which they are more likely (else zeros, which won on every class measured). `checkpoint`: also save our .safetensors.
    Imported models sample with the sketch-rnn-js temperature rule ("js"), as their authors did.
    """
    say = progress or (lambda _: None)
    mm = read_magenta(path)
    say(
        f"read {mm.source}: {mm.name}, {'vae' if mm.conditional else 'decoder-only'}, version {mm.version}, "
        f"H {mm.dec_size}, M {mm.num_mixture}"
        + (f", Nz {mm.z_size}, encoder {mm.enc_size}" if mm.conditional else "")
    )
    model = to_sketchrnn(mm)
    metrics: dict[str, Any] = {
        f"magenta_{k}": mm.info[k] for k in ("r_loss", "kl_loss", "training_size") if k in mm.info
    }
    # Without drawings to measure, the legacy sketch-rnn-js zeros: real QuickDraw drawings were more
    # likely under them than under the paper's S_0 for all 8 classes measured (owl, cat, face,
    # mosquito, pig, sheep, bear, flamingo; flamingo breaks visibly with S_0).
    start = START_TOKENS["zeros"]
    if drawings is not None:
        sketches = quickdraw_sketches(drawings, mm.max_seq_len)
        start, losses = choose_start_token(model, sketches)
        metrics["start_token_lr"] = {"drawings": Path(drawings).name, "n": len(sketches), **losses}
        say(
            f"start token {list(start)}: L_R of {len(sketches)} drawings "
            + ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
        )
    info = model_info(
        model,
        name or mm.name,
        mm.scale_factor,
        mm.max_seq_len,
        start_token=start,
        temperature_rule="js",
        source=source or mm.source,
        license=LICENSE,
        metrics=metrics,
    )
    info, diffs = export_model(model, info, out_dir, fp16=fp16, progress=progress)
    if checkpoint is not None:  # after the export: a model that failed its checks is not saved
        meta = {k: v for k, v in dataclasses.asdict(info).items() if k in CHECKPOINT_META}
        meta["init_tanh_z"] = isinstance(model, TanhZSketchRNN)
        save_checkpoint(checkpoint, model, model.hp, meta)
        say(f"wrote {checkpoint}")
    return info, diffs
