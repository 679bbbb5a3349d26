"""Named random streams spawned from one seed.

Models: every source of randomness in a run (arrival times, prompt lengths, output
lengths, trace sampling, ...) as its own numpy Generator. A stream's state depends only on
(seed, name), so adding a new stream shifts no existing one and results stay comparable.

Ignores: the global numpy/random state (never used), wall-clock entropy.
"""
from __future__ import annotations

import hashlib

import numpy as np


class RngStreams:
    """Factory of independent, reproducible generators keyed by name."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._cache: dict[str, np.random.Generator] = {}

    def stream(self, name: str) -> np.random.Generator:
        """The generator for ``name`` (the same object on every call within a run)."""
        gen = self._cache.get(name)
        if gen is None:
            digest = hashlib.sha256(name.encode()).digest()
            key = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
            gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, *key])))
            self._cache[name] = gen
        return gen
