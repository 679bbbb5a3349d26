"""A constant step time, for queueing-theory checks and tests.

Models: every step takes ``step_s`` plus ``per_token_s`` per scheduled token, whatever it
computes. With batch size 1 and one-token outputs this turns a replica into an M/D/1 queue.

Ignores: everything a real GPU does.
"""
from __future__ import annotations

from sim.cost.base import BatchShape, StepTime, cost_models


@cost_models.register("constant")
class ConstantCost:
    """Step time = step_s + per_token_s * tokens in the step."""

    def __init__(self, step_s: float = 0.01, per_token_s: float = 0.0):
        if step_s < 0 or per_token_s < 0:
            raise ValueError("step_s and per_token_s must be >= 0")
        self.step_s = step_s
        self.per_token_s = per_token_s

    def step_time(self, shape: BatchShape) -> StepTime:
        t = self.step_s + self.per_token_s * shape.num_tokens
        return StepTime(total_s=t, other_s=t)
