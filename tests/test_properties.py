"""Hypothesis properties of the engine: conservation, no loss, bounds, determinism, fast-forward."""
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import sim
from tests.conftest import small_config
from tests.engine_helpers import assert_drained, drive

workloads = st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 120), st.integers(1, 60)), min_size=1, max_size=25)
engines = st.fixed_dictionaries({
    "num_blocks": st.integers(4, 40), "block_size": st.sampled_from([1, 4, 16]),
    "max_num_seqs": st.integers(1, 8), "extra_budget": st.integers(0, 200), "chunked": st.booleans()})


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads, engines)
def test_blocks_conserved_no_request_lost_computed_bounded(reqs, eng):
    # drive() checks after every step: blocks held == blocks used, free list consistent,
    # computed tokens <= tokens, blocks cover the computed tokens, batch <= max_num_seqs
    rec, sched, out = drive(reqs, num_blocks=eng["num_blocks"], block_size=eng["block_size"],
                            max_num_seqs=eng["max_num_seqs"],
                            max_num_batched_tokens=eng["max_num_seqs"] + eng["extra_budget"],
                            chunked=eng["chunked"])
    assert_drained(rec, sched, out, eng["num_blocks"])


@settings(max_examples=60, deadline=None)
@given(workloads, engines)
# a run ending where now + delay cannot land on the stepped time (needs an absolute-time event)
@example([(0.0, 1, 1), (0.0, 1, 1), (0.0, 1, 26)],
         {"num_blocks": 4, "block_size": 16, "max_num_seqs": 1, "extra_budget": 26, "chunked": False})
def test_fast_forward_equals_stepping(reqs, eng):
    kw = dict(num_blocks=eng["num_blocks"], block_size=eng["block_size"], max_num_seqs=eng["max_num_seqs"],
              max_num_batched_tokens=eng["max_num_seqs"] + eng["extra_budget"], chunked=eng["chunked"], check=False)
    a, _, _ = drive(reqs, fast_forward=True, **kw)
    b, _, _ = drive(reqs, fast_forward=False, **kw)
    assert a.requests_frame().equals(b.requests_frame())
    assert a.iterations_frame().equals(b.iterations_frame())


def test_same_seed_same_results_and_fast_forward_with_roofline():
    cfg = small_config()
    r1, r2 = sim.run(cfg), sim.run(cfg)
    assert r1.requests.equals(r2.requests) and r1.iterations.equals(r2.iterations)
    assert r1.summary() == r2.summary()
    r3 = sim.run(cfg, fast_forward=False)
    assert r1.requests.equals(r3.requests) and r1.iterations.equals(r3.iterations)
    r4 = sim.run(cfg, seed=8)
    assert not r1.requests.equals(r4.requests)


def test_fast_forward_equals_stepping_under_memory_pressure():
    cfg = small_config(engine__gpu_memory_utilization=0.2065, engine__activation_reserve_bytes=1.0e9,
                       workload__num_requests=150)  # ~0.6 GB of KV: about 4,500 tokens
    a, b = sim.run(cfg), sim.run(cfg, fast_forward=False)
    assert a.summary()["num_preemptions"] > 0
    assert a.requests.equals(b.requests) and a.iterations.equals(b.iterations)


@pytest.mark.parametrize("arrival", [{"name": "closed_loop", "params": {"concurrency": 6}},
                                     {"name": "poisson", "params": {"rate_per_s": 3}}])
def test_fast_forward_equals_stepping_open_and_closed_loop(arrival):
    """Open loop: decode runs chain through completions inside one event; closed loop: a
    completion submits the client's next request, so runs stop there. Both equal stepping."""
    cfg = small_config()
    cfg["workload"] = {**cfg["workload"], "arrival": arrival, "num_requests": 120}
    a, b = sim.run(cfg), sim.run(cfg, fast_forward=False)
    pd.testing.assert_frame_equal(a.requests, b.requests, check_exact=True)
    pd.testing.assert_frame_equal(a.iterations, b.iterations, check_exact=True)
    assert a.summary() == b.summary()


def test_fast_forward_equals_stepping_with_the_longest_context_floor():
    """The H200 Triton decode price has a floor from the longest context's serial chain: the
    engine passes the longest steady-decode context to stepped and fast-forwarded steps alike
    (it grows by one per step), so the two stay equal, and mixed contexts price above the mean."""
    cfg = small_config(hardware="h200_sxm", cost_model={"name": "roofline", "params": {"backend": "triton"}},
                       workload__num_requests=120,
                       workload__prompt_tokens={"name": "lognormal", "params": {"median": 300, "sigma": 1.5, "max": 20000}})
    a, b = sim.run(cfg), sim.run(cfg, fast_forward=False)
    pd.testing.assert_frame_equal(a.requests, b.requests, check_exact=True)
    pd.testing.assert_frame_equal(a.iterations, b.iterations, check_exact=True)


def test_longest_decode_context_is_tracked():
    """Two requests decode side by side, prompts 1,000 and 100 tokens: every decode step's shape
    carries the longer one's context, 900 more than the shorter's; the Triton H200 price of a
    batch with a few long contexts among many short ones is above its mean-context price."""
    from sim.cost.base import BatchShape
    from sim.cost.constant import ConstantCost
    from sim.cost.roofline import RooflineCost
    from sim.hardware import load_hardware
    from sim.model_spec import load_model
    from tests.engine_helpers import drive

    class Recording(ConstantCost):
        def __init__(self):
            super().__init__(0.01)
            self.shapes = []

        def step_time(self, shape):
            self.shapes.append(shape)
            return super().step_time(shape)

    cost = Recording()
    drive([(0.0, 1000, 30), (0.0, 100, 30)], max_num_batched_tokens=2048, num_blocks=200, cost=cost,
          fast_forward=False)
    both = [s for s in cost.shapes if s.num_decode == 2 and not s.prefill_chunks]
    assert len(both) >= 20
    assert all(2 * s.decode_context_max - s.decode_context_sum == 900 for s in both)
    roof = RooflineCost(load_model("llama-3.1-8b"), load_hardware("h200_sxm"), backend="triton")
    mean = roof.step_time(BatchShape([], 64, 4 * 4000 + 60 * 200, 64)).attn_s
    skewed = roof.step_time(BatchShape([], 64, 4 * 4000 + 60 * 200, 64, 4000)).attn_s
    assert skewed > 1.5 * mean
