"""Fit a hardware profile's efficiency curves to the CSVs that ``python -m calibrate.run`` writes.

Models: per (op kind, kernel backend), the affine roofline of sim.hardware,

    t = max((F + F0) / (P * compute_frac), (B + B0) / (W * bandwidth_frac)) * corr(x) + launch_s

with P, W the datasheet peaks of the base profile, F and B the op's FLOPs and bytes counted
by sim.cost.ops (checked against the CSV's columns), x the ideal roofline time in ns and corr
a piecewise-linear factor in log2 x.  Stage 1 fits (compute_frac, bandwidth_frac, F0, B0) by
robust least squares on log time (scipy least_squares, soft_l1); launch_s is the measured
empty-kernel time (elementwise.csv 'launch' rows, backend triton_gpu) when present.  Stage 2
fits corr's factors (knots every 2 in log2 x over the data) on the stage-1 residuals, with a
smoothness penalty and a weak pull towards 1.  Stage 3 tabulates, per shape family (a GEMM's
(n, k), an attention head configuration with or without prior context, an elementwise op at
one width), the ratio measured / curve at each measured size; predictions interpolate it in
log-log space (sim.hardware.ShapeTable), never across a Triton GEMM tile-class break.  A Triton
GEMM table's base charges the compute roof in whole waves of the kernel's fixed tiles
(ceil(CTAs / SMs) x SMs x 2 BLOCK_M BLOCK_N K FLOPs, sim.cost.ops.gemm_wave_flops): the time is
flat in M within a wave count, so the ratio to that base is smooth in M.  A prefill table has one
row per batch (sequences in the varlen launch: the kernel's grid is (query blocks, heads,
sequences), so at one total work the time depends on how it splits into sequences) and runs
along max(ideal time, ideal time of the serial chain: one 128-query program over the whole
context at 1/num_sms of the peak), so chain-bound launches (chunked prefill, few query blocks)
sit with launches of the same makespan; for the Triton kernel, whose program structure is known
exactly, that chain at compute_frac is also a third roof of the base the table scales
(sim.cost.ops.affine_roofline_s).  Held-out protocol: a point is held out if the
grid marks it (odd GEMM M values, prefill/decode shapes in calibrate.grids) or if a hash of
its shape is 0 mod 4; the fit on the rest predicts it, giving median and p90 absolute percent
error; the shipped curve is then refitted on all points.

Ignores: dtype-specific curves (the profile has one curve per op kind: GEMMs are fitted on
bf16 rows; fp8 rows get a separate informational fit), clock drift within a run.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from calibrate import grids
from calibrate.measurements import (HOLDOUT_MOD, SHAPE_COLS, TARGETS, FitError, _date, _display_path,
                                    _provenance_summary, prepare, read_measurements, read_provenance, shape_key)
from calibrate.model import _sig, build_tables, predict, predict_rows
from sim.hardware import OP_KINDS, profile_from_dict
from sim.config import read_yaml


PRIMARY_DTYPE = "bf16"
F_SCALE = 0.05          # soft_l1 scale on log residuals (~5 %)
KNOT_STEP = 2.0         # correction knots every factor 4 of ideal time


def _abs_pct(pred, meas) -> np.ndarray:
    return np.abs(np.asarray(pred) / np.asarray(meas) - 1.0) * 100.0


def _stage1(flops, byts, peak, bw, logt, cf_p, bf_p, pin_c, pin_m, launch_s) -> dict:
    """Robust fit of (compute_frac, bandwidth_frac, F0, B0[, launch]) from fixed starting points."""
    us_f = float(np.median(peak)) * 1e-6     # FLOPs per microsecond at peak (scales F0)
    us_b = bw * 1e-6                          # bytes per microsecond at peak (scales B0)
    fixed_launch = launch_s is not None
    # x = [log compute_frac, log bandwidth_frac, F0 in us at peak, B0 in us at peak, launch in us]
    x_full = np.array([math.log(cf_p), math.log(bf_p), 0.0, 0.0, 0.0])
    free = [i for i in range(5) if not ((pin_c and i in (0, 2)) or (pin_m and i in (1, 3))
                                        or (fixed_launch and i == 4))]

    def full(xf):
        x = x_full.copy()
        x[free] = xf
        return x

    def unpack(x):
        return {"compute_frac": math.exp(x[0]), "bandwidth_frac": math.exp(x[1]),
                "fixed_flops": x[2] * us_f, "fixed_bytes": x[3] * us_b,
                "launch_s": launch_s if fixed_launch else x[4] * 1e-6}

    def resid(xf):
        x = full(xf)
        r = np.log(predict(unpack(x), flops, byts, peak, bw)) - logt
        return np.concatenate([r, 1e-4 * x[2:4]])  # a whisper towards no fixed work

    t = np.exp(logt)
    top_c = min(max(float(np.max(flops / (t * peak))), 0.02), 1.4)
    top_b = min(max(float(np.max(byts / (t * bw))), 0.02), 1.4)
    lo_all = np.array([math.log(1e-3), math.log(1e-3), 0.0, 0.0, 0.0])
    hi_all = np.array([math.log(1.5), math.log(1.5), 1e5, 1e5, 1e3])
    best = None
    for cf in (top_c, 0.7):          # starting points independent of the prior: refitting with
        for bf in (top_b, 0.8):      # a fitted profile as base reproduces it
            for fx in (0.5, 5.0):
                x0 = np.clip(np.array([math.log(cf), math.log(bf), fx, fx, 2.0]), lo_all + 1e-9, hi_all - 1e-9)
                res = least_squares(resid, x0[free], bounds=(lo_all[free], hi_all[free]), loss="soft_l1",
                                    f_scale=F_SCALE, max_nfev=2000)
                if best is None or res.cost < best.cost - 1e-12:
                    best = res
    p = unpack(full(best.x))
    p["_pins"] = (bool(pin_c), bool(pin_m))
    return p


def fit_curve(flops, byts, peak, bw, t, prior: Mapping, launch_s: float | None = None) -> dict:
    """Fit one affine roofline + correction to points (arrays) by robust least squares on log t.

    ``prior`` (compute_frac, bandwidth_frac) supplies fractions the data cannot identify (the
    compute roof of an op no point is compute-bound on, e.g. decode attention); they are kept
    as given with their fixed term 0.  ``launch_s`` fixes the launch term.
    """
    flops, byts, peak, t = (np.asarray(a, float) for a in (flops, byts, peak, t))
    logt = np.log(t)
    fixed_launch = launch_s is not None
    floor_t = float(np.percentile(t, 2))
    capped = fixed_launch and launch_s >= floor_t
    if capped:  # ops measured faster than the empty kernel: keep (nearly) all points reachable
        launch_s = 0.9 * floor_t
    cf_p, bf_p = float(prior.get("compute_frac", 0.7)), float(prior.get("bandwidth_frac", 0.8))
    # a kernel that did F FLOPs (moved B bytes) in t - launch reached at least F/(P (t - launch))
    # (B/(W (t - launch))) of the peak: a roof kept at the prior is raised to that, so that it
    # never claims a measured point was slower than it was (e.g. a low prior bandwidth on a
    # compute-bound kernel made the memory roof bind on large-batch prefill)
    busy = np.maximum(t - (launch_s or 0.0), 0.05 * t)
    cf_p = min(max(cf_p, float(np.max(flops / (peak * busy)))), 1.5)
    bf_p = min(max(bf_p, float(np.max(byts / (bw * busy)))), 1.5)
    # a roof no point ideally reaches cannot be identified: pin its fraction to the prior and
    # its fixed term to 0 (otherwise F0 and B0 trade off freely as a small-size floor)
    n_c = int(np.sum(flops / peak > byts / bw))
    n_m = len(t) - n_c
    pin_c, pin_m = n_c < 3 <= n_m, n_m < 3 <= n_c
    p = _stage1(flops, byts, peak, bw, logt, cf_p, bf_p, pin_c, pin_m, launch_s if fixed_launch else None)
    # a roof the fit makes bind on fewer than 3 points is not identified either: pin and refit
    t_c = np.where(flops > 0, (flops + p["fixed_flops"]) / (peak * p["compute_frac"]), 0.0)
    t_m = (byts + p["fixed_bytes"]) / (bw * p["bandwidth_frac"])
    nc_fit = int(np.sum(t_c >= t_m))
    if not (pin_c or pin_m) and min(nc_fit, len(t) - nc_fit) < 3:
        pin_c, pin_m = nc_fit < 3, len(t) - nc_fit < 3
        p = _stage1(flops, byts, peak, bw, logt, cf_p, bf_p, pin_c, pin_m, launch_s if fixed_launch else None)
    # stage 2: correction factors over log2 ideal ns
    lx = np.log2(np.maximum(flops / peak, byts / bw) * 1e9)
    lo_k, hi_k = math.floor(lx.min()), math.ceil(lx.max())
    knots = np.arange(lo_k, hi_k + KNOT_STEP, KNOT_STEP, dtype=float) if hi_k > lo_k else np.array([])
    if len(knots) >= 2 and len(t) >= 2 * len(knots):
        def resid2(g):
            q = dict(p, corr_log2_x=knots, corr_factor=np.exp(g))
            r = np.log(predict(q, flops, byts, peak, bw)) - logt
            return np.concatenate([r, 0.3 * np.diff(g, 2), 0.02 * g])
        g = least_squares(resid2, np.zeros(len(knots)), loss="soft_l1", f_scale=F_SCALE).x
        p["corr_log2_x"] = [float(k) for k in knots]
        p["corr_factor"] = [_sig(math.exp(v), 5) for v in g]
    else:
        p["corr_log2_x"], p["corr_factor"] = [], []
    for k in ("compute_frac", "bandwidth_frac", "fixed_flops", "fixed_bytes", "launch_s"):
        p[k] = _sig(p[k])
    pred = predict(p, flops, byts, peak, bw)
    t_c = np.where(flops > 0, (flops + p["fixed_flops"]) / (peak * p["compute_frac"]), 0.0)
    t_m = (byts + p["fixed_bytes"]) / (bw * p["bandwidth_frac"])
    p["_stats"] = {"launch_capped": bool(capped), "pinned_compute": bool(pin_c), "pinned_memory": bool(pin_m),
                   "compute_bound_points": int(np.sum(t_c >= t_m)),
                   "memory_bound_points": int(np.sum(t_c < t_m)),
                   "median_abs_pct_err": float(np.median(_abs_pct(pred, t))),
                   "p90_abs_pct_err": float(np.percentile(_abs_pct(pred, t), 90))}
    return p


def _launch_rows(frames: Mapping[str, pd.DataFrame]) -> dict[str, float]:
    ew = frames.get("elementwise")
    if ew is None:
        return {}
    rows = ew[ew["op"] == "launch"]
    return {str(b): float(v) for b, v in rows.groupby("backend")["time_s"].median().items()}


# ------------------------------------------------------------------------------ one group
def _fit_group(kind: str, g: pd.DataFrame, prior: Mapping, launch_s: float | None,
               backend: str = "vendor", collect: list | None = None) -> tuple[dict, dict, list]:
    """(shipped params, fit metadata, representative samples) for one (op, backend[, dtype])."""
    cols = lambda d: (d["flops_"].to_numpy(), d["bytes_"].to_numpy(), d["peak"].to_numpy(),  # noqa: E731
                      float(d["bw"].iloc[0]), d["time_s"].to_numpy())
    train, held = g[~g["heldout"]], g[g["heldout"]]
    meta: dict[str, Any] = {"points": int(len(g)), "held_out_points": int(len(held))}
    facts = _kernel_facts(kind, backend)
    if len(held) and len(train) >= 6:
        p_tr = dict(fit_curve(*cols(train), prior, launch_s), **facts)
        f, b, pk, bw, t = cols(held)
        curve = predict(p_tr, f, b, pk, bw)
        pred_held = predict_rows(kind, p_tr, build_tables(kind, backend, train, p_tr), held)
        err = _abs_pct(pred_held, t)
        if collect is not None:
            collect.append(pd.DataFrame({"kind": kind, "backend": backend, "dtype": held["dtype"].to_numpy(),
                                         "shape": [shape_key(kind, r) for r in held.to_dict("records")],
                                         "time_s": held["time_s"].to_numpy(), "predicted_s": pred_held,
                                         "curve_only_s": curve, "ideal_ns": held["ideal_ns"].to_numpy()}))
        err_curve = _abs_pct(curve, t)
        meta["heldout_median_abs_pct_err"] = round(float(np.median(err)), 2)
        meta["heldout_p90_abs_pct_err"] = round(float(np.percentile(err, 90)), 2)
        meta["meets_targets"] = bool(np.median(err) <= TARGETS["median_abs_pct_err"]
                                     and np.percentile(err, 90) <= TARGETS["p90_abs_pct_err"])
        # what a shape of an unmeasured family gets: the curve alone
        meta["curve_only_heldout_median_abs_pct_err"] = round(float(np.median(err_curve)), 2)
        meta["curve_only_heldout_p90_abs_pct_err"] = round(float(np.percentile(err_curve, 90)), 2)
    else:
        meta["heldout_note"] = "too few points for a held-out split"
    p = dict(fit_curve(*cols(g), prior, launch_s), **facts)
    p["shape_tables"] = build_tables(kind, backend, g, p)
    st = p.pop("_stats")
    allerr = _abs_pct(predict_rows(kind, p, p["shape_tables"], g), g["time_s"].to_numpy())
    st["median_abs_pct_err"], st["p90_abs_pct_err"] = float(np.median(allerr)), float(np.percentile(allerr, 90))
    meta["all_points_median_abs_pct_err"] = round(st["median_abs_pct_err"], 2)
    meta["all_points_p90_abs_pct_err"] = round(st["p90_abs_pct_err"], 2)
    meta["compute_bound_points"] = st["compute_bound_points"]
    meta["memory_bound_points"] = st["memory_bound_points"]
    if st["pinned_compute"]:
        meta["compute_frac_note"] = "not identified (< 3 points compute-bound): base profile value, fixed_flops 0"
    if st["pinned_memory"]:
        meta["bandwidth_frac_note"] = "not identified (< 3 points memory-bound): base profile value, fixed_bytes 0"
    if max(p["compute_frac"], p["bandwidth_frac"]) > 1.0:
        meta["warning"] = "a fitted fraction exceeds 1: faster than the datasheet peak (wrong base profile, or L2 hits)"
    meta["launch_s_from"] = ("fitted" if launch_s is None else "elementwise.csv launch/triton_gpu"
                             + (" capped at 0.9 x the 2nd-percentile op time" if st["launch_capped"] else ""))
    # representative measurements, measured vs predicted, at 5 sizes spread over the range
    srt = g.sort_values(["ideal_ns"] + SHAPE_COLS[kind], kind="mergesort").reset_index(drop=True)
    idx = sorted({int(round(q * (len(srt) - 1))) for q in (0.0, 0.25, 0.5, 0.75, 1.0)})
    samples = []
    pr_s = predict_rows(kind, p, p["shape_tables"], srt.iloc[idx])
    for j, i in enumerate(idx):
        r = srt.iloc[i]
        pr = float(pr_s[j])
        samples.append({"shape": " ".join(f"{c}={r[c]}" for c in SHAPE_COLS[kind]) + f" {r['dtype']}",
                        "measured_s": _sig(r["time_s"], 4), "predicted_s": _sig(pr, 4),
                        "err_pct": round((pr / r["time_s"] - 1) * 100, 1),
                        "bound": "compute" if r["flops_"] / r["peak"] > r["bytes_"] / r["bw"] else "memory",
                        "achieved_tflops": round(r["flops_"] / r["time_s"] / 1e12, 2),
                        "achieved_tbytes_per_s": round(r["bytes_"] / r["time_s"] / 1e12, 3)})
    return p, meta, samples


def _kernel_facts(kind: str, backend: str) -> dict:
    """What is known of a backend's kernels rather than fitted: the Triton GEMM's fixed tile
    configs per M class (calibrate/kernels/gemm.py), which its table base charges in whole waves."""
    if kind == "gemm" and backend == "triton":
        return {"gemm_tiles": grids.triton_gemm_tiles_yaml()}
    return {}


def _curve_yaml(p: Mapping, meta: Mapping) -> dict:
    d = {k: p[k] for k in ("compute_frac", "bandwidth_frac", "fixed_flops", "fixed_bytes", "launch_s")}
    if p.get("gemm_tiles"):
        d["gemm_tiles"] = p["gemm_tiles"]
    if p["corr_log2_x"]:
        d["correction"] = {"log2_x": list(p["corr_log2_x"]), "factor": list(p["corr_factor"])}
    d["fit"] = dict(meta)
    if p.get("shape_tables"):
        d["shape_tables"] = p["shape_tables"]
    return d


# ------------------------------------------------------------------------------ entry point
def fit_profile(data_dir: str | Path, base_profile_yaml: str | Path, heldout: list | None = None) -> dict:
    """The base profile (a dict) with ``efficiency`` refitted to the CSVs in ``data_dir`` and a
    ``calibration`` section (provenance, peaks, held-out errors, sample measurements).  With a
    list ``heldout``, appends one DataFrame per (op, backend) of held-out rows: measured,
    predicted by the fit on the other rows, and the curve-only prediction."""
    data_dir = Path(data_dir)
    frames = read_measurements(data_dir)
    base_path = Path(base_profile_yaml)
    if not base_path.exists():
        raise FitError(f"{base_path}: no such base profile")
    base = dict(read_yaml(base_path))
    hw = profile_from_dict(base, str(base_path))
    prov = read_provenance(data_dir)
    if str(prov.get("device_name", "")).startswith("cpu"):
        raise FitError(f"{data_dir}: measured in the runner's CPU smoke mode ({prov['device_name']}); "
                       "those times are meaningless, measure on a GPU")
    launches = _launch_rows(frames)
    launch_s = launches.get("triton_gpu")
    base_eff = base.get("efficiency") or {}
    base_backends = base_eff.get("backends") or {}
    backends_out: dict[str, dict] = {}
    errors: dict[str, dict] = {}
    samples: dict[str, dict] = {}
    extra: dict[str, dict] = {}
    dropped: dict[str, int] = {}
    for kind in OP_KINDS:
        if kind not in frames:
            continue
        df = prepare(kind, frames[kind], hw)
        for key, n in df.attrs.get("dropped", {}).items():
            dropped[f"{kind}/{key}"] = n
        for be in sorted(df["backend"].unique()):
            sub = df[df["backend"] == be]
            prior_src = (base_backends.get(be) or base_backends.get(hw.default_backend) or {}).get(kind) or {}
            prior = {k: float(prior_src.get(k, d)) for k, d in (("compute_frac", 0.7), ("bandwidth_frac", 0.8))}
            prim = sub[sub["dtype"] == PRIMARY_DTYPE] if kind == "gemm" else sub
            if len(prim) >= 4:
                p, meta, smp = _fit_group(kind, prim, prior, launch_s, be, heldout)
                if kind == "gemm":
                    meta["dtype"] = PRIMARY_DTYPE
                backends_out.setdefault(be, {})[kind] = _curve_yaml(p, meta)
                errors.setdefault(be, {})[kind] = {k: v for k, v in meta.items() if "err" in k or "points" in k}
                samples.setdefault(be, {})[kind] = smp
                if kind == "gemm":
                    for dt in sorted(set(sub["dtype"]) - {PRIMARY_DTYPE}):
                        other = sub[sub["dtype"] == dt]
                        if len(other) < 4:
                            continue
                        f, b, pk, bw, t = (other["flops_"], other["bytes_"], other["peak"],
                                           float(other["bw"].iloc[0]), other["time_s"])
                        e = _abs_pct(predict(p, f, b, pk, bw), t)
                        # the dtype's own tables, relative to the shipped curve: held-out check, then all
                        tr, he = other[~other["heldout"]], other[other["heldout"]]
                        eh = _abs_pct(predict_rows(kind, p, build_tables(kind, be, tr, p), he), he["time_s"])
                        tabs = build_tables(kind, be, other, p)
                        backends_out[be][kind].setdefault("shape_tables", []).extend(tabs)
                        q, m2, _ = _fit_group(kind, other, prior, launch_s, be)
                        q.pop("shape_tables", None)
                        q.pop("gemm_tiles", None)
                        m2 = {k: v for k, v in m2.items() if not k.startswith("heldout") and k != "meets_targets"}
                        extra.setdefault(f"gemm_{dt}", {})[be] = {
                            "note": f"one curve per op kind: {dt} GEMMs are priced with the {PRIMARY_DTYPE} curve "
                                    f"at the {dt} peak times their own shape tables; the curve alone and a "
                                    f"separate {dt} curve are given for reference",
                            "points": int(len(other)), "held_out_points": int(len(he)),
                            "heldout_median_abs_pct_err": round(float(np.median(eh)), 2) if len(he) else None,
                            "heldout_p90_abs_pct_err": round(float(np.percentile(eh, 90)), 2) if len(he) else None,
                            "shipped_curve_only_median_abs_pct_err": round(float(np.median(e)), 2),
                            "shipped_curve_only_p90_abs_pct_err": round(float(np.percentile(e, 90)), 2),
                            "own_curve": _curve_yaml(q, m2)}
    if not backends_out:
        raise FitError(f"{data_dir}: no op has enough rows to fit (need >= 4 per op and backend)")
    # ops or backends without data keep the base profile's curve, marked as such
    for be, ops in backends_out.items():
        for kind in OP_KINDS:
            if kind not in ops:
                src = (base_backends.get(be) or base_backends.get(hw.default_backend) or {}).get(kind)
                if src:
                    ops[kind] = {k: v for k, v in src.items() if k != "fit"}
                    ops[kind]["fit"] = {"note": "not measured: copied from the base profile"}
    default_be = base_eff.get("default_backend", "vendor")
    if default_be not in backends_out:
        default_be = sorted(backends_out)[0]
    out = {k: v for k, v in base.items() if k not in ("efficiency", "calibration")}
    out["efficiency"] = {"source": f"calibrated: {_display_path(data_dir)} ({_date(prov)})",
                         "default_backend": default_be,
                         "backends": {be: backends_out[be] for be in sorted(backends_out)}}
    ps = _provenance_summary(prov)
    peaks = {"datasheet_bf16_flops_per_s": hw.peak_flops("bf16"),
             "datasheet_bandwidth_bytes_per_s": hw.memory_bandwidth_bytes_per_s}
    if ps.get("measured_copy_bw_bytes_per_s"):
        peaks["measured_copy_bw_bytes_per_s"] = _sig(ps["measured_copy_bw_bytes_per_s"])
        peaks["measured_copy_bw_frac_of_datasheet"] = round(ps["measured_copy_bw_bytes_per_s"]
                                                            / hw.memory_bandwidth_bytes_per_s, 3)
    if ps.get("measured_matmul_bf16_flops_per_s"):
        peaks["measured_matmul_bf16_flops_per_s"] = _sig(ps["measured_matmul_bf16_flops_per_s"])
        peaks["measured_matmul_bf16_frac_of_datasheet"] = round(ps["measured_matmul_bf16_flops_per_s"]
                                                                / hw.peak_flops("bf16"), 3)
    out["calibration"] = {
        "data": _display_path(data_dir),
        "provenance": ps,
        "peaks": peaks,
        "launch_overhead_s": {k: _sig(v, 4) for k, v in sorted(launches.items())},
        "model": ("t = max((F+F0)/(P*compute_frac), (B+B0)/(W*bandwidth_frac)) * corr(log2 ideal_ns) "
                  "+ launch_s for a shape family without a table; (max(...) + launch_s) * table(family, size) "
                  "for one with a table (measured / affine-roofline ratios interpolated in log-log space); prefill "
                  "tables have a row per batch (sequences in the varlen launch) along max(ideal_ns, "
                  "serial-chain ideal_ns) and, for triton, take the chain as a third roof; triton GEMM "
                  "tables charge the compute roof in whole waves of the kernel's tiles (gemm_tiles; "
                  "sim.cost.ops.affine_roofline_s)"),
        "heldout_protocol": (f"held out: grid-marked shapes (GEMM M in {grids.GEMM_M_HELDOUT}, prefill "
                             f"(2,3000,3000) and (1,1000,6000), decode (batch,context) in {grids.DECODE_HELDOUT}) "
                             f"plus sha1(shape) % {HOLDOUT_MOD} == 0; fit on the rest, predict held out; "
                             "shipped curves refitted on all points"),
        "targets": dict(TARGETS),
        "errors": errors,
        "samples": samples,
    }
    if extra:
        out["calibration"]["other_dtypes"] = extra
    if dropped:
        out["calibration"]["rows_not_fitted"] = {"note": "dtype without a peak in the profile, or unknown backend",
                                                 **dropped}
    return _plain(out)


def _plain(o):
    """numpy scalars -> Python numbers, recursively (for yaml.safe_dump)."""
    if isinstance(o, Mapping):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o
