"""In-step truth: what each op of a reference engine step costs inside the step, against three
ways of timing the same op alone -- which timing method matches in-step time?

  python -m calibrate.instep --out DIR [--quick] [--tiny] [--budget-s 140] [--backends vendor,triton]

For each model (llama-3.1-8b, qwen2.5-7b), backend (vendor, triton) and step of
``stepshape.instep_steps`` (decode batch 1-256 at contexts 512 and 2048; prefill 1x512, 1x2048,
1x8192, 16x256, 64x512): the step (calibrate/stepref.py, all layers) runs eagerly with CUDA
events between ops and the host kept ahead of the GPU (calibrate/steptime.py ``time_ops``:
events around every op of four layers and of the per-step ops, at layer ends elsewhere), 2-5
times after a warm-up; per op the median over repetitions and those layers (``instep``).  Each
distinct op shape is then timed alone on the step's own tensors with ``calibrate.timing.bench``:
``bench_zero`` (256 MB zeroed before each call, today's runner), ``bench_read`` (256 MB read),
``bench_rotate`` (no flush; inputs and weights rotated over copies, >= 2x L2 in all and at least
the runner's ``timing.rotation`` count) and, for vendor GEMMs, ``calib_zero`` (torch.matmul on a
[K, N] weight with the zero flush: the calibration runner's exact call; the step's F.linear
reads [N, K]).  An op shape shared by several steps (a GEMM at one token count) is timed alone
once; its rows repeat under each step.

Writes DIR/instep.csv (model,backend,step,op,kind,shape,method,time_s; step in the
``PREFILL;DECODE`` syntax, time per launch) and DIR/instep_provenance.json (GPU, clocks before
and after, versions, vendor attention choice, per step: eager kernel sum, repetitions, host
enqueue time, spin retries, distinct KV regions, launches per op; kernel names of each op from
torch.profiler; what the budget skipped).  Prints last the median ratio method / instep per
(kind, backend, phase).
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

from .stepshape import (est_instep_s, est_step_s, instep_reps, instep_steps, models_for, parse_shape, parse_step,
                        phase, step_str)

COLUMNS = ["model", "backend", "step", "op", "kind", "shape", "method", "time_s"]
METHODS = ("bench_zero", "bench_read", "bench_rotate", "calib_zero", "bench_soak")
RUN_METHODS = list(METHODS[:4])  # what main() measures (--methods)
PROFILE_MAX_S = 0.5  # profiling stops once a step's profile takes longer than this on average


def log(*a):
    print(*a, flush=True)


def ratio_table(rows: list[dict]) -> list[tuple]:
    """(kind, backend, phase, op shapes, {method: median of time / instep time})."""
    inst = {(r["model"], r["backend"], r["step"], r["op"], r["shape"]): float(r["time_s"])
            for r in rows if r["method"] == "instep"}
    acc: dict = {}
    for r in rows:
        t_in = inst.get((r["model"], r["backend"], r["step"], r["op"], r["shape"]))
        if r["method"] == "instep" or not t_in:
            continue
        acc.setdefault((r["kind"], r["backend"], phase(*parse_shape(*parse_step(r["step"])))), {}).setdefault(
            r["method"], []).append(float(r["time_s"]) / t_in)
    return [(k, b, p, max(map(len, m.values())), {x: statistics.median(v) for x, v in m.items()})
            for (k, b, p), m in sorted(acc.items())]


def format_table(tab) -> str:
    lines = ["median time / in-step time per op shape (1.00 = the method matches in-step time)",
             f"{'kind':13s}{'backend':8s}{'phase':8s}{'n':>4s}" + "".join(f"{m:>13s}" for m in METHODS)]
    for k, b, p, n, m in tab:
        lines.append(f"{k:13s}{b:8s}{p:8s}{n:4d}" + "".join(
            f"{m[x]:13.3f}" if x in m else f"{'-':>13s}" for x in METHODS))
    return "\n".join(lines)


def _one_step(md, be, w, va, pf, dc, pool, l2, benched, rows, prov):
    from .stepref import Step
    from .steptime import free_memory, group_times, kernel_names, standalone, sync, time_ops
    from .timing import DEV
    t0 = time.time()
    key = step_str(pf, dc)
    step = Step(md, w, pf, dc, pool, va)
    got: dict = {}
    step.run(keep=got)  # warm-up (compiles) and the args of each op group's first launch
    sync()
    reps = instep_reps(est_step_s(md, *parse_shape(pf, dc), be)) if DEV == "cuda" else 1
    samples, totals, info = time_ops(step, reps)
    med, total, count = group_times(step, samples, totals)
    pc = prov["profiler"]
    if not pc["off"]:  # kernel names (which cuBLAS / flash kernel ran), while profiling stays cheap
        t1 = time.time()
        try:
            for name, ks in kernel_names(step).items():
                prov["kernels"].setdefault(f"{md.name}/{be}/{name}", ks)
        except Exception as e:  # noqa: BLE001
            prov["kernels"].setdefault("_errors", []).append(f"{key}: {type(e).__name__}: {str(e)[:200]}")
        pc["runs"], pc["seconds"] = pc["runs"] + 1, pc["seconds"] + time.time() - t1
        if pc["runs"] >= 3 and pc["seconds"] / pc["runs"] > PROFILE_MAX_S:
            pc["off"] = True
            log(f"[instep] kernel names: profiler off ({pc['seconds'] / pc['runs']:.2f} s per step)")
    new = 0
    for gk, (op, a) in got.items():
        base = dict(model=md.name, backend=be, step=key, op=op.name, kind=op.kind, shape=op.shape)
        if gk in med:
            rows.append(dict(base, method="instep", time_s=f"{med[gk]:.6e}"))
        if gk not in benched:
            new += 1
            try:
                benched[gk] = standalone(op, a, l2, calib=(be == "vendor" and op.kind == "gemm"),
                                         methods=RUN_METHODS)
            except Exception as e:  # noqa: BLE001
                benched[gk] = {}
                prov["skipped"].append(f"{md.name}/{be} {key} {op.name} {op.shape}: bench failed: "
                                       f"{type(e).__name__}: {str(e)[:200]}")
        for m in METHODS:
            if benched[gk].get(m) is not None:
                rows.append(dict(base, method=m, time_s=f"{benched[gk][m]:.6e}"))
    prov["steps"][f"{md.name}/{be}/{key}"] = {
        "eager_kernel_sum_s": total, "reps": reps, **info, "kv_distinct_layers": step.kv_distinct,
        "launches": {f"{n} {s}": c for (n, s), c in count.items()},
        "rotate_copies": {f"{n} {s}": benched[(n, s)].get("rotate_copies") for (n, s) in got}}
    log(f"[instep] {md.name:12s} {be:6s} {key:14s} eager sum {total * 1e3:9.3f} ms  {reps} reps  host "
        f"{info['host_s'] * 1e3:6.1f} ms  late {info['late_retries']}/{info['late_kept']}  "
        f"{len(got)} op shapes ({new} new)  {time.time() - t0:5.1f} s")
    del step, got
    gc.collect()
    free_memory()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="two steps per model/backend")
    p.add_argument("--tiny", action="store_true", help="tiny 2-layer models (CPU smoke test)")
    p.add_argument("--budget-s", type=float, default=140.0)
    p.add_argument("--backends", default="vendor,triton")
    p.add_argument("--methods", default=",".join(RUN_METHODS),
                   help=f"standalone methods to measure, of {','.join(METHODS)}")
    p.add_argument("--soak-ms", type=float, default=10.0, help="bench_soak: GEMM soak before the timed calls")
    args = p.parse_args(argv)
    RUN_METHODS[:] = [m for m in args.methods.split(",") if m]
    bad = set(RUN_METHODS) - set(METHODS)
    if bad:
        p.error(f"--methods: unknown {sorted(bad)}; expected some of {list(METHODS)}")
    os.makedirs(args.out, exist_ok=True)
    from .steptime import MAX_COPIES, clocks, deadline, for_each_combo, l2_bytes, pool_for, provenance
    t_start = time.time()
    left = deadline(args.budget_s)
    prov = provenance("instep", argv)
    models, steps = models_for(args.tiny), instep_steps(args.quick, args.tiny)
    est = est_instep_s(args.tiny, args.quick)
    log("[instep] estimate (first principles, H200): " + ", ".join(f"{k} {v:.0f} s" for k, v in est.items())
        + f"; budget {args.budget_s:.0f} s")
    prov.update(budget_s=args.budget_s, quick=args.quick, tiny=args.tiny, estimate_s=est, steps={}, kernels={},
                vendor_attention={}, skipped=[], profiler={"runs": 0, "seconds": 0.0, "off": False},
                vendor_rotary="calibrate/kernels/elementwise.py rotary")
    pool, l2 = pool_for(models, steps), l2_bytes()
    from . import timing
    timing.TIMING["soak_s"] = args.soak_ms * 1e-3
    prov.update(methods=list(RUN_METHODS), soak_s=timing.TIMING["soak_s"])
    prov.update(l2_bytes_used=l2, bench_window=dict(timing.PASS_TIMING),
                rotation={"min_total_l2_multiple": 2, "max_copies": MAX_COPIES,
                          "runner_l2_multiple": getattr(timing, "ROTATE_L2_MULTIPLE", None),
                          "runner_max_copies": getattr(timing, "ROTATE_MAX_COPIES", None)})
    rows: list[dict] = []

    def make_run(md, be, w, va):
        benched: dict = {}  # standalone times of the op shapes seen so far for this model and backend
        return lambda pf, dc: _one_step(md, be, w, va, pf, dc, pool, l2, benched, rows, prov)
    for_each_combo(models, args.backends.split(","), est, left, lambda md, be: steps, make_run, prov, "instep")
    with open(os.path.join(args.out, "instep.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=COLUMNS)
        wr.writeheader()
        wr.writerows(rows)
    tab = ratio_table(rows)
    prov.update(clocks_after=clocks(), wall_time_s=round(time.time() - t_start, 1),
                ratios=[{"kind": k, "backend": b, "phase": ph, "op_shapes": n, **m} for k, b, ph, n, m in tab])
    with open(os.path.join(args.out, "instep_provenance.json"), "w") as f:
        json.dump(prov, f, indent=1, default=str)
    if prov["skipped"]:
        log(f"[instep] skipped {len(prov['skipped'])}: " + "; ".join(prov["skipped"][:8]))
    log(f"[instep] {len(rows)} rows, wall {prov['wall_time_s']} s -> {args.out}")
    log(format_table(tab))
    return 0


if __name__ == "__main__":
    sys.exit(main())
