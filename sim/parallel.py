"""Tensor and pipeline parallelism inside one replica: how vLLM shards a model over a
``tp x pp`` group of GPUs, and what each GPU holds.

Models (Megatron-style tensor parallelism as vLLM's Llama/Qwen2 code runs it, and vLLM's
layer-wise pipeline parallelism):
- TP: query heads, KV heads and MLP columns are split ``/tp`` (QKVParallelLinear,
  MergedColumnParallelLinear, RowParallelLinear in vllm/model_executor/layers/linear.py); when
  ``tp > num_kv_heads`` each GPU holds one KV head, replicated ``tp / num_kv_heads`` times
  (QKVParallelLinear: ``num_kv_heads = 1; num_kv_head_replicas = divide(tp_size,
  total_num_kv_heads)``; LlamaAttention asserts ``tp_size % total_num_kv_heads == 0`` then);
  the embedding and the LM head are vocab-parallel over the vocabulary padded to a multiple of
  64 (vllm/model_executor/layers/vocab_parallel_embedding.py: ``DEFAULT_VOCAB_PADDING_SIZE =
  64``, ``num_embeddings_per_partition = divide(num_embeddings_padded, tp_size)``); norms and
  the hidden size are replicated.
- PP: contiguous layer ranges per stage as ``get_pp_indices`` (vllm/distributed/utils.py)
  assigns them; the embedding lives on the first stage, the final norm and LM head on the last,
  and a tied embedding on both ends (vllm/model_executor/models/llama.py, LlamaModel:
  ``embed_tokens`` if ``is_first_rank or (tie_word_embeddings and is_last_rank)``, ``norm`` if
  ``is_last_rank``).
- Memory per GPU: weights of its stage's shard, KV bytes per token of its stage's layers and KV
  heads, the activation reserve of ``sim.kv.manager.activation_reserve_bytes`` with the
  sharded widths (the fp32 logits only on the last stage, and full-vocabulary: vLLM v1
  all-gathers the logits onto every TP rank), and KV blocks = the minimum over the replica's
  GPUs (vLLM v0 ``determine_num_available_blocks``: ``min(b[0] for b in num_blocks)``; v1
  vllm/v1/core/kv_cache_utils.py ``get_kv_cache_configs``: every rank shrunk to the smallest
  ``num_blocks``).

tp = pp = 1 reproduces ``sim.kv.manager.kv_capacity_blocks`` bit for bit (``shard_model(m, 1)
is m``; tested). A tp = 1 model is not re-padded (vLLM pads even at tp = 1; every shipped
vocabulary is already a multiple of 64).

Ignores: vLLM's ``VLLM_PP_LAYER_PARTITION`` override, LoRA extra vocabulary, sequence
parallelism, expert parallelism (MoE), and per-rank differences of non-torch memory.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sim.config import ConfigError
from sim.hardware import HardwareProfile
from sim.kv.manager import activation_reserve_bytes as _activation_reserve_bytes
from sim.model_spec import ModelSpec

# vllm/model_executor/layers/vocab_parallel_embedding.py: DEFAULT_VOCAB_PADDING_SIZE = 64
VOCAB_PADDING = 64
# GPUs per node when a hardware profile has no interconnect section: the value every shipped
# profile gives as interconnect.max_gpus_per_node, with its source there (e.g. h100_sxm.yaml:
# one HGX H100 NVSwitch board, AWS p5.48xlarge and Lambda 8x H100 SXM list 8 GPUs)
DEFAULT_GPUS_PER_NODE = 8


def stage_layers(num_layers: int, pp: int, key: str = "parallelism.pp") -> list[int]:
    """Layers per pipeline stage, as vLLM's ``get_pp_indices`` (vllm/distributed/utils.py)
    splits them: ``num_layers // pp`` each, and the remainder one each to partitions[-2],
    partitions[-3], ... (the last stage, which also runs the final norm and LM head, excluded)."""
    if pp < 1 or pp > num_layers:
        raise ConfigError(key, f"pipeline size {pp} must be between 1 and the model's {num_layers} layers")
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    return parts


def padded_vocab(vocab_size: int) -> int:
    """vLLM's ``pad_vocab_size``: rounded up to a multiple of 64."""
    return -(-vocab_size // VOCAB_PADDING) * VOCAB_PADDING


def tp_problem(model: ModelSpec, tp: int) -> str | None:
    """Why vLLM cannot shard ``model`` over ``tp`` GPUs (None if it can)."""
    if tp < 1:
        return f"tensor-parallel size {tp} must be at least 1"
    if model.num_heads % tp:
        return f"tensor-parallel size {tp} must divide {model.name}'s {model.num_heads} attention heads"
    kv = model.num_kv_heads
    if (kv % tp) if tp <= kv else (tp % kv):
        return (f"tensor-parallel size {tp} must divide {model.name}'s {kv} KV heads, or be a multiple "
                f"of them (then each GPU holds one replicated KV head)")
    if model.intermediate_size % tp:
        return f"tensor-parallel size {tp} must divide {model.name}'s MLP width {model.intermediate_size}"
    if padded_vocab(model.vocab_size) % tp:
        return (f"tensor-parallel size {tp} must divide {model.name}'s vocabulary padded to a multiple "
                f"of {VOCAB_PADDING} ({padded_vocab(model.vocab_size)})")
    return None


def shard_model(model: ModelSpec, tp: int, num_layers: int | None = None,
                key: str = "parallelism.tp") -> ModelSpec:
    """The model one TP rank holds and runs: heads, KV heads (at least one, replicated), MLP
    columns and padded vocabulary divided by ``tp``; hidden size, head size and norms unchanged.
    ``num_layers`` sets the layer count (a pipeline stage's). ``shard_model(m, 1) is m``."""
    problem = tp_problem(model, tp)
    if problem:
        raise ConfigError(key, problem)
    if tp > 1:
        model = dataclasses.replace(
            model, num_heads=model.num_heads // tp, num_kv_heads=max(1, model.num_kv_heads // tp),
            intermediate_size=model.intermediate_size // tp, vocab_size=padded_vocab(model.vocab_size) // tp)
    if num_layers is not None and num_layers != model.num_layers:
        model = dataclasses.replace(model, num_layers=num_layers)
    return model


def stage_weight_bytes(shard: ModelSpec, first: bool, last: bool) -> float:
    """Weight bytes of one GPU of a stage: its layers' shards, the embedding shard on the first
    stage (and, tied, on the last, where it serves as the LM head), the LM head shard and the
    final norm on the last. With first and last (pp = 1) this is ``shard.weight_bytes``."""
    params = shard.num_layers * shard.params_per_layer
    embed = shard.vocab_size * shard.hidden_size
    if first or (last and shard.tie_word_embeddings):
        params += embed
    if last:
        params += (0 if shard.tie_word_embeddings else embed) + shard.hidden_size
    return params * shard.weight_bytes_per_param


def stage_activation_reserve_bytes(model: ModelSpec, shard: ModelSpec, last: bool,
                                   max_num_batched_tokens: int, max_num_seqs: int) -> float:
    """``activation_reserve_bytes`` of one GPU of a stage: the sharded layer widths, and the fp32
    logits [max_num_seqs, vocab] at full vocabulary on the last stage only (vLLM v1 all-gathers
    the logits onto every TP rank: LogitsProcessor._gather_logits with
    ``Platform.use_all_gather()``, vllm/model_executor/layers/logits_processor.py)."""
    widths = dataclasses.replace(shard, vocab_size=model.vocab_size) if shard.vocab_size != model.vocab_size else shard
    return _activation_reserve_bytes(widths, max_num_batched_tokens, max_num_seqs if last else 0)


@dataclass(frozen=True)
class ReplicaLayout:
    """One replica of ``tp x pp`` GPUs: its stages and what each GPU holds. Per-GPU figures are
    those of the stage that holds the most (the one KV capacity is bound by need not be it)."""

    tp: int
    pp: int
    stage_layers: tuple[int, ...]
    weight_bytes_per_gpu: float
    kv_bytes_per_token_per_gpu: float
    activation_reserve_bytes_per_gpu: float
    kv_blocks: int
    kv_capacity_tokens: int
    num_gpus: int
    stage_weight_bytes: tuple[float, ...] = ()


def max_gpus_per_node(hw: HardwareProfile) -> int:
    """GPUs one interconnect domain holds (``hw.interconnect.max_gpus_per_node``, else 8)."""
    ic = getattr(hw, "interconnect", None)
    n = getattr(ic, "max_gpus_per_node", None) if ic is not None else None
    return int(n) if n else DEFAULT_GPUS_PER_NODE


def _stages(model, hw, tp, pp, block_size_tokens, util, max_num_batched_tokens, max_num_seqs, reserve, key_prefix):
    """Per stage: (weights, reserve, KV bytes per token, free bytes) of one of its GPUs."""
    layers = stage_layers(model.num_layers, pp, key=f"{key_prefix}.pp")
    budget = hw.memory_bytes * util
    out = []
    for i, n in enumerate(layers):
        first, last = i == 0, i == pp - 1
        shard = shard_model(model, tp, n, key=f"{key_prefix}.tp")
        w = stage_weight_bytes(shard, first, last)
        r = reserve if reserve is not None else stage_activation_reserve_bytes(
            model, shard, last, max_num_batched_tokens, max_num_seqs)
        out.append((w, r, shard.kv_bytes_per_token, budget - w - r))
    return layers, out


def plan_replica(model: ModelSpec, hw: HardwareProfile, tp: int, pp: int, block_size_tokens: int,
                 gpu_memory_utilization: float, max_num_batched_tokens: int, max_num_seqs: int,
                 activation_reserve_bytes: float | None = None, pool: str | None = None,
                 key_prefix: str = "parallelism") -> ReplicaLayout:
    """Shard ``model`` over ``tp x pp`` GPUs of ``hw`` and size the replica's KV cache.

    ``activation_reserve_bytes`` (per GPU) overrides the estimate. Raises one ConfigError line
    (key ``<key_prefix>.tp``, or ``.pp``) when a GPU has no room for one KV block, naming
    ``pool``, the memory needed against the memory offered, and the smallest layout that fits.
    For tp = pp = 1 ``kv_blocks`` equals ``sim.kv.manager.kv_capacity_blocks`` exactly."""
    layers, stages = _stages(model, hw, tp, pp, block_size_tokens, gpu_memory_utilization,
                             max_num_batched_tokens, max_num_seqs, activation_reserve_bytes, key_prefix)
    blocks = []
    for w, r, kv_tok, free in stages:
        per_block = block_size_tokens * kv_tok
        if free < per_block:
            raise ConfigError(f"{key_prefix}.tp", _no_fit_message(
                model, hw, tp, pp, stages, block_size_tokens, gpu_memory_utilization,
                max_num_batched_tokens, max_num_seqs, activation_reserve_bytes, pool))
        blocks.append(int(free // per_block))
    kv_blocks = min(blocks)
    return ReplicaLayout(
        tp=tp, pp=pp, stage_layers=tuple(layers),
        weight_bytes_per_gpu=max(s[0] for s in stages),
        kv_bytes_per_token_per_gpu=max(s[2] for s in stages),
        activation_reserve_bytes_per_gpu=max(s[1] for s in stages),
        kv_blocks=kv_blocks, kv_capacity_tokens=kv_blocks * block_size_tokens, num_gpus=tp * pp,
        stage_weight_bytes=tuple(s[0] for s in stages))


def fitting_layouts(model: ModelSpec, hw: HardwareProfile, block_size_tokens: int,
                    gpu_memory_utilization: float, max_num_batched_tokens: int, max_num_seqs: int,
                    activation_reserve_bytes: float | None = None, limit: int = 2) -> list[ReplicaLayout]:
    """Up to ``limit`` layouts that fit, fewest GPUs first (at equal GPUs, larger tp first):
    tp among the sizes vLLM can shard the model over, up to the GPUs of one node, then pp
    up to the number of layers."""
    tps = [t for t in range(1, max_gpus_per_node(hw) + 1) if tp_problem(model, t) is None]
    found = []
    for tp, pp in sorted(((t, p) for t in tps for p in range(1, model.num_layers + 1)),
                         key=lambda c: (c[0] * c[1], -c[0])):
        _, stages = _stages(model, hw, tp, pp, block_size_tokens, gpu_memory_utilization,
                            max_num_batched_tokens, max_num_seqs, activation_reserve_bytes, "parallelism")
        if all(free >= block_size_tokens * kv for _, _, kv, free in stages):
            found.append(plan_replica(model, hw, tp, pp, block_size_tokens, gpu_memory_utilization,
                                      max_num_batched_tokens, max_num_seqs, activation_reserve_bytes))
            if len(found) >= limit:
                break
    return found


def _layout_name(tp: int, pp: int) -> str:
    return f"tp={tp}" if pp == 1 else f"tp={tp} x pp={pp}"


def _no_fit_message(model, hw, tp, pp, stages, block_size_tokens, util, max_num_batched_tokens,
                    max_num_seqs, reserve, pool) -> str:
    """One line: what a GPU needs against what it offers, and the smallest layout that fits."""
    w, r, kv_tok, _ = max(stages, key=lambda s: s[0] + s[1] + block_size_tokens * s[2])
    need = w + r + block_size_tokens * kv_tok
    where = f"pool '{pool}': " if pool is not None else ""
    stage = " on its largest stage" if pp > 1 else ""
    text = (f"{where}{model.name} needs {need / 1e9:.1f} GB per GPU at tp={tp}, pp={pp}{stage} "
            f"({w / 1e9:.1f} GB weights + {r / 1e9:.1f} GB activations + KV); {hw.name} offers "
            f"{hw.memory_bytes * util / 1e9:.1f} GB ({util:.0%} of {hw.memory_bytes / 1e9:.1f} GB); ")
    fits = fitting_layouts(model, hw, block_size_tokens, util, max_num_batched_tokens, max_num_seqs, reserve)
    if not fits:
        return text + (f"no layout up to tp={max_gpus_per_node(hw)} (one node) x pp={model.num_layers} fits: "
                       f"use a larger GPU or a smaller model")
    best = fits[0]
    text += (f"the smallest layout that fits is {_layout_name(best.tp, best.pp)} "
             f"(room for {best.kv_capacity_tokens:,} KV tokens")
    if len(fits) > 1:
        nxt = fits[1]
        text += f"; {_layout_name(nxt.tp, nxt.pp)}: {nxt.kv_capacity_tokens:,}"
    return text + ")"
