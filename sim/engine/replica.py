"""One serving replica as a simpy process: one event per engine iteration.

Models: an engine loop on one GPU (or one tensor-parallel group): schedule a batch, ask the
cost model for its step time, wait that long, apply the results, record the iteration.
It sleeps on an event when it has no work and is woken by ``submit()``. Requests that can
never run (longer than ``max_model_len`` or than the whole KV cache) are rejected at submit,
as an engine returns an error.

A step's time is the cost model's price of its batch shape plus the PCIe time of any KV
swaps it does (swap preemption copies synchronously, as vLLM v0 does).

In a cluster of several replicas the next arrival a replica will get is unknown (a router
decides at arrival time), so a fast-forwarded decode run is planned past it and is
*interruptible*: a request routed to the replica at time t cuts the run after the steps that
started before t (they are committed: records, blocks, counters), gives back the blocks of
the steps it did not run, and the replica resumes at the end of the step in progress, as
stepping would. Run chaining (completing a run and planning the next inside one event) stops
at the next external arrival anywhere in the cluster (``clock.next_s``).

The replica keeps its ``ReplicaView`` (sim.cluster.views) current: unfinished requests at
submit and finish, and, when the router reads KV use, the KV blocks of each step (a run
publishes its whole trajectory) and the prompt tokens not yet scheduled.

Ignores: network and tokenizer time outside the engine, host/GPU overlap (async
scheduling), streaming detokenization.
"""
from __future__ import annotations

import heapq
from bisect import bisect_left
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


class Intake:
    """What every kind of replica does with a request it is given and one it finishes: reject
    what can never run (as an engine returns an error), else queue it; record finished
    requests; keep the router's view (``view``) and the source's callback informed. Uses
    ``env``, ``index``, ``recorder``, ``max_model_len``, ``view`` and ``on_finish_cb``."""

    def _accept(self, r: Request, sched: Scheduler) -> bool:
        """Queue ``r`` on ``sched``; False (and ``r`` recorded as rejected) if it can never run."""
        r.replica = self.index
        if r.prompt_tokens + r.output_tokens > self.max_model_len or sched.never_fits(r):
            r.state = REJECTED
            r.finish_s = self.env.now
            self.recorder.request_done(r)
            if self.on_finish_cb:
                self.on_finish_cb(r)
            return False
        sched.add(r)
        view = self.view
        if view is not None:
            view.num_outstanding += 1
            view.queued_tokens += r.prompt_tokens
            view.changed()
        return True

    def _finished(self, r: Request) -> None:
        self.recorder.request_done(r)
        view = self.view
        if view is not None:
            view.num_outstanding -= 1
            view.changed()
        if self.on_finish_cb:
            self.on_finish_cb(r)


class Replica(Intake):
    """A replica: scheduler + KV cache + cost model, driven by a simpy process."""

    def __init__(self, env: simpy.Environment, index: int, scheduler: Scheduler, cost: CostModel,
                 recorder: Recorder, max_model_len: int,
                 on_finish: Callable[[Request], None] | None = None, view=None, clock=None,
                 interruptible: bool = False):
        """``view``: the router's view of this replica (None: no router); ``clock``: an object
        whose ``next_s`` is the next external arrival anywhere (None: ``horizon_s`` is);
        ``interruptible``: plan decode runs past ``horizon_s`` and cut them at a submit."""
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
        self.view = view
        self.clock = clock
        self.interruptible = interruptible
        self._run = None   # the decode run being waited on, while it can be cut
        self._cut = 0      # steps of that run to keep when a submit cuts it
        self.process = env.process(self._loop())

    # -- input -----------------------------------------------------------------------------
    def submit(self, r: Request) -> None:
        if not self._accept(r, self.scheduler):
            return
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()
        elif self._run is not None:
            self._cut_run(self.env.now)

    def _cut_run(self, now: float) -> None:
        """A submit at ``now`` during an interruptible decode run: keep the steps that started
        before ``now`` and wake the run's process to commit them."""
        starts = self._run[0]
        cut = bisect_left(starts, now)
        if cut < len(starts):
            self._cut = cut
            self._run = None
            self.process.interrupt()

    def _decode_run(self, k: int):
        """Fast-forward pure-decode steps with one simpy event.

        Steps are priced one by one (the decode context grows every step) and stop at the
        first step that would start at or after ``horizon_s`` (the next external arrival of a
        lone replica), so the result is the same as stepping: same step times (summed in the
        same order), same block counts, same records. A run that ends before the next external
        arrival anywhere (at a completion, or when blocks run short) is completed at its end
        time right away and, if the scheduler then has another pure-decode run
        (``decode_run_length``, on the same state stepping would see), the next run is planned
        from there, all in the same simpy event: nothing else can happen before the arrival.
        Not when completions call back into the source (a closed loop submits the client's
        next request at that time). An interruptible replica's last run may be cut by a
        submit (``_cut_run``).
        """
        env, sched, rec = self.env, self.scheduler, self.recorder
        now = env.now
        chain = self.on_finish_cb is None
        clock = self.clock
        view = self.view
        track = view is not None and view.track_steps
        cuttable = self.interruptible
        used0 = 0
        while True:
            n = sched.num_decoding
            ctx0 = sched.decode_computed_sum + n
            if self._decode_step_fn is not None:
                price, fixed = self._decode_step_fn(n)
                comm = fixed.comm_s
                parts = (fixed.gemm_s, fixed.other_s + comm if comm else fixed.other_s, fixed.host_s)
            else:  # a cost model without one: each step's StepTime from step_time
                cost = self.cost

                def price(c: int, cmax: int = 0, n=n) -> StepTime:
                    return cost.step_time(BatchShape([], n, c, n, cmax))
                fixed, parts = price(ctx0), None
            if clock is None:  # a lone replica: plan and chain up to its next arrival
                starts, totals, attn, used, end = sched.decode_run_plan(k, price, parts, now, self.horizon_s)
                k = len(starts)
                if not chain or end >= self.horizon_s:
                    break
            else:
                if cuttable:
                    used0 = sched.kv.pool.num_used
                starts, totals, attn, used, end = sched.decode_run_plan(k, price, parts, now,
                                                                        now + clock.lookahead_s)
                k = len(starts)
                if not chain or end >= clock.next_s:
                    break
            rec.decode_run(self.index, starts, totals, attn, fixed, n, ctx0,
                           len(sched.running), len(sched.waiting), used)
            sched.decode_run_complete(k, end, self._finished)
            now = end
            k = sched.decode_run_length(self.max_run_steps)
            if k < 2:
                if track:
                    view.publish(sched.kv.pool.num_used, (), ())
                    view.changed()
                yield timeout_at(env, end)
                return
        if not cuttable:
            rec.decode_run(self.index, starts, totals, attn, fixed, n, ctx0, len(sched.running), len(sched.waiting),
                           used)
            yield timeout_at(env, end)
            sched.decode_run_complete(k, env.now, self._finished)
            return
        run = (n, ctx0, len(sched.running), len(sched.waiting))
        if track:
            view.publish(used0, starts, used)
        self._run = (starts,)
        try:
            yield timeout_at(env, end)
        except simpy.Interrupt:  # a submit cut the run (_cut_run): keep the steps started before it
            cut = self._cut
            sched.decode_run_truncate(k, cut, used, used0)
            if cut:
                rec.decode_run(self.index, starts[:cut], totals[:cut], attn[:cut], fixed, n, ctx0,
                               run[2], run[3], used[:cut])
                sched.decode_run_complete(cut, starts[cut], self._finished)
                if track:
                    view.publish(used0, starts[:cut], used[:cut])
                    view.changed()
                yield timeout_at(env, starts[cut])  # the end of the step in progress
            elif track:
                view.publish(used0, (), ())
                view.changed()
            return
        self._run = None
        rec.decode_run(self.index, starts, totals, attn, fixed, n, ctx0, run[2], run[3], used)
        sched.decode_run_complete(k, env.now, self._finished)
        if track:
            view.publish(sched.kv.pool.num_used, (), ())
            view.changed()

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
            view = self.view
            if view is not None and view.track_steps:
                for r, _ in plan.prefills:
                    if r.scheduled_s == start and not r.num_computed and not r.num_preemptions:
                        view.queued_tokens -= r.prompt_tokens  # scheduled for the first time
                view.publish(kv_used, (start,), (kv_used,))
            if plan.swap_s:  # synchronous KV copies over PCIe lengthen the step
                st = StepTime(st.total_s + plan.swap_s, st.gemm_s, st.attn_s, st.other_s, st.comm_s, st.host_s)
            yield env.timeout(st.total_s)
            sched.complete(plan, env.now, finished)
            rec.iteration(self.index, start, st, plan.shape, num_running, num_waiting,
                          kv_used, len(plan.preempted), plan.swap_out_bytes + plan.swap_in_bytes, plan.swap_s,
                          plan.num_itl_tokens)
            if view is not None and view.track_steps:
                view.publish(pool.num_used, (), ())
                view.changed()
