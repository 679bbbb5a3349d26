"""Token-budget scheduler core (vLLM v1 semantics) configured by named policies.

Models: each step assigns tokens to requests under ``max_num_batched_tokens`` and
``max_num_seqs``; a request's computed tokens catch up with its tokens. The default
(``vllm-v1``) step: running requests first (decodes, then unfinished prefills in admission
order), then swapped-out requests (swap mode), then waiting requests in queue order, each
given up to its remaining tokens; prefill chunked to the budget when chunking is on; KV
blocks allocated as tokens are scheduled; when blocks run out, the queue order's victim is
preempted (recompute or swap), and no request is admitted in a step that preempted.
The other batching policies (``sim.engine.batching``) change which stages a step runs:
prefill-first steps (vLLM v0), whole-batch admission with padded rows (static), no
chunking (Orca). Admission keeps ``watermark_blocks`` free (vLLM v0's watermark).

Steady decode is bookkept in O(1) per step: a decoding request's computed tokens are
``decode_offset + step`` (``step`` counts steps that ran the decodes); requests needing a
new block at a step are found by the residue of their offset modulo the block size (a
contiguous reservation never needs one: it sits in an extra bucket that is never crossed);
completions sit in a heap keyed by step. A step costs O(prefills + completions +
block-boundary crossings), not O(batch).

Ignores: speculative tokens, encoder inputs, structured-output masks, prefix caching.
"""
from __future__ import annotations

import heapq

from sim.cost.base import BatchShape
from sim.engine.batching import batching_policies
from sim.engine.fast_forward import FastForwardMixin
from sim.engine.preemption import preemption_modes
from sim.engine.queues import queue_orders
from sim.engine.request import FINISHED, REJECTED, RUNNING, SWAPPED, WAITING, Request
from sim.kv.manager import KVManager


class StepPlan:
    """What one step computes: prefill entries (request, new tokens) and the decode set size."""

    __slots__ = ("prefills", "num_decode", "decode_context_sum", "shape", "preempted", "run_decode",
                 "swap_out_bytes", "swap_in_bytes", "swap_s", "late")

    def __init__(self):
        self.prefills: list[tuple[Request, int]] = []
        self.num_decode = 0
        self.decode_context_sum = 0
        self.preempted: list[Request] = []
        self.shape: BatchShape | None = None
        self.run_decode = True  # False: a prefill-only step (vLLM v0); decodes do not advance
        self.swap_out_bytes = 0.0
        self.swap_in_bytes = 0.0
        self.swap_s = 0.0  # PCIe copy time of the swaps, added to the step's time
        self.late: list[tuple[Request, float]] = []  # decodes stalled by prefill-only steps: (request, last token s)

    @property
    def num_itl_tokens(self) -> int:
        """Decode tokens whose gap since the request's previous token is this step's time."""
        return self.num_decode - len(self.late)


class Scheduler(FastForwardMixin):
    """Continuous (or static) batching over one replica's KV cache."""

    def __init__(self, kv: KVManager, max_num_seqs: int, max_num_batched_tokens: int,
                 enable_chunked_prefill: bool = True, *, batching: str = "vllm-v1",
                 scheduling_policy: str = "fcfs", preemption: str = "recompute",
                 watermark_frac: float = 0.0, swap_capacity_blocks: int = 0, swap_bytes_per_block: float = 0.0,
                 swap_bandwidth_bytes_per_s: float = float("inf")):
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs (as vLLM requires)")
        self.kv = kv
        self.bs = kv.block_size
        self.max_num_seqs = max_num_seqs
        self.policy = batching_policies.get(batching, "engine.batching")()
        # Orca and static batching bound a step by sequences and KV only
        self.max_num_batched_tokens = max_num_batched_tokens if self.policy.token_budget else 1 << 62
        self.chunked = enable_chunked_prefill and self.policy.can_chunk
        self.waiting = queue_orders.get(scheduling_policy, "engine.scheduling_policy")()
        self.preemption = preemption_modes.get(preemption, "engine.preemption")(
            capacity_blocks=swap_capacity_blocks, bytes_per_block=swap_bytes_per_block,
            bandwidth_bytes_per_s=swap_bandwidth_bytes_per_s)
        self.swapped = self.preemption.swapped
        self.watermark_blocks = int(watermark_frac * kv.pool.num_blocks)
        self.running: dict[int, Request] = {}     # admission order
        self.prefilling: dict[int, Request] = {}  # running requests not in steady decode
        self.padding: dict[int, Request] = {}     # static batching: finished rows kept to the batch end
        self.padding_context_sum = 0
        # bucket b < bs: offset residue b; bucket bs: contiguous reservations (never cross)
        self.buckets: list[dict[int, Request]] = [dict() for _ in range(self.bs + 1)]
        self.num_decoding = 0
        self.decode_computed_sum = 0  # sum of num_computed over steady-decode requests
        # blocks taken for steady decodes crossing a block boundary, not yet in their lists:
        # a request's own are added when it leaves decode (block ids are not observable)
        self._decode_held: list[int] = []
        self.step = 0
        self._finish_heap: list[tuple[int, int, Request]] = []
        self._offset_heap: list[tuple[int, int, Request]] = []  # (-decode_offset, id): the longest decode
        self.track_context_max = True  # build_engine turns it off when the cost model ignores it
        self.num_preemptions = 0
        self._on_finish = None  # static batching: the callback that returns padded rows
        self.decode_end_s = -1.0  # end of the last step that advanced the steady decodes
        self._stalled = False     # a prefill-only step (vLLM v0) held the decodes since then

    # -- bookkeeping of the steady-decode set --------------------------------------------
    def _enter_decode(self, r: Request) -> None:
        r.decode_offset = r.num_computed - self.step
        r.decode_c0 = r.num_computed
        b = self.bs if self.kv.contiguous else r.decode_offset % self.bs
        r.decode_bucket = b
        self.buckets[b][r.id] = r
        self.num_decoding += 1
        self.decode_computed_sum += r.num_computed
        r.finish_step = self.step + (r.output_tokens - r.num_output)
        heapq.heappush(self._finish_heap, (r.finish_step, r.id, r))
        if self.track_context_max:
            heapq.heappush(self._offset_heap, (-r.decode_offset, r.id, r))

    def _leave_decode(self, r: Request) -> None:
        """Materialise a steady-decode request's counters and take it out of the set."""
        c = r.decode_offset + self.step
        r.num_output = r.output_tokens - (r.finish_step - self.step)
        r.num_computed = c
        extra = self._crossed_blocks(r, c)
        if extra:  # the blocks its boundary crossings took since it entered decode
            held = self._decode_held
            r.blocks.extend(held[-extra:])
            del held[-extra:]
        del self.buckets[r.decode_bucket][r.id]
        r.decode_bucket = -1
        r.finish_step = -1
        self.num_decoding -= 1
        self.decode_computed_sum -= c

    def _crossed_blocks(self, r: Request, c: int) -> int:
        """Blocks a steady decode took since it entered decode, now at ``c`` computed tokens:
        one per step that began at a block boundary (c a multiple of the block size)."""
        if r.decode_bucket >= self.bs:  # a contiguous reservation never crosses
            return 0
        bs = self.bs
        return -(-c // bs) + (r.decode_c0 // -bs)

    def decode_context_max(self) -> int:
        """The longest context a steady decode attends to at the next step (computed tokens + the
        new one), 0 with none; amortized O(1) (stale heap entries dropped lazily)."""
        if not self.track_context_max:
            return 0
        heap = self._offset_heap
        while heap and (heap[0][2].decode_bucket < 0 or heap[0][2].decode_offset != -heap[0][0]):
            heapq.heappop(heap)
        return -heap[0][0] + self.step + 1 if heap else 0

    def add(self, r: Request) -> None:
        r.state = WAITING
        self.waiting.append(r)

    def has_work(self) -> bool:
        return bool(self.running) or bool(self.waiting) or bool(self.swapped)

    def never_fits(self, r: Request) -> bool:
        """``r`` can never run: its prompt (+ output, after a recompute) exceeds an unchunked
        budget, or its KV footprint exceeds the cache less the watermark."""
        total = r.prompt_tokens + r.output_tokens
        if not self.chunked and total > self.max_num_batched_tokens:
            return True
        need = self.kv.blocks_for(self.kv.footprint_tokens(r))
        return need + self.watermark_blocks > self.kv.pool.num_blocks

    def start_running(self, r: Request, now: float) -> None:
        r.state = RUNNING
        if r.scheduled_s < 0:
            r.scheduled_s = now
        if r.preempted_at_s >= 0:
            r.preempted_s += now - r.preempted_at_s
            r.preempted_at_s = -1.0
        self.running[r.id] = r
        self.prefilling[r.id] = r

    # -- preemption ----------------------------------------------------------------------
    def _preempt(self, plan: StepPlan, now: float) -> Request:
        victim = self.waiting.victim(self.running, self.padding)
        if victim.decode_bucket >= 0:
            # its last token: when it entered decode, or the last step that ran the decodes
            victim.last_token_s = max(victim.last_token_s, self.decode_end_s)
            self._leave_decode(victim)
        else:
            del self.prefilling[victim.id]
            for i, (q, n) in enumerate(plan.prefills):
                if q is victim:  # already given tokens this step (a priority victim)
                    del plan.prefills[i]
                    break
        del self.running[victim.id]
        victim.num_preemptions += 1
        victim.preempted_at_s = now
        self.preemption.evict(self, victim, plan, now)
        self.num_preemptions += 1
        plan.preempted.append(victim)
        return victim

    # -- one step ------------------------------------------------------------------------
    def schedule(self, now: float = 0.0) -> StepPlan:
        plan = StepPlan()
        pol = self.policy
        if pol.prefill_first and not self.swapped:
            self._admit(plan, now, self.max_num_batched_tokens)
            if plan.prefills:
                plan.run_decode = False
                return self._shape(plan)
        if pol.static:
            return self._schedule_static(plan, now)
        budget = self._run_running(plan, now)
        if not plan.preempted:
            budget = self.preemption.resume(self, plan, budget, now)
            if not self.swapped and not pol.prefill_first:
                self._admit(plan, now, budget)
        return self._shape(plan)

    def _schedule_static(self, plan: StepPlan, now: float) -> StepPlan:
        """Static batching: run the batch; form a new one only when the engine is empty."""
        if self.running:
            budget = self._run_running(plan, now)
            if self.padding and len(self.padding) == len(self.running):
                self._end_batch(now)  # its last live row was just preempted
            else:
                if not plan.preempted:
                    self.preemption.resume(self, plan, budget, now)
                return self._shape(plan)
        if self.swapped:  # rows of an earlier batch swapped out: they go first
            self.preemption.resume(self, plan, self.max_num_batched_tokens, now)
        else:
            self._admit(plan, now, self.max_num_batched_tokens)
        return self._shape(plan)

    def _end_batch(self, now: float) -> None:
        """A static batch ended: return its padded rows."""
        for r in list(self.padding.values()):
            self._release(r, now, self._on_finish)
        self.padding.clear()
        self.padding_context_sum = 0

    def _run_running(self, plan: StepPlan, now: float) -> int:
        """Stages 1-2: steady decodes (one token each), then running prefills in admission order."""
        pool = self.kv.pool
        budget = self.max_num_batched_tokens
        crossing = self.buckets[(-self.step) % self.bs]
        while len(crossing) > pool.num_free:
            self._preempt(plan, now)
        if crossing:
            self._decode_held += pool.allocate(len(crossing))
        plan.num_decode = self.num_decoding
        plan.decode_context_sum = self.decode_computed_sum + self.num_decoding
        budget -= self.num_decoding
        for r in list(self.prefilling.values()):
            if r.state != RUNNING or budget <= 0:
                continue
            remaining = r.num_tokens - r.num_computed
            n = remaining if remaining <= budget else budget
            while not self.kv.grow(r, r.num_computed + n):
                victim = self._preempt(plan, now)
                if victim is r:
                    n = 0
                    break
            if n:
                plan.prefills.append((r, n))
                budget -= n
        if plan.preempted:  # a decode admitted after a prefilling request may have been a victim
            plan.num_decode = self.num_decoding
            plan.decode_context_sum = self.decode_computed_sum + self.num_decoding
            budget = self.max_num_batched_tokens - self.num_decoding - sum(n for _, n in plan.prefills)
        if self._stalled:
            plan.late = self._late_decodes(now)
        return budget

    def _late_decodes(self, now: float) -> list[tuple[Request, float]]:
        """Steady decodes whose previous token came before this step started (a prefill-only
        step stalled them): their next gap is not this step's time. O(decodes), only on the
        first decode step after a stall."""
        end = self.decode_end_s
        late = []
        for bucket in self.buckets:
            for r in bucket.values():
                prev = r.last_token_s if r.last_token_s > end else end
                if prev != now:
                    late.append((r, prev))
        return late

    def _admit(self, plan: StepPlan, now: float, budget: int) -> int:
        """Stage 3: waiting requests in queue order while budget, slots and blocks allow."""
        waiting, kv = self.waiting, self.kv
        free_needed = self.watermark_blocks
        while waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            r = waiting[0]
            remaining = r.num_tokens - r.num_computed
            if remaining > budget and not self.chunked:
                break
            n = remaining if remaining <= budget else budget
            if free_needed and kv.extra_blocks(r, r.num_computed + n) + free_needed > kv.pool.num_free:
                break
            if not kv.grow(r, r.num_computed + n):
                break
            waiting.popleft()
            self.start_running(r, now)
            plan.prefills.append((r, n))
            budget -= n
        return budget

    def _shape(self, plan: StepPlan) -> StepPlan:
        pad = len(self.padding) if plan.run_decode else 0
        if not plan.run_decode:
            plan.num_decode = plan.decode_context_sum = 0
        sampled = plan.num_decode + pad
        chunks = []
        for r, n in plan.prefills:
            chunks.append((n, r.num_computed))
            if r.num_computed + n == r.num_tokens:
                sampled += 1
        ctx = plan.decode_context_sum + (self.padding_context_sum + pad if pad else 0)
        plan.shape = BatchShape(chunks, plan.num_decode + pad, ctx, sampled,
                                self.decode_context_max() if plan.num_decode and self.track_context_max else 0)
        if plan.swap_out_bytes or plan.swap_in_bytes:
            plan.swap_s = self.preemption.copy_s(plan)
        return plan

    def complete(self, plan: StepPlan, now: float, on_finish) -> int:
        """Apply a step's results at time ``now``; returns the number of decode tokens emitted."""
        if plan.run_decode:
            for r, prev in plan.late:
                if r.extra_itl_s is None:
                    r.extra_itl_s = []
                r.extra_itl_s.append(now - prev)
            self.advance_decodes(1, now, on_finish)
        elif self.num_decoding:
            self._stalled = True  # the decodes sat out this step
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
        if self.padding and len(self.padding) == len(self.running):
            self._on_finish = on_finish
            self._end_batch(now)  # the static batch's longest request ended
        return plan.num_decode

    def advance_decodes(self, k: int, now: float, on_finish) -> None:
        """The steady decodes took k steps ending at ``now``: those that reached their last
        token finish (a fast-forwarded run's completions happen at its last step)."""
        self.decode_end_s = now
        self._stalled = False
        self.step += k
        self.decode_computed_sum += self.num_decoding * k
        heap = self._finish_heap
        while heap and heap[0][0] <= self.step:
            fs, _, r = heapq.heappop(heap)
            if r.finish_step != fs or r.decode_bucket < 0:
                continue  # stale entry (preempted since)
            self._leave_decode(r)
            self._finish(r, now, on_finish)

    def _finish(self, r: Request, now: float, on_finish) -> None:
        if self.policy.static:
            self._on_finish = on_finish
            self.padding[r.id] = r  # stays in the batch as a padded row
            self.padding_context_sum += r.num_tokens
            r.last_token_s = now
            return
        self._release(r, now, on_finish)

    def _release(self, r: Request, now: float, on_finish) -> None:
        del self.running[r.id]
        self.kv.release(r)
        r.state = FINISHED
        r.finish_s = now
        r.last_token_s = now
        on_finish(r)

    # -- invariants for tests ------------------------------------------------------------
    def check(self) -> None:
        pool = self.kv.pool
        held = sum(len(r.blocks) for r in self.running.values()) + len(self._decode_held)
        assert held == pool.num_used, (held, pool.num_used)
        assert len(self._decode_held) == sum(self._crossed_blocks(r, r.decode_offset + self.step)
                                             for b in self.buckets for r in b.values())
        for r in self.running.values():
            c = r.decode_offset + self.step if r.decode_bucket >= 0 else r.num_computed
            assert 0 <= c <= r.num_tokens if r.decode_bucket < 0 else c < r.prompt_tokens + r.output_tokens
            implied = len(r.blocks) + (self._crossed_blocks(r, c) if r.decode_bucket >= 0 else 0)
            assert implied * self.bs >= c
        assert all(r.state == WAITING and not r.blocks for r in self.waiting)
        assert all(r.state == SWAPPED and not r.blocks and r.swapped_blocks for r in self.swapped)
        assert sum(r.swapped_blocks for r in self.swapped) == self.preemption.used_blocks
        assert len(self.running) <= self.max_num_seqs
        assert set(self.padding) <= set(self.running)


__all__ = ["Scheduler", "StepPlan", "REJECTED"]
