"""`ModelDims`: what a sketch-rnn model *is*, the one frozen description of its dimensions.

whisper's `ModelDimensions`, nanoGPT's `model_args`: the same dataclass travels in every artefact.
A checkpoint's header and a training recipe hold it as `dims` (the recipe adds the optimiser and
data settings, `zoo.config.Recipe`), `model.json` holds it as `dims` (`sketchkit.modelinfo`), and
so does a registry row (`zoo/registry.json`; there only the fields known before download). The
PyTorch model is built from it (`SketchRNN(dims)`), the client and the Triton configs read their
sizes from it. Adding a dimension is one field here plus its use (e.g. `zoo.model.make_cell`):
every artefact writes and reads the dataclass as a whole.

A size the model does not have is 0: a decoder-only model has no encoder (enc_size = z_size = 0),
only the HyperLSTM has a hyper cell (hyper_size, hyper_embed), only an imported Magenta VAE of
version < 6 squashes z (tanh_z). The constructor sets them so, so two descriptions of one model
are equal. No torch, no numpy here.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any

from sketchkit.errors import ModelError

# The model kind, one spelling everywhere: "vae" (encoder + decoder, paper §3) or "decoder-only"
# (no encoder, zero initial state, §3.3). Magenta publishes the two as `<class>.vae.json` and
# `<class>.gen.json`; those suffixes survive only in the zoo names of its files.
KINDS = ("vae", "decoder-only")
CELLS = ("lstm", "layer_norm", "hyper")
# Stated bounds: a model.json (from a download or a Triton server) cannot make the client allocate
# more than these allow. The paper's largest model is H 2048 (HyperLSTM state 2H + 2 x 256).
MAX_SIZE = 1 << 14  # enc_size, dec_size, z_size, hyper sizes, state size
MAX_MIXTURE = 256  # M


@dataclass(frozen=True)
class ModelDims:
    """The paper's A.3 model by default (HyperLSTM decoder of 2048, encoder 512, Nz 128, M 20)."""

    kind: str = "vae"  # "vae" | "decoder-only"
    cell: str = "hyper"  # decoder cell: "lstm" | "layer_norm" | "hyper" (HyperLSTM with layer norm)
    enc_size: int = 512  # hidden size of each direction of the bidirectional LSTM encoder
    dec_size: int = 2048  # decoder hidden size H
    z_size: int = 128  # N_z, latent size
    num_mixture: int = 20  # M, Gaussian mixture components (the output is 6M + 3 wide)
    hyper_size: int = 256  # HyperLSTM: size of the small hyper LSTM
    hyper_embed: int = 32  # HyperLSTM: size of the embeddings that scale the main cell's weights
    tanh_z: bool = False  # Magenta VAE files of version < 6: decoder_init takes tanh(z) (sketch-rnn-js)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModelError(f"dims: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.cell not in CELLS:
            raise ModelError(f"dims: unknown cell {self.cell!r} (choose from {', '.join(CELLS)})")
        if not isinstance(self.tanh_z, bool):
            raise ModelError(f"dims: tanh_z must be true or false, got {self.tanh_z!r}")
        if self.kind == "decoder-only":  # sizes it does not have are 0 (see the module docstring)
            for name in ("enc_size", "z_size"):
                object.__setattr__(self, name, 0)
            object.__setattr__(self, "tanh_z", False)
        if self.cell != "hyper":
            for name in ("hyper_size", "hyper_embed"):
                object.__setattr__(self, name, 0)
        required = {"dec_size", "num_mixture"} | ({"enc_size", "z_size"} if self.vae else set())
        required |= {"hyper_size", "hyper_embed"} if self.cell == "hyper" else set()
        for f in dataclasses.fields(self):
            if f.type == "int":
                high = MAX_MIXTURE if f.name == "num_mixture" else MAX_SIZE
                _int_in(f.name, getattr(self, f.name), 1 if f.name in required else 0, high)

    @property
    def vae(self) -> bool:
        """kind == "vae": the model has an encoder and a z -> initial state projection."""
        return self.kind == "vae"

    @property
    def state_size(self) -> int:
        """S, the width of the packed decoder state: [h | c] (2H), HyperLSTM + [h_hyper | c_hyper]."""
        return 2 * self.dec_size + (2 * self.hyper_size if self.cell == "hyper" else 0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "dims") -> ModelDims:
        """From JSON/TOML: unknown fields and wrong types are one-line ModelErrors."""
        if not isinstance(d, dict):
            raise ModelError(f"{where}: expected an object, got {type(d).__name__}")
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ModelError(f"{where}: unknown field(s) {', '.join(unknown)}")
        for k, v in d.items():
            want = names[k].type
            ok = (
                isinstance(v, str) if want == "str"
                else isinstance(v, bool) if want == "bool"
                else isinstance(v, numbers.Integral) and not isinstance(v, bool)
            )  # fmt: skip
            if not ok:
                raise ModelError(f"{where}: {k} must be {'an integer' if want == 'int' else 'a ' + want}, got {v!r}")
        try:
            values: dict[str, Any] = {k: int(v) if names[k].type == "int" else v for k, v in d.items()}
            return cls(**values)
        except ModelError as e:
            raise ModelError(f"{where}: {str(e).removeprefix('dims: ')}") from None


def _int_in(name: str, v: Any, low: int, high: int) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not low <= int(v) <= high:
        raise ModelError(f"dims: {name} must be an integer in [{low}, {high}], got {v!r}")
