"""Sustained clocks: does the GPU hold its clocks through a long prefill-heavy run, and does the
step time drift with them?

  python -m calibrate.sustained --out DIR [--seconds 60] [--quick] [--tiny]

A CUDA graph of one llama-3.1-8b prefill step of 8192 tokens (vendor backend, calibrate/
stepref.py) is replayed back to back for ``--seconds`` (at most QUEUE replays in flight), each
replay timed with an event pair, while ``nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,
power.draw,temperature.gpu,clocks_throttle_reasons.active -lms 100`` samples the GPU in a
background process (clocks_event_reasons.active if the driver no longer knows the old name).
Clocks and power limits are never changed.

Writes DIR/sustained_clocks.csv (time_s,sm_mhz,mem_mhz,power_w,temp_c,throttle), DIR/
sustained_steps.csv (t_s,step_s; thinned to MAX_STEP_ROWS) and DIR/sustained_provenance.json,
and prints the median step time and SM clock of the first 10 s and of the last 20 s.  Times of
both CSVs are seconds since the first replay was enqueued (host clock; nvidia-smi's timestamps,
local time, are converted to it).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import threading
import time

QUERY = "timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,{reasons}"
REASONS = ("clocks_throttle_reasons.active", "clocks_event_reasons.active")
CLOCK_COLUMNS = ["time_s", "sm_mhz", "mem_mhz", "power_w", "temp_c", "throttle"]
STEP_COLUMNS = ["t_s", "step_s"]
QUEUE = 8
MAX_STEP_ROWS = 5000
FIRST_S, LAST_S = 10.0, 20.0


def log(*a):
    print(*a, flush=True)


def _num(x: str):
    try:
        return float(x)
    except ValueError:
        return x.strip()


def parse_smi_line(line: str, t0: _dt.datetime, received_s: float) -> dict | None:
    """One ``--format=csv,noheader,nounits`` line -> a sustained_clocks.csv row (time from the
    line's timestamp relative to ``t0``, or ``received_s`` if the timestamp does not parse)."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != 6:
        return None
    try:
        t = (_dt.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f") - t0).total_seconds()
    except ValueError:
        t = received_s
    return dict(zip(CLOCK_COLUMNS, [round(t, 3)] + [_num(p) for p in parts[1:5]] + [parts[5]]))


def summarize(steps: list[tuple[float, float]], clocks: list[dict], total_s: float) -> dict:
    """Median step seconds and SM MHz over the first FIRST_S and the last LAST_S seconds."""
    def med(xs):
        return statistics.median(xs) if xs else None
    first = [s for t, s in steps if t < FIRST_S]
    last = [s for t, s in steps if t >= total_s - LAST_S]
    sm = lambda lo, hi: [c["sm_mhz"] for c in clocks if lo <= c["time_s"] < hi and isinstance(c["sm_mhz"], float)]  # noqa: E731
    out = {"replays": len(steps), "seconds": total_s,
           "first_step_s": med(first), "last_step_s": med(last),
           "first_sm_mhz": med(sm(0.0, FIRST_S)), "last_sm_mhz": med(sm(total_s - LAST_S, total_s + 1.0))}
    if out["first_step_s"] and out["last_step_s"]:
        out["last_over_first"] = out["last_step_s"] / out["first_step_s"]
    return out


class SmiSampler:
    """nvidia-smi -lms in a background process; lines collected by a reader thread."""

    def __init__(self, period_ms: int = 100):
        self.lines: list[tuple[float, str]] = []
        self.proc = None
        self.error = None
        self.query = None
        for reasons in REASONS:
            q = QUERY.format(reasons=reasons)
            for ident in _smi_ids():
                cmd = ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader,nounits"]
                cmd += ["-i", ident] if ident else []
                try:
                    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
                except Exception as e:  # noqa: BLE001  (no nvidia-smi: CPU smoke mode)
                    self.error = f"{type(e).__name__}: {e}"
                    return
                first = r.stdout.strip().splitlines()[:1]
                if r.returncode == 0 and first and parse_smi_line(first[0], _dt.datetime.now(), 0.0):
                    self.query, self.cmd = q, cmd + ["-lms", str(period_ms)]
                    return
                self.error = (r.stdout + r.stderr).strip()[:300]

    def start(self, t0_host: float) -> None:
        if self.query is None:
            return
        self.t0_host = t0_host
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.time() - self.t0_host, line.strip()))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.thread.join(timeout=5)


def _smi_ids() -> list[str | None]:
    """nvidia-smi -i candidates for the GPU torch uses: its UUID, CUDA_VISIBLE_DEVICES's first
    entry, then none (every GPU; a one-GPU machine)."""
    out = []
    try:
        import torch
        u = str(torch.cuda.get_device_properties(0).uuid)
        out.append(u if u.startswith("GPU-") else f"GPU-{u}")
    except Exception:  # noqa: BLE001
        pass
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if cvd:
        out.append(cvd)
    return out + [None]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--quick", action="store_true", help="at most 10 s")
    p.add_argument("--tiny", action="store_true", help="tiny model, eager, a few seconds (CPU smoke test)")
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--prefill", default="8192x1")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    import torch

    from .stepattn import VendorAttn
    from .stepref import Step, Weights
    from .stepshape import step_model
    from .steptime import clocks, dtype, make_graph, pool_for, provenance, sync
    from .timing import DEV
    t_start = time.time()
    seconds = min(args.seconds, 10.0) if args.quick else args.seconds
    if args.tiny:
        seconds = min(seconds, 3.0)
    md = step_model("tiny-llama" if args.tiny else args.model)
    pf = "24x1" if args.tiny else args.prefill
    prov = provenance("sustained", argv)
    prov.update(model=md.name, prefill=pf, backend="vendor", seconds=seconds, queue=QUEUE)
    w = Weights(md, "vendor", DEV, dtype())
    va = VendorAttn(DEV, dtype(), md.heads, md.kv_heads, md.head_dim)
    prov["vendor_attention"] = va.info
    step = Step(md, w, pf, "", pool_for([md], [(pf, "")]), va)
    step.run()
    sync()
    g = make_graph(step) if DEV == "cuda" else None
    if g is not None:
        g.replay()
        sync()
    sampler = SmiSampler()
    prov["nvidia_smi_query"], prov["nvidia_smi_error"] = sampler.query, sampler.error
    t0_dt, t0 = _dt.datetime.now(), time.time()
    sampler.start(t0)
    steps: list[tuple[float, float]] = []
    if g is not None:
        ev = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
        a, b = [], []
        while time.time() - t0 < seconds:
            a.append(ev())
            b.append(ev())
            a[-1].record()
            g.replay()
            b[-1].record()
            if len(b) > QUEUE:
                b[-1 - QUEUE].synchronize()
        sync()
        steps = [(a[0].elapsed_time(x) * 1e-3, x.elapsed_time(y) * 1e-3) for x, y in zip(a, b)]
    else:  # CPU smoke mode: eager steps, host time
        while time.time() - t0 < seconds:
            h = time.time()
            step.run()
            steps.append((h - t0, time.time() - h))
    total = time.time() - t0
    time.sleep(0.3)
    sampler.stop()
    rows = [r for r in (parse_smi_line(ln, t0_dt, s) for s, ln in sampler.lines) if r is not None]
    with open(os.path.join(args.out, "sustained_clocks.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=CLOCK_COLUMNS)
        wr.writeheader()
        wr.writerows(rows)
    keep = steps[::max(1, -(-len(steps) // MAX_STEP_ROWS))]
    with open(os.path.join(args.out, "sustained_steps.csv"), "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(STEP_COLUMNS)
        wr.writerows([(f"{t:.4f}", f"{s:.6e}") for t, s in keep])
    summ = summarize(steps, rows, total)
    prov.update(summary=summ, clock_samples=len(rows), step_rows_written=len(keep), clocks_after=clocks(),
                wall_time_s=round(time.time() - t_start, 1))
    with open(os.path.join(args.out, "sustained_provenance.json"), "w") as f:
        json.dump(prov, f, indent=1, default=str)
    fmt = lambda x, k=1.0, u="": "-" if x is None else f"{x * k:.2f}{u}"  # noqa: E731
    log(f"[sustained] {md.name} {pf}: {summ['replays']} replays in {total:.0f} s; first {FIRST_S:.0f} s: step "
        f"{fmt(summ['first_step_s'], 1e3, ' ms')}, SM {fmt(summ['first_sm_mhz'], 1, ' MHz')}; last {LAST_S:.0f} s: "
        f"step {fmt(summ['last_step_s'], 1e3, ' ms')}, SM {fmt(summ['last_sm_mhz'], 1, ' MHz')}; "
        f"{len(rows)} clock samples {'' if sampler.query else '(nvidia-smi: ' + str(sampler.error) + ')'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
