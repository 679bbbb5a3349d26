"""The uncertainty section of a calibrated profile: empirical distributions of held-out log
residuals, read at run time by sim/cost/uncertainty.py (step intervals) and sim/cost/noise.py
(cost-noise replicates).

    python -m calibrate.fit_uncertainty DATA_DIR --profile P [--truth DIR] [--dry-run]

adds (or replaces) ``calibration.uncertainty`` in profile P without changing anything else in
the file; ``servesim calibrate fit`` writes the same section into the profile it fits.

Models, per (backend, op kind) - gemm (bf16, the curve the profile ships), attn_prefill,
attn_decode, elementwise - the distribution of log(measured / predicted) over the fit's held-out
rows, each predicted by the fit on the other rows (``fit_profile(..., heldout=list)``: the
single-sequence grid and, where the data have them, the held-out many-sequence launches, equal
and mixed). Stored as quantiles at 5 %, 10 %, ..., 95 %, the minimum, the maximum, the standard
deviation and the number of points (``sim.cost.uncertainty.Residuals``).

A step-level term, per step phase (decode, prefill, mixed), where DATA_DIR has a whole-step
truth run (``truth/wholestep.csv``, calibrate/wholestep.py): the distribution of
log(measured / predicted) of the whole steps NOT marked held out (``heldout == 0``), CUDA-graph
replays and eager steps together, each priced by the profile as ``calibrate.compare_wholestep``
prices it. It carries what op microbenchmarks do not see inside a step (the power-capped clock
of long prefill steps, the KV-cache write and other unpriced ops); the held-out whole steps stay
out of it, so ``calibrate.compare_intervals`` can test the intervals on them.

Standalone, the curves are not refitted into the profile: ``fit_profile`` runs only to get its
held-out predictions, and must reproduce the profile's ``efficiency`` section exactly (else
the residuals would describe another fit: an error). The section is written as text into the
profile's ``calibration`` block, and the rest of the file is checked to be byte-identical.

Ignores: residuals of other dtypes (fp8 GEMMs are priced with the bf16 curve and their own
tables; no held-out distribution of their own is kept), of the NCCL fit, and of host time.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from calibrate.fit import PRIMARY_DTYPE, _plain, fit_profile
from calibrate.measurements import FitError, _display_path
from sim.config import read_yaml
from sim.cost.uncertainty import KINDS, LEVELS, PHASES, Residuals
from sim.hardware import dump_profile, load_hardware, profile_from_dict

MIN_POINTS = 5  # fewer held-out points than this: no distribution for that kind or phase
MODEL = ("a step's price times one factor per op kind (gemm_s, the prefill and decode parts of attn_s, other_s "
         "for elementwise), each drawn from ops.<backend>.<kind>, and (where present) its GPU part times one "
         "factor per phase drawn from step.<phase>; host and comm seconds unscaled; a distribution is the "
         "piecewise-linear quantile function through (0, min), (levels, quantiles), (1, max) of log(measured / "
         "predicted) (sim/cost/uncertainty.py)")


def op_residuals(heldout: list[pd.DataFrame]) -> dict[str, dict[str, tuple[Residuals, dict]]]:
    """{backend: {kind: (Residuals, rows per set)}} from ``fit_profile``'s held-out frames
    (GEMMs: bf16 rows only); kinds with fewer than MIN_POINTS rows are left out."""
    if not heldout:
        return {}
    df = pd.concat(heldout, ignore_index=True)
    df = df[(df["kind"] != "gemm") | (df["dtype"] == PRIMARY_DTYPE)]
    out: dict = {}
    for (be, kind), g in df.groupby(["backend", "kind"], sort=True):
        if kind not in KINDS:
            continue
        r = np.log(g["time_s"].to_numpy(float) / g["predicted_s"].to_numpy(float))
        r = r[np.isfinite(r)]
        if len(r) < MIN_POINTS:
            continue
        sets = {str(k): int(v) for k, v in g["set"].value_counts().sort_index().items()} if "set" in g else {}
        out.setdefault(str(be), {})[str(kind)] = (Residuals.from_samples(r), sets)
    return out


def step_residuals(hw, truth_dir: str | Path) -> tuple[dict[str, Residuals], dict]:
    """({phase: Residuals} of the non-held-out whole steps of ``truth_dir``/wholestep.csv priced
    on ``hw``, both modes together; provenance {data, rows, note})."""
    from calibrate.compare_wholestep import COLUMNS, StepPricer, predictions
    from calibrate.compare_instep import read_rows
    rows = [r for r in read_rows(truth_dir, "wholestep.csv", COLUMNS) if int(r["heldout"]) == 0]
    pred = predictions(rows, StepPricer(hw))
    out = {}
    for ph in PHASES:
        r = [np.log(1.0 / p["ratio"]) for p in pred if p["phase"] == ph]
        if len(r) >= MIN_POINTS:
            out[ph] = Residuals.from_samples(r)
    p = Path(truth_dir)
    info = {"data": _display_path(p) + "/wholestep.csv", "rows": len(rows),
            "note": "whole steps with heldout == 0 (graph replays and eager steps together), priced as "
                    "calibrate.compare_wholestep prices them; the held-out whole steps are not used"}
    return out, info


def uncertainty_section(heldout: list[pd.DataFrame], hw=None, truth_dir: str | Path | None = None) -> dict:
    """The ``calibration.uncertainty`` mapping: op residuals from ``heldout`` and, given a
    profile ``hw`` and a truth folder with wholestep.csv, the step-level term."""
    ops = op_residuals(heldout)
    def kinds_yaml(kinds: dict) -> dict:
        return {k: {**kinds[k][0].to_dict(), "sets": kinds[k][1]} for k in KINDS if k in kinds}
    sec: dict = {"model": MODEL, "levels": list(LEVELS),
                 "ops": {be: kinds_yaml(kinds) for be, kinds in sorted(ops.items())}}
    if hw is not None and truth_dir is not None and (Path(truth_dir) / "wholestep.csv").exists():
        step, info = step_residuals(hw, truth_dir)
        if step:
            sec["step"] = {**info, **{ph: r.to_dict() for ph, r in step.items()}}
    return _plain(sec)


def add_uncertainty(d: dict, heldout: list[pd.DataFrame], data_dir: str | Path, src: str = "") -> dict:
    """Put the section into a fitted profile dict ``d`` (``servesim calibrate fit``): the
    step-level term from DATA_DIR/truth when it has wholestep.csv. Returns the section."""
    truth = Path(data_dir) / "truth"
    hw = profile_from_dict(d, src or str(data_dir)) if (truth / "wholestep.csv").exists() else None
    sec = uncertainty_section(heldout, hw, truth if hw is not None else None)
    d.setdefault("calibration", {})["uncertainty"] = sec
    return sec


# ------------------------------------------------------------------------------ writing into a file
_TOP = re.compile(r"^[^\s#]")      # a top-level key
_KEY2 = re.compile(r"^  [^\s#-]")  # a key of a top-level mapping (block lists under it start with '  -')


def _block(section: Mapping) -> list[str]:
    """The section's YAML lines as a key of ``calibration`` (dumped inside it, so lines wrap as in
    a whole profile's dump)."""
    lines = dump_profile({"calibration": {"uncertainty": dict(section)}}).splitlines(True)
    assert lines[0] == "calibration:\n"
    return lines[1:]


def _span(lines: list[str]) -> tuple[int, int, int | None, int | None]:
    """(calibration start, its end, uncertainty start, its end) as line indices (None: absent)."""
    try:
        c0 = next(i for i, ln in enumerate(lines) if ln.rstrip("\n") == "calibration:")
    except StopIteration:
        raise FitError("the profile has no block 'calibration:' to hold the uncertainty section") from None
    c1 = next((i for i in range(c0 + 1, len(lines)) if _TOP.match(lines[i])), len(lines))
    u0 = next((i for i in range(c0 + 1, c1) if lines[i].startswith("  uncertainty:")), None)
    u1 = None if u0 is None else next((i for i in range(u0 + 1, c1) if _KEY2.match(lines[i])), c1)
    return c0, c1, u0, u1


def with_section(text: str, section: Mapping) -> str:
    """``text`` (a profile YAML) with ``calibration.uncertainty`` replaced by ``section``, or
    added at the end of the calibration block; every other line unchanged."""
    lines = text.splitlines(True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    _, c1, u0, u1 = _span(lines)
    if u0 is None:
        u0 = u1 = c1
    return "".join(lines[:u0] + _block(section) + lines[u1:])


def _without(text: str) -> str:
    lines = text.splitlines(True)
    _, _, u0, u1 = _span(lines)
    return text if u0 is None else "".join(lines[:u0] + lines[u1:])


def write_section(path: str | Path, section: Mapping) -> None:
    """Write ``section`` into the profile at ``path``; checks that the file parses to the old
    content plus the section and that every other line is byte-identical."""
    p = Path(path)
    old = p.read_text()
    new = with_section(old, section)
    before, after = dict(read_yaml(p)), None
    tmp = p.with_suffix(".yaml.tmp")
    tmp.write_text(new)
    try:
        after = dict(read_yaml(tmp))
        profile_from_dict(after, str(p))
    finally:
        tmp.unlink()
    got = dict(after["calibration"])
    sec = got.pop("uncertainty", None)
    want = dict(before["calibration"])
    want.pop("uncertainty", None)
    if sec != _plain(dict(section)) or got != want or {k: v for k, v in after.items() if k != "calibration"} != \
            {k: v for k, v in before.items() if k != "calibration"}:
        raise FitError(f"{p}: writing the uncertainty section would change other content; nothing written")
    if _without(new) != _without(old if old.endswith("\n") else old + "\n"):
        raise FitError(f"{p}: the lines outside the uncertainty section would change; nothing written")
    p.write_text(new)


# ------------------------------------------------------------------------------ command line
def format_section(sec: Mapping) -> str:
    """One line per distribution: points, p10, p50, p90 (as ratios measured / predicted), sd."""
    i10, i50, i90 = LEVELS.index(0.1), LEVELS.index(0.5), LEVELS.index(0.9)
    lines = [f"{'what':<28}{'points':>7}{'p10':>8}{'p50':>8}{'p90':>8}{'sd(log)':>9}"]

    def row(name, d):
        q = d["quantiles"]
        lines.append(f"{name:<28}{d['points']:>7}{np.exp(q[i10]):>8.3f}{np.exp(q[i50]):>8.3f}"
                     f"{np.exp(q[i90]):>8.3f}{d['sd']:>9.3f}")
    for be, kinds in sec.get("ops", {}).items():
        for k, d in kinds.items():
            row(f"{be} {k}", d)
    for ph in PHASES:
        if ph in sec.get("step", {}):
            row(f"step {ph}", sec["step"][ph])
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", help="calibrate/data/<gpu>/ (the CSVs the profile was fitted to)")
    ap.add_argument("--profile", required=True, help="the profile YAML (or shipped name) to add the section to")
    ap.add_argument("--truth", default=None, help="folder with wholestep.csv for the step-level term "
                                                  "(default DATA_DIR/truth when present)")
    ap.add_argument("--dry-run", action="store_true", help="print the section's summary, write nothing")
    a = ap.parse_args(argv)
    try:
        path = Path(a.profile)
        if not path.exists():
            path = Path(load_hardware(a.profile).path)
        data = Path(a.data_dir)
        held: list = []
        d = fit_profile(data, path, heldout=held)
        if d["efficiency"] != dict(read_yaml(path)).get("efficiency"):
            raise FitError(f"fitting {data} does not reproduce {path}'s efficiency section (another fit, data or "
                           "code version): refit with `servesim calibrate fit`, which writes the section too")
        truth = Path(a.truth) if a.truth else data / "truth"
        hw = load_hardware(str(path))
        sec = uncertainty_section(held, hw, truth if (truth / "wholestep.csv").exists() else None)
        print(format_section(sec))
        if not a.dry_run:
            write_section(path, sec)
            print(f"wrote calibration.uncertainty into {path}")
    except (FitError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
