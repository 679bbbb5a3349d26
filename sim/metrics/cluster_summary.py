"""Cluster figures of a run's summary: GPUs, their price, and one line per pool.

Models: what a fleet costs and what each pool delivered: ``gpus`` (replicas x tp x pp,
summed over pools), ``cost_per_hour`` (GPUs x each pool's price per GPU-hour, from the
hardware profile or the pool's override, in USD), ``cost_per_million_output_tokens`` (that
hourly cost over the output tokens the run produced per hour at its measured throughput),
and ``per_pool``: requests, output tokens/s, requests/s, TTFT and TPOT p50/p99, mean KV
use (step-weighted, over its replicas) and busy fraction (the share of the run's duration
its replicas spent in steps, averaged over its replicas; for a pipeline replica, whose
micro-batches overlap, its stages' work, transfers included, over pp times the duration).

Ignores: idle-capacity pricing subtleties (reserved vs on-demand, partial hours), power.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def _pcts(x: np.ndarray) -> dict:
    x = x[~np.isnan(x)]
    if not len(x):
        return {"p50": None, "p99": None}
    p50, p99 = np.percentile(x, (50, 99))
    return {"p50": float(p50), "p99": float(p99)}


def cluster_summary(requests: pd.DataFrame, iterations: pd.DataFrame, pools: list[dict], s: dict) -> dict:
    """The cluster keys of ``summary()`` (``s`` holds the run-wide ones already computed)."""
    duration = s["duration_s"]
    gpus = int(sum(p["gpus"] for p in pools))
    cost_per_hour = float(sum(p["gpus"] * p["price_usd_per_gpu_hour"] for p in pools))
    tok_per_hour = s["output_tokens_per_s"] * 3600.0
    out = {"gpus": gpus, "cost_per_hour": cost_per_hour,
           "cost_per_million_output_tokens": cost_per_hour / tok_per_hour * 1e6 if tok_per_hour > 0 else None}
    rep_it = iterations["replica"].to_numpy() if len(pools) > 1 else None
    step = iterations["step_s"].to_numpy()
    kv = iterations["kv_usage_frac"].to_numpy()
    pool_col = requests["pool"].to_numpy() if "pool" in requests else None
    per_pool = {}
    first = 0
    for p in pools:
        n = p["num_replicas"]
        reps = np.arange(first, first + n)
        first += n
        whole = len(pools) == 1  # one pool: every row is its (no masks over the whole run)
        rq = requests if whole or pool_col is None else requests[pool_col == p["name"]]
        ok = rq[~rq["rejected"]]
        done = ok[ok["finish_s"] >= 0]
        m = slice(None) if whole else (rep_it == first - n if n == 1 else np.isin(rep_it, reps))
        w = step[m]
        pp = p.get("pp", 1)
        if pp > 1 and "gemm_s" in iterations:  # micro-batches overlap: the stages' work over pp
            work = sum(iterations[c].to_numpy()[m].sum() for c in ("gemm_s", "attn_s", "other_s", "comm_s"))
        else:
            work = w.sum()
        busy = work / (duration * n * pp) if duration > 0 else 0.0
        per_pool[p["name"]] = {
            "num_replicas": n, "gpus": p["gpus"], "hardware": p["hardware"], "tp": p["tp"], "pp": p["pp"],
            "num_requests": int(len(rq)), "num_completed": int(len(done)),
            "output_tokens_per_s": float(done["output_tokens"].sum()) / duration if duration > 0 else 0.0,
            "requests_per_s": len(done) / duration if duration > 0 else 0.0,
            "ttft_s": _pcts(done["ttft_s"].to_numpy(dtype=float)),
            "tpot_s": _pcts(done["tpot_s"].to_numpy(dtype=float)),
            "kv_usage_frac_mean": float(np.dot(kv[m], w) / w.sum()) if w.sum() > 0 else 0.0,
            "busy_frac": float(min(1.0, busy)),
            "cost_per_hour": p["gpus"] * p["price_usd_per_gpu_hour"],
        }
    out["per_pool"] = per_pool
    return out
