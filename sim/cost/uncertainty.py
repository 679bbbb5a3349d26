"""Prediction intervals of a step price, from the held-out residuals of a calibrated profile.

Models: the error of a step price as multiplicative factors, each drawn from an empirical
distribution of log(measured / predicted) that the calibration stored in the profile
(``calibration.uncertainty``, written by ``calibrate/fit_uncertainty.py``):

- op level, one factor per op kind: ``gemm`` scales ``StepTime.gemm_s``, ``attn_prefill`` and
  ``attn_decode`` the two parts of ``attn_s``, ``elementwise`` scales ``other_s``. The
  distribution is that of the fit's held-out ops of that kind and backend. One factor per kind
  per step, not one per launch: a step repeats the same few shape families in every layer, so
  its errors are correlated within a kind (all 32 down projections are off by the same
  ratio); kinds are drawn independently of each other.
- step level, one factor per step phase (decode, prefill, mixed) where the profile has it
  (``uncertainty.step``, fitted on the non-held-out whole steps of a truth run): what a
  microbenchmark does not see inside a real step (long prefill steps run power-capped at a
  lower clock, the KV-cache write and other unpriced ops). It scales the GPU part of the step
  (gemm + attention + other) and is independent of the op factors.

Host and communication seconds are not scaled: host time is an engine setting
(``engine.host_overhead_s``), not a kernel price, and no held-out residual of collectives
exists yet (the NCCL fit has none on these profiles), so neither has a distribution to draw
from. A step's attention is split into its prefill and decode parts by the caller (the engine
knows its shape: ``decode_attention_s`` prices the decode requests alone).

The distribution is stored as its quantiles at ``LEVELS`` (5 % to 95 %), its minimum and its
maximum; a draw maps a uniform u through the piecewise-linear quantile function (numpy's
default quantile interpolation between those points). Intervals come from Monte Carlo with
Latin-hypercube draws (one stratified uniform per factor) and a fixed seed: the same inputs
give the same interval.

Ignores: the dependence of an op's error on its shape (a residual is drawn from the kind's
whole held-out set), error correlation between kinds, and uncertainty of host and
communication. A profile without ``calibration.uncertainty`` (every uncalibrated profile)
gives no interval (None).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from sim.cost.base import BatchShape, StepTime
from sim.errors import ConfigError

LEVELS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95
KINDS = ("gemm", "attn_prefill", "attn_decode", "elementwise")
PHASES = ("decode", "prefill", "mixed")
SAMPLES = 4000
SECTION = "calibration.uncertainty"


@dataclass(frozen=True)
class Residuals:
    """An empirical distribution of log(measured / predicted): quantiles at ``LEVELS``, the
    smallest and largest value, the number of points and the standard deviation."""

    quantiles: tuple[float, ...]
    min: float
    max: float
    points: int = 0
    sd: float = 0.0

    @classmethod
    def from_samples(cls, log_ratios) -> "Residuals":
        """The distribution of ``log_ratios`` (at least 2 finite values)."""
        x = np.asarray(log_ratios, dtype=float)
        x = x[np.isfinite(x)]
        if len(x) < 2:
            raise ValueError(f"need at least 2 finite log ratios, got {len(x)}")
        q = np.quantile(x, LEVELS)
        return cls(tuple(float(v) for v in q), float(x.min()), float(x.max()), int(len(x)), float(np.std(x, ddof=1)))

    def ppf(self, u) -> np.ndarray:
        """The log ratio at probability ``u`` (array): linear between (0, min), the quantiles
        and (1, max)."""
        return np.interp(u, (0.0, *LEVELS, 1.0), (self.min, *self.quantiles, self.max))

    def to_dict(self, digits: int = 5) -> dict:
        """The profile's YAML form."""
        r = lambda v: round(float(v), digits)  # noqa: E731
        return {"points": int(self.points), "sd": r(self.sd), "min": r(self.min), "max": r(self.max),
                "quantiles": [r(v) for v in self.quantiles]}

    @classmethod
    def from_dict(cls, d: Any, key: str, src: str = "") -> "Residuals":
        """Parse the YAML form; a ConfigError names ``key`` and what was expected."""
        if not isinstance(d, Mapping):
            raise ConfigError(key, "expected a mapping with points, sd, min, max, quantiles", src)
        q = d.get("quantiles")
        if not isinstance(q, (list, tuple)) or len(q) != len(LEVELS) or \
                not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in q):
            raise ConfigError(f"{key}.quantiles", f"expected {len(LEVELS)} numbers (log ratios at {LEVELS[0]} .. "
                                                  f"{LEVELS[-1]})", src)
        lo, hi = d.get("min", q[0]), d.get("max", q[-1])
        xs = [lo, *q, hi]
        finite = all(isinstance(v, (int, float)) and np.isfinite(v) for v in xs)
        if not finite or any(b < a for a, b in zip(xs, xs[1:])):
            raise ConfigError(key, "expected min <= quantiles (non-decreasing) <= max, all finite", src)
        return cls(tuple(float(v) for v in q), float(lo), float(hi), int(d.get("points", 0) or 0),
                   float(d.get("sd", 0.0) or 0.0))


@dataclass(frozen=True)
class Uncertainty:
    """One backend's op residuals by kind, and the step-level residuals by phase (may be empty)."""

    ops: Mapping[str, Residuals]
    step: Mapping[str, Residuals] = field(default_factory=dict)


@dataclass(frozen=True)
class CostFactors:
    """Multipliers of one cost-noise replicate: per op kind, and the step-level one per phase."""

    gemm: float = 1.0
    attn_prefill: float = 1.0
    attn_decode: float = 1.0
    elementwise: float = 1.0
    step_decode: float = 1.0
    step_prefill: float = 1.0
    step_mixed: float = 1.0

    def step(self, phase: str) -> float:
        return getattr(self, f"step_{phase}")


def parse_uncertainty(section: Any, backend: str, src: str = "") -> Uncertainty | None:
    """The ``calibration.uncertainty`` mapping's entry for ``backend`` (None if it has none)."""
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise ConfigError(SECTION, "expected a mapping (ops, step)", src)
    levels = section.get("levels")
    if levels is not None and tuple(round(float(v), 4) for v in levels) != LEVELS:
        raise ConfigError(f"{SECTION}.levels", f"expected {list(LEVELS)}", src)
    ops_all = section.get("ops") or {}
    if not isinstance(ops_all, Mapping):
        raise ConfigError(f"{SECTION}.ops", "expected a mapping backend -> op kind -> residuals", src)
    ops_be = ops_all.get(backend)
    if not ops_be:
        return None
    ops = {}
    for kind, d in ops_be.items():
        if kind not in KINDS:
            raise ConfigError(f"{SECTION}.ops.{backend}.{kind}", f"unknown op kind; expected one of {list(KINDS)}", src)
        ops[kind] = Residuals.from_dict(d, f"{SECTION}.ops.{backend}.{kind}", src)
    step_sec = section.get("step") or {}
    step = {ph: Residuals.from_dict(step_sec[ph], f"{SECTION}.step.{ph}", src) for ph in PHASES if ph in step_sec}
    return Uncertainty(ops, step)


def profile_uncertainty(hw, backend: str | None = None) -> Uncertainty | None:
    """The uncertainty of ``hw``'s prices on ``backend`` (default: the profile's), or None when
    the profile has no ``calibration.uncertainty`` for it (uncalibrated profiles)."""
    cal = getattr(hw, "calibration", None) or {}
    return parse_uncertainty(cal.get("uncertainty"), backend or hw.default_backend, getattr(hw, "path", ""))


def step_phase(shape: BatchShape) -> str:
    """'prefill' (chunks only), 'decode' (decode requests only; also an empty step) or 'mixed'."""
    if shape.prefill_chunks:
        return "mixed" if shape.num_decode else "prefill"
    return "decode"


def decode_attention_s(cost, shape: BatchShape) -> float:
    """Seconds of ``shape``'s decode attention, as ``cost`` prices it eagerly: the attention
    of a step of its decode requests alone (0.0 without decode requests)."""
    if not shape.num_decode:
        return 0.0
    return cost.step_time(BatchShape([], shape.num_decode, shape.decode_context_sum, 0,
                                     shape.decode_context_max)).attn_s


def _uniforms(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """k x n Latin-hypercube uniforms: each row one stratified draw per 1/n slice, shuffled."""
    return (np.stack([rng.permutation(n) for _ in range(k)]) + rng.random((k, n))) / n


def step_samples(unc: Uncertainty, step: StepTime, phase: str, attn_decode_s: float | None = None,
                 samples: int = SAMPLES, seed: int = 0, use_step: bool = True) -> np.ndarray:
    """``samples`` draws of the step's total seconds. ``attn_decode_s``: the decode part of
    ``step.attn_s`` (default: all of it for a decode step, none for a prefill step; a mixed
    step needs it); ``use_step``: include the step-level term (if the profile has one)."""
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r}: expected one of {PHASES}")
    if attn_decode_s is None:
        if phase == "mixed":
            raise ValueError("a mixed step needs attn_decode_s (its decode attention seconds)")
        attn_decode_s = step.attn_s if phase == "decode" else 0.0
    ad = min(max(float(attn_decode_s), 0.0), step.attn_s)
    parts = {"gemm": step.gemm_s, "attn_prefill": step.attn_s - ad, "attn_decode": ad, "elementwise": step.other_s}
    rng = np.random.default_rng(seed)
    u = _uniforms(rng, len(KINDS) + 1, samples)
    gpu = np.zeros(samples)
    for i, kind in enumerate(KINDS):
        r = unc.ops.get(kind)
        gpu += parts[kind] * (np.exp(r.ppf(u[i])) if r is not None else 1.0)
    s = unc.step.get(phase) if use_step else None
    if s is not None:
        gpu *= np.exp(s.ppf(u[-1]))
    return gpu + step.comm_s + step.host_s


def step_quantiles(unc: Uncertainty, step: StepTime, phase: str, attn_decode_s: float | None = None,
                   levels=(0.1, 0.9), samples: int = SAMPLES, seed: int = 0, use_step: bool = True) -> tuple:
    """The step time's quantiles at ``levels`` (default the 80 % interval: p10, p90)."""
    x = step_samples(unc, step, phase, attn_decode_s, samples, seed, use_step)
    return tuple(float(v) for v in np.quantile(x, levels))


def step_interval(hw, step: StepTime, shape: BatchShape, cost=None, backend: str | None = None,
                  levels=(0.1, 0.9), samples: int = SAMPLES, seed: int = 0) -> tuple | None:
    """The interval of ``step`` (the price of ``shape`` on ``hw``) at ``levels``, or None if
    the profile has no uncertainty section. ``cost``: the eager cost model that priced it,
    needed to split a mixed step's attention (``decode_attention_s``)."""
    unc = profile_uncertainty(hw, backend)
    if unc is None:
        return None
    phase = step_phase(shape)
    ad = None
    if phase == "mixed":
        if cost is None:
            raise ValueError("a mixed step's interval needs the cost model to split its attention")
        ad = decode_attention_s(cost, shape)
    return step_quantiles(unc, step, phase, ad, levels, samples, seed)


def draw_factors(unc: Uncertainty, rng: np.random.Generator) -> CostFactors:
    """One replicate's factors: one uniform per op kind (in ``KINDS`` order) and per phase (in
    ``PHASES`` order), always all seven drawn so a missing kind shifts no other draw; a kind or
    phase the profile lacks gets 1.0."""
    u = rng.random(len(KINDS) + len(PHASES))
    out = {}
    for i, kind in enumerate(KINDS):
        r = unc.ops.get(kind)
        out[kind] = float(np.exp(r.ppf(u[i]))) if r is not None else 1.0
    for j, ph in enumerate(PHASES):
        r = unc.step.get(ph)
        out[f"step_{ph}"] = float(np.exp(r.ppf(u[len(KINDS) + j]))) if r is not None else 1.0
    return CostFactors(**out)
