"""calibrate/REPORT.md generator: one row per (GPU, op, backend) from the committed profiles."""
from pathlib import Path

import pytest

from calibrate.summary import summary_markdown
from sim.hardware import load_hardware

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("gpu", ["h100_sxm", "h200_sxm"])
def test_summary_rows_match_profile(gpu):
    hw = load_hardware(gpu)
    if not hw.efficiency_source.startswith("calibrated"):
        pytest.skip(f"{gpu} is not calibrated")
    md = summary_markdown([gpu])
    errs = hw.calibration["errors"]
    for be, ops in errs.items():
        for kind, meta in ops.items():
            row = [ln for ln in md.splitlines() if ln.startswith(f"| {gpu} | {kind} | {be} |")]
            assert len(row) == 1, (be, kind)
            cells = [c.strip() for c in row[0].strip("|").split("|")]
            assert float(cells[5]) == pytest.approx(meta["heldout_median_abs_pct_err"], abs=0.006)
            assert float(cells[6]) == pytest.approx(meta["heldout_p90_abs_pct_err"], abs=0.006)
            ok = meta["heldout_median_abs_pct_err"] <= 5 and meta["heldout_p90_abs_pct_err"] <= 15
            assert cells[7] == ("yes" if ok else "**no**")
    if (ROOT / "calibrate" / "data" / gpu / "model_check.csv").exists():
        assert "host overhead per step" in md
