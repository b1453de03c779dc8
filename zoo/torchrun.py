"""torchrun whose stores listen only on the address asked for (issue 25, item 7).

torchrun's c10d stores (the rendezvous store and the one the ranks share) accept anyone who can
reach their port and do whatever they are told, and torch binds them to every interface, whatever
`--master-addr` or `--rdzv-endpoint` says: a job on 127.0.0.1 was open to the network. torch has no
option for the address a store listens on, only a socket it may be handed (`master_listen_fd`). So
this runs torchrun (the same arguments) with every store it hosts given a socket bound to the
address the job names, and with `--local-addr` (what the ranks are told to connect to) and gloo's
and NCCL's interface set to the loopback for a loopback job:

    python -m sketchkit.zoo.torchrun --standalone --nproc-per-node=4 -m sketchkit train RECIPE
    python -m sketchkit.zoo.torchrun --nnodes=2 --node-rank=0 --master-addr=10.0.0.5 --master-port=29500 \
        --nproc-per-node=4 -m sketchkit train RECIPE        # several machines: README, "Several machines"

`--standalone` binds to 127.0.0.1; otherwise the host of `--rdzv-endpoint` or `--master-addr`
(an address of this machine, or a name resolving to one). The stores still trust every peer
that reaches them: across machines, run the job on a private network.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any


def _option(argv: Sequence[str], *names: str) -> str | None:
    """The value of the last of `names` in torchrun's arguments (`--x v` or `--x=v`), up to the
    script or `-m`."""
    value = None
    for i, arg in enumerate(argv):
        if arg == "-m" or not arg.startswith("-"):
            break
        for name in names:
            if arg == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
    return value


def bind_host(argv: Sequence[str]) -> str:
    """The address the job's stores listen on: 127.0.0.1 for `--standalone`, else the host of
    `--rdzv-endpoint` or `--master-addr` (torchrun's own default: 127.0.0.1)."""
    if "--standalone" in argv[: argv.index("-m") if "-m" in argv else len(argv)]:
        return "127.0.0.1"
    endpoint = _option(argv, "--rdzv-endpoint", "--rdzv_endpoint")
    if endpoint:  # HOST, HOST:PORT, [IPV6]:PORT
        if endpoint.startswith("["):
            return endpoint[1 : endpoint.index("]")]
        return (endpoint.split(":")[0] if endpoint.count(":") == 1 else endpoint) or "127.0.0.1"
    return _option(argv, "--master-addr", "--master_addr") or "127.0.0.1"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _bound_store_class(host: str) -> Any:
    """torch's TCPStore, except that a store this process hosts listens on `host` only."""
    import torch.distributed as dist

    base = dist.TCPStore

    class BoundTCPStore(base):  # type: ignore[misc, valid-type]
        def __init__(self, host_name: str, port: int, *args: Any, **kw: Any) -> None:
            names = ("world_size", "is_master", "timeout", "wait_for_workers", "multi_tenant", "master_listen_fd", "use_libuv")
            kw.update(zip(names, args, strict=False))
            if kw.get("is_master") and kw.get("master_listen_fd") is None:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                listener = socket.socket(family, socket.SOCK_STREAM)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    listener.bind((host, int(port)))
                except OSError as e:
                    listener.close()
                    if e.errno == 98:  # EADDRINUSE: torch's retry loops look for this text
                        raise RuntimeError("The server socket has failed to listen on any local network address. "
                                           f"port: {port}, useIpv6: 0, code: -98, name: EADDRINUSE, message: address already in use") from None  # fmt: skip
                    raise
                listener.listen(socket.SOMAXCONN)
                self._sketchkit_listener = listener  # kept open as long as the store
                kw["master_listen_fd"] = listener.fileno()
                port = listener.getsockname()[1]
            super().__init__(host_name, port, **kw)

    return BoundTCPStore


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    host = bind_host(argv)
    if _is_loopback(host):  # ranks connect over, and gloo / NCCL listen on, the loopback too
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
        if _option(argv, "--local-addr", "--local_addr") is None:
            argv = ["--local-addr", host, *argv]
    import torch.distributed as dist
    import torch.distributed.elastic.rendezvous.c10d_rendezvous_backend as c10d_backend
    import torch.distributed.elastic.rendezvous.static_tcp_rendezvous as static_backend
    from torch.distributed import run

    store = _bound_store_class(host)
    dist.TCPStore = store  # type: ignore[misc]  # dynamic rendezvous and elastic.utils look it up here at call time
    c10d_backend.TCPStore = store  # type: ignore[misc]  # these two imported the name
    static_backend.TCPStore = store  # type: ignore[misc]
    run.main(argv)


if __name__ == "__main__":
    main()
