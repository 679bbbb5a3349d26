"""Shared fixtures: small configs and the location of ../shared/traces."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_TRACES = ROOT.parent / "shared" / "traces"


def small_config(**over) -> dict:
    """A fast scenario (a few hundred requests, 8B on H100) as a plain mapping."""
    cfg = {"model": "llama-3.1-8b", "hardware": "h100_sxm", "seed": 7,
           "engine": {"max_num_seqs": 32, "max_num_batched_tokens": 2048, "block_size_tokens": 16},
           "workload": {"num_requests": 200, "arrival": {"name": "poisson", "params": {"rate_per_s": 4}},
                        "prompt_tokens": {"name": "uniform", "params": {"low": 16, "high": 1500}},
                        "output_tokens": {"name": "uniform", "params": {"low": 1, "high": 300}}}}
    for k, v in over.items():
        node = cfg
        parts = k.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return cfg


@pytest.fixture
def shared_traces() -> Path:
    if not SHARED_TRACES.exists():
        pytest.skip(f"../shared/traces not found at {SHARED_TRACES} (the shared data folder sits beside the checkout)")
    return SHARED_TRACES
