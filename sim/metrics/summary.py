"""Summary statistics of a run: latency percentiles, throughput, goodput, saturation.

Models: what a capacity planner reads off a load test: TTFT, TPOT, ITL and E2E (mean,
p50, p90, p99), output tokens/s and requests/s over the run, goodput (requests/s that met
every SLO target of their priority class, see sim.metrics.slo), mean KV use, preemptions,
and whether the replica was saturated (its waiting queue still growing when arrivals ended).

Ignores: warm-up trimming (results include the ramp-up; use enough requests).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sim.metrics.slo import slo_by_class, slo_met

PCTS = (50, 90, 99)


def _stats(x: np.ndarray) -> dict:
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    out = {"mean": float(np.mean(x))}
    for p, v in zip(PCTS, np.percentile(x, PCTS)):
        out[f"p{p}"] = float(v)
    return out


def weighted_stats(values: np.ndarray, weights: np.ndarray) -> dict:
    """Mean and percentiles of ``values`` repeated ``weights`` times (inverted CDF)."""
    m = weights > 0
    values, weights = values[m], weights[m]
    if len(values) == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order].astype(float)
    cum = np.cumsum(w)
    total = cum[-1]
    out = {"mean": float(np.dot(v, w) / total)}
    for p in PCTS:
        idx = int(np.searchsorted(cum, p / 100.0 * total, side="left"))
        out[f"p{p}"] = float(v[min(idx, len(v) - 1)])
    return out


def itl_stats(iterations: pd.DataFrame, extra_itl_s: list[float]) -> dict:
    """Inter-token latency: each iteration's step time weighted by the decode tokens whose
    gap it is (``num_itl_tokens``), plus the gaps that span several steps."""
    vals = iterations["step_s"].to_numpy()
    w = iterations["num_itl_tokens" if "num_itl_tokens" in iterations else "num_decode"].to_numpy()
    if extra_itl_s:
        vals = np.concatenate([vals, np.asarray(extra_itl_s)])
        w = np.concatenate([w, np.ones(len(extra_itl_s))])
    return weighted_stats(vals, w)


def saturation(iterations: pd.DataFrame, last_arrival_s: float, num_requests: int,
               max_num_seqs: int) -> tuple[bool, float]:
    """(saturated, waiting-queue growth per second over the second half of the arrivals).

    Saturated when, over the second half of the arrival window, the waiting queue grew
    by more than max(10, 2% of requests, max_num_seqs / 4) requests: arrivals outpaced
    service, so a longer run would have grown it further.
    """
    if iterations.empty or last_arrival_s <= 0:
        return False, 0.0
    t = iterations["start_s"].to_numpy()
    q = iterations["num_waiting"].to_numpy(dtype=float)
    m = (t >= last_arrival_s / 2) & (t <= last_arrival_s)
    if m.sum() < 5:
        return False, 0.0
    tt, qq = t[m], q[m]
    slope = float(np.polyfit(tt, qq, 1)[0]) if np.ptp(tt) > 0 else 0.0
    growth = slope * (last_arrival_s / 2)
    threshold = max(10.0, 0.02 * num_requests, max_num_seqs / 4)
    return bool(growth > threshold), slope


def saturation_replicas(iterations: pd.DataFrame, last_arrival_s: float, requests: pd.DataFrame,
                        max_num_seqs: list[int]) -> tuple[bool, float]:
    """Saturation of several replicas: each replica's waiting queue judged on its own rows
    (``saturation`` with its own requests and sequence cap); saturated if any replica is;
    the growth is the sum of the replicas' slopes."""
    if iterations.empty:
        return False, 0.0
    rep_it = iterations["replica"].to_numpy()
    rep_rq = requests["replica"].to_numpy()
    sat, slope = False, 0.0
    for i, cap in enumerate(max_num_seqs):
        m = rep_it == i
        s_i, g_i = saturation(iterations[m], last_arrival_s, int((rep_rq == i).sum()), cap)
        sat, slope = sat or s_i, slope + g_i
    return sat, slope


def summarize(requests: pd.DataFrame, iterations: pd.DataFrame, extra_itl_s: list[float],
              slo=None, max_num_seqs: int | list[int] = 256) -> dict:
    """The summary dictionary written to summary.json (see README for each key).
    ``max_num_seqs``: the replica's sequence cap, or each replica's (several replicas)."""
    ok = requests[~requests["rejected"]]
    done = ok[ok["finish_s"] >= 0]
    start = float(requests["arrival_s"].min()) if len(requests) else 0.0
    end = float(done["finish_s"].max()) if len(done) else start
    duration = max(end - start, 1e-12)
    out_tokens = int(done["output_tokens"].sum())
    kv_mean = None
    if len(iterations):
        w = iterations["step_s"].to_numpy()
        kv_mean = float(np.dot(iterations["kv_usage_frac"].to_numpy(), w) / w.sum()) if w.sum() > 0 else 0.0
    last_arrival = float(requests["arrival_s"].max()) if len(requests) else 0.0
    if isinstance(max_num_seqs, (list, tuple)) and len(max_num_seqs) > 1:
        sat, slope = saturation_replicas(iterations, last_arrival - start, requests, list(max_num_seqs))
    else:
        cap = max_num_seqs[0] if isinstance(max_num_seqs, (list, tuple)) else max_num_seqs
        sat, slope = saturation(iterations, last_arrival - start, len(requests), cap)
    s = {
        "num_requests": int(len(requests)),
        "num_completed": int(len(done)),
        "num_rejected": int(requests["rejected"].sum()),
        "duration_s": float(duration),
        "ttft_s": _stats(done["ttft_s"].to_numpy(dtype=float)),
        "tpot_s": _stats(done["tpot_s"].to_numpy(dtype=float)),
        "itl_s": itl_stats(iterations, extra_itl_s),
        "e2e_s": _stats(done["e2e_s"].to_numpy(dtype=float)),
        "output_tokens_per_s": out_tokens / duration,
        "requests_per_s": len(done) / duration,
        "num_preemptions": int(requests["num_preemptions"].sum()),
        "kv_usage_frac_mean": kv_mean,
        "saturated": sat,
        "waiting_growth_per_s": slope,
        "num_iterations": int(len(iterations)),
    }
    if slo is not None:
        met = slo_met(done, slo)
        s["goodput_requests_per_s"] = float(met.sum()) / duration
        s["slo_attainment_frac"] = float(met.mean()) if len(met) else 0.0
        if slo.classes:
            s["slo_by_class"] = slo_by_class(requests, done, met, slo, duration)
    return s


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v * 1e3:.1f}"


def format_summary(s: dict) -> str:
    """A readable table of a summary (latencies in ms)."""
    lines = [f"requests      {s['num_completed']}/{s['num_requests']} completed"
             + (f", {s['num_rejected']} rejected" if s.get("num_rejected") else "")
             + f" in {s['duration_s']:.2f} s simulated",
             "latency (ms)    mean      p50      p90      p99"]
    for k, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("itl_s", "ITL"), ("e2e_s", "E2E")):
        d = s[k]
        lines.append(f"  {label:<6}" + "".join(f"{_fmt(d[p]):>9}" for p in ("mean", "p50", "p90", "p99")))
    lines.append(f"throughput    {s['output_tokens_per_s']:.1f} output tok/s, {s['requests_per_s']:.2f} req/s")
    if "goodput_requests_per_s" in s:
        lines.append(f"goodput       {s['goodput_requests_per_s']:.2f} req/s meeting the SLO "
                     f"({s['slo_attainment_frac']:.1%} of requests)")
    for c, d in s.get("slo_by_class", {}).items():
        lines.append(f"  class {c:<6}{d['goodput_requests_per_s']:.2f} req/s meeting its SLO "
                     f"({d['slo_attainment_frac']:.1%} of {d['num_completed']}), "
                     f"TTFT p99 {_fmt(d['ttft_s']['p99'])} ms")
    kv = s["kv_usage_frac_mean"]
    lines.append(f"KV cache      {0 if kv is None else kv:.1%} mean use, {s['num_preemptions']} preemptions")
    if "gpus" in s:
        cpm = s.get("cost_per_million_output_tokens")
        lines.append(f"cost          {s['gpus']} GPU{'s' if s['gpus'] != 1 else ''}, ${s['cost_per_hour']:.2f}/hour, "
                     + (f"${cpm:.3f} per million output tokens" if cpm is not None else "no output tokens"))
    pools = s.get("per_pool") or {}
    if len(pools) > 1 or any(p["num_replicas"] > 1 for p in pools.values()):
        lines.append("pool          replicas  GPUs   req/s   tok/s  TTFT p50/p99 ms  TPOT p50/p99 ms   KV   busy")
        for name, p in pools.items():
            t, o = p["ttft_s"], p["tpot_s"]
            lines.append(f"  {name:<12}{p['num_replicas']:>8}{p['gpus']:>6}{p['requests_per_s']:>8.2f}"
                         f"{p['output_tokens_per_s']:>8.0f}  {_fmt(t['p50']):>6} /{_fmt(t['p99']):>7} "
                         f"{_fmt(o['p50']):>6} /{_fmt(o['p99']):>7}{p['kv_usage_frac_mean']:>6.0%}"
                         f"{p['busy_frac']:>6.0%}")
    lines.append(f"saturated     {'YES: the waiting queue was still growing when arrivals ended' if s['saturated'] else 'no'}")
    return "\n".join(lines)
