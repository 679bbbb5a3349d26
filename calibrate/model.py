"""The fitted model's predictions, vectorised over measurement rows: the affine-roofline curve
and the shape tables (built from measured / base ratios, applied as sim.hardware.ShapeTable
and sim.cost.ops.affine_roofline_s apply them), and the many-sequence terms of attention
(the per-program cost and the decode chain floor, as sim.cost.ops.many_seq_s adds them).
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd

from calibrate import grids
from calibrate.measurements import make_op
from sim.cost.ops import CHAIN_ROOF_BACKENDS, Gemm, chain_ns, gemm_wave_flops
from sim.hardware import TABLE_AXES, TABLE_BASE, TABLE_KEYS, _parse_table, _parse_tiles


def _sig(v: float, n: int = 6) -> float:
    return float(f"{float(v):.{n}g}")




def predict(p: Mapping, flops, byts, peak, bw, corr: bool = True, feat=None) -> np.ndarray:
    """Vectorised affine roofline (same arithmetic as sim.cost.ops.affine_roofline_s); with
    ``corr=False`` the plain affine roofline plus launch, the base that shape tables scale;
    with ``feat`` (each row's programs) plus ``per_program_s`` x programs where ``p`` has it."""
    flops, byts, peak = np.asarray(flops, float), np.asarray(byts, float), np.asarray(peak, float)
    t_c = np.where(flops > 0, (flops + p["fixed_flops"]) / (peak * p["compute_frac"]), 0.0)
    t_m = (byts + p["fixed_bytes"]) / (bw * p["bandwidth_frac"])
    t = np.maximum(t_c, t_m)
    xs = p.get("corr_log2_x")
    if corr and xs is not None and len(xs):
        lx = np.log2(np.maximum(flops / peak, byts / bw) * 1e9)
        t = t * np.interp(lx, xs, p["corr_factor"])
    t = t + p["launch_s"]
    if feat is not None and p.get("per_program_s"):
        t = t + p["per_program_s"] * np.asarray(feat, float)
    return t


def work_rows(p: Mapping, g: pd.DataFrame) -> pd.DataFrame:
    """``g`` with the work the profile prices: where ``p`` has ``block_diag_frac`` (prefill in
    whole 128-query blocks, sim.cost.ops.prefill_block_flops), flops_ = off-diagonal + frac x
    diagonal block FLOPs and ideal_ns from them; else ``g`` itself."""
    a = p.get("block_diag_frac")
    if a is None or not len(g) or "blk_off_" not in g.columns:
        return g
    fl = g["blk_off_"].to_numpy(float) + a * g["blk_diag_"].to_numpy(float)
    return g.assign(flops_=fl, ideal_ns=np.maximum(fl / g["peak"].to_numpy(float),
                                                   g["bytes_"].to_numpy(float) / g["bw"].to_numpy(float)) * 1e9)


def term_s(p: Mapping, g: pd.DataFrame) -> np.ndarray:
    """Each row's per-program term (sim.cost.ops.many_seq_s): ``per_program_s`` x programs."""
    v = p.get("per_program_s") or 0.0
    return v * g["programs_"].to_numpy(float) if v and len(g) else np.zeros(len(g))


def chain_floor_s(p: Mapping, g: pd.DataFrame) -> np.ndarray | None:
    """Each decode row's serial-chain floor (sim.cost.ops.many_seq_s): launch + the longest
    program's tokens x (chain_s_per_token + K/V bytes per token / chain_bytes_per_s); None
    without chain parameters."""
    tau, rate = p.get("chain_s_per_token") or 0.0, p.get("chain_bytes_per_s") or 0.0
    if not (tau or rate) or not len(g) or "chain_tok_" not in g.columns:
        return None
    per_tok = tau + (g["chain_btok_"].to_numpy(float) / rate if rate else 0.0)
    return p["launch_s"] + g["chain_tok_"].to_numpy(float) * per_tok


def predict_rows(kind: str, p: Mapping, tables: list[dict], g: pd.DataFrame) -> np.ndarray:
    """Predictions for the rows ``g`` as sim.cost.ops.op_time makes them: a row whose shape
    family has a table gets its base (sim.hardware.TABLE_BASE) x table ratio; any other the curve."""
    if not len(g):
        return np.zeros(0)
    g = work_rows(p, g)
    args = (g["flops_"], g["bytes_"], g["peak"], float(g["bw"].iloc[0]))
    tf = table_factors(kind, g, tables)
    base = _table_base(kind, p, g)
    t = np.where(np.isnan(tf), predict(p, *args), base * np.nan_to_num(tf, nan=1.0)) + term_s(p, g)
    floor = chain_floor_s(p, g)
    return t if floor is None else np.maximum(t, floor)


def chain_ns_rows(kind: str, g: pd.DataFrame) -> np.ndarray:
    """Each row's serial-chain ideal time in ns (sim.cost.ops.chain_ns; 0 for ops without one)."""
    out = np.zeros(len(g))
    for i, (r, pk, ns) in enumerate(zip(g.to_dict("records"), g["peak"].to_numpy(float), g["num_sms"].to_numpy())):
        cf = getattr(make_op(kind, r), "chain_flops", None)
        if cf is not None:
            out[i] = chain_ns(cf(), float(pk), int(ns))
    return out


def _table_x(kind: str, g: pd.DataFrame) -> np.ndarray:
    """The size a shape table runs along (sim.cost.ops.affine_roofline_s): the ideal time, or
    for prefill the longer of it and the serial chain's ideal time."""
    return np.maximum(g["ideal_ns"].to_numpy(float), chain_ns_rows(kind, g))


def wave_flops_rows(p: Mapping, g: pd.DataFrame) -> np.ndarray | None:
    """Each GEMM row's FLOPs in whole waves of tiles (sim.cost.ops.gemm_wave_flops) where ``p``
    has the kernel's tile configs (``gemm_tiles``) for the row's dtype, else its FLOPs; None
    without tile configs."""
    if not p.get("gemm_tiles"):
        return None
    tiles = _parse_tiles(p["gemm_tiles"], "gemm_tiles", "<fit>")
    out = g["flops_"].to_numpy(float).copy()
    for i, (m, n, k, dt, ns) in enumerate(zip(g["m"], g["n"], g["k"], g["dtype"], g["num_sms"])):
        if dt in tiles:
            out[i] = gemm_wave_flops(tiles[dt], int(m), int(n), int(k), int(ns))
    return out


def _table_base(kind: str, p: Mapping, g: pd.DataFrame) -> np.ndarray:
    """What a shape table's ratio multiplies (as sim.cost.ops.affine_roofline_s): the affine
    roofline + launch (for a GEMM kernel with fixed tiles, its compute roof in whole waves), or
    the corrected curve (for a CHAIN_ROOF_BACKENDS prefill, the roofline with the serial chain
    at compute_frac as a third roof) + launch."""
    args = (g["flops_"], g["bytes_"], g["peak"], float(g["bw"].iloc[0]))
    if TABLE_BASE[kind] != "curve":
        wf = wave_flops_rows(p, g) if kind == "gemm" else None
        if wf is not None:
            return predict(p, wf, *args[1:], corr=False)
        return predict(p, *args, corr=False)
    t = predict(p, *args, corr=False) - p["launch_s"]
    corr = (predict(p, *args) - p["launch_s"]) / t
    roof = g["backend"].isin(CHAIN_ROOF_BACKENDS).to_numpy()
    tc = np.where(roof, chain_ns_rows(kind, g) * 1e-9 / p["compute_frac"], 0.0)
    return np.maximum(t, tc) * corr + p["launch_s"]


# ------------------------------------------------------------------------------ shape tables
def _families(kind: str, g: pd.DataFrame) -> tuple[list[tuple], np.ndarray]:
    """Each row's shape-family key and its raw axis values ([n, axes])."""
    keys, coords = [], []
    for r, ideal in zip(g.to_dict("records"), _table_x(kind, g)):
        op = make_op(kind, r)
        keys.append(op.table_key())
        lc = op.table_coords(float(ideal))
        coords.append([2.0 ** c for c in lc])
    return keys, np.asarray(coords, float).reshape(len(keys), len(TABLE_AXES[kind]))


def build_tables(kind: str, backend: str, g: pd.DataFrame, p: Mapping) -> list[dict]:
    """Shape tables (profile YAML form) of measured / curve ratios for the rows ``g``."""
    if len(g) == 0:
        return []
    g = work_rows(p, g)
    keys, coords = _families(kind, g)
    # the per-program term is added to the table's price (sim.cost.ops.many_seq_s): the ratio is of the rest
    t = g["time_s"].to_numpy(float)
    ratio = np.maximum(t - term_s(p, g), 0.05 * t) / _table_base(kind, p, g)
    axes, names = TABLE_AXES[kind], TABLE_KEYS[kind]
    by_key: dict[tuple, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    out = []
    for k in sorted(by_key, key=lambda t: tuple(str(v) for v in t)):
        idx = by_key[k]
        rows: dict[float, dict[float, list[float]]] = {}
        for i in idx:
            rc = coords[i, 0] if len(axes) == 2 else 0.0
            rows.setdefault(float(rc), {}).setdefault(float(coords[i, -1]), []).append(math.log(ratio[i]))
        dtype = k[names.index("dtype")]
        triton_gemm = kind == "gemm" and backend == "triton" and dtype in grids.TRITON_GEMM_M_BREAKS
        if triton_gemm:
            _flat_segment_ends(rows[0.0], g.iloc[idx[0]], p, int(k[0]), int(k[1]), dtype,
                               int(g["num_sms"].iloc[0]))
        trows = []
        for rc in sorted(rows):
            xs = sorted(rows[rc])
            row = {axes[-1]: [_sig(x, 6) if kind == "attn_prefill" else int(round(x)) for x in xs],
                   "factor": [_sig(math.exp(float(np.mean(rows[rc][x]))), 4) for x in xs]}
            if len(axes) == 2:
                row = {axes[0]: int(round(rc)), **row}
            trows.append(row)
        tab = {"key": dict(zip(names, k)), "rows": trows}
        if triton_gemm:
            tab["breaks"] = grids.triton_gemm_breaks(int(k[0]), dtype, int(g["num_sms"].iloc[0]))
        out.append(tab)
    return out


def _flat_segment_ends(row: dict[float, list[float]], r0, p: Mapping, n: int, k: int, dtype: str,
                       num_sms: int) -> None:
    """Add knots at both ends of each Triton GEMM segment (between tile-class/wave breaks) whose
    CTA count fits one wave count throughout: every M in it launches the same waves of the same
    tiles, each tile doing the same K loop, so the time is flat in M there.  An end gets the time
    of the nearest measured M of its segment, as a ratio to the base at the end (the table then
    interpolates inside the segment rather than carrying the nearest ratio to the ends).  Ends
    already measured, segments without a measured M, and the open-ended last segment are left."""
    bounds = [0] + grids.triton_gemm_breaks(n, dtype, num_sms) + [1 << 62]
    measured = {int(round(x)): x for x in row}
    seg = [sorted(m for m in measured if lo < m <= hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    waves = lambda m: grids.triton_gemm_waves(m, n, dtype, num_sms)  # noqa: E731
    for i, (lo, hi) in enumerate(zip(bounds[:-2], bounds[1:-1])):
        ms = seg[i]
        if not ms or waves(lo + 1) != waves(hi):
            continue
        # an end next to a segment with no measurement is left alone: a query there falls back
        # to interpolating the whole row (sim.hardware.ShapeTable), which a flat end would skew
        for end, near, other in ((lo + 1, ms[0], seg[i - 1] if i else [1]), (hi, ms[-1], seg[i + 1])):
            if end in measured or not other:
                continue
            log_t = float(np.mean(row[measured[near]])) + math.log(_gemm_base(p, r0, near, n, k, dtype))
            row[float(end)] = [log_t - math.log(_gemm_base(p, r0, end, n, k, dtype))]


def _gemm_base(p: Mapping, r0, m: int, n: int, k: int, dtype: str) -> float:
    """A GEMM table's base (_table_base) at (m, n, k), peaks and SM count as in row r0."""
    op = Gemm(m, n, k, dtype)
    g = pd.DataFrame({"m": [m], "n": [n], "k": [k], "dtype": [dtype], "num_sms": [int(r0["num_sms"])],
                      "flops_": [op.flops()], "bytes_": [op.bytes()], "peak": [float(r0["peak"])],
                      "bw": [float(r0["bw"])]})
    return float(_table_base("gemm", p, g)[0])


def table_factors(kind: str, g: pd.DataFrame, tables: list[dict]) -> np.ndarray:
    """Each row's table ratio (NaN where its family has no table), as sim.hardware computes it."""
    parsed = {t.key: t for t in (_parse_table(d, kind, "shape_tables", "<fit>") for d in tables)}
    out = np.full(len(g), np.nan)
    if len(g) == 0 or not parsed:
        return out
    for i, (r, ideal) in enumerate(zip(g.to_dict("records"), _table_x(kind, g))):
        op = make_op(kind, r)
        t = parsed.get(op.table_key())
        if t is not None:
            out[i] = math.exp(t.log_factor(op.table_coords(float(ideal))))
    return out
