"""Core speed benchmark: simulated requests and iterations per wall-second.

Scenario (issue #2): llama-3.1-8b on h100_sxm, 20k requests, Poisson arrivals, ShareGPT
prompt/output lengths from ../shared/traces (sampled as pairs). Timed: ``sim.run`` and
``summary()`` (config, profile and trace loading included; imports not). Run: `make bench` or
`python bench/bench_core.py [--requests N] [--rate R ...] [--repeat N]`. Prints one JSON line per rate.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import sim

SHAREGPT = Path(__file__).resolve().parents[2] / "shared" / "traces" / "sharegpt_8k_lengths" / \
    "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"


def config(n: int, rate: float, hardware: str = "h100_sxm") -> dict:
    if SHAREGPT.exists():
        workload = {"num_requests": n, "arrival": {"name": "poisson", "params": {"rate_per_s": rate}},
                    "trace": {"path": str(SHAREGPT), "format": "sharegpt"}}
    else:  # fallback with ShareGPT-like medians, stated in the output
        workload = {"num_requests": n, "arrival": {"name": "poisson", "params": {"rate_per_s": rate}},
                    "prompt_tokens": {"name": "lognormal", "params": {"median": 1730, "sigma": 0.9, "max": 8000}},
                    "output_tokens": {"name": "lognormal", "params": {"median": 415, "sigma": 0.6, "max": 2000}}}
    return {"model": "llama-3.1-8b", "hardware": hardware, "workload": workload, "seed": 1,
            "engine": {"max_num_seqs": 256, "max_num_batched_tokens": 8192}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--rate", type=float, nargs="+", default=[2.0, 4.0, 6.0])
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per rate; the median wall time is reported (this machine is noisy)")
    ap.add_argument("--hardware", default="h100_sxm",
                    help="profile name or YAML path (compare profiles in one sitting: the machine is noisy)")
    args = ap.parse_args()
    for rate in args.rate:
        cfg = config(args.requests, rate, args.hardware)
        walls = []
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            res = sim.run(cfg)  # the iteration frame is built on first access (below, untimed)
            s = res.summary()
            walls.append(time.perf_counter() - t0)
        wall = statistics.median(walls)
        print(json.dumps({"scenario": f"llama-3.1-8b/{args.hardware}/sharegpt", "lengths": "sharegpt" if SHAREGPT.exists() else "lognormal-fallback",
                          "rate_per_s": rate, "requests": args.requests, "wall_s": round(wall, 3),
                          "runs": len(walls), "wall_s_min_max": [round(min(walls), 3), round(max(walls), 3)],
                          "sim_requests_per_wall_s": round(args.requests / wall, 1),
                          "iterations": s["num_iterations"],
                          "iterations_per_wall_s": round(s["num_iterations"] / wall, 1),
                          "mean_batch": round(float(res.iterations["num_decode"].mean()), 1),
                          "saturated": s["saturated"], "ttft_p50_s": s["ttft_s"]["p50"]}))


if __name__ == "__main__":
    main()
