"""Golden sketches: fixed seeds give exactly the strokes that the sampler gave before the decode
loop moved into `sketchkit.engine` (digests recorded from the old `Sampler._loop`, commit 56ec108).

Any change to what a seed means (the order of random draws, the units, the early stop) fails here.
The sheep digests were recorded again, with the same code, when the shipped sheep was retrained
(issue 11: a new model, so new strokes); the owl's model never changed, so its digests still pin
the sampler to the old loop.
The digests are of onnxruntime's CPU float32 results on this project's machines (x86-64); another
CPU family may round differently and would need its own digests.
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
    "sheep/generate-tau0.3-seed1": "7f706b8fb8376eab05a71f20",
    "sheep/generate-tau1.0-seed2-js": "66d3091809eaaaeedf4d1796",
    "sheep/generate-greedy": "3c07787bd0398ee01f645973",
    "sheep/generate-maxlen20": "2105d84d7f3bff015cb2bd79",
    "sheep/complete": "1bc9979fc2b0e3ffcbc3b66e",
    "owl/generate-tau0.3-seed1": "b5da2f403f69e8963bcc7ea2",
    "owl/generate-tau0.8-seed9-eq8": "99ed7fd4b318b2ca121db00e",
    "owl/complete": "155eb4a5837e85f975f213d3",
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
