"""Whole-step truth against a hardware profile: the simulator's price of an engine step against the
same step measured on the GPU (calibrate/data/<gpu>/truth/wholestep.csv, ``calibrate.wholestep``).

    python -m calibrate.compare_wholestep DATA_DIR --profile P [--profile-old Q] [--graph-launch-s S]
                                          [--detail] [--rows] [--sustained]

Models: each row's step (``PREFILL;DECODE`` in the shape syntax, sim/cost/step_shape.py) as the
``BatchShape`` the engine would hand the cost model (one sampled token per prefill chunk and per
decode sequence, as the reference step samples), priced by ``RooflineCost`` of the row's model
with the row's layer count and backend, without host overhead:
  graph      (median CUDA-graph replay) against the step with CUDA-graph launch costs
             (``graph_step_time``): every kernel of the simulator's inventory launched at the
             profile's measured per-kernel graph cost (``calibration.launch_overhead_s.graph``)
             instead of its eager ``launch_s``, the batch NOT padded (the truth graph replays the
             exact batch; ``CudaGraphCost`` pads an engine's batch to a captured size, and equals
             this for a captured size: tested), and prefill and mixed steps in the graph too;
  eager_sum  (first to last event of the eager step, host kept ahead) against the eager price
             (``RooflineCost.step_time``).
Per (mode, phase) and overall per mode (``--detail``: also per model and backend): median and p90
absolute percent error and the median signed ratio predicted / measured, over all rows and over the
held-out rows (heldout == 1) apart.  ``--sustained`` adds the sustained-clock run's summary (SM clock,
power, NVML throttle reasons, step drift).

What such a step runs that the simulator does not price is measured op by op in instep.csv
(kind ``other``; ``calibrate.compare_instep.other_table``): the KV-cache write (every layer), the
Triton backend's separate QKV bias add (qwen2.5-7b), the gather of the sampled rows, and the
vendor mixed step's concatenation of the two attention outputs.

Ignores: host time (a replay has none; the eager rows kept the host ahead of the GPU), padding,
the graph launch cost's scaling by shape tables (as ``CudaGraphCost`` does, the eager ``launch_s``
is what a graph saves).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from sim.cost.base import StepTime
from sim.cost.roofline import RooflineCost
from sim.cost.step_shape import batch_shape, parse_shape
from sim.hardware import HardwareProfile, load_hardware
from sim.model_spec import load_model

from .compare_instep import CompareError, read_rows, stats

COLUMNS = ["model", "backend", "phase", "prefill", "decode", "num_layers", "mode", "time_s", "heldout"]
MODES = ("graph", "eager_sum")
# the whole-step target, on held-out shapes
TARGETS = {"median_abs_pct_err": 5.0, "p90_abs_pct_err": 12.0}
DEFAULT_GRAPH_LAUNCH_S = 1.0e-6  # sim.config.EngineConfig.cuda_graph_launch_s, when a profile has no measurement


def profile_graph_launch_s(hw: HardwareProfile) -> float:
    """The profile's measured per-kernel launch cost inside a CUDA graph, else the engine default."""
    v = ((hw.calibration or {}).get("launch_overhead_s") or {}).get("graph")
    return float(v) if v is not None else DEFAULT_GRAPH_LAUNCH_S


def kernel_counts(cost: RooflineCost, shape) -> dict[str, int]:
    """Launches per op kind in the simulator's inventory of one step (sim/cost/roofline.py): per
    layer 4 GEMMs, 6 elementwise ops (2 norms, rotary, SiLU-and-mul, 2 adds) and one attention
    launch per attention kind present; per step the embedding gather and the final norm, and with
    sampled rows the LM head and the sampling op (the inventory ``CudaGraphCost`` counts)."""
    L = cost.model.num_layers
    if shape.num_tokens == 0:
        return {"gemm": 0, "elementwise": 0, "attn_prefill": 0, "attn_decode": 0}
    sampled = 1 if shape.num_sampled and cost.head else 0
    return {"gemm": 4 * L + sampled,
            "elementwise": 6 * L + (1 if cost.embed else 0) + (1 if cost.head else 0) + sampled,
            "attn_prefill": L if shape.prefill_chunks else 0,
            "attn_decode": L if shape.num_decode else 0}


def graph_step_time(cost: RooflineCost, shape, graph_launch_s: float) -> StepTime:
    """``cost.step_time(shape)`` with each kernel's eager ``launch_s`` replaced by
    ``graph_launch_s`` (the saving never below zero), for any step, unpadded."""
    st = cost.step_time(shape)
    n = kernel_counts(cost, shape)
    save = {k: max(0.0, cost.hw.op_efficiency(k, cost.backend).launch_s - graph_launch_s) for k in n}
    gemm = st.gemm_s - n["gemm"] * save["gemm"]
    attn = st.attn_s - n["attn_prefill"] * save["attn_prefill"] - n["attn_decode"] * save["attn_decode"]
    other = st.other_s - n["elementwise"] * save["elementwise"]
    return StepTime(total_s=gemm + attn + other + st.comm_s + st.host_s, gemm_s=gemm, attn_s=attn,
                    other_s=other, comm_s=st.comm_s, host_s=st.host_s)


class StepPricer:
    """The simulator's price of a wholestep.csv row on one profile."""

    def __init__(self, hw: HardwareProfile, graph_launch_s: float | None = None):
        self.hw = hw
        self.graph_launch_s = profile_graph_launch_s(hw) if graph_launch_s is None else float(graph_launch_s)
        self._costs: dict = {}

    def cost(self, model: str, backend: str, num_layers: int) -> RooflineCost:
        key = (model, backend, num_layers)
        c = self._costs.get(key)
        if c is None:
            spec = load_model(model)
            if num_layers != spec.num_layers:
                spec = dataclasses.replace(spec, num_layers=int(num_layers))
            c = self._costs[key] = RooflineCost(spec, self.hw, host_overhead_s=0.0, backend=backend)
        return c

    def predict(self, row: dict) -> StepTime:
        cost = self.cost(row["model"], row["backend"], int(row["num_layers"]))
        shape = batch_shape(*parse_shape(row["prefill"] or "", row["decode"] or ""))
        if row["mode"] == "graph":
            return graph_step_time(cost, shape, self.graph_launch_s)
        if row["mode"] == "eager_sum":
            return cost.step_time(shape)
        raise CompareError(f"wholestep mode {row['mode']!r}: expected one of {list(MODES)}")


def predictions(rows: list[dict], pricer: StepPricer, label: str = "new") -> list[dict]:
    """Each row with ``profile`` (= ``label``), ``predicted_s`` and ``ratio`` (predicted / measured)."""
    out = []
    for r in rows:
        p = pricer.predict(r).total_s
        out.append({**r, "profile": label, "heldout": int(r["heldout"]), "predicted_s": p, "ratio": p / r["time_s"]})
    return out


def error_table(pred: list[dict]) -> list[dict]:
    """Per (mode, model, backend, phase), then per mode and phase over every model and backend,
    then per mode over everything ('all'), each per profile label: statistics of all rows and of
    the held-out rows."""
    groups: dict = {}
    for r in pred:
        mode, p = r["mode"], r.get("profile", "new")
        for key in ((mode, r["model"], r["backend"], r["phase"], p), (mode, "all", "all", r["phase"], p),
                    (mode, "all", "all", "all", p)):
            groups.setdefault(key, []).append(r)
    order = sorted(groups, key=lambda k: (MODES.index(k[0]) if k[0] in MODES else 9, k[1] == "all", k[3] == "all",
                                          k[1:]))
    out = []
    for mode, m, b, ph, p in order:
        g = groups[(mode, m, b, ph, p)]
        held = [r["ratio"] for r in g if r["heldout"]]
        out.append({"mode": mode, "model": m, "backend": b, "phase": ph, "profile": p,
                    "all": stats([r["ratio"] for r in g]), "heldout": stats(held) if held else None})
    return out


def meets(s: dict | None) -> bool | None:
    if s is None:
        return None
    return s["median_abs_pct_err"] <= TARGETS["median_abs_pct_err"] and s["p90_abs_pct_err"] <= TARGETS["p90_abs_pct_err"]


def format_table(table: list[dict]) -> str:
    lines = ["| mode | model | backend | phase | profile | n | median abs % | p90 abs % | median ratio | held out n | "
             "held out median abs % | held out p90 abs % | held out median ratio |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        a, h = r["all"], r["heldout"]
        hs = (f"{h['n']} | {h['median_abs_pct_err']:.1f} | {h['p90_abs_pct_err']:.1f} | {h['median_ratio']:.3f}"
              if h else "0 | - | - | -")
        name = "**all**" if r["model"] == "all" else r["model"]
        lines.append(f"| {r['mode']} | {name} | {r['backend']} | {r['phase']} | {r['profile']} | {a['n']} | "
                     f"{a['median_abs_pct_err']:.1f} | {a['p90_abs_pct_err']:.1f} | {a['median_ratio']:.3f} | {hs} |")
    return "\n".join(lines)


def format_rows(pred: list[dict]) -> str:
    """Every row: shape, measured and predicted milliseconds, ratio."""
    lines = ["| mode | model | backend | step | profile | held out | measured ms | predicted ms | ratio |",
             "|---|---|---|---|---|---|---:|---:|---:|"]
    for r in pred:
        lines.append(f"| {r['mode']} | {r['model']} | {r['backend']} | `{r['prefill']};{r['decode']}` | {r['profile']} | "
                     f"{'yes' if r['heldout'] else ''} | {r['time_s'] * 1e3:.3f} | {r['predicted_s'] * 1e3:.3f} | "
                     f"{r['ratio']:.3f} |")
    return "\n".join(lines)


def report(data_dir: str | Path, profiles: dict[str, str], graph_launch_s: float | None = None,
           detail: bool = False, per_row: bool = False) -> str:
    """The error table (per phase and overall; ``detail``: also per model and backend), the
    verdicts and (``per_row``) every row as markdown, for profiles {label: name or path}."""
    rows = read_rows(data_dir, "wholestep.csv", COLUMNS)
    pred, launch = [], []
    for label, prof in profiles.items():
        pricer = StepPricer(load_hardware(prof), graph_launch_s)
        pred += predictions(rows, pricer, label)
        launch.append(f"{label} = {prof}: graph rows at {pricer.graph_launch_s * 1e6:.3f} us per kernel")
    tab = error_table(pred)
    shown = tab if detail else [r for r in tab if r["model"] == "all"]
    lines = ["Predicted / measured whole-step time (" + "; ".join(launch) + "):", "", format_table(shown), ""]
    t = TARGETS
    for r in tab:
        if r["model"] == "all" and r["phase"] == "all":
            ok = meets(r["heldout"])
            lines.append(f"{r['profile']}: {r['mode']}: held out {'-' if ok is None else ('meets' if ok else 'MISSES')} "
                         f"the target (median <= {t['median_abs_pct_err']:.0f} %, p90 <= {t['p90_abs_pct_err']:.0f} %)")
    if per_row:
        lines += ["", format_rows(pred)]
    return "\n".join(lines) + "\n"


# NVML clock event (throttle) reason bits, as nvidia-smi's clocks_throttle_reasons.active prints them:
# https://docs.nvidia.com/deploy/nvml-api/group__nvmlClocksThrottleReasons.html
THROTTLE_BITS = {0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
                 0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
                 0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting"}


def throttle_names(mask: str) -> list[str]:
    """``0x0000000000000004`` -> ['sw_power_cap']."""
    try:
        v = int(str(mask), 16)
    except ValueError:
        return [str(mask)]
    return [n for b, n in THROTTLE_BITS.items() if v & b] or ["none"]


def sustained_summary(data_dir: str | Path) -> dict:
    """The sustained-clock run (``calibrate.sustained``): SM clock and power over the run
    (median, 5th and 95th percentile), the share of samples per active throttle reason, the
    power limit, and the step-time summary the run printed."""
    d = Path(data_dir)
    with open(d / "sustained_clocks.csv", newline="") as f:
        clk = list(csv.DictReader(f))
    if not clk:
        raise CompareError(f"{d / 'sustained_clocks.csv'}: no rows")
    sm = np.array([float(r["sm_mhz"]) for r in clk])
    pw = np.array([float(r["power_w"]) for r in clk])
    reasons: dict = {}
    for r in clk:
        for n in throttle_names(r["throttle"]):
            reasons[n] = reasons.get(n, 0) + 1
    prov = json.loads((d / "sustained_provenance.json").read_text()) if (d / "sustained_provenance.json").exists() else {}
    return {"samples": len(clk), "sm_mhz": [float(np.percentile(sm, q)) for q in (5, 50, 95)],
            "power_w": [float(np.percentile(pw, q)) for q in (5, 50, 95)],
            "throttle_share": {k: v / len(clk) for k, v in sorted(reasons.items())},
            "nvidia_smi": prov.get("nvidia_smi"), "clocks_after": prov.get("clocks_after"),
            "step": prov.get("summary"), "what": f"{prov.get('model')} {prov.get('backend')} {prov.get('prefill')}"}


def format_sustained(s: dict) -> str:
    st = s.get("step") or {}
    lines = [f"sustained: {s['what']} replayed back to back, {st.get('replays', '-')} replays in "
             f"{st.get('seconds', float('nan')):.0f} s; {s['samples']} nvidia-smi samples",
             "SM clock MHz p5 / median / p95: " + " / ".join(f"{x:.0f}" for x in s["sm_mhz"]),
             "power W p5 / median / p95: " + " / ".join(f"{x:.0f}" for x in s["power_w"]),
             "throttle reasons (share of samples): " + ", ".join(f"{k} {v:.0%}" for k, v in s["throttle_share"].items())]
    if st:
        lines.append(f"step first 10 s {st['first_step_s'] * 1e3:.1f} ms at {st['first_sm_mhz']:.0f} MHz, last 20 s "
                     f"{st['last_step_s'] * 1e3:.1f} ms at {st['last_sm_mhz']:.0f} MHz (last / first "
                     f"{st['last_over_first']:.3f})")
    for k in ("nvidia_smi", "clocks_after"):
        if s.get(k):
            lines.append(f"{k}: " + " | ".join(s[k].splitlines()))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", help="a truth directory holding wholestep.csv (or the CSV itself)")
    ap.add_argument("--profile", required=True, help="hardware profile name or YAML path (label 'new')")
    ap.add_argument("--profile-old", default=None, help="a second profile to compare (label 'old')")
    ap.add_argument("--graph-launch-s", type=float, default=None,
                    help="per-kernel launch cost inside a graph (default: the profile's measured one)")
    ap.add_argument("--detail", action="store_true", help="also per model and backend")
    ap.add_argument("--rows", action="store_true", help="also print every row")
    ap.add_argument("--sustained", action="store_true", help="also summarise sustained_clocks.csv")
    a = ap.parse_args(argv)
    try:
        profiles = {"new": a.profile, **({"old": a.profile_old} if a.profile_old else {})}
        print(report(a.data_dir, profiles, a.graph_launch_s, a.detail, a.rows), end="")
        if a.sustained:
            print("\n" + format_sustained(sustained_summary(a.data_dir)))
    except (CompareError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
