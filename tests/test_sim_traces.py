"""Simulations driven by traces: timestamps and lengths from the file, or lengths only."""
import pytest

import sim
from tests.conftest import ROOT


def test_timed_generic_trace_drives_arrivals_and_lengths(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("ts,inp,out\n0.0,100,5\n0.5,200,3\n1.25,50,1\n")
    cfg = {"model": "qwen2.5-0.5b", "hardware": "h100_sxm", "seed": 1,
           "workload": {"trace": {"path": str(p), "format": "csv",
                                  "columns": {"arrival_s": "ts", "prompt_tokens": "inp", "output_tokens": "out"}}}}
    req = sim.run(cfg).requests
    assert req["arrival_s"].tolist() == [0.0, 0.5, 1.25]
    assert req["prompt_tokens"].tolist() == [100, 200, 50] and req["output_tokens"].tolist() == [5, 3, 1]


@pytest.mark.shared
def test_shipped_trace_workloads_run(shared_traces):
    for name in ("trace_azure_conv.yaml", "trace_sharegpt_poisson.yaml"):
        res = sim.run(ROOT / "workloads" / name, workload__num_requests=150)
        s = res.summary()
        assert s["num_completed"] + s["num_rejected"] == 150
