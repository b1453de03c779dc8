"""Start tritonserver so that other local users learn nothing that opens it, on Linux.

tritonserver 2.51 takes its restricted-API keys only as command-line arguments, and every uid
can read a process's `/proc/PID/cmdline` (0444), while `/proc/PID/environ` and `/proc/PID/mem`
are its owner's. So the child is started under ptrace (PTRACE_TRACEME: it stops right after
execve, before any of its code runs) with a harmless stand-in for each secret argument on its
command line and the real argument in its environment; while it is stopped, the parent points
the argv array on the child's stack at the environment copy and lets it go. The program reads
the real arguments; `/proc/PID/cmdline` (the kernel's view of the original argument strings)
shows the stand-ins for the process's whole life.

Also, the Python backend makes its shared-memory segments in /dev/shm with shm_open and then
fchmod(0644) (boost.interprocess' default permissions), so other users could read every
request and answer passing through them. The child runs with umask 077 and a seccomp filter
that turns fchmod into a no-op that succeeds: the segments stay 0600.

Neither protects against root or the same uid (they can read the environment, the memory, the
key file); serving/README.md, "Threat model", says what is covered.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import struct
import subprocess
from collections.abc import Callable, Mapping, Sequence

from sketchkit.errors import SketchkitError

ARG_ENV = "SKETCHKIT_TRITON_ARG_"  # + argv index: the real argument, in the environment only

PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 38, 22, 2
PTRACE_TRACEME, PTRACE_DETACH = 0, 17
# AUDIT_ARCH_* and __NR_fchmod of the architectures the nvidia-pytriton wheel is built for
FCHMOD = {"x86_64": (0xC000003E, 91), "aarch64": (0xC00000B7, 52)}
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000


class LaunchError(SketchkitError):
    """The child could not be started with its secrets off its command line."""


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    return libc


def _no_fchmod_filter() -> _SockFprog | None:
    """A seccomp program: fchmod returns 0 without doing anything; every other call is allowed."""
    arch = FCHMOD.get(platform.machine())
    if arch is None:
        return None
    audit_arch, nr = arch
    ld, jeq = 0x20, 0x15  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K
    prog = (_SockFilter * 6)(
        _SockFilter(ld, 0, 0, 4),  # seccomp_data.arch
        _SockFilter(jeq, 0, 3, audit_arch),  # another ABI: allow
        _SockFilter(ld, 0, 0, 0),  # seccomp_data.nr
        _SockFilter(jeq, 0, 1, nr),
        _SockFilter(0x06, 0, 0, SECCOMP_RET_ERRNO | 0),  # BPF_RET: "errno 0", the call succeeds undone
        _SockFilter(0x06, 0, 0, SECCOMP_RET_ALLOW),
    )
    return _SockFprog(len(prog), prog)


def _child_setup(die_with_parent: bool, fchmod_filter: _SockFprog | None) -> Callable[[], None]:
    """What the child does between fork and exec (no Python objects made there)."""
    libc = _libc()

    def setup() -> None:
        os.umask(0o077)
        if die_with_parent:  # SIGTERM when the parent (thread) dies: a crashed run leaves no server
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, None, 0, 0)
        if fchmod_filter is not None and (
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0)
            or libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fchmod_filter), 0, 0)
        ):
            raise OSError(ctypes.get_errno(), "seccomp")
        if libc.ptrace(PTRACE_TRACEME, 0, None, None) != 0:
            raise OSError(ctypes.get_errno(), "ptrace")

    return setup


def start_private(
    argv: Sequence[str], secrets: Mapping[int, str], *, env: Mapping[str, str], die_with_parent: bool,
    **popen: object,
) -> subprocess.Popen[bytes]:  # fmt: skip
    """Popen(argv) whose program reads `secrets[i]` as its argument i while every other uid sees
    argv[i] (a stand-in) in /proc/PID/cmdline; umask 077 and no fchmod in it and its children."""
    fchmod_filter = _no_fchmod_filter()
    child_env = {**env, **{f"{ARG_ENV}{i}": value for i, value in secrets.items()}}
    try:
        proc = subprocess.Popen(  # noqa: S603 (argv is ours)
            list(argv), env=child_env, preexec_fn=_child_setup(die_with_parent, fchmod_filter), **popen
        )  # type: ignore[call-overload]
    except subprocess.SubprocessError as e:  # the preexec step failed: ptrace or seccomp not allowed
        raise LaunchError(
            f"cannot start {argv[0]} with its key off its command line: this system refuses ptrace or "
            f"seccomp to this process ({e})"
        ) from None
    try:
        _, status = os.waitpid(proc.pid, 0)  # the stop right after execve
        if not (os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGTRAP):
            raise LaunchError(f"{argv[0]} did not stop after execve (status {status:#x})")
        _point_argv_at_env(proc.pid, len(argv), secrets)
        if _libc().ptrace(PTRACE_DETACH, proc.pid, None, None) != 0:
            raise LaunchError(f"cannot let {argv[0]} go (ptrace: {os.strerror(ctypes.get_errno())})")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def _point_argv_at_env(pid: int, argc: int, secrets: Mapping[int, str]) -> None:
    """In the stopped child: argv[i] -> the value of ARG_ENV<i> in its environment block. (A `#!`
    script runs as `interpreter [arg] script argv[1:]`: the arguments after argv[0] keep their order.)"""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # fields 3.. after "pid (comm)"
    start_stack, arg_start, arg_end, env_start, env_end = (int(fields[n - 3]) for n in (28, 48, 49, 50, 51))
    size = struct.calcsize("P")
    with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
        mem.seek(start_stack)  # the initial stack: argc, argv[0..argc-1], NULL, envp...
        (real_argc,) = struct.unpack("P", mem.read(size))
        shift = real_argc - argc  # 0, or what a #! line put before the script's arguments
        words = struct.unpack(f"{real_argc + 1}P", mem.read(size * (real_argc + 1))) if 0 <= shift < 4 else ()
        if not words or words[-1] != 0 or not all(arg_start <= p < arg_end for p in words[:-1]):
            raise LaunchError(f"the stack of process {pid} is not laid out as expected")
        mem.seek(env_start)
        block = b"\0" + mem.read(env_end - env_start)
        for i, value in secrets.items():
            name = f"\0{ARG_ENV}{i}=".encode()
            at = block.find(name)
            if i < 1 or at < 0 or block[at + len(name) :].split(b"\0", 1)[0] != value.encode():
                raise LaunchError(f"argument {i} is not in the environment of process {pid}")
            mem.seek(start_stack + size * (1 + i + shift))
            mem.write(struct.pack("P", env_start + at - 1 + len(name)))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sketchkit.serving.launch [--management-api] tritonserver ARGS...`: for containers.
    Runs tritonserver with ARGS and the restricted-API flags of `sketchkit serve start`, the key
    from $SKETCHKIT_SERVER_KEY (a trailing newline, as a Secret made from a file has, is dropped)
    kept off its command line; forwards SIGTERM and SIGINT and exits with its status."""
    import sys

    from sketchkit import wire
    from sketchkit.errors import printable
    from sketchkit.serving.access import HIDDEN_KEY_RULE, restricted_api_flags

    args = list(sys.argv[1:] if argv is None else argv)
    management = args[:1] == ["--management-api"]
    args = args[1:] if management else args
    key = os.environ.get(wire.KEY_ENV, "").rstrip("\n")
    try:
        if not args:
            raise LaunchError(
                "usage: python -m sketchkit.serving.launch [--management-api] tritonserver ARGS..."
            )
        flags = restricted_api_flags(key, management)
        rule = f"{wire.KEY_HEADER}={key}"
        cmd = [*args, *flags]
        proc = start_private(
            [a.replace(rule, HIDDEN_KEY_RULE) for a in cmd], {i: a for i, a in enumerate(cmd) if rule in a},
            env={k: v for k, v in os.environ.items() if k != wire.KEY_ENV}, die_with_parent=True,
        )  # fmt: skip
    except (SketchkitError, OSError) as e:
        print(printable(f"error: {e}"), file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: proc.send_signal(signum))
    code = proc.wait()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    raise SystemExit(main())
