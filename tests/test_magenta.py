"""The Magenta importer against an independent numpy implementation of sketch-rnn-js's model,
written here from its documented maths (../shared/data/README.md and the JS library's LSTMCell,
get_pdf and get_init_state_from_latent_vector), at three levels: step parameters, greedy
strokes, pictures. VAE files are not in ../shared, so a small VAE JSON is written here with
random weights in exactly the published format."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export import magenta  # noqa: E402
from sketchkit.cli import main  # noqa: E402
from sketchkit.errors import ModelError  # noqa: E402
from sketchkit.modelinfo import ModelInfo  # noqa: E402
from sketchkit.runtime_onnx import OnnxRuntime  # noqa: E402
from sketchkit.sampling import Sampler, SamplingOptions  # noqa: E402

pytestmark = pytest.mark.torch

# ---------------------------------------------------------------------------------------------
# the reference: sketch-rnn-js's model in float64 numpy, nothing shared with export/


class JsModel:
    """[info, shapes, blobs] -> the JS model's maths: TF LSTM (i, j, f, o) with forget bias 1,
    state (h, c), initial state tanh(z W + b) split (c, h), tanh(z) first for version < 6."""

    def __init__(self, data: list) -> None:
        info, shapes, blobs = data
        self.info = info
        w = [
            (np.frombuffer(base64.b64decode(b), "<i2").astype(np.float64) / 32767.0 * 10.0).reshape(s)
            for s, b in zip(shapes, blobs, strict=True)
        ]
        self.dec = w[-3:]
        self.out_w, self.out_b = w[-5], w[-4]
        if len(w) == 17:
            self.enc_fw, self.enc_bw = w[0:3], w[3:6]
            self.mu_w, self.mu_b, self.sig_w, self.sig_b, self.init_w, self.init_b = w[6:12]
        self.H = self.dec[1].shape[0]

    @staticmethod
    def lstm(x, h, c, wxh, whh, bias):  # type: ignore[no-untyped-def]
        sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
        gates = np.concatenate([x, h], -1) @ np.concatenate([wxh, whh]) + bias
        i, j, f, o = np.split(gates, 4, axis=-1)
        c = c * sig(f + 1.0) + np.tanh(j) * sig(i)
        return np.tanh(c) * sig(o), c

    def init_state(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.info.get("version", 0) < 6:
            z = np.tanh(z)
        s = np.tanh(z @ self.init_w + self.init_b)
        return s[:, self.H :], s[:, : self.H]  # (h, c): the JS splits (c, h)

    def step(self, prev, z, h, c):  # type: ignore[no-untyped-def]
        x = prev if z is None else np.concatenate([prev, z], -1)
        h, c = self.lstm(x, h, c, *self.dec)
        return h @ self.out_w + self.out_b, h, c

    def encode(self, seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One normalised stroke-5 sequence [n, 5] -> (mu, presig)."""
        outs = []
        for weights, xs in ((self.enc_fw, seq), (self.enc_bw, seq[::-1])):
            E = weights[1].shape[0]
            h = c = np.zeros(E)
            for x in xs:
                h, c = self.lstm(x, h, c, *weights)
            outs.append(h)
        hc = np.concatenate(outs)
        return hc @ self.mu_w + self.mu_b, hc @ self.sig_w + self.sig_b


def random_stroke5(rng: np.random.Generator, n: int) -> np.ndarray:
    x = np.zeros((n, 5), np.float32)
    x[:, :2] = rng.standard_normal((n, 2))
    x[np.arange(n), 2 + rng.integers(0, 2, n)] = 1.0
    return x


def write_vae_json(
    path: Path, version: int, H: int = 24, E: int = 12, Nz: int = 6, M: int = 20, seed: int = 0
) -> Path:
    """A Magenta VAE JSON in the published layout, with random weights (|w| well under 10)."""
    rng = np.random.default_rng(seed)
    P = 6 * M + 3
    shapes = [
        [5, 4 * E], [E, 4 * E], [4 * E],  # encoder forward
        [5, 4 * E], [E, 4 * E], [4 * E],  # encoder backward
        [2 * E, Nz], [Nz], [2 * E, Nz], [Nz],  # mu, presig
        [Nz, 2 * H], [2 * H],  # z -> initial state (c, h)
        [H, P], [P], [5 + Nz, 4 * H], [H, 4 * H], [4 * H],  # decoder
    ]  # fmt: skip
    blobs = []
    for s in shapes:
        ints = np.clip(np.round(rng.normal(0.0, 0.4, s) * 3276.7), -32767, 32767).astype("<i2")
        blobs.append(base64.b64encode(ints.tobytes()).decode())
    info = {
        "name": f"testvae{version}",
        "mode": 1,
        "version": version,
        "max_seq_len": 40,
        "scale_factor": 50.0,
    }
    path.write_text(json.dumps([info, shapes, blobs]))
    return path


# ---------------------------------------------------------------------------------------------
# reader


def test_reads_sizes_from_shapes(magenta_gen_dir: Path) -> None:
    owl = magenta.read_magenta(magenta_gen_dir / "owl.gen.json")
    assert (owl.name, owl.conditional, owl.version) == ("owl", False, 6)
    assert (owl.dec_size, owl.num_mixture, owl.max_seq_len) == (512, 20, 174)
    assert owl.scale_factor == pytest.approx(76.6042)
    bear = magenta.read_magenta(magenta_gen_dir / "bear.gen.json")  # version 2, mode "gen"
    assert (bear.conditional, bear.version, bear.info["mode"]) == (False, 2, "gen")
    for w in owl.weights.values():
        assert w.dtype == np.float32 and np.abs(w).max() <= 10.0


def _corrupt(tmp_path: Path, data: object, raw: bool = False) -> Path:
    p = tmp_path / "bad.json"
    p.write_text(data if raw else json.dumps(data))  # type: ignore[arg-type]
    return p


def test_bad_files_give_one_line_errors(tmp_path: Path, magenta_gen_dir: Path) -> None:
    info, shapes, blobs = json.loads((magenta_gen_dir / "owl.gen.json").read_text())
    swapped = [shapes[0], shapes[1], shapes[2], [2048, 512], shapes[4]]
    cases = {
        "not JSON": "{ this is not json",
        "expected a JSON list": {"a": 1},
        "info has no 'scale_factor'": [{k: v for k, v in info.items() if k != "scale_factor"}, shapes, blobs],
        "has 5 blobs, this file has 4": [info, shapes[:4], blobs[:4]],
        "4 shapes but 5 blobs": [info, shapes[:4], blobs],
        "has 17 blobs": [dict(info, mode=1), shapes, blobs],
        "dec_W_hh has shape [2048, 512]": [info, swapped, blobs],
        "bad base64": [info, shapes, [blobs[0][:-5] + "!!!!=", *blobs[1:]]],
        "bytes, shape [123] needs 246": [info, shapes, [blobs[0], blobs[2], *blobs[2:]]],
    }
    for expected, data in cases.items():
        with pytest.raises(ModelError) as e:
            magenta.read_magenta(_corrupt(tmp_path, data, raw=isinstance(data, str)))
        assert expected in str(e.value) and "\n" not in str(e.value), expected
    with pytest.raises(ModelError, match="no such file"):
        magenta.read_magenta(tmp_path / "absent.json")


def test_cli_rejects_a_json_that_is_not_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _corrupt(tmp_path, {"drawing": [[[1, 2], [3, 4]]]})
    with pytest.raises(SystemExit) as e:
        main(["import-magenta", str(bad), str(tmp_path / "out")])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "not a Magenta model" in err
    assert not (tmp_path / "out").exists()


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
        worst_onnx = max(worst_onnx, float(np.abs(params - want).max()))
        worst_torch = max(worst_torch, float(np.abs(p_torch.numpy() - want).max()))
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
    np.testing.assert_allclose(got[:, :2], want[:, :2], atol=1e-2)  # pixels


@pytest.mark.parametrize("version", [6, 2])
def test_vae_matches_reference(tmp_path: Path, version: int) -> None:
    path = write_vae_json(tmp_path / f"v{version}.vae.json", version)
    ref = JsModel(json.loads(path.read_text()))
    info, diffs = magenta.import_magenta(path, tmp_path / "vae")
    assert info.kind == "vae" and (info.dec_size, info.enc_size, info.z_size, info.state_size) == (
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
    from export.onnx import export_checkpoint

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
    assert (info.name, info.kind, info.cell, info.state_size) == ("owl", "decoder-only", "lstm", 1024)
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
