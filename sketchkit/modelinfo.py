"""`model.json`: what a client needs to know about an exported model, and nothing it must guess."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sketchkit.dims import MAX_SIZE, ModelDims
from sketchkit.errors import ModelError, SketchkitError
from sketchkit.graphs import graphs_for
from sketchkit.io import atomic_write
from sketchkit.names import check_name, is_valid_name

FORMAT = "sketchkit-onnx"
VERSION = 2  # 2: the model's dimensions as one `dims` object; 1 (flat sizes) is converted on load
# Stated bounds (the sizes' own are in `sketchkit.dims`): a model.json from a download or a Triton
# server cannot make the client allocate more than these allow.
MAX_SEQ_LEN = 10_000  # N_max
MAX_JSON_BYTES = 1 << 20  # model.json itself
V1_DIMS = ("kind", "cell", "enc_size", "dec_size", "z_size", "num_mixture")  # flat in version 1
RULES = ("eq8", "js")
# the two first inputs S_0 in use: the paper's (and @magenta/sketch 0.2's), and the legacy sketch-rnn-js zeros
START_TOKENS: dict[str, tuple[float, ...]] = {
    "paper": (0.0, 0.0, 1.0, 0.0, 0.0),
    "zeros": (0.0, 0.0, 0.0, 0.0, 0.0),
}
PRECISIONS = ("float32", "float16")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    dims: ModelDims  # what the model is: kind, cell, sizes, M (`sketchkit.dims`)
    scale_factor: float
    max_seq_len: int
    start_token: tuple[float, ...] = (0.0, 0.0, 1.0, 0.0, 0.0)
    temperature_rule: str = "eq8"  # default rule for this model: "eq8" (paper) or "js"
    precision: str = "float32"
    source: str = ""
    license: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # graph name -> file name
    format: str = FORMAT
    version: int = VERSION

    def __post_init__(self) -> None:
        validate(self)

    @property
    def sizes(self) -> dict[str, int]:
        """Values of the symbolic dims in `sketchkit.graphs`."""
        return {"Nz": self.dims.z_size, "S": self.dims.state_size, "P": 6 * self.dims.num_mixture + 3}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def save(self, directory: str | os.PathLike[str]) -> None:
        with atomic_write(Path(directory) / "model.json", "w") as f:
            f.write(self.to_json() + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        if not isinstance(d, dict):
            raise ModelError(f"model.json: expected a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise ModelError(f"not a sketchkit model.json (format {d.get('format')!r})")
        d = upgrade(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ModelError(f"model.json has unknown fields: {', '.join(sorted(unknown))}")
        start = d.get("start_token", (0, 0, 1, 0, 0))
        if not isinstance(start, (list, tuple)):
            raise ModelError(f"model.json: start_token must be a list of 5 numbers, got {start!r}")
        dims = ModelDims.from_dict(d.get("dims"), "model.json: dims")
        try:
            info = cls(**dict(d, dims=dims, start_token=tuple(start)))
        except TypeError as e:
            raise ModelError(f"model.json: {e}") from None
        return info

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ModelInfo:
        path = Path(directory) / "model.json"
        try:
            if not path.is_file():
                raise ModelError(f"{directory}: not a model directory (no model.json)")
            if path.stat().st_size > MAX_JSON_BYTES:
                raise ModelError(f"{path}: over {MAX_JSON_BYTES} bytes; not a model.json")
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ModelError(f"{path}: corrupt JSON ({str(e).splitlines()[0]})") from None
        except OSError as e:
            raise ModelError(f"{path}: cannot read ({e.strerror or e})") from None
        if not isinstance(d, dict):
            raise ModelError(f"{path}: expected a JSON object")
        try:
            info = cls.from_dict(d)
        except ModelError as e:
            raise ModelError(f"{path}: {str(e).removeprefix('model.json: ')}") from None
        for g in graphs_for(info.dims.kind):
            graph_path(directory, info, g.name)
        return info


def upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """A model.json of an older version as the current one. Version 1 had the dimensions flat
    (and state_size, now derived): they move into `dims`, and a state_size that disagrees with
    them is refused."""
    if d.get("version") != 1:
        return d
    d = dict(d, version=VERSION)
    flat = {k: d.pop(k) for k in V1_DIMS if k in d}
    state_size = d.pop("state_size", None)
    dims = ModelDims.from_dict(flat, "model.json (version 1)")
    if state_size is not None and state_size != dims.state_size:
        raise ModelError(f"model.json (version 1): state_size {state_size!r}, but its sizes give {dims.state_size}")
    d["dims"] = dims.to_dict()
    return d


def graph_path(directory: str | os.PathLike[str], info: ModelInfo, graph: str) -> Path:
    """The file of one graph, resolved (symlinks too) and checked to lie inside `directory`."""
    root = Path(directory).resolve()
    name = info.files.get(graph)
    if not name:
        raise ModelError(f"{directory}: model.json names no file for the graph {graph!r}")
    path = (root / name).resolve()
    if path.parent != root:
        raise ModelError(f"{directory}: the {graph} file {name!r} lies outside the model directory")
    if not path.is_file():
        raise ModelError(f"{directory}: missing graph file for {graph!r} ({name})")
    return path


def _int_in(info: ModelInfo, name: str, low: int, high: int) -> None:
    v = getattr(info, name)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not low <= int(v) <= high:
        raise ModelError(f"model.json: {name} must be an integer in [{low}, {high}], got {v!r}")


def _one_of(info: ModelInfo, name: str, choices: tuple[str, ...]) -> None:
    if getattr(info, name) not in choices:
        raise ModelError(f"model.json: {name} must be one of {', '.join(choices)}, got {getattr(info, name)!r}")


def validate(info: ModelInfo) -> None:
    """The one check of a model.json, wherever it comes from (a model directory, the zoo, a
    Triton server's config): types, sizes within the stated bounds, a finite positive scale
    factor, and graph files that are plain names (`graph_path` also resolves them)."""
    if not isinstance(info.name, str) or not is_valid_name(info.name.replace("/", "-")):
        try:  # a zoo name may hold '/' (magenta/owl.gen): each part follows the rule
            check_name(str(info.name))
        except SketchkitError as e:
            raise ModelError(f"model.json: {e}") from None
    if not isinstance(info.dims, ModelDims):
        raise ModelError(f"model.json: dims must be a ModelDims, got {type(info.dims).__name__}")
    _one_of(info, "temperature_rule", RULES)
    _one_of(info, "precision", PRECISIONS)
    if info.format != FORMAT or info.version != VERSION:
        raise ModelError(f"model.json: unsupported format {info.format!r} version {info.version!r}")
    if info.dims.state_size > MAX_SIZE:
        raise ModelError(f"model.json: the decoder state ({info.dims.state_size} wide) is over {MAX_SIZE}")
    _int_in(info, "max_seq_len", 1, MAX_SEQ_LEN)
    sf = info.scale_factor
    if isinstance(sf, bool) or not isinstance(sf, numbers.Real) or not (math.isfinite(sf) and sf > 0):
        raise ModelError(f"model.json: scale_factor must be a finite number > 0, got {sf!r}")
    start = info.start_token
    if len(start) != 5 or not all(
        isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) for x in start
    ):
        raise ModelError(f"model.json: start_token must be 5 finite numbers, got {list(start)!r}")
    for name in ("source", "license"):
        if not isinstance(getattr(info, name), str):
            raise ModelError(f"model.json: {name} must be a string")
    if not isinstance(info.metrics, dict) or not isinstance(info.files, dict):
        raise ModelError("model.json: metrics and files must be objects")
    for graph, file in info.files.items():
        if not isinstance(file, str) or not is_valid_name(file):
            raise ModelError(
                f"model.json: the {graph} file must be a plain file name in the model directory, got {file!r}"
            )


def parse_start(text: str) -> tuple[float, ...]:
    """`--start`: a name in START_TOKENS or five comma-separated numbers."""
    if text in START_TOKENS:
        return START_TOKENS[text]
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 5 or not all(math.isfinite(x) for x in values):
        raise ModelError(f"--start: expected {' or '.join(START_TOKENS)} or five numbers a,b,c,d,e, got {text!r}")
    return values
