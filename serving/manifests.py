"""Kubernetes manifests for a model repository (`sketchkit serve build-repo MODELS --k8s DIR`).

DIR gets the kustomize tree of serving/deploy (base, cpu and gpu overlays, the KServe variant) and
two kustomizations on top of it, `DIR` (the flavor's overlay) and `DIR/kserve`, patched so that the
pod's init step runs the `sketchkit serve build-repo` that rebuilds this very repository (the same
models, names and options), with the CPU request and the autoscaling target that its options imply.
Written as JSON, which kustomize reads as YAML: no YAML writer needed.

    kubectl kustomize DIR            # or: kubectl apply -k DIR
    kubectl kustomize DIR/kserve
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from sketchkit.errors import SketchkitError
from sketchkit.io import atomic_directory
from sketchkit.serving.repository import RepoOptions

DEPLOY = Path(__file__).parent / "deploy"
MARKER = ".sketchkit-manifests"  # --force replaces only directories written here
NAME = "sketchkit-triton"  # the Deployment, Service, Ingress, HPA and InferenceService of serving/deploy

def build_repo_args(models: Sequence[str], names: Sequence[str], opts: RepoOptions) -> list[str]:
    """`sketchkit` arguments that build this repository in the pod, every option spelled out. Read
    off the `build-repo` command itself (the pod runs it), so a new option is covered as it lands;
    an option without a flag must be what the command would give it."""
    import click

    from sketchkit.cli.serve import build_repo

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


def in_flight_target(opts: RepoOptions, models: int) -> int:
    """Sketches in flight per replica at which the HPA adds one: per model, the rows its engines'
    steps hold (beyond, sketches wait for a step), and never above half its "busy" cap."""
    return models * min(opts.engines * opts.max_rows_per_step, opts.max_sketches_in_flight // 2)


def _patch(kind: str, ops: list[dict]) -> dict:
    return {"target": {"kind": kind, "name": NAME}, "patch": json.dumps(ops)}


def check_models(models: Sequence[str]) -> None:
    """Zoo names only: the pod builds its repository from them (a local directory is not there)."""
    local = [m for m in models if Path(m).is_dir()]
    if local:
        raise SketchkitError(
            f"--k8s: {local[0]} is a local directory; the pod's init step builds the repository from zoo "
            "names (for your own models, publish them to a zoo or bake them into the image)"
        )


def write_manifests(
    out: str | os.PathLike[str], models: Sequence[str], names: Sequence[str], opts: RepoOptions,
    *, force: bool = False,
) -> Path:  # fmt: skip
    """Write DIR for the repository that `build-repo models --name names` with `opts` writes.
    `models` are zoo names (`check_models`)."""
    check_models(models)
    out = Path(out)
    replaceable = force and not out.is_symlink() and (out / MARKER).is_file()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not replaceable:
        raise SketchkitError(f"{out} exists and is not empty (--force replaces a directory written by --k8s)")
    args = build_repo_args(models, names, opts)
    target = str(in_flight_target(opts, len(models)))
    cores = str(len(models) * opts.engines * opts.intra_op_threads) if opts.flavor == "cpu" else "2"
    deployment = [
        {"op": "replace", "path": "/spec/template/spec/initContainers/0/args", "value": args},
        {"op": "replace", "path": "/spec/template/spec/containers/0/resources/requests/cpu", "value": cores},
    ]
    hpa = [{"op": "replace", "path": "/spec/metrics/0/pods/target/averageValue", "value": target}]
    isvc = [
        {"op": "replace", "path": "/spec/predictor/initContainers/0/args", "value": args},
        {"op": "replace", "path": "/spec/predictor/containers/0/resources/requests/cpu", "value": cores},
        {"op": "replace", "path": "/spec/predictor/autoScaling/metrics/0/external/target/averageValue",
         "value": target},
    ]  # fmt: skip
    if opts.flavor == "cpu":  # the KServe variant asks for a GPU
        isvc.append({"op": "remove", "path": "/spec/predictor/containers/0/resources/limits/nvidia.com~1gpu"})
    header = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
              # newName: where you pushed the serving/Dockerfile image
              "images": [{"name": "sketchkit-tritonserver", "newName": "sketchkit-tritonserver", "newTag": "24.10"}]}
    with atomic_directory(out) as tmp:
        shutil.copytree(DEPLOY, tmp / "deploy")
        (tmp / "kustomization.yaml").write_text(json.dumps(
            header | {"resources": [f"deploy/overlays/{opts.flavor}"],
                      "patches": [_patch("Deployment", deployment), _patch("HorizontalPodAutoscaler", hpa)]},
            indent=2) + "\n")  # fmt: skip
        (tmp / "kserve").mkdir()
        (tmp / "kserve" / "kustomization.yaml").write_text(json.dumps(
            header | {"resources": ["../deploy/kserve"], "patches": [_patch("InferenceService", isvc)]},
            indent=2) + "\n")  # fmt: skip
        (tmp / MARKER).write_text(" ".join(["sketchkit", *args]) + "\n")
    return out
