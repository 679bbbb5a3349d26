"""Build a replica by hand (no config) for exact engine tests."""
from __future__ import annotations

import simpy

from sim.cost.constant import ConstantCost
from sim.engine.replica import Replica
from sim.engine.request import FINISHED, REJECTED, Request
from sim.engine.scheduler import Scheduler
from sim.kv.block_pool import BlockPool
from sim.kv.manager import KVManager
from sim.metrics.records import Recorder


def drive(requests, *, num_blocks=64, block_size=16, max_num_seqs=8, max_num_batched_tokens=512,
          chunked=True, cost=None, fast_forward=True, check=True, max_model_len=10**9,
          batching="vllm-v1", scheduling_policy="fcfs", preemption="recompute", watermark_frac=0.0,
          kv_mode="paged", max_tokens=None, swap_blocks=0, swap_bytes_per_block=1.0, swap_bw=float("inf")):
    """Run ``requests`` [(arrival_s, prompt, output[, priority]), ...]; returns (recorder, scheduler, reqs)."""
    env = simpy.Environment()
    pool = BlockPool(num_blocks, block_size, prefix_caching=False)
    kv = KVManager(pool, contiguous=kv_mode == "contiguous", max_model_len=min(max_model_len, 10**9),
                   max_tokens=max_tokens)
    sched = Scheduler(kv, max_num_seqs, max_num_batched_tokens, chunked, batching=batching,
                      scheduling_policy=scheduling_policy, preemption=preemption, watermark_frac=watermark_frac,
                      swap_capacity_blocks=swap_blocks, swap_bytes_per_block=swap_bytes_per_block,
                      swap_bandwidth_bytes_per_s=swap_bw)
    rec = Recorder(num_blocks)
    rep = Replica(env, 0, sched, cost or ConstantCost(0.01), rec, max_model_len)
    rep.fast_forward = fast_forward
    if check:
        orig = sched.complete

        def complete(plan, now, on_finish):
            out = orig(plan, now, on_finish)
            sched.check()
            pool.check()
            return out
        sched.complete = complete
    reqs = [Request(i, t[0], t[1], t[2], priority=t[3] if len(t) > 3 else 0) for i, t in enumerate(requests)]

    def source():
        for r in sorted(reqs, key=lambda r: r.arrival_s):
            rep.horizon_s = r.arrival_s
            if r.arrival_s > env.now:
                yield env.timeout(r.arrival_s - env.now)
            rep.submit(r)
        rep.horizon_s = float("inf")
    env.process(source())
    env.run()
    return rec, sched, reqs


def assert_drained(rec, sched, out, num_blocks: int) -> None:
    """After a run: every request recorded, finished (in full, times in order) or rejected;
    every block free; no request left running or waiting."""
    assert rec.num_requests == len(out)
    for r in out:
        assert r.state in (FINISHED, REJECTED)
        if r.state == FINISHED:
            assert r.num_output == r.output_tokens and r.finish_s >= r.first_token_s >= r.arrival_s
    assert sched.kv.pool.num_free == num_blocks and not sched.running and not sched.waiting
