"""Arrival processes (open loop) and the closed-loop client model.

Models: ``poisson`` (exponential inter-arrivals), ``constant`` (evenly spaced),
``gamma`` (Gamma inter-arrivals with a coefficient of variation ``cv``: cv > 1 is burstier
than Poisson, cv < 1 smoother, cv = 1 is Poisson), all at ``rate_per_s``; and
``closed_loop``: ``concurrency`` clients, each sending its next request the moment the
previous one finishes (no think time), which is what ``vllm bench serve --max-concurrency N``
does.

Ignores: diurnal rate changes (use a trace), per-client think time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.registry import Registry

arrivals: Registry = Registry("arrival process")


class OpenLoop:
    """Base of open-loop processes: inter-arrival gaps -> absolute times from 0."""

    closed = False
    rate_per_s: float

    def __post_init__(self):
        if not self.rate_per_s > 0:
            raise ValueError("rate_per_s must be > 0")

    def gaps(self, n: int, rng: np.random.Generator) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def times(self, rng: np.random.Generator, n: int | None = None, duration_s: float | None = None) -> np.ndarray:
        """Arrival times: the first ``n``, or all before ``duration_s`` (the first at 0)."""
        if n is not None:
            gaps = self.gaps(n, rng)
            t = np.cumsum(gaps) - gaps[0]
            return t if duration_s is None else t[t < duration_s]
        chunk = max(1024, int(self.rate_per_s * duration_s * 1.2) + 16)
        out, last = [], 0.0
        while True:
            g = self.gaps(chunk, rng)
            if not out:
                g[0] = 0.0
            t = last + np.cumsum(g)
            out.append(t[t < duration_s])
            if t[-1] >= duration_s:
                return np.concatenate(out)
            last = t[-1]


@arrivals.register("poisson")
@dataclass(frozen=True)
class Poisson(OpenLoop):
    """Poisson process: exponential gaps with mean 1/rate_per_s."""

    rate_per_s: float

    def gaps(self, n, rng):
        return rng.exponential(1.0 / self.rate_per_s, n)


@arrivals.register("constant")
@dataclass(frozen=True)
class Constant(OpenLoop):
    """Deterministic arrivals every 1/rate_per_s seconds."""

    rate_per_s: float

    def gaps(self, n, rng):
        return np.full(n, 1.0 / self.rate_per_s)


@arrivals.register("gamma")
@dataclass(frozen=True)
class Gamma(OpenLoop):
    """Gamma-renewal process: mean gap 1/rate_per_s, coefficient of variation ``cv``."""

    rate_per_s: float
    cv: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not self.cv > 0:
            raise ValueError("cv must be > 0")

    def gaps(self, n, rng):
        shape = 1.0 / (self.cv ** 2)
        return rng.gamma(shape, 1.0 / (self.rate_per_s * shape), n)


@arrivals.register("closed_loop")
@dataclass(frozen=True)
class ClosedLoop:
    """``concurrency`` clients, each with one request in flight, no think time."""

    concurrency: int
    closed = True

    def __post_init__(self):
        if not (isinstance(self.concurrency, int) and self.concurrency >= 1):
            raise ValueError("concurrency must be an integer >= 1")
