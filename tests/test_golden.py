"""Golden scenario: the README's example at 300 requests; summary must not drift.

Regenerate after an intended change with ``UPDATE_GOLDEN=1 pytest tests/test_golden.py``
and explain the change in the commit.
"""
import json
import os

import pytest

import sim
from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "golden" / "default_300.json"


def _summary():
    return sim.run(ROOT / "workloads" / "default.yaml", workload__num_requests=300).summary()


def test_golden_default_scenario():
    s = _summary()
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(s, indent=2, sort_keys=True) + "\n")
    gold = json.loads(GOLDEN.read_text())
    _same(s, gold, "summary")


def _same(got, want, where: str) -> None:
    """Equal keys all the way down; floats to 1e-9 relative."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (where, sorted(set(got) ^ set(want)))
        for k, v in want.items():
            _same(got[k], v, f"{where}.{k}")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9), where
    else:
        assert got == want, where


def test_summary_keys_and_sanity():
    s = sim.run(ROOT / "workloads" / "default.yaml", workload__num_requests=300,
                slo={"ttft_s": 0.05, "tpot_s": 0.02}).summary()
    for k in ("num_requests", "num_completed", "duration_s", "ttft_s", "tpot_s", "itl_s", "e2e_s",
              "output_tokens_per_s", "requests_per_s", "num_preemptions", "kv_usage_frac_mean", "saturated",
              "goodput_requests_per_s"):
        assert k in s
    for k in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        assert set(s[k]) == {"mean", "p50", "p90", "p99"}
        assert s[k]["p50"] <= s[k]["p90"] <= s[k]["p99"]
    assert s["num_completed"] == 300 and not s["saturated"]
    assert s["output_tokens_per_s"] == pytest.approx(300 * 128 / s["duration_s"])
    assert 0 < s["goodput_requests_per_s"] <= s["requests_per_s"]
    # a light load is nearly unqueued: TTFT is about one 512-token prefill step
    assert s["ttft_s"]["p50"] < 0.05


def test_overload_is_flagged_saturated():
    s = sim.run(ROOT / "workloads" / "default.yaml", workload__num_requests=1500,
                **{"workload.arrival": {"name": "poisson", "params": {"rate_per_s": 200}}}).summary()
    assert s["saturated"]
