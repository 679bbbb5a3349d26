"""The README's cluster studies, as markdown tables (measured by running the simulator).

1. "8 H100s for Llama-3.1-8B": 8 x TP1, 4 x TP2, 2 x TP4 and 1 x TP8 on the same traffic
   (workloads/cluster_8xh100_8b.yaml: 10 minutes of the Azure 2023 conversation trace
   superposed ``copies`` times, least_outstanding router, CUDA graphs), at two loads.
2. Llama-3.1-70B on 4 x H100 at TP4 against 2 x H200 at TP2 (one replica each; same
   price basis as the profiles), over a rate sweep of the trace's lengths and arrival shape
   (``target_rate_per_s``), 10 minutes of arrivals per rate.

Run: ``python bench/cluster_studies.py [--study 8xh100 70b]`` (a few minutes).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import sim

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = ROOT / "workloads" / "cluster_8xh100_8b.yaml"
AZURE = ROOT.parent / "shared" / "traces" / "azure_llm_inference_2023" / "AzureLLMInferenceTrace_conv.csv"


def _ms(x) -> str:
    return "-" if x is None else f"{x * 1e3:,.1f}"


def _row(label: str, s: dict) -> str:
    t, o = s["ttft_s"], s["tpot_s"]
    return (f"| {label} | {s['output_tokens_per_s']:,.0f} | {s['requests_per_s']:.1f} | {_ms(t['p50'])} / {_ms(t['p99'])} | "
            f"{_ms(o['p50'])} / {_ms(o['p99'])} | ${s['cost_per_million_output_tokens']:.3f} | "
            f"{'yes' if s['saturated'] else 'no'} |")


HEAD = ("| layout | output tok/s | req/s | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) | $ per M output tokens | saturated |\n"
        "|---|---:|---:|---:|---:|---:|---|")


def eight_h100s() -> None:
    for copies in (4, 12):
        rows = []
        for n, tp in ((8, 1), (4, 2), (2, 4), (1, 8)):
            cluster = {"router": {"name": "least_outstanding"},
                       "pools": [{"name": "h100", "num_replicas": n, "parallelism": {"tp": tp}}]}
            res = sim.run(WORKLOAD, cluster=cluster, workload__trace__copies=copies)
            rows.append(_row(f"{n} x TP{tp}", res.summary()))
        rq = res.requests
        print(f"\n{copies} copies of the trace: {len(rq):,} requests in "
              f"{rq['arrival_s'].max() / 60:.0f} minutes ({len(rq) / rq['arrival_s'].max():.1f} req/s offered):\n")
        print(HEAD)
        print("\n".join(rows), flush=True)


def seventy_b() -> None:
    print("\nllama-3.1-70b, one replica, Azure conversation lengths and arrival shape, 10 minutes per rate:\n")
    print(HEAD.replace("| layout |", "| GPUs, rate |"))
    for hw, tp in (("h100_sxm", 4), ("h200_sxm", 2)):
        for rate in (1, 2, 4, 6, 8):
            cfg = {"model": "llama-3.1-70b", "hardware": hw, "parallelism": {"tp": tp}, "seed": 1,
                   "engine": {"max_num_seqs": 256, "max_num_batched_tokens": 8192, "cuda_graphs": True},
                   "workload": {"trace": {"path": str(AZURE), "format": "azure", "target_rate_per_s": rate,
                                          "max_requests": rate * 600}}}
            s = sim.run(cfg).summary()
            print(_row(f"{tp} x {hw} (TP{tp}), {rate} req/s", s), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", nargs="+", default=["8xh100", "70b"], choices=["8xh100", "70b"])
    args = ap.parse_args()
    if "8xh100" in args.study:
        eight_h100s()
    if "70b" in args.study:
        seventy_b()


if __name__ == "__main__":
    main()
