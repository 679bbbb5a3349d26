"""Token-length distributions for prompts and outputs.

Models: ``fixed`` (``value``), ``uniform`` (integers in [``low``, ``high``]), ``lognormal``
(``median`` and ``sigma`` of log-length, clipped to [``min``, ``max``]) and ``empirical``
(sampled with replacement from a ``column`` of a CSV ``path``). Every draw is an integer >= 1.

Ignores: correlation between prompt and output length (use a trace or empirical pairs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sim.config import ConfigError
from sim.registry import Registry

lengths: Registry = Registry("length distribution")


@lengths.register("fixed")
@dataclass(frozen=True)
class Fixed:
    value: int

    def __post_init__(self):
        if not (isinstance(self.value, int) and self.value >= 1):
            raise ValueError(f"value must be an integer >= 1, got {self.value!r}")

    def sample(self, n, rng):
        return np.full(n, self.value, dtype=np.int64)


@lengths.register("uniform")
@dataclass(frozen=True)
class Uniform:
    low: int
    high: int

    def __post_init__(self):
        if not (isinstance(self.low, int) and isinstance(self.high, int) and 1 <= self.low <= self.high):
            raise ValueError(f"need integers 1 <= low <= high, got low={self.low!r}, high={self.high!r}")

    def sample(self, n, rng):
        return rng.integers(self.low, self.high + 1, n, dtype=np.int64)


@lengths.register("lognormal")
@dataclass(frozen=True)
class LogNormal:
    median: float
    sigma: float
    min: int = 1
    max: int | None = None

    def __post_init__(self):
        if not self.median >= 1 or not self.sigma >= 0:
            raise ValueError("need median >= 1 and sigma >= 0")
        if self.max is not None and self.max < self.min:
            raise ValueError("need max >= min")

    def sample(self, n, rng):
        x = np.rint(rng.lognormal(np.log(self.median), self.sigma, n)).astype(np.int64)
        return np.clip(x, max(1, self.min), self.max if self.max is not None else None)


@lengths.register("empirical")
@dataclass(frozen=True)
class Empirical:
    """Draws with replacement from a CSV column (relative paths resolve from the config)."""

    path: str
    column: str
    base_dir: str = "."
    _values: np.ndarray = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        import pandas as pd

        p = Path(self.path)
        if not p.is_absolute():
            p = Path(self.base_dir) / p
        if not p.exists():
            raise ConfigError("path", f"no such file: {p}")
        try:
            df = pd.read_csv(p, usecols=[self.column])
        except ValueError:
            cols = list(pd.read_csv(p, nrows=0).columns)
            raise ConfigError("column", f"{p}: no column '{self.column}'; it has {cols}") from None
        v = pd.to_numeric(df[self.column], errors="coerce").to_numpy()
        bad = np.flatnonzero(~(v >= 1) | (np.floor(v) != v))
        if len(bad):
            raise ConfigError("column", f"{p}: line {bad[0] + 2}: '{self.column}' must be an integer >= 1, "
                                        f"got {df[self.column].iloc[bad[0]]!r}")
        object.__setattr__(self, "_values", v.astype(np.int64))

    def sample(self, n, rng):
        return rng.choice(self._values, n, replace=True)
