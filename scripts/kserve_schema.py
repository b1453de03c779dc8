"""Extract the InferenceService v1beta1 schema from KServe's CRD into tests/fixtures, so that
tests/test_deploy.py checks the KServe manifest offline against the schema the API server applies.

    python scripts/kserve_schema.py serving.kserve.io_inferenceservices.yaml SOURCE

The CRD is config/crd/full/serving.kserve.io_inferenceservices.yaml of github.com/kserve/kserve
(Apache-2.0); SOURCE (e.g. "kserve/kserve@<commit>") is recorded beside the schema. Descriptions
are dropped (they are most of the 2 MB); everything the validator reads is kept.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "kserve"


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main(crd_path: str, source: str) -> None:
    crd = yaml.safe_load(Path(crd_path).read_text())
    assert crd["spec"]["names"]["kind"] == "InferenceService", crd_path
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    schema = strip(version["schema"]["openAPIV3Schema"])
    OUT.mkdir(parents=True, exist_ok=True)
    text = json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()
    # mtime=0: the same CRD gives the same bytes
    (OUT / "inferenceservice-v1beta1.schema.json.gz").write_bytes(gzip.compress(text, 9, mtime=0))
    (OUT / "SOURCE").write_text(f"{source}: config/crd/full/serving.kserve.io_inferenceservices.yaml (Apache-2.0), v1beta1, descriptions dropped\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
