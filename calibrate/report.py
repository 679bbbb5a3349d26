"""Calibration report: a fitted profile against the measurements it came from (markdown + PNGs).

Models: every measured point is predicted with the profile through sim.cost.ops.op_time (the
code path the simulator uses), so the report checks the shipped YAML, not the fitter's
internal copy.  Held-out errors are the ones the fit wrote into the profile (fit on part of
each grid, predicted on the rest); in-sample errors are recomputed here.

Many-sequence launches (attn_prefill_multi.csv, attn_decode_multi.csv) are reported apart
from the single-sequence grids: launches of equal lengths are fitted points like the grid's,
mixed launches are priced as the simulator prices them (never fitted), see calibrate.fit_multi.

Ignores: nccl.csv (the communication model is fitted elsewhere).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from calibrate.fit_multi import sets as _sets
from calibrate.measurements import (MANY_SEQ_TARGETS, SHAPE_COLS, TARGETS, fold_multi, make_op, read_measurements,
                                    read_provenance)
from sim.cost.ops import op_time
from sim.hardware import OP_KINDS, HardwareProfile


def predictions(data_dir: str | Path, hw: HardwareProfile) -> pd.DataFrame:
    """All measured op rows with predicted_s (op_time with the row's backend), ideal_ns, err_pct
    and set (grid, many_equal, many_mixed)."""
    frames = fold_multi(read_measurements(data_dir))
    out = []
    for kind in OP_KINDS:
        if kind not in frames:
            continue
        df = frames[kind]
        if kind == "elementwise":  # as in the fit: no launch rows, no eager (host-bound) vendor rotary
            df = df[(df["op"] != "launch") & ~((df["op"] == "rotary") & (df["backend"] == "vendor"))]
        df = df[df["backend"].isin(list(hw.efficiency))].reset_index(drop=True)
        if df.empty:
            continue
        ops = [make_op(kind, r) for r in df.to_dict("records")]
        hw_curve = _without_tables(hw)
        df = df.assign(kind=kind, curve_s=[op_time(hw_curve, o, be) for o, be in zip(ops, df["backend"])],
                       sub_op=df["op"] if kind == "elementwise" else kind,
                       predicted_s=[op_time(hw, o, be) for o, be in zip(ops, df["backend"])],
                       ideal_ns=[max(o.flops() / hw.peak_flops(o.dtype), o.bytes() / hw.memory_bandwidth_bytes_per_s) * 1e9
                                 for o in ops],
                       flops_=[o.flops() for o in ops], bytes_=[o.bytes() for o in ops], set=_sets(df),
                       shape=[_shape_text(kind, r) for r in df.to_dict("records")])
        out.append(df[["kind", "sub_op", "backend", "dtype", "shape", "set", "time_s", "predicted_s", "curve_s",
                       "ideal_ns", "flops_", "bytes_"]])
    res = pd.concat(out, ignore_index=True)
    res["err_pct"] = (res["predicted_s"] / res["time_s"] - 1) * 100
    return res


def _shape_text(kind: str, r) -> str:
    if r.get("src") == "many_mixed":
        return f"{'lengths' if kind == 'attn_prefill' else 'contexts'}={r['lengths']} " + " ".join(
            f"{c}={r[c]}" for c in ("heads", "kv_heads", "head_dim"))
    return " ".join(f"{c}={r[c]}" for c in SHAPE_COLS[kind])


def _rel(path: str) -> str:
    import os
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


def _without_tables(hw: HardwareProfile) -> HardwareProfile:
    """The profile with its shape tables removed: the fitted curves alone."""
    eff = {be: {k: dataclasses.replace(e, tables=()) for k, e in ops.items()} for be, ops in hw.efficiency.items()}
    return dataclasses.replace(hw, efficiency=eff)


def heldout_predictions(data_dir: str | Path, hw: HardwareProfile) -> pd.DataFrame:
    """Held-out rows predicted by a fit on the other rows (calibrate.fit's protocol)."""
    from calibrate.fit import fit_profile
    held: list = []
    fit_profile(data_dir, hw.path, heldout=held)
    return pd.concat(held, ignore_index=True) if held else pd.DataFrame()


def _pct(x, q):
    return float(np.percentile(np.abs(x), q)) if len(x) else float("nan")


def plot(pred: pd.DataFrame, out_dir: Path, held: pd.DataFrame | None = None) -> list[Path]:
    """predicted_vs_measured.png (held-out rows, predicted by a fit without them, when ``held``
    is given; else all rows) and efficiency_vs_size.png (measured, and the fitted curve
    without shape tables), one panel per op kind."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir.mkdir(parents=True, exist_ok=True)
    kinds = [k for k in OP_KINDS if k in set(pred["kind"])]
    colors = {"vendor": "tab:blue", "triton": "tab:orange"}
    paths = []
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 4), squeeze=False)
    src = held if held is not None and len(held) else pred
    for ax, kind in zip(axes[0], kinds):
        g = src[src["kind"] == kind]
        if g.empty:
            continue
        for be, gb in g.groupby("backend"):
            ax.scatter(gb["time_s"] * 1e6, gb["predicted_s"] * 1e6, s=6, alpha=0.6, label=be,
                       color=colors.get(be))
        lo, hi = g[["time_s", "predicted_s"]].min().min() * 1e6, g[["time_s", "predicted_s"]].max().max() * 1e6
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.plot([lo, hi], [lo * 1.15, hi * 1.15], "k:", lw=0.6)
        ax.plot([lo, hi], [lo / 1.15, hi / 1.15], "k:", lw=0.6)
        ax.set(xscale="log", yscale="log", xlabel="measured (us)",
               ylabel="predicted (us)" + (", held out" if src is held else ""), title=kind)
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "predicted_vs_measured.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        g = pred[pred["kind"] == kind]
        for be, gb in g.groupby("backend"):
            ax.scatter(gb["ideal_ns"], gb["ideal_ns"] * 1e-9 / gb["time_s"], s=6, alpha=0.6,
                       color=colors.get(be), label=f"{be} measured")
            o = gb.sort_values("ideal_ns")
            ax.plot(o["ideal_ns"], o["ideal_ns"] * 1e-9 / o["curve_s"], ".", ms=2,
                    color=colors.get(be), alpha=0.9, label=f"{be} curve")
        ax.set(xscale="log", xlabel="ideal roofline time (ns)", ylabel="fraction of roofline achieved",
               title=kind, ylim=(0, 1.05))
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "efficiency_vs_size.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _fmt_s(v: float) -> str:
    return f"{v * 1e6:.1f} us" if v < 1e-3 else f"{v * 1e3:.3f} ms"


def _many_seq_section(pred: pd.DataFrame, cal: dict) -> list[str]:
    """Markdown: the many-sequence launches' held-out errors (fit without them), the mixed
    launches as the profile prices them now, the fitted term and the decode imbalance trend."""
    many = pred[pred["set"] != "grid"]
    if many.empty:
        return []
    L = ["", "## Many-sequence launches", "",
         "Launches of 16-256 prompts and decode batches to 2048 (`attn_*_multi.csv`). Equal lengths are fitted "
         "(they extend the table rows); mixed lengths are priced as the simulator prices them (prefill: every "
         "chunk's length; decode: number of requests, summed context and longest context) and never fitted into "
         "curves or tables (their training part fits only the decode chain floor). "
         "Held-out: fit without those launches, then predict them; 'priced now': the shipped profile through "
         f"`op_time`, the simulator's code path. Targets: median <= {MANY_SEQ_TARGETS['median_abs_pct_err']:.0f} %, "
         f"p90 <= {MANY_SEQ_TARGETS['p90_abs_pct_err']:.0f} %.", "",
         "| op | backend | held-out equal (n, median %, p90 %) | held-out mixed (n, median %, p90 %) | "
         "mixed priced now (n, median %, p90 %) | meets targets (equal / mixed) |",
         "| --- | --- | --- | --- | --- | --- |"]
    for (kind, be), g in many.groupby(["kind", "backend"], sort=True):
        meta = (cal.get("errors", {}).get(be, {}) or {}).get(kind, {})
        mx = g[g["set"] == "many_mixed"]["err_pct"]

        def cell(pre):
            n = meta.get(f"{pre}_points")
            return "-" if n is None else (f"{n}, {meta[f'{pre}_median_abs_pct_err']:.2f}, "
                                          f"{meta[f'{pre}_p90_abs_pct_err']:.2f}")
        now = f"{len(mx)}, {_pct(mx, 50):.2f}, {_pct(mx, 90):.2f}" if len(mx) else "-"
        ok = " / ".join({True: "yes", False: "**no**"}.get(_meets(meta, pre), "-")
                        for pre in ("many_seq_equal_heldout", "many_seq_mixed_heldout"))
        L.append(f"| {kind} | {be} | {cell('many_seq_equal_heldout')} | {cell('many_seq_mixed_heldout')} | "
                 f"{now} | {ok} |")
    notes = []
    for be, ops in sorted((cal.get("fit_terms") or {}).items()):
        for kind, info in sorted(ops.items()):
            for key, f in sorted(info.items()):
                if key == "chain_fit":
                    notes.append(f"- {kind} / {be}: serial-chain floor `chain_s_per_token` "
                                 f"{f['fitted_chain_s_per_token']:.4g} s, `chain_bytes_per_s` "
                                 f"{f['fitted_chain_bytes_per_s']:.4g} B/s, "
                                 f"{'adopted' if f['adopted'] else 'not adopted'} ({f['launches']} mixed launches' "
                                 f"mean / median / p90 error {f['mean_without']} / {f['median_without']} / "
                                 f"{f['p90_without']} % without, {f['mean_with']} / {f['median_with']} / "
                                 f"{f['p90_with']} % with); "
                                 f"{f['note']}")
                elif key.endswith("_fit"):
                    notes.append(f"- {kind} / {be}: `{key[:-4]}` fitted {f['fitted_value']:.4g} s, "
                                 f"{'adopted' if f['adopted'] else 'not adopted'} (held-out many-sequence median / "
                                 f"p90 error {f['median_without']} / {f.get('p90_without')} % without, "
                                 f"{f['median_with']} / {f.get('p90_with')} % with); {f['note']}")
                elif key == "many_seq_mixed_imbalance_trend":
                    notes.append(f"- {kind} / {be}: mixed launches take {f['pct_per_doubling']:+.2f} % more than "
                                 f"priced per doubling of max / mean context (R^2 {f['r2']}, {f['launches']} "
                                 "launches; what remains after the price of the summed and the longest context)")
    if notes:
        L += ["", "Many-sequence terms and trends (calibrate.fit_multi):", ""] + notes
    for mk, r in sorted((cal.get("vendor_varlen_vs_sdpa") or {}).items()):
        L.append(f"- {mk}: FlashAttention varlen / SDPA on {r['launches']} equal launches: median "
                 f"{r['median_ratio']}, range {r['min_ratio']}-{r['max_ratio']} (vendor mixed launches use varlen)")
    return L


def _meets(meta: dict, pre: str):
    med, p90 = meta.get(f"{pre}_median_abs_pct_err"), meta.get(f"{pre}_p90_abs_pct_err")
    if med is None:
        return None
    return med <= MANY_SEQ_TARGETS["median_abs_pct_err"] and p90 <= MANY_SEQ_TARGETS["p90_abs_pct_err"]


def write_report(data_dir: str | Path, hw: HardwareProfile, out_md: str | Path) -> Path:
    """Write the markdown report and its plots (in ``<out stem>_plots/`` next to it)."""
    data_dir, out_md = Path(data_dir), Path(out_md)
    pred = predictions(data_dir, hw)
    held = heldout_predictions(data_dir, hw)
    prov = read_provenance(data_dir)
    cal = hw.calibration or {}
    out_md.parent.mkdir(parents=True, exist_ok=True)
    plot_dir = out_md.parent / f"{out_md.stem}_plots"
    pngs = plot(pred, plot_dir, held)
    L = [f"# Calibration report: {hw.display_name}", "",
         f"- profile: `{_rel(hw.path)}` — efficiency source: {hw.efficiency_source}",
         f"- measurements: `{data_dir}` ({len(pred)} op timings)"]
    if prov:
        L.append(f"- measured on: {prov.get('device_name')} ({prov.get('date_utc')}), torch {prov.get('torch')}, "
                 f"triton {prov.get('triton')}, CUDA {prov.get('cuda_runtime')}")
    L += ["", "Model per op kind and backend (sim.hardware): `t = max((F+F0)/(P*compute_frac), (B+B0)/(W*bandwidth_frac))"
          " * corr(log2 ideal_ns) + launch_s`; an op of a measured shape family (GEMM (n, k), attention head "
          "configuration, elementwise op and width) is that base times the family's measured ratio, interpolated "
          "in log-log space between measured sizes. In-sample errors are therefore ~0 by construction; the "
          "held-out errors (fit without those shapes, then predict them) are the ones that count, and the plots "
          "below show held-out predictions.", "", "## Peaks", "",
          "| figure | datasheet | measured |", "| --- | --- | --- |"]
    peaks = cal.get("peaks", {})
    L.append(f"| bf16 dense FLOP/s | {hw.peak_flops('bf16') / 1e12:.0f} T | "
             + (f"{peaks['measured_matmul_bf16_flops_per_s'] / 1e12:.0f} T (8192^3 matmul)"
                if "measured_matmul_bf16_flops_per_s" in peaks else "-") + " |")
    L.append(f"| HBM bandwidth | {hw.memory_bandwidth_bytes_per_s / 1e12:.2f} TB/s | "
             + (f"{peaks['measured_copy_bw_bytes_per_s'] / 1e12:.2f} TB/s (2 GiB copy)"
                if "measured_copy_bw_bytes_per_s" in peaks else "-") + " |")
    if cal.get("launch_overhead_s"):
        L += ["", "Launch overhead: " + ", ".join(f"{k} {_fmt_s(v)}" for k, v in cal["launch_overhead_s"].items())]
    L += ["", "## Fitted curves and errors", "",
          f"Targets on held-out shapes: median <= {TARGETS['median_abs_pct_err']}%, p90 <= {TARGETS['p90_abs_pct_err']}%.",
          "", "| op | backend | points | compute_frac | bandwidth_frac | F0 (GFLOP) | B0 (MB) | launch | "
          "held-out median % | held-out p90 % | all median % | all p90 % |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (kind, be), g in pred.groupby(["kind", "backend"], sort=True):
        e = hw.op_efficiency(kind, be)
        meta = (cal.get("errors", {}).get(be, {}) or {}).get(kind, {})
        gp = g[g["dtype"] == "bf16"] if kind == "gemm" else g[g["set"] != "many_mixed"]  # the fitted rows
        L.append(f"| {kind} | {be} | {len(gp)} | {e.compute_frac:.3f} | {e.bandwidth_frac:.3f} | "
                 f"{e.fixed_flops / 1e9:.2f} | {e.fixed_bytes / 1e6:.2f} | {_fmt_s(e.launch_s)} | "
                 f"{meta.get('heldout_median_abs_pct_err', '-')} | {meta.get('heldout_p90_abs_pct_err', '-')} | "
                 f"{np.median(np.abs(gp['err_pct'])):.2f} | {_pct(gp['err_pct'], 90):.2f} |")
    if len(held):
        held = held.assign(sub_op=[sh.split("op=")[1].split(",")[0] if k == "elementwise" else k
                                   for k, sh in zip(held["kind"], held["shape"])])
        he = (held["predicted_s"] / held["time_s"] - 1) * 100
        hc = (held["curve_only_s"] / held["time_s"] - 1) * 100
        held = held.assign(err=he, err_curve=hc)
        L += ["", "Held-out errors by sub-op and dtype (fit without these shapes; 'curve only' = what a shape of "
              "an unmeasured family would get):", "",
              "| op | sub-op | set | backend | dtype | held-out points | median % | p90 % | curve only median % | "
              "curve only p90 % |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        if "set" not in held.columns:
            held = held.assign(set="grid")
        for (kind, sub, st, be, dt), g in held.groupby(["kind", "sub_op", "set", "backend", "dtype"], sort=True):
            L.append(f"| {kind} | {sub} | {st} | {be} | {dt} | {len(g)} | {_pct(g['err'], 50):.2f} | "
                     f"{_pct(g['err'], 90):.2f} | {_pct(g['err_curve'], 50):.2f} | {_pct(g['err_curve'], 90):.2f} |")
    L += _many_seq_section(pred, cal)
    L += ["", "## Measured vs predicted at representative shapes", "",
          "| op | backend | shape | measured | predicted | error % | achieved TFLOP/s | achieved TB/s |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (kind, be), g in pred.groupby(["kind", "backend"], sort=True):
        o = g.sort_values(["ideal_ns", "shape"], kind="mergesort").reset_index(drop=True)
        for i in sorted({int(round(q * (len(o) - 1))) for q in (0, 0.25, 0.5, 0.75, 1)}):
            r = o.iloc[i]
            L.append(f"| {kind} | {be} | {r['shape']} {r['dtype']} | {_fmt_s(r['time_s'])} | {_fmt_s(r['predicted_s'])} | "
                     f"{r['err_pct']:+.1f} | {r['flops_'] / r['time_s'] / 1e12:.1f} | {r['bytes_'] / r['time_s'] / 1e12:.2f} |")
    L += ["", "## Plots", ""] + [f"![{p.stem}]({plot_dir.name}/{p.name})" for p in pngs]
    mc = data_dir / "model_check.csv"
    if mc.exists():
        from calibrate.compare_model import check_model, format_check
        L += ["", "## Model-level check (HF Llama, random weights)", "", "```", format_check(check_model(mc, hw)), "```"]
    out_md.write_text("\n".join(L) + "\n")
    return out_md
