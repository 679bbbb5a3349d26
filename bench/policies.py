"""The same workload under each engine policy: the table in README "## Engine policies".

Scenario: Llama 3.1 8B on one H100 (roofline cost model), KV cache held to ~58k tokens
(``gpu_memory_utilization: 0.3``) so that memory is under pressure, long and varied prompts
(lognormal, median 1,500 tokens, up to 6,000), output lengths uniform in 16..512, Poisson
arrivals above what the replica can serve, so that throughput measures capacity. Contiguous-reservation rows reserve the
prompt plus ``max_tokens: 512`` (the workload's largest output) per request.

Run: ``python bench/policies.py [--requests N] [--rate R]``; prints a Markdown table and,
with ``--json``, one JSON line per row.
"""
from __future__ import annotations

import argparse
import json

import sim

ROWS = [  # (label, engine overrides)
    ("static", {"preset": "static", "max_tokens": 512}),
    ("orca", {"preset": "orca", "max_tokens": 512}),
    ("vllm-v0", {"preset": "vllm-v0"}),
    ("vllm-v1", {"preset": "vllm-v1"}),
    ("sarathi-serve (512)", {"preset": "sarathi-serve"}),
    ("vllm-v1, contiguous KV", {"preset": "vllm-v1", "kv_mode": "contiguous", "max_tokens": 512}),
    ("vllm-v1, swap", {"preset": "vllm-v1", "preemption": "swap"}),
    ("vllm-v0, swap", {"preset": "vllm-v0", "preemption": "swap"}),
    ("vllm-v1, shortest-prompt-first", {"preset": "vllm-v1", "scheduling_policy": "shortest-prompt-first"}),
    ("vllm-v1, CUDA graphs", {"preset": "vllm-v1", "cuda_graphs": True}),
]


def config(n: int, rate: float, engine: dict) -> dict:
    return {"model": "llama-3.1-8b", "hardware": "h100_sxm", "seed": 3,
            "engine": {"max_num_seqs": 128, "max_model_len": 8192, "activation_reserve_bytes": 2.0e9,
                       "gpu_memory_utilization": 0.3, **engine},
            "workload": {"num_requests": n, "arrival": {"name": "poisson", "params": {"rate_per_s": rate}},
                         "prompt_tokens": {"name": "lognormal", "params": {"median": 1500, "sigma": 0.6, "max": 6000}},
                         "output_tokens": {"name": "uniform", "params": {"low": 16, "high": 512}}}}


def measure(n: int = 600, rate: float = 12.0, rows=ROWS) -> list[dict]:
    """One dict per row: throughput, TTFT/TPOT p50/p99, KV use, concurrency, preemptions, swaps."""
    out = []
    for label, engine in rows:
        res = sim.run(config(n, rate, engine))
        s, it = res.summary(), res.iterations
        out.append({"policy": label, "output_tok_per_s": s["output_tokens_per_s"],
                    "ttft_p50_s": s["ttft_s"]["p50"], "ttft_p99_s": s["ttft_s"]["p99"],
                    "tpot_p50_s": s["tpot_s"]["p50"], "tpot_p99_s": s["tpot_s"]["p99"], "itl_p99_s": s["itl_s"]["p99"],
                    "kv_use_mean": s["kv_usage_frac_mean"], "max_running": int(it["num_running"].max()),
                    "mean_running": float((it["num_running"] * it["step_s"]).sum() / it["step_s"].sum()),
                    "preemptions": s["num_preemptions"], "swap_gb": float(it["swap_bytes"].sum()) / 1e9,
                    "kv_tokens": res.info["kv_capacity_tokens"], "completed": s["num_completed"],
                    "rejected": s["num_rejected"]})
    return out


def markdown(rows: list[dict]) -> str:
    head = ("| policy | output tok/s | TTFT p50 / p99 (s) | TPOT p50 / p99 (ms) | ITL p99 (ms) | KV use | running mean / max "
            "| preemptions | swapped GB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['output_tok_per_s']:.0f} | {r['ttft_p50_s']:.2f} / {r['ttft_p99_s']:.2f} "
                     f"| {r['tpot_p50_s'] * 1e3:.1f} / {r['tpot_p99_s'] * 1e3:.1f} | {r['itl_p99_s'] * 1e3:.0f} "
                     f"| {r['kv_use_mean']:.0%} "
                     f"| {r['mean_running']:.0f} / {r['max_running']} | {r['preemptions']} | {r['swap_gb']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--rate", type=float, default=12.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = measure(args.requests, args.rate)
    print(f"llama-3.1-8b / h100_sxm, {args.requests} requests at {args.rate}/s, "
          f"KV cache {rows[0]['kv_tokens']} tokens\n")
    print(markdown(rows))
    if args.json:
        for r in rows:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
