"""Engine presets: a named engine's settings, expanded into ``EngineConfig`` at load time.

Models: how a config names a whole engine (``engine: {preset: vllm-v0}``) and still shows
every setting: a preset fills the preset-controlled fields of ``EngineConfig`` that the
config leaves unset (None); explicit fields win; fields neither set nor in the preset take
the base defaults (vLLM v1's). The resolved config (``config.resolved.yaml``) therefore
lists every expanded field, and reloading it gives the same config. Policy names
(batching, scheduling policy, preemption) are checked against their registries here, so a
typo fails at load with the dotted key.

Ignores: presets of other engines' knobs that the simulator does not model (e.g.
SGLang's radix scheduling; see the prefix-caching issue).
"""
from __future__ import annotations

from sim.config import ConfigError
from sim.engine.batching import batching_policies
from sim.engine.preemption import preemption_modes
from sim.engine.queues import queue_orders
from sim.registry import Registry

engine_presets: Registry = Registry("engine preset")

# The fields a preset may set (None in EngineConfig means "from the preset, else this").
BASE = {"batching": "vllm-v1", "max_num_batched_tokens": 8192, "enable_chunked_prefill": None,
        "scheduling_policy": "fcfs", "preemption": "recompute", "kv_mode": "paged", "watermark_frac": 0.0}


@engine_presets.register("static")
def static() -> dict:
    """Request-level batching with per-request max-length KV reservation (FasterTransformer)."""
    return {"batching": "static", "enable_chunked_prefill": False, "kv_mode": "contiguous"}


@engine_presets.register("orca")
def orca() -> dict:
    """Orca: iteration-level batching, whole prompts, KV reserved for the max length (OSDI'22)."""
    return {"batching": "orca", "enable_chunked_prefill": False, "kv_mode": "contiguous"}


@engine_presets.register("vllm-v0")
def vllm_v0() -> dict:
    """vLLM v0 defaults: prefill-first, no chunking, paged KV, 1% block watermark, recompute."""
    return {"batching": "vllm-v0", "enable_chunked_prefill": False, "kv_mode": "paged",
            "watermark_frac": 0.01, "preemption": "recompute"}


@engine_presets.register("vllm-v1")
def vllm_v1() -> dict:
    """vLLM v1 defaults: chunked prefill under an 8192-token budget, decode-first, recompute."""
    return {"batching": "vllm-v1", "enable_chunked_prefill": True, "max_num_batched_tokens": 8192,
            "kv_mode": "paged", "watermark_frac": 0.0, "preemption": "recompute"}


@engine_presets.register("sarathi-serve")
def sarathi_serve() -> dict:
    """Sarathi-Serve: stall-free batching with a 512-token chunk (OSDI'24)."""
    return {"batching": "sarathi-serve", "enable_chunked_prefill": True, "max_num_batched_tokens": 512,
            "kv_mode": "paged", "watermark_frac": 0.0, "preemption": "recompute"}


def resolve(cfg) -> dict:
    """Values for ``cfg``'s unset preset-controlled fields; checks names and combinations."""
    preset = {}
    if cfg.preset is not None:
        preset = engine_presets.get(cfg.preset, "engine.preset")()
    out = {}
    for name, base in BASE.items():
        if getattr(cfg, name) is None:
            out[name] = preset.get(name, base)
    val = lambda n: out.get(n, getattr(cfg, n))  # noqa: E731
    policy = batching_policies.get(val("batching"), "engine.batching")
    queue_orders.get(val("scheduling_policy"), "engine.scheduling_policy")
    preemption_modes.get(val("preemption"), "engine.preemption")
    if val("enable_chunked_prefill") is None:
        out["enable_chunked_prefill"] = policy.default_chunked
    elif val("enable_chunked_prefill") and not policy.can_chunk:
        raise ConfigError("engine.enable_chunked_prefill",
                          f"batching '{val('batching')}' never chunks prefills; set it to false")
    if val("max_num_batched_tokens") < cfg.max_num_seqs:
        raise ConfigError("engine.max_num_batched_tokens",
                          f"must be >= engine.max_num_seqs ({cfg.max_num_seqs}), as vLLM requires")
    if cfg.tbt_target_s is not None and not val("enable_chunked_prefill"):
        raise ConfigError("engine.tbt_target_s", "a stall-free token budget needs chunked prefill")
    return out
