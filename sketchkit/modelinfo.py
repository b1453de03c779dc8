"""`model.json`: what a client needs to know about an exported model, and nothing it must guess."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sketchkit.errors import ModelError
from sketchkit.graphs import graphs_for
from sketchkit.io import atomic_write

FORMAT = "sketchkit-onnx"
VERSION = 1


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str  # "vae" | "decoder-only"
    cell: str  # "lstm" | "layer_norm" | "hyper"
    dec_size: int
    num_mixture: int
    state_size: int
    scale_factor: float
    max_seq_len: int
    enc_size: int = 0
    z_size: int = 0
    start_token: tuple[float, ...] = (0.0, 0.0, 1.0, 0.0, 0.0)
    temperature_rule: str = "eq8"  # default rule for this model: "eq8" (paper) or "js"
    precision: str = "float32"
    source: str = ""
    license: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # graph name -> file name
    format: str = FORMAT
    version: int = VERSION

    @property
    def conditional(self) -> bool:
        return self.kind == "vae"

    @property
    def sizes(self) -> dict[str, int]:
        """Values of the symbolic dims in `sketchkit.graphs`."""
        return {"Nz": self.z_size, "S": self.state_size, "P": 6 * self.num_mixture + 3}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def save(self, directory: str | os.PathLike[str]) -> None:
        with atomic_write(Path(directory) / "model.json", "w") as f:
            f.write(self.to_json() + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if d.get("format") != FORMAT:
            raise ModelError(f"not a sketchkit model.json (format {d.get('format')!r})")
        if unknown:
            raise ModelError(f"model.json has unknown fields: {', '.join(sorted(unknown))}")
        try:
            d = dict(d, start_token=tuple(d.get("start_token", (0, 0, 1, 0, 0))))
            info = cls(**d)
        except TypeError as e:
            raise ModelError(f"model.json: {e}") from None
        if info.kind not in ("vae", "decoder-only"):
            raise ModelError(f"model.json: unknown kind {info.kind!r}")
        return info

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ModelInfo:
        path = Path(directory) / "model.json"
        if not path.is_file():
            raise ModelError(f"{directory}: not a model directory (no model.json)")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelError(f"{path}: corrupt JSON ({e})") from None
        if not isinstance(d, dict):
            raise ModelError(f"{path}: expected a JSON object")
        info = cls.from_dict(d)
        for g in graphs_for(info.kind):
            f = info.files.get(g.name)
            if not f or not (Path(directory) / f).is_file():
                raise ModelError(f"{directory}: missing graph file for {g.name!r}")
        return info
