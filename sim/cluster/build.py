"""Build a run's replicas from its pools, and route requests to them.

Models: a run as a cluster: every pool (hardware, parallelism, engine, count) is built from
the same per-replica factory; all replicas share one simpy environment, one recorder and one
set of named RNG streams. A pool's model, profile, memory layout and cost model are built
once and shared by its replicas (the cost model is a pure function of a batch shape; its
caches are shared too); each replica has its own scheduler and KV pool. A request goes to
the replica the router picks (``sim.cluster.routers``); a lone replica needs no router.

Each replica's router weight is its relative capacity: the output tokens per second of a
decode step of B requests at 1,024 tokens of context each, B = min(max_num_seqs, KV tokens /
2,048), normalised so the weakest replica has weight 1 (a pool's ``router_weight``
overrides it).

Ignores: replicas joining or leaving during a run, network time between router and replicas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import simpy

from sim.cluster.views import ReplicaView
from sim.config import ConfigError, PoolConfig, SimConfig
from sim.cost.base import BatchShape, cost_models
import sim.cost  # noqa: F401  (registers the cost models)
from sim.engine.build import build_engine
from sim.engine.replica import Replica
from sim.hardware import load_hardware
from sim.metrics.records import Recorder
from sim.model_spec import load_model
from sim.parallel import ReplicaLayout, max_gpus_per_node, plan_replica


class Clock:
    """The next time anything outside the replicas can submit a request (the source sets it),
    and how far ahead a replica plans a decode run it may not finish: ``lookahead_s``, twice
    the mean gap between the arrivals one replica gets (the source's mean inter-arrival time so
    far x the number of replicas). Planning further only prices steps a routed request would
    cut off; planning less only splits a run in two events. Results do not depend on it."""

    __slots__ = ("next_s", "lookahead_s", "first_s", "count", "replicas")

    def __init__(self, replicas: int = 1):
        self.next_s = math.inf
        self.lookahead_s = math.inf
        self.first_s = math.nan
        self.count = 0
        self.replicas = replicas

    def arrival(self, t: float) -> None:
        """The source's next arrival is at ``t``."""
        self.next_s = t
        if self.count == 0:
            self.first_s = t
        elif t > self.first_s:
            self.lookahead_s = 2.0 * (t - self.first_s) / self.count * self.replicas
        self.count += 1


@dataclass
class Pool:
    """A pool as built: what its replicas share, and the replicas."""

    config: PoolConfig
    index: int
    model: object
    hardware: object
    layout: ReplicaLayout
    cost: object
    max_model_len: int
    price_usd_per_gpu_hour: float
    price_source: str
    capacity_tokens_per_s: float
    engine_info: dict
    replicas: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def num_gpus(self) -> int:
        return self.config.num_replicas * self.layout.num_gpus

    def info(self) -> dict:
        c, lay = self.config, self.layout
        return {"name": c.name, "num_replicas": c.num_replicas, "model": self.model.name,
                "hardware": self.hardware.name, "tp": lay.tp, "pp": lay.pp, "gpus": self.num_gpus,
                "efficiency_source": self.hardware.efficiency_source,
                "kv_blocks_per_replica": lay.kv_blocks, "kv_capacity_tokens_per_replica": lay.kv_capacity_tokens,
                "weight_bytes_per_gpu": lay.weight_bytes_per_gpu,
                "activation_reserve_bytes_per_gpu": lay.activation_reserve_bytes_per_gpu,
                "max_model_len": self.max_model_len,
                "price_usd_per_gpu_hour": self.price_usd_per_gpu_hour, "price_source": self.price_source,
                "capacity_tokens_per_s_per_replica": self.capacity_tokens_per_s,
                "max_num_seqs": c.engine.max_num_seqs, **self.engine_info}


def _key(cfg: SimConfig, i: int, name: str) -> str:
    return name if cfg.cluster is None else f"cluster.pools[{i}].{name}"


def _price(hw, pool: PoolConfig) -> tuple[float, str]:
    if pool.price_usd_per_gpu_hour is not None:
        return pool.price_usd_per_gpu_hour, f"pool '{pool.name}' price_usd_per_gpu_hour"
    return (float(getattr(hw, "price_usd_per_gpu_hour", 0.0) or 0.0),
            str(getattr(hw, "price_source", "") or "no price in the profile"))


def _cost(cfg: SimConfig, i: int, pool: PoolConfig, model, hw):
    tp, pp = pool.parallelism.tp, pool.parallelism.pp
    eng, cm = pool.engine, pool.cost_model
    if tp == 1 and pp == 1:
        return cost_models.build(cm.name, cm.params, key=_key(cfg, i, "cost_model"), model=model, hardware=hw,
                                 host_overhead_s=eng.host_overhead_s)
    if cm.name != "roofline":
        raise ConfigError(_key(cfg, i, "cost_model.name"),
                          f"cost model '{cm.name}' prices one GPU; tp x pp > 1 needs 'roofline'")
    from sim.cost.parallel import ParallelCost
    bad = set(cm.params) - {"backend", "dtype"}
    if bad:
        raise ConfigError(_key(cfg, i, f"cost_model.params.{sorted(bad)[0]}"),
                          "unknown parameter of the parallel roofline; expected ['backend', 'dtype']")
    return ParallelCost(model, hw, tp, pp, host_overhead_s=eng.host_overhead_s, **dict(cm.params))


def _noisy(cfg: SimConfig, i: int, pool: PoolConfig, cost, hw):
    """``cost`` scaled by cost-noise replicate ``cfg.cost_noise_replicate`` (sim.cost.noise)."""
    from sim.cost.noise import noisy_cost
    if pool.cost_model.name != "roofline":
        raise ConfigError(_key(cfg, i, "cost_model.name"), "cost_noise_replicate scales the op kinds of the "
                                                            f"'roofline' cost model, not '{pool.cost_model.name}'")
    out = noisy_cost(cost, hw, cfg.seed, cfg.cost_noise_replicate)
    if out is None:
        raise ConfigError(_key(cfg, i, "hardware"),
                          f"profile '{hw.name}' has no calibration.uncertainty for backend '{cost.backend}' (only "
                          "calibrated profiles carry held-out residuals to draw from); leave cost_noise_replicate unset")
    return out


def _capacity(cost, layout: ReplicaLayout, max_num_seqs: int) -> float:
    """Output tokens/s of a decode step of B requests at 1,024 tokens of context (module doc)."""
    per_engine = layout.kv_capacity_tokens // layout.pp
    b = max(1, min(max_num_seqs, per_engine // 2048))
    shape = BatchShape([], b, b * 1024, b)
    stages = getattr(cost, "stage_times", None)
    if layout.pp > 1 and stages is not None:  # pp micro-batches in flight: the slowest stage paces
        return layout.pp * b / max(st.total_s for st in stages(shape))
    return b / cost.step_time(shape).total_s


def build_pools(cfg: SimConfig) -> list[Pool]:
    """Every pool's model, profile, memory layout and cost model (no replicas yet)."""
    out = []
    for i, pc in enumerate(cfg.pools):
        eng = pc.engine
        if eng.max_num_batched_tokens < eng.max_num_seqs:
            raise ConfigError(_key(cfg, i, "engine.max_num_batched_tokens"),
                              f"must be >= engine.max_num_seqs ({eng.max_num_seqs}), as vLLM requires")
        model = load_model(pc.model, cfg.base_dir)
        hw = load_hardware(pc.hardware, cfg.base_dir)
        par = pc.parallelism
        node = max_gpus_per_node(hw)
        if par.tp > node:
            raise ConfigError(_key(cfg, i, "parallelism.tp"),
                              f"tp={par.tp} exceeds the {node} GPUs one {hw.name} node holds "
                              "(interconnect.max_gpus_per_node); tensor parallelism across nodes is not modelled")
        layout = plan_replica(model, hw, par.tp, par.pp, eng.block_size_tokens, eng.gpu_memory_utilization,
                              eng.max_num_batched_tokens, eng.max_num_seqs, eng.activation_reserve_bytes,
                              pool=pc.name if cfg.cluster is not None else None,
                              key_prefix=_key(cfg, i, "parallelism"))
        if par.pp > 1 and layout.kv_blocks < par.pp:
            raise ConfigError(_key(cfg, i, "parallelism.pp"),
                              f"{layout.kv_blocks} KV blocks cannot be split over {par.pp} pipeline micro-batches")
        cost = _cost(cfg, i, pc, model, hw)
        if cfg.cost_noise_replicate is not None:
            cost = _noisy(cfg, i, pc, cost, hw)
        price, src = _price(hw, pc)
        max_model_len = eng.max_model_len or model.max_position_embeddings
        out.append(Pool(pc, i, model, hw, layout, cost, max_model_len, price, src,
                        _capacity(cost, layout, eng.max_num_seqs), {}))
    return out


class Cluster:
    """The replicas of a run and its router."""

    def __init__(self, env: simpy.Environment, pools: list[Pool], replicas: list, views: list[ReplicaView],
                 router, clock: Clock):
        self.env = env
        self.pools = pools
        self.replicas = replicas
        self.views = views
        self.router = router
        self.clock = clock
        self.single = len(replicas) == 1

    def submit(self, r) -> None:
        i = 0 if self.single else self.router.route(r, self.env.now)
        self.replicas[i].submit(r)


def build_cluster(cfg: SimConfig, env: simpy.Environment, pools: list[Pool], rec: Recorder, streams,
                  on_finish=None) -> Cluster:
    """Replicas (with their views) for every pool, and the router over them."""
    n_total = sum(p.config.num_replicas for p in pools)
    clock = Clock(n_total)
    replicas, views = [], []
    multi = n_total > 1
    wmin = min(p.capacity_tokens_per_s for p in pools)
    for pool in pools:
        pc, lay = pool.config, pool.layout
        weight = pc.router_weight if pc.router_weight is not None else pool.capacity_tokens_per_s / wmin
        for _ in range(pc.num_replicas):
            index = len(replicas)
            view = ReplicaView(index, pc.name, pool.index, lay.kv_blocks, pc.engine.block_size_tokens, weight)
            if lay.pp > 1:
                from sim.engine.pipeline import PipelineReplica
                rep = PipelineReplica(env, index, pc.engine, pool.model, pool.hardware, lay, pool.cost, rec,
                                      pool.max_model_len, on_finish=on_finish, view=view)
                pool.engine_info = rep.engine_info
            else:
                sched, cost, info = build_engine(pc.engine, pool.model, pool.hardware, lay.kv_blocks, pool.cost,
                                                 pool.max_model_len)
                pool.engine_info = info
                rep = Replica(env, index, sched, cost, rec, pool.max_model_len, on_finish=on_finish,
                              view=view if multi else None, clock=clock if multi else None,
                              interruptible=multi)
                rep.fast_forward = cfg.fast_forward
            replicas.append(rep)
            views.append(view)
            pool.replicas.append(rep)
    router = None
    rc = cfg.cluster.router if cfg.cluster is not None else None
    if multi:
        from sim.cluster.routers import build_router
        name, params = (rc.name, rc.params) if rc is not None else ("round_robin", {})
        router = build_router(name, params, views, streams.stream("router"), cfg.base_dir, key="cluster.router")
    elif rc is not None:  # one replica needs no router, but a wrong name is still an error
        from sim.cluster.routers import router_class
        router_class(rc.name, cfg.base_dir, key="cluster.router")
    return Cluster(env, pools, replicas, views, router, clock)
