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
    out: str | os.PathLike[str], models: Sequence[str], args: list[str], opts: RepoOptions, *, force: bool = False,
) -> Path:  # fmt: skip
    """Write DIR for the repository of `models` (zoo names, `check_models`) with `opts`; `args`
    are the `sketchkit` arguments that build it in the pod (`sketchkit.cli.serve.pod_args`)."""
    check_models(models)
    out = Path(out)
    replaceable = force and not out.is_symlink() and (out / MARKER).is_file()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not replaceable:
        raise SketchkitError(f"{out} exists and is not empty (--force replaces a directory written by --k8s)")
    target = str(in_flight_target(opts, len(models)))
    cores = str(len(models) * opts.engines * opts.intra_op_threads) if opts.flavor == "cpu" else "2"
    deployment: list[dict] = [
        {"op": "replace", "path": "/spec/template/spec/initContainers/0/args", "value": args},
        {"op": "replace", "path": "/spec/template/spec/containers/0/resources/requests/cpu", "value": cores},
        {"op": "replace", "path": "/spec/template/spec/containers/0/resources/limits/cpu", "value": cores},
    ]
    hpa: list[dict] = [{"op": "replace", "path": "/spec/metrics/0/pods/target/averageValue", "value": target}]
    isvc: list[dict] = [
        {"op": "replace", "path": "/spec/predictor/initContainers/0/args", "value": args},
        {"op": "replace", "path": "/spec/predictor/containers/0/resources/requests/cpu", "value": cores},
        {"op": "replace", "path": "/spec/predictor/containers/0/resources/limits/cpu", "value": cores},
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
