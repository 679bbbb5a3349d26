"""Calibration runner: correctness checks, then timed shape grids -> CSVs + provenance.json.

  python -m calibrate.run --gpu-name h100_sxm --out calibrate/data/h100_sxm [--quick]
      [--ops gemm,attn_prefill,attn_decode,elementwise,attn_prefill_multi,attn_decode_multi]
      [--backends triton,vendor] [--flush zero|read|none] [--check-only] [--estimate]

Timing (calibrate/timing.py): do_bench's method (median over event-timed calls, warm-up, L2
emptied before every timed call: 256 MB zeroed, or read with --flush read; with --flush none
nothing, and each timed call rotates through copies of its inputs), with the host kept ahead of
the GPU.  Prefill and decode attention (single- and many-sequence grids) are timed in several
passes over their whole grid in shuffled order with fresh inputs each pass (the per-point
median is kept; every window is in windows.csv); elementwise ops in five such passes (their
trimmed mean is kept).  Before timing, the run prints its estimated wall time per op
(calibrate.estimate).  Each op has a wall-time budget, and the whole run a deadline
(--max-wall-s); points past them are skipped and counted in provenance.json.  A rerun of some
ops into another folder is merged into a data folder by calibrate.merge.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import gc
import json
import os
import socket
import sys
import time
import traceback

import torch
import triton

from . import estimate, grids, timing
from .harness import (BUDGET, Budget, CsvOut, Skips, log, measure_peaks, nvsmi, run_checks, sync,
                      write_pass_rows)
from .kernels import elementwise, gemm
from .run_attention import time_decode, time_decode_multi, time_prefill, time_prefill_multi
from .timing import (AGGREGATE, DEV, FLUSH_MODES, HOST, PASS_TIMING, PASSES, PHASE_S, SPREAD, TIMING, WindowLog,
                     bench, bench_pass, rotation, run_passes)

FLUSH_METHOD = {"zero": "256 MB zeroed before each timed call (triton.testing.do_bench's method)",
                "read": "256 MB read (an int32 -> int64 sum) before each timed call: L2 left holding clean lines",
                "none": "no flush; each timed call rotates through copies of its inputs "
                        "(calibrate.timing.rotation: >= 4 x L2 of other copies between two uses)"}

def time_gemm(w: CsvOut, backends, ok_triton, quick, skips: Skips, windows=None):
    bud = Budget("gemm", BUDGET["gemm"])
    sms = _num_sms()
    for dtype, grid in (("bf16", grids.gemm_grid(quick, sms)), ("fp8", grids.gemm_fp8_grid(quick, sms))):
        by_kn: dict[tuple[int, int], list[int]] = {}
        for m, n, k in grid:
            by_kn.setdefault((k, n), []).append(m)
        for (k, n), ms in by_kn.items():
            if bud.over():
                skips.add(f"gemm_{dtype}_budget")
                continue
            mmax, in_b = max(ms), (2 if dtype == "bf16" else 1)
            # with --flush none each timed call takes the next of enough copies of the weight and
            # of A (A: row windows of one taller buffer, so its copies stay within ~4 x L2)
            weights = [_weight(k, n, dtype) for _ in range(rotation(k * n * in_b))]
            rows = mmax + (int(timing.ROTATE_L2_MULTIPLE * timing.L2_BYTES / (k * in_b)) + 1 if len(weights) > 1 else 0)
            a = torch.randn(rows, k, device=DEV, dtype=torch.bfloat16)
            c = torch.empty(mmax, n, device=DEV, dtype=torch.bfloat16)
            sa = None
            if dtype == "fp8":
                a, sa = gemm.to_fp8(a)
            for m in ms:
                cm = c[:m]
                flops, byts = grids.gemm_flops_bytes(m, n, k, in_b, 2)
                span = rows - m + 1
                ops = [(a[(j * m) % span:(j * m) % span + m],) + weights[j] for j in range(min(len(weights),
                                                                                                  rotation(byts)))]
                for be in backends:
                    if be == "triton" and not ok_triton:
                        continue
                    try:
                        if dtype == "bf16":
                            fn = [(lambda am=am, b=b: gemm.matmul(am, b, cm)) if be == "triton" else
                                  (lambda am=am, b=b: torch.matmul(am, b, out=cm)) for am, b, _ in ops]
                        else:
                            fn = [(lambda am=am, b=b, sb=sb: gemm.matmul_fp8(am, b, sa, sb, cm)) if be == "triton"
                                  else (lambda am=am, b=b, sb=sb: torch._scaled_mm(am, b, scale_a=sa, scale_b=sb,
                                                                                   out_dtype=torch.bfloat16))
                                  for am, b, sb in ops]
                        t = bench(fn, soak=timing.compute_bound(flops, byts, dtype))
                    except Exception as e:  # noqa: BLE001
                        skips.add(f"gemm_{dtype}_{be}: {type(e).__name__}: {str(e)[:120]}")
                        continue
                    w.row(op="gemm", backend=be, dtype=dtype, m=m, n=n, k=k, time_s=f"{t:.6e}",
                          flops=flops, bytes=byts)
            log(f"[gemm] {dtype} K={k} N={n} M={ms[0]}..{ms[-1]} done "
                f"({time.time() - bud.t0:.0f} s)")
            del a, c, weights
    if DEV == "cuda":
        torch.cuda.empty_cache()


def _weight(k: int, n: int, dtype: str):
    """A random [K, N] weight (fp8: stored [N, K], K contiguous, with its scale)."""
    if dtype == "bf16":
        return torch.randn(k, n, device=DEV, dtype=torch.bfloat16), None
    b, sb = gemm.to_fp8(torch.randn(n, k, device=DEV, dtype=torch.bfloat16))
    return b.t(), sb  # [K,N] view, K contiguous


def _num_sms() -> int:
    if DEV == "cuda":
        return torch.cuda.get_device_properties(0).multi_processor_count
    return grids.DEFAULT_NUM_SMS


def time_launch(w: CsvOut, skips: Skips):
    x = torch.zeros(1, device=DEV)
    elementwise.empty_launch(x)
    sync()
    n = 2000
    rows = []
    for _ in range(2):  # second pass is the one kept (first warms caches/allocator)
        t0 = time.perf_counter()
        for _ in range(n):
            elementwise.empty_launch(x)
        sync()
        t_tri = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n):
            x.add_(1.0)
        sync()
        t_torch = (time.perf_counter() - t0) / n
    rows.append(("triton_host", t_tri))
    rows.append(("vendor_host", t_torch))
    rows.append(("triton_gpu", bench(lambda: elementwise.empty_launch(x))))
    try:
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                elementwise.empty_launch(x)
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g):
            for _ in range(100):
                elementwise.empty_launch(x)
        g.replay()
        sync()
        rows.append(("graph", bench(g.replay) / 100))
    except Exception as e:  # noqa: BLE001
        skips.add(f"launch_graph: {type(e).__name__}: {str(e)[:120]}")
    for be, t in rows:
        w.row(op="launch", backend=be, dtype="none", tokens=0, hidden=0, time_s=f"{t:.6e}",
              flops=0, bytes=0)
        log(f"[launch] {be:12s} {t * 1e6:.2f} us")


def time_elementwise(w: CsvOut, backends, ok_triton, quick, skips: Skips, windows=None):
    """Memory-bound ops in PASSES["elementwise"] shuffled passes with fresh inputs per pass; the
    per-point trimmed mean of the passes is written (calibrate.timing.AGGREGATE: kernels of a
    few us moved by +-0.4 us with where their inputs were allocated, so one window, or a median
    of a few, lands on one of two levels)."""
    import torch.nn.functional as F
    bud = Budget("elementwise", BUDGET["elementwise"])
    time_launch(w, skips)
    has_rms = hasattr(F, "rms_norm")
    cs_cache = {}
    bf = torch.bfloat16
    points = grids.elementwise_grid(quick)

    def inputs(op, t_, hid):
        if op in ("rmsnorm", "add", "copy"):
            x = torch.randn(t_, hid, device=DEV, dtype=bf)
            return dict(x=x, y=torch.randn(t_, hid, device=DEV, dtype=bf), o=torch.empty_like(x),
                        wgt=torch.rand(hid, device=DEV, dtype=bf) + 0.5)
        if op == "silu_mul":
            return dict(x=torch.randn(t_, 2 * hid, device=DEV, dtype=bf),
                        o=torch.empty(t_, hid, device=DEV, dtype=bf))
        h, kvh, d = grids.rotary_head_config(hid)  # rotary
        q = torch.randn(t_, h, d, device=DEV, dtype=bf)
        k = torch.randn(t_, kvh, d, device=DEV, dtype=bf)
        if d not in cs_cache:
            cs_cache[d] = elementwise.rope_cache(32768, d, device=DEV)
        return dict(q=q, k=k, qo=torch.empty_like(q), ko=torch.empty_like(k), cs=cs_cache[d],
                    pos=torch.randint(0, 32768, (t_,), device=DEV, dtype=torch.int32))

    def kernel(op, be, hid, a):
        if be == "triton":
            return {
                "rmsnorm": lambda: elementwise.rmsnorm(a["x"], a["wgt"], 1e-6, a["o"]),
                "add": lambda: elementwise.add(a["x"], a["y"], a["o"]),
                "silu_mul": lambda: elementwise.silu_mul(a["x"], a["o"]),
                "rotary": lambda: elementwise.rotary(a["q"], a["k"], a["pos"], a["cs"], a["qo"], a["ko"]),
            }[op]
        x = a.get("x")
        if op == "rmsnorm":
            wgt = a["wgt"]
            return (lambda: F.rms_norm(x, (hid,), wgt, 1e-6)) if has_rms else \
                   (lambda: (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).to(bf) * wgt)
        if op == "add":
            return lambda: torch.add(x, a["y"], out=a["o"])
        if op == "copy":
            return lambda: a["o"].copy_(x)
        if op == "silu_mul":
            return lambda: F.silu(x[:, :hid]) * x[:, hid:]
        return lambda: elementwise.rotary_torch(a["q"], a["k"], a["pos"], a["cs"])

    def time_point(pt, p):
        op, t_, hid = pt
        copies = [inputs(op, t_, hid) for _ in range(rotation(grids.elementwise_flops_bytes(op, t_, hid)[1]))]
        for be in (list(backends) if p % 2 == 0 else list(reversed(backends))):
            if (op == "copy" and be != "vendor") or (be == "triton" and not ok_triton):
                continue
            try:
                t = bench_pass([kernel(op, be, hid, a) for a in copies])
            except Exception as e:  # noqa: BLE001
                skips.add(f"elementwise_{op}_{be}: {type(e).__name__}: {str(e)[:120]}")
                continue
            yield be, t

    got = run_passes("elementwise", points, time_point, bud, skips, windows,
                     lambda pt: f"op={pt[0]} tokens={pt[1]} hidden={pt[2]}", log)

    def row_of(pt):
        op, t_, hid = pt
        flops, byts = grids.elementwise_flops_bytes(op, t_, hid)
        return dict(op=op, dtype="bf16", tokens=t_, hidden=hid, flops=flops, bytes=byts)
    write_pass_rows(w, points, backends, got, row_of)
    log(f"[elementwise] done ({time.time() - bud.t0:.0f} s)")
    if DEV == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ summary
def summarize(out_dir, ops):
    import collections
    log("\n=== summary (best achieved per op/backend/dtype) ===")
    log(f"{'file':14s} {'backend':12s} {'dtype':5s} {'rows':>5s} {'best TFLOP/s':>12s} "
        f"{'best TB/s':>9s}")
    for op in ops:
        path = os.path.join(out_dir, f"{op}.csv")
        if not os.path.exists(path):
            continue
        agg = collections.defaultdict(lambda: [0, 0.0, 0.0])
        with open(path) as f:
            for r in csv.DictReader(f):
                if r["op"] == "launch":
                    continue
                key = (r["backend"], r["dtype"])
                t = float(r["time_s"])
                a = agg[key]
                a[0] += 1
                a[1] = max(a[1], float(r["flops"]) / t / 1e12)
                a[2] = max(a[2], float(r["bytes"]) / t / 1e12)
        for (be, dt), (n, fl, bw) in sorted(agg.items()):
            log(f"{op:14s} {be:12s} {dt:5s} {n:5d} {fl:12.1f} {bw:9.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpu-name", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--ops", default=",".join(grids.OPS))
    p.add_argument("--backends", default="triton,vendor")
    p.add_argument("--check-only", action="store_true")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiply every op's wall-time budget")
    p.add_argument("--flush", choices=FLUSH_MODES, default=TIMING["flush"],
                   help="L2 before each timed call: zero (do_bench), read, none (rotating input copies)")
    p.add_argument("--soak-ms", type=float, default=0.0,
                   help="compute-bound windows follow this many ms of large GEMMs instead of an idle spin "
                        "(the power state of a long prefill step; calibrate/timing.py); 0 = off")
    p.add_argument("--multi-passes", type=int, default=None,
                   help=f"passes over the many-sequence grids (default {PASSES['attn_prefill_multi']})")
    p.add_argument("--max-wall-s", type=float, default=540.0,
                   help="deadline of the whole run: an op starting later gets only what is left")
    p.add_argument("--estimate", action="store_true", help="print the estimated wall time per op and stop")
    args = p.parse_args(argv)
    t_start = time.time()
    ops = [o for o in args.ops.split(",") if o]
    backends = [b for b in args.backends.split(",") if b]
    for o in ops:
        if o not in grids.OPS:
            p.error(f"unknown op {o}")
    for k in BUDGET:
        BUDGET[k] *= args.budget_scale
    TIMING["flush"] = args.flush
    TIMING["soak_s"] = max(0.0, args.soak_ms) * 1e-3
    if args.multi_passes is not None:
        if args.multi_passes < 1:
            p.error("--multi-passes must be >= 1")
        PASSES.update({o: args.multi_passes for o in grids.MULTI_OPS})
    if args.quick:
        TIMING.update(warmup_ms=3, rep_ms=10)
        PASS_TIMING.update(rep_ms=5)
    if args.estimate:  # no device needed: datasheet H200 rates
        log(estimate.format_estimate(estimate.run_seconds(ops, PASSES, backends, args.quick, args.flush, None,
                                                          TIMING, PASS_TIMING)))
        return 0
    os.makedirs(args.out, exist_ok=True)
    if DEV == "cuda":
        assert torch.cuda.is_available(), "needs a CUDA GPU"
        props = torch.cuda.get_device_properties(0)
    else:  # pipeline smoke test on a CPU (TRITON_INTERPRET=1); numbers are meaningless
        import types
        props = types.SimpleNamespace(name="cpu-interpreter", multi_processor_count=0,
                                      total_memory=0, major=0, minor=0, L2_cache_size=2**20)
    timing.L2_BYTES = getattr(props, "L2_cache_size", None) or timing.L2_BYTES  # flush "none": rotation size
    prov = {
        "gpu_name_arg": args.gpu_name,
        "device_name": props.name,
        "num_sms": props.multi_processor_count,
        "memory_bytes": props.total_memory,
        "l2_cache_bytes": getattr(props, "L2_cache_size", None),
        "compute_capability": f"{props.major}.{props.minor}",
        "nvidia_smi": nvsmi("name,driver_version,memory.total,power.limit,pstate"),
        "cuda_runtime": torch.version.cuda,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": sys.version.split()[0],
        "hostname": socket.gethostname(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, "-m", "calibrate.run"] + (argv or sys.argv[1:])),
        "clocks_before": nvsmi("clocks.sm,clocks.mem,clocks.max.sm"),
        "timing": {"method": "calibrate.timing.bench: do_bench's median of event-timed calls, "
                             + FLUSH_METHOD[args.flush] + ", host kept ahead of the GPU (spin kernel; calls "
                             "the GPU reached before the host had enqueued them dropped)",
                   **TIMING, "multi_pass_window": dict(PASS_TIMING), "passes": dict(PASSES),
                   "pass_aggregate": dict(AGGREGATE), "max_wall_s": args.max_wall_s}
        | ({"rotation_l2_bytes": timing.L2_BYTES, "rotation_l2_multiple": timing.ROTATE_L2_MULTIPLE,
            "rotation_max_copies": timing.ROTATE_MAX_COPIES} if args.flush == "none" else {}),
        "quick": args.quick,
        "ops": ops, "backends": backends,
    }
    log(f"[info] {props.name} SMs={props.multi_processor_count} torch {torch.__version__} "
        f"triton {triton.__version__} cuda {torch.version.cuda}")
    checks = run_checks(ops)
    prov["checks"] = checks
    skips = Skips()
    if not args.check_only:
        prov["peaks"] = measure_peaks() if DEV == "cuda" else {}
        pk = prov["peaks"]
        if pk.get("matmul_bf16_flops_per_s") and pk.get("copy_bw_bytes_per_s"):
            timing.RIDGE_FLOP_PER_BYTE = pk["matmul_bf16_flops_per_s"] / pk["copy_bw_bytes_per_s"]
        prov["soak"] = {"soak_s": TIMING["soak_s"], "ridge_flop_per_byte": timing.RIDGE_FLOP_PER_BYTE,
                        "applies_to": "gemm and prefill windows whose FLOPs/bytes exceed the ridge"}
        est = estimate.run_seconds(ops, PASSES, backends, args.quick, args.flush, prov["peaks"], TIMING, PASS_TIMING)
        log(estimate.format_estimate(est))
        prov["estimate_s"] = {k: (v["seconds"] if isinstance(v, dict) else v) for k, v in est.items()}
        timers = {"gemm": time_gemm, "attn_prefill": time_prefill, "attn_decode": time_decode,
                  "elementwise": time_elementwise, "attn_prefill_multi": time_prefill_multi,
                  "attn_decode_multi": time_decode_multi}
        windows = WindowLog(os.path.join(args.out, "windows.csv"))
        # no cyclic GC inside the sweeps: a full collection over torch's and triton's objects
        # takes ~130 ms and ran about once per timing window of a Triton kernel (seen on an H100)
        gc.disable()
        for op in ops:
            gc.collect()
            gc.freeze()
            w = CsvOut(os.path.join(args.out, f"{op}.csv"), grids.COLUMNS[op])
            t0 = time.time()
            BUDGET[op] = min(BUDGET[op], max(0.0, t_start + args.max_wall_s - t0))  # the run's deadline
            try:
                timers[op](w, backends, checks[op]["passed"], args.quick, skips, windows)
            except Exception as e:  # noqa: BLE001
                skips.add(f"{op}_aborted: {type(e).__name__}: {str(e)[:200]}")
                log(traceback.format_exc())
            w.close()
            if DEV == "cuda":
                torch.cuda.empty_cache()
            prov.setdefault("op_seconds", {})[op] = round(time.time() - t0, 1)
            log(f"[time] {op}: {w.n} rows in {time.time() - t0:.1f} s")
        windows.close()
        gc.unfreeze()
        gc.enable()
    prov["skipped"] = skips.items
    prov["pass_spread"] = SPREAD.summary()
    prov["host_ahead"] = HOST.summary()
    prov["bench_phase_wall_s"] = {k: round(v, 1) for k, v in PHASE_S.items()}
    prov["clocks_after"] = nvsmi("clocks.sm,clocks.mem,clocks.max.sm")
    prov["wall_time_s"] = round(time.time() - t_start, 1)
    with open(os.path.join(args.out, "provenance.json"), "w") as f:
        json.dump(prov, f, indent=2, default=str)
    if not args.check_only:
        summarize(args.out, ops)
    if skips.items:
        log("[skipped] " + json.dumps(skips.items, indent=1))
    log(f"[done] wall {prov['wall_time_s']} s -> {args.out}")
    return 0 if all(c["passed"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
