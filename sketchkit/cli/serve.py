"""`sketchkit serve`: build a Triton model repository, and run it on a local tritonserver."""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from sketchkit.serving.repository import RepoOptions


@click.group()
def serve() -> None:
    """Build and run a Triton model repository."""


@serve.command("build-repo", short_help="Write a Triton model repository for models.")
@click.argument("models", nargs=-1, required=True)
@click.option(
    "--out", "-o", required=True, type=click.Path(file_okay=False), help="Repository directory to write."
)
@click.option(
    "--flavor",
    type=click.Choice(["cpu", "gpu"]),
    default="cpu",
    show_default=True,
    help="gpu: onnxruntime backend, KIND_GPU (NGC container). cpu: Python-backend model.py running the same ONNX files.",
)
@click.option("--max-batch-size", type=int, default=256, show_default=True, help="Rows per execution.")
@click.option(
    "--queue-delay-us",
    type=int,
    default=200,
    show_default=True,
    help="Dynamic batcher's wait to merge requests.",
)
@click.option(
    "--instances", type=int, default=1, show_default=True, help="Model instances (per GPU for gpu)."
)
@click.option(
    "--accelerator",
    type=click.Choice(["none", "tensorrt", "tensorrt-fp16"]),
    default="none",
    show_default=True,
    help="gpu: onnxruntime's TensorRT execution provider.",
)
@click.option("--cuda-graphs", is_flag=True, help="gpu + tensorrt: capture CUDA graphs of the step models.")
@click.option("--engine-cuda-graphs/--no-engine-cuda-graphs", default=True, show_default=True,
              help="gpu: <name>_generate replays one captured CUDA graph per step (rows in fixed-capacity slots).")
@click.option(
    "--stateful/--no-stateful",
    default=True,
    show_default=True,
    help="Also build <name>_decoder_step_stateful (state kept on the server; needs the onnx package).",
)
@click.option(
    "--sequence-idle-s",
    type=float,
    default=60.0,
    show_default=True,
    help="Stateful: drop a sequence idle this long.",
)
@click.option(
    "--generate/--no-generate",
    default=True,
    show_default=True,
    help="Also build <name>_generate (whole sketches per request, continuous batching).",
)
@click.option("--max-sketches-per-request", type=int, default=None, help="Generate: cap on n [cpu: 256, gpu: 4096].")
@click.option(
    "--max-sketches-in-flight",
    type=int,
    default=None,
    help="Generate: queued + running sketches before requests get a 'busy' error [cpu: 4096, gpu: 65536].",
)
@click.option("--max-rows-per-step", type=int, default=None,
              help="Generate: rows of one graph evaluation; the rest wait their turn [cpu: 1024, gpu: 32768].")
@click.option("--engines", type=int, default=1, show_default=True,
              help="Generate: engines, each stepped by its own thread (more cores: try one per 1-2 cores).")
@click.option("--intra-op-threads", type=int, default=2, show_default=True,
              help="Generate: onnxruntime intra-op threads of each graph evaluation.")
@click.option(
    "--name",
    "names",
    multiple=True,
    metavar="NAME",
    help="Serve the models under these names, one per model in order [default: the name typed, "
    "'/' -> '-' (magenta/owl.gen -> magenta-owl.gen); a directory's model.json name].",
)
@click.option("--max-sequence-rows", type=int, default=4096, show_default=True,
              help="Stateful, cpu: rows one sequence may hold.")
@click.option("--max-state-mb", type=int, default=1024, show_default=True,
              help="Stateful, cpu: MB of state all sequences together may hold.")
@click.option("--k8s", "k8s", type=click.Path(file_okay=False), metavar="DIR",
              help="Also write Kubernetes manifests (kustomize) whose pods build this repository (zoo names only).")
@click.option("--force", is_flag=True, help="Replace --out (and --k8s) if written by build-repo.")
def build_repo(models: tuple[str, ...], out: str, flavor: str, max_batch_size: int, queue_delay_us: int,
               instances: int, accelerator: str, cuda_graphs: bool, engine_cuda_graphs: bool, stateful: bool,
               sequence_idle_s: float,
               generate: bool, max_sketches_per_request: int | None, max_sketches_in_flight: int | None,
               max_rows_per_step: int | None,
               max_sequence_rows: int, max_state_mb: int, engines: int, intra_op_threads: int,
               names: tuple[str, ...], k8s: str | None, force: bool) -> None:  # fmt: skip
    """Write a Triton model repository for MODELS (model directories or zoo names): per model
    <name>_generate (one request in, finished sketches out) and one Triton model per graph,
    <name>_encoder, <name>_decoder_init, <name>_decoder_step, for custom loops."""
    from pathlib import Path

    from sketchkit.errors import SketchkitError
    from sketchkit.hub import resolve
    from sketchkit.names import safe_name
    from sketchkit.serving.repository import RepoOptions
    from sketchkit.serving.repository import build_repo as build

    options = RepoOptions(
        flavor=flavor, max_batch_size=max_batch_size, queue_delay_us=queue_delay_us, instances=instances,
        accelerator=accelerator, cuda_graphs=cuda_graphs, engine_cuda_graphs=engine_cuda_graphs, stateful=stateful,
        sequence_idle_s=sequence_idle_s,
        generate=generate, max_sketches_per_request=max_sketches_per_request,
        max_sketches_in_flight=max_sketches_in_flight, max_rows_per_step=max_rows_per_step, engines=engines,
        intra_op_threads=intra_op_threads,
        max_sequence_rows=max_sequence_rows, max_state_bytes=max_state_mb << 20,
    )  # fmt: skip
    if names and len(names) != len(models):
        raise SketchkitError(f"got {len(names)} --name for {len(models)} models (give one per model, in order)")
    typed: list[str | None] = [*names] or [None if Path(m).is_dir() else safe_name(m) for m in models]
    if k8s:
        from sketchkit.serving.manifests import check_models

        check_models(models)
    built = build([resolve(m) for m in models], out, options, force=force, names=typed)
    click.echo(f"wrote {out} ({flavor}): {', '.join(built)}")
    if k8s:
        from sketchkit.serving.manifests import write_manifests

        write_manifests(k8s, models, pod_args(models, [n for n in typed if n], options), options, force=force)
        click.echo(f"wrote {k8s}: kubectl apply -k {k8s} (KServe: kubectl apply -k {k8s}/kserve)")


def pod_args(models: Sequence[str], names: Sequence[str], opts: RepoOptions) -> list[str]:
    """`sketchkit` arguments that build this repository in the pod, every option spelled out. Read
    off the `build-repo` command itself (the pod runs it), so a new option is covered as it lands;
    an option without a flag must be what the command would give it."""
    import dataclasses

    from sketchkit.errors import SketchkitError
    from sketchkit.serving.repository import RepoOptions

    fields = {f.name for f in dataclasses.fields(RepoOptions)}
    args = ["serve", "build-repo", *models]
    for name in names:
        args += ["--name", name]
    covered = set()
    for param in build_repo.params:
        field = "max_state_bytes" if param.name == "max_state_mb" else param.name
        if not isinstance(param, click.Option) or field not in fields:
            continue
        covered.add(field)
        value = getattr(opts, field)
        if param.is_flag:
            flag = param.opts[0] if value else next(iter(param.secondary_opts), None)
            args += [flag] if flag else []
            continue
        if field == "max_state_bytes":
            if value % (1 << 20):
                raise SketchkitError("--k8s: the stateful state cap must be whole MB (--max-state-mb)")
            value >>= 20
        args += [param.opts[0], str(value)]
    default = RepoOptions(flavor=opts.flavor)
    for field in sorted(fields - covered):
        if getattr(opts, field) != getattr(default, field):
            raise SketchkitError(f"--k8s: {field} has no build-repo option; keep its default ({getattr(default, field)})")
    return [*args, "--out", "/models/repo"]


@serve.command("start", short_help="Run a local tritonserver on a cpu-flavor repository.")
@click.argument("repo", type=click.Path(file_okay=False))
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True,
              help="Prometheus /metrics: Triton's and <name>_generate's (sketchkit_*).")
@click.option(
    "--python",
    "python",
    default=sys.executable,
    show_default="this interpreter",
    help="Interpreter whose packages model.py uses (numpy<2 and onnxruntime).",
)
@click.option(
    "--log", "log_path", type=click.Path(dir_okay=False), help="Server log file (default: a temp file, removed after a clean stop)."
)
@click.option(
    "--startup-timeout", type=float, default=120.0, show_default=True, help="Seconds to wait for ready."
)
@click.option("--management-api", is_flag=True,
              help="Open shared memory, the repository, trace and log settings to holders of the key "
              "(closed by default).")  # fmt: skip
def start(
    repo: str, http_port: int, grpc_port: int, metrics_port: int, python: str, log_path: str | None,
    startup_timeout: float, management_api: bool,
) -> None:  # fmt: skip
    """Run a local tritonserver (from the nvidia-pytriton wheel) on REPO, a cpu-flavor repository,
    on 127.0.0.1 until Ctrl-C or SIGTERM. Inference needs the key (`sketchkit serve key`) in the
    x-sketchkit-key header; sketchkit's clients send it."""
    from sketchkit.errors import printable
    from sketchkit.serving.server import ServerError, TritonServer

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # both, explicitly: a shell starts background jobs with SIGINT ignored
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = TritonServer(
        repo, http_port, grpc_port, python=python, log_path=log_path, startup_timeout_s=startup_timeout,
        metrics_port=metrics_port, management_api=management_api,
    )  # fmt: skip
    clean = False
    try:
        server.check()  # a bad repository, port or Python: one line, before "starting"
        click.echo(printable(f"starting tritonserver on {repo} (log: {server.log_path})"), err=True)
        server.start()
        models = printable(", ".join(server.models))  # directory names of a repository: not trusted
        click.echo(f"ready: {server.grpc_url}  {server.http_url}  metrics: {server.metrics_url}  models: {models}")
        click.echo("inference needs the header x-sketchkit-key: $(sketchkit serve key)", err=True)
        click.echo("Ctrl-C to stop", err=True)
        assert server.process is not None
        code = server.process.wait()
        raise ServerError(f"tritonserver exited with code {code} (log: {server.log_path})")
    except KeyboardInterrupt:
        click.echo("stopping", err=True)
        clean = True
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if clean and log_path is None:  # our temp log; kept (and named in the error) after a failure
            server.log_path.unlink(missing_ok=True)
    click.echo("stopped", err=True)


@serve.command("key", short_help="Print the key that `serve start` requires for inference.")
@click.option("--path", "show_path", is_flag=True,
              help="Print the key file's path instead (what a service in another codebase reads).")
def key(show_path: bool) -> None:
    """Print the local server's key ($SKETCHKIT_SERVER_KEY, else the cache's server.key, made on
    first use): send it as the x-sketchkit-key header (sketchkit's clients read it themselves)."""
    import os

    from sketchkit import wire
    from sketchkit.serving.server import local_key

    if show_path:
        if os.environ.get(wire.KEY_ENV):
            click.echo(f"note: ${wire.KEY_ENV} is set: servers started here use it, not this file", err=True)
        click.echo(wire.key_file())
        return
    click.echo(local_key())
