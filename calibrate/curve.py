"""Stage 1 and 2 of the fit (calibrate/fit.py): one affine roofline plus a smooth correction
fitted to the points of one (op kind, backend) by robust least squares on log time.

    t = max((F + F0) / (P * compute_frac), (B + B0) / (W * bandwidth_frac)) * corr(x) + launch_s
        [+ per_program_s * programs]

Stage 1 fits (compute_frac, bandwidth_frac, F0, B0) (scipy least_squares, soft_l1) from fixed
starting points; a roof that fewer than 3 points are bound by is pinned to the prior.  With a
``programs`` feature (attention: the programs of the kernel that do work, sim.cost.ops
AttnPrefill/AttnDecode.programs), stage 1 also fits ``per_program_s``, the fixed cost of one
program, jointly with the roofline: a launch of many short sequences is priced by how many
programs it runs, not by its work (256 prompts of 16 tokens: 8,192 programs, each a mostly
empty 128-row tile).  Stage 2 fits corr's factors (knots every KNOT_STEP in log2 ideal ns) on
the stage-1 residuals with a smoothness penalty and a weak pull towards 1.

Ignores: shape families (calibrate/model.py's shape tables take up what the curve misses).
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
from scipy.optimize import least_squares

from calibrate.model import _sig, predict

F_SCALE = 0.05          # soft_l1 scale on log residuals (~5 %)
KNOT_STEP = 2.0         # correction knots every factor 4 of ideal time


def _abs_pct(pred, meas) -> np.ndarray:
    return np.abs(np.asarray(pred) / np.asarray(meas) - 1.0) * 100.0


def _stage1(flops, byts, peak, bw, logt, cf_p, bf_p, pin_c, pin_m, launch_s, feat=None, diag=None) -> dict:
    """Robust fit of (compute_frac, bandwidth_frac, F0, B0[, launch][, per_program_s]
    [, block_diag_frac]) from fixed starting points (with ``diag``, the work is flops + frac x diag)."""
    us_f = float(np.median(peak)) * 1e-6     # FLOPs per microsecond at peak (scales F0)
    us_b = bw * 1e-6                          # bytes per microsecond at peak (scales B0)
    fixed_launch = launch_s is not None
    # x = [log compute_frac, log bandwidth_frac, F0 in us at peak, B0 in us at peak, launch in us,
    #      per_program_s in ns, block_diag_frac]
    x_full = np.array([math.log(cf_p), math.log(bf_p), 0.0, 0.0, 0.0, 0.0, 1.0])
    free = [i for i in range(7) if not ((pin_c and i in (0, 2)) or (pin_m and i in (1, 3))
                                        or (fixed_launch and i == 4) or (feat is None and i == 5)
                                        or (diag is None and i == 6))]

    def full(xf):
        x = x_full.copy()
        x[free] = xf
        return x

    def unpack(x):
        p = {"compute_frac": math.exp(x[0]), "bandwidth_frac": math.exp(x[1]),
             "fixed_flops": x[2] * us_f, "fixed_bytes": x[3] * us_b,
             "launch_s": launch_s if fixed_launch else x[4] * 1e-6}
        if feat is not None:
            p["per_program_s"] = x[5] * 1e-9
        if diag is not None:
            p["block_diag_frac"] = x[6]
        return p

    def work(x):
        return flops if diag is None else flops + x[6] * diag

    def resid(xf):
        x = full(xf)
        r = np.log(predict(unpack(x), work(x), byts, peak, bw, feat=feat)) - logt
        return np.concatenate([r, 1e-4 * x[2:4]])  # a whisper towards no fixed work

    t = np.exp(logt)
    top_c = min(max(float(np.max(flops / (t * peak))), 0.02), 1.4)
    top_b = min(max(float(np.max(byts / (t * bw))), 0.02), 1.4)
    lo_all = np.array([math.log(1e-3), math.log(1e-3), 0.0, 0.0, 0.0, 0.0, 0.0])
    hi_all = np.array([math.log(1.5), math.log(1.5), 1e5, 1e5, 1e3, 1e4, 1.0])
    best = None
    for cf in (top_c, 0.7):          # starting points independent of the prior: refitting with
        for bf in (top_b, 0.8):      # a fitted profile as base reproduces it
            for fx in (0.5, 5.0):
                for pp in ((1.0, 30.0) if feat is not None else (0.0,)):
                    for df in ((0.1, 0.9) if diag is not None else (1.0,)):
                        x0 = np.clip(np.array([math.log(cf), math.log(bf), fx, fx, 2.0, pp, df]), lo_all + 1e-9,
                                     hi_all - 1e-9)
                        res = least_squares(resid, x0[free], bounds=(lo_all[free], hi_all[free]), loss="soft_l1",
                                            f_scale=F_SCALE, max_nfev=2000)
                        if best is None or res.cost < best.cost - 1e-12:
                            best = res
    p = unpack(full(best.x))
    p["_pins"] = (bool(pin_c), bool(pin_m))
    return p


def fit_curve(flops, byts, peak, bw, t, prior: Mapping, launch_s: float | None = None, feat=None,
              diag=None) -> dict:
    """Fit one affine roofline + correction to points (arrays) by robust least squares on log t.

    ``prior`` (compute_frac, bandwidth_frac) supplies fractions the data cannot identify (the
    compute roof of an op no point is compute-bound on, e.g. decode attention); they are kept
    as given with their fixed term 0.  ``launch_s`` fixes the launch term.  ``feat``: each
    point's programs; fits ``per_program_s`` (key of the result) with the roofline.  ``diag``:
    prefill's diagonal-band FLOPs of whole query blocks (``flops`` then the off-diagonal ones,
    sim.cost.ops.prefill_block_pairs); fits ``block_diag_frac`` in [0, 1], the work being
    flops + block_diag_frac x diag.
    """
    flops, byts, peak, t = (np.asarray(a, float) for a in (flops, byts, peak, t))
    feat = None if feat is None else np.asarray(feat, float)
    diag = None if diag is None else np.asarray(diag, float)
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
    chk = flops if diag is None else flops + diag  # whole blocks (block_diag_frac 1) for the checks below
    cf_p = min(max(cf_p, float(np.max(chk / (peak * busy)))), 1.5)
    bf_p = min(max(bf_p, float(np.max(byts / (bw * busy)))), 1.5)
    # a roof no point ideally reaches cannot be identified: pin its fraction to the prior and
    # its fixed term to 0 (otherwise F0 and B0 trade off freely as a small-size floor)
    n_c = int(np.sum(chk / peak > byts / bw))
    n_m = len(t) - n_c
    pin_c, pin_m = n_c < 3 <= n_m, n_m < 3 <= n_c
    p = _stage1(flops, byts, peak, bw, logt, cf_p, bf_p, pin_c, pin_m, launch_s if fixed_launch else None, feat,
                diag)
    # a roof the fit makes bind on fewer than 3 points is not identified either: pin and refit
    wk = flops if diag is None else flops + p["block_diag_frac"] * diag
    t_c = np.where(wk > 0, (wk + p["fixed_flops"]) / (peak * p["compute_frac"]), 0.0)
    t_m = (byts + p["fixed_bytes"]) / (bw * p["bandwidth_frac"])
    nc_fit = int(np.sum(t_c >= t_m))
    if not (pin_c or pin_m) and min(nc_fit, len(t) - nc_fit) < 3:
        pin_c, pin_m = nc_fit < 3, len(t) - nc_fit < 3
        p = _stage1(flops, byts, peak, bw, logt, cf_p, bf_p, pin_c, pin_m, launch_s if fixed_launch else None,
                    feat, diag)
    if diag is not None:  # the fitted work of whole blocks from here on
        p["block_diag_frac"] = round(float(p["block_diag_frac"]), 4)
        flops = flops + p["block_diag_frac"] * diag
    # stage 2: correction factors over log2 ideal ns
    lx = np.log2(np.maximum(flops / peak, byts / bw) * 1e9)
    lo_k, hi_k = math.floor(lx.min()), math.ceil(lx.max())
    knots = np.arange(lo_k, hi_k + KNOT_STEP, KNOT_STEP, dtype=float) if hi_k > lo_k else np.array([])
    if len(knots) >= 2 and len(t) >= 2 * len(knots):
        def resid2(g):
            q = dict(p, corr_log2_x=knots, corr_factor=np.exp(g))
            r = np.log(predict(q, flops, byts, peak, bw, feat=feat)) - logt
            return np.concatenate([r, 0.3 * np.diff(g, 2), 0.02 * g])
        g = least_squares(resid2, np.zeros(len(knots)), loss="soft_l1", f_scale=F_SCALE).x
        p["corr_log2_x"] = [float(k) for k in knots]
        p["corr_factor"] = [_sig(math.exp(v), 5) for v in g]
    else:
        p["corr_log2_x"], p["corr_factor"] = [], []
    for k in ("compute_frac", "bandwidth_frac", "fixed_flops", "fixed_bytes", "launch_s", "per_program_s"):
        if k in p:
            p[k] = _sig(p[k])
    pred = predict(p, flops, byts, peak, bw, feat=feat)
    t_c = np.where(flops > 0, (flops + p["fixed_flops"]) / (peak * p["compute_frac"]), 0.0)
    t_m = (byts + p["fixed_bytes"]) / (bw * p["bandwidth_frac"])
    p["_stats"] = {"launch_capped": bool(capped), "pinned_compute": bool(pin_c), "pinned_memory": bool(pin_m),
                   "compute_bound_points": int(np.sum(t_c >= t_m)),
                   "memory_bound_points": int(np.sum(t_c < t_m)),
                   "median_abs_pct_err": float(np.median(_abs_pct(pred, t))),
                   "p90_abs_pct_err": float(np.percentile(_abs_pct(pred, t), 90))}
    return p
