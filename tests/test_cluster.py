"""Clusters: pools of replicas behind routers, fast-forward across replicas, pipeline stages.

A run is always a cluster; these tests check what several replicas add: no request lost or
served twice, routers distributing as documented, cut decode runs equal to stepping, pools
inheriting top-level settings, pipeline bubbles on an exact fixture, and the one-line errors.
"""
from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
import simpy
from hypothesis import given, settings, strategies as st

import sim
from sim.config import ConfigError, load_config
from sim.cost.base import StepTime
from sim.engine.pipeline import PipelineReplica
from sim.engine.request import FINISHED, Request
from sim.hardware import load_hardware
from sim.metrics.records import Recorder
from sim.model_spec import load_model
from tests.conftest import small_config


def cluster_config(router="round_robin", pools=None, **over):
    cfg = small_config(**over)
    cfg.pop("hardware")
    cfg["cluster"] = {"router": {"name": router},
                      "pools": pools or [{"name": "a", "num_replicas": 3, "hardware": "h100_sxm"},
                                         {"name": "b", "num_replicas": 2, "hardware": "a100_80gb_sxm",
                                          "engine": {"max_num_seqs": 16}}]}
    return cfg


def test_one_pool_of_one_replica_equals_no_cluster():
    """`cluster:` with one pool of one replica is the same run as a config without it."""
    plain = small_config()
    one = dict(plain, cluster={"pools": [{"name": "default", "num_replicas": 1}]})
    a, b = sim.run(plain), sim.run(one)
    pd.testing.assert_frame_equal(a.requests, b.requests, check_exact=True)
    pd.testing.assert_frame_equal(a.iterations, b.iterations, check_exact=True)


def test_pools_inherit_top_level_and_override_engine_key_by_key():
    cfg = load_config(cluster_config(engine__max_num_seqs=48))
    a, b = cfg.pools
    assert (a.hardware, b.hardware) == ("h100_sxm", "a100_80gb_sxm")
    assert a.engine.max_num_seqs == 48 and b.engine.max_num_seqs == 16
    assert a.engine.max_num_batched_tokens == b.engine.max_num_batched_tokens == 2048  # inherited
    assert a.model == b.model == "llama-3.1-8b" and a.parallelism.tp == 1
    # the resolved config reloads to itself
    assert load_config(cfg) == cfg


@pytest.mark.parametrize("router", ["round_robin", "random", "least_outstanding", "least_kv", "least_tokens",
                                    "power_of_two"])
def test_cut_decode_runs_equal_stepping(router):
    """Replicas plan decode runs past arrivals they may not get; a routed request cuts the
    run. Results equal stepping every iteration, bit for bit, for every router."""
    cfg = cluster_config(router, workload__num_requests=300,
                         workload__arrival={"name": "poisson", "params": {"rate_per_s": 12}})
    a, b = sim.run(cfg), sim.run(cfg, fast_forward=False)
    pd.testing.assert_frame_equal(a.requests, b.requests, check_exact=True)
    pd.testing.assert_frame_equal(a.iterations, b.iterations, check_exact=True)
    assert a.requests["replica"].nunique() == 5


def test_cut_runs_equal_stepping_in_closed_loop():
    cfg = cluster_config("least_outstanding", workload__num_requests=150,
                         workload__arrival={"name": "closed_loop", "params": {"concurrency": 12}})
    a, b = sim.run(cfg), sim.run(cfg, fast_forward=False)
    pd.testing.assert_frame_equal(a.requests, b.requests, check_exact=True)
    pd.testing.assert_frame_equal(a.iterations, b.iterations, check_exact=True)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), rate=st.floats(1.0, 40.0), n_a=st.integers(1, 4), n_b=st.integers(0, 3),
       router=st.sampled_from(["round_robin", "random", "least_outstanding", "least_kv", "least_tokens",
                               "power_of_two"]))
def test_no_request_lost_or_served_twice(seed, rate, n_a, n_b, router):
    pools = [{"name": "a", "num_replicas": n_a, "hardware": "h100_sxm"}]
    if n_b:
        pools.append({"name": "b", "num_replicas": n_b, "hardware": "l40s", "engine": {"max_num_seqs": 8}})
    cfg = cluster_config(router, pools, seed=seed, workload__num_requests=120,
                         workload__arrival={"name": "poisson", "params": {"rate_per_s": rate}})
    res = sim.run(cfg)
    rq = res.requests
    assert sorted(rq["request_id"]) == list(range(120))  # each request recorded exactly once
    assert rq["replica"].between(0, n_a + n_b - 1).all()
    done = rq[~rq["rejected"]]
    assert (done["output_tokens"] > 0).all() and (done["finish_s"] >= done["arrival_s"]).all()
    assert set(rq["pool"].astype(str)) <= {"a", "b"}
    # each replica's iterations never overlap in time
    for _, g in res.iterations.groupby("replica"):
        s = g["start_s"].to_numpy()
        assert (s[1:] >= s[:-1] + g["step_s"].to_numpy()[:-1] - 1e-12).all()


def test_round_robin_is_exactly_cyclic_over_equal_replicas():
    pools = [{"name": "a", "num_replicas": 4, "hardware": "h100_sxm"}]
    res = sim.run(cluster_config("round_robin", pools, workload__num_requests=100))
    rq = res.requests.sort_values("arrival_s", kind="stable")
    assert (rq["replica"].to_numpy() == np.arange(100) % 4).all()


def test_round_robin_weights_by_capacity_across_heterogeneous_pools():
    """An H100 decodes faster than an L40S: its replicas get proportionally more requests."""
    res = sim.run(cluster_config("round_robin", [{"name": "fast", "num_replicas": 1, "hardware": "h100_sxm"},
                                                 {"name": "slow", "num_replicas": 1, "hardware": "l40s"}],
                                 workload__num_requests=400))
    w = {p["name"]: p["capacity_tokens_per_s_per_replica"] for p in res.info["pools"]}
    share = (res.requests["pool"] == "fast").mean()
    assert share == pytest.approx(w["fast"] / (w["fast"] + w["slow"]), abs=0.01)
    assert share > 0.6


def test_router_weight_overrides_capacity():
    """A pool's router_weight replaces its measured capacity: weights 3 and 1 split round-robin
    3:1 in every window of four requests, whatever the GPUs."""
    res = sim.run(cluster_config("round_robin", [{"name": "a", "num_replicas": 1, "hardware": "l40s", "router_weight": 3},
                                                 {"name": "b", "num_replicas": 1, "hardware": "h100_sxm",
                                                  "router_weight": 1}], workload__num_requests=200))
    order = res.requests.sort_values("arrival_s", kind="stable")["pool"].astype(str).tolist()
    assert all(order[i:i + 4].count("a") == 3 for i in range(0, 200, 4))


def test_power_of_two_is_reproducible_under_the_seed():
    cfg = cluster_config("power_of_two", workload__num_requests=200)
    a, b = sim.run(cfg), sim.run(cfg)
    assert (a.requests["replica"] == b.requests["replica"]).all()
    c = sim.run(cfg, seed=8)
    assert not (a.requests["replica"] == c.requests["replica"]).all()


def test_cluster_summary_has_gpus_cost_and_pools():
    cfg = cluster_config("least_outstanding", [{"name": "a", "num_replicas": 2, "hardware": "h100_sxm",
                                                "parallelism": {"tp": 2}, "price_usd_per_gpu_hour": 2.0},
                                               {"name": "b", "num_replicas": 1, "hardware": "h200_sxm",
                                                "price_usd_per_gpu_hour": 3.0}])
    res = sim.run(cfg)
    s = res.summary()
    assert s["gpus"] == 5 and s["cost_per_hour"] == pytest.approx(2 * 2 * 2.0 + 3.0)
    assert s["cost_per_million_output_tokens"] == pytest.approx(
        s["cost_per_hour"] / (s["output_tokens_per_s"] * 3600) * 1e6)
    assert set(s["per_pool"]) == {"a", "b"}
    pa = s["per_pool"]["a"]
    assert pa["gpus"] == 4 and pa["tp"] == 2
    assert pa["num_requests"] + s["per_pool"]["b"]["num_requests"] == s["num_requests"]
    assert 0 < pa["busy_frac"] <= 1 and pa["ttft_s"]["p50"] <= pa["ttft_s"]["p99"]
    assert set(res.iterations["replica"]) == {0, 1, 2}


# -- pipeline parallelism on an exact fixture -------------------------------------------------

class _StageCost:
    """Two stages of fixed times and a fixed transfer (what ParallelCost offers a pipeline)."""

    def __init__(self, stages_s, p2p_s, host_s=0.0):
        self.stages_s, self.p2p, self.host = stages_s, p2p_s, host_s

    def stage_times(self, shape):
        return [StepTime(t + (self.host if i == 0 else 0.0), gemm_s=t, host_s=self.host if i == 0 else 0.0)
                for i, t in enumerate(self.stages_s)]

    def p2p_s(self, shape):
        return self.p2p

    def step_time(self, shape):
        return StepTime(sum(self.stages_s) + self.host, gemm_s=sum(self.stages_s), host_s=self.host)


def _pipeline(requests, stages_s=(0.010, 0.020), p2p_s=0.001, host_s=0.0):
    cfg = load_config(dict(small_config(), parallelism={"tp": 1, "pp": 2}))
    env = simpy.Environment()
    rec = Recorder(64)
    layout = types.SimpleNamespace(pp=2, kv_blocks=64)
    rep = PipelineReplica(env, 0, cfg.engine, load_model("llama-3.1-8b"), load_hardware("h100_sxm"), layout,
                          _StageCost(stages_s, p2p_s, host_s), rec, 10**6)
    reqs = [Request(i, t, p, o) for i, (t, p, o) in enumerate(requests)]

    def source():
        for r in reqs:
            if r.arrival_s > env.now:
                yield env.timeout(r.arrival_s - env.now)
            rep.submit(r)
    env.process(source())
    env.run()
    return rec, reqs


def test_pipeline_one_request_shows_its_bubbles():
    """pp = 2, stage times a = 10 ms and b = 20 ms, transfer c = 1 ms, one request: every
    micro-batch takes a + c + b, and in steady state finds stage 0 idle for b + c (since it
    left it) and stage 1 idle for a + c: bubbles of a + b + 2c per step."""
    a, b, c = 0.010, 0.020, 0.001
    rec, (r,) = _pipeline([(0.0, 32, 4)], (a, b), c)
    it = rec.iterations_frame()
    assert len(it) == 4 and r.state == FINISHED
    assert it["step_s"].to_numpy() == pytest.approx([a + c + b] * 4)
    assert it["start_s"].to_numpy() == pytest.approx([0, 1, 2, 3 * 1.0][:0] or [i * (a + b + c) for i in range(4)])
    assert it["bubble_s"].iloc[0] == 0.0  # the first micro-batch finds both stages unused
    assert it["bubble_s"].iloc[1:].to_numpy() == pytest.approx([a + b + 2 * c] * 3)
    assert r.first_token_s == pytest.approx(a + b + c)


def test_pipeline_two_virtual_engines_fill_the_stages():
    """Two requests go to the two virtual engines; their micro-batches interleave, so after the
    first pass stage 1 (the slower) never idles: the second engine's micro-batches find no
    bubble at stage 1, and each engine's period is 2 b (stage 1 paces the pipe)."""
    a, b, c = 0.010, 0.020, 0.001
    rec, reqs = _pipeline([(0.0, 32, 6), (0.0, 32, 6)], (a, b), c)
    it = rec.iterations_frame().sort_values("start_s", kind="stable")
    assert all(r.state == FINISHED for r in reqs)
    assert len(it) == 12
    late = it[it["start_s"] > 3 * (a + b + c)]
    # steady state: each virtual engine's step lasts 2 b (waits for the other's stage-1 work)
    assert late["step_s"].to_numpy() == pytest.approx([2 * b + 0.0] * len(late), abs=a + c)
    assert reqs[1].finish_s - reqs[0].finish_s == pytest.approx(b)


def test_pipeline_parallel_run_end_to_end():
    res = sim.run(small_config(model="llama-3.1-8b", parallelism={"tp": 2, "pp": 2}, workload__num_requests=60))
    s = res.summary()
    assert s["num_completed"] == 60 and s["gpus"] == 4
    assert res.iterations["bubble_s"].sum() > 0
    assert res.info["virtual_engines"] == 2


# -- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("over, key", [
    ({"cluster": {"router": {"name": "nearest"}, "pools": [{"name": "a", "num_replicas": 2}]}}, "cluster.router"),
    ({"cluster": {"pools": [{"name": "a", "replicas": 2}]}}, "cluster.pools[0].replicas"),
    ({"cluster": {"pools": [{"name": "a", "num_replicas": 0}]}}, "cluster.pools[0].num_replicas"),
    ({"parallelism": {"tp": 3}}, "parallelism.tp"),
    ({"parallelism": {"pp": 40}}, "parallelism.pp"),
    ({"cluster": {"pools": [{"name": "a", "parallelism": {"tp": 5}}]}}, "cluster.pools[0].parallelism.tp"),
    ({"cluster": {"router": {"name": "nope"}, "pools": [{"name": "a"}]}}, "cluster.router"),
    ({"model": "llama-3.1-70b", "parallelism": {"tp": 16}}, "parallelism.tp"),
    ({"cluster": {"pools": [{"name": "a", "router_weight": 0}]}}, "cluster.pools[0].router_weight"),
    ({"cluster": {"pools": [{"name": "a", "price_usd_per_gpu_hour": -1}]}}, "cluster.pools[0].price_usd_per_gpu_hour"),
    ({"cluster": {"pools": [{"name": "a"}, {"name": "a"}]}}, "cluster.pools[1].name"),
])
def test_bad_cluster_input_is_one_line_naming_the_key(over, key):
    with pytest.raises(ConfigError) as e:
        sim.run({**small_config(), **over})
    assert f"'{key}" in str(e.value) and "\n" not in str(e.value)


def test_a_70b_model_that_does_not_fit_names_the_smallest_layout():
    with pytest.raises(ConfigError) as e:
        sim.run(small_config(model="llama-3.1-70b"))
    msg = str(e.value)
    assert "tp=2" in msg and "GB" in msg and "\n" not in msg
