"""Build a replica's scheduler and step-cost model from a resolved ``EngineConfig``.

Models: the wiring of the engine policies: KV manager mode (paged or contiguous
reservation), batching policy, queue order, preemption mode with its host swap space
(in blocks of ``block_size_tokens x kv_bytes_per_token``) and PCIe bandwidth, watermark,
Sarathi-Serve's stall-free token budget, and the CUDA-graph wrapper of the cost model.

Ignores: anything not in ``EngineConfig``.
"""
from __future__ import annotations

from sim.engine.batching import stall_free_budget
from sim.engine.cuda_graphs import CudaGraphCost
from sim.engine.scheduler import Scheduler
from sim.kv.block_pool import BlockPool
from sim.kv.manager import KVManager


def build_engine(eng, model, hw, num_blocks: int, cost, max_model_len: int) -> tuple[Scheduler, object, dict]:
    """(scheduler, step-cost model, info) of one replica."""
    info = {}
    budget = eng.max_num_batched_tokens
    if eng.tbt_target_s is not None:
        budget = stall_free_budget(cost, eng.tbt_target_s, eng.max_num_seqs, eng.block_size_tokens)
        info["max_num_batched_tokens_effective"] = budget
    if eng.cuda_graphs:
        cost = CudaGraphCost(cost, eng.cuda_graph_max_batch_size, eng.cuda_graph_launch_s)
    kv = KVManager(BlockPool(num_blocks, eng.block_size_tokens, prefix_caching=False),
                   contiguous=eng.kv_mode == "contiguous", max_model_len=max_model_len, max_tokens=eng.max_tokens)
    block_bytes = eng.block_size_tokens * model.kv_bytes_per_token
    sched = Scheduler(kv, eng.max_num_seqs, budget, eng.enable_chunked_prefill, batching=eng.batching,
                      scheduling_policy=eng.scheduling_policy, preemption=eng.preemption,
                      watermark_frac=eng.watermark_frac,
                      swap_capacity_blocks=int(eng.swap_space_bytes // block_bytes),
                      swap_bytes_per_block=block_bytes, swap_bandwidth_bytes_per_s=hw.pcie_bandwidth_bytes_per_s)
    # the longest decode context costs a heap per scheduler: only for a cost model that reads it
    sched.track_context_max = bool(getattr(cost, "uses_decode_context_max", False))
    if eng.preemption == "swap":
        info["swap_capacity_blocks"] = int(eng.swap_space_bytes // block_bytes)
    return sched, cost, info
