"""Shared pieces of the calibration runner: CSV output, budgets, checks, peaks (timing itself
is calibrate/timing.py).

Split out of calibrate/run.py (which keeps the per-op shape sweeps and the command line).
"""
from __future__ import annotations

import csv
import math
import subprocess
import time
import traceback

import torch

from .kernels import attn_decode, attn_prefill, elementwise, gemm
from .timing import DEV, bench

TOL = {"bf16": 2e-2, "fp8": 6e-2}
# wall-time budget (s) per op for the full grid (the run must fit one 10-minute device call with
# room to spare); --quick uses the same caps
BUDGET = {"gemm": 90, "attn_prefill": 130, "attn_decode": 180, "elementwise": 130,
          # many-sequence grids (estimated 32 s / 52 s on an H200 after their single-sequence ops,
          # plus 17 s / 54 s of kernel compilation when run alone: calibrate.estimate)
          "attn_prefill_multi": 90, "attn_decode_multi": 130}


def log(*a):
    print(*a, flush=True)


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


def write_pass_rows(w: CsvOut, points, backends, got: dict, row_of) -> None:
    """One CSV row per (point, backend) that ``timing.run_passes`` timed, in grid order:
    ``row_of(point)`` gives the row's other columns (op, dtype, shape, flops, bytes)."""
    for pt in points:
        cols = None
        for be in backends:
            if be in got.get(pt, {}):
                cols = cols or row_of(pt)
                w.row(backend=be, time_s=f"{got[pt][be]:.6e}", **cols)


class Budget:
    def __init__(self, name, seconds):
        self.name, self.seconds, self.t0, self.skipped = name, seconds, time.time(), 0

    def over(self) -> bool:
        if time.time() - self.t0 > self.seconds:
            self.skipped += 1
            return True
        return False

    def left(self) -> float:
        return self.seconds - (time.time() - self.t0)


# ------------------------------------------------------------------------------ checks
CHECKS = {
    "gemm": lambda: gemm.check(),
    "attn_prefill": lambda: attn_prefill.check(),
    "attn_decode": lambda: attn_decode.check(),
    "elementwise": lambda: elementwise.check(),
}
CHECK_OF = {"attn_prefill_multi": "attn_prefill", "attn_decode_multi": "attn_decode"}  # same kernels


def run_checks(ops) -> dict:
    """Each op's kernel correctness check (a kernel shared by two ops is checked once)."""
    results = {}
    for op in ops:
        if CHECK_OF.get(op, op) in results:
            results[op] = results[CHECK_OF.get(op, op)]
            continue
        if op in CHECK_OF:
            results[op] = results[CHECK_OF[op]] = _check(CHECK_OF[op])
            continue
        results[op] = _check(op)
    return {op: results[op] for op in ops}


def _check(op) -> dict:
    t0 = time.time()
    try:
        torch.manual_seed(int(time.time() * 1e6) % 2**31)  # fresh inputs every run
        errs = CHECKS[op]()
        fails = {}
        for k, v in errs.items():
            tol = TOL["fp8"] if k.startswith("fp8") else TOL["bf16"]
            if not (isinstance(v, float) and math.isfinite(v) and v < tol):
                fails[k] = v
        r = {"passed": not fails, "rel_err": errs, "failed": fails, "seconds": round(time.time() - t0, 2)}
    except Exception as e:  # noqa: BLE001
        r = {"passed": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:],
             "seconds": round(time.time() - t0, 2)}
    worst = max(r.get("rel_err", {}).values(), default=float("nan"))
    log(f"[check] {op:13s} {'PASS' if r['passed'] else 'FAIL'}  worst rel err {worst:.3e}  "
        f"({r['seconds']} s) {r.get('error', '') or r.get('failed', '')}")
    return r


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

    def add(self, key, n: int = 1):
        self.items[key] = self.items.get(key, 0) + n
