"""A pipeline-parallel replica: ``pp`` stages on their own GPUs, ``pp`` micro-batches in flight.

Models: vLLM's virtual engines (v0 pipeline parallelism): the replica runs ``pp`` schedulers,
each over ``1/pp`` of the replica's KV blocks (vLLM's Scheduler divides ``num_gpu_blocks`` by
the pipeline size) and its own requests; a new request goes to the virtual engine with the
fewest unfinished requests (vLLM's ``LLMEngine.add_request``), ties to the lowest index. A
virtual engine schedules a step, and the step's micro-batch passes the stages in order: stage
s starts it when the previous stage has sent its activations (``ParallelCost.p2p_s``) and the
stage is free (stages serve micro-batches first come, first served); a stage's time is its
layers' time with its TP communication (``ParallelCost.stage_times``); the step's host time
runs before the first stage and occupies no stage. The virtual engine's step ends when the last stage
finishes, then it schedules its next step. One simpy event per micro-batch.

Records: ``step_s`` is the micro-batch's latency through the pipe (a virtual engine's period,
so also its requests' inter-token gap); the breakdown columns sum the stages' parts;
``bubble_s`` is the idle time of the stages this micro-batch found (the sum over stages of the
gap between the previous micro-batch leaving a stage and this one entering it), so a pipeline
that is not kept full shows its bubbles; ``kv_used_blocks`` is the whole replica's.

Ignores: fast-forward (every micro-batch is stepped), CUDA graphs (refused at build time),
swap preemption's PCIe time (it is added to the micro-batch's latency, not to a stage),
vLLM v1's single-scheduler pipelining (async scheduling with up to pp batches in flight).
"""
from __future__ import annotations

from sim.config import ConfigError
from sim.cost.base import StepTime
from sim.engine.build import build_engine
from sim.engine.replica import Intake
from sim.engine.request import Request


class PipelineReplica(Intake):
    """``pp`` virtual engines over ``pp`` pipeline stages (see module doc)."""

    def __init__(self, env, index: int, engine, model, hw, layout, cost, recorder, max_model_len: int,
                 on_finish=None, view=None):
        if engine.cuda_graphs:
            raise ConfigError("engine.cuda_graphs", "CUDA graphs with pipeline parallelism (pp > 1) are not "
                                                    "modelled; set cuda_graphs: false or pp: 1")
        self.env = env
        self.index = index
        self.pp = layout.pp
        self.cost = cost
        self.recorder = recorder
        self.max_model_len = max_model_len
        self.on_finish_cb = on_finish
        self.view = view
        blocks = layout.kv_blocks // self.pp
        self.schedulers = []
        for _ in range(self.pp):
            sched, _, info = build_engine(engine, model, hw, blocks, cost, max_model_len)
            self.schedulers.append(sched)
        self.engine_info = {**info, "virtual_engines": self.pp, "kv_blocks_per_virtual_engine": blocks}
        self.stage_free = [None] * self.pp  # when each stage finishes its last micro-batch
        self._wake = [None] * self.pp
        self.processes = [env.process(self._loop(v)) for v in range(self.pp)]

    @property
    def scheduler(self):
        return self.schedulers[0]

    def _kv_used(self) -> int:
        return sum(s.kv.pool.num_used for s in self.schedulers)

    def submit(self, r: Request) -> None:
        v = min(range(self.pp), key=lambda i: (len(self.schedulers[i].running) + len(self.schedulers[i].waiting)
                                              + len(self.schedulers[i].swapped), i))
        if not self._accept(r, self.schedulers[v]):
            return
        w = self._wake[v]
        if w is not None and not w.triggered:
            w.succeed()

    def pipe(self, now: float, stages: list[StepTime], p2p_s: float) -> tuple[float, float]:
        """Pass one micro-batch scheduled at ``now`` through the stages: (its end time, the
        stage idle time it found); updates when each stage is next free. The step's host time
        comes first and occupies no stage (the driver prepares it while the stages run other
        micro-batches)."""
        bubble, free = 0.0, self.stage_free
        t = now + sum(st.host_s for st in stages)
        last = self.pp - 1
        for s, st in enumerate(stages):
            f = free[s]
            enter = t if f is None or t >= f else f
            if f is not None and enter > f:
                bubble += enter - f
            free[s] = end = enter + (st.gemm_s + st.attn_s + st.other_s + st.comm_s)
            t = end + p2p_s if s < last else end
        return t, bubble

    def _loop(self, v: int):
        env, sched, cost, rec = self.env, self.schedulers[v], self.cost, self.recorder
        finished = self._finished
        while True:
            if not sched.has_work():
                self._wake[v] = env.event()
                yield self._wake[v]
                self._wake[v] = None
                continue
            plan = sched.schedule(env.now)
            if not plan.prefills and not plan.num_decode:
                raise RuntimeError(f"replica {self.index} virtual engine {v}: scheduler made no progress "
                                   f"(waiting={len(sched.waiting)}, running={len(sched.running)})")
            start = env.now
            stages = cost.stage_times(plan.shape)
            p2p = cost.p2p_s(plan.shape)
            end, bubble = self.pipe(start, stages, p2p)
            end += plan.swap_s
            kv_used = self._kv_used()
            num_running, num_waiting = len(sched.running), len(sched.waiting)
            view = self.view
            if view is not None and view.track_steps:
                for r, _ in plan.prefills:
                    if r.scheduled_s == start and not r.num_computed and not r.num_preemptions:
                        view.queued_tokens -= r.prompt_tokens
                view.publish(kv_used, (start,), (kv_used,))
            gemm = sum(st.gemm_s for st in stages)
            attn = sum(st.attn_s for st in stages)
            other = sum(st.other_s for st in stages)
            comm = sum(st.comm_s for st in stages) + (self.pp - 1) * p2p
            host = sum(st.host_s for st in stages)
            st = StepTime(end - start, gemm, attn, other, comm, host)
            yield env.timeout(end - start)
            sched.complete(plan, env.now, finished)
            rec.iteration(self.index, start, st, plan.shape, num_running, num_waiting, kv_used,
                          len(plan.preempted), plan.swap_out_bytes + plan.swap_in_bytes, plan.swap_s,
                          plan.num_itl_tokens, bubble_s=bubble)
            if view is not None and view.track_steps:
                u = self._kv_used()
                view.publish(u, (), ())
                view.changed()
