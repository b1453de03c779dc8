"""Triton model repositories (serving.repository) without a server: every generated config parses
into Triton's own ModelConfig protobuf, its tensors are the graph table's, and the stateful step
graph (served by both flavors) steps exactly like the stateless one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sketchkit.cli import cli
from sketchkit.errors import SketchkitError
from sketchkit.graphs import concrete_dims, graphs_for
from sketchkit.modelinfo import ModelInfo
from sketchkit.serving.repository import MARKER, RepoOptions, build_repo, read_config
from sketchkit.wire import INFO_PARAMETER, STATE_IN, STATE_OUT, STATEFUL_STEP, stateful_graph

SERVING = Path(__file__).resolve().parents[1] / "serving"


def _types():
    from tritonclient.grpc import model_config_pb2 as pb

    return pb, {"float32": pb.TYPE_FP32, "int64": pb.TYPE_INT64}


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def repo(request, tmp_path_factory, tiny_vae: Path, tiny_uncond: Path) -> tuple[str, Path]:
    flavor = request.param
    out = tmp_path_factory.mktemp(f"repo-{flavor}") / "repo"
    opts = RepoOptions(flavor=flavor, accelerator="tensorrt-fp16" if flavor == "gpu" else "none",
                       cuda_graphs=flavor == "gpu")  # fmt: skip
    build_repo([tiny_vae, tiny_uncond], out, opts)
    return flavor, out


def test_layout_one_triton_model_per_graph(repo, tiny_vae, tiny_uncond):
    flavor, out = repo
    want = {"tiny-vae_encoder", "tiny-vae_decoder_init", "tiny-vae_decoder_step", "tiny-vae_decoder_step_stateful",
            "tiny-decoder-only_decoder_step", "tiny-decoder-only_decoder_step_stateful"}  # fmt: skip
    generate = {"tiny-vae_generate", "tiny-decoder-only_generate"}
    assert {p.name for p in out.iterdir() if p.is_dir()} == want | generate
    assert set((out / MARKER).read_text().split()) == want | generate  # what --force may replace
    for model_dir in (tiny_vae, tiny_uncond):  # both flavors: model.py + the model directory
        info = ModelInfo.load(model_dir)
        files = {p.name for p in (out / f"{info.name}_generate" / "1").iterdir()}
        assert files == {"model.py", "model.json", *info.files.values()}
    for name in want:
        files = {p.name for p in (out / name / "1").iterdir()}
        assert files == ({"model.onnx", "model.py"} if flavor == "cpu" else {"model.onnx"})
    # the stateless graphs are the exported files, byte for byte
    info = ModelInfo.load(tiny_vae)
    for graph in ("encoder", "decoder_init", "decoder_step"):
        assert (out / f"tiny-vae_{graph}" / "1" / "model.onnx").read_bytes() == (
            tiny_vae / info.files[graph]
        ).read_bytes()


def test_every_config_parses_into_triton_model_config(repo, tiny_vae, tiny_uncond):
    flavor, out = repo
    pb, types = _types()
    for model_dir in (tiny_vae, tiny_uncond):
        info = ModelInfo.load(model_dir)
        for graph in graphs_for(info.dims.kind):
            cfg = read_config(out / f"{info.name}_{graph.name}" / "config.pbtxt")
            assert cfg.name == f"{info.name}_{graph.name}"
            assert cfg.backend == ("onnxruntime" if flavor == "gpu" else "python")
            assert cfg.max_batch_size == 256 and cfg.dynamic_batching.max_queue_delay_microseconds == 200
            kind = pb.ModelInstanceGroup.KIND_GPU if flavor == "gpu" else pb.ModelInstanceGroup.KIND_CPU
            assert [g.kind for g in cfg.instance_group] == [kind]
            # tensors: the graph table's names, dtypes and sizes, without the batch axis
            for ours, theirs in ((graph.inputs, cfg.input), (graph.outputs, cfg.output)):
                assert [t.name for t in ours] == [t.name for t in theirs]
                for t, c in zip(ours, theirs, strict=True):
                    assert c.data_type == types[t.dtype]
                    assert list(c.dims) == (concrete_dims(t, info.sizes)[1:] or [1])
                    assert c.HasField("reshape") == (len(t.dims) == 1)  # [B] -> [1] on the wire
            if graph.name == "decoder_step":  # model.json rides in the config
                assert ModelInfo.from_dict(json.loads(cfg.parameters[INFO_PARAMETER].string_value)) == info
            if flavor == "gpu":
                (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
                assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
                assert acc.parameters["trt_cuda_graph_enable"] == "1"
                assert acc.parameters["trt_profile_max_shapes"].startswith(f"{graph.inputs[0].name}:256x")


def test_generate_config(repo, tiny_vae, tiny_uncond):
    """<name>_generate: the contract of sketchkit.wire, a Python-backend model on both
    flavors (KIND_GPU on gpu: its onnxruntime runs the CUDA provider), not decoupled (v2 infer
    works), one instance (one engine batches every request)."""
    from sketchkit.wire import inputs_for, outputs_for

    flavor, out = repo
    pb, _ = _types()
    for model_dir in (tiny_vae, tiny_uncond):
        info = ModelInfo.load(model_dir)
        cfg = read_config(out / f"{info.name}_generate" / "config.pbtxt")
        assert (cfg.backend, cfg.max_batch_size) == ("python", 0)
        assert not cfg.model_transaction_policy.decoupled
        kind = pb.ModelInstanceGroup.KIND_GPU if flavor == "gpu" else pb.ModelInstanceGroup.KIND_CPU
        assert [(g.kind, g.count) for g in cfg.instance_group] == [(kind, 1)]
        assert [t.name for t in cfg.input] == [t.name for t in inputs_for(info)]
        assert [t.name for t in cfg.output] == [t.name for t in outputs_for(info)]
        assert [t.name for t in cfg.input if not t.optional] == ["n"]
        assert ("z" in [t.name for t in cfg.input]) == info.dims.vae
        shapes = {t.name: list(t.dims) for t in (*cfg.input, *cfg.output)}
        assert shapes["n"] == shapes["tau"] == shapes["seed"] == [1] and shapes["strokes"] == [-1, -1, 3]
        assert cfg.input[0].data_type == pb.TYPE_INT64 and cfg.input[2].data_type == pb.TYPE_INT64  # n: no INT32 wrap
        want = {"cpu": ("256", "1024", "0"), "gpu": ("4096", "32768", "1")}[flavor]  # a GPU step takes big batches
        got = tuple(cfg.parameters[k].string_value for k in ("max_sketches_per_request", "max_rows_per_step", "cuda_graphs"))
        assert got == want


def test_generate_engines_and_threads_are_config_parameters(tmp_path, tiny_uncond):
    """`build-repo --engines K --intra-op-threads T` reach the generate model's config (model.py
    reads them); 0 is one clear error."""
    result = CliRunner().invoke(
        cli, ["serve", "build-repo", str(tiny_uncond), "--out", str(tmp_path / "r"), "--engines", "3",
              "--intra-op-threads", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cfg = read_config(tmp_path / "r" / "tiny-decoder-only_generate" / "config.pbtxt")
    assert cfg.parameters["engines"].string_value == "3"
    assert cfg.parameters["intra_op_threads"].string_value == "1"
    default = read_config(build_repo_generate_config(tmp_path / "d", tiny_uncond))
    assert (default.parameters["engines"].string_value, default.parameters["intra_op_threads"].string_value) == ("1", "2")
    with pytest.raises(SketchkitError, match="engines, threads and the caps must be >= 1"):
        RepoOptions(engines=0)


def build_repo_generate_config(out: Path, model_dir: Path) -> Path:
    build_repo([model_dir], out, RepoOptions(stateful=False))
    return out / f"{ModelInfo.load(model_dir).name}_generate" / "config.pbtxt"


def test_triton_names_are_the_typed_names_made_safe(tmp_path, tiny_uncond):
    """A model is served under the name it was asked for, with '/' made '-' (Triton refuses a
    nested name); `names` renames; a name Triton would refuse is one clear error."""
    build_repo([tiny_uncond], tmp_path / "a", names=["magenta-owl.gen"])
    assert (tmp_path / "a" / "magenta-owl.gen_generate").is_dir()
    build_repo([tiny_uncond], tmp_path / "b")  # None: model.json's name
    assert (tmp_path / "b" / "tiny-decoder-only_decoder_step").is_dir()
    with pytest.raises(SketchkitError, match="bad Triton model name '../x'"):
        build_repo([tiny_uncond], tmp_path / "c", names=["../x"])
    with pytest.raises(SketchkitError, match="two models are named"):
        build_repo([tiny_uncond, tiny_uncond], tmp_path / "d", names=["x", "x"])
    result = CliRunner().invoke(cli, ["serve", "build-repo", str(tiny_uncond), "--out", str(tmp_path / "e"),
                                      "--name", "bird", "--no-stateful"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "bird_generate" in result.output and (tmp_path / "e" / "bird_decoder_step").is_dir()


def test_stateful_config(repo, tiny_vae, tiny_uncond):
    flavor, out = repo
    pb, types = _types()
    for model_dir in (tiny_vae, tiny_uncond):
        info = ModelInfo.load(model_dir)
        cfg = read_config(out / f"{info.name}_{STATEFUL_STEP}" / "config.pbtxt")
        graph = stateful_graph(info.dims.kind)
        assert cfg.max_batch_size == 0  # one sequence carries the whole [B, ...] batch
        assert [t.name for t in cfg.input] == [t.name for t in graph.inputs]
        assert [t.name for t in cfg.output] == ["params"]
        assert list(cfg.input[0].dims) == [-1, 5]
        seq = cfg.sequence_batching
        assert seq.max_sequence_idle_microseconds == 60_000_000  # far above Triton's 1 s default
        assert seq.oldest.max_candidate_sequences == 1024
        controls = {c.name: c.control[0].kind for c in seq.control_input}
        K = pb.ModelSequenceBatching.Control
        if flavor == "gpu":  # Triton's implicit state, with the onnxruntime backend
            assert controls == {"START": K.CONTROL_SEQUENCE_START}
            (state,) = seq.state
            assert (state.input_name, state.output_name) == (STATE_IN, STATE_OUT)
            assert list(state.dims) == [-1, info.dims.state_size]
            assert state.initial_state[0].zero_data and list(state.initial_state[0].dims) == [
                1,
                info.dims.state_size,
            ]
        else:  # model.py keeps the state per correlation id
            assert controls == {"START": K.CONTROL_SEQUENCE_START, "END": K.CONTROL_SEQUENCE_END,
                                "CORRID": K.CONTROL_SEQUENCE_CORRID}  # fmt: skip
            assert not seq.state
            assert cfg.parameters["state_size"].string_value == str(info.dims.state_size)


@pytest.mark.parametrize("fixture", ["tiny_vae", "tiny_uncond"])
def test_stateful_graph_steps_like_the_stateless_one(fixture, request, tmp_path):
    """Emulate what Triton's implicit state does (feed back next_state, a zero 1-row placeholder
    at START) and compare with the stateless step, rows dropping and repeating as the sampler's."""
    import onnxruntime as ort

    model_dir = request.getfixturevalue(fixture)
    info = ModelInfo.load(model_dir)
    build_repo([model_dir], tmp_path / "repo", RepoOptions(flavor="gpu"))
    wrapped = ort.InferenceSession(
        str(tmp_path / "repo" / f"{info.name}_{STATEFUL_STEP}" / "1" / "model.onnx")
    )
    step = ort.InferenceSession(str(model_dir / info.files["decoder_step"]))
    rng = np.random.default_rng(0)
    B = 6
    z = rng.standard_normal((B, info.dims.z_size)).astype(np.float32)
    if info.dims.vae:
        init = ort.InferenceSession(str(model_dir / info.files["decoder_init"]))
        (state,) = init.run(None, {"z": z})
    else:
        state = np.zeros((B, info.dims.state_size), np.float32)
    stored = np.zeros((1, info.dims.state_size), np.float32)
    keep = np.zeros(B, np.int64)
    for t, rows in enumerate(
        [None, np.arange(6), np.array([0, 2, 3, 5]), np.array([1, 1, 1, 3]), np.array([2])]
    ):
        if rows is not None:  # the client's batch follows the rows that go on
            state, z = state[rows], z[rows]
            keep = rows
        prev = rng.standard_normal((len(state), 5)).astype(np.float32)
        feeds = {"prev": prev, "state": state} | ({"z": z} if info.dims.vae else {})
        params, state = step.run(None, feeds)
        wfeeds = {"prev": prev, "rows": keep, "START": np.array([t == 0], np.int32), STATE_IN: stored}
        wparams, stored = wrapped.run(["params", STATE_OUT], wfeeds | ({"z": z} if info.dims.vae else {}))
        np.testing.assert_array_equal(wparams, params)
        np.testing.assert_array_equal(stored, state)


def test_build_repo_errors(tmp_path, tiny_vae):
    out = tmp_path / "repo"
    build_repo([tiny_vae], out, RepoOptions(stateful=False))
    assert not (out / f"tiny-vae_{STATEFUL_STEP}").exists()
    with pytest.raises(SketchkitError, match="exists and is not empty"):
        build_repo([tiny_vae], out)
    build_repo([tiny_vae], out, force=True)
    assert (out / f"tiny-vae_{STATEFUL_STEP}").is_dir()
    with pytest.raises(SketchkitError, match="two models are named tiny-vae"):
        build_repo([tiny_vae, tiny_vae], tmp_path / "dupes")
    assert not (tmp_path / "dupes").exists()  # nothing half-written
    with pytest.raises(SketchkitError, match="gpu-flavor"):
        RepoOptions(flavor="cpu", accelerator="tensorrt")
    with pytest.raises(SketchkitError, match="need the TensorRT"):
        RepoOptions(flavor="gpu", cuda_graphs=True)
    with pytest.raises(SketchkitError, match="not a model directory"):
        build_repo([tmp_path], tmp_path / "r2")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs left


def test_cli_build_repo(tmp_path, tiny_vae, tiny_uncond):
    runner = CliRunner()
    out = tmp_path / "repo"
    result = runner.invoke(cli, ["serve", "build-repo", str(tiny_vae), str(tiny_uncond), "--out", str(out),
                                 "--flavor", "gpu", "--accelerator", "tensorrt", "--max-batch-size", "64"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "tiny-vae_decoder_step" in result.output
    cfg = read_config(out / "tiny-vae_decoder_step" / "config.pbtxt")
    assert cfg.backend == "onnxruntime" and cfg.max_batch_size == 64


def test_docker_compose_serves_a_gpu_repository():
    text = (SERVING / "docker-compose.yml").read_text()
    assert "dockerfile: serving/Dockerfile" in text and "--model-repository=/models" in text  # NGC image + sketchkit
    assert "driver: nvidia" in text and "capabilities: [gpu]" in text


def test_gpu_image_adds_what_the_generate_model_imports():
    """serving/Dockerfile installs numpy<2, onnxruntime-gpu and sketchkit (no deps) on the NGC image
    that docker-compose builds; the generate model's sketchkit modules import nothing else."""
    import subprocess
    import sys

    dockerfile = (SERVING / "Dockerfile").read_text()
    compose = (SERVING / "docker-compose.yml").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:24.10-py3" in dockerfile
    assert "dockerfile: serving/Dockerfile" in compose
    assert '"numpy>=1.24,<2"' in dockerfile and "onnxruntime-gpu" in dockerfile and "--no-deps" in dockerfile
    template = (SERVING / "templates" / "python_generate" / "model.py").read_text()
    modules = sorted(set(re.findall(r"^from (sketchkit[.\w]*) import", template, re.M)))
    code = (f"import sys; before = set(sys.modules); import {', '.join(modules)}; "
            "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names))))")  # fmt: skip
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert loaded - {"_cython_3_0_8", "cython_runtime"} <= {"numpy", "onnxruntime", "sketchkit"}


# the CUDA major of each NGC Triton image the Dockerfile has used (the NGC support matrix)
NGC_CUDA = {"24.10": 12}


def test_gpu_image_pins_an_onnxruntime_gpu_built_for_its_cuda():
    """Issue 22: onnxruntime-gpu on PyPI is built for CUDA 12 up to 1.26 and for CUDA 13 from 1.27,
    so the Dockerfile pins an exact version matching its base image's CUDA (fails on b361367:
    `onnxruntime-gpu>=1.19,<2` picked whatever the image's Python resolved to)."""
    dockerfile = (SERVING / "Dockerfile").read_text()
    (tag,) = re.findall(r"^FROM nvcr\.io/nvidia/tritonserver:(\d\d\.\d\d)-py3", dockerfile, re.M)
    assert tag in NGC_CUDA, f"add the CUDA major of NGC {tag} to NGC_CUDA"
    pins = re.findall(r'"onnxruntime-gpu([^"]*)"', dockerfile)
    assert len(pins) == 1 and re.fullmatch(r"==1\.\d+\.\d+", pins[0]), pins  # exact, not a range
    minor = int(pins[0].split(".")[1])
    assert (12 if minor <= 26 else 13) == NGC_CUDA[tag], (tag, pins[0])


def test_docker_compose_passes_the_restricted_api_flags_of_serve_start():
    """Issue 22 (fails on b361367: no flags): the GPU deployment closes what `serve start` closes,
    through the same launcher, which adds the same flags (issue 25: the key off the command line;
    tests/test_hostile_local.py runs the compose command with a stand-in tritonserver)."""
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((SERVING / "docker-compose.yml").read_text())
    assert compose["services"]["triton"]["command"][:4] == ["python3", "-m", "sketchkit.serving.launch", "tritonserver"]
    text = (SERVING / "docker-compose.yml").read_text()
    assert "${SKETCHKIT_SERVER_KEY:?" in text  # no key, no start
