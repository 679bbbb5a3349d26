"""One serving replica as a simpy process: one event per engine iteration.

Models: an engine loop on one GPU (or one tensor-parallel group): schedule a batch, ask the
cost model for its step time, wait that long, apply the results, record the iteration.
It sleeps on an event when it has no work and is woken by ``submit()``. Requests that can
never run (longer than ``max_model_len`` or than the whole KV cache) are rejected at submit,
as an engine returns an error.

Ignores: network and tokenizer time outside the engine, host/GPU overlap (async
scheduling), streaming detokenization.
"""
from __future__ import annotations

from typing import Callable

import simpy

from sim.cost.base import CostModel
from sim.engine.request import REJECTED, Request
from sim.engine.scheduler import Scheduler
from sim.metrics.records import Recorder


class Replica:
    """A replica: scheduler + KV cache + cost model, driven by a simpy process."""

    def __init__(self, env: simpy.Environment, index: int, scheduler: Scheduler, cost: CostModel,
                 recorder: Recorder, max_model_len: int,
                 on_finish: Callable[[Request], None] | None = None):
        self.env = env
        self.index = index
        self.scheduler = scheduler
        self.cost = cost
        self.recorder = recorder
        self.max_model_len = max_model_len
        self.capacity_tokens = scheduler.kv.pool.num_blocks * scheduler.kv.block_size
        self.on_finish_cb = on_finish
        self._wake: simpy.Event | None = None
        self.process = env.process(self._loop())

    # -- input -----------------------------------------------------------------------------
    def submit(self, r: Request) -> None:
        r.replica = self.index
        total = r.prompt_tokens + r.output_tokens
        if total > self.max_model_len or total > self.capacity_tokens or (
                not self.scheduler.chunked and total > self.scheduler.max_num_batched_tokens):
            r.state = REJECTED
            r.finish_s = self.env.now
            self.recorder.request_done(r)
            if self.on_finish_cb:
                self.on_finish_cb(r)
            return
        self.scheduler.add(r)
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _finished(self, r: Request) -> None:
        self.recorder.request_done(r)
        if self.on_finish_cb:
            self.on_finish_cb(r)

    # -- the engine loop -------------------------------------------------------------------
    def _loop(self):
        env, sched, cost, rec = self.env, self.scheduler, self.cost, self.recorder
        pool = sched.kv.pool
        finished = self._finished
        while True:
            if not sched.has_work():
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
            plan = sched.schedule(env.now)
            if not plan.prefills and not plan.num_decode:
                # nothing fits (e.g. all blocks held by waiting-for-memory state): should not
                # happen after submit-time checks; fail loudly rather than spin
                raise RuntimeError(f"replica {self.index}: scheduler made no progress "
                                   f"(waiting={len(sched.waiting)}, running={len(sched.running)}, "
                                   f"free_blocks={pool.num_free})")
            st = cost.step_time(plan.shape)
            start = env.now
            kv_used = pool.num_used
            num_running, num_waiting = len(sched.running), len(sched.waiting)
            yield env.timeout(st.total_s)
            sched.complete(plan, env.now, finished)
            rec.iteration(self.index, start, st, plan.shape, num_running, num_waiting,
                          kv_used, len(plan.preempted))
