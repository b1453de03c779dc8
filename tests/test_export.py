"""Export: every cell and kind to the graph contract of sketchkit.graphs, onnxruntime vs PyTorch
parity (float32 and float16), the checkpoint CLI, and failures that leave nothing behind."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from sketchkit.cli import main  # noqa: E402
from sketchkit.errors import ModelError  # noqa: E402
from sketchkit.export import onnx as onnx_export  # noqa: E402
from sketchkit.graphs import graphs_for  # noqa: E402
from sketchkit.modelinfo import ModelInfo  # noqa: E402
from sketchkit.runtimes.onnx import OnnxRuntime  # noqa: E402
from sketchkit.zoo import checkpoint  # noqa: E402
from sketchkit.zoo.config import Recipe  # noqa: E402
from sketchkit.zoo.model import SketchRNN  # noqa: E402

pytestmark = pytest.mark.torch


def tiny(cell: str = "lstm", kind: str = "vae", seed: int = 0) -> SketchRNN:
    torch.manual_seed(seed)
    hp = recipe_for(cell, kind)
    return SketchRNN(hp.dims).eval()


def recipe_for(cell: str = "lstm", kind: str = "vae") -> Recipe:
    return Recipe.of(
        kind=kind, cell=cell, enc_size=16, dec_size=32, z_size=8,
        num_mixture=3, hyper_size=16, hyper_embed=4, max_seq_len=40,
    )  # fmt: skip


def export_tiny(out: Path, cell: str = "lstm", kind: str = "vae", fp16: bool = False):  # type: ignore[no-untyped-def]
    model = tiny(cell, kind)
    info = onnx_export.model_info(model, f"tiny-{cell}", scale_factor=20.0, max_seq_len=40, source="test")
    return onnx_export.export_model(model, info, out, fp16=fp16)


def _dims(value_info) -> list[str | int]:  # type: ignore[no-untyped-def]
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("kind", ["vae", "decoder-only"])
@pytest.mark.parametrize("cell", ["lstm", "layer_norm", "hyper"])
def test_every_cell_exports_to_the_contract(tmp_path: Path, cell: str, kind: str) -> None:
    info, diffs = export_tiny(tmp_path / "m", cell, kind)
    # parity: every output of every graph, 50 chained steps, batch 3 (export traced batch 2)
    expected = {f"{g.name}/{t.name}" for g in graphs_for(kind) for t in g.outputs}
    assert set(diffs) == expected
    assert max(diffs.values()) <= onnx_export.TOLERANCE["float32"]
    # the files, names, dtypes and axes are the table's
    loaded = ModelInfo.load(tmp_path / "m")
    assert loaded == info and info.dims.kind == kind and info.dims.cell == cell and info.precision == "float32"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(["model.json", *info.files.values()])
    for g in graphs_for(kind):
        proto = onnx.load(str(tmp_path / "m" / info.files[g.name])).graph
        assert [i.name for i in proto.input] == [t.name for t in g.inputs]
        assert [o.name for o in proto.output] == [t.name for t in g.outputs]
        for value, t in zip([*proto.input, *proto.output], g.inputs + g.outputs, strict=True):
            want = [d if d in ("B", "T") else int(d) if d.isdigit() else info.sizes[d] for d in t.dims]
            assert _dims(value) == want, (g.name, t.name)
    # and the client's runtime accepts them, at batch sizes the export never saw
    rt = OnnxRuntime(tmp_path / "m")
    for B in (1, 5):
        z = (
            np.random.default_rng(B).standard_normal((B, info.dims.z_size)).astype(np.float32)
            if kind == "vae"
            else None
        )
        if kind == "vae":
            strokes = np.zeros((B, 7, 5), np.float32)
            strokes[..., 2] = 1
            mu, _ = rt.encode(strokes, np.full(B, 7, np.int64))
            assert mu.shape == (B, 8)
        state = rt.init_state(z, B)
        params, state = rt.step(np.tile(np.float32([0, 0, 1, 0, 0]), (B, 1)), z, state)
        assert params.shape == (B, 21) and state.shape == (B, info.dims.state_size)


def test_fp16_export(tmp_path: Path) -> None:
    info16, diffs = export_tiny(tmp_path / "f16", "hyper", fp16=True)  # the cell with the most ops
    assert info16.precision == "float16"
    assert max(diffs.values()) <= onnx_export.TOLERANCE["float16"]
    g = onnx.load(str(tmp_path / "f16" / "decoder_step.onnx")).graph
    assert [i.type.tensor_type.elem_type for i in g.input] == [onnx.TensorProto.FLOAT] * 3  # float32 I/O
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in g.initializer)


def test_dynamic_axes_come_from_the_table() -> None:
    step, = [g for g in graphs_for("decoder-only")]  # fmt: skip
    assert onnx_export.dynamic_axes(step) == {
        "prev": {0: "B"},
        "state": {0: "B"},
        "params": {0: "B"},
        "next_state": {0: "B"},
    }
    assert onnx_export.dynamic_axes(graphs_for("vae")[0])["strokes"] == {0: "B", 1: "T"}


def test_checkpoint_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny("layer_norm")
    ckpt = tmp_path / "best.safetensors"
    checkpoint.save(
        ckpt,
        model,
        recipe_for("layer_norm"),
        {"scale_factor": 12.5, "step": 7, "metrics": {"valid_lr": -0.5}, "name": "sheep"},
    )
    main(["export", str(ckpt), str(tmp_path / "out")])
    out = capsys.readouterr()
    assert (
        "exporting encoder.onnx" in out.err and "decoder_step/params" in out.err and "max diff" in out.out
    )
    info = ModelInfo.load(tmp_path / "out")
    assert (info.name, info.scale_factor, info.max_seq_len, info.metrics) == (
        "sheep",
        12.5,
        40,
        {"valid_lr": -0.5},
    )
    assert (info.start_token, info.temperature_rule, info.source) == (
        (0, 0, 1, 0, 0),
        "eq8",
        "best.safetensors",
    )
    # exporting again replaces the model directory; --fp16 and --name apply
    main(["export", str(ckpt), str(tmp_path / "out"), "--fp16", "--name", "sheep16"])
    info = ModelInfo.load(tmp_path / "out")
    assert (info.name, info.precision) == ("sheep16", "float16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors", "out"]  # no temp dirs left


def test_bad_checkpoints_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}...")
    model = tiny()
    no_scale = tmp_path / "noscale.safetensors"
    checkpoint.save(no_scale, model, recipe_for(), {"step": 1})
    for path, message in (
        (bad, "not a readable safetensors"),
        (no_scale, "no scale_factor"),
        (tmp_path / "nope", "no such"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["export", str(path), str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_failed_parity_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export_tiny(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    monkeypatch.setitem(onnx_export.TOLERANCE, "float32", 0.0)  # any rounding now fails the check
    with pytest.raises(ModelError, match=r"differs from PyTorch by .* \(tolerance 0 for float32\)"):
        export_tiny(tmp_path / "m", "layer_norm")
    with pytest.raises(ModelError):
        export_tiny(tmp_path / "new", "layer_norm")
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before  # the old model is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no new dir, no temp dirs


def test_refuses_to_replace_a_directory_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("keep me")
    with pytest.raises(ModelError, match="not a model directory"):
        export_tiny(tmp_path / "docs")
    assert (tmp_path / "docs" / "notes.txt").read_text() == "keep me"


def test_without_torch_the_commands_say_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with_drawings = ["import-magenta", "x.json", str(tmp_path), "--drawings", "d.ndjson"]
    cases = {
        "export": ["export", "x.safetensors", str(tmp_path)],
        "import-magenta --drawings/--checkpoint": with_drawings,
    }
    for what, args in cases.items():
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 1
        assert capsys.readouterr().err == (
            f"error: {what} needs torch: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu "
            "(the CPU build; with a CUDA GPU: pip install torch==2.13.0), then pip install 'sketchkit[export]'\n"
        )
    for what, args in {"train": ["train"], "evaluate": ["evaluate", "x.safetensors"]}.items():  # issue 26, item 2
        with pytest.raises(SystemExit):
            main(args)
        assert capsys.readouterr().err == (
            f"error: {what} needs torch: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu "
            "(the CPU build; with a CUDA GPU: pip install torch==2.13.0), then pip install 'sketchkit[train]'\n"
        )
    # a plain import-magenta needs no torch: it gets as far as reading the file
    with pytest.raises(SystemExit):
        main(["import-magenta", str(tmp_path / "x.json"), str(tmp_path / "out")])
    assert capsys.readouterr().err == f"error: {tmp_path / 'x.json'}: no such file\n"
