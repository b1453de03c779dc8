"""The PyTorch Magenta importer (the reference for `sketchkit.magenta_onnx`, and the one that
measures start tokens) against an independent numpy implementation of sketch-rnn-js's model
(tests/magenta_reference.py), at three levels: step parameters, greedy strokes, pictures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from magenta_reference import JsModel, random_stroke5, rel_diff, write_vae_json  # noqa: E402

from sketchkit.cli import main  # noqa: E402
from sketchkit.export import magenta  # noqa: E402
from sketchkit.modelinfo import ModelInfo  # noqa: E402
from sketchkit.runtimes.onnx import OnnxRuntime  # noqa: E402
from sketchkit.sampling import Sampler, SamplingOptions  # noqa: E402

pytestmark = pytest.mark.torch

# ---------------------------------------------------------------------------------------------
# parity with the reference: step parameters, then greedy strokes


@pytest.fixture(scope="module")
def owl_dir(tmp_path_factory: pytest.TempPathFactory, magenta_gen_dir: Path, quickdraw_dir: Path) -> Path:
    """owl.gen.json imported through the CLI, choosing its start token from real owls."""
    out = tmp_path_factory.mktemp("import") / "owl"
    main([
        "import-magenta", str(magenta_gen_dir / "owl.gen.json"), str(out),
        "--drawings", str(quickdraw_dir / "simplified-25" / "owl.ndjson"),
    ])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def cat_dir(tmp_path_factory: pytest.TempPathFactory, magenta_gen_dir: Path) -> Path:
    """cat.gen.json imported through the API under another name, without drawings."""
    out = tmp_path_factory.mktemp("import") / "cat"
    magenta.import_magenta(magenta_gen_dir / "cat.gen.json", out, name="kitty")
    return out


def test_gen_model_matches_reference(owl_dir: Path, magenta_gen_dir: Path) -> None:
    path = magenta_gen_dir / "owl.gen.json"
    ref = JsModel(json.loads(path.read_text()))
    rt = OnnxRuntime(owl_dir)
    model = magenta.to_sketchrnn(magenta.read_magenta(path))
    rng = np.random.default_rng(0)
    B = 4
    h = c = np.zeros((B, ref.H))
    state = rt.init_state(None, B)
    torch_state = torch.zeros(B, 2 * ref.H)
    worst_onnx = worst_torch = 0.0
    for _ in range(50):  # teacher-forced chain of random points; each side keeps its own state
        prev = random_stroke5(rng, B)
        want, h, c = ref.step(prev.astype(np.float64), None, h, c)
        params, state = rt.step(prev, None, state)
        with torch.no_grad():
            p_torch, torch_state = model.step(torch.from_numpy(prev), None, torch_state)
        worst_onnx = max(worst_onnx, rel_diff(params, want))  # parameters reach ~16 here
        worst_torch = max(worst_torch, rel_diff(p_torch.numpy(), want))
    assert worst_onnx < 1e-4 and worst_torch < 1e-4, (worst_onnx, worst_torch)


def _greedy_reference(ref: JsModel, start: np.ndarray, scale: float, max_len: int) -> np.ndarray:
    """The JS loop with the most likely point at each step: argmax pi, its mean, argmax pen."""
    M = (ref.out_b.shape[0] - 3) // 6
    h = c = np.zeros((1, ref.H))
    x, out = start[None].astype(np.float64), []
    for _ in range(max_len):
        p, h, c = ref.step(x, None, h, c)
        p = p[0]
        k, pen = int(np.argmax(p[3 : 3 + M])), int(np.argmax(p[:3]))
        if pen == 2:
            break
        dx, dy = p[3 + M + k], p[3 + 2 * M + k]
        out.append([dx * scale, dy * scale, float(pen == 1)])
        x = np.array([[dx, dy, pen == 0, pen == 1, pen == 2]], np.float64)
    return np.array(out).reshape(-1, 3)


def test_greedy_strokes_match_reference(cat_dir: Path, magenta_gen_dir: Path) -> None:
    ref = JsModel(json.loads((magenta_gen_dir / "cat.gen.json").read_text()))
    info = ModelInfo.load(cat_dir)
    want = _greedy_reference(ref, np.array(info.start_token), info.scale_factor, 60)
    (got,) = Sampler(OnnxRuntime(cat_dir)).generate(1, options=SamplingOptions(greedy=True, max_len=60))
    assert len(got) == len(want) > 20
    np.testing.assert_array_equal(got[:-1, 2], want[:-1, 2])  # the sampler ends the last stroke
    np.testing.assert_allclose(got[:, :2], want[:, :2], rtol=1e-5, atol=1e-2)  # pixels, up to ~400


@pytest.mark.parametrize("version", [6, 2])
def test_vae_matches_reference(tmp_path: Path, version: int) -> None:
    path = write_vae_json(tmp_path / f"v{version}.vae.json", version)
    ref = JsModel(json.loads(path.read_text()))
    info, diffs = magenta.import_magenta(path, tmp_path / "vae")
    assert info.dims.kind == "vae" and (info.dims.dec_size, info.dims.enc_size, info.dims.z_size, info.dims.state_size) == (
        24,
        12,
        6,
        48,
    )
    assert max(diffs.values()) <= 1e-4
    rt = OnnxRuntime(tmp_path / "vae")
    rng = np.random.default_rng(1)
    # encoder: two sketches of different lengths in one padded batch
    seqs = [random_stroke5(rng, 9), random_stroke5(rng, 5)]
    batch = np.zeros((2, 9, 5), np.float32)
    batch[0], batch[1, :5], batch[1, 5:, 4] = seqs[0], seqs[1], 1.0
    mu, presig = rt.encode(batch, np.array([9, 5]))
    for i, s in enumerate(seqs):
        want_mu, want_presig = ref.encode(s.astype(np.float64))
        np.testing.assert_allclose(mu[i], want_mu, atol=1e-4)
        np.testing.assert_allclose(presig[i], want_presig, atol=1e-4)
    # initial state (tanh on z first for version < 6) and 30 chained steps with z
    z = rng.standard_normal((3, 6)).astype(np.float32)
    h, c = ref.init_state(z.astype(np.float64))
    state = rt.init_state(z, 3)
    np.testing.assert_allclose(state, np.concatenate([h, c], 1), atol=1e-5)
    for _ in range(30):
        prev = random_stroke5(rng, 3)
        want, h, c = ref.step(prev.astype(np.float64), z.astype(np.float64), h, c)
        params, state = rt.step(prev, z, state)
        np.testing.assert_allclose(params, want, atol=1e-4)
    # the model also round-trips through our checkpoint, keeping the version < 6 tanh
    from sketchkit.export.onnx import export_checkpoint

    magenta.import_magenta(path, tmp_path / "vae2", checkpoint=tmp_path / "vae.safetensors")
    export_checkpoint(tmp_path / "vae.safetensors", tmp_path / "vae3")
    again = OnnxRuntime(tmp_path / "vae3")
    np.testing.assert_allclose(again.init_state(z, 3), rt.init_state(z, 3), atol=1e-6)
    assert ModelInfo.load(tmp_path / "vae3").temperature_rule == "js"


# ---------------------------------------------------------------------------------------------
# the imported model directory, start token, pictures


def test_import_writes_contract_model_dir(owl_dir: Path) -> None:
    import onnx

    out = owl_dir
    info = ModelInfo.load(out)
    assert (info.name, info.dims.kind, info.dims.cell, info.dims.state_size) == ("owl", "decoder-only", "lstm", 1024)
    assert info.temperature_rule == "js" and "Apache-2.0" in info.license and info.source == "owl.gen.json"
    assert info.files == {"decoder_step": "decoder_step.onnx"} and sorted(p.name for p in out.iterdir()) == [
        "decoder_step.onnx",
        "model.json",
    ]
    # owl drawings are more likely after (0,0,0,0,0) than after S_0 (the shared notes say so too)
    lr = info.metrics["start_token_lr"]
    assert info.start_token == (0, 0, 0, 0, 0) and lr["zeros"] < lr["paper"]
    g = onnx.load(str(out / "decoder_step.onnx")).graph
    assert [i.name for i in g.input] == ["prev", "state"] and [o.name for o in g.output] == [
        "params",
        "next_state",
    ]
    assert g.input[0].type.tensor_type.shape.dim[0].dim_param == "B"


def test_without_drawings_the_start_token_is_zeros(cat_dir: Path) -> None:
    """Zeros won on every class measured, so an import with nothing to measure takes them."""
    info = ModelInfo.load(cat_dir)
    assert (
        info.name == "kitty"
        and info.start_token == (0.0, 0.0, 0.0, 0.0, 0.0)
        and "start_token_lr" not in info.metrics
    )


def test_samples_render(tmp_path: Path, magenta_gen_dir: Path) -> None:
    """Real sketches to a real PNG (the by-eye check of mosquitoes is in the issue note)."""
    from sketchkit import render

    magenta.import_magenta(magenta_gen_dir / "mosquito.gen.json", tmp_path / "mosquito")
    sketches = Sampler(OnnxRuntime(tmp_path / "mosquito")).generate(
        4, options=SamplingOptions(tau=0.3, seed=0)
    )
    assert all(20 < len(s) <= 148 for s in sketches)
    render.save(tmp_path / "mosquito.png", render.grid_svg(sketches))
    assert (tmp_path / "mosquito.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
