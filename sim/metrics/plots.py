"""Plots of a run: latency CDFs, batch and KV occupancy over time, throughput vs latency.

Models: the pictures people look at before the numbers: where the latency tail sits, how
full the batch and the KV cache were, whether the queue grew. Every function returns a
matplotlib Figure (nothing is shown or saved unless asked), so notebooks and the CLI share
them.

Ignores: interactive widgets; styling beyond matplotlib defaults.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "ipympl")) else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def latency_cdfs(res, ax=None):
    """Empirical CDFs of TTFT, TPOT and E2E (milliseconds, log x)."""
    fig, axes = (None, ax) if ax is not None else plt.subplots(1, 3, figsize=(13, 3.4))
    req = res.requests[~res.requests["rejected"]]
    for a, col, label in zip(np.atleast_1d(axes), ("ttft_s", "tpot_s", "e2e_s"), ("TTFT", "TPOT", "E2E")):
        x = np.sort(req[col].dropna().to_numpy()) * 1e3
        if len(x):
            a.plot(x, np.arange(1, len(x) + 1) / len(x))
            for p in (50, 99):
                a.axvline(np.percentile(x, p), ls=":", c="grey")
            a.set_xscale("log")
        a.set_xlabel(f"{label} (ms)")
        a.set_ylabel("fraction of requests")
        a.grid(alpha=0.3)
    return fig or axes[0].figure


def _binned(it, column: str, bins: int, replicas: int, duration: float) -> np.ndarray:
    """[replica, time bin] step-time-weighted mean of ``column`` over the iterations that
    start in each bin (NaN where a replica ran no step)."""
    w = it["step_s"].to_numpy()
    b = np.minimum((it["start_s"].to_numpy() / duration * bins).astype(np.int64), bins - 1)
    idx = it["replica"].to_numpy() * bins + b
    num = np.bincount(idx, weights=it[column].to_numpy(dtype=float) * w, minlength=replicas * bins)
    den = np.bincount(idx, weights=w, minlength=replicas * bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (num / den).reshape(replicas, bins)


def cluster_timeline(res, bins: int = 200):
    """Several replicas: each replica's load (running requests) over time as a heat map, with
    pool boundaries, then the fleet's running and waiting requests and each pool's KV use."""
    it = res.iterations
    pools = res.info["pools"]
    n = sum(p["num_replicas"] for p in pools)
    duration = max(float((it["start_s"] + it["step_s"]).max()), 1e-9)
    fig, axes = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True, gridspec_kw={"height_ratios": [2.2, 1, 1]})
    running = _binned(it, "num_running", bins, n, duration)
    im = axes[0].imshow(running, aspect="auto", interpolation="nearest", origin="lower", cmap="viridis",
                        extent=(0, duration, -0.5, n - 0.5))
    fig.colorbar(im, ax=axes[0], pad=0.01, label="running requests")
    first = 0
    for p in pools:
        if first:
            axes[0].axhline(first - 0.5, c="w", lw=1)
        axes[0].text(duration * 0.005, first + p["num_replicas"] / 2 - 0.5, p["name"], color="w", va="center",
                     fontsize=8)
        first += p["num_replicas"]
    axes[0].set_ylabel("replica")
    t = (np.arange(bins) + 0.5) * duration / bins
    axes[1].plot(t, np.nansum(running, axis=0), lw=0.8, label="running")
    axes[1].plot(t, np.nansum(_binned(it, "num_waiting", bins, n, duration), axis=0), lw=0.8, c="tab:red",
                 label="waiting")
    axes[1].set_ylabel("requests (fleet)")
    axes[1].legend(loc="upper right")
    kv = _binned(it, "kv_usage_frac", bins, n, duration)
    first = 0
    for p in pools:
        k = p["num_replicas"]
        with warnings.catch_warnings():  # bins where no replica of the pool ran a step stay empty
            warnings.simplefilter("ignore", RuntimeWarning)
            axes[2].plot(t, np.nanmean(kv[first:first + k], axis=0) * 100, lw=0.8, label=p["name"])
        first += k
    axes[2].set_ylabel("KV use (%), pool mean")
    axes[2].set_ylim(0, 105)
    axes[2].legend(loc="upper right")
    axes[2].set_xlabel("simulated time (s)")
    for a in axes[1:]:
        a.grid(alpha=0.3)
    s = res.summary()
    fig.suptitle(f"{n} replicas, {s['gpus']} GPUs: {s['requests_per_s']:.2f} req/s"
                 + (" (SATURATED)" if s["saturated"] else ""))
    fig.tight_layout()
    return fig


def timeline(res):
    """Batch composition, KV use and queue length over simulated time (one replica), or each
    replica's load (several: ``cluster_timeline``)."""
    pools = res.info.get("pools") or []
    if sum(p["num_replicas"] for p in pools) > 1:
        return cluster_timeline(res)
    it = res.iterations
    fig, axes = plt.subplots(3, 1, figsize=(11, 7), sharex=True)
    t = it["start_s"].to_numpy()
    axes[0].plot(t, it["num_decode"], lw=0.7, label="decode requests")
    axes[0].plot(t, it["num_prefill_reqs"], lw=0.7, label="prefill requests")
    axes[0].set_ylabel("batch")
    axes[0].legend(loc="upper right")
    axes[1].plot(t, it["kv_usage_frac"] * 100, lw=0.7, c="tab:green")
    axes[1].set_ylabel("KV use (%)")
    axes[1].set_ylim(0, 105)
    axes[2].plot(t, it["num_waiting"], lw=0.7, c="tab:red")
    pre = it[it["num_preempted"] > 0]
    if len(pre):
        axes[2].scatter(pre["start_s"], pre["num_waiting"], s=6, c="k", label="preemption", zorder=3)
        axes[2].legend(loc="upper right")
    axes[2].set_ylabel("waiting")
    axes[2].set_xlabel("simulated time (s)")
    for a in axes:
        a.grid(alpha=0.3)
    s = res.summary()
    fig.suptitle(f"{res.config.model} on {res.config.hardware}: {s['requests_per_s']:.2f} req/s"
                 + (" (SATURATED)" if s["saturated"] else ""))
    fig.tight_layout()
    return fig


def throughput_latency(results: Sequence, metric: str = "ttft_s", pct: str = "p99", labels=None):
    """Latency percentile against achieved throughput for a list of runs (e.g. a rate sweep)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys = [], []
    for r in results:
        s = r.summary()
        xs.append(s["output_tokens_per_s"])
        ys.append((s[metric][pct] or np.nan) * 1e3)
    ax.plot(xs, ys, "o-")
    if labels:
        for x, y, lab in zip(xs, ys, labels):
            ax.annotate(str(lab), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("output tokens/s")
    ax.set_ylabel(f"{metric[:-2].upper()} {pct} (ms)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot(res, kind: str = "dashboard", **kw):
    if kind in ("dashboard", "timeline"):
        return timeline(res)
    if kind in ("cdf", "latency"):
        return latency_cdfs(res)
    raise ValueError(f"unknown plot kind '{kind}'; expected dashboard|timeline|cdf")


def save_all(res, out_dir: str | Path) -> list[Path]:
    """Write timeline.png and latency_cdf.png to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in (("timeline.png", timeline(res)), ("latency_cdf.png", latency_cdfs(res))):
        p = out / name
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
