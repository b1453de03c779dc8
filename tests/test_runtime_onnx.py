"""The in-process onnxruntime runtime and the model/runtime resolution seam."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from onnx_fixtures import make_model

from sketchkit.errors import ModelError, SketchkitError
from sketchkit.hub import load, resolve
from sketchkit.runtimes.base import Runtime
from sketchkit.runtimes.onnx import OnnxRuntime
from sketchkit.sampling import Sampler, SamplingOptions


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_satisfies_the_runtime_protocol(tiny_vae, tiny_uncond):
    assert isinstance(OnnxRuntime(tiny_vae), Runtime)
    assert isinstance(OnnxRuntime(tiny_uncond), Runtime)


def test_shapes_of_every_graph(tiny_vae):
    rt = OnnxRuntime(tiny_vae, threads=1)
    info = rt.info
    B = 3
    mu, presig = rt.encode(np.zeros((B, 7, 5), np.float32), np.array([7, 2, 1]))
    assert mu.shape == presig.shape == (B, info.dims.z_size)
    state = rt.init_state(mu, B)
    assert state.shape == (B, info.dims.state_size) and state.dtype == np.float32
    params, nxt = rt.step(np.zeros((B, 5), np.float32), mu, state)
    assert params.shape == (B, 6 * info.dims.num_mixture + 3) and nxt.shape == state.shape


def test_decoder_only_starts_from_zeros_and_has_no_encoder(tiny_uncond):
    rt = OnnxRuntime(tiny_uncond)
    np.testing.assert_array_equal(rt.init_state(None, 4), np.zeros((4, rt.info.dims.state_size), np.float32))
    with pytest.raises(ModelError, match="decoder-only"):
        rt.encode(np.zeros((1, 3, 5), np.float32), np.array([3]))


def test_vae_needs_z(tiny_vae):
    rt = OnnxRuntime(tiny_vae)
    with pytest.raises(ModelError, match="needs z"):
        rt.init_state(None, 2)
    with pytest.raises(ModelError, match="needs z"):
        rt.step(np.zeros((1, 5), np.float32), None, np.zeros((1, rt.info.dims.state_size), np.float32))


def test_graphs_load_lazily(tiny_vae):
    rt = OnnxRuntime(tiny_vae)
    assert rt._sessions == {}
    Sampler(rt).generate(2, options=SamplingOptions(seed=0, max_len=3))
    assert set(rt._sessions) == {"decoder_init", "decoder_step_draw"}  # no encoder for generate
    rt.close()
    assert rt._sessions == {}


def test_corrupt_onnx_is_a_one_line_model_error(tiny_uncond, tmp_path):
    d = copy_model(tiny_uncond, tmp_path / "corrupt")
    (d / "decoder_step.onnx").write_bytes(b"\x08\x07this is not a protobuf\xff\xfe" * 20)
    rt = OnnxRuntime(d)  # graphs load on first use
    with pytest.raises(ModelError) as e:
        Sampler(rt).generate(2)
    assert "not a loadable ONNX graph" in str(e.value) and "\n" not in str(e.value)


def test_truncated_onnx_is_a_model_error(tiny_vae, tmp_path):
    d = copy_model(tiny_vae, tmp_path / "truncated")
    raw = (d / "decoder_init.onnx").read_bytes()
    (d / "decoder_init.onnx").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelError, match="decoder_init.onnx") as e:
        Sampler(OnnxRuntime(d)).generate(2)
    assert "\n" not in str(e.value)


def test_sizes_that_disagree_with_model_json_are_refused(tiny_uncond, tmp_path):
    d = copy_model(tiny_uncond, tmp_path / "wrong-size")
    meta = json.loads((d / "model.json").read_text())
    meta["dims"]["dec_size"] += 1  # the state (2H) and the graphs no longer agree
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="state has shape"):
        Sampler(OnnxRuntime(d)).generate(1)


def test_a_graph_of_the_other_kind_is_refused(tiny_vae, tiny_uncond, tmp_path):
    """A vae step graph (with z) in a model.json that says decoder-only."""
    d = copy_model(tiny_uncond, tmp_path / "mixed")
    shutil.copy(tiny_vae / "decoder_step.onnx", d / "decoder_step.onnx")
    with pytest.raises(ModelError, match="unexpected input"):
        Sampler(OnnxRuntime(d)).generate(1)


def test_missing_or_corrupt_model_json(tiny_uncond, tmp_path):
    with pytest.raises(ModelError, match="no model.json"):
        OnnxRuntime(tmp_path)
    d = copy_model(tiny_uncond, tmp_path / "bad-json")
    (d / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="corrupt JSON"):
        OnnxRuntime(d)
    (d / "model.json").write_text(json.dumps(["a", "magenta", "list"]))
    with pytest.raises(ModelError, match="JSON object"):
        OnnxRuntime(d)


def test_the_loader_accepts_directories_and_model_json(tiny_uncond, tmp_path, monkeypatch):
    assert resolve(tiny_uncond) == tiny_uncond
    assert resolve(tiny_uncond / "model.json") == tiny_uncond
    assert isinstance(load(str(tiny_uncond)), OnnxRuntime)
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(tiny_uncond, tmp_path / "m")
    assert resolve("~/m") == tmp_path / "m"  # every rule in one place: ~ too


def test_the_loader_converts_a_magenta_json_file_once(magenta_gen_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SKETCHKIT_CACHE", str(tmp_path / "cache"))
    f = shutil.copy(magenta_gen_dir / "owl.gen.json", tmp_path / "owl.gen.json")
    rt = load(f, progress=False)
    assert rt.info.name == "owl.gen" and rt.info.dims.kind == "decoder-only"
    d = resolve(f, progress=False)  # converted once, into the cache, keyed by the file's SHA-256
    assert d.parent == tmp_path / "cache" / "imports" and resolve(f, progress=False) == d


def test_files_that_are_not_models(tmp_path):
    f = tmp_path / "owl.gen.json"
    f.write_text("[{}, [], []]")
    with pytest.raises(ModelError):
        resolve(f)
    g = tmp_path / "notes.txt"
    g.write_text("hello")
    with pytest.raises(ModelError, match="not a model directory"):
        resolve(g)


def test_unknown_model_name_says_how_to_list_models():
    with pytest.raises(SketchkitError) as e:
        load("no-such-model-xyz")
    assert "\n" not in str(e.value) and "sketchkit zoo list" in str(e.value)


def test_make_model_writes_both_kinds(tmp_path):
    vae = make_model(tmp_path / "v", "vae", hidden=8, num_mixture=2)
    assert sorted(p.name for p in vae.iterdir()) == ["decoder_init.onnx", "decoder_step.onnx", "encoder.onnx", "model.json"]
    assert OnnxRuntime(vae).info.dims.state_size == 16


def test_the_step_with_the_draw_is_kept_beside_a_cached_model(tiny_uncond, tmp_path, monkeypatch):
    """A model in the cache keeps its step-with-draw graph (built once, named by content); one
    elsewhere leaves nothing behind; the sketches are the same either way."""
    import onnx

    monkeypatch.setenv("SKETCHKIT_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "cache" / "models" / "m"
    copy_model(tiny_uncond, model)
    opts = SamplingOptions(seed=3, max_len=20)

    def sketches(where):
        return Sampler(OnnxRuntime(where)).generate(3, options=opts)

    fresh = sketches(tiny_uncond)
    assert not list(tiny_uncond.glob("decoder_step_draw-*"))
    first = sketches(model)
    (kept,) = model.glob("decoder_step_draw-*.onnx")
    again = sketches(model)  # read back, not built
    for a, b, c in zip(fresh, first, again, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    step = onnx.load(str(model / "decoder_step.onnx"))
    step.doc_string = "changed"  # other bytes: a new key, the old file removed
    onnx.save(step, str(model / "decoder_step.onnx"))
    sketches(model)
    (now,) = model.glob("decoder_step_draw-*.onnx")
    assert now != kept


def test_both_draws_of_a_cached_step_are_kept(tiny_uncond, tmp_path, monkeypatch):
    """The exact draw (CPU) and the fast one (CUDA) are two files of one step: building one does
    not delete the other, or a machine whose CUDA provider falls back to the CPU (onnxruntime-gpu
    without a usable GPU) would build both anew in every process."""
    from sketchkit.runtimes import onnx as onnx_runtime

    monkeypatch.setenv("SKETCHKIT_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "cache" / "models" / "m"
    copy_model(tiny_uncond, model)
    step, m = model / "decoder_step.onnx", OnnxRuntime(model).info.dims.num_mixture
    fast = onnx_runtime._with_draw(step, m, exact_math=False)
    exact = onnx_runtime._with_draw(step, m, exact_math=True)
    assert len(list(model.glob("decoder_step_draw-*.onnx"))) == 2
    assert onnx_runtime._with_draw(step, m, exact_math=False) == fast
    assert onnx_runtime._with_draw(step, m, exact_math=True) == exact
