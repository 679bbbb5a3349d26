"""Batching policies: which requests share an engine step, and how prompts enter it.

Models: five named configurations of the one scheduler core (``sim.engine.scheduler``),
each a set of flags the core reads:

- ``can_chunk``: a prompt may be split over steps under the token budget;
- ``default_chunked``: whether chunking is on when ``engine.enable_chunked_prefill`` is unset;
- ``prefill_first``: a step that can admit new prompts runs only those prompts (no decodes);
- ``static``: a batch is formed only when the engine is empty, is never refilled, and every
  row is computed until the longest request ends (finished rows are padding);
- ``token_budget``: ``max_num_batched_tokens`` limits a step (else only ``max_num_seqs``
  and the KV cache do, as in Orca and request-level batching);

plus Sarathi-Serve's stall-free token budget (:func:`stall_free_budget`).

Ignores: pipeline-parallel micro-batching (Orca's and Sarathi's PP schedules), beam search,
the ordering subtleties of each engine's scheduler loop beyond what is documented per class.
"""
from __future__ import annotations

from sim.cost.base import BatchShape
from sim.registry import Registry

batching_policies: Registry = Registry("batching policy")


class _Flags:
    token_budget = True
    can_chunk = True
    default_chunked = True
    prefill_first = False
    static = False


@batching_policies.register("static")
class Static(_Flags):
    """Request-level (static) batching, as in FasterTransformer / HF ``generate``.

    A batch of up to ``max_num_seqs`` waiting requests (whole prompts, token budget over the
    prompts) is formed only when the engine is empty; it runs until its longest request
    ends. Rows that finished early are padding: they stay in the batch, hold their KV and are
    charged a decode row every step, and their results are returned when the batch ends
    (Yu et al., "Orca", OSDI'22, section 2.2: "the serving system ... cannot return finished
    requests early ... and newly arrived requests have to wait until the current batch
    completes"). The padded rows' context is held at its final length. The batch is limited
    by ``max_num_seqs`` and the KV cache, not by a token budget.
    """

    token_budget = False
    can_chunk = False
    default_chunked = False
    static = True


@batching_policies.register("orca")
class Orca(_Flags):
    """Iteration-level scheduling with selective batching (Yu et al., "Orca", OSDI'22, section 4).

    Every iteration runs all running requests; a finished request leaves and a new one joins
    at the next iteration. A new request's whole prompt (the "initiation phase") runs in the
    same iteration as the others' decode tokens ("increment phase"); prompts are never split.
    Orca reserves KV for a request's maximum length at admission (section 4.2), so the
    ``orca`` preset pairs this policy with ``kv_mode: contiguous``. Orca's scheduler
    (Algorithm 1) bounds a batch by its maximum batch size and KV slots only, so
    ``max_num_batched_tokens`` is not applied.
    """

    token_budget = False
    can_chunk = False
    default_chunked = False


@batching_policies.register("vllm-v0")
class VllmV0(_Flags):
    """vLLM v0's default scheduler (``vllm/core/scheduler.py``, ``_schedule_default``).

    Prefill-first: if any waiting prompt can be admitted (whole prompt within
    ``max_num_batched_tokens``, a free sequence slot, and blocks left above the watermark
    (``BlockSpaceManager``'s ``watermark``, 1% of GPU blocks by default)), the step runs only
    prefills and the running requests' decodes wait; otherwise the step decodes every
    running request. Prefill and decode never share a step. New prompts are not admitted
    while swapped-out requests wait; those are swapped back in (in FIFO order) on decode
    steps with no preemption. Victims on a block shortage are the last-admitted requests.
    """

    can_chunk = False
    default_chunked = False
    prefill_first = True


@batching_policies.register("vllm-v1")
class VllmV1(_Flags):
    """vLLM v1's scheduler (``vllm/v1/core/sched/scheduler.py``; "vLLM V1" blog, Jan 2025).

    One token budget per step: running requests first (their decode token, then the
    remaining chunks of unfinished prompts, in admission order), then waiting requests in
    queue order, each given up to its remaining tokens; prompts are chunked to fit the
    budget and mixed with decodes. On a block shortage the lowest-priority running request
    (last admitted under FCFS) is preempted by recompute, and no request is admitted in
    that step.
    """


@batching_policies.register("sarathi-serve")
class SarathiServe(_Flags):
    """Sarathi-Serve's stall-free batching (Agrawal et al., OSDI'24, section 4).

    The same rule as vLLM v1 (decodes first, then ongoing prefill chunks, then new prompts,
    chunked to a token budget, in mixed "hybrid" batches); the difference is the budget:
    a small fixed chunk (the ``sarathi-serve`` preset sets 512 tokens, the paper's setting
    for Mistral-7B/Yi-34B) or, with ``engine.tbt_target_s``, the largest chunk whose step
    meets the time-between-tokens target (:func:`stall_free_budget`), so that a prompt
    never stalls running decodes longer than that.
    """


def stall_free_budget(cost, tbt_target_s: float, max_num_seqs: int, multiple: int = 16,
                      upper: int = 1 << 17) -> int:
    """Sarathi-Serve's token budget: the largest step size that meets ``tbt_target_s``.

    A hybrid step of ``max_num_seqs`` decode rows (one token of context each, so the price
    is that of the token count, not of the decodes' attention) plus one prefill chunk is
    priced by ``cost``; the budget is the largest total, a multiple of ``multiple`` and at
    least ``max_num_seqs`` (vLLM's constraint), whose step time is within the target. The
    decodes' attention over their real context is not included: leave margin in the target.
    """
    def fits(total: int) -> bool:
        chunk = total - max_num_seqs
        shape = BatchShape([(chunk, 0)] if chunk > 0 else [], max_num_seqs, max_num_seqs, max_num_seqs)
        return cost.step_time(shape).total_s <= tbt_target_s

    lo = -(-max_num_seqs // multiple) * multiple
    if not fits(lo):
        return max_num_seqs
    hi = lo
    while hi < upper and fits(min(hi * 2, upper)):
        hi = min(hi * 2, upper)
    if hi >= upper:
        return upper
    top = min(hi * 2, upper)  # fits(hi) and not fits(top)
    while top - hi > multiple:
        mid = (hi + top) // 2 // multiple * multiple
        if mid <= hi:
            break
        if fits(mid):
            hi = mid
        else:
            top = mid
    return hi
