"""Queueing-theory check: batch size 1, one-token outputs, constant step = M/D/1."""
import numpy as np
from scipy import stats

import sim


def test_md1_mean_wait_matches_pollaczek_khinchine():
    D, lam, n = 0.01, 70.0, 40000  # rho = 0.7
    cfg = {"model": "llama-3.1-8b", "hardware": "h100_sxm", "seed": 11,
           "cost_model": {"name": "constant", "params": {"step_s": D}},
           "engine": {"max_num_seqs": 1, "max_num_batched_tokens": 64},
           "workload": {"num_requests": n, "arrival": {"name": "poisson", "params": {"rate_per_s": lam}},
                        "prompt_tokens": {"name": "fixed", "params": {"value": 16}},
                        "output_tokens": {"name": "fixed", "params": {"value": 1}}}}
    req = sim.run(cfg).requests
    wait = req["queue_s"].to_numpy()[n // 10:]  # drop warm-up
    rho = lam * D
    expected = rho * D / (2 * (1 - rho))  # Pollaczek-Khinchine for deterministic service
    batches = np.array_split(wait, 30)  # batch means: waits are autocorrelated
    means = np.array([b.mean() for b in batches])
    half = stats.t.ppf(0.995, len(means) - 1) * means.std(ddof=1) / np.sqrt(len(means))
    assert abs(means.mean() - expected) < half, (means.mean(), expected, half)
    assert np.allclose(req["ttft_s"] - req["queue_s"], D)  # service time is exactly one step
