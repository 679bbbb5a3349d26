"""Build a simulation from a config, run it, and hold its results.

Models: the wiring of one run: pools of replicas (sim.cluster.build: model + hardware +
parallelism -> memory layout, cost model and KV capacity; scheduler and replica per
replica; a router over them) and a request source (open loop: one simpy process that
submits each request at its arrival time; closed loop: clients that submit their next
request when the previous one finishes). A run is a pure function of the resolved config
and its seed; a config without ``cluster:`` is one pool of one replica.

Ignores: anything outside the engines (tokenizers, network, load balancers' own latency).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import simpy

from sim.cluster.build import Cluster, build_cluster, build_pools
from sim.config import ConfigError, SimConfig, dump_yaml, load_config
from sim.engine.request import Request
from sim.metrics.cluster_summary import cluster_summary
from sim.metrics.records import Recorder
from sim.metrics.summary import format_summary, summarize
from sim.rng import RngStreams
from sim.workload.generator import RequestStream, build_stream


# the iteration columns summary() reads (the replica: per-replica saturation and per-pool figures)
PP_COLUMNS = ["gemm_s", "attn_s", "other_s", "comm_s"]  # a pipeline pool's busy fraction
SUMMARY_ITERATION_COLUMNS = ["replica", "start_s", "step_s", "num_decode", "num_itl_tokens", "num_waiting",
                             "kv_usage_frac"]


class Results:
    """What a run produced: per-request and per-iteration DataFrames plus the config.

    ``iterations`` may be given as a DataFrame or as a function ``(columns=None) -> DataFrame``
    (``Recorder.iterations_frame``): the full frame, one row per engine iteration (hundreds of
    thousands in a long run), is then built on first access, and ``summary()`` builds only
    the columns it reads.
    """

    def __init__(self, config: SimConfig, requests: pd.DataFrame,
                 iterations: pd.DataFrame | Callable[..., pd.DataFrame], extra_itl_s: list[float],
                 info: dict | None = None):
        self.config = config
        self.requests = requests
        self.extra_itl_s = extra_itl_s
        self.info = {} if info is None else info
        self._iterations = iterations if isinstance(iterations, pd.DataFrame) else None
        self._build = None if self._iterations is not None else iterations
        self._summary_iterations: pd.DataFrame | None = None

    @property
    def iterations(self) -> pd.DataFrame:
        """One row per engine iteration (built on first access)."""
        if self._iterations is None:
            self._iterations = self._build()
            self._build = self._summary_iterations = None
        return self._iterations

    def summary(self) -> dict:
        """TTFT/TPOT/ITL/E2E percentiles, throughput, goodput, KV use, saturation."""
        it = self._iterations
        if it is None:
            if self._summary_iterations is None:
                pools = self.info.get("pools", [])
                cols = SUMMARY_ITERATION_COLUMNS[1:] if sum(p["num_replicas"] for p in pools) <= 1 else \
                    SUMMARY_ITERATION_COLUMNS  # one replica: no replica column to build
                pp = any(p["pp"] > 1 for p in pools)
                self._summary_iterations = self._build(cols + (PP_COLUMNS if pp else []))
            it = self._summary_iterations
        pools = self.info.get("pools")
        max_seqs = [p["max_num_seqs"] for p in pools for _ in range(p["num_replicas"])] if pools else \
            self.config.engine.max_num_seqs
        s = summarize(self.requests, it, self.extra_itl_s, self.config.slo, max_seqs)
        if pools:
            s.update(cluster_summary(self.requests, it, pools, s))
        return s

    def format(self) -> str:
        return format_summary(self.summary())

    def save(self, out_dir: str | Path) -> Path:
        """Write summary.json, requests.parquet, iterations.parquet, config.resolved.yaml."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps({**self.summary(), "info": self.info}, indent=2) + "\n")
        self.requests.to_parquet(out / "requests.parquet", index=False)
        self.iterations.to_parquet(out / "iterations.parquet", index=False)
        (out / "config.resolved.yaml").write_text(dump_yaml(self.config))
        return out

    def plot(self, kind: str = "dashboard", **kw):
        from sim.metrics import plots

        return plots.plot(self, kind, **kw)


def simulate(cfg: SimConfig, progress: Callable[[int, int], None] | None = None) -> Results:
    """Run ``cfg`` to completion (every request finished or rejected)."""
    if cfg.pools[0].hardware is None:
        raise ConfigError("hardware", "missing: set the top-level hardware or each pool's own")
    pools = build_pools(cfg)
    streams = RngStreams(cfg.seed)
    stream = build_stream(cfg.workload, cfg.base_dir, streams)
    env = simpy.Environment()
    kv_totals = [p.layout.kv_blocks for p in pools for _ in range(p.config.num_replicas)]
    rec = Recorder(kv_totals[0] if len(kv_totals) == 1 else kv_totals)
    total = len(stream.prompt_tokens) if not (stream.closed and stream.more_lengths) else None
    if progress is not None:
        rec.progress = lambda n: progress(n, total)
    source = _ClosedLoopSource(env, stream) if stream.closed else None
    cluster = build_cluster(cfg, env, pools, rec, streams, on_finish=source.on_finish if source else None)
    if source:
        source.start(cluster)
    else:
        env.process(_open_loop(env, cluster, stream))
    env.run()
    p0 = pools[0]
    info = {"model": p0.model.summary(), "hardware": p0.hardware.name,
            "efficiency_source": p0.hardware.efficiency_source,
            "kv_blocks": p0.layout.kv_blocks, "kv_capacity_tokens": p0.layout.kv_capacity_tokens,
            "activation_reserve_bytes": p0.layout.activation_reserve_bytes_per_gpu,
            "max_model_len": p0.max_model_len, **p0.engine_info,
            "pools": [p.info() for p in pools]}
    pool_of = [p.name for p in pools for _ in range(p.config.num_replicas)]
    return Results(cfg, rec.requests_frame(pool_of), rec.iterations_frame, rec.extra_itl_s, info)


def _make_request(stream: RequestStream, i: int, t: float, client: int = -1) -> Request:
    h = stream.hash_ids[i] if stream.hash_ids is not None else None
    prio = stream.priority_of(i) if getattr(stream, "priority_of", None) is not None else 0
    return Request(i, t, int(stream.prompt_tokens[i]), int(stream.output_tokens[i]), priority=prio,
                   hash_ids=h, client=client)


def _open_loop(env: simpy.Environment, cluster: Cluster, stream: RequestStream):
    """Submit each request at its arrival time. A lone replica plans its decode runs up to the
    next arrival (``horizon_s``); in a cluster every replica plans past it (its runs can be
    cut) and chains runs only up to it (``clock.next_s``)."""
    times = stream.arrival_s.tolist()
    clock = cluster.clock
    lone = cluster.replicas[0] if cluster.single else None
    submit = cluster.submit
    arrival = clock.arrival
    for i, t in enumerate(times):
        arrival(t)
        if lone is not None:
            lone.horizon_s = t
        if t > env.now:
            yield env.timeout(t - env.now)
        submit(_make_request(stream, i, env.now))
    clock.next_s = float("inf")
    if lone is not None:
        lone.horizon_s = float("inf")


class _ClosedLoopSource:
    """N clients; each submits its next request when its previous one finishes."""

    def __init__(self, env: simpy.Environment, stream: RequestStream):
        self.env = env
        self.stream = stream
        self.next_id = 0
        self.cluster: Cluster | None = None

    def _available(self) -> bool:
        s = self.stream
        if s.duration_s is not None and self.env.now >= s.duration_s:
            return False
        if self.next_id >= len(s.prompt_tokens):
            if s.more_lengths is None:
                return False
            import numpy as np
            p, o = s.more_lengths()
            s.prompt_tokens = np.concatenate([s.prompt_tokens, p])
            s.output_tokens = np.concatenate([s.output_tokens, o])
        return True

    def _submit(self, client: int) -> None:
        if self._available():
            i = self.next_id
            self.next_id += 1
            self.cluster.submit(_make_request(self.stream, i, self.env.now, client))

    def start(self, cluster: Cluster) -> None:
        self.cluster = cluster
        for c in range(self.stream.concurrency):
            self._submit(c)

    def on_finish(self, r: Request) -> None:
        self._submit(r.client)


def run(config: str | Path | Mapping[str, Any] | SimConfig, progress: bool = False, **overrides: Any) -> Results:
    """Run a simulation from a YAML path, a mapping or a SimConfig.

    Keyword overrides use ``__`` for dots: ``run("cfg.yaml", engine__max_num_seqs=64, seed=2)``.
    """
    cfg = load_config(config, overrides or None)
    cb = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=None, unit="req", desc="simulating")

        def cb(n, total):
            bar.total = total
            bar.n = n
            bar.refresh()
    try:
        return simulate(cfg, cb)
    finally:
        if progress:
            bar.close()
