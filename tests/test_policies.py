"""Engine policies: exact fixtures (constant 10 ms step) for each batching policy, queue
order, preemption mode and KV mode; CUDA graphs; the expected orders at small size."""
import importlib.util

import pytest

from sim.cost.base import BatchShape
from sim.cost.constant import ConstantCost
from sim.engine.batching import stall_free_budget
from sim.engine.cuda_graphs import CudaGraphCost, capture_sizes
from sim.engine.request import FINISHED, REJECTED
from tests.conftest import ROOT
from tests.engine_helpers import drive

FOUR = [(0.0, 16, 2), (0.0, 16, 5), (0.0, 16, 3), (0.015, 16, 2)]


def times(reqs):
    return [(round(r.first_token_s, 6), round(r.finish_s, 6)) for r in reqs]


def test_static_batch_runs_to_its_longest_request_with_padded_rows():
    rec, sched, reqs = drive(FOUR, batching="static", chunked=False, max_num_batched_tokens=64, fast_forward=False)
    it = rec.iterations_frame()
    # one prefill of the whole batch; 4 decode steps of 3 rows (finished rows are padding);
    # the late request waits for the batch to end
    assert list(it.num_prefill_tokens) == [48, 0, 0, 0, 0, 16, 0]
    assert list(it.num_decode) == [0, 3, 3, 3, 3, 0, 1]
    assert times(reqs) == [(0.01, 0.05), (0.01, 0.05), (0.01, 0.05), (0.06, 0.07)]
    assert list(it.num_itl_tokens) == [0, 3, 2, 1, 1, 0, 1] and not rec.extra_itl_s  # padded rows emit nothing
    assert all(r.num_output == r.output_tokens for r in reqs) and sched.kv.pool.num_free == 64


def test_orca_joins_new_requests_at_the_next_iteration():
    rec, _, reqs = drive(FOUR, batching="orca", chunked=False, fast_forward=False)
    it = rec.iterations_frame()
    assert list(it.num_prefill_tokens) == [48, 0, 16, 0, 0]  # whole prompt mixed with 2 decodes
    assert list(it.num_decode) == [0, 3, 2, 2, 1]
    assert times(reqs) == [(0.01, 0.02), (0.01, 0.05), (0.01, 0.03), (0.03, 0.04)]


def test_orca_never_chunks_and_ignores_the_token_budget():
    rec, _, (a, b) = drive([(0.0, 100, 2), (0.0, 60, 1)], batching="orca", chunked=False,
                           max_num_batched_tokens=64, fast_forward=False)
    assert list(rec.iterations_frame().num_prefill_tokens) == [160, 0]
    assert a.state == b.state == FINISHED


def test_vllm_v0_prefill_first_stalls_decodes():
    rec, _, reqs = drive(FOUR, batching="vllm-v0", chunked=False, fast_forward=False)
    it = rec.iterations_frame()
    assert list(it.num_prefill_tokens) == [48, 0, 16, 0, 0, 0]
    assert list(it.num_decode) == [0, 3, 0, 3, 1, 1]  # the step that admits #3 decodes nobody
    assert times(reqs) == [(0.01, 0.02), (0.01, 0.06), (0.01, 0.04), (0.03, 0.04)]
    # ITL: #1 and #2 waited through the prefill-only step: their next gap is 20 ms, not one step
    assert list(it.num_itl_tokens) == [0, 3, 0, 1, 1, 1]
    assert rec.extra_itl_s == pytest.approx([0.02, 0.02])


def test_vllm_v0_watermark_keeps_blocks_free():
    # 10 blocks, 10% watermark = 1 block: two 4-block prompts fit, a third 2-block one must
    # leave 1 free: 8 + 2 = 10 > 10 - 1, so it waits for the first to finish
    _, _, (a, b, c) = drive([(0.0, 64, 1), (0.0, 64, 1), (0.0, 32, 1)], num_blocks=10, batching="vllm-v0",
                            chunked=False, watermark_frac=0.1)
    assert a.first_token_s == b.first_token_s == pytest.approx(0.01)
    assert c.first_token_s == pytest.approx(0.02)
    _, _, (a,) = drive([(0.0, 150, 10)], num_blocks=10, batching="vllm-v0", chunked=False, watermark_frac=0.1)
    assert a.state == REJECTED  # 10 blocks needed, only 9 may ever be used


def test_vllm_v1_mixes_chunks_with_decodes_and_sarathi_budget():
    rec, _, _ = drive([(0.0, 8, 6), (0.015, 200, 1)], max_num_batched_tokens=64, batching="sarathi-serve",
                      fast_forward=False)
    mixed = rec.iterations_frame().query("num_decode == 1 and num_prefill_tokens > 0")
    assert list(mixed.num_prefill_tokens)[:3] == [63, 63, 63]
    # stall-free budget: 10 ms + 0.1 ms/token within 20 ms -> 100 tokens -> 96 (multiple of 16)
    assert stall_free_budget(ConstantCost(0.01, 1e-4), 0.02, 8, 16) == 96
    assert stall_free_budget(ConstantCost(0.03, 0.0), 0.02, 8, 16) == 8  # nothing fits: the minimum


def test_contiguous_reservation_limits_concurrency():
    # 8 blocks of 16; prompt 16 + output 16 needs 2 blocks paged, 4 reserved (16 + max_tokens 48)
    reqs = [(0.0, 16, 16)] * 4
    rec_p, _, _ = drive(reqs, num_blocks=8, kv_mode="paged")
    rec_c, sched, out = drive(reqs, num_blocks=8, kv_mode="contiguous", max_tokens=48)
    assert rec_p.iterations_frame().num_running.max() == 4
    it = rec_c.iterations_frame()
    assert it.num_running.max() == 2 and it.kv_used_blocks.max() == 8
    assert [r.first_token_s for r in out] == pytest.approx([0.01, 0.01, 0.17, 0.17])
    assert sched.num_preemptions == 0 and sched.kv.pool.num_free == 8


def test_contiguous_without_max_tokens_reserves_max_model_len():
    _, _, (a, b) = drive([(0.0, 16, 16)] * 2, num_blocks=8, kv_mode="contiguous", max_model_len=128)
    assert b.first_token_s == pytest.approx(a.finish_s + 0.01)  # 8 blocks each: one at a time


@pytest.mark.parametrize("policy,order", [("fcfs", [1, 2, 3]), ("priority", [3, 2, 1]),
                                          ("shortest-prompt-first", [2, 1, 3])])
def test_queue_orders(policy, order):
    # one slot; #0 runs while 1..3 queue up: prompts 32, 16, 48 with priorities 3, 2, 1
    reqs = [(0.0, 16, 3, 0), (0.001, 32, 1, 3), (0.002, 16, 1, 2), (0.003, 48, 1, 1)]
    _, _, out = drive(reqs, max_num_seqs=1, scheduling_policy=policy)
    served = sorted(out[1:], key=lambda r: r.first_token_s)
    assert [r.id for r in served] == order


def test_priority_victim_is_the_least_urgent_running_request():
    # same as the recompute fixture, but the first-admitted request is the least urgent
    _, sched, (a, b) = drive([(0.0, 30, 20, 5), (0.0, 30, 20, 1)], num_blocks=4, max_num_batched_tokens=128,
                             scheduling_policy="priority")
    assert a.num_preemptions >= 1 and b.num_preemptions == 0
    assert a.state == b.state == FINISHED and sched.kv.pool.num_free == 4


def test_swap_preemption_keeps_computed_tokens_and_charges_pcie_time():
    # 4 blocks of 16; both grow to 50 tokens. At computed 32 both cross a block boundary
    # with no block free: b (last admitted) is swapped out (2 blocks = 2000 bytes at 1e5 B/s
    # = 20 ms added to that step), resumes after a finishes, and never recomputes.
    rec, sched, (a, b) = drive([(0.0, 30, 20), (0.0, 30, 20)], num_blocks=4, max_num_batched_tokens=128,
                               preemption="swap", swap_blocks=10, swap_bytes_per_block=1000, swap_bw=1e5,
                               fast_forward=False)
    it = rec.iterations_frame()
    assert a.num_preemptions == 0 and b.num_preemptions == 1
    assert b.swap_bytes == 4000 and it.swap_bytes.sum() == 4000  # 2 blocks out, 2 blocks in
    swaps = it[it.swap_bytes > 0]
    assert list(swaps.swap_s) == pytest.approx([0.02, 0.02])
    assert list(swaps.step_s) == pytest.approx([0.03, 0.03])
    assert it.num_prefill_tokens.sum() == 60 + 1  # the resumed request computes 1 token, not 32 again
    assert b.preempted_s == pytest.approx(swaps.start_s.iloc[1] - (swaps.start_s.iloc[0]))
    assert sched.preemption.used_blocks == 0 and sched.kv.pool.num_free == 4
    req = rec.requests_frame().set_index("request_id")
    assert req.loc[1, "swap_bytes"] == 4000 and req.loc[1, "preempted_s"] > 0


def test_swap_falls_back_to_recompute_without_host_space():
    rec, sched, (a, b) = drive([(0.0, 30, 20), (0.0, 30, 20)], num_blocks=4, max_num_batched_tokens=128,
                               preemption="swap", swap_blocks=1)
    assert b.num_preemptions >= 1 and b.swap_bytes == 0 and rec.iterations_frame().swap_bytes.sum() == 0
    assert b.state == FINISHED


def test_static_batch_ends_while_a_row_is_swapped_out():
    # 6 blocks of 16: a and b (30 + 20) need a 3rd block at the same step with 1 free, so b
    # (last admitted; c is already padding) is swapped out. b cannot come back while the
    # batch holds a and the padded c; the batch ends when a does (0.2 s), returning c, and b
    # is swapped back in as the next batch.
    _, sched, (a, b, c) = drive([(0.0, 30, 20), (0.0, 30, 20), (0.0, 10, 3)], num_blocks=6, batching="static",
                                chunked=False, preemption="swap", swap_blocks=10, swap_bytes_per_block=1.0)
    assert a.state == b.state == c.state == FINISHED
    assert (a.num_preemptions, b.num_preemptions, c.num_preemptions) == (0, 1, 0) and b.swap_bytes == 4
    assert a.finish_s == c.finish_s == pytest.approx(0.2) and b.finish_s == pytest.approx(0.37)
    assert sched.preemption.used_blocks == 0 and sched.kv.pool.num_free == 6


def test_cuda_graph_capture_sizes_padding_and_launches():
    assert capture_sizes(32) == [1, 2, 4, 8, 16, 24, 32]
    g = CudaGraphCost(ConstantCost(0.0, 1.0), max_batch_size=32)
    assert g.step_time(BatchShape([], 5, 50, 5)).total_s == 8.0     # padded to 8 rows
    assert g.step_time(BatchShape([], 33, 330, 33)).total_s == 33.0  # over the largest size: eager
    assert g.step_time(BatchShape([(4, 0)], 5, 50, 6)).total_s == 9.0  # mixed batch: eager


def test_cuda_graphs_cut_launch_cost_of_small_model_decode():
    import sim
    from tests.conftest import small_config

    cfg = small_config(model="qwen2.5-0.5b", workload__num_requests=40, engine__host_overhead_s=5e-4)
    eager, graph = sim.run(cfg), sim.run(cfg, engine__cuda_graphs=True)
    assert graph.summary()["tpot_s"]["p50"] < 0.8 * eager.summary()["tpot_s"]["p50"]
    stepped = sim.run(cfg, engine__cuda_graphs=True, fast_forward=False)
    assert graph.requests.equals(stepped.requests) and graph.iterations.equals(stepped.iterations)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_policies", ROOT / "bench" / "policies.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_policy_table_expected_orders_at_small_size():
    mod = _bench()
    rows = {r["policy"]: r for r in mod.measure(n=150, rate=12.0)}
    assert all(r["completed"] == 150 for r in rows.values())
    # continuous > static on throughput (output lengths vary)
    assert rows["orca"]["output_tok_per_s"] > rows["static"]["output_tok_per_s"]
    assert rows["vllm-v1"]["output_tok_per_s"] > rows["static"]["output_tok_per_s"]
    # paged > contiguous reservation on concurrency and throughput under memory pressure
    paged, contig = rows["vllm-v1"], rows["vllm-v1, contiguous KV"]
    assert paged["max_running"] > contig["max_running"]
    assert paged["output_tok_per_s"] > contig["output_tok_per_s"]
    # chunked prefill (small budget) lowers TPOT p99 versus prefill-first
    assert rows["sarathi-serve (512)"]["tpot_p99_s"] < rows["vllm-v0"]["tpot_p99_s"]
    assert rows["sarathi-serve (512)"]["itl_p99_s"] < rows["vllm-v0"]["itl_p99_s"]
    assert rows["vllm-v1, swap"]["swap_gb"] > 0
    assert "| static |" in mod.markdown(list(rows.values()))
