"""How the calibration runner times a kernel: bench() (one window: do_bench's method with the
host kept ahead of the GPU, and a choice of what happens to L2 before each timed call) and
run_passes() (several shuffled passes over an op's grid, fresh inputs each pass, per-point
median across passes, every window logged).

L2 before each timed call (``TIMING["flush"]``, the runner's ``--flush``):
  zero  256 MB zeroed (triton.testing.do_bench's method).  Leaves L2 full of dirty lines,
        whose write-back inside the timed call takes HBM bandwidth from a memory-bound kernel:
        on an H200 decode GEMMs timed so were 1.106x their time inside real steps, decode
        attention 1.081x, elementwise ops 1.10-1.13x (calibrate/data/h200_sxm/truth).
  read  256 MB read by a reduction (int32 -> one int64 sum): L2 holds clean lines of the
        buffer, so nothing of the timed kernel's is resident and nothing needs writing back
        (the default: decode GEMMs 0.972x, decode attention 0.97-0.99x of in-step time).
  none  nothing; callers pass ``rotation(footprint)`` copies of the inputs and each timed call
        uses the next copy, so a copy is reused only after ROTATE_L2_MULTIPLE x L2 of other
        inputs (a real step's weights and KV were last touched a whole layer ago).
The flush kernel runs before the call's start event in stream order, so its time is outside
the timed window in every mode.

Power state (``TIMING["soak_s"]``, the runner's ``--soak-ms``; off by default): a long prefill
step runs power-capped (SM ~1650 MHz under the H200's 700 W limit in calibrate/sustained.py,
against the 1980 MHz boost a short window starts at), and a compute-bound kernel's time scales
with the clock. With ``soak_s`` > 0, a window whose caller marks it compute-bound
(``bench(..., soak=True)``) holds the GPU with ``soak_s`` of large bf16 GEMMs instead of the
idle spin kernel before its timed calls, so they run in the power state they have inside such a
step; memory-bound kernels (decode) run at boost inside a step and keep the spin.

Ignores: L2 contents a real step leaves between kernels (the previous op's output is L2-hot
there); calibrate/instep.py compares these methods with times measured inside steps.
"""
from __future__ import annotations

import csv
import os
import random
import time
from typing import Callable, Hashable, Iterable

import torch

# CALIBRATE_DEVICE=cpu (with TRITON_INTERPRET=1) only exercises the pipeline on a CPU; the
# numbers it writes are meaningless.  Real runs use the default, cuda.
DEV = os.environ.get("CALIBRATE_DEVICE", "cuda")

# Window settings: warm-up and repetition time as do_bench takes them, capped in calls; --quick
# lowers them.  Ops timed in several passes use shorter windows (PASS_TIMING), one per pass.
# "flush": what happens to L2 before each timed call (module doc): "read", as the comparison
# inside real steps (calibrate/instep.py, H200 2026-12-01) showed; the runner's --flush sets it
TIMING = {"warmup_ms": 5, "rep_ms": 20, "max_warmup": 25, "max_reps": 100, "flush": "read", "soak_s": 0.0}
SOAK_GEMM = 8192            # the soak's bf16 matmul: SOAK_GEMM^3, ~1.4 ms on an H100/H200
# FLOPs per byte above which a bf16 kernel is compute-bound (the runner sets it from the measured
# matmul rate over the measured copy bandwidth; H200 datasheet: ~206); fp8 twice that
RIDGE_FLOP_PER_BYTE = 206.0


def compute_bound(flops: float, bytes_: float, dtype: str = "bf16") -> bool:
    """The kernel's ideal compute time exceeds its ideal memory time (worth a soak)."""
    return flops > RIDGE_FLOP_PER_BYTE * (2.0 if dtype == "fp8" else 1.0) * bytes_
FLUSH_MODES = ("zero", "read", "none")
FLUSH_BYTES = 256 * 10**6 if DEV == "cuda" else 10**6  # do_bench's 256 MB; 1 MB in the CPU smoke mode
L2_BYTES = 60 * 2**20       # the runner sets the device's (torch's L2_cache_size); H200: 60 MiB
ROTATE_L2_MULTIPLE = 4      # flush "none": distinct inputs between two uses of one copy, in L2 sizes
ROTATE_MAX_COPIES = 256     # below ~1 MB a kernel is launch-bound: its L2 hits cost nothing measurable
PASS_TIMING = {"rep_ms": 10, "max_reps": 50}
# passes over an op's whole grid (shuffled order, fresh inputs each pass; the per-point median
# across passes is kept): single-window runs showed isolated 2-4x slow points in decode and
# prefill on both GPUs, and a 3-window run that reused one point's inputs back to back kept some
# prefill and decode over many sequences (the *_multi grids) in as many passes as their
# single-sequence grids, unless the runner's time estimate says the call cannot hold them
PASSES = {"gemm": 1, "attn_prefill": 3, "attn_decode": 3, "elementwise": 5,
          "attn_prefill_multi": 3, "attn_decode_multi": 3}
# how an op's passes are combined per point: the median, or (elementwise) the mean of the passes
# less the highest and the lowest.  Elementwise kernels of 4-6 us took one of two levels
# ~0.4 us apart depending on where their inputs were allocated (neighbouring grid points
# alternated between them on both GPUs, one window per point), so a median of a few passes
# would still pick one level; the trimmed mean averages them and drops a stray window.
AGGREGATE = {"gemm": "median", "attn_prefill": "median", "attn_decode": "median",
             "elementwise": "trimmed_mean", "attn_prefill_multi": "median", "attn_decode_multi": "median"}
UNSTABLE_RATIO = 1.2        # points whose passes disagree by more (max/min) are counted per op
SHUFFLE_SEED = 20261123     # pass p visits the grid in random.Random(SHUFFLE_SEED + p) order
SPIN_CYCLES_PER_S = 2.0e9   # >= the SM clock (1.98 GHz max on H100/H200): a spin lasts >= asked


class Spread:
    """Per-op count of points whose passes disagreed (max/min > UNSTABLE_RATIO)."""

    def __init__(self):
        self.points, self.unstable, self.worst, self.passes = {}, {}, {}, {}

    def add(self, op: str, ts: list[float]) -> None:
        r = max(ts) / min(ts)
        self.points[op] = self.points.get(op, 0) + 1
        if r > UNSTABLE_RATIO:
            self.unstable[op] = self.unstable.get(op, 0) + 1
        self.worst[op] = max(self.worst.get(op, 1.0), r)

    def summary(self) -> dict:
        return {op: {"points": n, "passes": self.passes.get(op, PASSES[op]),
                     "unstable_points": self.unstable.get(op, 0),
                     "worst_max_over_min": round(self.worst[op], 3)} for op, n in self.points.items()}


class HostAhead:
    """What bench() saw of the host: timed calls whose start the GPU reached before the host had
    finished enqueuing them (dropped from the median), and windows retried because of them."""

    def __init__(self):
        self.windows = self.reps = self.late = self.retried = 0

    def summary(self) -> dict:
        return {"windows": self.windows, "timed_calls": self.reps, "late_calls_dropped": self.late,
                "windows_retried": self.retried}


SPREAD = Spread()
HOST = HostAhead()
PHASE_S = {"first_call": 0.0, "estimate": 0.0, "warmup": 0.0, "timed": 0.0, "retries_readout": 0.0}  # wall s
_FLUSH: dict = {}


def _spin(seconds: float) -> None:
    """Hold the GPU (a clock64 spin kernel) so that the host can enqueue ahead of it."""
    torch.cuda._sleep(int(max(seconds, 0.0) * SPIN_CYCLES_PER_S))


def _hold(seconds: float, soak: bool) -> None:
    """Hold the GPU for at least ``seconds`` while the host enqueues: the idle spin kernel, or
    (``soak``) large GEMMs for at least TIMING["soak_s"] (power state: module doc)."""
    if not soak:
        _spin(seconds)
        return
    if "soak" not in _FLUSH:
        a = torch.randn(SOAK_GEMM, SOAK_GEMM, device=DEV, dtype=torch.bfloat16)
        c = torch.empty(SOAK_GEMM, SOAK_GEMM, device=DEV, dtype=torch.bfloat16)
        torch.matmul(a, a, out=c)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(3):
            torch.matmul(a, a, out=c)
        e1.record()
        torch.cuda.synchronize()
        _FLUSH["soak"] = (a, c, e0.elapsed_time(e1) * 1e-3 / 3)
    a, c, per = _FLUSH["soak"]
    for _ in range(max(1, int(-(-max(seconds, TIMING["soak_s"]) // per)))):
        torch.matmul(a, a, out=c)


def _flusher(mode: str):
    """What runs before each timed call in flush mode ``mode`` (None for "none")."""
    if mode not in FLUSH_MODES:
        raise ValueError(f"flush mode {mode!r}; expected one of {FLUSH_MODES}")
    if mode == "none":
        return None
    if "buf" not in _FLUSH:  # the same 256 MB that triton.testing.do_bench zeroes before each call
        _FLUSH["buf"] = torch.zeros(FLUSH_BYTES // 4, dtype=torch.int32, device=DEV)
        _FLUSH["sum"] = torch.zeros((), dtype=torch.int64, device=DEV)
    buf, out = _FLUSH["buf"], _FLUSH["sum"]
    if mode == "zero":
        return buf.zero_
    # a full reduction reads every element (it cannot be skipped) and writes 8 bytes
    return lambda: torch.sum(buf, 0, dtype=torch.int64, out=out)


def rotation(footprint_bytes: float, mode: str | None = None) -> int:
    """Copies of its inputs a timed call should rotate through: 1 when the flush empties L2,
    else (mode "none") enough that ROTATE_L2_MULTIPLE x L2_BYTES of other copies are read
    between two uses of one copy (at most ROTATE_MAX_COPIES)."""
    if (mode or TIMING["flush"]) != "none":
        return 1
    need = ROTATE_L2_MULTIPLE * L2_BYTES / max(float(footprint_bytes), 1.0)
    return int(min(ROTATE_MAX_COPIES, max(1, -(-need // 1))))


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _trimmed_mean(xs: list[float]) -> float:
    s = sorted(xs)
    if len(s) >= 4:
        s = s[1:-1]
    return sum(s) / len(s)


def bench(fn, rep_ms: float | None = None, max_reps: int | None = None, flush: str | None = None,
          soak: bool = False) -> float:
    """Median device seconds of one call of fn, measured as triton.testing.do_bench measures it
    (a flush before each timed call, CUDA events around the call, warm-up first), but with the
    host kept ahead of the GPU: a spin kernel holds the GPU while the host enqueues the timed
    calls, and a call whose start event the GPU had already reached when the host finished
    enqueuing it (the GPU may have waited for the host inside the window) is dropped; if more
    than a tenth are, the window is retried with a longer spin.  A Triton launch costs 12-17 us
    of Python, so without this the windows of small Triton kernels (two launches for split
    decode) could measure the host.

    ``fn``: a callable, or a list of callables (the same op on copies of its inputs, see
    ``rotation``), called in turn.  ``flush``: "zero", "read" or "none" (module doc); None
    takes TIMING["flush"].  ``soak``: the call is compute-bound; with TIMING["soak_s"] > 0 its
    timed calls follow a soak of large GEMMs instead of the idle spin (module doc)."""
    soak = bool(soak) and TIMING["soak_s"] > 0
    fns = list(fn) if isinstance(fn, (list, tuple)) else [fn]
    nf = len(fns)
    flush_fn = _flusher(flush or TIMING["flush"])
    if DEV != "cuda":  # CPU smoke mode: exercise the calls and the flush, time one call
        fns[-1]()
        if flush_fn is not None:
            flush_fn()
        t0 = time.perf_counter()
        fns[0]()
        return time.perf_counter() - t0
    rep_ms = TIMING["rep_ms"] if rep_ms is None else rep_ms
    max_reps = TIMING["max_reps"] if max_reps is None else max_reps
    flush_fn = flush_fn or (lambda: None)
    ev = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
    w0 = time.perf_counter()
    fns[0]()  # compilation, allocations
    torch.cuda.synchronize()
    w1 = time.perf_counter()
    # one call (then, if short, five) behind a spin: GPU time per (flush + call), host time per call
    a, b = ev(), ev()
    est = host = 0.0
    k = 0
    for n in (1, 5):
        _spin(0.3e-3 + 2 * n * 100e-6)
        a.record()
        h0 = time.perf_counter()
        for _ in range(n):
            flush_fn()
            fns[k % nf]()
            k += 1
        host = (time.perf_counter() - h0) / n
        b.record()
        torch.cuda.synchronize()
        est = a.elapsed_time(b) * 1e-3 / n
        if est > 2e-3:
            break
    w2 = time.perf_counter()
    n_warm = max(1, min(TIMING["max_warmup"], int(TIMING["warmup_ms"] * 1e-3 / est)))
    n_rep = max(1, min(max_reps, int(rep_ms * 1e-3 / est)))
    for _ in range(n_warm):
        fns[k % nf]()
        k += 1
    starts = [ev() for _ in range(n_rep)]
    ends = [ev() for _ in range(n_rep)]
    w3 = time.perf_counter()
    host_rep = host + 10e-6  # plus two event records and a query per timed call
    lead = max(0.5e-3, n_rep * (1.3 * host_rep - 0.8 * est))
    late: set[int] = set()
    for attempt in range(3):
        _hold(lead, soak)
        late = set()
        for i in range(n_rep):
            flush_fn()          # before the start event: never inside the timed window
            starts[i].record()
            fns[k % nf]()
            k += 1
            ends[i].record()
            if starts[i].query():  # the GPU is already past this call's start
                late.add(i)
        torch.cuda.synchronize()
        if attempt == 0:
            w4 = time.perf_counter()
        if len(late) <= n_rep // 10 or attempt == 2:
            break
        HOST.retried += 1
        lead = 2 * lead + 2 * n_rep * host_rep
    keep = [i for i in range(n_rep) if i not in late] or list(range(n_rep))
    HOST.windows += 1
    HOST.reps += n_rep
    HOST.late += n_rep - len(keep)
    t = _median([starts[i].elapsed_time(ends[i]) * 1e-3 for i in keep])
    w5 = time.perf_counter()
    for key, dt in zip(PHASE_S, (w1 - w0, w2 - w1, w3 - w2, w4 - w3, w5 - w4)):
        PHASE_S[key] += dt
    return t


def bench_pass(fn, soak: bool = False) -> float:
    """One window of a multi-pass op (shorter: PASS_TIMING); ``fn`` and ``soak`` as in ``bench``."""
    return bench(fn, PASS_TIMING["rep_ms"], PASS_TIMING["max_reps"], soak=soak)


class WindowLog:
    """windows.csv: every timed window of the multi-pass ops (op, backend, shape, pass, time_s)."""

    COLUMNS = ["op", "backend", "shape", "pass", "time_s"]

    def __init__(self, path):
        self.f = open(path, "w", newline="")
        self.w = csv.writer(self.f)
        self.w.writerow(self.COLUMNS)

    def row(self, op, backend, shape, pass_, t):
        self.w.writerow([op, backend, shape, pass_, f"{t:.6e}"])

    def close(self):
        self.f.close()


def run_passes(op: str, points: list[Hashable], time_point: Callable[[Hashable, int], Iterable],
               budget, skips, windows: WindowLog | None, shape_str: Callable[[Hashable], str] = str,
               log: Callable = print) -> dict:
    """Time every point in PASSES[op] passes, each over the whole grid in a fresh shuffled order;
    ``time_point(point, pass)`` makes fresh inputs and yields (backend, seconds).  A pass starts
    only if 1.2x the last one (less its first calls, where kernels compile) fits in what is left
    of ``budget`` (so points have equal pass counts); points the budget cuts in the first pass are skipped.  Returns
    {point: {backend: seconds}} (AGGREGATE[op] of the passes) and records the spread of the passes in SPREAD."""
    n = PASSES[op]
    got: dict = {}
    done = 0
    for p in range(n):
        order = list(points)
        random.Random(SHUFFLE_SEED + p).shuffle(order)
        t0, fc0, n_win = time.time(), PHASE_S["first_call"], HOST.windows
        for i, pt in enumerate(order):
            if budget.over():
                skips.add(f"{op}_budget_pass{p}", len(order) - i)
                break
            for be, t in time_point(pt, p):
                got.setdefault(pt, {}).setdefault(be, []).append(t)
                if windows is not None:
                    windows.row(op, be, shape_str(pt), p, t)
        done = p + 1
        dt = time.time() - t0
        # the next pass costs this one less its first calls (kernel compilation happens in the
        # first pass), plus a few ms per window for first calls of compiled kernels
        nxt = dt - (PHASE_S["first_call"] - fc0) + 3e-3 * (HOST.windows - n_win)
        log(f"[{op}] pass {p + 1}/{n}: {len(order)} points in {dt:.0f} s (next pass ~{nxt:.0f} s)")
        if p + 1 < n and budget.left() < 1.2 * nxt:
            skips.add(f"{op}_passes_not_run", n - p - 1)
            break
    SPREAD.passes[op] = done
    agg = _trimmed_mean if AGGREGATE[op] == "trimmed_mean" else _median
    out = {}
    for pt, bes in got.items():
        for be, ts in bes.items():
            if len(ts) > 1:
                SPREAD.add(op, ts)
            out.setdefault(pt, {})[be] = agg(ts)
    return out
