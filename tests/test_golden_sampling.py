"""Golden sketches: fixed seeds give exactly these strokes.

Any change to what a seed means (the order or use of the random numbers, the units, the early
stop) fails here. What a seed means changed twice on purpose, and the digests were recorded again
each time: when the draw moved into the graph (issue 19), and when it was rewritten at half its
cost (issue 27: the pen, component, radius and angle each from one Squares uniform, the normal
pair by Atanh and Tan; see `sketchkit.draw`). The greedy digest did not change: greedy rows use no
random numbers and take the component's mean exactly. The sheep digests were also recorded again
when the shipped sheep was retrained (issue 11: a new model, so new strokes).
The digests are of onnxruntime's CPU float32 results on this project's machines (x86-64); another
CPU family (or C library: Atanh and Tan are libm's) may round differently and would need its own.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from sketchkit.hub import load, resolve
from sketchkit.runtimes.onnx import OnnxRuntime
from sketchkit.sampling import Sampler, SamplingOptions

SHEEP_CASES = {
    "generate-tau0.3-seed1": lambda s: s.generate(5, options=SamplingOptions(tau=0.3, seed=1)),
    "generate-tau1.0-seed2-js": lambda s: s.generate(4, options=SamplingOptions(tau=1.0, seed=2, temperature_rule="js")),
    "generate-greedy": lambda s: s.generate(2, options=SamplingOptions(greedy=True, seed=3)),
    "generate-maxlen20": lambda s: s.generate(3, options=SamplingOptions(tau=0.7, seed=4, max_len=20)),
    "complete": lambda s: s.complete(s.generate(1, options=SamplingOptions(seed=5))[0][:12], k=3,
                                      options=SamplingOptions(tau=0.5, seed=6)),  # fmt: skip
}
OWL_CASES = {
    "generate-tau0.3-seed1": lambda s: s.generate(6, options=SamplingOptions(tau=0.3, seed=1)),
    "generate-tau0.8-seed9-eq8": lambda s: s.generate(3, options=SamplingOptions(tau=0.8, seed=9, temperature_rule="eq8")),
    "complete": lambda s: s.complete(s.generate(1, options=SamplingOptions(seed=5))[0][:10], k=2,
                                     options=SamplingOptions(tau=0.4, seed=6)),  # fmt: skip
}

GOLDEN = {
    "sheep/generate-tau0.3-seed1": "2ddae5f478565c2f08872ab3",
    "sheep/generate-tau1.0-seed2-js": "a6dabd49632daf230d6bb5e9",
    "sheep/generate-greedy": "3c07787bd0398ee01f645973",
    "sheep/generate-maxlen20": "950acd0ae29968596f9f0de6",
    "sheep/complete": "af92adf10a587b0762d71f37",
    "owl/generate-tau0.3-seed1": "ebd1c649f07d39eaab9264a7",
    "owl/generate-tau0.8-seed9-eq8": "e8d2ce883bff3a771b088f60",
    "owl/complete": "6f8c802fb0197c228d630432",
}


def digest(sketches: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for s in sketches:
        a = np.ascontiguousarray(s, np.float32)
        h.update(np.int64(len(a)).tobytes() + a.tobytes())
    return h.hexdigest()[:24]


@pytest.fixture(scope="module")
def owl_dir(magenta_gen_dir, tmp_path_factory):
    pytest.importorskip("torch", reason="importing a Magenta model needs the export extra (torch)")
    from sketchkit.export.magenta import import_magenta

    out = tmp_path_factory.mktemp("golden") / "owl"
    import_magenta(magenta_gen_dir / "owl.gen.json", out)
    return out


@pytest.mark.parametrize("case", list(SHEEP_CASES))
def test_sheep_golden(case):
    sampler = Sampler(OnnxRuntime(resolve("sheep")))
    assert digest(SHEEP_CASES[case](sampler)) == GOLDEN[f"sheep/{case}"]


@pytest.mark.parametrize("case", list(OWL_CASES))
def test_owl_golden(case, owl_dir):
    sampler = Sampler(OnnxRuntime(owl_dir))
    assert digest(OWL_CASES[case](sampler)) == GOLDEN[f"owl/{case}"]


# ---- the same digests through the public loader: what `sketchkit generate sheep|owl` runs -----
def test_sheep_golden_through_the_loader():
    """`sketchkit generate sheep`: the name, resolved by the loader to the shipped model."""
    runtime = load("sheep")
    for case, run in SHEEP_CASES.items():
        assert digest(run(Sampler(runtime))) == GOLDEN[f"sheep/{case}"], case


def test_owl_golden_through_the_loader(zoo_mirror):
    """`sketchkit generate owl` on the light install: the class name, pulled from the registry
    (here a mirror of Magenta's files), converted by the torch-free importer, opened by the loader:
    the same strokes as the PyTorch importer's graphs above."""
    runtime = load("owl")
    assert runtime.info.name == "magenta/owl.gen"
    for case, run in OWL_CASES.items():
        assert digest(run(Sampler(runtime))) == GOLDEN[f"owl/{case}"], case
