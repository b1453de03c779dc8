"""Hostile inputs (issue 13): every probe that once broke sketchkit, run against real parts - a
real HTTP mirror on 127.0.0.1 that misbehaves each way (tests/conftest.py), real bomb files, a
real tritonserver, real kills. Each asserts the one-line error, the exit code, that nothing
outside the target was touched, and the peak memory where memory is the point."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sketchkit import datasets, hub
from sketchkit.errors import ModelError
from sketchkit.hub.cache import set_pin
from sketchkit.modelinfo import ModelInfo

OWL = "owl.gen.json"
LARGE_OWL = "large_models/owl.gen.json"  # unpinned upstream: the mirror serves the H = 512 bytes
MB = 1 << 20


# ---- helpers ----------------------------------------------------------------------------------
def cli(*args: object, env: dict[str, str] | None = None, preexec=None, timeout: float = 300):
    """`sketchkit ARGS` in a fresh process: (exit code, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "sketchkit", *map(str, args)], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, preexec_fn=preexec, timeout=timeout,
    )  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


def one_line(code: int, err: str) -> str:
    """The error line of a failed command: exit 1, one line, no traceback (a progress label
    such as `converting` may come before it)."""
    assert code == 1, err[-2000:]
    assert "Traceback" not in err and err.count("error: ") == 1, err[-2000:]
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and err.endswith(last + "\n"), err[-2000:]
    return last


def peak_rss(*args: object, env: dict[str, str] | None = None) -> tuple[int, str, int]:
    """`sketchkit ARGS` under a parent that reports its children's peak RSS:
    (exit code, stderr, peak RSS in bytes)."""
    wrap = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[2:], stderr=subprocess.PIPE, text=True)\n"
        "open(sys.argv[1], 'w').write(f'{r.returncode}\\n{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n{r.stderr}')\n"
    )
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"peak-{os.getpid()}-{time.monotonic_ns()}.txt"
    subprocess.run([sys.executable, "-c", wrap, out, sys.executable, "-m", "sketchkit", *map(str, args)],
                   env={**os.environ, **(env or {})}, check=True, timeout=300)  # fmt: skip
    code, rss, err = out.read_text().split("\n", 2)
    out.unlink()
    return int(code), err, int(rss) * 1024


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for directories): to show nothing changed."""
    return {
        str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
        if not p.is_symlink()
    }


def files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if not p.is_dir()]


def model_copy(src: Path, dst: Path, **changes: object) -> Path:
    """A copy of a real model directory with model.json fields changed."""
    shutil.copytree(src, dst)
    d = json.loads((dst / "model.json").read_text())
    for key, value in changes.items():
        if key.startswith(("files.", "dims.")):
            part, _, field = key.partition(".")
            d[part][field] = value
        else:
            d[key] = value
    (dst / "model.json").write_text(json.dumps(d))
    return dst


def file_row(name: str) -> dict:
    return hub.registry()["models"][name]["files"][0]


def need_converter() -> None:
    pytest.importorskip("torch", reason="converting Magenta JSON needs the export extra")


# ---- 1. names that become paths ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../x", "ABSOLUTE", "a" * 300], ids=["dotdot", "absolute", "300-chars"])
def test_build_repo_refuses_names_that_escape_out(tiny_uncond: Path, tmp_path: Path, name: str) -> None:
    name = str(tmp_path / "escaped") if name == "ABSOLUTE" else name  # <name>_decoder_step would land beside it
    model = model_copy(tiny_uncond, tmp_path / "model", name=name)
    before = tree(tmp_path)
    code, _, err = cli("serve", "build-repo", model, "--out", tmp_path / "a" / "b" / "repo", "--no-stateful")
    assert "bad model name" in one_line(code, err) and "letters, digits" in err
    assert tree(tmp_path) == before  # no repo, no x next to it, no config.pbtxt / model.py anywhere


def test_import_magenta_refuses_a_bad_info_name(magenta_gen_dir: Path, tmp_path: Path) -> None:
    need_converter()
    data = json.loads((magenta_gen_dir / OWL).read_text())
    data[0]["name"] = "../../evil"
    src = tmp_path / "evil.gen.json"
    src.write_text(json.dumps(data))
    code, _, err = cli("import-magenta", src, tmp_path / "out" / "model")
    assert "bad model name '../../evil'" in one_line(code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.gen.json"]


def test_build_repo_force_replaces_only_its_own_repository(tiny_uncond: Path, tmp_path: Path) -> None:
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    code, _, err = cli("serve", "build-repo", tiny_uncond, "--out", precious, "--force", "--no-stateful")
    assert "not a repository written by `sketchkit serve build-repo`" in one_line(code, err)
    assert tree(precious) == {"thesis.tex": b"years of work"}
    repo = tmp_path / "repo"  # a repository we wrote is replaced, as --force says
    assert cli("serve", "build-repo", tiny_uncond, "--out", repo, "--no-stateful")[0] == 0
    assert cli("serve", "build-repo", tiny_uncond, "--out", repo, "--no-stateful", "--force")[0] == 0


# ---- 2. a half file must not stick in the cache -----------------------------------------------
def test_half_file_without_length_is_neither_pinned_nor_stuck(zoo_mirror, magenta_gen_dir: Path, tmp_path: Path) -> None:
    need_converter()
    zoo_mirror.files[LARGE_OWL] = magenta_gen_dir / OWL
    zoo_mirror.no_length.add(LARGE_OWL)
    zoo_mirror.half.add(LARGE_OWL)
    code, _, err = cli("zoo", "pull", "magenta-large/owl.gen")
    one_line(code, err)
    cache = tmp_path / "cache"
    assert hub.pins() == {} and not files(cache / "downloads")  # not trusted, not kept
    assert not (cache / "models" / "magenta-large" / "owl.gen").exists()
    zoo_mirror.half.clear()  # upstream is whole again: the next fetch gets and pins the real file
    path = hub.fetch(file_row("magenta-large/owl.gen"), progress=False)
    assert path.read_bytes() == (magenta_gen_dir / OWL).read_bytes()
    assert hub.pins() == {file_row("magenta-large/owl.gen")["url"]: hub.sha256_file(path)}


def test_zoo_rm_clears_pins_partials_and_leftovers(zoo_mirror, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    downloads, models = cache / "downloads", cache / "models" / "magenta-large"
    downloads.mkdir(parents=True)
    (downloads / "large_models").mkdir()
    (downloads / LARGE_OWL).write_text("half")  # what the old code kept and pinned
    (downloads / f"{LARGE_OWL}.part").write_text("part")
    (models / ".owl.gen.k1.tmp" / "sub").mkdir(parents=True)  # a killed pull's temp dir
    set_pin(file_row("magenta-large/owl.gen")["url"], "0" * 64)
    code, _, err = cli("zoo", "verify")
    assert "magenta-large/owl.gen" in one_line(code, err)
    code, _, err = cli("zoo", "rm", "magenta-large/owl.gen")
    assert code == 0, err
    assert hub.pins() == {} and not files(downloads) and not list(models.iterdir())
    assert cli("zoo", "verify")[0] == 0


# ---- 3. a planted .part link is never written through ----------------------------------------
@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_planted_part_link_is_not_followed(zoo_mirror, magenta_gen_dir: Path, tmp_path: Path, link: str) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"x" * 1000)  # 1000 bytes: Range would ask the rest "after" them
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    part = downloads / f"{OWL}.part"
    part.symlink_to(outside) if link == "symlink" else os.link(outside, part)
    path = hub.fetch(file_row("magenta/owl.gen"), progress=False)
    assert path.read_bytes() == (magenta_gen_dir / OWL).read_bytes()
    assert outside.read_bytes() == b"x" * 1000


# ---- 4. size cap, deadline, minimum rate ------------------------------------------------------
@pytest.mark.parametrize("length", [True, False], ids=["content-length", "no-length"])
def test_oversize_download_stops_at_the_registry_size(zoo_mirror, tmp_path: Path, length: bool) -> None:
    size = file_row("magenta/owl.gen")["size"]
    zoo_mirror.extra[OWL] = 300 * MB
    if not length:
        zoo_mirror.no_length.add(OWL)
    with pytest.raises(hub.DownloadError, match=f"more than the {size} the registry lists; nothing kept") as e:
        hub.fetch(file_row("magenta/owl.gen"), progress=False)
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "cache" / "downloads").iterdir())
    time.sleep(0.5)  # let the server notice the hang-up
    assert zoo_mirror.sent[OWL] < size + 32 * MB  # it stopped reading: not 300 MB


def test_unknown_size_is_capped(zoo_mirror, magenta_gen_dir: Path, tmp_path: Path, monkeypatch) -> None:
    zoo_mirror.files[LARGE_OWL] = magenta_gen_dir / OWL
    zoo_mirror.extra[LARGE_OWL] = 300 * MB
    zoo_mirror.no_length.add(LARGE_OWL)
    monkeypatch.setenv("SKETCHKIT_DOWNLOAD_MAX_BYTES", str(5 * MB))
    with pytest.raises(hub.DownloadError, match="SKETCHKIT_DOWNLOAD_MAX_BYTES"):
        hub.fetch(file_row("magenta-large/owl.gen"), progress=False)
    assert not files(tmp_path / "cache" / "downloads") and hub.pins() == {}


@pytest.mark.parametrize(
    ("drip", "env", "message"),
    [
        ((1, 0.2), {"SKETCHKIT_DOWNLOAD_MIN_RATE": "100", "SKETCHKIT_DOWNLOAD_RATE_WINDOW": "1"}, "under 100 B/s"),
        ((2000, 0.05), {"SKETCHKIT_DOWNLOAD_DEADLINE": "1.5"}, "past the 1.5 s deadline"),
    ],
    ids=["min-rate", "deadline"],
)
def test_dripping_mirror_is_cut_off(zoo_mirror, tmp_path: Path, drip, env, message) -> None:
    zoo_mirror.drip[OWL] = drip
    code, _, err = cli("zoo", "pull", "magenta/owl.gen", env=env, timeout=90)  # (hung for good before)
    assert message in one_line(code, err) and "run the same command again to resume" in err
    assert not (tmp_path / "cache" / "downloads" / OWL).exists()


def test_bad_download_limits_are_one_line(zoo_mirror) -> None:
    code, _, err = cli("zoo", "pull", "magenta/owl.gen", env={"SKETCHKIT_DOWNLOAD_DEADLINE": "soon"})
    assert "SKETCHKIT_DOWNLOAD_DEADLINE must be a positive number" in one_line(code, err)


# ---- 5. model.json is validated wherever it is read -------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dims.dec_size": 10**12}, "dec_size must be an integer in"),
        ({"dims.kind": "gen"}, "kind must be one of vae, decoder-only"),
        ({"dims.extra": 1}, "unknown field(s) extra"),
        ({"max_seq_len": 10**9}, "max_seq_len must be an integer in"),
        ({"max_seq_len": 0}, "max_seq_len must be an integer in"),
        ({"dims.num_mixture": 10**9}, "num_mixture must be an integer in"),
        ({"scale_factor": 0}, "scale_factor must be a finite number > 0"),
        ({"scale_factor": -63.1}, "scale_factor must be a finite number > 0"),
        ({"scale_factor": "63"}, "scale_factor must be a finite number > 0"),
        ({"start_token": [0, 0, 1]}, "start_token must be 5 finite numbers"),
        ({"files.decoder_step": "/etc/passwd"}, "must be a plain file name"),
        ({"files.decoder_step": "../other/decoder_step.onnx"}, "must be a plain file name"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_model_json_is_validated(tiny_uncond: Path, tmp_path: Path, changes: dict, message: str) -> None:
    shutil.copytree(tiny_uncond, tmp_path / "other")  # a real graph the relative path would reach
    model = model_copy(tiny_uncond, tmp_path / "model", **changes)
    code, _, err = cli("generate", model, "-n", "2", "-o", tmp_path / "out.png")
    assert message in one_line(code, err)
    assert not (tmp_path / "out.png").exists()


def test_graph_symlink_out_of_the_model_directory_is_refused(tiny_uncond: Path, tmp_path: Path) -> None:
    model = model_copy(tiny_uncond, tmp_path / "model")
    outside = tmp_path / "elsewhere.onnx"
    (model / "decoder_step.onnx").rename(outside)
    (model / "decoder_step.onnx").symlink_to(outside)
    code, _, err = cli("generate", model, "-n", "2", "-o", tmp_path / "out.png")
    assert "lies outside the model directory" in one_line(code, err)


def test_model_json_from_a_triton_server_is_validated(tiny_uncond: Path) -> None:
    # TritonRuntime builds its ModelInfo from the server's config parameter with from_dict
    served = json.loads((tiny_uncond / "model.json").read_text())
    for bad in ({"z_size": 10**12}, {"state_size": 10**12}, {"name": "../x"}, {"scale_factor": float("nan")}):
        with pytest.raises(ModelError) as e:
            ModelInfo.from_dict({**served, **bad})
        assert "\n" not in str(e.value)


# ---- 6. .npz bombs ----------------------------------------------------------------------------
def _npy(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _bomb(path: Path, kind: str) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        if kind == "inflates to 1 GB":  # an honest header, 1 GB of zeros that deflate to ~1 MB
            with z.open("train.npy", "w", force_zip64=True) as f:
                f.write(_npy((125_000_000,)))
                zeros = bytes(8 * MB)
                for _ in range(125_000_000 * 8 // len(zeros)):
                    f.write(zeros)
        else:
            z.writestr("train.npy", _npy((4 * 10**8, 3) if kind == "claims 8.9 GiB" else (10**12, 3)))
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [("claims 8.9 GiB", "header claims shape (400000000, 3)"), ("claims 22 TiB", "header claims shape (1000000000000, 3)"),
     ("inflates to 1 GB", "over the 536870912-byte cap (SKETCHKIT_MAX_NPZ_BYTES)")],
)  # fmt: skip
def test_npz_bombs_are_refused_in_little_memory(tmp_path: Path, kind: str, message: str) -> None:
    bomb = _bomb(tmp_path / "bomb.npz", kind)
    assert bomb.stat().st_size < (2 * MB if "inflates" in kind else 600)
    code, err, rss = peak_rss("data", "info", bomb)
    assert message in one_line(code, err)
    assert rss < 300 * MB, f"peak RSS {rss / MB:.0f} MB"


# ---- 7. the stateful Triton step has limits ---------------------------------------------------
@pytest.mark.triton
def test_stateful_triton_caps_rows_and_total_state(tiny_uncond: Path, tmp_path: Path) -> None:
    pytest.importorskip("pytriton", reason="needs nvidia-pytriton (pip install 'sketchkit[serve]')")
    from sketchkit.runtimes.triton import TritonError, TritonRuntime
    from sketchkit.serving.repository import RepoOptions, build_repo
    from sketchkit.serving.server import TritonServer, free_port

    info = ModelInfo.load(tiny_uncond)
    row = info.dims.state_size * 4
    opts = RepoOptions(flavor="cpu", max_sequence_rows=64, max_state_bytes=3 * 64 * row)
    build_repo([tiny_uncond], tmp_path / "repo", opts)
    config = next((tmp_path / "repo").glob("*_decoder_step_stateful/config.pbtxt"))
    with open(config, "a") as f:  # this test holds its sequences: none may give way, however slow the machine
        f.write('parameters {\n  key: "evict_idle_seconds"\n  value {\n    string_value: "600"\n  }\n}\n')
    with TritonServer(tmp_path / "repo", free_port(), free_port(), log_path=tmp_path / "log", startup_timeout_s=120) as server:
        def open_sequence(rows: int) -> TritonRuntime:
            rt = TritonRuntime(server.grpc_url, info.name, stateful=True, timeout_s=20)
            rt.step(np.zeros((rows, 5), np.float32), None, rt.init_state(None, rows))
            return rt

        with pytest.raises(TritonError, match=r"65 rows, over the cap of 64 per sequence") as e:
            open_sequence(65)
        assert "\n" not in str(e.value)
        held = [open_sequence(64) for _ in range(3)]  # exactly the cap
        with pytest.raises(TritonError, match=r"would pass the server's cap of \d+ bytes"):
            open_sequence(64)
        held.pop().close()  # END frees a sequence's state ...
        held.append(open_sequence(64))  # ... and its room is there again
        for rt in held:
            rt.close()
        assert server.ready()


# ---- 8. what used to be a traceback is one line -----------------------------------------------
def _recipe(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(f'dataset = ["data.npz"]\n{line}\n')
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("generate", "a" * 300, "-n", "1"), "File name too long"),
        (("generate", "sheep", "-n", 1_000_000_000), "-n must be >= 1 and <= 10000"),
        (("generate", "sheep", "-n", 2, "--max-len", 1_000_000_000), "max_len must be in [1, 10000]"),
        (("complete", "sheep", "-k", 10**9), "-k must be >= 1 and <= 10000"),
        (("interpolate", "sheep", "--steps", 10**5), "--steps must be >= 1 and <= 10000"),
    ],
    ids=["300-char-name", "n", "max-len", "k", "steps"],
)
def test_cli_sizes_and_names_are_one_line(tmp_path: Path, args, message) -> None:
    code, _, err = cli(*args, "-o", tmp_path / "out.png")
    assert message in one_line(code, err)
    assert not list(tmp_path.iterdir())


def test_malformed_mirror_url_is_one_line(tmp_path: Path) -> None:
    env = {"SKETCHKIT_ZOO_MIRROR": "http://[::1", "SKETCHKIT_CACHE": str(tmp_path / "cache")}
    code, _, err = cli("zoo", "pull", "magenta/owl.gen", env=env)
    assert "SKETCHKIT_ZOO_MIRROR='http://[::1' is not an http(s) URL" in one_line(code, err)


@pytest.mark.parametrize("command", ["info", "convert"])
def test_deeply_nested_ndjson_is_one_line(tmp_path: Path, command: str) -> None:
    path = tmp_path / "deep.ndjson"
    path.write_text('{"word": "x", "drawing": [[[0, 5], [0, 5]]]}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    args = ("data", "info", path) if command == "info" else ("data", "convert", path, tmp_path / "out.npz")
    code, _, err = cli(*args)
    assert "deep.ndjson:2: JSON nested too deeply" in one_line(code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.ndjson"]


@pytest.mark.parametrize(
    ("line", "message"),
    [("lr = nan", "learning_rate must be a finite number > 0"),  # a version 1 name, converted ("eval_every = 0", "eval_every must be positive"),
     ("grad_clip = -1.0", "grad_clip must be a finite number > 0")],
)  # fmt: skip
def test_bad_training_config_is_one_line(tmp_path: Path, line: str, message: str) -> None:
    pytest.importorskip("torch", reason="training needs the train extra")
    code, _, err = cli("train", _recipe(tmp_path, line), "--out", tmp_path / "run")
    assert message in one_line(code, err)
    assert not (tmp_path / "run").exists()


def _wrong_width_model(src: Path, dst: Path) -> Path:
    """decoder_step whose params output is declared [B, W] (symbolic) and is one column short
    at run time: only running it shows the lie."""
    import onnx
    from onnx import helper, numpy_helper

    shutil.copytree(src, dst)
    m = onnx.load(str(dst / "decoder_step.onnx"))
    width = 6 * ModelInfo.load(src).dims.num_mixture + 3
    for node in m.graph.node:
        node.output[:] = ["hostile/params_full" if o == "params" else o for o in node.output]
    consts = {"hostile/cut_s": [0], "hostile/cut_e": [width - 1], "hostile/cut_a": [1], "hostile/one": [1], "hostile/zeros2": [0, 0], "hostile/ones2": [1, 1]}
    m.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), n) for n, v in consts.items())
    m.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), "hostile/zero_f"))
    m.graph.node.extend([  # the end column comes from data (prev * 0), so no shape inference sees it
        helper.make_node("Slice", ["prev", "hostile/zeros2", "hostile/ones2"], ["hostile/cut_p"]),
        helper.make_node("Mul", ["hostile/cut_p", "hostile/zero_f"], ["hostile/cut_z"]),
        helper.make_node("Reshape", ["hostile/cut_z", "hostile/one"], ["hostile/cut_r"]),
        helper.make_node("Cast", ["hostile/cut_r"], ["hostile/cut_i"], to=onnx.TensorProto.INT64),
        helper.make_node("Add", ["hostile/cut_i", "hostile/cut_e"], ["hostile/cut_end"]),
        helper.make_node("Slice", ["hostile/params_full", "hostile/cut_s", "hostile/cut_end", "hostile/cut_a"], ["params"]),
    ])  # fmt: skip
    out = next(o for o in m.graph.output if o.name == "params")
    out.type.tensor_type.shape.dim[1].dim_param = "W"
    onnx.save(m, str(dst / "decoder_step.onnx"))
    return dst


def test_graph_output_wrong_only_at_run_time_is_one_line(tiny_uncond: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    model = _wrong_width_model(tiny_uncond, tmp_path / "model")
    code, _, err = cli("generate", model, "-n", "2", "-o", tmp_path / "out.png")
    assert "decoder_step returned params of shape [2, " in one_line(code, err)
    assert not (tmp_path / "out.png").exists()


@contextlib.contextmanager
def read_only(path: Path):
    """`path` read-only even for root (chattr +i; chmod does not stop root)."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("running as root without a working chattr +i: cannot make a directory read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_cache_is_one_line_for_pull_and_rm(zoo_mirror, tiny_uncond: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    with read_only(cache):
        code, _, err = cli("zoo", "pull", "magenta/owl.gen")
        assert str(cache) in one_line(code, err)
    cached = cache / "models" / "magenta" / "owl.gen"  # a cached model in a read-only cache
    shutil.copytree(tiny_uncond, cached)
    (cache / "locks").mkdir()
    before = tree(cache)
    with read_only(cached.parent), read_only(cache / "locks"), read_only(cache):
        code, _, err = cli("zoo", "rm", "magenta/owl.gen")
        one_line(code, err)
    assert tree(cache) == before  # nothing lost


def _fsize_limit(limit: int):
    def apply() -> None:  # a full disk, honestly simulated: writes past `limit` fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_during_a_pull_is_one_line_and_keeps_nothing(zoo_mirror, tmp_path: Path) -> None:
    code, _, err = cli("zoo", "pull", "magenta/owl.gen", preexec=_fsize_limit(MB))
    assert "File too large" in one_line(code, err) and "nothing kept" in err
    assert not list((tmp_path / "cache" / "downloads").iterdir())


def test_full_disk_during_convert_is_one_line_and_keeps_nothing(quickdraw_dir: Path, tmp_path: Path) -> None:
    src = quickdraw_dir / "simplified-25" / "owl.ndjson"
    code, _, err = cli("data", "convert", src, tmp_path / "owl.npz", preexec=_fsize_limit(2000))
    assert "File too large" in one_line(code, err)
    assert not list(tmp_path.iterdir())


# ---- 9. leftovers of killed processes are cleaned at the next run ------------------------------
def test_killed_pull_leaves_nothing_after_the_next_run(zoo_mirror, tmp_path: Path) -> None:
    need_converter()
    cache = tmp_path / "cache"
    parent = cache / "models" / "magenta"
    # the export takes a few milliseconds of a half-second pull: watch for its temp dir closely and
    # kill the pull there; a pull that finished first is tried again from an empty cache
    for _ in range(30):
        shutil.rmtree(cache, ignore_errors=True)
        proc = subprocess.Popen([sys.executable, "-m", "sketchkit", "zoo", "pull", "magenta/owl.gen"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        caught = False
        try:
            while proc.poll() is None:
                if parent.is_dir() and any(p.name.startswith("..owl.gen.") for p in parent.iterdir()):
                    proc.send_signal(signal.SIGKILL)
                    caught = True
                    break
                time.sleep(0.0005)
        finally:
            proc.wait()
        if caught:
            break
    else:
        pytest.fail("30 pulls all finished before they could be killed in the export")
    assert any(p.name.startswith("..owl.gen.") for p in parent.iterdir())  # the kill left a temp dir behind
    code, out, err = cli("zoo", "pull", "magenta/owl.gen")
    assert code == 0, err
    assert [p.name for p in parent.iterdir()] == ["owl.gen"]


def test_killed_checkpoint_writes_are_cleaned_at_resume(sheep, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="training needs the train extra")
    from sketchkit.datasets import Dataset, save_npz
    from sketchkit.zoo.config import Recipe
    from sketchkit.zoo.train import train

    few = [s for s in sheep.train if len(s) <= 30][:8]
    save_npz(tmp_path / "eight.npz", Dataset(few, few, few))
    hp = Recipe.of(dataset=[str(tmp_path / "eight.npz")], max_seq_len=30, cell="lstm", enc_size=8, dec_size=16,
                 z_size=4, num_mixture=3, batch_size=8, num_steps=2, eval_every=1, log_every=1, num_samples=1)  # fmt: skip
    run = tmp_path / "run"
    run.mkdir()
    stale = [run / f".{n}.safetensors.k{i}.tmp" for n in ("best", "last") for i in range(3)]
    for p in stale:
        p.write_bytes(b"\0" * 100_000)
    (run / "notes.tmp").write_text("not ours")
    train(hp, run, progress=False)
    assert not any(p.exists() for p in stale) and (run / "notes.tmp").exists()
    assert (run / "last.safetensors").is_file()


# ---- 10. data convert streams with bounded memory over both cores -----------------------------
def test_convert_streams_before_the_file_ends(tmp_path: Path) -> None:
    fifo = tmp_path / "drawings.ndjson"
    os.mkfifo(fifo)
    line = (json.dumps({"word": "zig", "drawing": [[[0, 9, 3, 12], [0, 9, 0, 5]]]}) + "\n").encode()
    chunks = 3 * (os.cpu_count() or 1) + 2  # more than the converter keeps in flight
    seen = threading.Event()
    streamed: list[bool] = []

    def write() -> None:
        with open(fifo, "wb") as f:
            f.write(line * (chunks * datasets.CHUNK_LINES))
            f.flush()
            streamed.append(seen.wait(60))  # results arrive while the file is still open ...
            f.write(line)  # ... and only then does it end

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    ds = datasets.ndjson_to_dataset([fifo], split=(1.0, 0.0, 0.0), progress=lambda n: seen.set())
    writer.join()
    assert streamed == [True]
    assert len(ds.train) == chunks * datasets.CHUNK_LINES + 1


def test_convert_output_is_the_same_as_before(quickdraw_dir: Path, tmp_path: Path) -> None:
    """The old converter (every drawing read, then converted one by one) gives the same sketches."""
    import contextlib as cl

    from sketchkit.errors import DataError

    sources = [quickdraw_dir / "simplified-25" / f"{c}.ndjson" for c in ("owl", "cat", "The Eiffel Tower")]
    sources.append(quickdraw_dir / "raw-sample" / "cat.ndjson")
    for src in sources:
        for epsilon in (2.0, 0.0):
            old = []
            for d in datasets.read_ndjson(src):
                with cl.suppress(DataError):
                    old.append(datasets.drawing_to_stroke3(d, epsilon))
            order = np.random.default_rng(5).permutation(len(old))
            new = datasets.ndjson_to_dataset([src], epsilon=epsilon, seed=5, split=(1.0, 0.0, 0.0)).train
            assert len(new) == len(old)
            for i, s in zip(order, new, strict=True):
                assert s.shape == old[i].shape and np.array_equal(s, old[i])
    out = tmp_path / "owl.npz"  # and the file as the CLI writes it
    assert cli("data", "convert", sources[0], out, "--seed", "3")[0] == 0
    want = datasets.ndjson_to_dataset([sources[0]], seed=3, workers=1)
    got = datasets.load_npz(out)
    for k in datasets.SPLITS:
        assert all(np.array_equal(a, b) for a, b in zip(got.split(k), want.split(k), strict=True))


# ---- issue 22: the server that `serve start` runs, and the CLI around it -----------------------
def _shm(prefix: str) -> list[str]:
    return sorted(p.name for p in Path("/dev/shm").glob(f"{prefix}*"))


def test_serve_start_cleans_shared_memory_after_a_crash_and_busy_is_unavailable(tmp_path: Path) -> None:
    """Items 5 and 6 on a real `sketchkit serve start` (fails on b361367: the stubs' segments were
    named triton_python_backend_shm_region_* and stayed in /dev/shm after a crash; busy was gRPC
    INTERNAL). The retryable busy is gRPC UNAVAILABLE (HTTP stays 400: Triton 2.51's HTTP frontend
    answers every model error so); after tritonserver dies,
    `serve start` exits 1 in one line and its segments are gone."""
    pytest.importorskip("pytriton", reason="needs nvidia-pytriton (pip install 'sketchkit[serve]')")
    import urllib.error
    import urllib.request

    import tritonclient.grpc as grpcclient

    from sketchkit import wire
    from sketchkit.serving.server import free_port

    GRPC_KEY = wire.GRPC_KEY_HEADER  # noqa: N806
    repo = tmp_path / "repo"
    code, _, err = cli("serve", "build-repo", "sheep", "--out", repo, "--no-stateful",
                       "--max-sketches-per-request", 4, "--max-sketches-in-flight", 4)  # fmt: skip
    assert code == 0, err
    http, grpc_port, metrics = free_port(), free_port(), free_port()  # never a README default (issue 26, item 3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sketchkit", "serve", "start", str(repo), "--http-port", str(http),
         "--grpc-port", str(grpc_port), "--metrics-port", str(metrics), "--log", str(tmp_path / "log")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().startswith("ready: "), proc.stderr.read() if proc.poll() is not None else ""
        prefix = f"sketchkit_{proc.pid}_{grpc_port}_"
        assert _shm(prefix)  # the stubs' segments, named so that serve start can find them
        key = {GRPC_KEY: wire.server_key()}
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")

        def ask(n: int, **extra: object) -> None:
            inputs = []
            for name, value in {"n": n, **extra}.items():
                dtype = {"n": "INT64", "max_len": "INT64", "greedy": "BOOL", "seed": "INT64"}[name]
                i = grpcclient.InferInput(name, [1], dtype)
                i.set_data_from_numpy(np.array([value], {"BOOL": bool}.get(dtype, np.int64)))
                inputs.append(i)
            client.infer("sheep_generate", inputs, headers=key, client_timeout=60)

        deep = urllib.request.Request(f"http://127.0.0.1:{http}/v2/models/sheep_generate/generate",
                                      data=b"[" * 60_000 + b"]" * 60_000, headers={"Content-Type": "text/plain"})  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:  # item 1, as a web page sends it: never parsed
            urllib.request.urlopen(deep, timeout=60)
        assert refused.value.code == 403
        request = urllib.request.Request(f"http://127.0.0.1:{http}/v2/models/sheep_generate/generate",
                                         data=b'{"n": 4}', headers={"x-sketchkit-key": key[GRPC_KEY]})  # fmt: skip
        busy: dict[str, str] = {}  # protocol -> what a refused request got
        for _ in range(10):  # each round: a long request fills the cap for ~0.2 s; ask meanwhile
            long = threading.Thread(target=ask, args=(4,), kwargs=dict(greedy=True, max_len=1000, seed=1))
            long.start()  # seed 1: three of the four rows run the full 1000 steps
            while long.is_alive() and len(busy) < 2:
                try:
                    ask(4)
                except grpcclient.InferenceServerException as e:
                    busy["grpc"] = f"{e.status()} {e.message()}"
                try:
                    urllib.request.urlopen(request, timeout=60).read()
                except urllib.error.HTTPError as e:
                    busy["http"] = f"{e.code} {e.read().decode()}"
            long.join(60)
            if len(busy) == 2:
                break
        assert busy["grpc"].startswith("StatusCode.UNAVAILABLE busy: "), busy
        assert busy["http"].startswith('400 {"error":"busy: '), busy  # 2.51's HTTP: 400 for every model error
        # a missing key is UNAVAILABLE too (Triton's answer): told apart by the message, as
        # serving/README.md ("From another codebase") says (issue 26, item 5)
        with pytest.raises(grpcclient.InferenceServerException) as unkeyed:
            client.infer("sheep_generate", [grpcclient.InferInput("n", [1], "INT64").set_data_from_numpy(
                np.array([1], np.int64))], client_timeout=60)  # fmt: skip
        assert str(unkeyed.value.status()) == "StatusCode.UNAVAILABLE"
        assert unkeyed.value.message().startswith("This protocol is restricted, expecting header")
        tritonserver = int(subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()[0])
        os.killpg(tritonserver, signal.SIGKILL)  # a crash: tritonserver and its stubs die at once
        assert proc.wait(60) == 1
        err = proc.stderr.read()
        assert err.splitlines()[-1].startswith("error: tritonserver exited with code -9") and "Traceback" not in err
        assert _shm(prefix) == []
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


@pytest.mark.parametrize(
    ("args", "message"),
    [(("start", "REPO", "--http-port", 70000), "port 70000 is not a TCP port (1..65535)"),
     (("start", "REPO", "--http-port", 0), "port 0 is not a TCP port (1..65535)"),
     *[(("build-repo", "sheep", "--out", "OUT", "--sequence-idle-s", v), "the sequence idle time in (0, 86400] s")
       for v in ("nan", "inf", "1e30")]],
    ids=["port-70000", "port-0", "idle-nan", "idle-inf", "idle-1e30"],
)  # fmt: skip
def test_serve_numbers_are_one_line(tiny_uncond: Path, tmp_path: Path, args, message) -> None:
    """Item 15 (fails on b361367: tracebacks, and --http-port 0 waited out the start-up timeout)."""
    repo = tmp_path / "repo"
    if args[0] == "start":
        assert cli("serve", "build-repo", tiny_uncond, "--out", repo, "--no-stateful")[0] == 0
    args = [str(repo) if a == "REPO" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    t = time.monotonic()
    code, _, err = cli("serve", *args)
    assert message in one_line(code, err)
    assert "starting" not in err  # checked before it says so (issue 26)
    assert time.monotonic() - t < 30 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["generate", "import-magenta"])
def test_deeply_nested_magenta_json_is_one_line(tmp_path: Path, command: str) -> None:
    """Item 10 (fails on b361367: a RecursionError traceback)."""
    path = tmp_path / "deep.gen.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    args = ("generate", path, "-n", 1, "-o", tmp_path / "x.svg") if command == "generate" else ("import-magenta", path, tmp_path / "out")
    code, _, err = cli(*args)
    assert "deep.gen.json: not a Magenta model (JSON nested too deeply)" in one_line(code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.gen.json"]


@pytest.mark.parametrize(
    ("name", "served", "message"),
    [("magenta-large/owl.gen", LARGE_OWL, "has dec_size 512 (the registry says 1024)"),
     ("magenta/owl.vae", "owl.vae.json", "has kind decoder-only (the registry says vae)")],
    ids=["large-H", "vae-kind"],
)  # fmt: skip
def test_downloaded_magenta_model_must_match_the_registry(zoo_mirror, magenta_gen_dir: Path, tmp_path: Path,
                                                          name: str, served: str, message: str) -> None:  # fmt: skip
    """Item 11 (fails on b361367: a decoder-only H = 512 file under an unpinned large or .vae name
    was pinned as trusted, and `zoo verify` said ok)."""
    zoo_mirror.files[served] = magenta_gen_dir / OWL
    code, _, err = cli("zoo", "pull", name)
    assert f"{name}: the downloaded model {message}; nothing kept" in one_line(code, err)
    cache = tmp_path / "cache"
    assert hub.pins() == {} and not files(cache / "downloads") and not (cache / "models" / name).exists()
    assert cli("zoo", "verify")[0] == 0


def test_zoo_pull_of_a_corrupt_cached_model_fails(zoo_mirror, tmp_path: Path) -> None:
    """Item 13 (fails on b361367: exit 0 and the path, for a model.json that does not parse)."""
    assert cli("zoo", "pull", "magenta/owl.gen")[0] == 0
    model_json = tmp_path / "cache" / "models" / "magenta" / "owl.gen" / "model.json"
    model_json.write_text("{not json")
    code, out, err = cli("zoo", "pull", "magenta/owl.gen")
    assert "the cached magenta/owl.gen is broken" in one_line(code, err) and "sketchkit zoo rm magenta/owl.gen" in err
    assert out == "" and model_json.read_text() == "{not json"  # nothing printed as a path, nothing touched


def test_untrusted_names_reach_the_terminal_escaped(tmp_path: Path) -> None:
    """Item 12 (fails on b361367: the OSC escape, U+202E and the bell were printed raw)."""
    evil = tmp_path / "ev\x1b]0;pwned\x07il\u202e"
    evil.mkdir()
    for args in (("generate", evil, "-n", 1, "-o", tmp_path / "x.svg"), ("data", "info", evil / "x.ndjson")):
        code, _, err = cli(*args)
        line = one_line(code, err)
        assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err
        assert "ev\\x1b]0;pwned\\x07il\\u202e" in line


def test_one_huge_ndjson_line_is_refused_in_little_memory(tmp_path: Path) -> None:
    """Item 14 (fails on b361367: `data info` parsed the whole line; 300 MB of line peaked at 3.1 GB)."""
    path = tmp_path / "huge.ndjson"
    with open(path, "w") as f:
        f.write('{"word": "x", "drawing": [[[0, 5], [0, 5]]]}\n{"word": "x", "drawing": [[[')
        f.write("1," * (20 << 20) + '1], [1]]]}\n')  # one 40 MB line
    for command in (("data", "info", path), ("data", "convert", path, tmp_path / "out.npz")):
        code, err, rss = peak_rss(*command)
        assert "huge.ndjson:2: a line of over 16 MB" in one_line(code, err)
        assert rss < 250 * MB, rss / MB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.ndjson"]


def test_png_of_a_huge_sketch_is_refused_in_bounded_time(tmp_path: Path) -> None:
    """Item 14 (fails on b361367: a 1,000,000-point sketch ran past 120 s at 1.6 GB into PNG)."""
    sketch = np.zeros((1_000_000, 3), np.int16)
    sketch[:, 0], sketch[::50, 2] = 1, 1
    src = tmp_path / "one.npz"
    both = np.array([sketch, sketch[:10]], dtype=object)
    np.savez(src, train=both, valid=both, test=both)
    t = time.monotonic()
    code, _, err = cli("render", src, "-o", tmp_path / "one.png", "--index", 0)
    assert "MB of SVG, over the 2.1 MB that PNG output rasterises" in one_line(code, err)
    assert time.monotonic() - t < 60 and not (tmp_path / "one.png").exists()
    assert cli("render", src, "-o", tmp_path / "one.svg", "--index", 0)[0] == 0  # SVG is still fine


def test_serve_key_is_made_once_private_and_printed(tmp_path: Path) -> None:
    """The key that `serve start` requires (items 1-3): made on first use, mode 0600, the same
    afterwards; $SKETCHKIT_SERVER_KEY overrides it."""
    env = {"SKETCHKIT_CACHE": str(tmp_path)}
    code, key, err = cli("serve", "key", env=env)
    assert code == 0 and len(key.strip()) >= 32, err
    assert (tmp_path / "server.key").stat().st_mode & 0o777 == 0o600
    assert cli("serve", "key", env=env)[1] == key and sorted(p.name for p in tmp_path.iterdir()) == ["server.key"]
    assert cli("serve", "key", env={**env, "SKETCHKIT_SERVER_KEY": "mine-and-long-enough"})[1] == "mine-and-long-enough\n"
