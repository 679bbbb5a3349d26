"""What a router may see of a replica: a read-only view the replica keeps up to date.

Models: the load signals real routers read from their engines (vLLM's production-stack
router and SGLang's router scrape or are pushed per-engine counters): unfinished requests,
KV-cache use, and queued plus running tokens (SGLang's ``get_load``: KV tokens in use plus
the prompt tokens of the waiting queue). A view is exact at the time it is read, whether
the replica stepped or fast-forwarded to that time: during a fast-forwarded decode run the
view holds the run's step starts and the blocks in use after each step's allocation, and
answers for the last step that started before the query time (a step that starts exactly
then has not happened yet, as for an arrival at that time).

Values that a router indexes (to route in O(log n), not by a scan) can only *rise* between
two calls of ``listener``: the replica calls it whenever one may have fallen (a request
finished, was admitted or preempted, a step ended) or changed by an event (a submit). KV use
grows inside a decode run without a call; a lazy index that stores lower bounds and
re-checks the exact value at the top stays exact (sim.cluster.routers).

Ignores: staleness of real metrics scrapes (views are exact), network delay to the router.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Callable


class ReplicaView:
    """One replica as routers see it. Attributes are read-only for routers.

    index: the replica's global index (requests frame ``replica`` column)
    pool: its pool's name; pool_index: the pool's position in the config
    weight: relative capacity (a router weighted by capacity gives it ``weight`` times the
        share of a weight-1 replica); set by the cluster from the replicas' decode throughput
    num_outstanding: requests routed to it and not yet finished (queued + running)
    queued_tokens: prompt tokens of requests routed to it and never yet scheduled
    kv_blocks_total, block_size_tokens: its KV cache
    """

    __slots__ = ("index", "pool", "pool_index", "weight", "num_outstanding", "queued_tokens",
                 "kv_blocks_total", "block_size_tokens", "listener", "track_steps",
                 "_starts", "_used", "_base_used")

    def __init__(self, index: int, pool: str, pool_index: int, kv_blocks_total: int,
                 block_size_tokens: int, weight: float = 1.0):
        self.index = index
        self.pool = pool
        self.pool_index = pool_index
        self.weight = weight
        self.num_outstanding = 0
        self.queued_tokens = 0
        self.kv_blocks_total = kv_blocks_total
        self.block_size_tokens = block_size_tokens
        # called with the view after any change that may lower an indexed value (None: nobody
        # listens); track_steps: the router reads KV use, so steps must publish it
        self.listener: Callable[["ReplicaView"], None] | None = None
        self.track_steps = False
        self._starts: tuple | list = ()
        self._used: tuple | list = ()
        self._base_used = 0

    # -- what routers read ---------------------------------------------------------------
    def kv_used_blocks(self, now: float) -> int:
        """KV blocks in use at ``now`` (after the allocation of the last step that started
        strictly before ``now``)."""
        i = bisect_left(self._starts, now)
        return self._used[i - 1] if i else self._base_used

    def kv_used_frac(self, now: float) -> float:
        return self.kv_used_blocks(now) / self.kv_blocks_total

    def tokens(self, now: float) -> int:
        """Queued plus running tokens: KV tokens in use (whole blocks) plus the prompt tokens
        of requests not yet scheduled."""
        return self.kv_used_blocks(now) * self.block_size_tokens + self.queued_tokens

    # -- what the replica calls ------------------------------------------------------------
    def publish(self, base_used: int, starts, used) -> None:
        """The replica's KV trajectory from now on: ``base_used`` blocks before the first of
        ``starts`` (step start times, increasing), ``used[j]`` after step j's allocation."""
        self._base_used = base_used
        self._starts = starts
        self._used = used

    def changed(self) -> None:
        if self.listener is not None:
            self.listener(self)

    def __repr__(self) -> str:
        return (f"ReplicaView(index={self.index}, pool={self.pool!r}, weight={self.weight:.3g}, "
                f"outstanding={self.num_outstanding}, queued_tokens={self.queued_tokens})")
