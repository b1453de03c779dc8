"""Run a real `tritonserver` (the binary in the nvidia-pytriton wheel) on 127.0.0.1 for development
and CI, as ../shared/TRITON-ON-CPU.md measured it: the bare binary, the Python backend assembled
into a cache dir, the stub pointed at the right libpython, and every silent failure turned loud.

The wheel bundles only the Python backend, so this serves `--flavor cpu` repositories; the gpu
flavor runs in the NGC container (serving/docker-compose.yml).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sketchkit import wire
from sketchkit.errors import SketchkitError
from sketchkit.serving.access import (  # noqa: F401  (re-exported: the names callers and tests use)
    CLOSED_APIS,
    CLOSED_HEADER,
    CLOSED_VALUE,
    HIDDEN_KEY_RULE,
    KEYED_APIS,
    AccessError,
    restricted_api_flags,
)
from sketchkit.serving.launch import LaunchError, start_private

STUB_LIB_ERROR = "error while loading shared libraries"  # a stub that cannot start: Triton hangs


class ServerError(SketchkitError):
    """tritonserver is missing, cannot start, or a model failed to load."""


@dataclass(frozen=True)
class PythonEnv:
    """The interpreter whose site-packages the Python backend's model.py sees (numpy<2 + onnxruntime)."""

    prefix: Path  # sys.prefix: PATH=<prefix>/bin makes the embedded interpreter use it
    version: str  # "3.11": picks the matching stub
    libdir: str  # sysconfig LIBDIR: its libpython must come first on LD_LIBRARY_PATH

    @classmethod
    def probe(cls, python: str | os.PathLike[str] = sys.executable) -> PythonEnv:
        """Ask the interpreter about itself, and refuse one the backend would silently misuse."""
        code = (
            "import json, sys, sysconfig, importlib.util as u\n"
            "try:\n import numpy; np = numpy.__version__\nexcept ImportError:\n np = None\n"
            "print(json.dumps([sys.prefix, '%d.%d' % sys.version_info[:2],"
            " sysconfig.get_config_var('LIBDIR'), np, u.find_spec('onnxruntime') is not None]))"
        )
        try:
            out = subprocess.run(
                [str(python), "-c", code], capture_output=True, text=True, timeout=60, check=True
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise ServerError(f"cannot run the server's Python {python}: {e}") from None
        prefix, version, libdir, numpy_version, has_ort = json.loads(out.stdout)
        if numpy_version is None or not has_ort:
            raise ServerError(f"{python}: the server's Python needs numpy<2 and onnxruntime installed")
        if int(numpy_version.split(".")[0]) >= 2:
            # numpy 2 in the stub's environment makes every output silently empty
            raise ServerError(
                f"{python}: numpy {numpy_version} in the server's Python; Triton's Python backend needs numpy<2"
            )
        return cls(Path(prefix), version, libdir)


def pytriton_dir() -> Path:
    """`<site-packages>/pytriton/tritonserver` of the installed nvidia-pytriton wheel."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")  # finds the package without importing it
    root = Path(spec.origin).parent / "tritonserver" if spec and spec.origin else None
    if root is None or not (root / "bin" / "tritonserver").is_file():
        raise ServerError(
            "tritonserver not found: pip install 'sketchkit[serve]' (the nvidia-pytriton wheel bundles it)"
        )
    return root


def cache_dir() -> Path:
    import platformdirs

    return Path(os.environ.get("SKETCHKIT_CACHE") or platformdirs.user_cache_dir("sketchkit"))


def backend_dir(triton: Path, python_version: str) -> Path:
    """A --backend-directory holding python/{libtriton_python.so, triton_python_backend_utils.py}
    and a symlink to the stub for this Python (a symlink keeps the stub's own library search path)."""
    stub = triton / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {python_version}")
    key = hashlib.sha256(str(stub.resolve()).encode()).hexdigest()[:12]  # one per wheel install
    target = cache_dir() / "triton-backends" / key
    target.parent.mkdir(parents=True, exist_ok=True)
    # tritonserver loads the library found here: in a cache another user can write (SKETCHKIT_CACHE
    # in a shared dir) they could plant their own, and it would run as this user
    ours = [cache_dir(), target.parent]
    if (target / "python" / "triton_python_backend_stub").exists():
        ours += [target, target / "python", *(target / "python").iterdir()]
    for path in ours:
        st = path.lstat()
        if st.st_uid != os.geteuid() or (not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o002):
            raise ServerError(
                f"{path}: the backend cache must be this user's, not writable by others (another user could "
                "plant the library tritonserver loads); remove it, or set SKETCHKIT_CACHE to a private directory"
            )
    if len(ours) > 2:
        return target
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    (tmp / "python").mkdir()
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(triton / "backends" / "python" / name, tmp / "python" / name)
    (tmp / "python" / "triton_python_backend_stub").symlink_to(stub)
    try:
        os.replace(tmp, target)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port the OS just reported free (tests and benchmarks pick theirs at run time)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def local_key() -> str:
    """$SKETCHKIT_SERVER_KEY, else the key in `wire.key_file()`, made (0600) on first use."""
    key = wire.server_key()
    if key:
        return key
    path = wire.key_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    # O_EXCL | O_NOFOLLOW: a link planted at the name cannot capture the key
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    try:  # a link appears whole: a server starting at the same time reads this key, or its own
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    key = wire.read_key_file(path)
    if not key:
        raise ServerError(f"{path}: empty server key file; remove it and retry")
    return key


def check_repository(repo: Path) -> list[str]:
    """Model names in a cpu-flavor repository; a clear error for anything this server cannot load."""
    from sketchkit.serving.repository import read_config

    if not repo.is_dir():
        raise ServerError(f"{repo}: no such model repository")
    names = []
    for config in sorted(repo.glob("*/config.pbtxt")):
        cfg = read_config(config)
        if cfg.backend != "python":
            raise ServerError(
                f"{config.parent.name} uses the {cfg.backend or cfg.platform!r} backend; the local server bundles "
                "only the Python backend: build the repository with --flavor cpu"
            )
        names.append(cfg.name or config.parent.name)
    if not names:
        raise ServerError(
            f"{repo}: no models (expected <model>/config.pbtxt; see `sketchkit serve build-repo`)"
        )
    return names


def load_failures(log: str) -> list[str]:
    """Triton's own reasons from its log, "<model>: <first line of the reason>" per failed model."""
    reasons: dict[str, str] = {}
    for match in re.finditer(r"failed to load '([^']+)' version \d+: (.*?)(?:\\n|\"?$)", log, re.MULTILINE):
        reasons.setdefault(match[1], match[2].strip())
    return [f"{name}: {reason}" for name, reason in reasons.items()]


class TritonServer:
    """A tritonserver process serving `repo` on 127.0.0.1; use as a context manager or call stop()."""

    def __init__(
        self,
        repo: str | os.PathLike[str],
        http_port: int = 8000,
        grpc_port: int = 8001,
        *,
        python: str | os.PathLike[str] = sys.executable,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 120.0,
        metrics_port: int | None = None,
        key: str | None = None,
        management_api: bool = False,
    ) -> None:
        """key: what inference requests must carry in `wire.KEY_HEADER` (None: `local_key()`).
        management_api: open the management APIs to holders of the key (closed by default)."""
        self.repo = Path(repo).resolve()
        self.key = key
        self.management_api = management_api
        self.http_port, self.grpc_port = http_port, grpc_port
        self.metrics_port = metrics_port  # None: no /metrics endpoint
        self.python = python
        # the default is in a shared temp dir: a name no other user can guess, so none makes it first
        default = f"tritonserver-{os.getpid()}-{grpc_port}-{secrets.token_hex(8)}.log"
        self.log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / default
        self.startup_timeout_s = startup_timeout_s
        self.models: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None
        # the Python backend's shared-memory segments are named with this prefix, so that stop()
        # can remove what a crashed server leaves in /dev/shm (they are RAM)
        self.shm_prefix = f"sketchkit_{os.getpid()}_{grpc_port}_"

    @property
    def headers(self) -> dict[str, str]:
        """What an HTTP inference request must carry (gRPC: `grpc_headers`)."""
        assert self.key is not None, "start the server first"
        return {wire.KEY_HEADER: self.key}

    @property
    def grpc_headers(self) -> dict[str, str]:
        assert self.key is not None, "start the server first"
        return {wire.GRPC_KEY_HEADER: self.key}

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str | None:
        return None if self.metrics_port is None else f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self, backends: Path) -> list[str]:
        metrics = ["--allow-metrics=false"]
        if self.metrics_port is not None:  # Prometheus text: Triton's own and <name>_generate's (serving/metrics.py)
            metrics = ["--allow-metrics=true", "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}"]
        return [
            str(pytriton_dir() / "bin" / "tritonserver"),
            f"--model-repository={self.repo}",
            f"--backend-directory={backends}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            *metrics,
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--exit-timeout-secs=5",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *restricted_api_flags(self.key or local_key(), self.management_api),
        ]

    def environment(self, env: PythonEnv, triton: Path) -> dict[str, str]:
        libs = triton.parents[1] / "nvidia_pytriton.libs"  # <site-packages>/nvidia_pytriton.libs
        out = dict(os.environ)
        out.pop("PYTHONPATH", None)  # ignored by the embedded interpreter anyway
        # the interpreter's own libpython first (else Debian's 3.11.2 gets mixed in), then the wheel's libs
        out["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (env.libdir, str(libs), os.environ.get("LD_LIBRARY_PATH")) if p
        )
        out["PATH"] = os.pathsep.join((str(env.prefix / "bin"), os.environ.get("PATH", "")))
        return out

    def check(self) -> tuple[Path, PythonEnv]:
        """Everything start() refuses before it launches anything (the repository, the ports, the
        key, the binary, the Python): `serve start` checks first, then says it is starting."""
        self.models = check_repository(self.repo)
        ports = [p for p in (self.http_port, self.grpc_port, self.metrics_port) if p is not None]
        for port in ports:
            if not 1 <= port <= 65535:
                raise ServerError(f"port {port} is not a TCP port (1..65535)")
        if len(set(ports)) != len(ports):
            raise ServerError("the HTTP, gRPC and metrics ports must differ")
        self.key = self.key or local_key()
        for port in ports:
            if not port_is_free(port):
                raise ServerError(
                    f"port {port} on 127.0.0.1 is already in use (pick another with --http-port/--grpc-port/--metrics-port)"
                )
        return pytriton_dir(), PythonEnv.probe(self.python)

    def start(self) -> TritonServer:
        triton, env = self.check()
        cmd = self.command(backend_dir(triton, env.version))
        # the key's rules reach tritonserver but not its /proc/PID/cmdline (serving/launch.py)
        rule = f"{wire.KEY_HEADER}={self.key}"
        shown = [arg.replace(rule, HIDDEN_KEY_RULE) for arg in cmd]
        hidden = {i: arg for i, arg in enumerate(cmd) if rule in arg}
        with open(self._open_log(), "wb") as log:
            try:
                self.process = start_private(
                    shown, hidden, env=self.environment(env, triton), stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                    die_with_parent=threading.current_thread() is threading.main_thread(),
                )  # fmt: skip
            except LaunchError as e:
                raise ServerError(str(e)) from None
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _open_log(self) -> int:
        """The log, truncated, for writing. It may be in a shared dir (/tmp by default), so: no link
        (O_NOFOLLOW), no FIFO (open would wait for a reader, who then reads the log: O_NONBLOCK, and
        what is not a regular file is refused), no file another user made (they read and write it)."""
        try:
            fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
        except OSError as e:
            raise ServerError(f"{self.log_path}: cannot write the server log ({e.strerror}); pick another with --log") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.close(fd)
            raise ServerError(
                f"{self.log_path}: the server log must be a regular file of this user's; remove it or pick another with --log"
            )
        os.ftruncate(fd, 0)
        os.set_blocking(fd, True)
        return fd

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def ready(self) -> bool:
        """Health says ready and, when asked for, /metrics answers (Triton opens its port last)."""
        urls = [f"{self.http_url}/v2/health/ready", *([self.metrics_url] if self.metrics_url else [])]
        try:
            for url in urls:
                with urllib.request.urlopen(url, timeout=1.0) as r:
                    if r.status != 200:
                        return False
        except (urllib.error.URLError, OSError):
            return False
        return True

    def wait_ready(self) -> None:
        """Poll /v2/health/ready; fail fast on an exited server or a stub that cannot load."""
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.ready():
                return
            log = self.log()
            if STUB_LIB_ERROR in log:
                line = next(x for x in log.splitlines() if STUB_LIB_ERROR in x)
                raise ServerError(f"the Python backend stub cannot start: {line.strip()}")
            if self.process.poll() is not None:
                reasons = load_failures(log)
                if reasons:
                    raise ServerError("a model failed to load: " + " | ".join(reasons))
                tail = " | ".join(x.strip() for x in log.splitlines()[-3:])
                raise ServerError(
                    f"tritonserver exited with code {self.process.returncode}: {tail} (log: {self.log_path})"
                )
            time.sleep(0.1)
        raise ServerError(
            f"tritonserver not ready after {self.startup_timeout_s:.0f} s (log: {self.log_path})"
        )

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (Triton exits cleanly in ~2 s), SIGKILL if it does not; then SIGKILL whatever
        is left of its process group (a stub of a model that was still loading survives Triton)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.remove_shared_memory()

    def remove_shared_memory(self) -> None:
        """Remove this server's segments from /dev/shm: a server that crashed or was killed
        leaves its stubs' segments there (RAM, until reboot)."""
        for path in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            with contextlib.suppress(OSError):
                path.unlink()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
