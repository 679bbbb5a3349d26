"""Routers (sim/cluster/routers.py) on hand-driven replica views: exact orders, proportions
under a seed, the lazy heaps against a brute-force scan on random monotone trajectories,
and routers loaded from user files (docs/examples/prefix_affinity_router.py and each
error case)."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from sim.cluster.routers import LazyMinRouter, build_router, router_class, routers
from sim.cluster.views import ReplicaView
from sim.config import ConfigError
from sim.rng import RngStreams
from tests.conftest import ROOT

EXAMPLE = "docs/examples/prefix_affinity_router.py:PrefixAffinityRouter"


class Req:
    """What a router may read of a request (no output_tokens: reading it would fail)."""

    __slots__ = ("id", "arrival_s", "prompt_tokens", "priority", "hash_ids", "client")

    def __init__(self, rid=0, prompt_tokens=100, hash_ids=None, client=-1, arrival_s=0.0):
        self.id, self.arrival_s, self.prompt_tokens = rid, arrival_s, prompt_tokens
        self.priority, self.hash_ids, self.client = 0, hash_ids, client


def make_views(weights, kv_blocks=64, block=16):
    return [ReplicaView(i, "pool", 0, kv_blocks, block, weight=w) for i, w in enumerate(weights)]


def build(name, weights, seed=0, **params):
    views = make_views(weights)
    return build_router(name, params, views, RngStreams(seed).stream("router"), base_dir=ROOT), views


def picks(router, k, now=0.0):
    return [router.route(Req(j), now) for j in range(k)]


# -- round robin --------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_round_robin_equal_weights_is_exactly_cyclic(n):
    r, views = build("round_robin", [2.5] * n)
    assert picks(r, 4 * n) == list(range(n)) * 4
    assert all(v.listener is None and not v.track_steps for v in views)  # costs the replicas nothing


def test_round_robin_weights_1_3_give_1_to_3_in_every_window_of_4():
    r, _ = build("round_robin", [1.0, 3.0])
    seq = picks(r, 400)
    assert seq[:8] == [1, 0, 1, 1, 1, 0, 1, 1]
    assert all(seq[a:a + 4].count(0) == 1 for a in range(len(seq) - 3))


def test_round_robin_smooth_order_for_5_1_1():
    # deadlines (k + 1/2)/w: replica 0 at 0.1, 0.3, 0.5, 0.7, 0.9, replicas 1 and 2 at 0.5;
    # the tie at 0.5 goes by index
    r, _ = build("round_robin", [5.0, 1.0, 1.0])
    assert picks(r, 14) == [0, 0, 0, 1, 2, 0, 0] * 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.1, 10.0), min_size=1, max_size=6))
def test_round_robin_share_of_every_window_is_proportional(weights):
    r, _ = build("round_robin", weights)
    n, total, m = len(weights), sum(weights), 240
    seq = np.array(picks(r, m))
    counts = np.zeros((m + 1, n))
    counts[1:] = np.cumsum(np.eye(n)[seq], axis=0)
    length = np.arange(m + 1)
    for i, w in enumerate(weights):
        got = counts[None, :, i] - counts[:, None, i]       # picks of i in window (a, b]
        want = (length[None, :] - length[:, None]) * w / total
        upper = np.triu(np.ones((m + 1, m + 1), bool), 1)
        assert np.abs(got - want)[upper].max() <= 1 + (n - 2) * w / total + 1e-6


# -- random ---------------------------------------------------------------------------------

def test_random_is_reproducible_and_proportional_to_weights():
    weights = [1.0, 2.0, 3.0, 4.0]
    a, _ = build("random", weights, seed=11)
    b, _ = build("random", weights, seed=11)
    sa, sb = picks(a, 20000), picks(b, 20000)
    assert sa == sb
    c, _ = build("random", weights, seed=12)
    assert picks(c, 50) != sa[:50]
    counts = np.bincount(sa, minlength=4)
    expected = 20000 * np.array(weights) / sum(weights)
    assert stats.chisquare(counts, expected).pvalue > 1e-6


# -- least outstanding ----------------------------------------------------------------------

def test_least_outstanding_rotates_among_ties():
    r, views = build("least_outstanding", [1.0] * 4)
    assert picks(r, 8) == [0, 1, 2, 3] * 2                  # nothing ever outstanding: all tie
    views[2].num_outstanding = 5
    assert picks(r, 6) == [0, 1, 3] * 2                      # idle replicas in turn, busy one skipped


def test_least_outstanding_weights_capacity():
    r, views = build("least_outstanding", [1.0, 4.0])
    seq = []
    for _ in range(10):
        i = r.route(Req(), 0.0)
        views[i].num_outstanding += 1                        # the cluster's increment, no call
        seq.append(i)
    assert seq.count(1) == 8 and seq.count(0) == 2           # 2/1 == 8/4 at the end


# -- the lazy heaps vs a brute-force scan ---------------------------------------------------

class LeastQueued(LazyMinRouter):
    """A user-defined argmin router: only ``key`` is written."""

    def key(self, view, now):
        return view.queued_tokens / view.weight


KEYS = {
    "least_queued": lambda v, now: v.queued_tokens / v.weight,
    "least_outstanding": lambda v, now: v.num_outstanding / v.weight,
    "least_kv": lambda v, now: v.kv_used_frac(now),
    "least_tokens": lambda v, now: v.tokens(now) / v.weight,
}

ops = st.lists(st.one_of(
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.25, 0.5, 1.0])),
    st.tuples(st.just("route"), st.integers(0, 300)),
    st.tuples(st.just("kv"), st.integers(0, 7), st.booleans(), st.integers(0, 20),
              st.lists(st.integers(0, 4), min_size=0, max_size=8), st.sampled_from([0.0, 0.25])),
    st.tuples(st.just("queue"), st.integers(0, 7), st.integers(-300, 300)),
    st.tuples(st.just("outstanding"), st.integers(0, 7), st.integers(-3, 3)),
    st.tuples(st.just("spurious"), st.integers(0, 7)),
), min_size=1, max_size=120)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(KEYS)), st.lists(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0]), min_size=1, max_size=8),
       ops)
def test_lazy_routers_pick_the_exact_argmin(name, weights, script):
    if name == "least_queued":
        views = make_views(weights)
        r = LeastQueued(views)
    else:
        r, views = build(name, weights)
    key, n = KEYS[name], len(views)
    assert all(v.track_steps == (name in ("least_kv", "least_tokens")) for v in views)
    last = [i - n for i in range(n)]                         # ties: least recently chosen
    now, seq = 0.0, 0
    for op in script:
        kind = op[0]
        if kind == "advance":
            now += op[1]
        elif kind == "route":
            want = min(range(n), key=lambda i: (key(views[i], now), last[i]))
            if seq % 3 == 0:
                assert r.peek(now) == want                   # peek records nothing
            got = r.route(Req(seq, prompt_tokens=op[1]), now)
            assert got == want
            seq += 1
            last[got] = seq
            views[got].num_outstanding += 1                  # the cluster's increments: rises, no call
            views[got].queued_tokens += op[1]
        elif kind == "kv":                                   # a new trajectory from now on
            _, i, fall, delta, steps, first = op
            v = views[i % n]
            cur = v.kv_used_blocks(now)
            base = max(0, cur - delta - 1) if fall else cur + delta
            starts = [now + first + 0.25 * j for j in range(len(steps))]
            v.publish(base, starts, [base + int(x) for x in np.cumsum(steps)] if steps else [])
            if base < cur:
                v.changed()
        elif kind == "queue":
            v = views[op[1] % n]
            new = max(0, v.queued_tokens + op[2])
            fell, v.queued_tokens = new < v.queued_tokens, new
            if fell:
                v.changed()
        elif kind == "outstanding":
            v = views[op[1] % n]
            new = max(0, v.num_outstanding + op[2])
            fell, v.num_outstanding = new < v.num_outstanding, new
            if fell:
                v.changed()
        else:
            views[op[1] % n].changed()                       # a call with nothing fallen is harmless


def test_lazy_heap_stays_bounded():
    r, views = build("least_kv", [1.0] * 5)
    for t in range(2000):
        v = views[t % 5]
        v.publish(t % 7, [t + 0.5], [t % 7 + 1])
        v.changed()
        r.route(Req(t), float(t))
        assert len(r._heap) <= 3 * 5 + 17                    # rebuilt past 2n + 16 entries


def test_two_routers_on_the_same_views_both_listen():
    views = make_views([1.0, 1.0])
    rng = RngStreams(0).stream("router")
    a = build_router("least_outstanding", {}, views, rng)
    b = build_router("least_tokens", {}, views, rng)
    views[0].num_outstanding = views[0].queued_tokens = 9
    assert a.route(Req(), 0.0) == 1 and b.route(Req(), 0.0) == 1
    views[0].num_outstanding = views[0].queued_tokens = 0
    views[0].changed()
    views[1].num_outstanding = views[1].queued_tokens = 9    # a rise: no call needed
    assert a.route(Req(), 0.0) == 0 and b.route(Req(), 0.0) == 0


# -- power of two ---------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0]), min_size=2, max_size=6), st.integers(0, 2**31),
       st.lists(st.integers(0, 6), min_size=6, max_size=6))
def test_power_of_two_never_picks_the_busier_of_its_two(weights, seed, loads):
    r, views = build("power_of_two", weights, seed=seed)
    twin, twin_views = build("power_of_two", weights, seed=seed)
    for j in range(60):
        for v, tv, x in zip(views, twin_views, loads):
            v.num_outstanding = tv.num_outstanding = (x * (j + 1)) % 5
        a, b = twin.draw()                                   # the same draws route() makes
        assert a != b
        ka, kb = (views[k].num_outstanding / views[k].weight for k in (a, b))
        assert r.route(Req(j), 0.0) == (a if ka <= kb else b)


def test_power_of_two_draws_follow_the_weights():
    weights = [1.0, 2.0, 3.0, 4.0]
    r, _ = build("power_of_two", weights, seed=3)
    pairs = np.array([r.draw() for _ in range(20000)])
    w = np.array(weights) / sum(weights)
    second = np.array([sum(w[f] * w[j] / (1 - w[f]) for f in range(4) if f != j) for j in range(4)])
    assert stats.chisquare(np.bincount(pairs[:, 0], minlength=4), 20000 * w).pvalue > 1e-6
    assert stats.chisquare(np.bincount(pairs[:, 1], minlength=4), 20000 * second).pvalue > 1e-6
    again, _ = build("power_of_two", weights, seed=3)
    assert [again.draw() for _ in range(100)] == [tuple(p) for p in pairs[:100]]


def test_power_of_two_one_replica():
    r, _ = build("power_of_two", [2.0])
    assert picks(r, 3) == [0, 0, 0]


# -- building and user-loaded routers ---------------------------------------------------------

def test_every_registered_router_builds_and_routes():
    for name in routers.names():
        r, _ = build(name, [1.0, 2.0])
        assert r.route(Req(), 0.0) in (0, 1)


def test_example_prefix_affinity_router():
    r, views = build(EXAMPLE, [1.0, 1.0, 2.0, 1.0], balance_abs=2, balance_rel=1.5)
    homes = {k: r.route(Req(k, hash_ids=[1000 + k, 7]), 0.0) for k in range(200)}
    assert all(r.route(Req(k, hash_ids=[1000 + k]), 0.0) == homes[k] for k in range(200))  # sticky
    share = np.bincount(list(homes.values()), minlength=4) / 200
    assert share.min() > 0.05 and share[2] == share.max()   # the weight-2 replica owns the most keys
    assert r.route(Req(client=42), 0.0) == r.route(Req(client=42), 0.0)
    home = homes[0]
    views[home].num_outstanding = 3 * int(views[home].weight)   # 3 per weight vs 0: abs 3 > 2, rel 3 > 0
    assert r.route(Req(0, hash_ids=[1000]), 0.0) != home     # too busy: least outstanding instead
    views[home].num_outstanding = 2 * int(views[home].weight)   # 2 - 0 is not > 2: home again
    assert r.route(Req(0, hash_ids=[1000]), 0.0) == home


def test_router_written_in_docs_runs(tmp_path):
    doc = (ROOT / "docs" / "routers.md").read_text()
    code = doc.split("## Writing a router", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_routers.py").write_text(code)
    views = make_views([1.0, 2.0, 1.0, 2.0])
    r = build_router("my_routers.py:LongPromptsToBigReplicas", {"long_tokens": 8192}, views,
                     RngStreams(0).stream("router"), base_dir=tmp_path)
    assert [r.route(Req(prompt_tokens=9000), 0.0) for _ in range(4)] == [1, 3, 1, 3]
    assert [r.route(Req(prompt_tokens=100), 0.0) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="no replica has weight >= 5"):
        build_router("my_routers.py:LongPromptsToBigReplicas", {"min_weight": 5}, views, None, base_dir=tmp_path)


def test_user_router_loaded_twice_shares_nothing(tmp_path):
    (tmp_path / "mine.py").write_text(
        "SEEN = []\n"
        "class Mine:\n"
        "    def __init__(self, views, offset=0):\n"
        "        self.n, self.offset = len(views), offset\n"
        "    def route(self, request, now):\n"
        "        SEEN.append(request.id)\n"
        "        return (len(SEEN) + self.offset) % self.n\n")
    before, modules = routers.names(), set(sys.modules)
    a = build_router("mine.py:Mine", {"offset": 1}, make_views([1, 1, 1]), None, base_dir=tmp_path)
    b = build_router("mine.py:Mine", {}, make_views([1, 1, 1]), None, base_dir=str(tmp_path))
    assert [a.route(Req(), 0.0) for _ in range(3)] == [2, 0, 1]
    assert [b.route(Req(), 0.0) for _ in range(3)] == [1, 2, 0]     # its own SEEN, fresh
    assert routers.names() == before and set(sys.modules) == modules
    assert router_class("mine.py:Mine", tmp_path) is not router_class("mine.py:Mine", tmp_path)


@pytest.mark.parametrize("name, params, source, key, words", [
    ("nope", {}, None, "cluster.router.name", ["unknown router 'nope'", "round_robin"]),
    ("round_robin", {"bogus": 1}, None, "cluster.router.params.bogus", ["unknown parameter"]),
    ("missing.py:X", {}, None, "cluster.router.name", ["missing.py", "not found"]),
    ("r.py", {}, "", "cluster.router.name", ["r.py", "path/to/file.py:ClassName"]),
    ("r.py:Other", {}, "class R:\n    def route(self, request, now): return 0\n",
     "cluster.router.name", ["r.py", "defines no 'Other'", "['R']"]),
    ("r.py:f", {}, "def f(views, rng):\n    return 0\n", "cluster.router.name", ["'f'", "route(request, now)"]),
    ("r.py:R", {}, "class R:\n    pass\n", "cluster.router.name", ["'R'", "route(request, now)"]),
    ("r.py:R", {}, "class R(:\n", "cluster.router.name", ["r.py", "SyntaxError"]),
    ("r.py:R", {}, "import no_such_module_xyz\n", "cluster.router.name", ["r.py", "ModuleNotFoundError"]),
    ("r.py:R", {"x": 1}, "class R:\n    def __init__(self, views): pass\n    def route(self, r, now): return 0\n",
     "cluster.router.params.x", ["unknown parameter", "r.py:R"]),
    ("r.py:R", {}, "class R:\n    def __init__(self, views, need): pass\n    def route(self, r, now): return 0\n",
     "cluster.router.params.need", ["missing required parameter", "r.py:R"]),
    ("r.py:R", {"x": -1}, "class R:\n    def __init__(self, views, x=0):\n        if x < 0: raise ValueError('x < 0')\n"
     "    def route(self, r, now): return 0\n", "cluster.router.params", ["x < 0"]),
])
def test_router_errors_are_one_line_naming_key_and_file(tmp_path, name, params, source, key, words):
    if source is not None:
        (tmp_path / "r.py").write_text(source)
    with pytest.raises(ConfigError) as e:
        build_router(name, params, make_views([1.0]), None, base_dir=tmp_path)
    msg = str(e.value)
    assert e.value.key == key and "\n" not in msg and f"'{key}'" in msg
    for w in words:
        assert w in msg


def test_bad_weights_are_a_config_error():
    with pytest.raises(ConfigError, match="weight"):
        build("least_outstanding", [1.0, 0.0])
    with pytest.raises(ConfigError, match="at least one replica"):
        build_router("random", {}, [], None)


def test_router_reads_no_output_tokens():
    # Req has no output_tokens slot: a router that read it would raise AttributeError here
    for name in routers.names():
        r, views = build(name, [1.0, 2.0, 1.0])
        for j in range(20):
            views[j % 3].publish(j, [float(j) + 0.5], [j + 2])
            views[j % 3].changed()
            assert 0 <= r.route(Req(j, hash_ids=[j]), float(j)) < 3
