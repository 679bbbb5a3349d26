"""Frozen configuration dataclasses.

Models: every knob of a simulation as plain, picklable, frozen data. A run is a pure
function of (resolved config, seed). A run is always a cluster: a config without
``cluster:`` is one pool of one replica built from the top-level ``model``, ``hardware``,
``parallelism`` and ``engine``; pools inherit those unless they set their own (resolved
at construction, so a loaded config shows every pool whole). Loading is strict
(``sim.config_loader``, re-exported here): an unknown key, a wrong type or an impossible
value raises :class:`ConfigError` naming the file, the dotted key and what was expected.

Ignores: anything not declared here; there are no global defaults outside these classes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from sim.errors import ConfigError


def _c(*, ge: float | None = None, gt: float | None = None, le: float | None = None,
       choices: tuple | None = None, doc: str = "") -> dict:
    """Field metadata: numeric bounds, allowed values and a one-line description."""
    return {"ge": ge, "gt": gt, "le": le, "choices": choices, "doc": doc}


@dataclass(frozen=True)
class DistSpec:
    """A named distribution or process with its parameters (checked by its registry)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TraceSpec:
    """Replay of a recorded trace (see sim.workload.traces)."""

    path: str = field(metadata=_c(doc="trace file; relative paths resolve against the config file"))
    format: str = field(default="auto", metadata=_c(doc="reader name or 'auto' (by file name)"))
    columns: Mapping[str, str] = field(default_factory=dict,
                                       metadata=_c(doc="generic CSV/JSONL: our field -> your column"))
    start_s: float = field(default=0.0, metadata=_c(ge=0))
    end_s: float | None = field(default=None, metadata=_c(gt=0))
    max_requests: int | None = field(default=None, metadata=_c(ge=1))
    time_scale: float = field(default=1.0, metadata=_c(gt=0, doc="multiply inter-arrival times"))
    target_rate_per_s: float | None = field(default=None, metadata=_c(gt=0))
    sample_frac: float = field(default=1.0, metadata=_c(gt=0, le=1))
    copies: int = field(default=1, metadata=_c(
        ge=1, doc="superpose this many copies, each shifted by a random offset within the trace's span "
                  "(wrapped): N times the traffic with the same daily/hourly profile"))
    on_bad_row: str = field(default="error", metadata=_c(choices=("error", "skip")))


@dataclass(frozen=True)
class WorkloadConfig:
    """Which requests arrive when, with how many prompt and output tokens."""

    num_requests: int | None = field(default=None, metadata=_c(ge=1))
    duration_s: float | None = field(default=None, metadata=_c(gt=0))
    arrival: DistSpec = field(default_factory=lambda: DistSpec("poisson", {"rate_per_s": 1.0}))
    prompt_tokens: DistSpec = field(default_factory=lambda: DistSpec("fixed", {"value": 512}))
    output_tokens: DistSpec = field(default_factory=lambda: DistSpec("fixed", {"value": 128}))
    trace: TraceSpec | None = None
    priority: DistSpec | None = field(default=None, metadata=_c(
        doc="per-request priority class, a length distribution (lower = more urgent; engine.scheduling_policy: priority)"))


@dataclass(frozen=True)
class EngineConfig:
    """One serving engine replica's settings (vLLM names where vLLM has the knob).

    Fields left None take their value from ``preset`` if it sets them, else the base
    default (vLLM v1's); this happens at construction, so a loaded config always shows the
    expanded values (see ``sim.engine.presets`` and docs/policies.md).
    """

    preset: str | None = field(default=None, metadata=_c(
        doc="engine preset: static, orca, vllm-v0, vllm-v1, sarathi-serve (sim.engine.presets)"))
    batching: str | None = field(default=None, metadata=_c(
        doc="batching policy (sim.engine.batching); None = preset or vllm-v1"))
    max_num_seqs: int = field(default=256, metadata=_c(ge=1))
    max_num_batched_tokens: int | None = field(default=None, metadata=_c(ge=1, doc="token budget per step; None = preset or 8192"))
    block_size_tokens: int = field(default=16, metadata=_c(ge=1))
    gpu_memory_utilization: float = field(default=0.9, metadata=_c(gt=0, le=1))
    activation_reserve_bytes: float | None = field(
        default=None, metadata=_c(ge=0, doc="workspace held back from KV; None = estimated from max_num_batched_tokens"))
    enable_chunked_prefill: bool | None = field(default=None, metadata=_c(doc="None = preset or the batching policy's default"))
    max_model_len: int | None = field(default=None, metadata=_c(ge=1))
    scheduling_policy: str | None = field(default=None, metadata=_c(
        doc="queue order: fcfs, priority, shortest-prompt-first (sim.engine.queues); None = preset or fcfs"))
    preemption: str | None = field(default=None, metadata=_c(choices=("recompute", "swap"), doc="None = preset or recompute"))
    swap_space_bytes: float = field(default=4.0 * 2**30, metadata=_c(ge=0, doc="host swap space (vLLM --swap-space)"))
    kv_mode: str | None = field(default=None, metadata=_c(
        choices=("paged", "contiguous"), doc="contiguous = reserve each request's max length at admission"))
    max_tokens: int | None = field(default=None, metadata=_c(
        ge=1, doc="contiguous KV: output tokens reserved beyond the prompt; None = up to max_model_len"))
    watermark_frac: float | None = field(default=None, metadata=_c(
        ge=0, le=0.5, doc="fraction of blocks admission keeps free (vLLM v0: 0.01); None = preset or 0"))
    tbt_target_s: float | None = field(default=None, metadata=_c(
        gt=0, doc="Sarathi-Serve: choose the token budget so a step meets this time-between-tokens"))
    host_overhead_s: float = field(default=3.0e-3, metadata=_c(ge=0, doc="CPU time per step (schedule, prepare, sample)"))
    cuda_graphs: bool = field(default=False, metadata=_c(doc="decode-only steps replay CUDA graphs (padded batch, cheap launches)"))
    cuda_graph_max_batch_size: int = field(default=512, metadata=_c(ge=1, doc="largest captured decode batch"))
    cuda_graph_launch_s: float = field(default=1.0e-6, metadata=_c(ge=0, doc="per-kernel launch cost inside a graph"))

    def __post_init__(self):
        from sim.engine.presets import resolve  # lazy: sim.engine sits above sim.config

        for name, value in resolve(self).items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class CostConfig:
    """Which cost model prices a step, and its overrides."""

    name: str = "roofline"
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SLOTargets:
    """Latency targets; a request meets them if it meets every target given (None = no target)."""

    ttft_s: float | None = field(default=None, metadata=_c(gt=0))
    tpot_s: float | None = field(default=None, metadata=_c(gt=0))
    e2e_s: float | None = field(default=None, metadata=_c(gt=0))


@dataclass(frozen=True)
class SLOConfig(SLOTargets):
    """Latency targets for all requests, optionally per priority class (``Request.priority``).

    ``classes: {c: {ttft_s: ...}}`` judges a request of class ``c`` against its entry; a
    target the entry leaves out (or null) falls back to the top-level one, and a class with
    no entry uses the top-level targets. Keys are class numbers (integers >= 0; the digit
    strings that JSON/YAML dumps write are accepted too). Entries are normalised at
    construction to ``{int: SLOTargets}``.
    """

    classes: Mapping[int, SLOTargets] = field(default_factory=dict, metadata=_c(
        doc="per priority class targets; missing targets fall back to the top-level ones"))

    def __post_init__(self):
        object.__setattr__(self, "classes", _slo_classes(self.classes, "slo.classes"))

    def targets_for(self, cls: int) -> SLOTargets:
        """The targets a request of priority class ``cls`` is judged against."""
        own = self.classes.get(cls)
        if own is None:
            return SLOTargets(self.ttft_s, self.tpot_s, self.e2e_s)
        return SLOTargets(*(getattr(self, n) if getattr(own, n) is None else getattr(own, n)
                            for n in ("ttft_s", "tpot_s", "e2e_s")))


def _slo_classes(value: Any, key: str) -> dict[int, SLOTargets]:
    """Strict ``{class: targets}``: keys integers >= 0, values SLOTargets mappings."""
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping of class number -> targets, got {value!r}")
    out: dict[int, SLOTargets] = {}
    for k, v in value.items():
        if isinstance(k, str) and k.isdigit():
            c = int(k)
        elif isinstance(k, int) and not isinstance(k, bool) and k >= 0:
            c = k
        else:
            raise ConfigError(f"{key}.{k}", f"expected a class number (an integer >= 0) as key, got {k!r}")
        if c in out:
            raise ConfigError(f"{key}.{k}", f"class {c} is given twice")
        out[c] = _convert(SLOTargets, v, f"{key}.{c}")
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class ParallelismConfig:
    """How one replica is split over GPUs (see docs/parallelism.md)."""

    tp: int = field(default=1, metadata=_c(ge=1, doc="tensor-parallel GPUs (heads, KV heads and MLP columns split)"))
    pp: int = field(default=1, metadata=_c(ge=1, doc="pipeline stages (layers split; pp micro-batches in flight)"))

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp


@dataclass(frozen=True)
class RouterConfig:
    """Which router spreads requests over the replicas (sim.cluster.routers), or
    ``path/to/file.py:Class`` for your own (docs/routers.md)."""

    name: str = "round_robin"
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PoolConfig:
    """``num_replicas`` identical replicas. Fields left out (None) take the top-level value;
    in YAML a pool's ``engine`` overrides the top-level engine key by key."""

    name: str = field(metadata=_c(doc="pool name (unique); the requests frame's pool column"))
    num_replicas: int = field(default=1, metadata=_c(ge=1))
    model: str | None = None
    hardware: str | None = None
    parallelism: ParallelismConfig | None = None
    engine: EngineConfig | None = None
    cost_model: CostConfig | None = None
    price_usd_per_gpu_hour: float | None = field(default=None, metadata=_c(
        ge=0, doc="overrides the hardware profile's price per GPU-hour"))
    router_weight: float | None = field(default=None, metadata=_c(
        gt=0, doc="relative capacity routers weigh by; None = from the replica's decode throughput"))


@dataclass(frozen=True)
class ClusterConfig:
    """Pools of replicas behind one router."""

    pools: tuple[PoolConfig, ...] = field(metadata=_c(doc="at least one pool"))
    router: RouterConfig = field(default_factory=RouterConfig)

    def _check(self, prefix: str) -> None:
        if not self.pools:
            raise ConfigError(f"{prefix}.pools", "expected at least one pool")
        seen = set()
        for i, p in enumerate(self.pools):
            if not p.name or not p.name.strip():
                raise ConfigError(f"{prefix}.pools[{i}].name", "expected a non-empty name")
            if p.name in seen:
                raise ConfigError(f"{prefix}.pools[{i}].name", f"pool name '{p.name}' is used twice")
            seen.add(p.name)


DEFAULT_POOL = "default"


@dataclass(frozen=True)
class SimConfig:
    """A whole simulation: model, hardware, parallelism, engine, workload, cluster, seed."""

    model: str = field(metadata=_c(doc="shipped model name or path to an HF config.json / model YAML"))
    hardware: str | None = field(default=None, metadata=_c(
        doc="hardware profile name or path to a profile YAML (required unless every pool sets one)"))
    parallelism: ParallelismConfig = field(default_factory=ParallelismConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    cost_model: CostConfig = field(default_factory=CostConfig)
    cluster: ClusterConfig | None = field(default=None, metadata=_c(
        doc="pools of replicas behind a router; none = one replica of the top-level settings"))
    slo: SLOConfig | None = None
    seed: int = field(default=0, metadata=_c(ge=0))
    fast_forward: bool = field(default=True, metadata=_c(doc="fast-forward pure-decode runs (same results, faster)"))
    cost_noise_replicate: int | None = field(default=None, metadata=_c(
        ge=0, doc="cost-noise replicate number: scale each op kind's step time by one draw from the hardware "
                  "profile's held-out residuals (sim.cost.noise; sim.run_replicates sets it); none = no noise"))
    base_dir: str = field(default=".", metadata=_c(doc="where relative paths resolve (set by the loader)"))

    def __post_init__(self):
        if self.cluster is not None:  # pools inherit what they leave out
            top = {"model": self.model, "hardware": self.hardware, "parallelism": self.parallelism,
                   "engine": self.engine, "cost_model": self.cost_model}
            pools = tuple(dataclasses.replace(p, **{k: v for k, v in top.items() if getattr(p, k) is None})
                          for p in self.cluster.pools)
            object.__setattr__(self, "cluster", dataclasses.replace(self.cluster, pools=pools))

    def _check(self, prefix: str) -> None:
        for i, p in enumerate(self.pools):
            if p.hardware is None:
                key = "hardware" if self.cluster is None else f"cluster.pools[{i}].hardware"
                raise ConfigError(key, "missing: set the top-level hardware or the pool's own "
                                       "(a profile name or a path to a profile YAML)")

    @property
    def pools(self) -> tuple[PoolConfig, ...]:
        """The pools of this run, each whole (a config without ``cluster`` is one pool of one
        replica named 'default')."""
        if self.cluster is not None:
            return self.cluster.pools
        return (PoolConfig(DEFAULT_POOL, 1, self.model, self.hardware, self.parallelism, self.engine,
                           self.cost_model),)


# the loader (strict conversion from plain data), re-exported: sim.config is where callers look
from sim.config_loader import (  # noqa: E402
    apply_overrides, dump_yaml, from_dict, load_config, read_yaml, to_dict, _convert)

__all__ = ["ConfigError", "DistSpec", "TraceSpec", "WorkloadConfig", "EngineConfig", "CostConfig",
           "SLOTargets", "SLOConfig", "ParallelismConfig", "RouterConfig", "PoolConfig", "ClusterConfig",
           "SimConfig", "apply_overrides", "dump_yaml", "from_dict", "load_config", "read_yaml", "to_dict"]
