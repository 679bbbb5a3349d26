"""Many-sequence launches in the fit (calibrate/fit.py): held-out errors by set, and the cost
terms of attention that launches of many short sequences identify (sim.cost.ops.many_seq_s).

Sets (column ``src`` of a frame folded by calibrate.measurements.fold_multi): ``grid`` (the
single-sequence grids), ``many_equal`` (launches of 16-256 equal prompts, decode batches to
2048 and contexts down to 16: fitted, they extend the tables' rows) and ``many_mixed``
(launches of mixed lengths: never fitted into a table, priced as the simulator prices them,
from every chunk's length for prefill, from the number of requests, the summed context and
the longest context for decode).  Held-out errors are reported per set, so the single-sequence
grid's figures stay comparable with earlier fits.

The terms, each with its physical reason (measured values: docs/calibration.md):

- ``per_block_s`` (prefill) and ``per_seq_s`` (decode): the fixed cost of one program of a
  flash-style kernel, whatever its work (load the query tile and the block table, set up the
  softmax state, walk at least one K/V tile, write the output).  A varlen prefill kernel runs one
  program per query head per 128-query block of every sequence, so 256 prompts of 16 tokens
  run 8,192 programs of mostly empty tiles (H200, Triton: ~35 ns each, flat from 16 to 64
  tokens); a paged decode kernel runs one per sequence per KV head (H200: ~12 ns at contexts
  of 16).  Added to the curve's or table's price: t = price + per_program_s x programs.  Fitted
  jointly with the roofline (calibrate.curve, stage 1) on the grid and the equal launches,
  only when the data have many-sequence equal launches (a grid alone does not separate it from
  the curve's fixed work); the tables are built on measured - term.
- ``chain_s_per_token`` and ``chain_bytes_per_s`` (decode, backends whose split plan is known:
  sim.cost.ops.CHAIN_ROOF_BACKENDS): one program walks its context split serially, and the
  kernel sizes the splits for the longest context, so a few long contexts among many short
  ones leave one program per long sequence and KV head running long after the rest (H200,
  Triton, 4 of 4,000 among 60 of 200: 149 us measured, 36 us at the mean context).  The launch
  takes at least launch_s + tokens x (chain_s_per_token + K/V bytes per token /
  chain_bytes_per_s): a token's latency plus its bytes at one program's streaming rate.  Equal
  launches do not identify it (their chain is far below their throughput time); it is fitted on
  the mixed launches (least squares on log time, soft_l1) with the curve and tables fixed, and
  kept only if it lowers their mean absolute error (it binds on the launches with a long
  outlier only, so the median can hide it) by ADOPT_MIN_GAIN_PCT points and ADOPT_MIN_GAIN_FRAC.

``imbalance_trend`` measures what remains: the residual of mixed decode launches against
log2 of max / mean context.

Ignores: the terms' dependence on the head configuration beyond the head count and head_dim.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from calibrate.curve import F_SCALE, _abs_pct
from calibrate.measurements import MANY_SEQ_TARGETS
from calibrate.model import _sig, chain_floor_s, predict_rows
from sim.cost.ops import CHAIN_ROOF_BACKENDS

TERMS = {"attn_prefill": "per_block_s", "attn_decode": "per_seq_s"}
CHAIN_KEYS = ("chain_s_per_token", "chain_bytes_per_s")
ADOPT_MIN_GAIN_PCT = 1.0
ADOPT_MIN_GAIN_FRAC = 0.2
MIN_CHAIN_LAUNCHES = 4


def sets(g: pd.DataFrame) -> np.ndarray:
    """Each row's set (all 'grid' for a frame without many-sequence rows)."""
    if "src" not in g.columns:
        return np.full(len(g), "grid", dtype=object)
    return g["src"].fillna("grid").astype(str).to_numpy(dtype=object)


def term_applies(kind: str, g: pd.DataFrame) -> bool:
    """Whether the fit of ``g`` (one op and backend) includes the kind's per-program term: an
    attention kind whose rows include many-sequence equal launches."""
    return kind in TERMS and bool(np.any(sets(g) == "many_equal"))


def chain_applies(kind: str, backend: str) -> bool:
    """Whether the decode chain floor is fitted for this op and backend (split plan known)."""
    return kind == "attn_decode" and backend in CHAIN_ROOF_BACKENDS


def fit_chain(kind: str, p: Mapping, tables: list, mixed: pd.DataFrame) -> dict:
    """Fit the decode chain floor on the ``mixed`` rows, the curve ``p`` and ``tables`` fixed:
    {'chain_s_per_token', 'chain_bytes_per_s' (0 unless adopted), 'fitted_*', 'adopted', the
    mixed launches' mean, median and p90 absolute % error without and with it, 'launches'}."""
    meas = mixed["time_s"].to_numpy(float)
    base = predict_rows(kind, {k: v for k, v in p.items() if k not in CHAIN_KEYS}, tables, mixed)
    tok, btok = mixed["chain_tok_"].to_numpy(float), mixed["chain_btok_"].to_numpy(float)

    def floor(x):  # x = [ns per token, ns per KiB per token] (linear, both >= 0)
        return p["launch_s"] + tok * (x[0] * 1e-9 + btok / 1024.0 * x[1] * 1e-9)

    def resid(x):
        return np.log(np.maximum(base, floor(x)) / meas)
    best = None
    for x0 in ((30.0, 1.0), (5.0, 20.0), (1.0, 1.0)):
        r = least_squares(resid, np.array(x0), bounds=([0.0, 0.0], [1e4, 1e4]), loss="soft_l1", f_scale=F_SCALE)
        if best is None or r.cost < best.cost - 1e-12:
            best = r
    tau, rho = float(best.x[0]) * 1e-9, float(best.x[1]) * 1e-9 / 1024.0
    fitted = {"chain_s_per_token": _sig(tau, 4), "chain_bytes_per_s": _sig(1.0 / rho, 4) if rho > 0 else 0.0}
    q = dict(p, **fitted)
    fl = chain_floor_s(q, mixed)
    e0 = _abs_pct(base, meas)
    e1 = _abs_pct(base if fl is None else np.maximum(base, fl), meas)
    # the floor binds on the launches with a long outlier only, so it is judged by the mean error
    mean0, mean1 = float(np.mean(e0)), float(np.mean(e1))
    adopted = mean0 - mean1 >= ADOPT_MIN_GAIN_PCT and mean1 <= (1 - ADOPT_MIN_GAIN_FRAC) * mean0
    out = {k: (v if adopted else 0.0) for k, v in fitted.items()}
    out.update({f"fitted_{k}": v for k, v in fitted.items()})
    out.update(adopted=bool(adopted), mean_without=round(mean0, 2), mean_with=round(mean1, 2),
               median_without=round(float(np.median(e0)), 2), median_with=round(float(np.median(e1)), 2),
               p90_without=round(float(np.percentile(e0, 90)), 2), p90_with=round(float(np.percentile(e1, 90)), 2),
               launches=int(len(mixed)))
    return out


def errors(prefix: str, pred: np.ndarray, meas: np.ndarray) -> dict:
    """{prefix}_points, {prefix}_median_abs_pct_err, {prefix}_p90_abs_pct_err (empty without points)."""
    if not len(meas):
        return {}
    e = _abs_pct(pred, meas)
    return {f"{prefix}_points": int(len(e)), f"{prefix}_median_abs_pct_err": round(float(np.median(e)), 2),
            f"{prefix}_p90_abs_pct_err": round(float(np.percentile(e, 90)), 2)}


def meets(meta: Mapping, prefix: str) -> bool | None:
    """Whether the many-sequence errors under ``prefix`` meet MANY_SEQ_TARGETS (None: no points)."""
    med, p90 = meta.get(f"{prefix}_median_abs_pct_err"), meta.get(f"{prefix}_p90_abs_pct_err")
    if med is None:
        return None
    return bool(med <= MANY_SEQ_TARGETS["median_abs_pct_err"] and p90 <= MANY_SEQ_TARGETS["p90_abs_pct_err"])


def imbalance_trend(mixed: pd.DataFrame, pred: np.ndarray) -> dict | None:
    """Least-squares slope of log(measured / priced) against log2(max / mean context) of mixed
    decode launches, as % per doubling of max / mean, with its R^2 (None below 4 launches)."""
    if len(mixed) < 4:
        return None
    from calibrate import grids_multi
    x = np.array([np.log2(max(c for c, _ in s) * len(s) / sum(c for c, _ in s)) for s in
                  (grids_multi.expand_lengths(ln, allow_prior=False) for ln in mixed["lengths"])])
    y = np.log(mixed["time_s"].to_numpy(float) / pred)
    if np.ptp(x) == 0:
        return None
    b, a = np.polyfit(x, y, 1)
    r2 = 1.0 - float(np.sum((y - a - b * x) ** 2)) / max(float(np.sum((y - y.mean()) ** 2)), 1e-300)
    return {"pct_per_doubling": round(float(np.expm1(b) * 100), 2), "r2": round(r2, 3), "launches": int(len(x))}
