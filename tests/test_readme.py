"""README.md and serving/README.md as a newcomer runs them (issue 26): every ```bash and ```python
block, in order, pasted into a fresh bash (no venv on PATH) in a fresh copy of the repository, so
the READMEs cannot drift from what works. serving/README.md runs in a second fresh shell and copy,
after README.md's quick start made the venv (its first block activates it).

What the test changes, and why (nothing else):
- downloads: CI has no internet (and pip's PyTorch CPU index is dropped from `pip install`: pip's
  own configuration finds the CPU wheel, as in .ci/run). `SKETCHKIT_ZOO_MIRROR` points at a real HTTP mirror on 127.0.0.1
  (conftest's `ZooMirror`) serving ../shared's Magenta models, QuickDraw samples, SVGs and the sheep data,
  and each `https://` URL a command names is rewritten to that mirror by file name. QuickDraw's
  `sheep.npz` is stood in for by aaron_sheep.npz (as in tests/test_hub.py), its `owl.npz` by the 25
  owls of ../shared converted to .npz, its full `owl.ndjson` by those 25 owls.
- the venv: the quick start's `python3 -m venv .venv` finds `.venv` already made with this test's
  interpreter and its installed packages visible, so the README's `pip install` lines install only
  the project (pip finds every dependency, torch included, installed: no index is asked for it).
- ports: a README-default server may be running beside the tests (issue 26, item 3), so 8000, 8001,
  8002 and 8765 become free ports, and `serve start` / `playground` get the port flags they lack.
- training: `sketchkit train` runs 2 steps of a small model (`TINY_TRAIN`; the recipes run for hours).
- a command whose comment says "Ctrl-C stops it" (a foreground server) runs in the background until
  its port answers, then gets SIGTERM.
- a block after `<!-- readme-test: skip (reason) -->` is not run (a GPU, a cluster, docker, or the
  test suite itself): its lines must parse (`bash -n`), each `sketchkit` command in it (also under
  `torchrun -m sketchkit`) must accept its options (`--help` appended), and the repository files it
  names must exist.
Every command must exit 0, no output may hold a traceback or an error answer (`{"error"`: the
empty-key `curl` of issue 26 answered so with exit 0), and the headline `curl` must give strokes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import QUICKDRAW, ROOT, SHARED, SKETCHRNN, ZooMirror, need

SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b(.*?)-->")
FENCE = re.compile(r"^```(\w*)\s*$")
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002, "playground": 8765}
FOREGROUND = "Ctrl-C stops it"
TIMEOUT_S = 1200
# `sketchkit train` here: 2 steps of a small model (the recipe's LSTM 256 takes ~45 s a step on 2 shared
# cores); evaluate and export then read that checkpoint as they would a real one
TINY_TRAIN = ("--steps 2 --set batch_size=8 --set enc_size=16 --set dec_size=32 --set z_size=8 "
              "--set num_mixture=5 --set max_seq_len=60")


@dataclass
class Block:
    lang: str  # bash or python
    lines: list[str]  # bash: one command per entry (continuations joined)
    skip: str | None  # the reason, for a skipped block
    where: str  # file:line


def blocks(path: Path) -> list[Block]:
    """The ```bash/```sh and ```python blocks of a markdown file, in order."""
    out: list[Block] = []
    lines = path.read_text().splitlines()
    name = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
    i, skip = 0, None
    while i < len(lines):
        m = SKIP.search(lines[i])
        if m:
            skip = m[1].strip() or "skipped"
        fence = FENCE.match(lines[i])
        if fence:
            lang, start, body = fence[1], i + 1, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if lang in ("bash", "sh", "shell"):
                out.append(Block("bash", commands(body), skip, f"{name}:{start}"))
            elif lang == "python":
                out.append(Block("python", ["\n".join(body)], skip, f"{name}:{start}"))
            skip = None
        elif lines[i].strip() and not m:
            skip = None  # the marker applies to the block right after it
        i += 1
    return out


def commands(body: list[str]) -> list[str]:
    """Shell lines with `\\` continuations joined; blank and comment-only lines dropped."""
    out, cur = [], ""
    for line in body:
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        if cur.strip() and not cur.strip().startswith("#"):
            out.append(cur.strip())
        cur = ""
    return out


def split_comment(cmd: str) -> tuple[str, str]:
    """(command, trailing comment) of one shell line: a `#` after a blank, outside quotes."""
    quote = None
    for i, c in enumerate(cmd):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or cmd[i - 1].isspace()):
            return cmd[:i].rstrip(), cmd[i:]
    return cmd.rstrip(), ""


def with_ports(cmd: str, ports: dict[str, int]) -> str:
    """The default ports as free ones; `serve start` and `playground` get the flags they lack."""
    for name, default in DEFAULT_PORTS.items():
        cmd = re.sub(rf"(127\.0\.0\.1|localhost):{default}\b", rf"\g<1>:{ports[name]}", cmd)
    flags = {"--http-port": "http", "--grpc-port": "grpc", "--metrics-port": "metrics"}
    for flag, name in flags.items():
        cmd = re.sub(rf"{flag}[ =]{DEFAULT_PORTS[name]}\b", f"{flag} {ports[name]}", cmd)
    cmd = re.sub(rf"--port[ =]{DEFAULT_PORTS['playground']}\b", f"--port {ports['playground']}", cmd)
    body, comment = split_comment(cmd)
    background = body.endswith("&")
    body = body.removesuffix("&").rstrip()
    if re.search(r"\bsketchkit serve start\b", body):
        body += "".join(f" {flag} {ports[name]}" for flag, name in flags.items() if flag not in body)
    if re.search(r"\bsketchkit playground\b", body) and "--port" not in body:
        body += f" --port {ports['playground']}"
    return body + (" &" if background else "") + (f"  {comment}" if comment else "")


def with_mirror(cmd: str, mirror: str) -> str:
    """Every https:// download (curl, wget) from the mirror, by file name; pip's PyTorch index
    dropped (pip's own configuration finds the CPU wheel, as in .ci/run)."""
    if re.match(r"(curl|wget)\b", cmd):
        return re.sub(r"https://[^\s'\"]*/([^/\s'\"]+)", rf"{mirror}/\1", cmd)
    return re.sub(r"\s--(extra-)?index-url[ =]https://download\.pytorch\.org/\S+", "", cmd)


def with_overrides(cmd: str) -> str:
    body, comment = split_comment(cmd)
    if re.match(r"sketchkit train\b", body) and "--steps" not in body:
        body += f" {TINY_TRAIN}"  # the recipes run for hours
    return body + (f"  {comment}" if comment else "")


def repo_files(cmd: str, top: set[str]) -> list[str]:
    """Files of the repository a command names (a path under a top-level entry, with a suffix)."""
    try:
        words = shlex.split(split_comment(cmd)[0])
    except ValueError:
        return []
    return [w for w in words if "/" in w and w.split("/")[0] in top and (Path(w).suffix or Path(w).name in ("run", "Dockerfile"))]


def as_help(cmd: str) -> str | None:
    """A skipped `sketchkit ...` command (also under torchrun) with --help: its options must exist."""
    body = split_comment(cmd)[0]
    m = re.search(r"(?:^|\s)(?:-m\s+)?(sketchkit\s+.*)$", body) if "sketchkit" in body else None
    if m is None or body.startswith(("kubectl", "docker", "helm", "curl")):
        return None
    return f"{m[1].split('&&')[0].split('|')[0].strip()} --help"


def script(md: list[Block], ports: dict[str, int], mirror: str, top: set[str], logs: Path) -> tuple[str, list[tuple[str, Path]]]:
    """The bash script: each command logged to its own file; the first failure stops it."""
    out = ["set -o pipefail", "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT"]
    ran: list[tuple[str, Path]] = []

    def step(shown: str, run: str) -> None:
        log = logs / f"{len(ran):03d}.txt"
        ran.append((shown, log))
        out.append(f"printf '%s\\n' {shlex.quote('+ ' + shown)} >&2")
        if run.endswith("&"):
            out.append(f"{run[:-1].rstrip()} >{log} 2>&1 &")
            return
        out.append(f"{{ {run}\n}} >{log} 2>&1")
        out.append(f"rc=$?; if [ $rc -ne 0 ]; then echo \"README command failed (exit $rc): \"{shlex.quote(shown)} >&2; "
                   f"cat {log} >&2; exit 1; fi")

    for block in md:
        for raw in block.lines:
            if block.lang == "python":
                code = _python_ports(raw, ports)
                step(f"[{block.where}] python block", f"python - <<'SKETCHKIT_README_PY'\n{code}\nSKETCHKIT_README_PY")
                continue
            if block.skip is not None:
                for f in repo_files(raw, top):
                    step(f"[{block.where}] {f} exists (skipped: {raw})", f"test -e {shlex.quote(f)}")
                step(f"[{block.where}] parses: {raw}", f"bash -n <<'SKETCHKIT_README_SH'\n{raw}\nSKETCHKIT_README_SH")
                help_cmd = as_help(raw)
                if help_cmd:
                    step(f"[{block.where}] {help_cmd}", f"{help_cmd} >/dev/null")
                continue
            cmd = with_overrides(with_mirror(with_ports(raw, ports), mirror))
            for f in repo_files(raw, top):
                step(f"[{block.where}] {f} exists", f"test -e {shlex.quote(f)}")
            body, comment = split_comment(cmd)
            if FOREGROUND in comment:  # a server in the foreground: start it, see it answer, stop it
                port = ports["playground"] if "playground" in body else ports["http"]
                step(f"[{block.where}] {raw}", f"{body} &")
                out.append("server=$!")
                step(f"[{block.where}] it answers on {port}",
                     f"curl -sf --retry 120 --retry-delay 1 --retry-connrefused -o /dev/null http://127.0.0.1:{port}/")
                out.append("kill -TERM $server; wait $server || true  # its exit status on SIGTERM is not the README's")
                continue
            step(f"[{block.where}] {raw}", cmd)
    return "\n".join(out) + "\n", ran


def _python_ports(code: str, ports: dict[str, int]) -> str:
    for name, default in DEFAULT_PORTS.items():
        code = re.sub(rf"(127\.0\.0\.1|localhost):{default}\b", rf"\g<1>:{ports[name]}", code)
    return code


# ---- the parts of the test above that a README edit could break: checked alone, fast --------------
def test_the_parser_and_the_rewrites() -> None:
    assert split_comment("a '#x' \"#y\" b # c # d") == ("a '#x' \"#y\" b", "# c # d")
    ports = {"http": 1, "grpc": 2, "metrics": 3, "playground": 4}
    assert with_ports("sketchkit serve start repo &  # x", ports) == (
        "sketchkit serve start repo --http-port 1 --grpc-port 2 --metrics-port 3 &  # x"
    )
    assert with_ports("sketchkit serve start r --http-port 8000 --grpc-port 8001", ports).endswith(
        "--http-port 1 --grpc-port 2 --metrics-port 3"
    )
    assert with_ports("curl -s 127.0.0.1:8002/metrics | grep x", ports) == "curl -s 127.0.0.1:3/metrics | grep x"
    assert with_ports("sketchkit playground  # Ctrl-C stops it", ports) == "sketchkit playground --port 4  # Ctrl-C stops it"
    assert with_mirror("curl -fLO https://a.b/c/d.npz # e", "http://m") == "curl -fLO http://m/d.npz # e"
    pip = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu   # x https://a/b"
    assert with_mirror(pip, "http://m") == "pip install torch==2.13.0   # x https://a/b"
    assert with_overrides("sketchkit train r.toml --out x  # y") == f"sketchkit train r.toml --out x {TINY_TRAIN}  # y"
    assert as_help("torchrun --nproc-per-node=4 -m sketchkit train a.toml --x 1  # c") == "sketchkit train a.toml --x 1 --help"
    assert as_help("kubectl create secret generic k --from-literal=key=$(sketchkit serve key)") is None
    assert repo_files("sketchkit train zoo/recipes/a.toml --out runs/x", {"zoo"}) == ["zoo/recipes/a.toml"]


def test_every_readme_has_runnable_blocks_and_marked_skips() -> None:
    for path in (ROOT / "README.md", ROOT / "serving" / "README.md"):
        md = blocks(path)
        assert any(b.skip is None and b.lang == "bash" for b in md), path
        for b in md:
            assert b.skip is None or b.skip.startswith("("), f"{b.where}: say why it is skipped: <!-- readme-test: skip (why) -->"
    assert blocks(ROOT / "serving" / "README.md")[0].lines[0] == "source .venv/bin/activate"  # a fresh shell


def test_the_torch_line_is_the_cpu_build_everywhere() -> None:
    """Issue 26, item 2: PyPI's torch==2.13.0 on Linux x86_64 is the CUDA build. The README, the
    errors (sketchkit.errors.needs_torch) and .ci/run name PyTorch's CPU index, with the extras' pin."""
    from sketchkit.errors import TORCH, TORCH_CPU_INDEX, needs_torch

    line = f"pip install {TORCH} --index-url {TORCH_CPU_INDEX}"
    assert line in (ROOT / "README.md").read_text()
    assert line in str(needs_torch("train", "train"))
    assert f"{TORCH} --index-url {TORCH_CPU_INDEX}" in (ROOT / ".ci" / "run").read_text()
    assert (ROOT / "pyproject.toml").read_text().count(f'"{TORCH}"') == 2  # the train and export extras


def test_the_key_path_is_where_serving_readme_says(tmp_path: Path) -> None:
    """Issue 26, item 5: `serve key --path` prints the file, and on Linux without $SKETCHKIT_CACHE
    or $XDG_CACHE_HOME it is ~/.cache/sketchkit/server.key (the snippet's fallback)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SKETCHKIT_CACHE", "XDG_CACHE_HOME", "SKETCHKIT_SERVER_KEY")}
    cases = {str(tmp_path / "c" / "server.key"): dict(env, SKETCHKIT_CACHE=str(tmp_path / "c"))}
    if sys.platform.startswith("linux"):
        cases[str(tmp_path / "home" / ".cache" / "sketchkit" / "server.key")] = dict(env, HOME=str(tmp_path / "home"))
    for want, case in cases.items():
        p = subprocess.run([sys.executable, "-m", "sketchkit", "serve", "key", "--path"], env=case,
                           capture_output=True, text=True, timeout=60)
        assert (p.returncode, p.stdout, p.stderr) == (0, want + "\n", "")
    assert "~/.cache/sketchkit" in (ROOT / "serving" / "README.md").read_text()


# ---- the READMEs, run ---------------------------------------------------------------------------------
def fresh_clone(dest: Path) -> Path:
    """The repository's files as a fresh clone has them, plus uncommitted work inside its folders;
    not what following the README leaves at the top (sheep.png, repo/, k8s/, *.npz), venvs, outputs."""
    git = shutil.which("git")
    tracked = subprocess.run([git, "ls-files", "-z"], cwd=ROOT, capture_output=True) if git else None
    if tracked is None or tracked.returncode != 0:
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info", "test-artifacts"))
        return dest
    names = [n for n in tracked.stdout.decode().split("\0") if n]
    folders = {n.split("/")[0] for n in names if "/" in n}
    untracked = subprocess.run([git, "ls-files", "-oz", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True)
    names += [n for n in untracked.stdout.decode().split("\0") if "/" in n and n.split("/")[0] in folders]
    for name in names:
        src = ROOT / name
        if name and src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def seeded_venv(clone: Path) -> None:
    """`.venv` made with this test's interpreter, seeing this test's installed packages (a .pth), so
    the quick start's pip finds every dependency installed and needs no index."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(clone / ".venv")], check=True)
    site = next((clone / ".venv" / "lib").glob("python*/site-packages"))
    paths = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "_readme_test.pth").write_text("\n".join(paths) + "\n")


def fresh_env(tmp: Path, mirror: str) -> dict[str, str]:
    """No venv on PATH; `python3` is this test's base interpreter (the one the seeded venv has)."""
    bindir = tmp / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(getattr(sys, "_base_executable", sys.executable))
    ours = {str(Path(sys.executable).parent), os.environ.get("VIRTUAL_ENV", "") + "/bin"}
    path = [str(bindir), *(p for p in os.environ.get("PATH", "").split(os.pathsep) if p not in ours)]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "SKETCHKIT_SERVER_KEY")}
    return dict(env, PATH=os.pathsep.join(path), SKETCHKIT_ZOO_MIRROR=mirror, SKETCHKIT_CACHE=str(tmp / "cache"),
                PIP_DISABLE_PIP_VERSION_CHECK="1")


def run_readme(path: Path, clone: Path, env: dict[str, str], mirror: str, tmp: Path) -> list[tuple[str, Path]]:
    from sketchkit.serving.server import free_port

    ports = {name: free_port() for name in DEFAULT_PORTS}
    top = {p.name for p in ROOT.iterdir()}
    name = path.relative_to(ROOT).as_posix().replace("/", "-")
    logs = tmp / f"logs-{name}"
    logs.mkdir()
    text, ran = script(blocks(path), ports, mirror, top, logs)
    (tmp / f"{name}.sh").write_text(text)
    assert subprocess.run(["bash", "-c", "command -v sketchkit"], env=env, capture_output=True).returncode != 0
    p = subprocess.Popen(["bash", "--noprofile", "--norc", str(tmp / f"{name}.sh")], cwd=clone, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = p.communicate(timeout=TIMEOUT_S)
    finally:  # a timeout or an interrupt: nothing the README started outlives the test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        p.wait()
    assert p.returncode == 0, f"{path}:\n{err[-6000:]}"
    for shown, log in ran:
        out = log.read_text(errors="replace") if log.exists() else ""
        assert "Traceback" not in out and '{"error"' not in out, f"{shown}:\n{out[-3000:]}"
    return ran


def owl_npz(dest: Path) -> Path:
    """QuickDraw's owl.npz stood in for by the 25 owls of ../shared, converted as `data convert` does."""
    from sketchkit import datasets

    ds = datasets.ndjson_to_dataset([QUICKDRAW / "simplified-25" / "owl.ndjson"], epsilon=2.0, seed=0)
    datasets.save_npz(dest / "owl.npz", ds)
    return dest / "owl.npz"


@pytest.mark.triton
@pytest.mark.torch
def test_the_readmes_run_as_written(magenta_gen_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the README's training lines need torch (the full venv)")
    pytest.importorskip("pytriton", reason="the README's serving lines need nvidia-pytriton (pip install 'sketchkit[serve]')")
    pytest.importorskip("uvicorn", reason="the README's playground needs its extra")
    need(SKETCHRNN / "aaron_sheep.npz")
    need(QUICKDRAW / "simplified-25" / "owl.ndjson")
    if not shutil.which("curl"):
        pytest.skip("the READMEs use curl")
    mirror = ZooMirror(magenta_gen_dir)
    mirror.files["aaron_sheep.npz"] = SKETCHRNN / "aaron_sheep.npz"
    mirror.files["sheep.npz"] = SKETCHRNN / "aaron_sheep.npz"  # stands in for QuickDraw's sheep.npz
    mirror.files["owl.npz"] = owl_npz(tmp_path)
    for f in (QUICKDRAW / "simplified-25").glob("*.ndjson"):
        mirror.files[f.name] = f
    for f in (SHARED / "data" / "svg").glob("*/*.svg"):  # e.g. lucide-static's icons/cat.svg
        mirror.files[f.name] = f
    try:
        env = fresh_env(tmp_path, mirror.url)
        clone = fresh_clone(tmp_path / "clone")
        seeded_venv(clone)
        ran = run_readme(ROOT / "README.md", clone, env, mirror.url, tmp_path)
        headline = [log for shown, log in ran if "owl_generate/generate" in shown and shown.split("] ")[1].startswith("curl")]
        assert headline and '"strokes"' in headline[0].read_text()  # the key went with it
        second = fresh_clone(tmp_path / "clone2")  # serving/README.md: a fresh shell, the venv from the quick start
        (second / ".venv").symlink_to(clone / ".venv")
        run_readme(ROOT / "serving" / "README.md", second, env, mirror.url, tmp_path)
    finally:
        mirror.close()


def test_the_stroke3_snippet_decodes_as_sketchkit_does(sheep_npz: Path) -> None:
    """serving/README.md's numpy decoding (for services without sketchkit) is `to_polylines`."""
    import numpy as np

    from sketchkit.datasets import load_npz
    from sketchkit.strokes import to_polylines

    (snippet,) = [b.lines[0] for b in blocks(ROOT / "serving" / "README.md") if "def polylines" in b.lines[0]]
    scope: dict = {}
    exec(snippet[: snippet.index("\ncache = ")], scope)
    for sketch in load_npz(sheep_npz).split("test")[:50]:
        mine, ours = scope["polylines"](sketch.astype(np.float32)), to_polylines(sketch)
        assert len(mine) == len(ours) and all(np.allclose(a, b, rtol=1e-6, atol=1e-3) for a, b in zip(mine, ours, strict=True))
