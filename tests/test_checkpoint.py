"""sketchkit.zoo.checkpoint: one safetensors file that round-trips and refuses anything tampered with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from sketchkit.errors import ModelError  # noqa: E402
from sketchkit.zoo import checkpoint  # noqa: E402
from sketchkit.zoo.config import Recipe  # noqa: E402
from sketchkit.zoo.model import SketchRNN  # noqa: E402

HP = Recipe.of(cell="hyper", enc_size=12, dec_size=16, z_size=6, num_mixture=3, hyper_size=8, hyper_embed=4)
META = {
    "scale_factor": 63.1,
    "max_seq_len": 250,
    "dataset_sha256": "ab" * 32,
    "step": 7,
    "metrics": {"valid": {"lr": -0.5}},
}


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, SketchRNN]:
    torch.manual_seed(0)
    model = SketchRNN(HP.dims)
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, model, HP, META)
    return path, model


def test_round_trip(saved) -> None:
    path, model = saved
    loaded, hp, meta = checkpoint.load(path)
    assert hp == HP
    assert meta["scale_factor"] == 63.1 and meta["step"] == 7 and meta["metrics"]["valid"]["lr"] == -0.5
    assert meta["dataset_sha256"] == "ab" * 32 and meta["max_seq_len"] == 250
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    # no pickle anywhere: the header is plain JSON
    n = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + n])
    assert json.loads(header["__metadata__"]["sketchkit"])["dims"]["cell"] == "hyper"


def test_float16(tmp_path: Path, saved) -> None:
    _, model = saved
    path = tmp_path / "half.safetensors"
    checkpoint.save(path, model, HP, META, dtype=torch.float16)
    loaded, _, meta = checkpoint.load(path)
    assert meta["dtype"] == "float16"
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, atol=2e-3, rtol=1e-3)
    assert path.stat().st_size < 0.6 * saved[0].stat().st_size


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_refuses_a_flipped_weight_bit(saved) -> None:
    path, _ = saved
    _flip(path, path.stat().st_size - 3)
    with pytest.raises(ModelError, match="checksum mismatch"):
        checkpoint.load(path)


def test_refuses_edited_metadata(saved) -> None:
    path, _ = saved
    raw = path.read_bytes()
    edited = raw.replace(b"63.1", b"99.9")  # same length: the file still parses
    assert edited != raw
    path.write_bytes(edited)
    with pytest.raises(ModelError, match="checksum mismatch"):
        checkpoint.load(path)


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_refuses_truncated(saved, cut: float) -> None:
    path, _ = saved
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * cut)])
    with pytest.raises(ModelError, match="not a readable safetensors"):
        checkpoint.load(path)


def test_refuses_garbage_and_missing(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 7)
    with pytest.raises(ModelError):
        checkpoint.load(junk)
    junk.write_bytes(b"PK\x03\x04 a pickle zip pretending to be a checkpoint" * 10)
    with pytest.raises(ModelError):
        checkpoint.load(junk)
    with pytest.raises(ModelError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "absent.safetensors")


def test_refuses_plain_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ModelError, match="not a sketchkit checkpoint"):
        checkpoint.load(path)


def test_refuses_weights_that_do_not_fit_the_config(tmp_path: Path, saved) -> None:
    _, model = saved
    path = tmp_path / "bad.safetensors"
    other = Recipe.of(**{**HP.flat(), "dec_size": 20})  # a consistent hash over inconsistent content
    checkpoint.write_tensors(path, dict(model.state_dict()), {**checkpoint.recipe_meta(other), "dtype": "float32"})
    with pytest.raises(ModelError, match="shape"):
        checkpoint.load(path)


def test_atomic_write_leaves_no_temp_files(tmp_path: Path, saved) -> None:
    _, model = saved
    for _ in range(2):
        checkpoint.save(tmp_path / "a.safetensors", model, HP, META)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "m.safetensors"]


def test_cli_evaluate_reports_a_tampered_file(saved, capsys) -> None:
    from sketchkit.cli import main

    path, _ = saved
    _flip(path, path.stat().st_size - 3)
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(path)])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "checksum mismatch" in err and "Traceback" not in err
