"""Paged KV cache: block pool with identity and the per-request block manager."""
from sim.kv.block_pool import BlockPool
from sim.kv.manager import KVManager, kv_capacity_blocks

__all__ = ["BlockPool", "KVManager", "kv_capacity_blocks"]
