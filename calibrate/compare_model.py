"""Model-level check: measured HF Llama step times (calibrate/model_check.py) vs the simulator.

Models: each row of model_check.csv (phase, batch, seq_or_context, num_layers, time_s, mode)
as the BatchShape the simulator would price (prefill: ``batch`` chunks of ``seq`` new tokens,
one sampled token each; decode: ``batch`` requests attending to context + 1 tokens, one
sampled each), priced by RooflineCost with the model's dims (llama-3.1-8b by default) and the
CSV's layer count, without host overhead.  Modes: ``kernel_sum`` (sum of GPU kernel times:
the number the GPU model should match), ``eager`` (includes the host time the GPU waited
for), ``graph`` (CUDA-graph replay of HF's StaticCache decode step: informational only, since
that path attends over the whole static cache with a mask, not the same work at large
batch).  The per-step host overhead is the robust (median) eager - kernel_sum difference over
decode shapes; that is the number to put in an engine's ``host_overhead_s`` when simulating
an eager engine with HF's per-step Python cost.

Ignores: the HF implementation's extra copies (cache updates, dtype casts) except as part of
the measured gap.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from sim.cost.base import BatchShape
from sim.cost.roofline import RooflineCost
from sim.hardware import HardwareProfile
from sim.model_spec import load_model

COLS = ["phase", "batch", "seq_or_context", "num_layers", "time_s", "mode"]


class CheckError(ValueError):
    """A problem with model_check.csv (one-line message)."""


def read_model_check(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    if p.is_dir():
        p = p / "model_check.csv"
    if not p.exists():
        raise CheckError(f"{p}: no such file")
    df = pd.read_csv(p)
    missing = [c for c in COLS if c not in df.columns]
    if missing:
        raise CheckError(f"{p}: missing columns {missing}; expected {COLS}")
    if df.empty:
        raise CheckError(f"{p}: no rows")
    bad = set(df["phase"]) - {"prefill", "decode"}
    if bad:
        raise CheckError(f"{p}: unknown phase {sorted(bad)[0]!r}; expected prefill or decode")
    df["time_s"] = pd.to_numeric(df["time_s"], errors="coerce")
    if df["time_s"].isna().any() or (df["time_s"] <= 0).any():
        raise CheckError(f"{p}: time_s must be positive numbers")
    return df


def batch_shape(phase: str, batch: int, seq_or_context: int) -> BatchShape:
    """The simulator's BatchShape for one model_check row."""
    if phase == "prefill":
        return BatchShape(prefill_chunks=[(int(seq_or_context), 0)] * int(batch), num_sampled=int(batch))
    return BatchShape(num_decode=int(batch), decode_context_sum=int(batch) * (int(seq_or_context) + 1),
                      num_sampled=int(batch))


def check_model(csv_path: str | Path, hw: HardwareProfile, model: str = "llama-3.1-8b",
                backend: str | None = None) -> dict:
    """Measured vs predicted step times and the fitted per-step host overhead.

    Returns {"table": DataFrame (one row per shape, a column per mode, predicted_s and the
    measured/predicted ratios), "host_overhead_s", "host_overhead_points", "eager_vs_pred_plus_host"}.
    """
    df = read_model_check(csv_path)
    spec = load_model(model)
    models: dict[int, RooflineCost] = {}
    keys = ["phase", "batch", "seq_or_context", "num_layers"]
    table = df.pivot_table(index=keys, columns="mode", values="time_s", aggfunc="median").reset_index()
    table.columns.name = None
    preds, parts = [], []
    for r in table.itertuples(index=False):
        L = int(r.num_layers)
        if L not in models:
            models[L] = RooflineCost(dataclasses.replace(spec, num_layers=L), hw, 0.0, backend)
        st = models[L].step_time(batch_shape(r.phase, r.batch, r.seq_or_context))
        preds.append(st.total_s)
        parts.append((st.gemm_s, st.attn_s, st.other_s))
    table["predicted_s"] = preds
    table["pred_gemm_s"], table["pred_attn_s"], table["pred_other_s"] = zip(*parts)
    for mode in ("graph", "eager", "kernel_sum"):
        if mode in table:
            table[f"{mode}/pred"] = table[mode] / table["predicted_s"]
    host = None
    n_pairs = 0
    if "eager" in table and "kernel_sum" in table:
        # the GPU's busy time is the kernel sum; the rest of an eager step is host time the GPU
        # waited for (graph replays are not used: HF's StaticCache decode attends over the whole
        # static cache with a mask, so its graph times are not the same work at large batch)
        table["eager-kernel_s"] = table["eager"] - table["kernel_sum"]
        d = table.loc[table["phase"] == "decode", "eager-kernel_s"].dropna()
        n_pairs = int(len(d))
        if n_pairs:
            host = float(np.median(d))
    out = {"table": table, "host_overhead_s": host, "host_overhead_points": n_pairs,
           "model": model, "hardware": hw.name, "efficiency_source": hw.efficiency_source}
    if host is not None:
        e = table["eager"] / (table["predicted_s"] + host)
        out["eager_vs_pred_plus_host"] = {"median_ratio": float(np.nanmedian(e)),
                                          "max_abs_pct_err": float(np.nanmax(np.abs(e - 1)) * 100)}
    return out


def format_check(res: dict) -> str:
    """A plain-text table of check_model's result."""
    t = res["table"]
    modes = [m for m in ("graph", "eager", "kernel_sum") if m in t]
    hdr = f"{'phase':8s}{'batch':>6s}{'seq/ctx':>8s}{'layers':>7s}{'pred ms':>10s}" + "".join(
        f"{m + ' ms':>15s}{m + '/pred':>17s}" for m in modes)
    lines = [f"{res['model']} on {res['hardware']} (efficiency: {res['efficiency_source']})", hdr]
    for r in t.to_dict("records"):
        s = f"{r['phase']:8s}{r['batch']:>6d}{r['seq_or_context']:>8d}{r['num_layers']:>7d}{r['predicted_s'] * 1e3:>10.3f}"
        for m in modes:
            v = r[m]
            s += f"{v * 1e3:>15.3f}{r[m + '/pred']:>17.2f}" if v == v else f"{'-':>15s}{'-':>17s}"
        lines.append(s)
    if res["host_overhead_s"] is not None:
        lines.append(f"host overhead per step (median eager - kernel_sum over {res['host_overhead_points']} decode "
                     f"shapes): {res['host_overhead_s'] * 1e3:.3f} ms")
        ev = res["eager_vs_pred_plus_host"]
        lines.append(f"eager vs predicted + host overhead: median ratio {ev['median_ratio']:.3f}, "
                     f"worst {ev['max_abs_pct_err']:.1f}% off")
    else:
        lines.append("host overhead: needs decode rows measured in both eager and kernel_sum mode")
    return "\n".join(lines)
