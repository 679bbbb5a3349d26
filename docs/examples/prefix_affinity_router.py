"""Prefix-affinity router: a worked example of a router loaded from a user file.

Models: cache-affinity routing with a load guard. Requests that share their first KV block
(``hash_ids[0]``, the block hash a Mooncake-style trace carries) go to one "home" replica,
so with prefix caching that replica finds the shared prefix computed; a request without
block hashes is keyed by its ``client`` (one conversation stays on one replica), and one
with neither goes to the least-outstanding replica. The home comes from a consistent-hash
ring on which each replica owns points in proportion to its weight: a replica twice as fast
owns about twice the keys, and a key's home does not depend on the request order.

This is the idea of vLLM production-stack's session router (a consistent-hash ring keyed
by the session id, src/vllm_router/routers/routing_logic.py ``SessionRouter``) and of the
SGLang router's ``cache_aware`` policy, which leaves cache affinity for the shortest queue
when the load is imbalanced: ``max - min > balance_abs_threshold`` and
``max > min * balance_rel_threshold`` (sgl-router/src/policies/cache_aware.rs). Here the
same two tests compare the home with the least-loaded replica, in outstanding requests per
unit of weight.

Use it from a cluster config (the path is relative to the config file's folder):

    cluster:
      router:
        name: docs/examples/prefix_affinity_router.py:PrefixAffinityRouter
        params: {balance_abs: 4, balance_rel: 1.5}

Ignores: what each replica's cache really holds (the home is where the prefix would be if
nothing were evicted), prefixes longer than the first block, and adding or removing
replicas during a run (the ring is built once).
"""
from __future__ import annotations

import hashlib
from bisect import bisect_right

from sim.cluster.routers import LeastOutstanding


def stable_hash(key) -> int:
    """A 64-bit hash that is the same in every process (``hash(str)`` is salted per run)."""
    return int.from_bytes(hashlib.blake2b(str(key).encode(), digest_size=8).digest(), "little")


class PrefixAffinityRouter:
    """Home replica by consistent hash of the prefix key; least outstanding when the home is
    much busier than the least-loaded replica."""

    def __init__(self, views, rng, balance_abs: float = 4.0, balance_rel: float = 1.5,
                 points_per_unit_weight: int = 64):
        if balance_abs < 0 or balance_rel < 1:
            raise ValueError("expected balance_abs >= 0 and balance_rel >= 1")
        if points_per_unit_weight < 1:
            raise ValueError("expected points_per_unit_weight >= 1")
        self.views = list(views)
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel
        self.fallback = LeastOutstanding(self.views, rng)
        # ring: replica i owns round(points * w_i / min_w) points, at least one
        min_w = min(v.weight for v in self.views)
        ring = sorted((stable_hash(f"replica-{i}-{p}"), i) for i, v in enumerate(self.views)
                      for p in range(max(1, round(points_per_unit_weight * v.weight / min_w))))
        self._points = [h for h, _ in ring]
        self._owner = [i for _, i in ring]

    def home(self, key) -> int:
        """The replica owning ``key``: the first ring point clockwise of its hash."""
        j = bisect_right(self._points, stable_hash(key))
        return self._owner[j if j < len(self._owner) else 0]

    def route(self, request, now: float) -> int:
        if request.hash_ids:
            key = f"block:{request.hash_ids[0]}"
        elif request.client is not None and request.client >= 0:
            key = f"client:{request.client}"
        else:
            return self.fallback.route(request, now)
        i = self.home(key)
        home, least = self.views[i], self.views[self.fallback.peek(now)]
        h = home.num_outstanding / home.weight
        m = least.num_outstanding / least.weight
        if h - m > self.balance_abs and h > m * self.balance_rel:
            return self.fallback.route(request, now)
        return i
