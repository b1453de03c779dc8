"""The zoo client against a real HTTP server on 127.0.0.1 serving ../shared/data/magenta-gen
(the `zoo_mirror` fixture in conftest.py): download, verify, resume, lock, pin, convert, sample."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sketchkit import hub
from sketchkit.errors import ModelError, SketchkitError
from sketchkit.modelinfo import ModelInfo

OWL = "owl.gen.json"  # one of the 40 files whose SHA-256 the registry pins
OWL_SIZE = 2997381


def owl_file() -> dict:
    return hub.registry()["models"]["magenta/owl.gen"]["files"][0]


def cache_files(root: Path) -> list[str]:
    """Everything in the cache but the lock files."""
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.parent.name != "locks"
    )


# ---- the table --------------------------------------------------------------------------------
def test_registry_holds_ours_magenta_and_quickdraw(magenta_gen_dir: Path) -> None:
    models = hub.registry()["models"]
    magenta = {k: v for k, v in models.items() if v["origin"] == "magenta"}
    assert len(magenta) == 114 * 4  # 114 classes x gen/vae x H = 512/1024
    assert models["sheep"]["shipped"] == "models/sheep"
    pinned = {k: v["files"][0] for k, v in magenta.items() if v["files"][0]["sha256"]}
    assert len(pinned) == 40 and all(k.startswith("magenta/") and k.endswith(".gen") for k in pinned)
    for f in pinned.values():  # every pinned hash is that of the byte-exact copy
        local = magenta_gen_dir / f["name"]
        assert hashlib.sha256(local.read_bytes()).hexdigest() == f["sha256"]
        assert local.stat().st_size == f["size"]
    names = [f["name"] for v in models.values() for f in v["files"]]
    assert len(names) == len(set(names)), "two files would share a cache / mirror name"
    large = models["magenta-large/owl.vae"]
    assert large["dims"] == {"kind": "vae", "cell": "lstm", "dec_size": 1024} and large["files"][0]["name"] == "large_models/owl.vae.json"
    assert large["files"][0]["url"].endswith("/sketchRNN/large_models/owl.vae.json")
    classes = hub.dataset_classes()
    assert len(classes) == 345 and "zigzag" in classes and "The Eiffel Tower" in classes


def test_import_loads_no_torch() -> None:
    code = (
        "import sys, sketchkit.hub as z, sketchkit.cli.zoo, sketchkit.cli.data_pull\n"
        "z.available_models(); z.info('owl'); z.candidates('sheep')\n"
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_conversion_needs_no_torch(zoo_mirror, tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"  # as if torch were not installed
        "import sketchkit.hub as z\n"
        "print(z.pull('magenta/owl.gen', progress=False))\n"
        "assert 'sketchkit.export' not in sys.modules and 'sketchkit.zoo.model' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    d = tmp_path / "cache" / "models" / "magenta" / "owl.gen"
    assert out.strip() == str(d)
    assert ModelInfo.load(d).files == {"decoder_step": "decoder_step.onnx"}
    assert cache_files(tmp_path / "cache") == [
        f"downloads/{OWL}",
        "models/magenta/owl.gen/decoder_step.onnx",
        "models/magenta/owl.gen/model.json",
    ]


def test_names_resolve_to_candidates() -> None:
    assert hub.candidates("owl") == ["magenta/owl.vae", "magenta/owl.gen"]
    assert hub.candidates("magenta/owl.gen") == ["magenta/owl.gen"]
    assert hub.candidates("magenta-large/owl.vae") == ["magenta-large/owl.vae"]
    assert hub.candidates("sheep")[0] == "sheep"  # ours first
    with pytest.raises(SketchkitError, match=r"unknown model 'owll' \(did you mean .*owl"):
        hub.candidates("owll")


# ---- download, verify, cache ------------------------------------------------------------------
def test_fetch_verifies_and_caches(zoo_mirror, tmp_path: Path) -> None:
    path = hub.fetch(owl_file(), progress=False)
    assert path == tmp_path / "cache" / "downloads" / OWL
    assert hashlib.sha256(path.read_bytes()).hexdigest() == owl_file()["sha256"]
    hub.fetch(owl_file(), progress=False)  # cached and verified: no second request
    assert zoo_mirror.requests(OWL) == [None]
    assert cache_files(tmp_path / "cache") == [f"downloads/{OWL}"]  # no pins: the hash was known


def test_corrupted_byte_is_rejected_and_nothing_kept(zoo_mirror, tmp_path: Path) -> None:
    zoo_mirror.corrupt.add(OWL)
    with pytest.raises(hub.DownloadError, match="SHA-256 mismatch") as e:
        hub.pull("magenta/owl.gen", progress=False)
    assert "\n" not in str(e.value)
    assert cache_files(tmp_path / "cache") == []
    assert not (tmp_path / "cache" / "models" / "magenta" / "owl.gen").exists()


def test_download_cut_halfway_resumes_with_range(zoo_mirror) -> None:
    zoo_mirror.cut[OWL] = 1
    path = hub.fetch(owl_file(), progress=False)
    assert zoo_mirror.requests(OWL) == [None, f"bytes={OWL_SIZE // 2}-"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == owl_file()["sha256"]
    assert not path.with_name(OWL + ".part").exists()


def test_part_left_by_an_earlier_process_is_resumed(
    zoo_mirror, magenta_gen_dir: Path, tmp_path: Path
) -> None:
    part = tmp_path / "cache" / "downloads" / (OWL + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes((magenta_gen_dir / OWL).read_bytes()[:1_000_000])
    hub.fetch(owl_file(), progress=False)
    assert zoo_mirror.requests(OWL) == ["bytes=1000000-"]


def test_stale_part_is_dropped_and_downloaded_again(zoo_mirror, tmp_path: Path) -> None:
    part = tmp_path / "cache" / "downloads" / (OWL + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 1000)  # not a prefix of the file: the resumed file fails the check
    hub.fetch(owl_file(), progress=False)
    assert zoo_mirror.requests(OWL) == ["bytes=1000-", None]


def test_server_that_ignores_range_restarts_the_file(
    zoo_mirror, magenta_gen_dir: Path, tmp_path: Path
) -> None:
    zoo_mirror.ranges = False
    part = tmp_path / "cache" / "downloads" / (OWL + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes((magenta_gen_dir / OWL).read_bytes()[:1000])
    path = hub.fetch(owl_file(), progress=False)
    assert zoo_mirror.requests(OWL) == ["bytes=1000-"]
    assert path.stat().st_size == OWL_SIZE


def test_unknown_hash_is_pinned_on_first_download(zoo_mirror, magenta_gen_dir: Path, tmp_path: Path) -> None:
    # the H = 1024 owl is not in shared/: the mirror serves the H = 512 bytes under its name
    zoo_mirror.files["large_models/owl.gen.json"] = magenta_gen_dir / OWL
    large = hub.registry()["models"]["magenta-large/owl.gen"]["files"][0]
    assert (
        large["sha256"] is None and hub.info("magenta-large/owl.gen")["files"][0]["verified_by"] == "unknown"
    )
    path = hub.fetch(large, progress=False)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert hub.pins() == {large["url"]: digest}  # keyed by the upstream URL, not the mirror's
    assert hub.info("magenta-large/owl.gen")["files"][0] == dict(large, sha256=digest, verified_by="pinned")
    # upstream (here: the mirror) now serves other bytes: the pin rejects them
    path.unlink()
    zoo_mirror.corrupt.add("large_models/owl.gen.json")
    with pytest.raises(hub.DownloadError, match="SHA-256 mismatch"):
        hub.fetch(large, progress=False)
    assert not path.exists() and not path.with_name(path.name + ".part").exists()


def test_unreachable_mirror_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SKETCHKIT_ZOO_MIRROR", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("SKETCHKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(hub.DownloadError) as e:
        hub.pull("magenta/owl.gen", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"cannot download http://127.0.0.1:{port}/owl.gen.json")
    assert msg.endswith("available locally: sheep")  # the shipped default is always there
    assert cache_files(tmp_path / "cache") == []


def test_missing_file_on_the_mirror_is_not_published(zoo_mirror) -> None:
    with pytest.raises(hub.NotPublished, match=r"owl\.vae\.json: not found \(HTTP 404; missing from the mirror") as e:
        hub.pull("magenta/owl.vae", progress=False)
    assert (e.value.url, e.value.status) == (f"{zoo_mirror.url}/owl.vae.json", 404)


def test_a_404_says_what_happened_and_which_model_is_used_instead(
    zoo_mirror, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mirror (../shared/data/magenta-gen) lacks owl.vae.json: `owl` says so, with the URL and
    the status, and names the model it falls back to (issue 26 item 9)."""
    assert hub.pull("owl") == hub.model_dir("magenta/owl.gen")
    said = [line for line in capsys.readouterr().err.splitlines() if "HTTP 404" in line]
    assert said == [
        f"magenta/owl.vae could not be fetched: {zoo_mirror.url}/owl.vae.json: not found (HTTP 404; "
        f"missing from the mirror SKETCHKIT_ZOO_MIRROR={zoo_mirror.url}); using magenta/owl.gen instead"
    ]
    monkeypatch.delenv("SKETCHKIT_ZOO_MIRROR")  # upstream: a 404 there means it is not published
    assert str(hub.NotPublished("https://x.test/a.json")) == "https://x.test/a.json: not found (HTTP 404; not published upstream)"


def test_two_processes_fetching_one_file_end_with_one_good_copy(zoo_mirror, tmp_path: Path) -> None:
    code = "import sketchkit.hub as z, sys; print(z.fetch(z.registry()['models']['magenta/owl.gen']['files'][0], progress=False))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs[0] == outs[1]
    assert zoo_mirror.requests(OWL) == [None]  # the second waited for the lock, then found it verified
    assert cache_files(tmp_path / "cache") == [f"downloads/{OWL}"]
    assert hashlib.sha256(Path(outs[0]).read_bytes()).hexdigest() == owl_file()["sha256"]


# ---- models -----------------------------------------------------------------------------------
def test_resolve_paths_and_shipped_model(tmp_path: Path) -> None:
    from onnx_fixtures import make_model

    d = make_model(tmp_path / "m", "decoder-only")
    assert hub.resolve(d) == d and hub.resolve(d / "model.json") == d
    with pytest.raises(ModelError, match="no model.json"):
        hub.resolve(tmp_path)
    with pytest.raises(ModelError, match="no such model directory"):
        hub.resolve(str(tmp_path / "nope"))
    sheep = hub.model_dir("sheep")
    if (sheep / "model.json").is_file():
        assert hub.resolve("sheep") == sheep
    else:
        with pytest.raises(ModelError, match="shipped model sheep has no ONNX export yet"):
            hub.resolve("sheep")


def test_publish_pull_and_sample_our_model(
    zoo_mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our release path end to end: make_registry publish -> mirror -> pull -> sample."""
    import make_registry  # scripts/, on sys.path from tests/conftest.py
    from onnx_fixtures import make_model

    from sketchkit.runtimes.onnx import OnnxRuntime
    from sketchkit.sampling import Sampler, SamplingOptions

    table = tmp_path / "registry.json"
    table.write_text((hub.zoo_dir() / "registry.json").read_text())
    monkeypatch.setattr(make_registry, "REGISTRY", table)
    make_registry.publish(
        make_model(tmp_path / "built", "vae", name="tinyowl"), "models-v1", tmp_path / "stage"
    )
    zoo_mirror.root = tmp_path / "stage"
    monkeypatch.setattr(hub.table, "registry", lambda: json.loads(table.read_text()))  # read by every module
    row = hub.table.registry()["models"]["tinyowl"]
    assert [f["name"] for f in row["files"]] == [  # model.json, then the graphs in graphs_for order
        "tinyowl.model.json",
        "tinyowl.encoder.onnx",
        "tinyowl.decoder_init.onnx",
        "tinyowl.decoder_step.onnx",
    ]
    assert (
        row["files"][0]["url"]
        == "https://github.com/sketchkit/sketchkit/releases/download/models-v1/tinyowl.model.json"
    )
    assert hub.candidates("tinyowl") == ["tinyowl"]

    d = hub.resolve("tinyowl", progress=False)
    assert d == tmp_path / "cache" / "models" / "tinyowl" and ModelInfo.load(d).dims.kind == "vae"
    sketches = Sampler(OnnxRuntime(d)).generate(3, options=SamplingOptions(seed=1))
    assert len(sketches) == 3 and all(np.isfinite(s).all() for s in sketches)
    assert hub.resolve("tinyowl", progress=False) == d and len(zoo_mirror.log) == 4  # cached: no requests
    assert "tinyowl" in hub.local_models()
    removed = hub.remove("tinyowl")
    assert d in removed and not d.exists() and not any((tmp_path / "cache" / "downloads").iterdir())
    with pytest.raises(SketchkitError, match="tinyowl is not cached"):
        hub.remove("tinyowl")


def test_pull_converts_and_generates(zoo_mirror, tmp_path: Path) -> None:
    from sketchkit.runtimes.onnx import OnnxRuntime
    from sketchkit.sampling import Sampler, SamplingOptions

    d = hub.resolve("owl", progress=False)  # no owl.vae on the mirror (404): falls back to the gen
    assert d == tmp_path / "cache" / "models" / "magenta" / "owl.gen"
    assert [n for n, _ in zoo_mirror.log] == ["owl.vae.json", OWL]
    info = ModelInfo.load(d)
    assert (info.dims.kind, info.dims.dec_size, info.dims.num_mixture, info.max_seq_len) == ("decoder-only", 512, 20, 174)
    assert info.scale_factor == pytest.approx(76.6042)
    sketches = Sampler(OnnxRuntime(d)).generate(2, options=SamplingOptions(seed=0))
    assert len(sketches) == 2 and all(len(s) > 5 for s in sketches)
    assert hub.resolve("owl", progress=False) == d and len(zoo_mirror.log) == 2  # cached now
    assert not list(d.parent.glob(".*.tmp"))


def test_two_processes_pulling_one_model_end_with_one_copy(zoo_mirror, tmp_path: Path) -> None:
    code = "import sketchkit.hub as z; print(z.pull('magenta/cat.gen', progress=False))"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs[0] == outs[1]
    assert zoo_mirror.requests("cat.gen.json") == [None]
    ModelInfo.load(outs[0])
    assert [p.name for p in Path(outs[0]).parent.iterdir()] == ["cat.gen"]  # no temp dirs left


# ---- training data ----------------------------------------------------------------------------
def test_pull_data_pins_and_loads(zoo_mirror, sheep_npz: Path, tmp_path: Path) -> None:
    from sketchkit.datasets import load_npz

    zoo_mirror.files["sheep.npz"] = sheep_npz  # stands in for Google's sheep.npz
    path = hub.pull_data("sheep", progress=False)
    assert path == tmp_path / "cache" / "data" / "sheep.npz"
    assert hub.pins() == {
        "https://storage.googleapis.com/quickdraw_dataset/sketchrnn/sheep.npz": hashlib.sha256(
            sheep_npz.read_bytes()
        ).hexdigest()
    }
    assert len(load_npz(path).train) == 7400
    out = hub.pull_data("sheep", out=tmp_path / "elsewhere", progress=False)
    assert out == tmp_path / "elsewhere" / "sheep.npz"
    with pytest.raises(hub.NotPublished):  # a name with spaces is URL-quoted
        hub.pull_data("palm_tree", progress=False)
    assert zoo_mirror.log[-1][0] == "palm tree.npz"
    with pytest.raises(SketchkitError, match="unknown QuickDraw class 'shep' .*sheep"):
        hub.pull_data("shep")
