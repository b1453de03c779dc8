"""Magenta's sketch-rnn-js JSON models: the file format, read and checked with numpy alone.

The format (../shared/data/README.md): a JSON list `[info, shapes, blobs]`; each blob is base64 of
little-endian int16 and weight = int16 / 32767 * 10. Decoder-only ("gen") files hold 5 blobs, VAE
files 17 (encoder first). The LSTMs are TensorFlow's: gates packed (i, j, f, o) along 4H with the
forget bias +1 added inside the cell, weights stored [in, 4H]. A VAE's initial decoder state is
tanh(W z + b) split (c, h), with tanh on z first for files of version < 6.

Both importers read files through `read_magenta` and describe the result with `magenta_info`:
`sketchkit.magenta_onnx` (numpy + onnx, the default) and `sketchkit.export.magenta` (PyTorch, the reference).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sketchkit.dims import ModelDims
from sketchkit.errors import ModelError
from sketchkit.modelinfo import START_TOKENS, ModelInfo

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
    def dims(self) -> ModelDims:
        """What the model is, read from the weights' shapes. Magenta's mode 2 ("gen") is our
        kind "decoder-only". sketch-rnn-js squashes z with tanh before the initial-state
        projection in files of version < 6 (`get_init_state_from_latent_vector`; the decoder
        input keeps the raw z): `tanh_z`."""
        vae = not (self.info["mode"] == 2 or self.info["mode"] == "gen")
        w = self.weights
        return ModelDims(
            kind="vae" if vae else "decoder-only",
            cell="lstm",
            enc_size=w["enc_fw_W_hh"].shape[0] if vae else 0,
            dec_size=w["dec_W_hh"].shape[0],
            z_size=w["init_w"].shape[0] if vae else 0,
            num_mixture=(w["dec_output_b"].shape[0] - 3) // 6,
            tanh_z=vae and self.version < 6,
        )

    @property
    def version(self) -> int:
        return int(self.info.get("version", 0))

    @property
    def name(self) -> str:
        return str(self.info["name"])

    @property
    def summary(self) -> str:
        """One line for progress output: kind, version and sizes."""
        d = self.dims
        sizes = f", Nz {d.z_size}, encoder {d.enc_size}" if d.vae else ""
        return f"{self.name}, {d.kind}, version {self.version}, H {d.dec_size}, M {d.num_mixture}{sizes}"

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
    except RecursionError:  # a model is three levels deep; a bomb is 200,000
        raise ModelError(f"{path}: not a Magenta model (JSON nested too deeply)") from None
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
# TF's LSTM in PyTorch's layout (both importers' graphs compute the cell this way)

FORGET_BIAS = 1.0  # TF's LSTMCell adds it to f inside the cell


def torch_lstm(
    w_xh: np.ndarray, w_hh: np.ndarray, bias: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A TF LSTM (gates (i, j, f, o), W_xh [in, 4H], W_hh [H, 4H], forget bias inside the cell)
    as nn.LSTM lays it out: W_ih [4H, in], W_hh [4H, H], gates (i, f, g=j, o), and one bias with
    the forget bias folded into b_f."""

    def reorder(a: np.ndarray) -> np.ndarray:
        i, j, f, o = np.split(a, 4, axis=-1)
        return np.concatenate([i, f, j, o], axis=-1)

    H = w_hh.shape[0]
    b = reorder(bias).copy()
    b[H : 2 * H] += FORGET_BIAS
    return reorder(w_xh).T, reorder(w_hh).T, b


# ---------------------------------------------------------------------------------------------
# what an imported model's model.json says

# Without drawings to measure, the legacy sketch-rnn-js zeros: real QuickDraw drawings were more
# likely under them than under the paper's S_0 for all 8 classes measured (owl, cat, face,
# mosquito, pig, sheep, bear, flamingo; flamingo breaks visibly with S_0), and over the 40 Magenta
# models their drawings are the more real (issue 28, benchmarks/RESULTS.md: mean CAS recall 0.27
# vs 0.23, 12.5 % vs 21.1 % never ending at tau 0.3; rain, lantern and toothbrush mostly never end
# from S_0). `--start` (generate, import-magenta) picks either.
DEFAULT_START = START_TOKENS["zeros"]


def magenta_info(
    mm: MagentaModel,
    name: str | None = None,
    start_token: tuple[float, ...] = DEFAULT_START,
    source: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> ModelInfo:
    """The model.json of an imported model (precision and files are set by the export). Imported
    models sample with the sketch-rnn-js temperature rule ("js"), as their authors did."""
    published = {f"magenta_{k}": mm.info[k] for k in ("r_loss", "kl_loss", "training_size") if k in mm.info}
    return ModelInfo(
        name=name or mm.name,
        dims=mm.dims,
        scale_factor=mm.scale_factor,
        max_seq_len=mm.max_seq_len,
        start_token=tuple(float(x) for x in start_token),
        temperature_rule="js",
        source=source or mm.source,
        license=LICENSE,
        metrics={**published, **(metrics or {})},
    )
