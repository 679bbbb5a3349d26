"""calibrate/fit_uncertainty.py (held-out residuals into a profile) and
calibrate/compare_intervals.py (coverage of the step intervals on whole-step truth).

Synthetic inputs only, built here: held-out frames with stated ratios, a copy of a shipped
profile text, and a four-row wholestep.csv whose measured times are the simulator's own price
times stated ratios. The last test checks the claim calibrate/reports/truth_h200_sxm.md makes
about the shipped H200 profile."""
from __future__ import annotations

import csv
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from calibrate.compare_intervals import coverage, coverage_table, interval_rows, report
from calibrate.compare_wholestep import COLUMNS, StepPricer
from calibrate.fit_uncertainty import _without, op_residuals, step_residuals, uncertainty_section, with_section, \
    write_section
from calibrate.measurements import FitError
from sim.config import read_yaml
from sim.cost.uncertainty import LEVELS
from sim.hardware import load_hardware, profile_from_dict
from tests.conftest import ROOT

H200 = ROOT / "hardware_profiles" / "h200_sxm.yaml"


def frame(kind, backend, ratios, dtype="bf16", src="grid"):
    t = np.full(len(ratios), 1e-4)
    return pd.DataFrame({"kind": kind, "backend": backend, "dtype": dtype, "shape": [f"s{i}" for i in range(len(t))],
                         "set": src, "time_s": t * np.asarray(ratios), "predicted_s": t, "curve_only_s": t,
                         "ideal_ns": 1.0})


def test_op_residuals_are_the_log_ratio_quantiles():
    ratios = np.exp(np.linspace(-0.1, 0.2, 31))
    held = [frame("gemm", "vendor", ratios), frame("gemm", "vendor", [5.0] * 9, dtype="fp8"),
            frame("attn_decode", "triton", ratios[:20]), frame("attn_decode", "triton", ratios[20:], src="many_mixed"),
            frame("elementwise", "vendor", ratios[:4])]
    out = op_residuals(held)
    r, sets = out["vendor"]["gemm"]
    assert r.points == 31 and sets == {"grid": 31}  # fp8 rows left out
    assert r.quantiles == pytest.approx(np.quantile(np.linspace(-0.1, 0.2, 31), LEVELS), abs=1e-12)
    assert (r.min, r.max) == pytest.approx((-0.1, 0.2))
    r, sets = out["triton"]["attn_decode"]
    assert r.points == 31 and sets == {"grid": 20, "many_mixed": 11}
    assert "elementwise" not in out["vendor"]  # 4 points < MIN_POINTS
    sec = uncertainty_section(held)
    assert sec["levels"] == list(LEVELS) and "step" not in sec
    assert sec["ops"]["vendor"]["gemm"]["quantiles"][LEVELS.index(0.5)] == pytest.approx(0.05, abs=1e-5)


def test_section_goes_in_and_is_replaced_leaving_every_other_line(tmp_path):
    text = H200.read_text()
    sec1 = {"levels": list(LEVELS), "ops": {"vendor": {"gemm": {"points": 5, "sd": 0.1, "min": -0.1, "max": 0.1,
                                                                 "quantiles": [0.0] * 19}}}}
    sec2 = {"levels": list(LEVELS), "note": "second"}
    one = with_section(text, sec1)
    two = with_section(one, sec2)
    assert _without(one) == _without(two) == _without(text)
    assert yaml.safe_load(two)["calibration"]["uncertainty"] == sec2
    assert with_section(two, sec2) == two
    p = tmp_path / "h200_sxm.yaml"
    p.write_text(text)
    write_section(p, sec1)
    d, orig = read_yaml(p), read_yaml(H200)
    assert d["calibration"]["uncertainty"] == sec1
    d["calibration"].pop("uncertainty")
    orig["calibration"].pop("uncertainty", None)
    assert d == orig
    with pytest.raises(FitError, match="no block 'calibration:'"):
        with_section("name: x\n", sec1)


def _synthetic_profile(step: dict | None = None):
    """h200_sxm with a synthetic uncertainty: GEMM uniform on [-0.2, 0.2] in log, others exact."""
    flat = {"points": 9, "sd": 0.0, "min": 0.0, "max": 0.0, "quantiles": [0.0] * 19}
    uni = {"points": 9, "sd": 0.0, "min": -0.2, "max": 0.2, "quantiles": [-0.2 + 0.4 * lv for lv in LEVELS]}
    ops = {"gemm": uni, "attn_prefill": flat, "attn_decode": flat, "elementwise": flat}
    d = dict(read_yaml(H200))
    d["calibration"] = dict(d["calibration"], uncertainty={"ops": {"vendor": ops, "triton": ops},
                                                          **({"step": step} if step else {})})
    return profile_from_dict(d, "synthetic.yaml")


def _truth(tmp_path, ratios_heldout):
    """wholestep.csv of llama vendor eager steps: measured = the simulator's price x ratio."""
    hw = load_hardware("h200_sxm")
    pricer = StepPricer(hw)
    shapes = [("prefill", "512x1", ""), ("decode", "", "32@1024"), ("mixed", "512x1", "32@1024"),
              ("prefill", "2048x1", ""), ("decode", "", "8@256"), ("prefill", "1024x1", ""),
              ("prefill", "256x1", ""), ("prefill", "128x2", ""), ("prefill", "64x4", "")]
    rows = []
    for (phase, pf, dc), (ratio, held) in zip(shapes, ratios_heldout):
        r = {"model": "llama-3.1-8b", "backend": "vendor", "phase": phase, "prefill": pf, "decode": dc,
             "num_layers": "32", "mode": "eager_sum", "time_s": 1.0, "heldout": str(held)}
        r["time_s"] = pricer.predict(r).total_s * ratio
        rows.append(r)
    p = tmp_path / "wholestep.csv"
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return tmp_path, rows


def test_coverage_arithmetic_on_a_tiny_csv(tmp_path):
    # ratios 1.0 are inside any interval around the price; 1.5 and 0.5 outside (GEMM is < 100 % of a step,
    # its factor within exp(+-0.2))
    d, rows = _truth(tmp_path, [(1.0, 1), (1.5, 1), (1.0, 0), (0.5, 0)])
    hw = _synthetic_profile()
    got = interval_rows(rows, hw)
    assert [r["covered"] for r in got] == [True, False, True, False]
    assert [r["phase"] for r in got] == ["prefill", "decode", "mixed", "prefill"]
    for r in got:
        assert r["lo_s"] < r["predicted_s"] < r["hi_s"]
    c = coverage(got)
    assert (c["n"], c["covered"], c["frac"]) == (4, 2, 0.5)
    tab = {(t["mode"], t["phase"]): t for t in coverage_table(got)}
    assert tab[("eager_sum", "prefill")]["all"]["frac"] == 0.5
    assert tab[("eager_sum", "prefill")]["heldout"]["covered"] == 1
    assert tab[("eager_sum", "decode")]["heldout"]["frac"] == 0.0
    assert tab[("eager_sum", "mixed")]["heldout"] is None
    assert tab[("all", "all")]["heldout"]["n"] == 2
    text = report(d, hw)
    assert "held out 1/2 = 50.0% OUTSIDE" in text and "no step-level term" in text


def test_step_term_is_fitted_on_rows_not_held_out(tmp_path):
    ratios = [1.10, 1.0, 1.0, 1.05, 1.0, 1.20, 1.15, 1.08, 1.12]
    held = [1, 0, 0, 0, 0, 0, 0, 0, 0]  # the first prefill row (1.10) is held out
    d, rows = _truth(tmp_path, list(zip(ratios, held)))
    step, info = step_residuals(load_hardware("h200_sxm"), d)
    assert set(step) == {"prefill"} and info["rows"] == 8  # decode 2, mixed 1 point: below MIN_POINTS
    want = np.log([1.05, 1.20, 1.15, 1.08, 1.12])
    assert step["prefill"].points == 5
    assert step["prefill"].quantiles == pytest.approx(np.quantile(want, LEVELS), abs=1e-9)
    # an exact step term (+10 % on prefill) multiplies the GPU part (here the whole step: no host, no comm)
    flat10 = {"points": 9, "sd": 0.0, "min": math.log(1.1), "max": math.log(1.1), "quantiles": [math.log(1.1)] * 19}
    hw = _synthetic_profile({"prefill": flat10})
    with_, without = interval_rows(rows[:2], hw), interval_rows(rows[:2], hw, use_step=False)
    assert with_[0]["lo_s"] == pytest.approx(1.1 * without[0]["lo_s"], rel=1e-12)
    assert with_[0]["hi_s"] == pytest.approx(1.1 * without[0]["hi_s"], rel=1e-12)
    assert (with_[1]["lo_s"], with_[1]["hi_s"]) == (without[1]["lo_s"], without[1]["hi_s"])  # decode: no term


def test_shipped_h200_intervals_cover_held_out_steps_as_reported():
    rows_dir = ROOT / "calibrate" / "data" / "h200_sxm" / "truth"
    from calibrate.compare_instep import read_rows
    rows = read_rows(rows_dir, "wholestep.csv", COLUMNS)
    got = [r for r in interval_rows(rows, load_hardware("h200_sxm")) if r["heldout"]]
    c = coverage(got)
    assert c["n"] == 64 and 0.75 <= c["frac"] <= 0.85
