"""Token-budget scheduler with vLLM v1 semantics.

Models: each step, running requests first (decodes, then unfinished prefills in admission
order), then waiting requests in queue order, each given up to its remaining tokens under
``max_num_batched_tokens`` and ``max_num_seqs``; prefill chunked to the budget when
``enable_chunked_prefill``; KV blocks allocated as tokens are scheduled; when blocks run
out, the most recently admitted running request is preempted by recompute (its blocks
freed, its computed tokens reset, put back at the head of the queue), as vLLM v1 does.
No request is admitted in a step that preempted.

Steady decode is bookkept in O(1) per step: a decoding request's computed tokens are
``decode_offset + step``; requests needing a new block at a step are found by the residue
of their offset modulo the block size; completions sit in a heap keyed by step. A step
costs O(prefills + completions + block-boundary crossings), not O(batch).

Ignores: speculative tokens, encoder inputs, structured-output masks, swap preemption
and other queue orders (engine policies issue), prefix caching.
"""
from __future__ import annotations

import heapq
from collections import deque

from sim.cost.base import BatchShape
from sim.engine.request import FINISHED, REJECTED, RUNNING, WAITING, Request
from sim.kv.manager import KVManager


class StepPlan:
    """What one step computes: prefill entries (request, new tokens) and the decode set size."""

    __slots__ = ("prefills", "num_decode", "decode_context_sum", "shape", "preempted")

    def __init__(self):
        self.prefills: list[tuple[Request, int]] = []
        self.num_decode = 0
        self.decode_context_sum = 0
        self.preempted: list[Request] = []
        self.shape: BatchShape | None = None


class Scheduler:
    """Continuous batching over one replica's KV cache."""

    def __init__(self, kv: KVManager, max_num_seqs: int, max_num_batched_tokens: int,
                 enable_chunked_prefill: bool = True):
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs (as vLLM requires)")
        self.kv = kv
        self.bs = kv.block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.chunked = enable_chunked_prefill
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}     # admission order
        self.prefilling: dict[int, Request] = {}  # running requests not in steady decode
        self.buckets: list[dict[int, Request]] = [dict() for _ in range(self.bs)]
        self.num_decoding = 0
        self.decode_computed_sum = 0  # sum of num_computed over steady-decode requests
        self.step = 0
        self._finish_heap: list[tuple[int, int, Request]] = []
        self.num_preemptions = 0

    # -- bookkeeping of the steady-decode set --------------------------------------------
    def _enter_decode(self, r: Request) -> None:
        r.decode_offset = r.num_computed - self.step
        b = r.decode_offset % self.bs
        r.decode_bucket = b
        self.buckets[b][r.id] = r
        self.num_decoding += 1
        self.decode_computed_sum += r.num_computed
        r.finish_step = self.step + (r.output_tokens - r.num_output)
        heapq.heappush(self._finish_heap, (r.finish_step, r.id, r))

    def _leave_decode(self, r: Request) -> None:
        """Materialise a steady-decode request's counters and take it out of the set."""
        c = r.decode_offset + self.step
        r.num_output = r.output_tokens - (r.finish_step - self.step)
        r.num_computed = c
        del self.buckets[r.decode_bucket][r.id]
        r.decode_bucket = -1
        r.finish_step = -1
        self.num_decoding -= 1
        self.decode_computed_sum -= c

    def add(self, r: Request) -> None:
        r.state = WAITING
        self.waiting.append(r)

    def has_work(self) -> bool:
        return bool(self.running) or bool(self.waiting)

    # -- preemption ----------------------------------------------------------------------
    def _preempt_last(self, plan: StepPlan) -> Request:
        victim = self.running[next(reversed(self.running))]
        if victim.decode_bucket >= 0:
            self._leave_decode(victim)
        else:
            del self.prefilling[victim.id]
        del self.running[victim.id]
        self.kv.release(victim)
        victim.num_computed = 0
        victim.num_preemptions += 1
        victim.state = WAITING
        self.waiting.appendleft(victim)
        self.num_preemptions += 1
        plan.preempted.append(victim)
        return victim

    # -- one step ------------------------------------------------------------------------
    def schedule(self, now: float = 0.0) -> StepPlan:
        plan = StepPlan()
        pool = self.kv.pool
        budget = self.max_num_batched_tokens
        # 1. steady decodes: one token each; those crossing a block boundary need a block
        crossing = self.buckets[(-self.step) % self.bs]
        while len(crossing) > pool.num_free:
            self._preempt_last(plan)
        for r in crossing.values():
            r.blocks.append(pool.allocate_one())
        plan.num_decode = self.num_decoding
        plan.decode_context_sum = self.decode_computed_sum + self.num_decoding
        budget -= self.num_decoding
        # 2. running requests still prefilling (chunked, or resumed), in admission order
        for r in list(self.prefilling.values()):
            if r.state != RUNNING or budget <= 0:
                continue
            remaining = r.num_tokens - r.num_computed
            n = remaining if remaining <= budget else budget
            while not self.kv.grow(r, r.num_computed + n):
                victim = self._preempt_last(plan)
                if victim is r:
                    n = 0
                    break
            if n:
                plan.prefills.append((r, n))
                budget -= n
        if plan.preempted:  # a decode admitted after a prefilling request may have been a victim
            plan.num_decode = self.num_decoding
            plan.decode_context_sum = self.decode_computed_sum + self.num_decoding
        # 3. waiting requests, if nothing was preempted this step
        if not plan.preempted:
            waiting = self.waiting
            while waiting and budget > 0 and len(self.running) < self.max_num_seqs:
                r = waiting[0]
                remaining = r.num_tokens - r.num_computed
                if remaining > budget and not self.chunked:
                    break
                n = remaining if remaining <= budget else budget
                if not self.kv.grow(r, r.num_computed + n):
                    break
                waiting.popleft()
                r.state = RUNNING
                if r.scheduled_s < 0:
                    r.scheduled_s = now
                self.running[r.id] = r
                self.prefilling[r.id] = r
                plan.prefills.append((r, n))
                budget -= n
        sampled = plan.num_decode
        chunks = []
        for r, n in plan.prefills:
            chunks.append((n, r.num_computed))
            if r.num_computed + n == r.num_tokens:
                sampled += 1
        plan.shape = BatchShape(chunks, plan.num_decode, plan.decode_context_sum, sampled)
        return plan

    def complete(self, plan: StepPlan, now: float, on_finish) -> int:
        """Apply a step's results at time ``now``; returns the number of decode tokens emitted."""
        self.step += 1
        self.decode_computed_sum += self.num_decoding
        # steady decodes that reached their last token
        heap = self._finish_heap
        while heap and heap[0][0] <= self.step:
            fs, _, r = heapq.heappop(heap)
            if r.finish_step != fs or r.decode_bucket < 0:
                continue  # stale entry (preempted since)
            self._leave_decode(r)
            self._finish(r, now, on_finish)
        # prefills (and resumed requests)
        for r, n in plan.prefills:
            if r.state != RUNNING:
                continue
            r.num_computed += n
            if r.num_computed == r.num_tokens:
                r.num_output += 1
                if r.first_token_s < 0:
                    r.first_token_s = now
                elif r.last_token_s >= 0:
                    if r.extra_itl_s is None:
                        r.extra_itl_s = []
                    r.extra_itl_s.append(now - r.last_token_s)
                r.last_token_s = now
                del self.prefilling[r.id]
                if r.num_output >= r.output_tokens:
                    self._finish(r, now, on_finish)
                else:
                    self._enter_decode(r)
        return plan.num_decode

    def _finish(self, r: Request, now: float, on_finish) -> None:
        del self.running[r.id]
        self.kv.release(r)
        r.state = FINISHED
        r.finish_s = now
        r.last_token_s = now
        on_finish(r)

    # -- fast-forward of pure decode runs ------------------------------------------------
    def decode_run_length(self, limit: int) -> int:
        """How many next steps are pure steady decode with nothing else able to happen.

        Such a run has no prefill, no admission (queue empty, or the sequence cap reached),
        no preemption (the blocks it needs fit in the free pool) and at most one completion
        point, its last step. The caller bounds it further by the next external arrival.
        """
        if self.prefilling or not self.num_decoding:
            return 0
        if self.waiting and len(self.running) < self.max_num_seqs and not self._head_blocked():
            return 0
        heap = self._finish_heap
        while heap and (heap[0][2].finish_step != heap[0][0] or heap[0][2].decode_bucket < 0):
            heapq.heappop(heap)
        k = min(limit, heap[0][0] - self.step) if heap else limit
        free, cum, bs, buckets, s = self.kv.pool.num_free, 0, self.bs, self.buckets, self.step
        for j in range(k):
            c = len(buckets[(-(s + j)) % bs])
            if cum + c > free:
                return j
            cum += c
        return k

    def _head_blocked(self) -> bool:
        """The queue head cannot be admitted for lack of blocks (and free blocks only shrink
        during a decode run, so it stays blocked until something finishes)."""
        r = self.waiting[0]
        budget = self.max_num_batched_tokens - self.num_decoding
        if budget <= 0:
            return True
        remaining = r.num_tokens - r.num_computed
        if remaining > budget and not self.chunked:
            return True
        n = remaining if remaining <= budget else budget
        return self.kv.extra_blocks(r, r.num_computed + n) > self.kv.pool.num_free

    def decode_run_allocate(self, k: int) -> list[int]:
        """Allocate the blocks of a k-step decode run, in stepping order; used blocks after each step."""
        pool, bs, buckets, s = self.kv.pool, self.bs, self.buckets, self.step
        order: list[Request] = []
        used = []
        used_now = pool.num_used
        for j in range(k):
            bucket = buckets[(-(s + j)) % bs]
            if bucket:
                order.extend(bucket.values())
                used_now += len(bucket)
            used.append(used_now)
        if order:
            for r, b in zip(order, pool.allocate(len(order))):
                r.blocks.append(b)
        return used

    def decode_run_complete(self, k: int, now: float, on_finish) -> None:
        """Apply a k-step decode run ending at ``now`` (completions happen at its last step)."""
        self.step += k - 1
        self.decode_computed_sum += self.num_decoding * (k - 1)
        plan = StepPlan()
        self.complete(plan, now, on_finish)

    # -- invariants for tests ------------------------------------------------------------
    def check(self) -> None:
        pool = self.kv.pool
        held = sum(len(r.blocks) for r in self.running.values())
        assert held == pool.num_used, (held, pool.num_used)
        for r in self.running.values():
            c = r.decode_offset + self.step if r.decode_bucket >= 0 else r.num_computed
            assert 0 <= c <= r.num_tokens if r.decode_bucket < 0 else c < r.prompt_tokens + r.output_tokens
            assert len(r.blocks) * self.bs >= c
        assert all(r.state == WAITING and not r.blocks for r in self.waiting)
        assert len(self.running) <= self.max_num_seqs


__all__ = ["Scheduler", "StepPlan", "REJECTED"]
