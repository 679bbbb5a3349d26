"""Build a replica by hand (no config) for exact engine tests."""
from __future__ import annotations

import simpy

from sim.cost.constant import ConstantCost
from sim.engine.replica import Replica
from sim.engine.request import Request
from sim.engine.scheduler import Scheduler
from sim.kv.block_pool import BlockPool
from sim.kv.manager import KVManager
from sim.metrics.records import Recorder


def drive(requests, *, num_blocks=64, block_size=16, max_num_seqs=8, max_num_batched_tokens=512,
          chunked=True, cost=None, fast_forward=True, check=True, max_model_len=10**9):
    """Run ``requests`` [(arrival_s, prompt, output), ...]; returns (recorder, scheduler, reqs)."""
    env = simpy.Environment()
    pool = BlockPool(num_blocks, block_size, prefix_caching=False)
    sched = Scheduler(KVManager(pool), max_num_seqs, max_num_batched_tokens, chunked)
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
    reqs = [Request(i, t, p, o) for i, (t, p, o) in enumerate(requests)]

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
