"""One GPU call for the in-step, whole-step and sustained-clock references (issue "fidelity
inside real steps"):

  PYTHONUNBUFFERED=1 python3 -m calibrate.truth --out DIR [--quick] [--tiny] [--seconds 60] [--deadline-s 560]

Runs calibrate.instep, calibrate.wholestep and calibrate.sustained in that order, each in its
own Python process (a CUDA error in one leaves the next a clean context; Triton's disk cache
carries the compiled kernels over), each with a wall-time budget it checks between shapes, and a
hard timeout (budget + GRACE_S) after which truth kills it and goes on.  Budgets shrink when the
deadline (``--deadline-s`` from truth's start) would not leave the later parts theirs.  Files
land directly in DIR (7 at most: instep.csv, instep_provenance.json, wholestep.csv,
wholestep_provenance.json, sustained_clocks.csv, sustained_steps.csv, sustained_provenance.json),
so a log redirected into DIR makes 8.  The last thing printed is a short summary.

CPU smoke test (numbers meaningless): CALIBRATE_DEVICE=cpu TRITON_INTERPRET=1 python -m
calibrate.truth --tiny --quick --out DIR.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

PARTS = ("instep", "wholestep", "sustained")
BUDGET_S = {"instep": 140.0, "wholestep": 190.0}
QUICK_BUDGET_S = {"instep": 60.0, "wholestep": 60.0}
STARTUP_S = 20.0     # a part's imports, CUDA context, weights and what it does after its budget
GRACE_S = 60.0       # a part is killed this long after its budget


def log(*a):
    print(*a, flush=True)


def plan(parts, left_s: float, quick: bool, seconds: float) -> dict[str, float]:
    """Budget (sustained: replay seconds) of each part so that all fit in ``left_s``: a part gets
    its default unless the later parts' defaults plus start-up would then not fit."""
    base = {**(QUICK_BUDGET_S if quick else BUDGET_S), "sustained": min(seconds, 10.0) if quick else seconds}
    out = {}
    for i, part in enumerate(parts):
        later = sum(base[p] + STARTUP_S for p in parts[i + 1:])
        out[part] = max(0.0, min(base[part], left_s - later - STARTUP_S))
        left_s -= out[part] + STARTUP_S
    return out


def run_part(part: str, args, budget: float) -> dict:
    cmd = [sys.executable, "-m", f"calibrate.{part}", "--out", args.out]
    cmd += ["--seconds", f"{budget:.0f}"] if part == "sustained" else ["--budget-s", f"{budget:.0f}"]
    cmd += (["--quick"] if args.quick else []) + (["--tiny"] if args.tiny else [])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log(f"\n[truth] === {part}: budget {budget:.0f} s  ({' '.join(cmd[1:])})")
    t0 = time.time()
    try:
        rc = subprocess.run(cmd, env=env, timeout=budget + STARTUP_S + GRACE_S).returncode
    except subprocess.TimeoutExpired:
        rc = "killed after timeout"
    except Exception as e:  # noqa: BLE001
        rc = f"{type(e).__name__}: {e}"
    wall = time.time() - t0
    log(f"[truth] === {part}: exit {rc} after {wall:.0f} s")
    return {"exit": rc, "wall_s": round(wall, 1), "budget_s": budget}


def summary(out: str, status: dict) -> str:
    from .instep import format_table, ratio_table
    from .wholestep import summary_table
    lines = ["", "=" * 30 + " calibrate.truth summary " + "=" * 30]
    lines += [f"{p}: exit {s['exit']}, {s['wall_s']} s (budget {s['budget_s']:.0f})" for p, s in status.items()]

    def rows(name):
        path = os.path.join(out, name)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return list(csv.DictReader(f))
    r = rows("instep.csv")
    lines += ["", "--- instep (which standalone method matches in-step time)",
              format_table(ratio_table(r)) if r else "no instep.csv"]
    try:
        with open(os.path.join(out, "instep_provenance.json")) as f:
            pv = json.load(f)
        late = sum(s.get("late_kept", 0) for s in pv.get("steps", {}).values())
        attn = {m: (v.get("prefill"), v.get("decode")) for m, v in pv.get("vendor_attention", {}).items()}
        lines.append(f"steps {len(pv.get('steps', {}))}, skipped {len(pv.get('skipped', []))}, late steps (the "
                     f"GPU may have waited for the host) {late}, vendor attention {json.dumps(attn)}, "
                     f"bench flush option {pv.get('bench_flush_option')}")
    except (OSError, ValueError):
        pass
    r = rows("wholestep.csv")
    lines += ["", "--- wholestep", summary_table(r) if r else "no wholestep.csv"]
    if r:
        lines.append(f"held-out shapes {len({(x['prefill'], x['decode']) for x in r if x['heldout'] == '1'})} of "
                     f"{len({(x['prefill'], x['decode']) for x in r})}")
    try:
        with open(os.path.join(out, "sustained_provenance.json")) as f:
            s = json.load(f)["summary"]
        lines += ["", "--- sustained " + json.dumps({k: (round(v, 5) if isinstance(v, float) else v)
                                                      for k, v in s.items()})]
    except (OSError, ValueError, KeyError):
        lines += ["", "--- sustained: no summary"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tiny", action="store_true", help="tiny models (CPU smoke test)")
    p.add_argument("--seconds", type=float, default=60.0, help="sustained replay seconds")
    p.add_argument("--deadline-s", type=float, default=560.0, help="wall seconds for all parts")
    p.add_argument("--parts", default=",".join(PARTS))
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    parts = [x for x in args.parts.split(",") if x]
    for x in parts:
        if x not in PARTS:
            p.error(f"unknown part {x}; expected some of {PARTS}")
    status = {}
    for i, part in enumerate(parts):
        budget = plan(parts[i:], args.deadline_s - (time.time() - t0), args.quick, args.seconds)[part]
        if budget < 5.0:
            log(f"[truth] === {part}: skipped, no time left before the deadline")
            status[part] = {"exit": "skipped (deadline)", "wall_s": 0.0, "budget_s": 0.0}
            continue
        status[part] = run_part(part, args, budget)
    try:
        log(summary(args.out, status))
    except Exception as e:  # noqa: BLE001
        log(f"[truth] summary failed: {type(e).__name__}: {e}")
    log(f"[truth] wall {time.time() - t0:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
