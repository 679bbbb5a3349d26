"""Fleet benchmark: one simulated hour of 64 GPUs serving the Azure 2023 conversation trace.

Scenarios (issue #11): 16 replicas of llama-3.1-70b at TP4 on h100_sxm, and 64 replicas of
llama-3.1-8b at TP1 on h100_sxm, behind a least_outstanding router, each serving the trace
scaled to about 70 % of the fleet's capacity. Capacity is measured by the simulator itself
first: one replica replays the trace's lengths at 4x its expected capacity for 200 s of
arrivals and its served requests/s is taken as its capacity (a saturated run serves at
capacity). The trace (19,366 requests in an hour) is then superposed ``copies`` times
(``workload.trace.copies``: each copy shifted by a random offset, so the hour keeps its shape)
with copies = round(0.7 x capacity x replicas / trace rate).

Timed: the whole simulation in a child process (config, profiles, trace, ``sim.run`` and
``summary()``), its wall time and peak resident memory (ru_maxrss). Run: `make bench` or
`python bench/bench_fleet.py [--scenario 70b-tp4 8b-tp1] [--minutes 60]`. Prints one JSON
line per scenario; ``--copies N`` fixes the traffic instead of the load (26 copies: about
500,000 requests in the hour).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AZURE = ROOT.parent / "shared" / "traces" / "azure_llm_inference_2023" / "AzureLLMInferenceTrace_conv.csv"
TRACE_REQUESTS, TRACE_SPAN_S = 19366, 3501.7  # the conversation trace: rows, first to last arrival
SCENARIOS = {"70b-tp4": ("llama-3.1-70b", 4, 16), "8b-tp1": ("llama-3.1-8b", 1, 64)}
TARGET_LOAD = 0.7


def config(model: str, tp: int, replicas: int, trace: dict) -> dict:
    return {"model": model, "seed": 1, "engine": {"max_num_seqs": 256, "max_num_batched_tokens": 8192},
            "workload": {"trace": {"path": str(AZURE), "format": "azure", **trace}},
            "cluster": {"router": {"name": "least_outstanding"},
                        "pools": [{"name": "fleet", "num_replicas": replicas, "hardware": "h100_sxm",
                                   "parallelism": {"tp": tp}}]}}


def capacity(model: str, tp: int) -> float:
    """Requests/s one replica serves when saturated with the trace's lengths."""
    import sim
    rate = 4 * (20.0 if tp == 1 else 8.0)  # well past capacity (the probe reports what it served)
    cfg = config(model, tp, 1, {"target_rate_per_s": rate, "max_requests": int(rate * 200)})
    s = sim.run(cfg).summary()
    return s["requests_per_s"]


def child(scenario: str, copies: int, minutes: float) -> None:
    import sim
    model, tp, replicas = SCENARIOS[scenario]
    t0 = time.perf_counter()
    res = sim.run(config(model, tp, replicas, {"copies": copies, "end_s": minutes * 60.0}))
    s = res.summary()
    wall = time.perf_counter() - t0
    print(json.dumps({"wall_s": wall, "requests": s["num_requests"], "iterations": s["num_iterations"],
                      "requests_per_s": s["requests_per_s"], "ttft_p99_s": s["ttft_s"]["p99"],
                      "tpot_p50_s": s["tpot_s"]["p50"], "saturated": s["saturated"],
                      "kv_usage_frac_mean": s["kv_usage_frac_mean"],
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    ap.add_argument("--minutes", type=float, default=60.0, help="simulated minutes of the trace (default: the hour)")
    ap.add_argument("--load", type=float, default=TARGET_LOAD, help="target fraction of the fleet's capacity")
    ap.add_argument("--copies", type=int, default=None,
                    help="superpose this many copies of the trace instead (26: about 500,000 requests in the hour)")
    ap.add_argument("--child", nargs=3, metavar=("SCENARIO", "COPIES", "MINUTES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), float(args.child[2]))
        return
    if not AZURE.exists():
        sys.exit(f"bench_fleet: the Azure trace is not at {AZURE} (../shared/traces beside the checkout)")
    for sc in args.scenario:
        model, tp, replicas = SCENARIOS[sc]
        cap = capacity(model, tp)
        copies = args.copies or max(1, round(args.load * cap * replicas / (TRACE_REQUESTS / TRACE_SPAN_S)))
        out = subprocess.run([sys.executable, __file__, "--child", sc, str(copies), str(args.minutes)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps({"scenario": f"{replicas} x {model} TP{tp} on h100_sxm ({replicas * tp} GPUs), azure conv",
                          "capacity_req_per_s_per_replica": round(cap, 2), "copies": copies,
                          "offered_req_per_s": round(copies * TRACE_REQUESTS / TRACE_SPAN_S, 1),
                          "simulated_minutes": args.minutes, "requests": r["requests"],
                          "iterations": r["iterations"], "wall_s": round(r["wall_s"], 1),
                          "sim_requests_per_wall_s": round(r["requests"] / r["wall_s"], 1),
                          "peak_rss_gb": round(r["peak_rss_bytes"] / 1e9, 2),
                          "served_req_per_s": round(r["requests_per_s"], 1), "ttft_p99_s": r["ttft_p99_s"],
                          "tpot_p50_s": r["tpot_p50_s"], "kv_usage_frac_mean": r["kv_usage_frac_mean"],
                          "saturated": r["saturated"]}), flush=True)


if __name__ == "__main__":
    main()
