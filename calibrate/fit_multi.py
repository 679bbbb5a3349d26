"""Many-sequence launches in the fit (calibrate/fit.py): held-out errors by set, the
simulator's pricing of mixed launches, and the one cost term mixed launches identify that the
shape tables cannot express.

Sets (column ``src`` of a frame folded by calibrate.measurements.fold_multi): ``grid`` (the
single-sequence grids), ``many_equal`` (launches of 16-256 equal prompts, decode batches to
2048 and contexts down to 16: fitted, they extend the tables' rows) and ``many_mixed``
(launches of mixed lengths: never fitted into a table, priced as the simulator prices them,
from the number of sequences, the summed work and the longest chain for prefill, the number of
requests and the summed context for decode).  Held-out errors are reported per set, so the
single-sequence grid's figures stay comparable with earlier fits.

The term (prefill): ``per_block_s``, seconds per query head per 128-query block of a launch,
added to the price of every prefill launch (the curve's, or its family's table's):

    t = curve or table price + per_block_s * heads * sum over sequences of ceil(new / 128)

A prefill table row holds one number of sequences (or, with prior context, of query blocks), so
at one row and one size it cannot tell 64 prompts of 512 tokens (256 blocks) from 16 of 1,024
and 48 of 16 (176 blocks): the programs a launch runs, each with a fixed cost, is what it
misses. The curve and the tables are then fitted on measured - term (fitted on times that
include a large per-program cost, the curve's fractions drift far from the kernel's and the
tables' ratios vary steeply along a row). The value is fitted on the mixed launches (equal
launches cannot identify it: their tables absorb it) and kept only if it lowers their median
error by ADOPT_MIN_GAIN_PCT points and ADOPT_MIN_GAIN_FRAC; it is shipped in the profile only
if sim.hardware accepts the key (``sim_accepts``), else reported as
proposed with the errors it would give.

No decode term: a decode table has a row per number of requests along the mean context, so
any cost that depends only on the number of requests and the summed context (what the
simulator sees; e.g. a cost per sequence) is already in the table, and a mixed launch differs
from an equal one only by how its context is spread.  ``imbalance_trend`` measures that
(residual against log2 of max / mean context), for the lead to judge whether the simulator
needs the longest context of a decode batch.

Ignores: a term's dependence on the head configuration beyond the head count.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from calibrate.curve import F_SCALE, _abs_pct
from calibrate.measurements import TARGETS, make_op
from calibrate.model import _sig, build_tables, predict_rows
from sim.config import ConfigError
from sim.cost.ops import PREFILL_BLOCK_M

TERMS = {"attn_prefill": "per_block_s"}
ADOPT_MIN_GAIN_PCT = 1.0
ADOPT_MIN_GAIN_FRAC = 0.2


def sets(g: pd.DataFrame) -> np.ndarray:
    """Each row's set (all 'grid' for a frame without many-sequence rows)."""
    if "src" not in g.columns:
        return np.full(len(g), "grid", dtype=object)
    return g["src"].fillna("grid").astype(str).to_numpy(dtype=object)


def term_feature(kind: str, g: pd.DataFrame) -> np.ndarray:
    """Per row, the unit of the kind's term: query heads x 128-query blocks (prefill)."""
    out = np.zeros(len(g))
    for i, r in enumerate(g.to_dict("records")):
        op = make_op(kind, r)
        qb = getattr(op, "query_blocks", None)
        blocks = qb() if qb is not None else op.batch * -(-op.seq_q // PREFILL_BLOCK_M)
        out[i] = op.heads * blocks
    return out


def less_term(g: pd.DataFrame, v: float, feat: np.ndarray) -> pd.DataFrame:
    """``g`` with the term taken off its times (what the tables are built on)."""
    return g if not v else g.assign(time_s=g["time_s"].to_numpy(float) - v * feat)


def price(kind: str, backend: str, p: Mapping, rows: pd.DataFrame, target: pd.DataFrame, v: float = 0.0,
          tables: list | None = None) -> np.ndarray:
    """The profile's price of ``target`` rows, with tables built on ``rows`` (less the term v)."""
    if not len(target):
        return np.zeros(0)
    if tables is None:
        tables = build_tables(kind, backend, less_term(rows, v, term_feature(kind, rows) if v else None), p)
    pr = predict_rows(kind, p, tables, target)
    return pr + v * term_feature(kind, target) if v else pr


def fit_term(kind: str, backend: str, curve_fn: Callable[[pd.DataFrame], dict], rows: pd.DataFrame,
             mixed: pd.DataFrame) -> dict:
    """Fit the kind's term (TERMS) on the ``mixed`` rows: for each value v, the curve
    (``curve_fn``) and the tables are fitted on ``rows`` less v x feature, and the mixed rows are
    priced with them plus v x feature.  {'value' (0 unless adopted), 'fitted_value', 'adopted',
    'median_without', 'median_with', 'curve': the curve at 'value'}."""
    meas = mixed["time_s"].to_numpy(float)
    fr, fm = term_feature(kind, rows), term_feature(kind, mixed)
    v_max = 0.95 * float(np.min(rows["time_s"].to_numpy(float) / np.maximum(fr, 1.0)))  # tables need t - v f > 0
    memo: dict[float, tuple[dict, np.ndarray]] = {}

    def at(v: float):
        if v not in memo:
            less = less_term(rows, v, fr)
            p = curve_fn(less)
            memo[v] = p, predict_rows(kind, p, build_tables(kind, backend, less, p), mixed) + v * fm
        return memo[v]

    def loss(lv: float) -> float:
        r = np.log(at(float(np.exp(lv)))[1] / meas) / F_SCALE
        return float(np.mean(2.0 * (np.sqrt(1.0 + r * r) - 1.0)))

    grid = np.linspace(np.log(v_max * 1e-3), np.log(v_max), 11)
    losses = [loss(x) for x in grid]
    j = int(np.argmin(losses))
    lo, hi = grid[max(j - 1, 0)], grid[min(j + 1, len(grid) - 1)]
    best = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 0.01})
    lv = best.x if best.fun < losses[j] else grid[j]
    v = float(np.exp(lv))
    med0 = float(np.median(_abs_pct(at(0.0)[1], meas)))
    med1 = float(np.median(_abs_pct(at(v)[1], meas)))
    adopted = med0 - med1 >= ADOPT_MIN_GAIN_PCT and med1 <= (1 - ADOPT_MIN_GAIN_FRAC) * med0
    value = _sig(v, 4) if adopted else 0.0
    return {"value": value, "fitted_value": _sig(v, 4), "adopted": bool(adopted), "median_without": round(med0, 2),
            "median_with": round(med1, 2), "curve": at(value)[0] if value else at(0.0)[0]}


def errors(prefix: str, pred: np.ndarray, meas: np.ndarray) -> dict:
    """{prefix}_points, {prefix}_median_abs_pct_err, {prefix}_p90_abs_pct_err (empty without points)."""
    if not len(meas):
        return {}
    e = _abs_pct(pred, meas)
    return {f"{prefix}_points": int(len(e)), f"{prefix}_median_abs_pct_err": round(float(np.median(e)), 2),
            f"{prefix}_p90_abs_pct_err": round(float(np.percentile(e, 90)), 2)}


def meets(meta: Mapping, prefix: str) -> bool | None:
    med, p90 = meta.get(f"{prefix}_median_abs_pct_err"), meta.get(f"{prefix}_p90_abs_pct_err")
    if med is None:
        return None
    return bool(med <= TARGETS["median_abs_pct_err"] and p90 <= TARGETS["p90_abs_pct_err"])


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


def sim_accepts(kind: str, key: str) -> bool:
    """Whether sim.hardware parses ``key`` in a curve of ``kind`` (the simulator prices the term)."""
    from sim.hardware import profile_from_dict
    d = {"name": "probe", "display_name": "probe", "memory_bytes": 1, "memory_bandwidth_bytes_per_s": 1,
         "peak_flops_per_s": {"bf16": 1}, "l2_bytes": 1, "num_sms": 1, "nvlink_bandwidth_bytes_per_s": 0,
         "pcie_bandwidth_bytes_per_s": 1, "efficiency": {"backends": {"vendor": {kind: {key: 0.0}}}}}
    try:
        profile_from_dict(d, "<probe>")
    except ConfigError:
        return False
    return True
