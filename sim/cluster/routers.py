"""Routers: which replica of a pool serves an arriving request.

Models: the request-level load balancers that sit in front of LLM engines, each one
registered class, weighted by replica capacity (``ReplicaView.weight``) so that a pool of
mixed GPUs, tensor-parallel sizes or engines is shared in proportion to what each replica
can serve:

- ``round_robin``: cyclic order; equal weights give exactly 0, 1, ..., n-1, 0, 1, ...
  (vLLM production-stack ``--routing-logic roundrobin``, SGLang router ``round_robin``,
  Kubernetes IPVS ``rr``); unequal weights give a smooth weighted order, earliest deadline
  first as in Envoy's weighted round robin;
- ``random``: probability proportional to weight (SGLang router ``random``, kube-proxy
  iptables mode);
- ``least_outstanding``: fewest unfinished requests per unit of weight, ties to the replica
  chosen least recently (Envoy ``LEAST_REQUEST`` with full scan, SGLang ``shortest_queue``,
  IPVS ``lc``);
- ``least_kv``: lowest KV-cache use fraction (llm-d / Gateway API inference extension
  ``kv-cache-utilization-scorer`` used alone);
- ``least_tokens``: fewest queued plus running tokens per unit of weight (SGLang data-parallel
  ``--load-balance-method minimum_tokens``);
- ``power_of_two``: two distinct replicas drawn by weight, the one with fewer outstanding
  requests per weight wins, ties to the first drawn (SGLang router ``power_of_two``, Envoy
  ``LEAST_REQUEST`` with ``choice_count: 2``).

Sources, and what each system does differently, are in docs/routers.md.

What a router may read: the views (sim.cluster.views) and, of the request, ``id``,
``arrival_s``, ``prompt_tokens``, ``priority``, ``hash_ids`` and ``client``; never
``output_tokens`` (a real router cannot know it). A router never writes to a view, except
its two hooks: ``listener`` (chained if another router already listens) and ``track_steps``.
All randomness comes from the ``rng`` it is built with (the run's ``router`` stream), so the
same seed gives the same routes. Weights are read once, when the router is built.

Fast paths: round robin and power-of-two with equal weights use a counter and uniform draws;
the least-* routers keep a heap of lower bounds refreshed only for replicas that signalled a
change, so a pick is O(log n) amortized, not a scan (proof at ``LazyMinRouter``).

Ignores: stale or sampled metrics (views are exact), routing latency, retries and health
checks, prefix-cache contents (see docs/examples/prefix_affinity_router.py for a user router
that routes by prefix).
"""
from __future__ import annotations

import hashlib
import heapq
import importlib.util
import inspect
import math
import sys
from bisect import bisect_right
from itertools import accumulate
from pathlib import Path
from typing import Any, Mapping

from sim.config import ConfigError
from sim.registry import Registry

routers: Registry = Registry("router")


def _weights(views) -> list[float]:
    if not views:
        raise ValueError("a router needs at least one replica")
    w = [float(v.weight) for v in views]
    for i, x in enumerate(w):
        if not (x > 0 and math.isfinite(x)):
            raise ValueError(f"replica {i} has weight {x}; expected a finite weight > 0")
    return w


def add_listener(view, fn) -> None:
    """Set ``view.listener`` to ``fn``, after any listener already set."""
    prev = view.listener
    if prev is None:
        view.listener = fn
    else:
        def both(v, a=prev, b=fn):
            a(v)
            b(v)
        view.listener = both


def _pick(cum: list[float], x: float) -> int:
    """The index whose cumulative-weight interval holds ``x`` (clamped for rounding)."""
    j = bisect_right(cum, x)
    return j if j < len(cum) else len(cum) - 1


@routers.register("round_robin")
class RoundRobin:
    """Cyclic order; with unequal weights, earliest deadline first on ``(picks + 1/2) / weight``.

    Replica i's k-th pick (k = 0, 1, ...) has deadline (k + 1/2) / w_i, computed by one
    division so that equal rationals tie exactly; the smallest deadline goes next, ties to
    the lower index. Equal weights therefore give 0, 1, ..., n-1, 0, 1, ... (served by a
    counter). This is Envoy's EDF weighted round robin (deadline 1 / w after the last) offset
    by half a period, i.e. the Sainte-Lague divisor sequence; the offset interleaves like
    nginx's smooth weighted round robin (weights 5, 1, 1 give a a a b c a a; nginx gives
    a a b a c a a) at O(log n) per pick instead of nginx's O(n).

    Proportionality: picked deadlines never decrease, so after a pick of deadline T every
    replica has (k_i - 1/2) / w_i <= T <= (k_i + 1/2) / w_i (k_i its picks so far), i.e.
    |k_i - T w_i| <= 1/2. Over any window whose deadlines span dT, replica i gets
    dT w_i +- 1 picks, and its count in a window of L picks is within 1 + (n - 2) w_i / W of
    L w_i / W (W the total weight).
    """

    def __init__(self, views, rng=None):
        w = _weights(views)
        self._n = len(w)
        self._equal = all(x == w[0] for x in w)
        self._next = 0
        self._w = w
        self._picks = [0] * self._n
        self._heap = [(0.5 / x, i) for i, x in enumerate(w)]
        heapq.heapify(self._heap)

    def route(self, request, now: float) -> int:
        if self._equal:
            i = self._next
            self._next = i + 1 if i + 1 < self._n else 0
            return i
        i = self._heap[0][1]
        k = self._picks[i] = self._picks[i] + 1
        heapq.heapreplace(self._heap, ((k + 0.5) / self._w[i], i))
        return i


@routers.register("random")
class Random:
    """Replica i with probability w_i / W: one uniform draw, bisected in cumulative weights."""

    def __init__(self, views, rng):
        self._cum = list(accumulate(_weights(views)))
        self._total = self._cum[-1]
        self._rng = rng

    def route(self, request, now: float) -> int:
        return _pick(self._cum, self._rng.random() * self._total)


@routers.register("power_of_two")
class PowerOfTwo:
    """Two distinct replicas drawn by weight; fewer outstanding per weight wins (ties: first).

    The first is drawn with probability w_i / W, the second with w_j / (W - w_first)
    (the first's interval is cut out of the cumulative weights, so no rejection loop). With
    equal weights both draws are uniform. One replica: always 0, no draw.
    """

    def __init__(self, views, rng):
        self._views = list(views)
        w = _weights(self._views)
        self._w = w
        self._cum = list(accumulate(w))
        self._n = len(w)
        self._equal = all(x == w[0] for x in w)
        self._rng = rng

    def draw(self) -> tuple[int, int]:
        """The two replicas of the next pick (consumes the same draws as ``route``)."""
        rnd, n = self._rng.random, self._n
        if self._equal:
            a = min(int(rnd() * n), n - 1)
            b = min(int(rnd() * (n - 1)), n - 2)
            return a, b + (b >= a)
        cum, w = self._cum, self._w
        a = _pick(cum, rnd() * cum[-1])
        start = cum[a - 1] if a else 0.0
        u = rnd() * (cum[-1] - w[a])
        b = _pick(cum, u if u < start else u + w[a])
        if b == a:      # only by rounding at an interval's edge
            b = a + 1 if a + 1 < n else a - 1
        return a, b

    def route(self, request, now: float) -> int:
        if self._n == 1:
            return 0
        a, b = self.draw()
        va, vb = self._views[a], self._views[b]
        return a if va.num_outstanding / va.weight <= vb.num_outstanding / vb.weight else b


class LazyMinRouter:
    """Argmin of ``key(view, now)``, ties to the replica chosen least recently, in O(log n).

    A subclass defines ``key``; it must be a value that can only rise between two listener
    calls of the view (every ``ReplicaView`` value is), and sets ``track_steps = True`` if
    it reads KV use or tokens.

    The heap holds one valid entry per replica, ``(bound, last, i, version)``: ``bound`` is
    the key when last seen and ``last`` the sequence number of the replica's last pick
    (initially i - n, so the first ties go 0, 1, 2, ...). A listener call only marks the
    replica dirty (O(1)); the next pick recomputes the dirty replicas' keys at ``now`` and
    pushes a new entry (bumping the version, which invalidates the old one) when the key
    fell below the bound. Between listener calls keys only rise, so every bound is a lower
    bound of its key at any later pick.

    A pick pops the top entry (i, bound_i, last_i), computes key_i exactly at ``now``, and
    compares (key_i, last_i) with the next valid entry (bound_j, last_j). If it is <=, i is
    the exact argmin: for every other replica k, (bound_j, last_j) <= (bound_k, last_k)
    (heap order) and bound_k <= key_k (lower bound), so (key_i, last_i) <= (key_k, last_k);
    the ``last`` values are distinct, so the order is total and the argmin unique. Otherwise
    i is pushed back with its exact key (its bound rises) and the pick repeats; each repeat
    raises a bound to an exact value, so a pick ends within n repeats and costs O(log n) per
    bound it had to refresh. Stale entries are dropped when seen and the heap is rebuilt
    when it reaches twice the replicas, so its size stays O(n).
    """

    track_steps = False

    def __init__(self, views, rng=None):
        self._views = list(views)
        n = len(_weights(self._views))
        self._last = [i - n for i in range(n)]
        self._bound = [math.inf] * n
        self._ver = [0] * n
        self._heap: list[tuple] = []
        self._dirty = list(range(n))
        self._is_dirty = [True] * n
        self._seq = 0
        self._compact_at = 2 * n + 16
        for i, v in enumerate(self._views):
            if self.track_steps:
                v.track_steps = True
            add_listener(v, lambda _view, i=i: self._mark(i))

    def key(self, view, now: float) -> float:
        raise NotImplementedError

    def _mark(self, i: int) -> None:
        if not self._is_dirty[i]:
            self._is_dirty[i] = True
            self._dirty.append(i)

    def _push(self, i: int, k: float, last: int) -> None:
        v = self._ver[i] = self._ver[i] + 1
        self._bound[i] = k
        self._last[i] = last
        heapq.heappush(self._heap, (k, last, i, v))

    def _argmin(self, now: float) -> tuple[int, float]:
        """The argmin and its exact key; its heap entry is left popped for the caller."""
        views, bound, key = self._views, self._bound, self.key
        if self._dirty:
            for i in self._dirty:
                self._is_dirty[i] = False
                k = key(views[i], now)
                if k < bound[i]:
                    self._push(i, k, self._last[i])
            self._dirty = []
        if len(self._heap) > self._compact_at:
            self._heap = [(bound[i], self._last[i], i, self._ver[i]) for i in range(len(views))]
            heapq.heapify(self._heap)
        heap, ver, pop = self._heap, self._ver, heapq.heappop
        while True:
            k0, last, i, v = pop(heap)
            if v != ver[i]:
                continue
            k = key(views[i], now)
            while heap and heap[0][3] != ver[heap[0][2]]:
                pop(heap)
            if not heap:
                return i, k
            nk, nlast = heap[0][0], heap[0][1]
            if k < nk or (k == nk and last <= nlast):
                return i, k
            self._push(i, k, last)

    def peek(self, now: float) -> int:
        """The replica ``route`` would choose at ``now``, without recording a pick."""
        i, k = self._argmin(now)
        self._push(i, k, self._last[i])
        return i

    def route(self, request, now: float) -> int:
        i, k = self._argmin(now)
        self._seq += 1
        self._push(i, k, self._seq)
        return i


@routers.register("least_outstanding")
class LeastOutstanding(LazyMinRouter):
    """Fewest unfinished requests (queued + running) per unit of weight."""

    def key(self, view, now: float) -> float:
        return view.num_outstanding / view.weight


@routers.register("least_kv")
class LeastKV(LazyMinRouter):
    """Lowest KV-cache use fraction at ``now`` (a fraction of the replica's own cache, so it
    is already per unit of capacity and is not divided by the weight)."""

    track_steps = True

    def key(self, view, now: float) -> float:
        return view.kv_used_frac(now)


@routers.register("least_tokens")
class LeastTokens(LazyMinRouter):
    """Fewest queued plus running tokens (``ReplicaView.tokens``) per unit of weight."""

    track_steps = True

    def key(self, view, now: float) -> float:
        return view.tokens(now) / view.weight


# -- building, including routers loaded from a user file ------------------------------------

def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _load_module(path: Path, key: str):
    """Execute ``path`` as a fresh module (its own globals; nothing left in sys.modules)."""
    name = "_servesim_router_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{key}.name", f"cannot load router file '{path}' as Python")
    module = importlib.util.module_from_spec(spec)
    prev = sys.modules.get(name)
    sys.modules[name] = module      # present while it runs (dataclasses, typing look it up)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(f"{key}.name", f"cannot load router file '{path}': "
                                         f"{type(e).__name__}: {_one_line(e)}") from None
    finally:
        if prev is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = prev
    return module


def router_class(name: str, base_dir: str | Path = ".", key: str = "cluster.router") -> type:
    """The router class ``name`` names: a registered name, or ``path/to/file.py:ClassName``
    (path relative to ``base_dir``, the config file's folder). Raises a one-line ConfigError
    naming ``{key}.name`` and the file."""
    if ":" not in name:
        if name not in routers.names():
            raise ConfigError(f"{key}.name", f"unknown router '{name}'; expected one of "
                                             f"{routers.names()} or 'path/to/file.py:ClassName'")
        return routers.get(name, f"{key}.name")
    file, _, cls_name = name.rpartition(":")
    if not file.endswith(".py") or not cls_name.isidentifier():
        raise ConfigError(f"{key}.name", f"'{name}' is not a router; expected a registered name "
                                         f"or 'path/to/file.py:ClassName'")
    path = Path(file)
    if not path.is_absolute():
        path = Path(base_dir) / path
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"{key}.name", f"router file '{file}' not found (looked for {path})")
    module = _load_module(path, key)
    obj = getattr(module, cls_name, None)
    if obj is None:
        found = sorted(k for k, v in vars(module).items()
                       if inspect.isclass(v) and callable(getattr(v, "route", None)))
        raise ConfigError(f"{key}.name", f"router file '{path}' defines no '{cls_name}'; "
                                         f"router classes there: {found}")
    if not (inspect.isclass(obj) and callable(getattr(obj, "route", None))):
        raise ConfigError(f"{key}.name", f"'{cls_name}' in '{path}' is not a class with a "
                                         f"route(request, now) method")
    return obj


def build_router(name: str, params: Mapping[str, Any] | None, views, rng, base_dir: str | Path = ".",
                 key: str = "cluster.router"):
    """Build the router ``name`` (registered, or ``file.py:Class`` loaded from ``base_dir``)
    on ``views`` with the run's router ``rng``; ``params`` are checked against the class's
    signature exactly as a registered policy's are (Registry.build)."""
    cls = router_class(name, base_dir, key)
    if ":" not in name:
        return routers.build(name, params, key=key, views=views, rng=rng)
    # a throwaway registry gives user classes the same parameter checks without touching
    # the global one (a file loaded by two runs registers nothing twice)
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}.name", f"cannot read the signature of '{name}': {_one_line(e)}") from None

    def make(**kw):
        return cls(**kw)

    make.__signature__ = sig  # type: ignore[attr-defined]
    local: Registry = Registry("router")
    local.register(name)(make)
    return local.build(name, params, key=key, views=views, rng=rng)
