"""One serving replica as a simpy process: one event per engine iteration.

Models: an engine loop on one GPU (or one tensor-parallel group): schedule a batch, ask the
cost model for its step time, wait that long, apply the results, record the iteration.
It sleeps on an event when it has no work and is woken by ``submit()``. Requests that can
never run (longer than ``max_model_len`` or than the whole KV cache) are rejected at submit,
as an engine returns an error.

A step's time is the cost model's price of its batch shape plus the PCIe time of any KV
swaps it does (swap preemption copies synchronously, as vLLM v0 does).

Ignores: network and tokenizer time outside the engine, host/GPU overlap (async
scheduling), streaming detokenization.
"""
from __future__ import annotations

import heapq
from typing import Callable

import simpy

from sim.cost.base import BatchShape, CostModel, StepTime
from sim.engine.request import REJECTED, Request
from sim.engine.scheduler import Scheduler
from sim.metrics.records import Recorder


def timeout_at(env: simpy.Environment, when: float) -> simpy.Event:
    """An event that fires at absolute time ``when``.

    simpy only offers relative delays, and ``now + delay`` cannot always land exactly on a
    time that stepping reaches by adding step times one by one (rounding can skip it). A
    fast-forwarded run must end at exactly that time to stay bit-identical to stepping, so
    this schedules the event the way ``simpy.Timeout`` does, at the absolute time.
    """
    if when < env.now:
        raise ValueError(f"cannot schedule at {when} < now {env.now}")
    ev = simpy.Event(env)
    ev._ok = True
    ev._value = None
    heapq.heappush(env._queue, (when, simpy.core.NORMAL, next(env._eid), ev))
    return ev


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
        self.horizon_s = float("inf")  # no external submit() happens before this time (set by the source)
        self.fast_forward = True
        self.max_run_steps = 4096
        self._decode_step_fn = getattr(cost, "decode_step_fn", None)
        self.process = env.process(self._loop())

    # -- input -----------------------------------------------------------------------------
    def submit(self, r: Request) -> None:
        r.replica = self.index
        total = r.prompt_tokens + r.output_tokens
        if total > self.max_model_len or self.scheduler.never_fits(r):
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

    def _decode_run(self, k: int):
        """Fast-forward pure-decode steps with one simpy event.

        Steps are priced one by one (the decode context grows every step) and stop at the
        first step that would start at or after the next external arrival, so the result
        is the same as stepping: same step times (summed in the same order), same block
        ids, same records. A run that ends before that arrival (at a completion, or when
        blocks run short) is completed at its end time right away and, if the scheduler
        then has another pure-decode run (``decode_run_length``, on the same state stepping
        would see), the next run is planned from there, all in the same simpy event: nothing
        else can happen before the arrival. Not when completions call back into the source
        (a closed loop submits the client's next request at that time).
        """
        env, sched, rec = self.env, self.scheduler, self.recorder
        now = env.now
        chain = self.on_finish_cb is None
        while True:
            n = sched.num_decoding
            ctx0 = sched.decode_computed_sum + n
            if self._decode_step_fn is not None:
                price, fixed = self._decode_step_fn(n)
                parts = (fixed.gemm_s, fixed.other_s, fixed.host_s)
            else:  # a cost model without one: each step's StepTime from step_time
                cost = self.cost

                def price(c: int, n=n) -> StepTime:
                    return cost.step_time(BatchShape([], n, c, n))
                fixed, parts = price(ctx0), None
            starts, totals, attn, used, end = sched.decode_run_plan(k, price, parts, now, self.horizon_s)
            k = len(starts)
            rec.decode_run(self.index, starts, totals, attn, fixed, n, ctx0,
                           len(sched.running), len(sched.waiting), used)
            if not chain or end >= self.horizon_s:
                break
            sched.decode_run_complete(k, end, self._finished)
            now = end
            k = sched.decode_run_length(self.max_run_steps)
            if k < 2:
                yield timeout_at(env, end)
                return
        yield timeout_at(env, end)
        sched.decode_run_complete(k, env.now, self._finished)

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
            if self.fast_forward:
                k = sched.decode_run_length(self.max_run_steps)
                if k >= 2:
                    yield from self._decode_run(k)
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
            if plan.swap_s:  # synchronous KV copies over PCIe lengthen the step
                st = StepTime(st.total_s + plan.swap_s, st.gemm_s, st.attn_s, st.other_s, st.comm_s, st.host_s)
            yield env.timeout(st.total_s)
            sched.complete(plan, env.now, finished)
            rec.iteration(self.index, start, st, plan.shape, num_running, num_waiting,
                          kv_used, len(plan.preempted), plan.swap_out_bytes + plan.swap_in_bytes, plan.swap_s,
                          plan.num_itl_tokens)
