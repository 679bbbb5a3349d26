"""Fit a profile's ``interconnect`` section to the NCCL times of ``python -m calibrate.nccl``.

Models: per (op, world size) of DIR/nccl.csv (op all_reduce or p2p), the measured time as a
function of the message size b (bytes per rank) as up to three alpha-beta lines on contiguous
size ranges, one per NCCL protocol regime (LL, LL128, Simple):

    t(b) = alpha_i + b / bandwidth_i      for b in range i (up to ``up_to_bytes``)

Each line is least squares on *relative* error, min sum((alpha + beta b) / t - 1)^2 with
alpha, beta >= 0 (linear in (alpha, beta): scipy.optimize.nnls). The range boundaries are
searched exhaustively (each range >= 2 sizes; from one range to the next alpha may not fall
and the bandwidth must rise, as from LL to LL128 to Simple) and the number of lines K by BIC,
n ln(RSS / n) + (3K - 1) ln n (2 parameters per line, K - 1 boundaries), with RSS floored at an
rms relative residual of 0.01 %. Held out: every 4th measured size (sorted, starting with the 4th);
the fit on the other sizes predicts them (median and p90 absolute % error, per fit and pooled);
the shipped lines are refitted on all sizes by the same rule. A boundary sits at the geometric
mean of the last size of one range and the first size of the next.

What sim.cost.comm does with the result: at a measured world size the fitted lines are the
time; at other world sizes it scales its NCCL-model time by the measured/model ratio of the
nearest measured world size at the same bytes (module doc of sim.cost.comm).

Ignores: per-iteration spread (calibrate/nccl.py writes one median per size), the algbw and
busbw columns (derived from time_s; only checked to be numbers), dtype (bf16 only).
"""
from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from calibrate import grids
from calibrate.measurements import FitError, _date, _display_path

COLUMNS = grids.COLUMNS["nccl"]  # what calibrate/nccl.py writes
OPS = ("all_reduce", "p2p")
HELDOUT_EVERY = 4
MAX_LINES = 3
MIN_SIZES = 4
RSS_FLOOR_REL = 1e-4  # rms relative residual floor (0.01 %, below event timing): exact data buys no lines


def read_nccl(path: str | Path) -> pd.DataFrame:
    """DIR/nccl.csv, checked: every column present, numbers where numbers belong (one-line FitError)."""
    p = Path(path)
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except Exception as e:  # noqa: BLE001
        raise FitError(f"{p}: unreadable CSV ({type(e).__name__}: {e})") from None
    for c in COLUMNS:
        if c not in df.columns:
            raise FitError(f"{p}: missing column '{c}'; expected {COLUMNS}")
    if df.empty:
        raise FitError(f"{p}: no rows")
    bad = ~df["op"].isin(OPS)
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise FitError(f"{p}: column 'op', row {i + 2}: expected one of {list(OPS)}, got {df['op'].iloc[i]!r}")
    for c in ("bytes_per_rank", "world_size", "time_s", "algbw_bytes_per_s", "busbw_bytes_per_s"):
        v = pd.to_numeric(df[c], errors="coerce")
        bad = v.isna() | ~np.isfinite(v) | (v <= 0)
        if c == "world_size":
            bad |= (v < 2) | (v != v.round())
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            want = "an integer >= 2" if c == "world_size" else "a positive number"
            raise FitError(f"{p}: column '{c}', row {i + 2}: expected {want}, got {df[c].iloc[i]!r}")
        df[c] = v.astype(int) if c == "world_size" else v.astype(float)
    return df


def _line(b: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
    """(alpha_s, beta_s_per_byte, sum of squared relative errors) of one range."""
    a = np.column_stack([1.0 / t, b / t])
    (alpha, beta), _ = nnls(a, np.ones_like(t))
    r = (alpha + beta * b) / t - 1.0
    return float(alpha), float(beta), float(r @ r)


def fit_lines(nbytes, times, max_lines: int = MAX_LINES) -> list[dict]:
    """Piecewise alpha-beta fit (module doc): [{alpha_s, bandwidth_bytes_per_s, up_to_bytes?}, ...]."""
    b = np.asarray(nbytes, float)
    t = np.asarray(times, float)
    order = np.argsort(b)
    b, t = b[order], t[order]
    n = len(b)
    best = None
    for k in range(1, max_lines + 1):
        if 2 * k > n:
            break
        for cuts in combinations(range(2, n - 1), k - 1):
            edges = (0, *cuts, n)
            if any(e1 - e0 < 2 for e0, e1 in zip(edges, edges[1:])):
                continue
            parts = [_line(b[e0:e1], t[e0:e1]) for e0, e1 in zip(edges, edges[1:])]
            if any(beta <= 0 for _, beta, _ in parts):
                continue  # a flat range has no bandwidth; NCCL's time always grows with size
            if any(not (a1 >= a0 and b1 < b0) for (a0, b0, _), (a1, b1, _) in zip(parts, parts[1:])):
                continue  # NCCL's larger-size protocols have more latency and more bandwidth
            rss = max(sum(p[2] for p in parts), n * RSS_FLOOR_REL ** 2)
            bic = n * math.log(rss / n) + (3 * k - 1) * math.log(n)
            if best is None or bic < best[0] - 1e-12:
                best = (bic, edges, parts)
    if best is None:
        raise FitError(f"no alpha-beta line with positive bandwidth fits these {n} sizes")
    _, edges, parts = best
    out = []
    for j, ((alpha, beta, _), e1) in enumerate(zip(parts, edges[1:])):
        ln = {"alpha_s": _sig(alpha), "bandwidth_bytes_per_s": _sig(1.0 / beta)}
        if j < len(parts) - 1:
            ln["up_to_bytes"] = _sig(math.sqrt(b[e1 - 1] * b[e1]))
        out.append(ln)
    return out


def predict_lines(lines: list[dict], nbytes) -> np.ndarray:
    """The fitted time at each size (the range's line; the last line is unbounded)."""
    b = np.asarray(nbytes, float)
    out = np.empty_like(b)
    for i, x in enumerate(b):
        ln = next((ln for ln in lines if x <= ln.get("up_to_bytes", math.inf)), lines[-1])
        out[i] = ln["alpha_s"] + x / ln["bandwidth_bytes_per_s"]
    return out


def fit_group(nbytes, times) -> tuple[dict, np.ndarray]:
    """One (op, world size): held-out check on every 4th size, then lines refitted on all.
    Returns the ``fitted`` entry (without op/world size) and the held-out abs % errors."""
    b = np.asarray(nbytes, float)
    t = np.asarray(times, float)
    order = np.argsort(b)
    b, t = b[order], t[order]
    held = (np.arange(len(b)) % HELDOUT_EVERY) == HELDOUT_EVERY - 1
    train = fit_lines(b[~held], t[~held])
    err = np.abs(predict_lines(train, b[held]) / t[held] - 1.0) * 100.0
    entry = {"lines": fit_lines(b, t), "points": int(len(b)), "held_out_points": int(held.sum()),
             "heldout_median_abs_pct_err": round(float(np.median(err)), 2),
             "heldout_p90_abs_pct_err": round(float(np.percentile(err, 90)), 2),
             "min_bytes": float(b[0]), "max_bytes": float(b[-1])}
    return entry, err


def fit_interconnect(data_dir: str | Path, base_interconnect: Mapping | None, base_src: str = "base profile") -> dict:
    """The base profile's ``interconnect`` section with ``calibrated`` (summary) and ``fitted``
    (lines per measured (op, world size)) from ``data_dir``/nccl.csv."""
    d = Path(data_dir)
    path = d / "nccl.csv"
    if not path.exists():
        raise FitError(f"{path}: no such file (python -m calibrate.nccl writes it)")
    if not isinstance(base_interconnect, Mapping):
        raise FitError(f"{base_src}: no 'interconnect' section to calibrate; add one (docs/cost_model.md)")
    df = read_nccl(path)
    n_max = base_interconnect.get("max_gpus_per_node")
    fitted, errs = [], []
    for (op, ws), g in df.groupby(["op", "world_size"], sort=True):
        if isinstance(n_max, int) and ws > n_max:
            raise FitError(f"{path}: world_size {ws} exceeds the base profile's max_gpus_per_node {n_max}")
        g = g.groupby("bytes_per_rank", as_index=False)["time_s"].median()
        if len(g) < MIN_SIZES:
            raise FitError(f"{path}: {op} on {ws} GPUs has {len(g)} distinct sizes; the fit needs >= {MIN_SIZES}")
        try:
            entry, err = fit_group(g["bytes_per_rank"], g["time_s"])
        except FitError as e:
            raise FitError(f"{path}: {op} on {ws} GPUs: {e}") from None
        fitted.append({"op": str(op), "world_size": int(ws), **entry})
        errs.append(err)
    prov = {}
    pp = d / "nccl_provenance.json"
    if pp.exists():
        try:
            prov = json.loads(pp.read_text())
        except ValueError as e:
            raise FitError(f"{pp}: invalid JSON ({e})") from None
    allerr = np.concatenate(errs)
    cal = {"data": _display_path(d), "date": _date(prov)}
    if prov.get("gpus"):
        cal["gpus"] = str(prov["gpus"]).strip().splitlines()[-1]
    for k in ("nccl_version", "torch"):
        if prov.get(k):
            cal[k] = str(prov[k])
    cal.update(points=int(sum(f["points"] for f in fitted)), held_out_points=int(len(allerr)),
               heldout_median_abs_pct_err=round(float(np.median(allerr)), 2),
               heldout_p90_abs_pct_err=round(float(np.percentile(allerr, 90)), 2),
               method=("per (op, world size): t = alpha + bytes / bandwidth on up to 3 contiguous size ranges, "
                       "least squares on relative error (NNLS), ranges and their number by BIC; held out every "
                       f"{HELDOUT_EVERY}th size; shipped lines refitted on all sizes (calibrate/fit_nccl.py)"),
               unmeasured_world_sizes=("NCCL model x measured/model ratio of the nearest measured world size at "
                                       "the same bytes (sim/cost/comm.py)"))
    out = {k: v for k, v in base_interconnect.items() if k not in ("calibrated", "fitted")}
    out["calibrated"] = cal
    out["fitted"] = fitted
    return out


def _sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")
