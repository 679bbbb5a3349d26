"""Preemption modes: what happens to a victim's KV cache when blocks run out.

Models: the two modes of vLLM (``PreemptionMode``):

- ``recompute``: the victim's blocks are freed and its computed tokens reset; it goes back
  to the waiting queue (at the head under FCFS) and later prefills its prompt plus the
  tokens it had generated again. vLLM v1 only recomputes; v0 recomputes single-sequence
  requests by default.
- ``swap``: the victim's KV (the blocks holding its computed tokens) is copied to host
  memory over PCIe (``HardwareProfile.pcie_bandwidth_bytes_per_s``) into a swap space of
  ``engine.swap_space_bytes`` (vLLM's ``--swap-space``, 4 GiB per GPU by default); it keeps
  its computed tokens and waits in a FIFO swapped queue, which is served before new
  prompts; when blocks are free again its KV is copied back and it resumes where it
  stopped. Copies are synchronous with the step (vLLM v0's ``swap_out``/``swap_in`` run
  before the model), so their time adds to the step's. When the swap space is full the
  victim is recomputed instead (vLLM v0 aborts the request; we keep it).

Which request is the victim is the queue order's choice (``sim.engine.queues``).

Ignores: copy/compute overlap, pinned-memory limits, CPU offload tiers beyond one swap space.
"""
from __future__ import annotations

from collections import deque

from sim.engine.request import RUNNING, SWAPPED, WAITING
from sim.registry import Registry

preemption_modes: Registry = Registry("preemption mode")


@preemption_modes.register("recompute")
class Recompute:
    """Free the victim's KV and requeue it to prefill again."""

    def __init__(self, **_):
        self.used_blocks = 0
        self.swapped: deque = deque()

    def evict(self, sched, r, plan, now: float) -> None:
        sched.kv.release(r)
        r.num_computed = 0
        r.state = WAITING
        sched.waiting.appendleft(r)

    def resume(self, sched, plan, budget: int, now: float) -> int:
        return budget

    def copy_s(self, plan) -> float:
        """Seconds of host<->GPU copies in a step (added to its time)."""
        return 0.0


@preemption_modes.register("swap")
class Swap(Recompute):
    """Copy the victim's KV to host memory; copy it back when it resumes."""

    def __init__(self, capacity_blocks: int = 0, bytes_per_block: float = 0.0,
                 bandwidth_bytes_per_s: float = float("inf"), **_):
        super().__init__()
        self.capacity_blocks = capacity_blocks
        self.bytes_per_block = bytes_per_block
        self.bandwidth_bytes_per_s = bandwidth_bytes_per_s

    def evict(self, sched, r, plan, now: float) -> None:
        n = sched.kv.blocks_for(r.num_computed)
        if n == 0 or self.used_blocks + n > self.capacity_blocks:
            super().evict(sched, r, plan, now)  # nothing to keep, or no host room: recompute
            return
        self.used_blocks += n
        r.swapped_blocks = n
        nbytes = n * self.bytes_per_block
        plan.swap_out_bytes += nbytes
        r.swap_bytes += nbytes
        sched.kv.release(r)
        r.state = SWAPPED
        self.swapped.append(r)

    def resume(self, sched, plan, budget: int, now: float) -> int:
        """Swap requests back in, FIFO, while budget, sequence slots and blocks allow."""
        q, kv = self.swapped, sched.kv
        while q and budget > 0 and len(sched.running) < sched.max_num_seqs:
            r = q[0]
            remaining = r.num_tokens - r.num_computed
            if remaining > budget and not sched.chunked:
                break
            n = remaining if remaining <= budget else budget
            if kv.extra_blocks(r, r.num_computed + n) + sched.watermark_blocks > kv.pool.num_free:
                break
            kv.grow(r, r.num_computed + n)
            q.popleft()
            self.used_blocks -= r.swapped_blocks
            nbytes = r.swapped_blocks * self.bytes_per_block
            plan.swap_in_bytes += nbytes
            r.swap_bytes += nbytes
            r.swapped_blocks = 0
            sched.start_running(r, now)
            plan.prefills.append((r, n))
            budget -= n
        return budget

    def copy_s(self, plan) -> float:
        nbytes = plan.swap_out_bytes + plan.swap_in_bytes
        return nbytes / self.bandwidth_bytes_per_s if nbytes else 0.0


__all__ = ["preemption_modes", "Recompute", "Swap", "RUNNING"]
