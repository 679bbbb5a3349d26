"""Fast-forward of pure decode runs: the Scheduler's methods that plan a run of steady
decode steps as one simpy event (split out of sim/engine/scheduler.py).

Models: a run of steps with no prefill, admission, swap, padding or preemption, ending at
most at one completion point; each step takes one block for every request crossing a block
boundary and costs the decode price of its context sum. The result is the same as stepping
(same step times added in the same order, same block ids, same records; tested).

Ignores: nothing stepping models; runs that would need more than the free blocks stop
before the step that does not fit.
"""
from __future__ import annotations

import heapq
from bisect import bisect_right
from itertools import accumulate, cycle, islice
from math import inf



class FastForwardMixin:
    """Methods of ``Scheduler`` (which provides the attributes they use)."""

    def decode_run_length(self, limit: int) -> int:
        """How many next steps are pure steady decode with nothing else able to happen.

        Such a run has no prefill, no admission (queue empty, the sequence cap reached, or
        the head blocked), no swapped request, no padded row, no decode stalled by a
        prefill-only step, no preemption (the blocks it needs fit in the free pool) and at
        most one completion point, its last step. The
        caller bounds it further by the next external arrival.
        """
        if self.prefilling or not self.num_decoding or self.swapped or self.padding or self._stalled:
            return 0
        if self.waiting and len(self.running) < self.max_num_seqs and not self._head_blocked():
            return 0
        heap = self._finish_heap
        while heap and (heap[0][2].finish_step != heap[0][0] or heap[0][2].decode_bucket < 0):
            heapq.heappop(heap)
        k = min(limit, heap[0][0] - self.step) if heap else limit
        # the blocks of the first two steps must fit; decode_run_plan checks the rest as it goes
        free, bs, buckets, s = self.kv.pool.num_free, self.bs, self.buckets, self.step
        c0 = len(buckets[(-s) % bs])
        if c0 > free:
            return 0
        if k >= 2 and c0 + len(buckets[(-(s + 1)) % bs]) > free:
            return 1
        return k

    def _head_blocked(self) -> bool:
        """The queue head cannot be admitted for lack of blocks (and free blocks only shrink
        during a decode run, so it stays blocked until something finishes)."""
        if self.policy.static:
            return True  # a static batch is never refilled
        r = self.waiting[0]
        budget = self.max_num_batched_tokens - (0 if self.policy.prefill_first else self.num_decoding)
        if budget <= 0:
            return True
        remaining = r.num_tokens - r.num_computed
        if remaining > budget and not self.chunked:
            return True
        n = remaining if remaining <= budget else budget
        return self.kv.extra_blocks(r, r.num_computed + n) + self.watermark_blocks > self.kv.pool.num_free

    def decode_run_plan(self, k: int, price, fixed_s: tuple[float, float, float], now: float, horizon: float):
        """Plan up to ``k`` (from ``decode_run_length``) pure-decode steps starting at ``now``:
        each step takes one block for every request crossing a block boundary, and the run
        stops before a step whose blocks do not fit or that would start at or after
        ``horizon`` (the next external arrival; the first step always runs). ``price(c)`` is
        the attention seconds of a step with decode context sum ``c``, ``fixed_s`` the step's
        other parts (gemm, other, host), added in ``step_time``'s order; with ``fixed_s`` None,
        ``price(c)`` is the step's whole StepTime (cost models without a decode-step function).
        A ``price`` with a ``run`` attribute prices the whole run in one call where it can
        (sim.cost.decode_price: the same arithmetic, bit for bit), else steps are priced
        one by one.

        Takes the run's blocks (``_decode_held``: a steady decode's blocks join its list
        when it leaves decode) and returns (starts, totals, attn,
        used blocks after each step, end time); ``decode_run_complete`` applies it.
        """
        pool, bs, buckets, s = self.kv.pool, self.bs, self.buckets, self.step
        n = self.num_decoding
        free, used0 = pool.num_free, pool.num_used
        i0 = (-s) % bs  # step j's requests crossing a block boundary: bucket (-(s + j)) % bs
        rot = buckets[i0::-1] + buckets[bs - 1:i0:-1]  # (buckets[bs] holds no decode)
        if fixed_s is not None and horizon < inf:
            # every step lasts at least its fixed parts: no more steps than that can start
            # before the horizon (+2 for rounding; a shorter bound would only split the run)
            floor_s = fixed_s[0] + fixed_s[1] + fixed_s[2]
            if floor_s > 0:
                k = min(k, int((horizon - now) / floor_s) + 2)
        # the steps whose blocks fit the free pool: step j takes lens[j % bs] blocks, a whole
        # cycle of bs steps `per_cycle`
        lens = list(map(len, rot))
        cyc = list(accumulate(lens))
        per_cycle = cyc[-1]
        if per_cycle:
            q, rem = divmod(free, per_cycle)
            m = min(k, q * bs + bisect_right(cyc, rem))
        else:
            m = k
        c = self.decode_computed_sum + n
        cmax = self.decode_context_max() if self.track_context_max else 0
        run = getattr(price, "run", None)
        out = run(c, m, now, horizon, *fixed_s, cmax) if fixed_s is not None and run is not None else None
        if out is None:
            out = self._price_steps(m, c, n, price, fixed_s, now, horizon, cmax)
        starts, totals, attn, t = out
        taken = len(starts)
        used = list(accumulate(islice(cycle(lens), taken), initial=used0))[1:]  # in use after each step
        if used and used[-1] > used0:  # the run's blocks (held for the crossing requests)
            self._decode_held += pool.allocate(used[-1] - used0)
        return starts, totals, attn, used, t

    @staticmethod
    def _price_steps(m: int, c: int, n: int, price, fixed_s, t: float, horizon: float, cmax: int = 0):
        """Steps one by one with ``price`` (the path for prices without a ``run``); ``cmax``: the
        longest decode context at the first step (it grows by one per step)."""
        g, o, h = fixed_s if fixed_s is not None else (0.0, 0.0, 0.0)
        starts, totals, attn = [], [], []
        for j in range(m):
            if fixed_s is not None:
                a = price(c, cmax + j) if cmax else price(c)
                tot = g + a + o + h
            else:
                st = price(c, cmax + j) if cmax else price(c)
                a, tot = st.attn_s, st.total_s
            starts.append(t)
            totals.append(tot)
            attn.append(a)
            t = t + tot  # start times by sequential addition, as stepping's timeouts add them
            c += n
            if t >= horizon:  # the next step would start at or after the next arrival
                break
        return starts, totals, attn, t

    def decode_run_truncate(self, k: int, cut: int, used: list[int], used0: int) -> None:
        """A planned k-step run keeps only its first ``cut`` steps (a submit cut it, in a
        cluster): give back the blocks the other steps took (``used``: blocks in use after
        each planned step, ``used0`` before the run). Block ids are not observable, so the
        counts are all that must match stepping."""
        if cut >= k:
            return
        extra = used[-1] - (used[cut - 1] if cut else used0)
        if extra:
            held = self._decode_held
            self.kv.pool.free(held[-extra:])
            del held[-extra:]

    def decode_run_complete(self, k: int, now: float, on_finish) -> None:
        """Apply a k-step decode run ending at ``now`` (completions happen at its last step):
        what ``complete`` does for k pure-decode steps, without building a plan."""
        self.advance_decodes(k, now, on_finish)
        if self.padding and len(self.padding) == len(self.running):
            self._on_finish = on_finish
            self._end_batch(now)  # the static batch's longest request ended
