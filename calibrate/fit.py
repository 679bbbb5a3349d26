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
error; the shipped curve is then refitted on all points.  Many-sequence launches
(attn_*_multi.csv, optional; calibrate.fit_multi): equal-length launches are fitted points
(they extend the tables' rows), mixed ones are priced as the simulator prices them and never
fitted into the curve or tables; their held-out errors are reported apart from the grid's.
With many-sequence launches, attention curves get a cost per program of the kernel
(per_block_s: per query head per 128-query block of prefill; per_seq_s: per sequence per KV
head of decode) fitted with the roofline, and Triton decode a serial-chain floor
(chain_s_per_token, chain_bytes_per_s) fitted on the mixed launches (sim.cost.ops.many_seq_s).

Ignores: dtype-specific curves (the profile has one curve per op kind: GEMMs are fitted on
bf16 rows; fp8 rows get a separate informational fit), clock drift within a run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from calibrate import fit_multi, grids, grids_multi
from calibrate.curve import _abs_pct, fit_curve  # noqa: F401  (fit_curve: public here since the first fit)
from calibrate.measurements import (HOLDOUT_MOD, MULTI_KINDS, SHAPE_COLS, TARGETS, FitError, _date, _display_path,
                                    _provenance_summary, fold_multi, prepare, read_measurements, read_provenance,
                                    shape_key)
from calibrate.model import _sig, build_tables, chain_floor_s, predict, predict_rows, work_rows
from sim.hardware import OP_KINDS, profile_from_dict
from sim.config import read_yaml


PRIMARY_DTYPE = "bf16"


def _launch_rows(frames: Mapping[str, pd.DataFrame]) -> dict[str, float]:
    ew = frames.get("elementwise")
    if ew is None:
        return {}
    rows = ew[ew["op"] == "launch"]
    return {str(b): float(v) for b, v in rows.groupby("backend")["time_s"].median().items()}


# ------------------------------------------------------------------------------ one group
def _fit_group(kind: str, g: pd.DataFrame, prior: Mapping, launch_s: float | None,
               backend: str = "vendor", collect: list | None = None,
               mixed: pd.DataFrame | None = None) -> tuple[dict, dict, list]:
    """(shipped params, fit metadata, representative samples) for one (op, backend[, dtype]).
    ``g``: the fitted rows (single-sequence grid, and equal-length many-sequence launches);
    ``mixed``: mixed-length launches, priced, not fitted into the curve or tables (their
    training part fits the decode chain floor: calibrate.fit_multi)."""
    cols = lambda d: (d["flops_"].to_numpy(), d["bytes_"].to_numpy(), d["peak"].to_numpy(),  # noqa: E731
                      float(d["bw"].iloc[0]), d["time_s"].to_numpy())
    hmask = g["heldout"].to_numpy(bool)
    train, held = g[~hmask], g[hmask]
    gsel = fit_multi.sets(held) == "grid"
    mixed = mixed if mixed is not None and len(mixed) else g.iloc[:0]
    term = fit_multi.TERMS[kind] if fit_multi.term_applies(kind, g) else None
    chain = fit_multi.chain_applies(kind, backend) and len(mixed) >= fit_multi.MIN_CHAIN_LAUNCHES
    meta: dict[str, Any] = {"points": int(len(g)), "held_out_points": int(np.sum(gsel))}
    facts = _kernel_facts(kind, backend)

    def model_fn(d: pd.DataFrame, m: pd.DataFrame, with_term: bool = True):
        """Curve (with the per-program term), tables and the chain floor fitted on ``d`` (+ ``m``)."""
        feat = d["programs_"].to_numpy(float) if term and with_term else None
        if feat is not None and kind == "attn_prefill":  # work in whole 128-query blocks
            c = cols(d)
            p = fit_curve(d["blk_off_"].to_numpy(float), *c[1:], prior, launch_s, feat=feat,
                          diag=d["blk_diag_"].to_numpy(float))
        else:
            p = fit_curve(*cols(d), prior, launch_s, feat=feat)
        p = dict(p, **facts)
        tabs = build_tables(kind, backend, d, p)
        ch = None
        if chain and len(m) >= fit_multi.MIN_CHAIN_LAUNCHES:
            ch = fit_multi.fit_chain(kind, p, tabs, m)
            if ch["adopted"]:
                p.update({k: ch[k] for k in fit_multi.CHAIN_KEYS})
        return p, tabs, ch

    m_held = mixed[mixed["heldout"].to_numpy(bool)]
    m_train = mixed[~mixed["heldout"].to_numpy(bool)]
    if len(held) and len(train) >= 6:
        p_tr, tabs_tr, _ = model_fn(train, m_train)
        t = held["time_s"].to_numpy(float)
        curve = _curve_s(kind, p_tr, held)
        pred_held = predict_rows(kind, p_tr, tabs_tr, held)
        pred_mixed = predict_rows(kind, p_tr, tabs_tr, m_held)
        if collect is not None:
            both = pd.concat([held, m_held], ignore_index=True)
            collect.append(pd.DataFrame({"kind": kind, "backend": backend, "dtype": both["dtype"].to_numpy(),
                                         "shape": [shape_key(kind, r) for r in both.to_dict("records")],
                                         "set": np.concatenate([fit_multi.sets(held), fit_multi.sets(m_held)]),
                                         "time_s": both["time_s"].to_numpy(),
                                         "predicted_s": np.concatenate([pred_held, pred_mixed]),
                                         "curve_only_s": np.concatenate([curve, _curve_s(kind, p_tr, m_held)]),
                                         "ideal_ns": both["ideal_ns"].to_numpy()}))
        if gsel.any():
            err, err_curve = _abs_pct(pred_held[gsel], t[gsel]), _abs_pct(curve[gsel], t[gsel])
            meta["heldout_median_abs_pct_err"] = round(float(np.median(err)), 2)
            meta["heldout_p90_abs_pct_err"] = round(float(np.percentile(err, 90)), 2)
            meta["meets_targets"] = bool(np.median(err) <= TARGETS["median_abs_pct_err"]
                                         and np.percentile(err, 90) <= TARGETS["p90_abs_pct_err"])
            # what a shape of an unmeasured family gets: the curve alone
            meta["curve_only_heldout_median_abs_pct_err"] = round(float(np.median(err_curve)), 2)
            meta["curve_only_heldout_p90_abs_pct_err"] = round(float(np.percentile(err_curve, 90)), 2)
        # many-sequence launches, reported apart from the single-sequence grid
        t_many = np.concatenate([t[~gsel], m_held["time_s"].to_numpy(float)])
        meta.update(fit_multi.errors("many_seq_heldout", np.concatenate([pred_held[~gsel], pred_mixed]), t_many))
        meta.update(fit_multi.errors("many_seq_equal_heldout", pred_held[~gsel], t[~gsel]))
        meta.update(fit_multi.errors("many_seq_mixed_heldout", pred_mixed, m_held["time_s"].to_numpy(float)))
        if fit_multi.meets(meta, "many_seq_heldout") is not None:
            meta["many_seq_meets_targets"] = fit_multi.meets(meta, "many_seq_heldout")
        if term and len(t_many):  # the same held-out launches priced by a fit without the term
            p_nt, tabs_nt, _ = model_fn(train, m_train, with_term=False)
            pred_nt = np.concatenate([predict_rows(kind, p_nt, tabs_nt, held[~gsel]),
                                      predict_rows(kind, p_nt, tabs_nt, m_held)])
            meta["_without_term"] = fit_multi.errors("many_seq_heldout", pred_nt, t_many)
    else:
        meta["heldout_note"] = "too few points for a held-out split"
    p, tabs, ch = model_fn(g, mixed)
    p["shape_tables"] = tabs
    if term:
        wo = meta.pop("_without_term", {})
        meta[f"{term}_fit"] = {
            "fitted_value": p.get("per_program_s", 0.0), "adopted": True,
            "median_without": wo.get("many_seq_heldout_median_abs_pct_err"),
            "median_with": meta.get("many_seq_heldout_median_abs_pct_err"),
            "p90_without": wo.get("many_seq_heldout_p90_abs_pct_err"),
            "p90_with": meta.get("many_seq_heldout_p90_abs_pct_err"),
            "note": "fitted with the roofline on the grid and the equal launches; shipped (errors: held-out "
                    "many-sequence launches, fit without / with the per-program term"
                    + (" and whole-block work, block_diag_frac" if kind == "attn_prefill" else "") + ")"}
    if ch is not None:
        meta["chain_fit"] = dict(ch, note=("fitted on the mixed launches; shipped" if ch["adopted"] else
                                           "not adopted (lowers the mixed launches' median error too little)"))
    st = p.pop("_stats")
    allerr = _abs_pct(predict_rows(kind, p, tabs, g), g["time_s"].to_numpy())
    st["median_abs_pct_err"], st["p90_abs_pct_err"] = float(np.median(allerr)), float(np.percentile(allerr, 90))
    if len(mixed):
        pm = predict_rows(kind, p, tabs, mixed)
        meta.update(fit_multi.errors("many_seq_mixed_all_points", pm, mixed["time_s"].to_numpy(float)))
        trend = fit_multi.imbalance_trend(mixed, pm) if kind == "attn_decode" else None
        if trend is not None:
            meta["many_seq_mixed_imbalance_trend"] = trend
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
    pr_s = predict_rows(kind, p, tabs, srt.iloc[idx])
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


def _curve_s(kind: str, p: Mapping, d: pd.DataFrame) -> np.ndarray:
    """The curve alone (with the per-program term and the chain floor: what a family without a
    table gets) for rows ``d``."""
    if not len(d):
        return np.zeros(0)
    d = work_rows(p, d)
    t = predict(p, d["flops_"].to_numpy(), d["bytes_"].to_numpy(), d["peak"].to_numpy(), float(d["bw"].iloc[0]),
                feat=d["programs_"].to_numpy(float))
    fl = chain_floor_s(p, d)
    return t if fl is None else np.maximum(t, fl)


def _kernel_facts(kind: str, backend: str) -> dict:
    """What is known of a backend's kernels rather than fitted: the Triton GEMM's fixed tile
    configs per M class (calibrate/kernels/gemm.py), which its table base charges in whole waves."""
    if kind == "gemm" and backend == "triton":
        return {"gemm_tiles": grids.triton_gemm_tiles_yaml()}
    return {}


def _curve_yaml(kind: str, p: Mapping, meta: Mapping) -> dict:
    d = {k: p[k] for k in ("compute_frac", "bandwidth_frac", "fixed_flops", "fixed_bytes", "launch_s")}
    if p.get("per_program_s") and kind in fit_multi.TERMS:  # the fitted many-sequence terms
        d[fit_multi.TERMS[kind]] = p["per_program_s"]
    if p.get("block_diag_frac") is not None:
        d["block_diag_frac"] = p["block_diag_frac"]
    d.update({k: p[k] for k in fit_multi.CHAIN_KEYS if p.get(k)})
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
    varlen = _varlen_vs_sdpa(frames)
    frames_in, frames = frames, fold_multi(frames)  # many-sequence launches join their op's rows (column src)
    base_eff = base.get("efficiency") or {}
    base_backends = base_eff.get("backends") or {}
    backends_out: dict[str, dict] = {}
    errors: dict[str, dict] = {}
    samples: dict[str, dict] = {}
    extra: dict[str, dict] = {}
    dropped: dict[str, int] = {}
    terms: dict[str, dict] = {}
    for kind in OP_KINDS:
        if kind not in frames:
            continue
        df = prepare(kind, frames[kind], hw)
        for key, n in df.attrs.get("dropped", {}).items():
            dropped[f"{kind}/{key}"] = n
        for be in sorted(df["backend"].unique()):
            sub = df[df["backend"] == be]
            is_mixed = fit_multi.sets(sub) == "many_mixed"
            mixed, sub = sub[is_mixed], sub[~is_mixed]
            prior_src = (base_backends.get(be) or base_backends.get(hw.default_backend) or {}).get(kind) or {}
            prior = {k: float(prior_src.get(k, d)) for k, d in (("compute_frac", 0.7), ("bandwidth_frac", 0.8))}
            prim = sub[sub["dtype"] == PRIMARY_DTYPE] if kind == "gemm" else sub
            if len(prim) >= 4:
                p, meta, smp = _fit_group(kind, prim, prior, launch_s, be, heldout, mixed)
                if kind == "gemm":
                    meta["dtype"] = PRIMARY_DTYPE
                backends_out.setdefault(be, {})[kind] = _curve_yaml(kind, p, meta)
                errors.setdefault(be, {})[kind] = {k: v for k, v in meta.items() if "err" in k or "points" in k}
                for k in ([f"{t}_fit" for t in fit_multi.TERMS.values()]
                          + ["chain_fit", "many_seq_mixed_imbalance_trend"]):
                    if meta.get(k) is not None:
                        terms.setdefault(be, {}).setdefault(kind, {})[k] = meta[k]
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
                            "own_curve": _curve_yaml(kind, q, m2)}
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
                  "sim.cost.ops.affine_roofline_s); attention fitted on many-sequence launches adds a cost per "
                  "program (per_block_s, per_seq_s), prefill work in whole 128-query blocks (block_diag_frac) and "
                  "a decode serial-chain floor (chain_s_per_token, chain_bytes_per_s; sim.cost.ops.many_seq_s)"),
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
    if varlen:
        out["calibration"]["vendor_varlen_vs_sdpa"] = varlen
    if terms:
        out["calibration"]["fit_terms"] = terms
    if any(k in frames_in for k in MULTI_KINDS):
        out["calibration"]["heldout_protocol"] += (
            f"; many-sequence launches (attn_*_multi.csv) reported apart (many_seq_*): marked "
            f"{grids_multi.PREFILL_MULTI_HELDOUT} (prefill), {grids_multi.DECODE_MULTI_HELDOUT} (decode) plus "
            "the same hash rule; mixed launches are never fitted, the fit on the other rows prices them")
    if dropped:
        out["calibration"]["rows_not_fitted"] = {"note": "dtype without a peak in the profile, or unknown backend",
                                                 **dropped}
    return _plain(out)


def _varlen_vs_sdpa(frames: Mapping[str, pd.DataFrame]) -> dict:
    """Per many-sequence op, FlashAttention's varlen entry (backend vendor_varlen, used for the
    mixed launches) over SDPA (vendor) on the same equal-length launches: median and range."""
    out = {}
    for mk in ("attn_prefill_multi", "attn_decode_multi"):
        df = frames.get(mk)
        if df is None or "vendor_varlen" not in set(df["backend"]):
            continue
        key = SHAPE_COLS[mk] + ["dtype"]
        both = df[df["backend"] == "vendor_varlen"].merge(df[df["backend"] == "vendor"], on=key, suffixes=("", "_sdpa"))
        if len(both):
            r = both["time_s"].to_numpy(float) / both["time_s_sdpa"].to_numpy(float)
            out[mk] = {"launches": int(len(r)), "median_ratio": round(float(np.median(r)), 3),
                       "min_ratio": round(float(r.min()), 3), "max_ratio": round(float(r.max()), 3)}
    return out


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
