"""The training previews sample with the client's engine through `sketchkit.zoo.runtime_torch`: the shipped
sheep checkpoint in torch steps like its exported graphs, and `sketchkit.zoo.train.sample` is the engine's
sketches (normalised units) for the generator's seed."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the train extra (torch)")

from sketchkit.hub import resolve  # noqa: E402
from sketchkit.runtimes.onnx import OnnxRuntime  # noqa: E402
from sketchkit.sampling import Sampler, SamplingOptions  # noqa: E402
from sketchkit.zoo import checkpoint  # noqa: E402
from sketchkit.zoo.runtime_torch import TorchRuntime  # noqa: E402
from sketchkit.zoo.train import sample  # noqa: E402


@pytest.fixture(scope="module")
def sheep_model():
    model, _, _ = checkpoint.load(resolve("sheep") / "sheep.safetensors")
    return model


def test_torch_runtime_steps_like_the_exported_graphs(sheep_model):
    onnx = OnnxRuntime(resolve("sheep"))
    torch_rt = TorchRuntime(sheep_model)
    assert torch_rt.info.dims.state_size == onnx.info.dims.state_size and torch_rt.info.scale_factor == 1.0
    z = np.random.default_rng(0).standard_normal((3, onnx.info.dims.z_size)).astype(np.float32)
    prev = np.tile(np.float32([0, 0, 1, 0, 0]), (3, 1))
    s_torch, s_onnx = torch_rt.init_state(z, 3), onnx.init_state(z, 3)
    for _ in range(3):
        (p_torch, s_torch), (p_onnx, s_onnx) = torch_rt.step(prev, z, s_torch), onnx.step(prev, z, s_onnx)
        np.testing.assert_allclose(p_torch, p_onnx, rtol=1e-5, atol=1e-4)  # parameters reach ~11
    sketches = [np.float32([[1, 2, 0], [3, 4, 1]])] * 2
    np.testing.assert_allclose(
        torch_rt.encode(*_batch(sketches, onnx))[0], onnx.encode(*_batch(sketches, onnx))[0], atol=1e-4
    )


def _batch(sketches, onnx):
    from sketchkit import strokes

    lengths = np.array([len(s) for s in sketches], np.int64)
    batch = np.stack([strokes.to_stroke5(strokes.normalize(s, onnx.info.scale_factor), 2) for s in sketches])
    return batch, lengths


def test_training_previews_are_the_engines_sketches(sheep_model):
    out = sample(sheep_model, 4, tau=0.5, generator=torch.Generator().manual_seed(7))
    want = Sampler(TorchRuntime(sheep_model)).generate(4, options=SamplingOptions(tau=0.5, seed=7, temperature_rule="eq8"))
    assert len(out) == 4 and all(np.array_equal(a, b) for a, b in zip(out, want, strict=True))
    assert all(1 <= len(s) <= 250 and s[-1, 2] == 1 for s in out)
    # normalised units: offsets of order 1, not pixels
    assert 0.05 < np.abs(np.concatenate(out)[:, :2]).mean() < 5
