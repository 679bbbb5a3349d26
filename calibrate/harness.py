"""Shared pieces of the calibration runner: timing, CSV output, budgets, checks, peaks.

Split out of calibrate/run.py (which keeps the per-op shape sweeps and the command line).
"""
from __future__ import annotations

import csv
import math
import os
import subprocess
import time
import traceback

import torch
import triton
import triton.testing

from .kernels import attn_decode, attn_prefill, elementwise, gemm

TIMING = {"warmup_ms": 5, "rep_ms": 20}  # do_bench settings; --quick lowers them
# CALIBRATE_DEVICE=cpu (with TRITON_INTERPRET=1) only exercises the pipeline on a CPU; the
# numbers it writes are meaningless.  Real runs use the default, cuda.
DEV = os.environ.get("CALIBRATE_DEVICE", "cuda")
TOL = {"bf16": 2e-2, "fp8": 6e-2}
# wall-time budget (s) per op for the full grid; --quick uses the same caps
BUDGET = {"gemm": 170, "attn_prefill": 90, "attn_decode": 200, "elementwise": 50}


def log(*a):
    print(*a, flush=True)


# independent do_bench windows per point, per op (the median is kept): decode and prefill
# showed isolated 2-4x slow points in single-window runs on both GPUs
REPEATS = {"gemm": 1, "attn_prefill": 3, "attn_decode": 3, "elementwise": 1}
# points whose windows disagree by more than this factor (max/min) are counted per op
UNSTABLE_RATIO = 1.2


class Spread:
    """Per-op count of points whose repeated windows disagreed (max/min > UNSTABLE_RATIO)."""

    def __init__(self):
        self.points, self.unstable, self.worst = {}, {}, {}

    def add(self, op: str, ts: list[float]) -> None:
        r = max(ts) / min(ts)
        self.points[op] = self.points.get(op, 0) + 1
        if r > UNSTABLE_RATIO:
            self.unstable[op] = self.unstable.get(op, 0) + 1
        self.worst[op] = max(self.worst.get(op, 1.0), r)

    def summary(self) -> dict:
        return {op: {"points": n, "repeats": REPEATS[op], "unstable_points": self.unstable.get(op, 0),
                     "worst_max_over_min": round(self.worst[op], 3)} for op, n in self.points.items()}


SPREAD = Spread()


def bench_repeated(fn, op: str) -> float:
    """Median over REPEATS[op] independent bench() windows; the spread is recorded in SPREAD."""
    n = REPEATS.get(op, 1)
    ts = [bench(fn) for _ in range(n)]
    if n > 1:
        SPREAD.add(op, ts)
    return sorted(ts)[n // 2]


def bench(fn) -> float:
    """Median seconds of fn (device events, cold L2 each repetition)."""
    if DEV != "cuda":
        fn()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return triton.testing.do_bench(fn, warmup=TIMING["warmup_ms"], rep=TIMING["rep_ms"], return_mode="median") * 1e-3


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def nvsmi(query: str) -> str:
    try:
        return subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as e:  # noqa: BLE001
        return f"unavailable: {e}"


class CsvOut:
    def __init__(self, path, columns):
        self.f = open(path, "w", newline="")
        self.columns = columns
        self.w = csv.DictWriter(self.f, fieldnames=columns)
        self.w.writeheader()
        self.n = 0

    def row(self, **kw):
        self.w.writerow({c: kw[c] for c in self.columns})
        self.n += 1
        if self.n % 50 == 0:
            self.f.flush()

    def close(self):
        self.f.close()


class Budget:
    def __init__(self, name, seconds):
        self.name, self.seconds, self.t0, self.skipped = name, seconds, time.time(), 0

    def over(self) -> bool:
        if time.time() - self.t0 > self.seconds:
            self.skipped += 1
            return True
        return False


# ------------------------------------------------------------------------------ checks
CHECKS = {
    "gemm": lambda: gemm.check(),
    "attn_prefill": lambda: attn_prefill.check(),
    "attn_decode": lambda: attn_decode.check(),
    "elementwise": lambda: elementwise.check(),
}


def run_checks(ops) -> dict:
    results = {}
    for op in ops:
        t0 = time.time()
        try:
            torch.manual_seed(int(time.time() * 1e6) % 2**31)  # fresh inputs every run
            errs = CHECKS[op]()
            fails = {}
            for k, v in errs.items():
                tol = TOL["fp8"] if k.startswith("fp8") else TOL["bf16"]
                if not (isinstance(v, float) and math.isfinite(v) and v < tol):
                    fails[k] = v
            results[op] = {"passed": not fails, "rel_err": errs, "failed": fails,
                           "seconds": round(time.time() - t0, 2)}
        except Exception as e:  # noqa: BLE001
            results[op] = {"passed": False, "error": f"{type(e).__name__}: {e}",
                           "traceback": traceback.format_exc()[-2000:],
                           "seconds": round(time.time() - t0, 2)}
        r = results[op]
        worst = max(r.get("rel_err", {}).values(), default=float("nan"))
        log(f"[check] {op:13s} {'PASS' if r['passed'] else 'FAIL'}  worst rel err {worst:.3e}  "
            f"({r['seconds']} s) {r.get('error', '') or r.get('failed', '')}")
    return results


# ------------------------------------------------------------------------------ peaks
def measure_peaks() -> dict:
    out = {}
    n = 1 << 30  # 1 Gi bf16 elements = 2 GiB
    src = torch.randn(n, device=DEV, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src))
    out["copy_bytes"] = 2 * src.numel() * 2
    out["copy_time_s"] = t
    out["copy_bw_bytes_per_s"] = 2 * src.numel() * 2 / t
    del src, dst
    a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    c = torch.empty_like(a)
    t = bench(lambda: torch.matmul(a, b, out=c))
    out["matmul_8192_time_s"] = t
    out["matmul_bf16_flops_per_s"] = 2 * 8192**3 / t
    del a, b, c
    torch.cuda.empty_cache()
    log(f"[peak] D2D copy {out['copy_bw_bytes_per_s'] / 1e12:.2f} TB/s (read+write), "
        f"bf16 matmul 8192^3 {out['matmul_bf16_flops_per_s'] / 1e12:.1f} TFLOP/s")
    return out


# ------------------------------------------------------------------------------ timing
class Skips:
    def __init__(self):
        self.items: dict[str, int] = {}

    def add(self, key):
        self.items[key] = self.items.get(key, 0) + 1
