"""Whole-step reference: GPU time of whole reference engine steps, to fit and test the step
model against (not single kernels).

  python -m calibrate.wholestep --out DIR [--quick] [--tiny] [--budget-s 190] [--backends vendor,triton]

For each model (llama-3.1-8b, qwen2.5-7b), backend (vendor, triton) and shape of
``stepshape.wholestep_grid`` (decode batch 1-512 x context 256/1024/4096, decode over an even
spread of contexts (Triton only), prefill 1x128 ... 256x64, chunked prefill 2048 over 2048 and
512 over 8192, mixed 512-token chunk + 32 / 128 decodes at 1024; KV over 40 GB skipped), cheapest
first: the step (calibrate/stepref.py, all layers) runs once eagerly (compiles, allocates), then
  eager_sum  WS_EAGER_REPS eager steps (1 if longer than WS_LONG_S) with the host kept ahead of
             the GPU (calibrate/steptime.py ``time_ops``), median of the time from the step's
             first to its last event: the step's kernels back to back plus the gaps between
             them, i.e. the eager kernel sum;
  graph      the step captured in a CUDA graph (one graph per shape; short steps run once more
             on a side stream before capture), one warm-up replay, then the median of
             WS_REPLAYS replays timed with an event pair each.  Inputs are NOT rotated between
             replays: a replay reads all weights (>= 15 GB, hundreds of times L2) and its own
             KV, so what the previous replay left in L2 (the LM head's tail, the logits) is not
             what the next one reads first.
Each (model, backend) gets a share of the budget left (in proportion to its estimate); a shape
is started only within it (skipped shapes are listed in the provenance).  The held-out flag
(``stepshape.heldout``: sha1 of ``PREFILL;DECODE`` mod 3 == 0) is the same for every model and
backend.

Writes DIR/wholestep.csv (model,backend,phase,prefill,decode,num_layers,mode,time_s,heldout;
prefill/decode in the shape syntax of calibrate/stepshape.py, which ``stepref.parse_shape``
reads) and DIR/wholestep_provenance.json (estimate, per shape: replays and their spread,
eager host time and spin retries, distinct KV regions; skipped shapes).
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import statistics
import sys
import time

from .stepshape import (WS_EAGER_REPS, WS_LONG_S, WS_REPLAYS, est_step_s, est_wholestep_s, heldout, models_for,
                        parse_shape, phase, step_str, wholestep_grid, ws_eager_reps)

COLUMNS = ["model", "backend", "phase", "prefill", "decode", "num_layers", "mode", "time_s", "heldout"]
MODES = ("graph", "eager_sum")


def log(*a):
    print(*a, flush=True)


def summary_table(rows: list[dict]) -> str:
    """Per (model, backend, phase): shapes, median graph time, median eager_sum / graph."""
    acc: dict = {}
    for r in rows:
        acc.setdefault((r["model"], r["backend"], r["phase"]), {}).setdefault(
            (r["prefill"], r["decode"]), {})[r["mode"]] = float(r["time_s"])
    lines = [f"{'model':14s}{'backend':8s}{'phase':8s}{'shapes':>7s}{'graph ms (median)':>19s}{'eager_sum/graph':>17s}"]
    for (m, b, ph), shapes in sorted(acc.items()):
        g = [v["graph"] for v in shapes.values() if "graph" in v]
        ratio = [v["eager_sum"] / v["graph"] for v in shapes.values() if "graph" in v and "eager_sum" in v]
        lines.append(f"{m:14s}{b:8s}{ph:8s}{len(shapes):7d}"
                     f"{statistics.median(g) * 1e3 if g else float('nan'):19.3f}"
                     f"{statistics.median(ratio) if ratio else float('nan'):17.3f}")
    return "\n".join(lines)


def _one_shape(md, be, w, va, pf, dc, pool, rows, prov):
    from .stepref import Step
    from .steptime import free_memory, graph_time, group_times, sync, time_ops
    from .timing import DEV
    t0 = time.time()
    chunks, ctxs = parse_shape(pf, dc)
    est = est_step_s(md, chunks, ctxs, be)
    step = Step(md, w, pf, dc, pool, va)
    step.run()  # compiles, allocates
    sync()
    samples, totals, info = time_ops(step, ws_eager_reps(est) if DEV == "cuda" else 1)
    _, eager, _ = group_times(step, samples, totals)
    step.env = {}
    base = dict(model=md.name, backend=be, phase=phase(chunks, ctxs), prefill=pf, decode=dc,
                num_layers=md.layers, heldout=int(heldout(pf, dc)))
    rows.append(dict(base, mode="eager_sum", time_s=f"{eager:.6e}"))
    rec = prov["shapes"][f"{md.name}/{be}/{step_str(pf, dc)}"] = {
        "eager_sum_s": eager, "estimate_s": est, **info, "kv_distinct_layers": step.kv_distinct,
        "kv_layer_bytes": step.kv_layer_bytes}
    try:
        g, ts = graph_time(step, WS_REPLAYS, side_warmup=est < WS_LONG_S)
    except Exception as e:  # noqa: BLE001  (the eager row stays)
        step.env = {}
        rec["graph_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        log(f"[wholestep] {md.name} {be} {step_str(pf, dc)}: graph failed: {rec['graph_error']}")
        g, ts = None, [float("nan")]
    if g is not None:
        rows.append(dict(base, mode="graph", time_s=f"{g:.6e}"))
        rec.update(graph_replays=len(ts), graph_min_s=min(ts), graph_max_s=max(ts))
    log(f"[wholestep] {md.name:12s} {be:6s} {step_str(pf, dc):18s} graph {(g or float('nan')) * 1e3:9.3f} ms  "
        f"eager_sum {eager * 1e3:9.3f} ms  (est {est * 1e3:8.2f})  replays {len(ts)} spread "
        f"{max(ts) / min(ts):.3f}  late {info['late_retries']}/{info['late_kept']}  {time.time() - t0:5.1f} s")
    del step
    gc.collect()
    free_memory()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="a few shapes per model/backend")
    p.add_argument("--tiny", action="store_true", help="tiny 2-layer models (CPU smoke test)")
    p.add_argument("--budget-s", type=float, default=190.0)
    p.add_argument("--backends", default="vendor,triton")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    from .steptime import clocks, deadline, for_each_combo, pool_for, provenance
    t_start = time.time()
    left = deadline(args.budget_s)
    prov = provenance("wholestep", argv)
    models, backends = models_for(args.tiny), args.backends.split(",")
    grid = {(md.name, be): wholestep_grid(md, be, args.quick, args.tiny) for md in models for be in backends}
    est = est_wholestep_s(args.tiny, args.quick)
    log("[wholestep] estimate (first principles, H200): " + ", ".join(
        f"{k} {v:.0f} s ({len(grid.get(tuple(k.split('/')), []))} shapes)" if k != "total" else f"total {v:.0f} s"
        for k, v in est.items()) + f"; budget {args.budget_s:.0f} s")
    prov.update(budget_s=args.budget_s, quick=args.quick, tiny=args.tiny, estimate_s=est, shapes={}, skipped=[],
                vendor_attention={}, replays=WS_REPLAYS, eager_reps=WS_EAGER_REPS,
                inputs_rotated=False, mode_doc={"graph": "median CUDA-graph replay", "eager_sum":
                                                "sum of per-launch median event-timed eager op times"})
    pool = pool_for(models, sorted({s for g in grid.values() for s in g}))
    rows: list[dict] = []
    for_each_combo(models, backends, est, left, lambda md, be: grid[(md.name, be)],
                   lambda md, be, w, va: lambda pf, dc: _one_shape(md, be, w, va, pf, dc, pool, rows, prov),
                   prov, "wholestep")
    with open(os.path.join(args.out, "wholestep.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=COLUMNS)
        wr.writeheader()
        wr.writerows(rows)
    prov.update(clocks_after=clocks(), wall_time_s=round(time.time() - t_start, 1))
    with open(os.path.join(args.out, "wholestep_provenance.json"), "w") as f:
        json.dump(prov, f, indent=1, default=str)
    if prov["skipped"]:
        log(f"[wholestep] skipped {len(prov['skipped'])}: " + "; ".join(prov["skipped"][:8]))
    log(f"[wholestep] {len(rows) // 2} shapes, wall {prov['wall_time_s']} s -> {args.out}")
    log(summary_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
