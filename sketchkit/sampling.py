"""Sampling sketches from the step-wise graphs (paper §3.2-3.3, Eq. 3-8).

`Sampler(runtime)` turns each call into an engine request (`sketchkit.engine`: the one decode
loop, shared with the Triton generate model and the training previews) and runs it; the runtime
(in-process onnxruntime or Triton) evaluates the graphs, the draw included (`sketchkit.draw`).
A request's randomness is its seed: z is drawn from it here, and each row's stream in the draw is
keyed by (seed, row) and counted by step, so a seed gives the same sketches whatever order rows
finish in and whatever else shares the engine. A runtime that samples whole sketches itself
(Triton's `<name>_generate`, `remote_generator()`) gets the call instead.

Units: the graphs work in normalised offsets (pixels / scale_factor); everything the Sampler
takes and returns is stroke-3 in pixel units.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sketchkit import strokes
from sketchkit.draw import row_keys, sample_points
from sketchkit.engine import Engine, Request
from sketchkit.errors import DataError, ModelError, SketchkitError
from sketchkit.mixture import Mixture, mixture, temperature
from sketchkit.modelinfo import MAX_SEQ_LEN, RULES
from sketchkit.runtimes.base import Runtime

__all__ = ["Mixture", "Sampler", "SamplingOptions", "mixture", "sample_points", "temperature"]


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample; override fields with `dataclasses.replace(options, tau=...)`.

    tau: temperature in (0, 2]; `greedy=True` is the tau -> 0 limit.
    temperature_rule: "eq8" (the paper) or "js" (sketch-rnn-js); None = the model's own rule.
    max_len: steps before a sketch is cut; None = the model's max_seq_len (N_max).
    seed: for numpy.random.default_rng; None = fresh entropy.
    start_token: the first input S_0 (5 numbers); None = the model's own (model.json).
    """

    tau: float = 0.3
    temperature_rule: str | None = None
    greedy: bool = False
    max_len: int | None = None
    seed: int | None = None
    start_token: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.tau, bool) or not isinstance(self.tau, numbers.Real) or not 0 < self.tau <= 2:
            raise SketchkitError(f"tau must be in (0, 2], got {self.tau} (use greedy for the tau -> 0 limit)")
        if self.temperature_rule not in (None, *RULES):
            raise SketchkitError(f"unknown temperature rule {self.temperature_rule!r} (choose eq8 or js)")
        if self.max_len is not None and not 1 <= self.max_len <= MAX_SEQ_LEN:
            raise SketchkitError(f"max_len must be in [1, {MAX_SEQ_LEN}], got {self.max_len}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0):
            raise SketchkitError(f"seed must be a non-negative integer, got {self.seed}")
        if self.start_token is not None and (
            len(self.start_token) != 5 or not all(isinstance(x, numbers.Real) and math.isfinite(x) for x in self.start_token)
        ):
            raise SketchkitError(f"start_token must be 5 finite numbers, got {self.start_token!r}")


# ---------------------------------------------------------------------------------------------
# latent space


def lerp(z0: np.ndarray, z1: np.ndarray, t: float) -> np.ndarray:
    return (1.0 - t) * z0 + t * z1


def slerp(z0: np.ndarray, z1: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation (as magenta's sketch-rnn notebooks): keeps the norm that
    z ~ N(0, I) concentrates on, where lerp's midpoints shrink towards the origin."""
    cos = np.dot(z0, z1) / max(float(np.linalg.norm(z0) * np.linalg.norm(z1)), 1e-12)
    omega = math.acos(float(np.clip(cos, -1.0, 1.0)))
    if math.sin(omega) < 1e-6:  # (anti)parallel: no unique great circle
        return lerp(z0, z1, t)
    return (math.sin((1.0 - t) * omega) * z0 + math.sin(t * omega) * z1) / math.sin(omega)


INTERPOLATIONS = {"lerp": lerp, "slerp": slerp}


def rescale(sketches: Sequence[np.ndarray], scale_factor: float) -> tuple[list[np.ndarray], float]:
    """Rescale sketches so the std of their offsets equals a model's `scale_factor`.

    A model's scale_factor belongs to the units of its training data; QuickDraw's simplified
    ndjson (0..255) has offsets ~2.6x smaller than the sketch-rnn `.npz` files. Returns the
    rescaled sketches and the factor applied.
    """
    std = strokes.scale_factor(sketches)
    if std <= 0:
        raise DataError("cannot rescale: the sketches have no extent")
    factor = scale_factor / std
    return [np.asarray(s, np.float32) * np.array([factor, factor, 1], np.float32) for s in sketches], factor


# ---------------------------------------------------------------------------------------------
# the sampler


class Sampler:
    """Sketches from a runtime: generate, reconstruct, interpolate, analogies, completion."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.info = runtime.info
        self.start_token = np.asarray(self.info.start_token, dtype=np.float32)

    # -- public API ----------------------------------------------------------------------------

    def generate(self, n: int, z: np.ndarray | None = None, options: SamplingOptions | None = None) -> list[np.ndarray]:
        """n new sketches: z ~ N(0, I) for vae models (unless given), none for decoder-only."""
        options = options or SamplingOptions()
        request = self.generation(n, z, options)
        remote = self._remote()
        if remote is not None:
            self._check_remote_start(options)
            return remote.generate(n, None if z is None else request.z, options)
        return self._run(request)

    def generation(self, n: int, z: np.ndarray | None = None, options: SamplingOptions | None = None) -> Request:
        """The engine request behind `generate(n, z, options)`, not yet run: for callers that
        drive an `Engine` themselves (the Triton generate model). Its `z` is the one decoded."""
        options = options or SamplingOptions()
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise SketchkitError(f"n must be >= 1, got {n}")
        if not self.info.dims.vae:
            if z is not None:
                raise ModelError(f"{self.info.name} is a decoder-only model: it takes no latent vector z")
            return self._request_from_start(None, int(n), options)
        if z is None:
            z_rng, _ = _rngs(options.seed)
            z = z_rng.standard_normal((n, self.info.dims.z_size)).astype(np.float32)
        if len(self._check_z(z)) != n:
            raise SketchkitError(f"got {len(z)} latent vectors for n = {n}")
        return self._request_from_start(self._check_z(z), int(n), options)

    def decode(self, z: np.ndarray | None, options: SamplingOptions | None = None) -> list[np.ndarray]:
        """One sketch per latent vector z [B, Nz] (the decoder half of the VAE)."""
        options = options or SamplingOptions()
        if not self.info.dims.vae:
            raise ModelError(f"{self.info.name} is a decoder-only model: it takes no latent vector z")
        z = self._check_z(z)
        return self.generate(len(z), z, options)

    def encode(self, sketches: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(mu, presig) [B, Nz] of stroke-3 sketches in pixel units; sigma = exp(presig / 2)."""
        self._need_encoder("encode")
        if len(sketches) == 0:
            raise DataError("no sketches to encode")
        checked = [strokes.check_stroke3(s, name=f"sketch {i}") for i, s in enumerate(sketches)]
        for i, s in enumerate(checked):
            if len(s) > self.info.max_seq_len:
                raise DataError(
                    f"sketch {i} has {len(s)} points, more than the model's max_seq_len {self.info.max_seq_len} "
                    "(simplify it with RDP first)"
                )
        lengths = np.array([len(s) for s in checked], dtype=np.int64)
        T = int(lengths.max())
        # normalised stroke-5 without the S_0 row; the encoder reads only the first `lengths` rows
        batch = np.stack([strokes.to_stroke5(strokes.normalize(s, self.info.scale_factor), T) for s in checked])
        mu, presig = self.runtime.encode(batch, lengths)
        return np.asarray(mu, np.float32), np.asarray(presig, np.float32)

    def reconstruct(self, sketches: Sequence[np.ndarray], options: SamplingOptions | None = None) -> list[np.ndarray]:
        """Encode each sketch to its most likely latent (mu) and decode it again."""
        mu, _ = self.encode(sketches)
        return self.decode(mu, options)

    def interpolate(
        self, a: np.ndarray, b: np.ndarray, steps: int = 10, method: str = "slerp", options: SamplingOptions | None = None
    ) -> list[np.ndarray]:
        """`steps` sketches along the latent path from a to b (each a stroke-3 sketch or a z)."""
        interp = _interpolation(method)
        if steps < 2:
            raise SketchkitError(f"steps must be >= 2, got {steps}")
        za, zb = self._latents([a, b])
        return self.decode(np.stack([interp(za, zb, t) for t in np.linspace(0.0, 1.0, steps)]), options)

    def grid4(
        self, corners: Sequence[np.ndarray], size: int = 5, method: str = "slerp", options: SamplingOptions | None = None
    ) -> list[np.ndarray]:
        """The paper's four-way interpolation (Fig. 14): corners (top-left, top-right,
        bottom-left, bottom-right) and the size x size grid between them, row-major."""
        interp = _interpolation(method)
        if len(corners) != 4:
            raise SketchkitError(f"grid4 needs 4 corners, got {len(corners)}")
        if size < 2:
            raise SketchkitError(f"size must be >= 2, got {size}")
        tl, tr, bl, br = self._latents(corners)
        ts = np.linspace(0.0, 1.0, size)
        zs = [interp(interp(tl, tr, tx), interp(bl, br, tx), ty) for ty in ts for tx in ts]
        return self.decode(np.stack(zs), options)

    def analogy(self, a: np.ndarray, b: np.ndarray, c: np.ndarray, options: SamplingOptions | None = None) -> np.ndarray:
        """The sketch at z_a - z_b + z_c ("a is to b as ? is to c", paper §5.3)."""
        za, zb, zc = self._latents([a, b, c])
        return self.decode((za - zb + zc)[None], options)[0]

    def complete(self, partial: np.ndarray, k: int = 8, options: SamplingOptions | None = None) -> list[np.ndarray]:
        """k continuations of a partial sketch (paper §5.4): the decoder reads the partial
        sketch to build its state, then samples on from there. Vae models condition on the
        partial sketch's own latent (mu). Returns the full sketches, partial included."""
        options = options or SamplingOptions()
        if k < 1:
            raise SketchkitError(f"k must be >= 1, got {k}")
        s = strokes.check_stroke3(partial, name="partial sketch").astype(np.float32)
        remote = self._remote()
        if remote is not None:
            self._check_remote_start(options)
            return remote.complete(s, k, options)
        return [np.vstack([s, e]) for e in self._run(self.completion(s, k, options))]

    def completion(self, partial: np.ndarray, k: int, options: SamplingOptions) -> Request:
        """The engine request behind `complete` (its sketches are the endings only): the engine
        reads the partial sketch (one row, admitted and batched like every other) and then
        samples k endings on from it; for vae models it encodes the partial sketch to its mu."""
        s = strokes.check_stroke3(partial, name="partial sketch").astype(np.float32)
        max_len = options.max_len or self.info.max_seq_len
        if len(s) >= max_len:
            raise DataError(f"the partial sketch has {len(s)} points: nothing left to complete (max_len {max_len})")
        if self.info.dims.vae and len(s) > self.info.max_seq_len:
            raise DataError(
                f"sketch 0 has {len(s)} points, more than the model's max_seq_len {self.info.max_seq_len} "
                "(simplify it with RDP first)"
            )
        seq = strokes.to_stroke5(strokes.normalize(s, self.info.scale_factor), len(s))
        prev = np.repeat(self._start(options)[None], k, axis=0)  # what the decoder reads first
        return self._request(prev, None, None, options, max_len - len(s), prefix=seq)

    # -- requests for the engine ----------------------------------------------------------------

    def _run(self, request: Request) -> list[np.ndarray]:
        """One request on an engine of its own (so threads sharing this sampler never meet)."""
        return Engine(self.runtime).run(request)

    def _remote(self) -> Any:
        """The runtime's own whole-sketch generator (Triton's `<name>_generate`), if it has one."""
        remote = getattr(self.runtime, "remote_generator", None)
        return remote() if callable(remote) else None

    def _request_from_start(self, z: np.ndarray | None, n: int, options: SamplingOptions) -> Request:
        prev = np.repeat(self._start(options)[None], n, axis=0)
        return self._request(prev, z, None, options, options.max_len or self.info.max_seq_len)

    def _request(
        self, prev: np.ndarray, z: np.ndarray | None, state: np.ndarray | None, options: SamplingOptions, max_len: int,
        prefix: np.ndarray | None = None,
    ) -> Request:
        return Request(
            prev=prev, z=z, state=state, tau=options.tau, rule=options.temperature_rule or self.info.temperature_rule,
            greedy=options.greedy, max_len=max_len, keys=None if options.greedy else row_keys(_step_seed(options.seed), len(prev)),
            scale_factor=self.info.scale_factor, prefix=prefix,
        )  # fmt: skip

    # -- helpers --------------------------------------------------------------------------------

    def _start(self, options: SamplingOptions) -> np.ndarray:
        """S_0: the options' start token, else the model's."""
        return self.start_token if options.start_token is None else np.asarray(options.start_token, np.float32)

    def _check_remote_start(self, options: SamplingOptions) -> None:
        if options.start_token is not None and tuple(options.start_token) != tuple(self.info.start_token):
            raise SketchkitError("a served model samples from its model.json's start token: --start works in process only")

    def _need_encoder(self, what: str) -> None:
        if not self.info.dims.vae:
            raise ModelError(f"{self.info.name} is a decoder-only model: {what} needs a vae model (with an encoder)")

    def _check_z(self, z: np.ndarray | None) -> np.ndarray:
        arr = np.asarray(z, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != self.info.dims.z_size or len(arr) == 0:
            raise SketchkitError(f"z must have shape (n, {self.info.dims.z_size}), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise SketchkitError("z contains NaN or infinite values")
        return arr

    def _latents(self, items: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each item as a latent vector: 1-D arrays are latents already, 2-D ones are sketches
        to encode (to their mu)."""
        self._need_encoder("latent-space operations")
        arrays = [np.asarray(x) for x in items]
        if any(a.ndim not in (1, 2) for a in arrays):
            raise SketchkitError("expected stroke-3 sketches (n, 3) or latent vectors (Nz,)")
        to_encode = [i for i, a in enumerate(arrays) if a.ndim == 2]
        out = [self._check_z(a[None])[0] if a.ndim == 1 else None for a in arrays]
        if to_encode:
            mu, _ = self.encode([arrays[i] for i in to_encode])
            for i, m in zip(to_encode, mu, strict=True):
                out[i] = m
        return [np.asarray(o, np.float32) for o in out]


def _interpolation(method: str):
    try:
        return INTERPOLATIONS[method]
    except KeyError:
        raise SketchkitError(f"unknown interpolation {method!r} (choose lerp or slerp)") from None


def _rngs(seed: int | None) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams for z and for the steps: `generate(n, seed=s)` decodes exactly the
    z that it draws, as `decode(z, seed=s)` would."""
    z_seq, step_seq = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(z_seq), np.random.default_rng(step_seq)


def _step_seed(seed: int | None) -> int:
    """The seed of the steps' streams (`sketchkit.draw.row_keys`): the seed's second child, so it
    is independent of the z drawn from the first; fresh entropy when seed is None."""
    return int(np.random.SeedSequence(seed).spawn(2)[1].generate_state(1, np.uint64)[0])
