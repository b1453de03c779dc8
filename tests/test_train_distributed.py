"""`python -m sketchkit.zoo.torchrun --nproc-per-node=N -m sketchkit train` (torchrun, its stores
bound to the address asked for): real gloo processes on the CPU. Two ranks take the steps one
process takes with the same global batch (augmentation on: each row's randomness is its own), a
2-rank run resumes, only rank 0 writes, a killed rank stops the job with one line, and nothing of
the job listens beyond the loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tiny_recipe import tiny  # noqa: E402

from sketchkit.datasets import Dataset, save_npz  # noqa: E402
from sketchkit.zoo import checkpoint  # noqa: E402
from sketchkit.zoo.config import Recipe  # noqa: E402
from sketchkit.zoo.train import train  # noqa: E402


def recipe(tmp_path: Path, sheep, **kw) -> Path:
    """A tiny VAE on 16 real sheep with scale and point-drop augmentation on; recurrent dropout
    off, since its masks are drawn per rank (the same distribution, not the same numbers)."""
    few = [s for s in sheep.train if len(s) <= 40][:16]
    data = tmp_path / "sheep16.npz"
    save_npz(data, Dataset(few, few[:8], few[:8]))
    overrides = dict(cell="layer_norm", dec_size=32, random_scale=0.15, augment_prob=0.2, eval_every=4, log_every=2,
                     num_samples=2, num_steps=8)  # fmt: skip
    path = tmp_path / "tiny.toml"
    tiny(data, **{**overrides, **kw}).save_toml(path)
    return path


def torchrun(n: int, *args: str, **popen: object) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "sketchkit.zoo.torchrun", f"--nproc-per-node={n}", "--standalone"]
    cmd += ["-m", "sketchkit", "train", *args, "--device", "cpu", "--threads", "1", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def test_two_ranks_equal_one_process_and_resume(sheep, tmp_path: Path) -> None:
    """2 gloo ranks x 4 rows: 4 steps, then a resumed 4 more, equal one process x 8 rows for 8 steps."""
    path = recipe(tmp_path, sheep)
    torch.set_num_threads(1)
    train(Recipe.from_toml(path), tmp_path / "one", device="cpu", progress=False)
    run = tmp_path / "two"
    rc, err = finish(torchrun(2, str(path), "--out", str(run), "--steps", "4"))
    assert rc == 0, err
    assert checkpoint.read_tensors(run / "last.safetensors")[1]["step"] == 4
    rc, err = finish(torchrun(2, str(path), "--out", str(run)))  # resumes to the recipe's 8
    assert rc == 0, err
    one, two = (checkpoint.read_tensors(d / "last.safetensors") for d in (tmp_path / "one", run))
    assert one[1]["step"] == two[1]["step"] == 8
    weights = [k for k in one[0] if not k.startswith("train.")]
    assert weights and set(one[0]) - {"train.rng.torch"} <= set(two[0])
    for k in weights:  # the same steps up to the order of float sums (shard means, then their mean)
        torch.testing.assert_close(two[0][k], one[0][k], rtol=1e-4, atol=1e-5, msg=k)
    assert "train.rng.torch.rank1" in two[0]  # every rank's RNG state is kept for the resume
    # rank 0 alone writes: one line per log step and validation, in order, as in one process
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    solo = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in recs] == [(r["split"], r["step"]) for r in solo]
    for a, b in zip(recs, solo, strict=True):  # logged losses are the whole batch's means
        assert abs(a.get("loss", 0.0) - b.get("loss", 0.0)) < 1e-4 and a.get("eta") == b.get("eta")
    assert sorted(p.name for p in (run / "samples").iterdir()) == sorted(
        p.name for p in (tmp_path / "one" / "samples").iterdir()
    )


def test_batch_must_split_over_the_ranks(sheep, tmp_path: Path) -> None:
    path = recipe(tmp_path, sheep, batch_size=7)
    rc, err = finish(torchrun(2, str(path), "--out", str(tmp_path / "r")))
    assert rc != 0
    assert "error: batch_size 7 does not split over 2 ranks" in err, err


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker of `rank` (its child whose environment says RANK=rank)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(d.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_a_killed_rank_stops_the_job_with_one_line(sheep, tmp_path: Path) -> None:
    path = recipe(tmp_path, sheep, num_steps=100_000)
    run = tmp_path / "r"
    proc = torchrun(2, str(path), "--out", str(run))
    try:
        deadline = time.time() + 120
        while not (run / "last.safetensors").exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.1)
        pid = _rank_pid(proc.pid, 1)
        assert pid is not None, "rank 1 not found"
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        rc, err = finish(proc, timeout=90)  # no hang in a collective
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc != 0 and time.time() - killed < 90
    ours = [line for line in err.splitlines() if line.startswith("error: rank 0 of 2 stopped at step ")]
    assert len(ours) == 1, err
    assert "the same command resumes from" in ours[0]
    # and it does: the run goes on from its last checkpoint
    step = int(checkpoint.read_tensors(run / "last.safetensors")[1]["step"])
    rc, err = finish(torchrun(2, str(path), "--out", str(run), "--steps", str(step + 2)))
    assert rc == 0, err
    assert checkpoint.read_tensors(run / "last.safetensors")[1]["step"] == step + 2


def _listening(pids: set[int]) -> list[str]:
    """The addresses (host:port) that the processes `pids` listen on over TCP, from /proc."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    out = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                raw, port = fields[1].split(":")
                packed = bytes.fromhex(raw)  # /proc writes each 32-bit word in host order
                packed = b"".join(packed[i : i + 4][::-1] for i in range(0, len(packed), 4))
                out.append(f"{socket.inet_ntop(family, packed)}:{int(port, 16)}")
    return out


def _tree(root: int) -> set[int]:
    """root and every process below it."""
    pids, children = {root}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                children.setdefault(int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(d.name))
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            pids.add(child)
            todo.append(child)
    return pids


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from /proc")
def test_a_loopback_job_listens_on_the_loopback_only(sheep, tmp_path: Path) -> None:
    """Issue 25, item 7: torchrun's c10d stores listened on every interface (`*:PORT`, open to
    the network and unauthenticated) even for a job on 127.0.0.1; through sketchkit.zoo.torchrun
    every socket the launcher and its ranks listen on is bound to 127.0.0.1."""
    path = recipe(tmp_path, sheep, num_steps=100_000)
    run = tmp_path / "r"
    proc = torchrun(2, str(path), "--out", str(run))
    try:
        deadline = time.time() + 120
        while not (run / "last.safetensors").exists():  # both ranks are training: every store is up
            assert proc.poll() is None, proc.communicate()[1]
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.1)
        pids = _tree(proc.pid)
        agent = _listening({proc.pid})
        everything = _listening(pids)
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert len(pids) >= 3 and len(agent) >= 1, (pids, agent)  # the launcher's stores, and the ranks'
    assert everything and all(a.startswith("127.0.0.1:") for a in everything), everything


@pytest.mark.parametrize(
    ("argv", "host"),
    [(["--standalone", "--nproc-per-node=2", "-m", "x", "--master-addr=10.0.0.1"], "127.0.0.1"),
     (["--nnodes=2", "--master-addr", "10.0.0.5", "--master-port=29500", "-m", "x"], "10.0.0.5"),
     (["--rdzv-endpoint=10.0.0.7:29400", "--rdzv-backend=c10d", "-m", "x"], "10.0.0.7"),
     (["--rdzv-endpoint", "[fd00::1]:29400", "-m", "x"], "fd00::1"),
     (["--nproc-per-node=2", "train.py"], "127.0.0.1")],
)  # fmt: skip
def test_the_launcher_binds_to_the_address_the_job_names(argv: list[str], host: str) -> None:
    from sketchkit.zoo.torchrun import bind_host

    assert bind_host(argv) == host
