"""How the in-step and whole-step references time a step (calibrate/instep.py, wholestep.py,
sustained.py): per-op CUDA events inside an eager step with the host kept ahead of the GPU,
CUDA-graph replays, standalone windows of one op (three ways of leaving L2), kernel names, and
the provenance every part writes.

Models: an eager step whose every launch is already queued when the GPU reaches it (a spin
kernel holds the GPU while the host enqueues the whole step; a step whose start event the GPU
had passed when the host finished is redone with a longer spin and counted), so the time
between two events is the GPU time of the op between them, as in an engine step with no host
stalls.  Standalone windows are ``calibrate.timing.bench`` with ``flush`` zero / read / none;
with none the op cycles over copies of its inputs (weights included): >= 2x L2 in all and at
least the runner's ``timing.rotation`` count.
Ignores: the few hundred ns an event record adds between two kernels; overlap of consecutive
kernels (none without programmatic dependent launch).
"""
from __future__ import annotations

import datetime as _dt
import inspect
import itertools
import math
import socket
import statistics
import sys
import time

import torch

from . import timing
from .harness import log, nvsmi
from .stepref import BLOCK_SIZE, KVPool, Step
from .stepshape import parse_shape
from .timing import DEV

MAX_COPIES = 4096
L2_FALLBACK_BYTES = 50 * 2**20   # H100 SXM L2 (NVIDIA H100 whitepaper: 50 MB) if torch cannot say
BENCH_FLUSH = "flush" in inspect.signature(timing.bench).parameters


def dtype():
    """bf16 on a GPU; fp16 in the CPU smoke mode (the Triton interpreter's bf16 is wrong)."""
    return torch.bfloat16 if DEV == "cuda" else torch.float16


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def free_memory():
    if DEV == "cuda":
        torch.cuda.empty_cache()


def l2_bytes() -> int:
    """The device's L2 (also handed to ``timing.L2_BYTES``, as the runner does)."""
    if DEV != "cuda":
        return 1 << 20
    l2 = int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or L2_FALLBACK_BYTES)
    if hasattr(timing, "L2_BYTES"):
        timing.L2_BYTES = l2
    return l2


def pool_for(models, shapes, cap_bytes: float = 80e9) -> KVPool:
    """A KV pool (K and V, each of this many elements) big enough that every layer of every
    (model, shape) has its own region, capped by ``cap_bytes`` and by free GPU memory less
    the largest model's weights and a 25 GB reserve for activations; steps that need more share
    regions between layers (``Step.kv_distinct``)."""
    need = 0
    for md in models:
        for p, d in shapes:
            chunks, ctxs = parse_shape(p, d)
            per = (sum(n + q for n, q in chunks) + sum(-(-c // BLOCK_SIZE) * BLOCK_SIZE for c in ctxs)) * md.kv_size
            need = max(need, md.layers * (-(-per // 256) * 256))
    elems = need
    if DEV == "cuda":
        free, _ = torch.cuda.mem_get_info()
        weights = max(2 * (md.layers * sum(k * n for _, k, n in md.layer_gemms()) + 2 * md.vocab * md.hidden)
                      for md in models)
        avail = min(cap_bytes, free - weights - 25e9)
        elems = max(1 << 20, min(need, int(avail / 4)))   # K and V, 2 bytes each
    log(f"[pool] KV pool {2 * elems * 2 / 1e9:.1f} GB (largest step needs {2 * need * 2 / 1e9:.1f} GB)")
    return KVPool(elems, DEV, dtype())


def provenance(part: str, argv) -> dict:
    import triton
    if DEV == "cuda":
        p = torch.cuda.get_device_properties(0)
        dev = {"device_name": p.name, "num_sms": p.multi_processor_count, "memory_bytes": p.total_memory,
               "l2_cache_bytes": getattr(p, "L2_cache_size", None), "compute_capability": f"{p.major}.{p.minor}"}
    else:
        dev = {"device_name": "cpu-interpreter (numbers meaningless)"}
    return {"part": part, **dev, "nvidia_smi": nvsmi("name,driver_version,memory.total,power.limit,pstate"),
            "cuda_runtime": torch.version.cuda, "torch": torch.__version__, "triton": triton.__version__,
            "python": sys.version.split()[0], "hostname": socket.gethostname(),
            "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([sys.executable, "-m", f"calibrate.{part}"] + list(argv or sys.argv[1:])),
            "clocks_before": clocks(), "bench_flush_option": BENCH_FLUSH}


def clocks() -> str:
    return nvsmi("clocks.sm,clocks.mem,clocks.max.sm,power.draw,temperature.gpu")


# ------------------------------------------------------------------ in-step timing
def marks(step: Step) -> list[bool]:
    """After which ops an event is recorded: every op of TIMED layers (first, a third, two
    thirds, last) and of the per-step ops, and the last op of every other layer.  Per-op events
    in all layers would make a step of ~450 launches ~900 queued commands, and a stream holds
    about 1,000 before the host blocks (https://forums.developer.nvidia.com/t/
    cuda-stream-are-blocked-when-luanch-lots-of-kernels-1000/68937: launches slow to the kernel
    time after ~1,000 on one stream): the GPU would then catch up with the host inside the step."""
    layers = step.md.layers
    timed = {0, layers // 3, 2 * layers // 3, layers - 1}
    last = {}
    for i, op in enumerate(step.ops):
        if op.layer is not None:
            last[op.layer] = i
    ends = set(last.values())
    return [op.layer is None or op.layer in timed or i in ends for i, op in enumerate(step.ops)]


def time_ops(step: Step, reps: int) -> tuple[dict[int, list[float]], list[float], dict]:
    """Eager steps timed from inside: ({op index: GPU seconds in each of ``reps`` steps} for the
    ops an event pair brackets alone (``marks``), [whole-step seconds, first to last event, per
    rep], info: host enqueue seconds, spin, late retries / late reps kept), after one untimed
    step that measures the host."""
    mk = marks(step)
    idx = [i for i, m in enumerate(mk) if m]          # event k+1 is recorded after op idx[k]
    single = {k: idx[k] for k in range(len(idx)) if idx[k] - (idx[k - 1] if k else -1) == 1}
    samples: dict[int, list[float]] = {i: [] for i in single.values()}
    totals: list[float] = []
    if DEV != "cuda":  # pipeline smoke test: host wall time
        for _ in range(reps):
            t = [time.perf_counter()]
            step.run(lambda i: t.append(time.perf_counter()) if mk[i] else None)
            for k, i in single.items():
                samples[i].append(t[k + 1] - t[k])
            totals.append(t[-1] - t[0])
        return samples, totals, {"host_s": totals[0], "lead_s": 0.0, "late_retries": 0, "late_kept": 0,
                                 "events": len(idx) + 1}
    ev = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
    evs = [ev() for _ in range(len(idx) + 1)]
    pos = {i: k + 1 for k, i in enumerate(idx)}
    sync()
    h0 = time.perf_counter()
    evs[0].record()
    step.run(lambda i: evs[pos[i]].record() if mk[i] else None)
    host = time.perf_counter() - h0
    sync()
    lead = 1.5 * host + 2e-3
    retries = kept = 0
    for _ in range(reps):
        for attempt in range(3):
            evs = [ev() for _ in range(len(idx) + 1)]
            timing._spin(lead)
            evs[0].record()
            step.run(lambda i: evs[pos[i]].record() if mk[i] else None)
            late = evs[0].query()  # the GPU reached the step before the host had enqueued all of it
            sync()
            if not late:
                break
            retries += 1
            lead = 2 * lead + 2e-3
        kept += int(late)
        for k, i in single.items():
            samples[i].append(evs[k].elapsed_time(evs[k + 1]) * 1e-3)
        totals.append(evs[0].elapsed_time(evs[-1]) * 1e-3)
    return samples, totals, {"host_s": host, "lead_s": lead, "late_retries": retries, "late_kept": kept,
                             "events": len(idx) + 1}


def group_times(step: Step, samples: dict[int, list[float]], totals: list[float]) -> tuple[dict, float, dict]:
    """(median seconds per (name, shape) over reps and timed layers, median whole-step seconds
    -- the eager kernel sum: the step's kernels back to back plus the gaps between them --,
    launches per (name, shape) in the step)."""
    per: dict = {}
    count: dict = {}
    for i, op in enumerate(step.ops):
        count[op.key] = count.get(op.key, 0) + 1
        if i in samples:
            per.setdefault(op.key, []).extend(samples[i])
    return {k: statistics.median(v) for k, v in per.items()}, statistics.median(totals), count


def kernel_names(step: Step) -> dict[str, list[str]]:
    """Kernel names of the first layer's ops and the per-step ops (one profiled run of them,
    after a full run; kernels of an op = those launched inside its record_function range)."""
    from torch.profiler import ProfilerActivity, profile, record_function
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEV == "cuda" else [])
    env = step.env
    sel = [(i, op) for i, op in enumerate(step.ops) if op.layer in (None, 0)]
    with profile(activities=acts) as prof:
        for i, op in sel:
            with record_function(f"servesim_op_{i}"):
                r = op.fn(*step.args(op, env))
                if op.out is not None:
                    env[op.out] = r
        sync()

    def kern(e):
        names = [k.name for k in getattr(e, "kernels", [])]
        for c in getattr(e, "cpu_children", []):
            names += kern(c)
        return names
    out: dict[str, list[str]] = {}
    events = prof.events()
    for e in events:
        if e.name.startswith("servesim_op_"):
            op = step.ops[int(e.name[len("servesim_op_"):])]
            ks = out.setdefault(f"{op.name} {op.shape}", [])
            ks += [k[:160] for k in kern(e) if k[:160] not in ks]
    if DEV == "cuda" and not any(out.values()):  # could not attribute: all kernel names of the run
        dev = [e.name[:160] for e in events if "cuda" in str(getattr(e, "device_type", "")).lower()]
        out = {"_unattributed": sorted(set(dev))}
    return out


# ------------------------------------------------------------------ standalone windows
def copies_needed(nbytes: float, l2: int) -> int:
    """Copies of an op's inputs for flush "none": at least the runner's count
    (``timing.rotation``: ROTATE_L2_MULTIPLE x L2 between two uses of a copy, at most
    ROTATE_MAX_COPIES) and at least 2 x L2 in total, at most MAX_COPIES."""
    n = 1 if nbytes >= 2 * l2 else min(MAX_COPIES, math.ceil(2 * l2 / max(nbytes, 1)))
    if hasattr(timing, "rotation"):
        n = max(n, timing.rotation(nbytes, "none"))
    return n


def rotated(op, args: tuple, l2: int) -> list[tuple]:
    """Copies of ``args`` for flush "none" (``copies_needed``): tensors copied (one stacked
    copy per arg), ``op.keep`` args shared (big tables read sparsely), ``op.vary`` args varied."""
    nbytes = sum(a.numel() * a.element_size() for i, a in enumerate(args)
                 if torch.is_tensor(a) and i not in op.keep)
    n = copies_needed(nbytes, l2)
    if n == 1:
        return [args]
    cols = []
    for i, a in enumerate(args):
        if i in op.vary:
            cols.append(list(op.vary[i](a, n).unbind(0)))
        elif torch.is_tensor(a) and i not in op.keep:
            if a.is_contiguous():
                cols.append(list(a.unsqueeze(0).expand(n, *a.shape).clone().unbind(0)))
            else:
                cols.append([a.clone() for _ in range(n)])
        else:
            cols.append([a] * n)
    return list(zip(*cols))


def bench(fn, flush: str, soak: bool = False):
    """One ``calibrate.timing.bench`` window (as long as the runner's multi-pass windows,
    ``timing.PASS_TIMING``) with the given flush, or None if the runner has no ``flush`` option
    (then only "zero", its fixed behaviour, is measured)."""
    rep_ms, max_reps = timing.PASS_TIMING["rep_ms"], timing.PASS_TIMING["max_reps"]
    if BENCH_FLUSH:
        return timing.bench(fn, rep_ms, max_reps, flush=flush, soak=soak)
    if flush == "zero" or DEV != "cuda":  # the CPU smoke mode times wall clock: flush is moot
        return timing.bench(fn, rep_ms, max_reps)
    return None


def standalone(op, args: tuple, l2: int, calib: bool = False,
               methods=("bench_zero", "bench_read", "bench_rotate", "calib_zero")) -> dict[str, float]:
    """Seconds of one launch of ``op`` alone: bench_zero / bench_read (L2 flushed by zeroing,
    resp. reading, 256 MB before each call), bench_soak (read flush, and the timed calls follow
    ``timing.TIMING["soak_s"]`` of large GEMMs instead of the idle spin: the power state of a
    long prefill step), bench_rotate (no flush; inputs rotated over ``rotated`` copies);
    calib_zero for vendor GEMMs: torch.matmul on a [K, N] weight with the zero flush, the
    calibration runner's exact call. ``methods``: which of these to measure."""
    out = {}
    fn = lambda: op.fn(*args)  # noqa: E731
    for m, fl in (("bench_zero", "zero"), ("bench_read", "read")):
        if m in methods:
            out[m] = bench(fn, fl)
    if "bench_soak" in methods:
        out["bench_soak"] = bench(fn, "read", soak=True)
    if "bench_rotate" in methods:
        copies = rotated(op, args, l2)
        it = itertools.cycle(copies)
        out["bench_rotate"] = bench(lambda: op.fn(*next(it)), "none")
        out["rotate_copies"] = len(copies)
    if calib and "calib_zero" in methods:
        a, wkn = args[0], args[1].t().contiguous()
        c = a.new_empty(a.shape[0], wkn.shape[1])
        out["calib_zero"] = bench(lambda: torch.matmul(a, wkn, out=c), "zero")
        del wkn, c
    return out


# ------------------------------------------------------------------ graphs
def make_graph(step: Step, side_warmup: bool = True):
    """The step captured in a CUDA graph (after eager runs on the default stream; ``side_warmup``:
    one more on a side stream first, as torch's docs advise for capture)."""
    if side_warmup:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            step.run()
        torch.cuda.current_stream().wait_stream(s)
        sync()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step.run()
    return g


def graph_time(step: Step, replays: int, side_warmup: bool = True) -> tuple[float, list[float]]:
    """Median GPU seconds of one CUDA-graph replay of the whole step (one warm-up replay, then
    ``replays`` timed ones, event pairs around each), and the replay times."""
    if DEV != "cuda":
        ts = []
        for _ in range(min(replays, 2)):
            t0 = time.perf_counter()
            step.run()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts), ts
    g = make_graph(step, side_warmup)
    g.replay()
    sync()
    a = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    b = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    for i in range(replays):
        a[i].record()
        g.replay()
        b[i].record()
    sync()
    ts = [x.elapsed_time(y) * 1e-3 for x, y in zip(a, b)]
    del g
    step.env = {}
    return statistics.median(ts), ts


def deadline(seconds: float):
    t0 = time.time()
    return lambda: seconds - (time.time() - t0)


# ------------------------------------------------------------------ the per-(model, backend) loop
def for_each_combo(models, backends, est: dict, left, shapes_for, make_run, prov: dict, tag: str) -> None:
    """The loop instep and wholestep share: each (model, backend) in turn, with its share of the
    time ``left()`` in proportion to the estimates ``est["<model>/<backend>"]``; its weights and
    (vendor) attention are built, then ``make_run(md, be, w, va)`` is called once and what it
    returns is called as ``run(prefill, decode)`` for each shape of ``shapes_for(md, be)`` until
    the share is spent. A failure (setup or one shape) is logged with its traceback, recorded in
    ``prov["skipped"]`` and the loop goes on; garbage collection is off inside, memory freed
    between shapes that failed and after each combination."""
    import gc
    import traceback
    from .stepattn import VendorAttn
    from .stepref import Weights
    from .stepshape import step_str
    combos = [(md, be) for md in models for be in backends]
    wts = [est.get(f"{m.name}/{b}", 1.0) for m, b in combos]
    gc.disable()
    for ci, (md, be) in enumerate(combos):
        share, t0 = left() * wts[ci] / sum(wts[ci:]), time.time()
        try:
            w = Weights(md, be, DEV, dtype())
            va = VendorAttn(DEV, dtype(), md.heads, md.kv_heads, md.head_dim) if be == "vendor" else None
            if va is not None:
                prov["vendor_attention"][md.name] = va.info
                log(f"[{tag}] vendor attention for {md.name}: prefill {va.prefill_name}, decode {va.decode_name}")
        except Exception as e:  # noqa: BLE001
            log(traceback.format_exc())
            prov["skipped"].append(f"{md.name}/{be}: setup failed: {type(e).__name__}: {str(e)[:300]}")
            continue
        run = make_run(md, be, w, va)
        for pf, dc in shapes_for(md, be):
            if time.time() - t0 > share:
                prov["skipped"].append(f"{md.name}/{be} {step_str(pf, dc)}: budget")
                continue
            try:
                run(pf, dc)
            except Exception as e:  # noqa: BLE001
                log(traceback.format_exc()[-3000:])
                prov["skipped"].append(f"{md.name}/{be} {step_str(pf, dc)}: {type(e).__name__}: {str(e)[:300]}")
                gc.collect()
                free_memory()
        del w, va, run
        gc.collect()
        free_memory()
    gc.enable()
