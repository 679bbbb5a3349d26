"""In-step truth against a hardware profile: does the calibrated cost of an op match what the
op costs inside a real engine step (calibrate/data/<gpu>/truth/instep.csv, ``calibrate.instep``)?

    python -m calibrate.compare_instep DATA_DIR --profile P [--profile-old Q] [--by-step METHOD]

Models: every ``instep`` row priced exactly as ``RooflineCost`` prices that op in a step of the
row's model (``sim/models/<model>.yaml``) on the row's backend, through public functions only
(so a change in the pricing flows in here):
  gemm          ``op_time(Gemm(m, n, k))`` (RooflineCost's hoisted family functions repeat that
                arithmetic, tested equal in tests/test_cost.py);
  elementwise   ``op_time(Elementwise)``: embed -> copy [tokens, hidden]; rmsnorm and final_norm
                -> rmsnorm; rotary, add, silu_mul as named; logits (the bf16 -> fp32 logits
                copy) -> copy [sampled, 2 x vocab], the sampling op RooflineCost charges;
  attn_decode   ``RooflineCost.decode_step_fn(batch)`` at the step's summed context, one layer
                (the simulator sees a batch as its size and summed context, not each context);
  attn_prefill  ``RooflineCost.step_time`` of the step's prefill chunks without sampling: its
                ``attn_s`` is all chunks as one varlen launch per layer; one layer.
Rows of kind ``other`` (KV write, the Triton QKV bias add, the sampled-row gather, the vendor
mixed step's concatenation) are ops the simulator does not price: they are counted
(``other_table``) but not scored.  Scores per (kind, phase, backend): median and p90 absolute
percent error against the in-step time and the median signed ratio predicted / in-step; the same
statistics for each standalone method (``bench_*``, ``calib_zero``) against in-step time (per phase,
or per step with ``--by-step``).  Also: each step's error split by op kind (``budget_table``), and the
in-step op sum against the step's own eager time from instep_provenance.json (``event_gap_table``:
what the events between timed ops add per launch).  All printed as markdown tables.

Ignores: rows whose model has no YAML in sim/models (none today), dtypes other than bf16, the
contexts of a decode batch beyond their sum (as the simulator does).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from sim.cost.base import BatchShape
from sim.cost.ops import Elementwise, Gemm, op_time
from sim.cost.roofline import RooflineCost
from sim.cost.step_shape import parse_decode, parse_prefill, parse_shape, parse_step, phase
from sim.hardware import HardwareProfile, load_hardware
from sim.model_spec import load_model

COLUMNS = ["model", "backend", "step", "op", "kind", "shape", "method", "time_s"]
SCORED = ("gemm", "attn_decode", "attn_prefill", "elementwise")
# the acceptance bar for the decode GEMM and decode attention families (in-step)
FAMILY_TARGETS = {"median_abs_pct_err": 5.0, "p90_abs_pct_err": 12.0}
FAMILIES = (("gemm", "decode"), ("attn_decode", "decode"))
# instep.csv elementwise op -> (the simulator's Elementwise op, width multiplier)
_EW = {"embed": ("copy", 1), "rmsnorm": ("rmsnorm", 1), "final_norm": ("rmsnorm", 1), "rotary": ("rotary", 1),
       "add": ("add", 1), "silu_mul": ("silu_mul", 1), "logits": ("copy", 2)}


class CompareError(ValueError):
    """A problem with a truth CSV (one-line message)."""


def read_rows(path: str | Path, name: str, columns: list[str]) -> list[dict]:
    """Rows of DATA_DIR/<name> (or of the file itself), checked for ``columns``."""
    p = Path(path)
    if p.is_dir():
        p = p / name
    if not p.exists():
        raise CompareError(f"{p}: no such file")
    with open(p, newline="") as f:
        rd = csv.DictReader(f)
        missing = [c for c in columns if c not in (rd.fieldnames or [])]
        if missing:
            raise CompareError(f"{p}: missing columns {missing}; expected {columns}")
        rows = list(rd)
    if not rows:
        raise CompareError(f"{p}: no rows")
    for r in rows:
        try:
            r["time_s"] = float(r["time_s"])
        except ValueError:
            raise CompareError(f"{p}: time_s {r['time_s']!r} is not a number") from None
        if not r["time_s"] > 0:
            raise CompareError(f"{p}: time_s must be positive, got {r['time_s']}")
    return rows


def shape_fields(shape: str) -> dict[str, str]:
    """``m=1 n=6144 k=4096`` -> {'m': '1', 'n': '6144', 'k': '4096'} (values may be empty)."""
    out = {}
    for part in shape.split():
        k, sep, v = part.partition("=")
        if not sep:
            raise CompareError(f"op shape {shape!r}: expected KEY=VALUE words")
        out[k] = v
    return out


class StepOpPricer:
    """Per-launch predictions of a profile for the ops of in-step rows (module docstring);
    one ``RooflineCost`` per (model, backend), without host overhead."""

    def __init__(self, hw: HardwareProfile):
        self.hw = hw
        self._costs: dict[tuple[str, str], RooflineCost] = {}

    def cost(self, model: str, backend: str, num_layers: int | None = None) -> RooflineCost:
        key = (model, backend, num_layers)
        c = self._costs.get(key)
        if c is None:
            spec = load_model(model)
            if num_layers is not None and num_layers != spec.num_layers:
                spec = dataclasses.replace(spec, num_layers=int(num_layers))
            c = self._costs[key] = RooflineCost(spec, self.hw, host_overhead_s=0.0, backend=backend)
        return c

    def predict(self, model: str, backend: str, op: str, kind: str, shape: str) -> float | None:
        """Seconds of one launch of the row's op as the simulator prices it; None for kind other."""
        if kind not in SCORED:
            return None
        cost = self.cost(model, backend)
        f = shape_fields(shape)
        if kind == "gemm":
            return op_time(self.hw, Gemm(int(f["m"]), int(f["n"]), int(f["k"]), cost.dtype), backend)
        if kind == "elementwise":
            if op not in _EW:
                raise CompareError(f"elementwise op {op!r}: expected one of {sorted(_EW)}")
            name, mult = _EW[op]
            return op_time(self.hw, Elementwise(name, int(f["tokens"]), mult * int(f["hidden"]), cost.dtype), backend)
        layers = cost.model.num_layers
        if kind == "attn_decode":
            ctxs = parse_decode(f["decode"])
            fn, _ = cost.decode_step_fn(len(ctxs))
            return fn(sum(ctxs)) / layers
        chunks = parse_prefill(f["prefill"])
        return cost.step_time(BatchShape(chunks, 0, 0, 0)).attn_s / layers


def step_phase(step: str) -> str:
    return phase(*parse_shape(*parse_step(step)))


def _key(r: dict) -> tuple:
    return r["model"], r["backend"], r["step"], r["op"], r["shape"]


def stats(pred_over_true: list[float]) -> dict:
    """n, median and p90 absolute % error, median signed ratio, of ratios predicted / true."""
    a = np.asarray(pred_over_true, dtype=float)
    err = np.abs(a - 1.0) * 100.0
    return {"n": int(a.size), "median_abs_pct_err": float(np.median(err)),
            "p90_abs_pct_err": float(np.percentile(err, 90)), "median_ratio": float(np.median(a))}


def _group(ratios: dict) -> list[dict]:
    return [{"kind": k, "phase": ph, "backend": b, "source": s, **stats(v)}
            for (k, ph, b, s), v in sorted(ratios.items())]


def error_table(rows: list[dict], pricers: dict[str, StepOpPricer]) -> list[dict]:
    """Per (kind, phase, backend, profile label): predicted / in-step statistics over the scored
    ``instep`` rows."""
    ratios: dict = {}
    for r in rows:
        if r["method"] != "instep" or r["kind"] not in SCORED:
            continue
        ph = step_phase(r["step"])
        for label, pr in pricers.items():
            t = pr.predict(r["model"], r["backend"], r["op"], r["kind"], r["shape"])
            ratios.setdefault((r["kind"], ph, r["backend"], label), []).append(t / r["time_s"])
    return _group(ratios)


def method_table(rows: list[dict], by_step: bool = False) -> list[dict]:
    """Per (kind, phase, backend, method): standalone time / in-step time statistics (the
    method comparison; kind ``other`` included); ``by_step``: per step instead of phase."""
    inst = {_key(r): r["time_s"] for r in rows if r["method"] == "instep"}
    ratios: dict = {}
    for r in rows:
        t_in = inst.get(_key(r))
        if r["method"] == "instep" or t_in is None:
            continue
        where = r["step"] if by_step else step_phase(r["step"])
        ratios.setdefault((r["kind"], where, r["backend"], r["method"]), []).append(
            r["time_s"] / t_in)
    return _group(ratios)


def other_table(rows: list[dict]) -> list[dict]:
    """Per (model, backend, phase): seconds per step of the unpriced ops (kind ``other``, every
    layer's launch counted) and their share of the step's summed in-step op times."""
    per_step: dict = {}
    for r in rows:
        if r["method"] != "instep":
            continue
        n = _launches(r)
        acc = per_step.setdefault((r["model"], r["backend"], r["step"]), {"other": 0.0, "all": 0.0, "ops": set()})
        acc["all"] += n * r["time_s"]
        if r["kind"] == "other":
            acc["other"] += n * r["time_s"]
            acc["ops"].add(r["op"])
    out: dict = {}
    for (m, b, step), acc in per_step.items():
        out.setdefault((m, b, step_phase(step)), []).append(acc)
    return [{"model": m, "backend": b, "phase": ph, "steps": len(v),
             "ops": ",".join(sorted(set().union(*(a["ops"] for a in v)))),
             "median_other_s": float(np.median([a["other"] for a in v])),
             "median_other_frac": float(np.median([a["other"] / a["all"] for a in v]))}
            for (m, b, ph), v in sorted(out.items())]


# launches of each op of calibrate/stepref.py in one step: per step, or per layer (two RMSNorms and
# two residual adds per layer, the other layer ops once)
_PER_STEP = {"embed", "final_norm", "rows", "lm_head", "logits"}
_PER_LAYER = {"rmsnorm": 2, "add": 2}


def _launches(r: dict) -> int:
    """Launches of the row's op in one step of the row's model."""
    if r["op"] in _PER_STEP:
        return 1
    return _PER_LAYER.get(r["op"], 1) * load_model(r["model"]).num_layers


def budget_table(rows: list[dict], pricer: StepOpPricer) -> list[dict]:
    """Where a step's error comes from: each in-step step as the sum of its ops' in-step times
    over all launches, against the same ops priced (kind ``other`` priced at 0).  Per (model,
    backend, phase), medians over the steps of: predicted / in-step step sum, and each kind's
    contribution (predicted - in-step) / in-step step sum in percent."""
    steps: dict = {}
    for r in rows:
        if r["method"] != "instep":
            continue
        n = _launches(r)
        p = pricer.predict(r["model"], r["backend"], r["op"], r["kind"], r["shape"]) or 0.0
        acc = steps.setdefault((r["model"], r["backend"], r["step"]), {})
        m, q = acc.get(r["kind"], (0.0, 0.0))
        acc[r["kind"]] = (m + n * r["time_s"], q + n * p)
    out: dict = {}
    for (m, b, step), acc in steps.items():
        meas = sum(v[0] for v in acc.values())
        rec = {"ratio": sum(v[1] for v in acc.values()) / meas}
        for k in SCORED + ("other",):
            mk, pk = acc.get(k, (0.0, 0.0))
            rec[k] = (pk - mk) / meas * 100.0
        out.setdefault((m, b, step_phase(step)), []).append(rec)
    return [{"model": m, "backend": b, "phase": ph, "steps": len(v),
             "median_ratio": float(np.median([x["ratio"] for x in v])),
             **{f"{k}_pct": float(np.median([x[k] for x in v])) for k in SCORED + ("other",)}}
            for (m, b, ph), v in sorted(out.items())]


def format_budget(table: list[dict]) -> str:
    kinds = SCORED + ("other",)
    lines = ["| model | backend | phase | steps | predicted / in-step step sum | " +
             " | ".join(f"{k} %" for k in kinds) + " |", "|---|---|---|---:|---:|" + "---:|" * len(kinds)]
    for r in table:
        lines.append(f"| {r['model']} | {r['backend']} | {r['phase']} | {r['steps']} | {r['median_ratio']:.3f} | "
                     + " | ".join(f"{r[k + '_pct']:+.1f}" for k in kinds) + " |")
    return "\n".join(lines)


def event_gap_table(rows: list[dict], steps_prov: dict) -> list[dict]:
    """Per (model, backend, phase): medians over steps of the in-step op sum (every launch at its
    op's in-step time) over the step's own eager time (``instep_provenance.json`` steps[...]
    ``eager_kernel_sum_s``, first to last event with events at layer ends), and of their
    difference per launch: what the event records between the ops of the timed layers add."""
    sums: dict = {}
    for r in rows:
        if r["method"] != "instep":
            continue
        n = _launches(r)
        acc = sums.setdefault((r["model"], r["backend"], r["step"]), [0.0, 0])
        acc[0] += n * r["time_s"]
        acc[1] += n
    out: dict = {}
    for (m, b, step), (s, n) in sums.items():
        e = (steps_prov.get(f"{m}/{b}/{step}") or {}).get("eager_kernel_sum_s")
        if e:
            out.setdefault((m, b, step_phase(step)), []).append((s / e, (s - e) / n))
    return [{"model": m, "backend": b, "phase": ph, "steps": len(v),
             "median_sum_over_step": float(np.median([x[0] for x in v])),
             "median_gap_per_launch_s": float(np.median([x[1] for x in v]))} for (m, b, ph), v in sorted(out.items())]


def format_event_gap(table: list[dict]) -> str:
    lines = ["| model | backend | phase | steps | op sum / eager step | per launch, us |", "|---|---|---|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['model']} | {r['backend']} | {r['phase']} | {r['steps']} | "
                     f"{r['median_sum_over_step']:.3f} | {r['median_gap_per_launch_s'] * 1e6:.2f} |")
    return "\n".join(lines)


def family_verdicts(table: list[dict], label: str) -> list[dict]:
    """Whether each decode GEMM / decode attention family (per backend) meets FAMILY_TARGETS."""
    out = []
    for row in table:
        if row["source"] == label and (row["kind"], row["phase"]) in FAMILIES:
            ok = (row["median_abs_pct_err"] <= FAMILY_TARGETS["median_abs_pct_err"]
                  and row["p90_abs_pct_err"] <= FAMILY_TARGETS["p90_abs_pct_err"])
            out.append({**row, "meets": ok})
    return out


def format_table(table: list[dict], source_title: str = "profile") -> str:
    """A markdown table of ``error_table`` / ``method_table`` rows."""
    lines = [f"| kind | phase | backend | {source_title} | n | median abs % | p90 abs % | median ratio |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['kind']} | {r['phase']} | {r['backend']} | {r['source']} | {r['n']} | "
                     f"{r['median_abs_pct_err']:.1f} | {r['p90_abs_pct_err']:.1f} | {r['median_ratio']:.3f} |")
    return "\n".join(lines)


def format_other(table: list[dict]) -> str:
    lines = ["| model | backend | phase | steps | unpriced ops | median ms per step | median share of step |",
             "|---|---|---|---:|---|---:|---:|"]
    for r in table:
        lines.append(f"| {r['model']} | {r['backend']} | {r['phase']} | {r['steps']} | {r['ops']} | "
                     f"{r['median_other_s'] * 1e3:.3f} | {r['median_other_frac'] * 100:.1f} % |")
    return "\n".join(lines)


def format_verdicts(verdicts: list[dict]) -> str:
    t = FAMILY_TARGETS
    return "\n".join(
        f"{v['source']}: {v['kind']} {v['phase']} {v['backend']}: median {v['median_abs_pct_err']:.1f} %, "
        f"p90 {v['p90_abs_pct_err']:.1f} % -> {'meets' if v['meets'] else 'MISSES'} "
        f"(median <= {t['median_abs_pct_err']:.0f} %, p90 <= {t['p90_abs_pct_err']:.0f} %)" for v in verdicts)


def report(data_dir: str | Path, profiles: dict[str, str], method: str | None = None) -> str:
    """The tables and the verdicts as markdown, for profiles {label: name or path}; with
    ``method`` (e.g. bench_read), also that method / in-step per step."""
    rows = read_rows(data_dir, "instep.csv", COLUMNS)
    pricers = {label: StepOpPricer(load_hardware(p)) for label, p in profiles.items()}
    err = error_table(rows, pricers)
    parts = ["Predicted / in-step time per op launch (scored kinds):", "", format_table(err), "",
             "Standalone method / in-step time (the method comparison):", "",
             format_table(method_table(rows), "method"), "",
             "Ops the simulator does not price (kind other), all launches of a step:", "",
             format_other(other_table(rows)), "",
             f"Where a step's error comes from ({next(iter(profiles))} profile): median over steps of each kind's "
             "(predicted - in-step) / in-step step sum:", "", format_budget(budget_table(rows, next(iter(pricers.values())))),
             ""]
    prov = Path(data_dir) / "instep_provenance.json" if Path(data_dir).is_dir() else None
    if prov is not None and prov.exists():
        gaps = event_gap_table(rows, json.loads(prov.read_text()).get("steps", {}))
        if gaps:
            parts += ["In-step op sum against the step's own eager time (instep_provenance.json):", "",
                      format_event_gap(gaps), ""]
    if method:
        by = [r for r in method_table(rows, by_step=True) if r["source"] == method]
        parts += [f"{method} / in-step time per step:", "", format_table(by, "method").replace(
            "| kind | phase |", "| kind | step |"), ""]
    parts += ["Decode families against the in-step targets:", ""]
    for label in profiles:
        parts.append(format_verdicts(family_verdicts(err, label)))
    return "\n".join(parts) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", help="a truth directory holding instep.csv (or the CSV itself)")
    ap.add_argument("--profile", required=True, help="hardware profile name or YAML path (label 'new')")
    ap.add_argument("--profile-old", default=None, help="a second profile to compare (label 'old')")
    ap.add_argument("--by-step", default=None, metavar="METHOD", help="also METHOD / in-step per step (e.g. bench_read)")
    a = ap.parse_args(argv)
    profiles = {"new": a.profile}
    if a.profile_old:
        profiles["old"] = a.profile_old
    try:
        print(report(a.data_dir, profiles, a.by_step), end="")
    except (CompareError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
