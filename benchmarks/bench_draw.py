"""The draw's cost on the CPU (`sketchkit.draw`), against a baseline checkout's draw, in one process.

    PYTHONPATH=. python benchmarks/bench_draw.py --base /tmp/base              # /tmp/base: git archive b401ed7
    PYTHONPATH=. python benchmarks/bench_draw.py --base /tmp/base --sketches 40 --json d.json
    PYTHONPATH=. python benchmarks/bench_draw.py --generate 40 [--draw base --base /tmp/base]  # one process, for timing it whole

Model: Magenta's owl (`--model`, a `.gen.json` converted torch-free, or a model directory). The
baseline is `--base DIR`'s `sketchkit/draw.py`, loaded beside this tree's (it needs only numpy and
onnx); everything else (engine, rows, runtime) is this tree's, so the two differ in the draw alone.
Measured, the two versions interleaved round by round (A B A B ..., medians), CPU time of this
process (user + sys, `time.process_time`), onnxruntime sessions of 1 intra-op thread:
1. nodes: `draw_graph(M)` (the CPU form and the CUDA form) and `with_draw(decoder_step)`;
2. the draw alone (`draw_graph(M)`, random parameters) at batch 1 and 64: CPU us per call;
3. the step with the draw (`with_draw`) at batch 1 and 64, and the step alone: CPU us per call;
4. --sketches N: `Sampler.generate(1)` one sketch at a time (the in-process engine, what
   `sketchkit generate owl -n 1` runs after loading), tau 0.3, the runtime's default threads:
   sketches per CPU-second, N per round.
--generate N: only load the model and generate N one-sketch requests with the draw of `--draw`
(this tree's or the base's), for timing whole processes against each other from outside.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's sketchkit, installed or not
sys.path.insert(1, str(Path(__file__).parent))
from bench_engine import load_model  # noqa: E402  (a Magenta JSON converted torch-free)

from sketchkit import draw as new_draw  # noqa: E402
from sketchkit.mixture import temperature  # noqa: E402
from sketchkit.onnx_session import open_session  # noqa: E402

DEFAULT_MODEL = ROOT.parent / "shared" / "data" / "magenta-gen" / "owl.gen.json"


def base_draw(base: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("base_draw", base / "sketchkit" / "draw.py")
    assert spec and spec.loader, base
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def feeds_for(session: Any, batch: int, m: int) -> dict[str, np.ndarray]:
    """Inputs of a draw or step+draw session: random parameters and state, tau 0.3, not greedy."""
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for i in session.get_inputs():
        if i.name == "temperature":
            feeds[i.name] = np.tile(np.array(temperature(0.3, "eq8"), np.float32), (batch, 1))
        elif i.name == "greedy":
            feeds[i.name] = np.zeros(batch, bool)
        elif i.name == "counter":
            feeds[i.name] = new_draw.row_keys(0, batch)
        elif i.name == "params":
            feeds[i.name] = rng.normal(size=(batch, 6 * m + 3)).astype(np.float32)
        else:
            feeds[i.name] = rng.normal(size=(batch, *i.shape[1:])).astype(np.float32) * 0.1
    return feeds


def cpu_us(session: Any, feeds: dict[str, np.ndarray], calls: int) -> float:
    """CPU microseconds of this process per `session.run`."""
    t = time.process_time()
    for _ in range(calls):
        session.run(None, feeds)
    return (time.process_time() - t) / calls * 1e6


def interleaved(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Each run's median over `rounds`, the runs taking turns in every round."""
    for run in runs.values():
        run()  # warm-up
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, run in runs.items():
            samples[k].append(run())
    return {k: statistics.median(v) for k, v in samples.items()}


def sampler_for(model: Path, draw_module: ModuleType) -> Any:
    """A one-request in-process Sampler whose step graph carries `draw_module`'s draw."""
    from sketchkit.runtimes.onnx import OnnxRuntime
    from sketchkit.sampling import Sampler

    own = new_draw.with_draw
    new_draw.with_draw = draw_module.with_draw  # type: ignore[assignment]  # what the runtime appends
    try:
        sampler = Sampler(OnnxRuntime(model))
        sampler.generate(1)  # builds the step graph now, with this draw
    finally:
        new_draw.with_draw = own  # type: ignore[assignment]
    return sampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument(
        "--base", type=Path, help="a checkout (e.g. `git archive b401ed7`) whose draw is the baseline"
    )
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--sketches", type=int, default=0, help="one-sketch requests per version and round")
    ap.add_argument("--generate", type=int, default=0, help="only generate this many one-sketch requests")
    ap.add_argument("--draw", choices=["new", "base"], default="new", help="with --generate: whose draw")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(args.model, Path(tmp))
        if args.generate:
            module = base_draw(args.base) if args.draw == "base" else new_draw
            sampler = sampler_for(model, module)
            from sketchkit.sampling import SamplingOptions

            for i in range(args.generate):
                sampler.generate(1, options=SamplingOptions(tau=0.3, seed=i))
            return
        run(args, model)


def run(args: argparse.Namespace, model: Path) -> None:
    import onnx

    from sketchkit.sampling import SamplingOptions

    m = (
        json.loads((model / "model.json").read_text())["dims"]["num_mixture"]
        if (model / "model.json").exists()
        else 20
    )
    versions = {"new": new_draw}
    if args.base:
        versions = {"base": base_draw(args.base), "new": new_draw}
    step = onnx.load(str(model / "decoder_step.onnx"))
    out: dict[str, Any] = {"nodes": {}, "draw_us": {}, "step_draw_us": {}, "m": m}
    runs: dict[str, Callable[[], float]] = {}
    for name, module in versions.items():
        g = module.draw_graph(m)
        out["nodes"][name] = {"draw": len(g.graph.node), "draw_cuda": len(module.draw_graph(m, False).graph.node),
                              "with_draw": len(module.with_draw(step, m).graph.node), "step": len(step.graph.node)}  # fmt: skip
        for batch, calls in ((1, 400), (64, 200)):
            s = open_session(g.SerializeToString(), threads=1)
            f = feeds_for(s, batch, m)
            runs[f"draw/{name}/{batch}"] = functools.partial(cpu_us, s, f, calls)
            s2 = open_session(module.with_draw(step, m).SerializeToString(), threads=1)
            runs[f"step_draw/{name}/{batch}"] = functools.partial(
                cpu_us, s2, feeds_for(s2, batch, m), calls // 2
            )
    for batch, calls in ((1, 200), (64, 100)):
        s = open_session(str(model / "decoder_step.onnx"), threads=1)
        f = feeds_for(s, batch, m)
        runs[f"step/-/{batch}"] = functools.partial(cpu_us, s, f, calls)
    medians = interleaved(runs, args.rounds)
    for key, us in medians.items():
        what, name, rows = key.split("/")
        out.setdefault(f"{what}_us", {}).setdefault(name, {})[rows] = round(us, 1)
    if args.sketches:
        samplers = {name: sampler_for(model, module) for name, module in versions.items()}
        seeds = iter(range(10**9))

        def sketches(sampler: Any) -> float:
            t = time.process_time()
            for _ in range(args.sketches):
                sampler.generate(1, options=SamplingOptions(tau=0.3, seed=next(seeds)))
            return args.sketches / (time.process_time() - t)

        rates = interleaved(
            {k: functools.partial(sketches, s) for k, s in samplers.items()}, max(3, args.rounds // 3)
        )
        out["sketches_per_cpu_s"] = {k: round(v, 2) for k, v in rates.items()}
    print(json.dumps(out, indent=1))
    if "base" in versions:
        for what in ("draw_us", "step_draw_us"):
            for rows in ("1", "64"):
                base, new = out[what]["base"][rows], out[what]["new"][rows]
                print(f"{what} batch {rows}: base {base} us, new {new} us, new/base {new / base:.2f}")
        if args.sketches:
            r = out["sketches_per_cpu_s"]
            print(
                f"sketches per CPU-second: base {r['base']}, new {r['new']}, new/base {r['new'] / r['base']:.2f}"
            )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
