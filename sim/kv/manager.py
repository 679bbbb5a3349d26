"""Per-request KV block tables on top of a BlockPool, and KV capacity sizing.

Models: how many blocks a request holds for the tokens whose KV is computed or being
computed (ceil(tokens / block_size)), allocation as a request grows, release on finish or
preemption; the capacity of the pool from GPU memory x utilisation - weights - activation
reserve, as vLLM sizes it after its profiling run.

Two modes: ``paged`` (PagedAttention: blocks are added as tokens are computed) and
``contiguous`` (the pre-PagedAttention reservation of Orca and FasterTransformer, Kwon et
al., SOSP'23, section 3: at admission a request reserves its maximum length, prompt +
``max_tokens`` (or ``max_model_len`` when no ``max_tokens`` is given), and never grows).

Ignores: prefix-key hashing (engine prefix caching adds keys), sliding windows; in
contiguous mode, external fragmentation (reservations are counted in blocks, as if any free
blocks could form one slab) and rounding to a block.
"""
from __future__ import annotations

from sim.config import ConfigError
from sim.hardware import HardwareProfile
from sim.kv.block_pool import BlockPool
from sim.model_spec import ModelSpec

# Memory outside PyTorch's allocator: CUDA context, cuBLAS workspaces, NCCL buffers (vLLM
# measures it as "non-torch memory"; about 0.5-1.5 GiB on Hopper).
NON_TORCH_BYTES = 1.0 * 2**30


def activation_reserve_bytes(model: ModelSpec, max_num_batched_tokens: int, max_num_seqs: int) -> float:
    """Peak activation memory of a forward pass over ``max_num_batched_tokens`` tokens.

    The widest live tensors of one layer (gate-up output [T, 2I], its SiLU product [T, I],
    the QKV output and two [T, H] residual streams, bf16) plus fp32 logits for the
    sampled rows, plus non-torch memory: what vLLM's profiling run would find, to ~20%.
    """
    t = max_num_batched_tokens
    per_token = (3 * model.intermediate_size + 4 * model.hidden_size + model.q_size + 2 * model.kv_size) * 2
    logits = max_num_seqs * model.vocab_size * 4 * 2
    return t * per_token + logits + NON_TORCH_BYTES


def kv_capacity_blocks(model: ModelSpec, hw: HardwareProfile, block_size_tokens: int,
                       gpu_memory_utilization: float, reserve_bytes: float, tp: int = 1) -> int:
    """Blocks of KV cache that fit on one GPU's replica (``tp`` > 1: an even split of weights and
    KV, the pre-parallelism approximation). The simulator sizes replicas with
    ``sim.parallel.plan_replica`` (per-GPU sharding as vLLM does, the same blocks for tp = 1, and
    an error naming the smallest layout that fits); this stays for callers of the old API."""
    budget = hw.memory_bytes * gpu_memory_utilization * tp
    free = budget - model.weight_bytes - reserve_bytes * tp
    per_block = block_size_tokens * model.kv_bytes_per_token
    if free < per_block:
        raise ConfigError(
            "engine.gpu_memory_utilization",
            f"model {model.name} ({model.weight_bytes / 1e9:.1f} GB of weights) + activation reserve "
            f"({reserve_bytes / 1e9:.1f} GB) does not fit in {gpu_memory_utilization:.0%} of {hw.name}'s "
            f"{hw.memory_bytes / 1e9:.1f} GB x {tp} GPU(s); no room for KV cache "
            f"(shard it over more GPUs with parallelism.tp, or use a larger GPU or a smaller model)")
    return int(free // per_block)


class KVManager:
    """Allocates and frees the blocks of requests (each with a ``blocks`` list)."""

    def __init__(self, pool: BlockPool, contiguous: bool = False, max_model_len: int = 1 << 62,
                 max_tokens: int | None = None):
        self.pool = pool
        self.block_size = pool.block_size_tokens
        self.contiguous = contiguous
        self.max_model_len = max_model_len
        self.max_tokens = max_tokens

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def footprint_tokens(self, req) -> int:
        """Tokens of KV ``req`` holds at its largest: its full length, or its reservation."""
        total = req.prompt_tokens + req.output_tokens
        if not self.contiguous:
            return total
        if self.max_tokens is None:
            return max(self.max_model_len, total)
        return max(min(req.prompt_tokens + self.max_tokens, self.max_model_len), total)

    def _need(self, req, num_tokens: int) -> int:
        if self.contiguous and not req.blocks:
            num_tokens = max(num_tokens, self.footprint_tokens(req))
        return -(-num_tokens // self.block_size) - len(req.blocks)

    def extra_blocks(self, req, num_tokens: int) -> int:
        """Blocks ``req`` must add to hold KV for ``num_tokens`` tokens."""
        need = self._need(req, num_tokens)
        return need if need > 0 else 0

    def grow(self, req, num_tokens: int) -> bool:
        """Ensure ``req`` holds blocks for ``num_tokens`` tokens; False if the pool is short."""
        need = self._need(req, num_tokens)
        if need <= 0:
            return True
        if need > self.pool.num_free:
            return False
        req.blocks.extend(self.pool.allocate(need))
        return True

    def release(self, req) -> None:
        if req.blocks:
            self.pool.free(req.blocks)
            req.blocks = []
