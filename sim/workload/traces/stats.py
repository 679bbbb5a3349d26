"""Summary statistics of a trace frame (the numbers ``servesim trace stats`` prints).

Models: the conventions of ``shared/traces/compute_stats.py`` so that the numbers match
``stats.json``: numpy "linear" percentiles; mean rate = (rows - 1) / (last - first
arrival); inter-arrival CV = population std / mean of the gaps; index of dispersion
(variance / mean, population) of request counts in 1-s and 60-s bins anchored at the first
arrival; prefix reuse over ``hash_ids`` replayed in arrival order with an infinite cache.

Ignores: per-client breakdowns and anything that needs a simulation (cache sizes, queues).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

PCTS = (("p50", 50), ("p90", 90), ("p99", 99))


def _dist(prefix: str, x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=float)
    out = {f"{prefix}_mean": float(x.mean())}
    out.update({f"{prefix}_{k}": float(np.percentile(x, q)) for k, q in PCTS})
    out[f"{prefix}_max"] = float(x.max())
    return out


def _arrivals(t: np.ndarray) -> dict:
    t = np.sort(np.asarray(t, dtype=float))
    span = float(t[-1] - t[0])
    out = {"span_s": span, "mean_rate_per_s": (len(t) - 1) / span if span > 0 else math.nan}
    for w in (1, 60):
        counts = np.bincount(np.floor((t - t[0]) / w).astype(np.int64))
        out[f"iod_{w}s"] = float(counts.var() / counts.mean())
        out[f"peak_{w}s_over_mean"] = float(counts.max() / counts.mean())
        if w == 60:
            out["requests_per_min"] = [int(c) for c in counts]
    ia = np.diff(t)
    out["interarrival_cv"] = float(ia.std() / ia.mean()) if len(ia) > 1 and ia.mean() > 0 else math.nan
    return out


def prefix_reuse(hash_ids: pd.Series, prompt_tokens: np.ndarray | None = None, block_size_tokens: int | None = None) -> dict:
    """Infinite-cache prefix reuse of block-hash lists given in arrival order.

    ``repeat_ref_frac`` = 1 - distinct / refs; ``prefix_hit_frac`` = blocks in each
    request's leading run of already-seen blocks / all blocks (prefix-cache semantics);
    ``prefix_hit_tok_frac`` the same in tokens (needs lengths and the block size).
    """
    lens = hash_ids.map(len).to_numpy(dtype=np.int64)
    refs = np.fromiter((h for hs in hash_ids for h in hs), dtype=np.int64, count=int(lens.sum()))
    req = np.repeat(np.arange(len(lens)), lens)
    out = {"block_refs": int(len(refs))}
    if len(refs) == 0:
        return out
    uniq, first, inv = np.unique(refs, return_index=True, return_inverse=True)
    out["distinct_blocks"] = int(len(uniq))
    out["repeat_ref_frac"] = 1.0 - len(uniq) / len(refs)
    seen = req[first][inv] < req  # first referenced by an earlier request
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    pos = np.arange(len(refs)) - np.repeat(starts, lens)
    miss_pos = np.where(seen, np.iinfo(np.int64).max, pos)
    nz = lens > 0
    run = np.zeros(len(lens), dtype=np.int64)
    run[nz] = np.minimum(np.minimum.reduceat(miss_pos, starts[nz]), lens[nz])
    out["prefix_hit_frac"] = float(run.sum() / len(refs))
    out["first_block_hit_frac"] = float((run > 0).mean())
    if prompt_tokens is not None and block_size_tokens:
        hit_tok = np.minimum(run * block_size_tokens, prompt_tokens)
        out["prefix_hit_tok_frac"] = float(hit_tok.sum() / np.sum(prompt_tokens))
    return out


def trace_stats(df: pd.DataFrame) -> dict:
    """Flat dict of trace statistics (JSON-ready; NaN where undefined).

    Keys: rows, span_s, mean_rate_per_s, requests_per_min (list), interarrival_cv, iod_1s,
    iod_60s, peak_1s_over_mean, peak_60s_over_mean, prompt_tokens_{mean,p50,p90,p99,max},
    output_tokens_{...}, and with hash_ids: block_size_tokens, block_refs, distinct_blocks,
    repeat_ref_frac, prefix_hit_frac, prefix_hit_tok_frac, first_block_hit_frac;
    skipped_rows when the reader skipped any.
    """
    out: dict = {"rows": int(len(df))}
    if len(df) == 0:
        return out
    if "arrival_s" in df.columns and df["arrival_s"].notna().all() and len(df) > 1:
        out.update(_arrivals(df["arrival_s"].to_numpy()))
    for c in ("prompt_tokens", "output_tokens"):
        if c in df.columns:
            out.update(_dist(c, df[c].to_numpy()))
    if "hash_ids" in df.columns:
        bs = df.attrs.get("block_size_tokens")
        if "arrival_s" in df.columns:
            df = df.iloc[np.argsort(df["arrival_s"].to_numpy(), kind="stable")]
        out["block_size_tokens"] = bs
        out.update(prefix_reuse(df["hash_ids"], df["prompt_tokens"].to_numpy() if "prompt_tokens" in df else None, bs))
    if "client_id" in df.columns:
        out["clients"] = int(df["client_id"].nunique())
    if df.attrs.get("skipped_rows"):
        out["skipped_rows"] = dict(df.attrs["skipped_rows"])
    return out
