"""The cost-model interface: a batch shape in, a step time with a breakdown out.

Models: what one engine iteration computes, reduced to what its GPU time depends on:
prefill chunks (new tokens and the context before them), decode requests (how many, their
summed context and, when known, the longest), and how many tokens are sampled.

Ignores: which requests these are (a cost model never sees request identity).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sim.registry import Registry


@dataclass(slots=True)
class BatchShape:
    """One step's work: ``prefill_chunks`` as (new_tokens, prior_context) pairs."""

    prefill_chunks: list[tuple[int, int]] = field(default_factory=list)
    num_decode: int = 0
    decode_context_sum: int = 0  # sum over decode requests of the context they attend to (incl. new token)
    num_sampled: int = 0
    # the longest of those contexts (0: not known; a cost model then takes all equal to the mean).
    # Priced only by a profile with a decode serial-chain floor (sim.cost.ops.many_seq_s)
    decode_context_max: int = 0

    @property
    def num_prefill_tokens(self) -> int:
        return sum(c for c, _ in self.prefill_chunks)

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode


@dataclass(slots=True)
class StepTime:
    """Seconds for one step: total, and its parts by op kind (gemm, attn, other, comm, host)."""

    total_s: float
    gemm_s: float = 0.0
    attn_s: float = 0.0
    other_s: float = 0.0
    comm_s: float = 0.0
    host_s: float = 0.0


class CostModel(Protocol):
    """Prices one engine step."""

    def step_time(self, shape: BatchShape) -> StepTime: ...


cost_models: Registry = Registry("cost model")
