"""Coverage of the step prediction intervals on the whole-step truth: how often the 80 %
interval of a step's price (sim/cost/uncertainty.py) holds the measured step.

    python -m calibrate.compare_intervals DATA_DIR --profile P [--seeds N] [--rows]

Models: each row of ``wholestep.csv`` priced as ``calibrate.compare_wholestep`` prices it (graph
replays with graph launch costs, eager steps eagerly, no host time), its interval drawn from the
profile's ``calibration.uncertainty`` (op-level factors, and the step-level term of the step's
phase when the profile has one) by Monte Carlo with a fixed seed; a row is covered when
p10 <= measured <= p90. Coverage is reported per (mode, phase), per mode and overall, over all
rows and over the held-out rows (``heldout == 1``) apart, with the op-level term alone and with
the step-level term too. The step-level term is fitted on the rows with ``heldout == 0``
(calibrate/fit_uncertainty.py), so only the held-out rows test it out of sample. A mixed step's
attention is split into prefill and decode parts in the proportion its eager price has them.

Ignores: the clustering of rows (each shape appears for 2 models x 2 backends x 2 modes, so the
held-out rows are fewer independent trials than rows).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from sim.cost.step_shape import batch_shape, parse_shape
from sim.cost.uncertainty import SAMPLES, decode_attention_s, profile_uncertainty, step_phase, step_quantiles
from sim.hardware import load_hardware

from .compare_instep import CompareError, read_rows
from .compare_wholestep import COLUMNS, MODES, StepPricer

TARGET = (0.75, 0.85)  # the band for the 80 % interval on held-out whole steps


def interval_rows(rows: list[dict], hw, levels=(0.1, 0.9), use_step: bool = True, samples: int = SAMPLES,
                  seed: int = 0, graph_launch_s: float | None = None) -> list[dict]:
    """Each row with ``predicted_s``, ``lo_s``, ``hi_s`` (the interval at ``levels``) and
    ``covered``; ``use_step``: include the profile's step-level term."""
    pricer = StepPricer(hw, graph_launch_s)
    out = []
    for r in rows:
        cost = pricer.cost(r["model"], r["backend"], int(r["num_layers"]))
        unc = profile_uncertainty(hw, r["backend"])
        if unc is None:
            raise CompareError(f"{hw.name}: no calibration.uncertainty for backend {r['backend']} "
                               "(python -m calibrate.fit_uncertainty adds it)")
        shape = batch_shape(*parse_shape(r["prefill"] or "", r["decode"] or ""))
        st = pricer.predict(r)
        phase = step_phase(shape)
        ad = None
        if phase == "mixed":  # split the (graph or eager) attention as the eager price splits it
            eager = cost.step_time(shape).attn_s
            ad = st.attn_s * (decode_attention_s(cost, shape) / eager if eager > 0 else 0.0)
        lo, hi = step_quantiles(unc, st, phase, ad, levels, samples, seed, use_step)
        out.append({**r, "heldout": int(r["heldout"]), "phase": phase, "predicted_s": st.total_s, "lo_s": lo,
                    "hi_s": hi, "covered": bool(lo <= r["time_s"] <= hi)})
    return out


def coverage(rows: list[dict]) -> dict | None:
    """{n, covered, frac, width}: rows covered and their share; width: the median of p90 / p10."""
    if not rows:
        return None
    c = sum(1 for r in rows if r["covered"])
    return {"n": len(rows), "covered": c, "frac": c / len(rows),
            "width": float(np.median([r["hi_s"] / r["lo_s"] for r in rows]))}


def coverage_table(rows: list[dict]) -> list[dict]:
    """Per (mode, phase), per mode ('all' phases) and overall ('all', 'all'): coverage of all
    rows and of the held-out rows."""
    order = lambda k: (MODES.index(k[0]) if k[0] in MODES else 9, k[1])  # noqa: E731
    keys = sorted({(r["mode"], r["phase"]) for r in rows}, key=order)
    keys += [(m, "all") for m in MODES if any(r["mode"] == m for r in rows)] + [("all", "all")]
    out = []
    for mode, ph in keys:
        g = [r for r in rows if mode in ("all", r["mode"]) and ph in ("all", r["phase"])]
        out.append({"mode": mode, "phase": ph, "all": coverage(g), "heldout": coverage([r for r in g if r["heldout"]])})
    return out


def _cell(c: dict | None) -> str:
    return "-" if c is None else f"{c['covered']}/{c['n']} = {c['frac']:.0%}"


def format_table(with_step: list[dict], op_only: list[dict]) -> str:
    """Markdown: coverage of the 80 % interval per group, op-level term alone and with the
    step-level term, all rows and held-out rows, and the median interval width."""
    lines = ["| mode | phase | all rows: op only | all rows: op + step | held out: op only | held out: op + step | "
             "median p90/p10 (op only / op + step) |", "|---|---|---:|---:|---:|---:|---:|"]
    for a, b in zip(op_only, with_step):
        w = f"{a['all']['width']:.3f} / {b['all']['width']:.3f}"
        lines.append(f"| {a['mode']} | {a['phase']} | {_cell(a['all'])} | {_cell(b['all'])} | {_cell(a['heldout'])} | "
                     f"{_cell(b['heldout'])} | {w} |")
    return "\n".join(lines)


def format_rows(rows: list[dict]) -> str:
    lines = ["| mode | model | backend | step | held out | measured ms | p10 ms | predicted ms | p90 ms | covered |",
             "|---|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['model']} | {r['backend']} | `{r['prefill']};{r['decode']}` | "
                     f"{'yes' if r['heldout'] else ''} | {r['time_s'] * 1e3:.3f} | {r['lo_s'] * 1e3:.3f} | "
                     f"{r['predicted_s'] * 1e3:.3f} | {r['hi_s'] * 1e3:.3f} | {'yes' if r['covered'] else 'NO'} |")
    return "\n".join(lines)


def report(data_dir: str | Path, profile, seeds: int = 1, per_row: bool = False) -> str:
    """The coverage tables and verdicts as markdown; ``seeds`` > 1 also gives the range of the
    held-out coverage over Monte Carlo seeds 0 .. seeds - 1."""
    hw = load_hardware(profile) if isinstance(profile, (str, Path)) else profile
    rows = read_rows(data_dir, "wholestep.csv", COLUMNS)
    both = interval_rows(rows, hw)
    op = interval_rows(rows, hw, use_step=False)
    has_step = bool(profile_uncertainty(hw, rows[0]["backend"]).step)
    lines = [f"80 % intervals (p10-p90, {SAMPLES} Latin-hypercube draws, seed 0) of {hw.name}'s prices against "
             f"{len(rows)} measured whole steps ({sum(int(r['heldout']) for r in rows)} held out):", "",
             format_table(coverage_table(both), coverage_table(op)), ""]
    lo, hi = TARGET
    for label, rr in (("op only", op), ("op + step", both)):
        if label == "op + step" and not has_step:
            lines.append("op + step: the profile has no step-level term (no whole-step truth): same as op only")
            continue
        h = coverage([r for r in rr if r["heldout"]])
        if h is None:
            continue
        ok = lo <= h["frac"] <= hi
        lines.append(f"{label}: held out {h['covered']}/{h['n']} = {h['frac']:.1%} "
                     f"{'within' if ok else 'OUTSIDE'} the target {lo:.0%}-{hi:.0%}")
    if seeds > 1:
        for label, use in (("op only", False), ("op + step", True)):
            fr = [coverage([r for r in interval_rows(rows, hw, use_step=use, seed=s) if r["heldout"]])["frac"]
                  for s in range(seeds)]
            lines.append(f"{label}: held-out coverage over Monte Carlo seeds 0-{seeds - 1}: "
                         f"{min(fr):.1%} to {max(fr):.1%}")
    if per_row:
        lines += ["", format_rows(both)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", help="a truth directory holding wholestep.csv (or the CSV itself)")
    ap.add_argument("--profile", required=True, help="hardware profile name or YAML path")
    ap.add_argument("--seeds", type=int, default=1, help="also report held-out coverage over this many MC seeds")
    ap.add_argument("--rows", action="store_true", help="also print every row's interval")
    a = ap.parse_args(argv)
    try:
        print(report(a.data_dir, a.profile, a.seeds, a.rows), end="")
    except (CompareError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
