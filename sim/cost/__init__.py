"""GPU cost models: op-level roofline (`op_time`) and whole-step models (`CostModel`)."""
from sim.cost.base import BatchShape, CostModel, StepTime, cost_models
from sim.cost.ops import AttnDecode, AttnPrefill, Elementwise, Gemm, Op, op_time, op_time_breakdown
from sim.cost import roofline as _roofline  # noqa: F401  (registers "roofline")
from sim.cost import constant as _constant  # noqa: F401  (registers "constant")

__all__ = ["BatchShape", "CostModel", "StepTime", "cost_models", "AttnDecode", "AttnPrefill",
           "Elementwise", "Gemm", "Op", "op_time", "op_time_breakdown"]
