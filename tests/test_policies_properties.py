"""Hypothesis properties across every engine policy: blocks conserved, no request lost,
host swap space balanced, every inter-token gap counted once, fast-forward == stepping
bit for bit (hand-built engines, and whole runs under every preset)."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.engine.request import FINISHED
from tests.engine_helpers import assert_drained, drive

workloads = st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 120), st.integers(1, 60), st.integers(0, 3)),
                     min_size=1, max_size=20)
engines = st.fixed_dictionaries({
    "num_blocks": st.integers(4, 40), "block_size": st.sampled_from([1, 4, 16]),
    "max_num_seqs": st.integers(1, 8), "extra_budget": st.integers(0, 200), "chunked": st.booleans(),
    "batching": st.sampled_from(["static", "orca", "vllm-v0", "vllm-v1", "sarathi-serve"]),
    "scheduling_policy": st.sampled_from(["fcfs", "priority", "shortest-prompt-first"]),
    "preemption": st.sampled_from(["recompute", "swap"]), "swap_blocks": st.integers(0, 12),
    "kv_mode": st.sampled_from(["paged", "paged", "contiguous"]), "max_tokens": st.sampled_from([None, 30, 80]),
    "watermark_frac": st.sampled_from([0.0, 0.01, 0.1])})


def _kw(eng):
    return dict(num_blocks=eng["num_blocks"], block_size=eng["block_size"], max_num_seqs=eng["max_num_seqs"],
                max_num_batched_tokens=eng["max_num_seqs"] + eng["extra_budget"],
                chunked=eng["chunked"] and eng["batching"] in ("vllm-v1", "sarathi-serve"),
                batching=eng["batching"], scheduling_policy=eng["scheduling_policy"], preemption=eng["preemption"],
                swap_blocks=eng["swap_blocks"], kv_mode=eng["kv_mode"], max_tokens=eng["max_tokens"],
                max_model_len=200, watermark_frac=eng["watermark_frac"], swap_bytes_per_block=100.0, swap_bw=1e5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads, engines)
def test_every_policy_conserves_blocks_and_loses_no_request(reqs, eng):
    # drive() checks after every step: blocks held == blocks used, swap space == swapped
    # requests' blocks, computed tokens bounded, batch <= max_num_seqs
    rec, sched, out = drive(reqs, **_kw(eng))
    assert_drained(rec, sched, out, eng["num_blocks"])
    assert not sched.swapped and sched.preemption.used_blocks == 0
    it = rec.iterations_frame()
    assert it.num_preempted.sum() == sum(r.num_preemptions for r in out)
    assert it.swap_bytes.sum() == sum(r.swap_bytes for r in out)
    # every inter-token gap counted once: a step's ITL rows plus the gaps spanning steps;
    # and (padded rows aside, whose results wait for the batch end) they add up to the
    # time from first to last token
    done = [r for r in out if r.state == FINISHED]
    assert it.num_itl_tokens.sum() + len(rec.extra_itl_s) == sum(r.num_output - 1 for r in done)
    if eng["batching"] != "static":
        total = (it.step_s * it.num_itl_tokens).sum() + sum(rec.extra_itl_s)
        assert abs(total - sum(r.finish_s - r.first_token_s for r in done)) < 1e-6


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads, engines)
def test_fast_forward_equals_stepping_for_every_policy(reqs, eng):
    a, _, _ = drive(reqs, fast_forward=True, check=False, **_kw(eng))
    b, _, _ = drive(reqs, fast_forward=False, check=False, **_kw(eng))
    assert a.requests_frame().equals(b.requests_frame())
    assert a.iterations_frame().equals(b.iterations_frame())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["static", "orca", "vllm-v0", "vllm-v1", "sarathi-serve"]),
       st.sampled_from(["recompute", "swap"]), st.sampled_from(["fcfs", "priority", "shortest-prompt-first"]),
       st.booleans(), st.integers(0, 2**16))
def test_fast_forward_equals_stepping_for_every_preset(preset, preemption, policy, cuda_graphs, seed):
    # the whole stack: preset resolution, roofline cost (its analytic decode-run pricing),
    # CUDA-graph padding, swap over PCIe; a ~24k-token KV cache so that preemption happens
    import sim

    cfg = {"model": "llama-3.1-8b", "hardware": "h100_sxm", "seed": seed,
           "engine": {"preset": preset, "preemption": preemption, "scheduling_policy": policy,
                      "cuda_graphs": cuda_graphs, "cuda_graph_max_batch_size": 16, "max_num_seqs": 32,
                      "max_tokens": 300, "max_model_len": 4096, "gpu_memory_utilization": 0.23,
                      "activation_reserve_bytes": 0.5e9, "swap_space_bytes": 2e8},
           "workload": {"num_requests": 60, "arrival": {"name": "poisson", "params": {"rate_per_s": 20}},
                        "prompt_tokens": {"name": "uniform", "params": {"low": 16, "high": 1500}},
                        "output_tokens": {"name": "uniform", "params": {"low": 1, "high": 300}},
                        "priority": {"name": "uniform", "params": {"low": 1, "high": 3}}}}
    a, b = sim.run(cfg), sim.run(cfg, fast_forward=False)
    assert a.requests["rejected"].sum() == 0
    assert a.requests.equals(b.requests) and a.iterations.equals(b.iterations)
    assert a.extra_itl_s == b.extra_itl_s
