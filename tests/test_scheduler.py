"""Exact engine scenarios with a constant 10 ms step."""
import pytest

from sim.engine.request import FINISHED, REJECTED
from tests.engine_helpers import drive


def test_two_requests_hand_computed():
    rec, sched, (a, b) = drive([(0.0, 32, 3), (0.005, 16, 2)], max_num_batched_tokens=64)
    it = rec.iterations_frame()
    assert list(it["num_prefill_tokens"]) == [32, 16, 0]
    assert list(it["num_decode"]) == [0, 1, 2]
    assert a.first_token_s == pytest.approx(0.01) and a.finish_s == pytest.approx(0.03)
    assert b.first_token_s == pytest.approx(0.02) and b.finish_s == pytest.approx(0.03)
    req = rec.requests_frame().set_index("request_id")
    assert req.loc[0, "tpot_s"] == pytest.approx(0.01) and req.loc[1, "ttft_s"] == pytest.approx(0.015)
    assert req.loc[0, "scheduled_s"] == 0.0 and req.loc[1, "scheduled_s"] == pytest.approx(0.01)


def test_chunked_prefill_splits_long_prompt():
    rec, _, (a,) = drive([(0.0, 100, 2)], max_num_batched_tokens=64, max_num_seqs=4)
    it = rec.iterations_frame()
    assert list(it["num_prefill_tokens"]) == [64, 36, 0]
    assert a.first_token_s == pytest.approx(0.02) and a.finish_s == pytest.approx(0.03)


def test_without_chunking_a_prompt_over_budget_is_rejected_and_others_run():
    rec, _, (a, b) = drive([(0.0, 100, 2), (0.0, 10, 1)], max_num_batched_tokens=64, chunked=False)
    assert a.state == REJECTED and b.state == FINISHED
    assert rec.requests_frame()["rejected"].tolist() == [True, False]


def test_decode_first_and_budget_shared_with_prefill():
    # a long decode is running when a long prompt arrives: the decode keeps its token, the
    # prompt gets the rest of the budget (mixed batch), as in vLLM v1
    rec, _, _ = drive([(0.0, 8, 6), (0.015, 200, 1)], max_num_batched_tokens=64, fast_forward=False)
    it = rec.iterations_frame()
    mixed = it[(it.num_decode == 1) & (it.num_prefill_tokens > 0)]
    assert list(mixed["num_prefill_tokens"])[:3] == [63, 63, 63]


def test_max_num_seqs_caps_the_batch():
    rec, _, reqs = drive([(0.0, 10, 20)] * 5, max_num_seqs=2)
    assert rec.iterations_frame()["num_running"].max() == 2
    assert all(r.state == FINISHED for r in reqs)


def test_preemption_by_recompute_when_blocks_run_out():
    # 4 blocks of 16 tokens = 64 tokens; two requests each growing to 50 tokens
    rec, sched, (a, b) = drive([(0.0, 30, 20), (0.0, 30, 20)], num_blocks=4, max_num_batched_tokens=128)
    assert a.state == FINISHED and b.state == FINISHED
    assert b.num_preemptions >= 1 and a.num_preemptions == 0  # the later-admitted one is the victim
    assert sched.num_preemptions == b.num_preemptions
    assert b.num_output == 20 and rec.requests_frame()["num_preemptions"].sum() == b.num_preemptions
    # b's tokens: 0.01, 0.02, 0.03, preempted at 0.03, recomputed and sampled at 0.21: the gap
    # runs from its last token, not from its first
    assert rec.extra_itl_s == pytest.approx([0.18])
    assert sched.kv.pool.num_free == 4


def test_request_longer_than_cache_is_rejected():
    _, _, (a, b) = drive([(0.0, 60, 10), (0.0, 10, 10)], num_blocks=4)
    assert a.state == REJECTED and b.state == FINISHED


def test_max_model_len_rejects():
    _, _, (a,) = drive([(0.0, 60, 10)], max_model_len=64)
    assert a.state == REJECTED
