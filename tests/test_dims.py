"""`ModelDims`, the one description of a model's dimensions, and the converters that keep the
version 1 artefacts (flat model.json, `hparams` checkpoints, recipes with `lr`/`recurrent_dropout`)
loading: tested with the shipped sheep files and version 1 forms of them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sketchkit import hub
from sketchkit.dims import ModelDims
from sketchkit.errors import ModelError
from sketchkit.modelinfo import V1_DIMS, VERSION, ModelInfo, upgrade

ROOT = Path(__file__).resolve().parents[1]
SHEEP = ROOT / "zoo" / "models" / "sheep"


def test_sizes_a_model_does_not_have_are_zero() -> None:
    gen = ModelDims(kind="decoder-only", cell="lstm", enc_size=512, z_size=128, dec_size=512, tanh_z=True)
    assert (gen.enc_size, gen.z_size, gen.hyper_size, gen.hyper_embed, gen.tanh_z) == (0, 0, 0, 0, False)
    assert gen.state_size == 1024 and not gen.vae
    hyper = ModelDims(cell="hyper", dec_size=64, hyper_size=16)
    assert hyper.state_size == 2 * 64 + 2 * 16 and hyper.vae


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"kind": "gen"}, "kind must be one of vae, decoder-only"), ({"cell": "gru"}, "unknown cell 'gru'"),
     ({"enc_size": 0}, "enc_size must be an integer in [1, 16384]"), ({"dec_size": True}, "dec_size must be an integer"),
     ({"num_mixture": 10**6}, "num_mixture must be an integer in [1, 256]"), ({"tanh_z": 1}, "tanh_z must be a bool"),
     ({"layers": 2}, "unknown field(s) layers")],
)  # fmt: skip
def test_bad_dims_are_one_line(fields: dict, message: str) -> None:
    with pytest.raises(ModelError, match="^where: ") as e:
        ModelDims.from_dict(fields, "where")
    assert message in str(e.value) and "\n" not in str(e.value)


def as_version_1(raw: dict) -> dict:
    """A model.json as version 1 wrote it: flat sizes and a state_size, no dims (the shipped sheep
    was such a file until issue 21's sheep replaced it; the converter must keep reading them)."""
    v2 = raw if raw["version"] != 1 else upgrade(raw)
    dims = ModelDims.from_dict(v2["dims"])
    flat = {k: v for k, v in v2.items() if k != "dims"} | {k: v2["dims"][k] for k in V1_DIMS}
    return flat | {"version": 1, "state_size": dims.state_size}


def test_a_v1_model_json_loads_as_v2() -> None:
    raw = json.loads((SHEEP / "model.json").read_text())
    info = ModelInfo.load(SHEEP)
    assert info.version == VERSION and info.dims == ModelDims.from_dict(raw["dims"])
    old = ModelInfo.from_dict(as_version_1(raw))
    assert "dims" not in as_version_1(raw) and old == info
    again = ModelInfo.from_dict(json.loads(info.to_json()))  # written as version 2, read back
    assert again == info and json.loads(info.to_json())["dims"]["dec_size"] == info.dims.dec_size


def test_a_v1_state_size_that_disagrees_is_refused() -> None:
    flat = as_version_1(json.loads((SHEEP / "model.json").read_text()))
    s = flat["state_size"]
    assert ModelInfo.from_dict(flat).dims.state_size == s
    with pytest.raises(ModelError, match=f"state_size {s + 88}, but its sizes give {s}"):
        ModelInfo.from_dict(dict(flat, state_size=s + 88))


def test_one_description_everywhere() -> None:
    """model.json, the registry row and (with torch) the checkpoint carry the same dims."""
    info = ModelInfo.load(SHEEP)
    assert ModelDims.from_dict(hub.registry()["models"]["sheep"]["dims"]) == info.dims
    pytest.importorskip("torch", reason="reading the checkpoint needs torch")
    from sketchkit.zoo import checkpoint

    model, recipe, meta = checkpoint.load(SHEEP / "sheep.safetensors")
    assert recipe.dims == model.dims == info.dims
    # a version 1 header (one flat "hparams") says the same through the converter
    v1 = {"version": 1, "hparams": {**dataclasses.asdict(recipe), **recipe.dims.to_dict()}}
    del v1["hparams"]["dims"]
    assert checkpoint.recipe_of(v1).dims == info.dims


def test_old_recipes_load(tmp_path: Path) -> None:
    from sketchkit.zoo.config import Recipe

    old = tmp_path / "old.toml"
    old.write_text(
        'dataset = ["x.npz"]\nconditional = false\ncell = "layer_norm"\ndec_size = 64\n'
        "lr = 3e-3\nlr_decay = 0.999\nmin_lr = 1e-6\nrecurrent_dropout = 0.8\n"
    )
    hp = Recipe.from_toml(old)
    assert hp.dims == ModelDims(kind="decoder-only", cell="layer_norm", dec_size=64)
    assert (hp.learning_rate, hp.learning_rate_decay, hp.min_learning_rate, hp.recurrent_keep_prob) == (
        3e-3, 0.999, 1e-6, 0.8,
    )  # fmt: skip
    new = tmp_path / "new.toml"
    hp.save_toml(new)
    text = new.read_text()
    assert text.startswith("version = 2\n") and "\n[dims]\n" in text and "lr =" not in text
    assert Recipe.from_toml(new) == dataclasses.replace(hp, dataset=[str(tmp_path / "x.npz")])
    for shipped in sorted((ROOT / "zoo" / "recipes").glob("*.toml")):  # old and new ones
        assert Recipe.from_toml(shipped).dims.dec_size >= 256, shipped
