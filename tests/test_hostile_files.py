"""Hostile files and values, round 3 (issue 25, item 6 and the LOW items on recipes and resume
state): a dataset path that is a device, a FIFO or a symlink to one; an .npz whose members
claim more than a machine holds; recipe values no run can hold (nested 100,000 deep, batch_size
1e10, max_seq_len 1e9, seed 2**128, w_kl 1e308, num_samples 1e8); a `last.safetensors` that lies
(tests/test_train.py covers the resume checks on real training runs). Each ends in one line and
exit 1, with peak memory bounded where memory was the fault."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
from test_hostile import cli, one_line, peak_rss

from sketchkit import datasets
from sketchkit.errors import DataError

MB = 1 << 20


@pytest.fixture
def devices(tmp_path: Path) -> dict[str, Path]:
    """/dev/zero as itself, behind an .npz symlink, and a FIFO with no writer named .npz."""
    (tmp_path / "zero.npz").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo.npz")
    (tmp_path / "zero.ndjson").symlink_to("/dev/zero")
    return {"symlink": tmp_path / "zero.npz", "fifo": tmp_path / "fifo.npz", "ndjson": tmp_path / "zero.ndjson"}


@pytest.mark.parametrize("which", ["symlink", "fifo", "ndjson"])
@pytest.mark.parametrize("command", ["info", "render", "reconstruct"])
def test_a_device_or_fifo_dataset_is_refused_unread(tmp_path: Path, devices, which: str, command: str) -> None:
    """Issue 25, item 6 (on b401ed7 `data info x.npz -> /dev/zero` grew to 6-9 GB; a FIFO hung)."""
    path = devices[which]
    args = {"info": ("data", "info", path), "render": ("render", path, "-o", tmp_path / "out.png"),
            "reconstruct": ("reconstruct", "--data", path)}[command]  # fmt: skip
    code, err, rss = peak_rss(*args)
    kind = "a FIFO" if which == "fifo" else "a character device"
    assert f"{path}: not a regular file ({kind}); datasets are read from regular files only" in one_line(code, err)
    assert rss < 400 * MB, rss
    assert not (tmp_path / "out.png").exists()


def test_the_loader_refuses_devices_sizes_and_member_totals(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(DataError, match="not a regular file \\(a character device\\)"):
        datasets.load_npz("/dev/zero")
    with pytest.raises(DataError, match="not a regular file \\(a directory\\)"):
        datasets.read_ndjson(tmp_path)
    big = tmp_path / "big.ndjson"
    with open(big, "wb") as f:  # sparse: 5 GiB claimed, nothing written
        f.truncate(5 << 30)
    with pytest.raises(DataError, match="over the .*-byte cap for a dataset"):
        datasets.read_ndjson(big)
    # many members, each under the member cap, together over the total cap: refused from the directory
    monkeypatch.setattr(datasets, "MAX_NPZ_TOTAL_BYTES", 3 * MB)
    many = tmp_path / "many.npz"
    with zipfile.ZipFile(many, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(4):
            z.writestr(f"m{i}.npy", b"\0" * MB)
    with pytest.raises(DataError, match="members inflate to 4194304 bytes, over the 3145728-byte cap"):
        datasets.load_npz_arrays(many)


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('dataset = ["zero.npz"]\n', "/dev/zero: not a regular file (a character device)"),
        ('dataset = ["data.npz"]\nx = ' + "[" * 100_000 + "]" * 100_000 + "\n", "invalid TOML (nested too deeply)"),
        ('dataset = ["data.npz"]\nbatch_size = 10_000_000_000\n', "batch_size must be <= 10000"),
        ('dataset = ["data.npz"]\nmax_seq_len = 1_000_000_000\n', "max_seq_len must be <= 10000"),
        ('dataset = ["data.npz"]\nnum_samples = 100_000_000\n', "num_samples must be <= 1000"),
        (f'dataset = ["data.npz"]\nseed = {2**128}\n', "seed must be <= 9.22337e+18"),
        ('dataset = ["data.npz"]\nw_kl = 1e308\n', "w_kl must be <= 1000"),
        (f'dataset = ["data.npz"]\nw_kl = {10**400}\n', "hyperparameter w_kl: too large (an integer past 1e308)"),
    ],
    ids=["dataset-device", "nested", "batch_size", "max_seq_len", "num_samples", "seed", "w_kl", "w_kl-int"],
)
def test_hostile_recipe_values_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    """Issue 25 (LOW) and item 6: on b401ed7 these were tracebacks, GBs (num_samples 1e8 grew past
    3 GB), or `Infinity` in metrics.jsonl (w_kl 1e308)."""
    pytest.importorskip("torch", reason="training needs the train extra")
    (tmp_path / "zero.npz").symlink_to("/dev/zero")
    code, err, rss = peak_rss("train", _recipe(tmp_path, text), "--out", tmp_path / "run")
    assert message in one_line(code, err)
    assert rss < 1000 * MB, rss
    if "dataset" not in message and "/dev/zero" not in message:  # refused before the run starts
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("what", ["fifo", "device", "huge"])
def test_a_recipe_that_is_not_a_small_file_is_one_line(tmp_path: Path, what: str) -> None:
    pytest.importorskip("torch", reason="training needs the train extra")
    path = tmp_path / "recipe.toml"
    if what == "fifo":
        os.mkfifo(path)
    elif what == "device":
        path.symlink_to("/dev/zero")
    else:
        with open(path, "wb") as f:
            f.truncate(2 * MB)
    code, _, err = cli("train", path, "--out", tmp_path / "run", timeout=60)
    line = one_line(code, err)
    assert ("not a regular file" in line) if what != "huge" else ("over the 1048576-byte cap for a recipe" in line), line


# ---- a hostile last.safetensors (issue 25, LOW) -------------------------------------------------
def _hostile_state(run: Path, how: str) -> None:
    """Rewrite run/last.safetensors `how`, with a valid digest (anyone can compute one)."""
    import torch

    from sketchkit.zoo import checkpoint

    path = run / "last.safetensors"
    if how == "sparse-30GB":
        with open(path, "r+b") as f:
            f.truncate(30 << 30)
        return
    tensors, meta = checkpoint.read_tensors(path)
    meta = {k: v for k, v in meta.items() if k not in ("format", "version")}
    adam = next(k for k in tensors if k.startswith("train.adam.") and k.endswith(".exp_avg"))
    weight = next(k for k in tensors if not k.startswith("train."))
    if how == "adam-shape":
        tensors[adam] = torch.zeros(tensors[adam].numel() + 1)
    elif how == "adam-step-nan":
        tensors[adam.replace(".exp_avg", ".step")] = torch.tensor(float("nan"))
    elif how == "step-negative":
        meta["step"] = -5
    elif how == "step-huge":
        meta["step"] = 10**30
    elif how == "best-text":
        meta["best"] = {"loss": "low"}
    elif how == "weight-shape":
        tensors[weight] = torch.zeros(*tensors[weight].shape[:-1], tensors[weight].shape[-1] + 1)
    elif how == "extra-tensor":
        tensors["train.backdoor"] = torch.zeros(3)
    elif how == "rng":
        tensors["train.rng.torch"] = torch.zeros(7, dtype=torch.uint8)
    checkpoint.write_tensors(path, tensors, meta)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("adam-shape", "has shape"),
        ("adam-step-nan", "is not a finite step count"),
        ("step-negative", "step -5 is not a step count in [0, 1000000000]"),
        ("step-huge", f"step {10**30} is not a step count"),
        ("best-text", "is not a table of numbers with a loss"),
        ("weight-shape", "has shape"),
        ("extra-tensor", "unexpected tensor 'train.backdoor'"),
        ("rng", "an RNG state torch refuses"),
        ("sparse-30GB", "over the 2147483648-byte cap for a checkpoint"),
    ],
)
def test_a_hostile_resume_state_is_one_line(sheep, tmp_path: Path, how: str, message: str) -> None:
    """On b401ed7: tracebacks from Adam or load_state_dict, a run that did nothing (step 10**30),
    or 30 GB read into memory; now one line, exit 1, the run directory as it was."""
    pytest.importorskip("torch", reason="training needs the train extra")
    from tiny_recipe import tiny

    from sketchkit.datasets import Dataset, save_npz
    from sketchkit.zoo.train import train

    few = [s for s in sheep.train if len(s) <= 40][:8]
    save_npz(tmp_path / "eight.npz", Dataset(few, few, few))
    recipe = tiny(tmp_path / "eight.npz", num_steps=2, eval_every=2)
    recipe.save_toml(tmp_path / "tiny.toml")
    train(recipe, tmp_path / "run", progress=False)
    _hostile_state(tmp_path / "run", how)
    before = {p.name: p.stat().st_size for p in (tmp_path / "run").iterdir() if p.is_file()}
    code, err, rss = peak_rss("train", tmp_path / "tiny.toml", "--out", tmp_path / "run", "--steps", 4)
    assert message in one_line(code, err)
    assert rss < 1000 * MB, rss
    assert {p.name: p.stat().st_size for p in (tmp_path / "run").iterdir() if p.is_file()} == before
