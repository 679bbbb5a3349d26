"""Iteration records: stepped rows and fast-forwarded runs merge into one frame in
(replica, start) order, stepped rows first on a tie, with exact values and dtypes."""
import pytest
import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.cost.base import BatchShape, StepTime
from sim.metrics.records import ITERATION_COLUMNS, Recorder


def _reference(rec: Recorder, step_rows: list[dict], run_rows: list[dict]) -> pd.DataFrame:
    """Every row built naively, then a stable sort by (replica, start_s)."""
    df = pd.DataFrame(step_rows + run_rows, columns=ITERATION_COLUMNS).fillna(0)
    df = df.sort_values(["replica", "start_s"], kind="stable").reset_index(drop=True)
    return df


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 1), st.integers(0, 6), st.integers(1, 4), st.integers(1, 9)),
                min_size=1, max_size=25))
def test_merge_of_steps_and_runs_matches_a_stable_sort(events):
    rec = Recorder(kv_blocks_total=100)
    step_rows, run_rows = [], []
    # as a simulation records them: in time order (integer starts: plenty of ties)
    for is_run, replica, start, k, n in sorted(events, key=lambda e: e[2]):
        st_ = StepTime(total_s=0.5, gemm_s=0.1, attn_s=0.2, other_s=0.1, host_s=0.1)
        if is_run:
            starts = [float(start + j) for j in range(k)]
            rec.decode_run(replica, starts, [0.5] * k, [0.2] * k, st_, n, 10 * n, 3, 4, list(range(k)))
            for j in range(k):
                run_rows.append(dict(replica=replica, start_s=starts[j], step_s=0.5, num_decode=n, num_itl_tokens=n,
                                     decode_context_sum=10 * n + j * n, num_running=3, num_waiting=4,
                                     kv_used_blocks=j, gemm_s=0.1, attn_s=0.2, other_s=0.1, comm_s=0.0, host_s=0.1))
        else:
            shape = BatchShape([(n, 0)], 2, 50, 3)
            rec.iteration(replica, float(start), st_, shape, 5, 6, 7, 0)
            step_rows.append(dict(replica=replica, start_s=float(start), step_s=0.5, num_prefill_reqs=1,
                                  num_prefill_tokens=n, num_decode=2, decode_context_sum=50, num_running=5,
                                  num_waiting=6, kv_used_blocks=7, num_preempted=0, gemm_s=0.1, attn_s=0.2,
                                  other_s=0.1, comm_s=0.0, host_s=0.1, swap_bytes=0.0, swap_s=0.0, num_itl_tokens=2))
    got = rec.iterations_frame()
    ref = _reference(rec, step_rows, run_rows)
    assert list(got.columns) == ITERATION_COLUMNS + ["kv_usage_frac"]
    for c in ITERATION_COLUMNS:
        assert np.array_equal(got[c].to_numpy(), ref[c].to_numpy().astype(got[c].dtype)), c
        assert got[c].dtype == (np.float64 if c.endswith("_s") or c == "swap_bytes" else np.int64), c
    assert np.array_equal(got["kv_usage_frac"].to_numpy(), got["kv_used_blocks"].to_numpy() / 100)
    # a subset of the columns (what summary() reads) is those columns of the full frame
    cols = ["start_s", "decode_context_sum", "num_waiting", "kv_usage_frac", "replica"]
    pd.testing.assert_frame_equal(rec.iterations_frame(cols), got[cols], check_exact=True)


def test_results_build_the_iteration_frame_on_first_access_and_summarize_alike():
    """sim.run's Results summarize from the summary's columns alone, and the same as from the
    full frame (built on first access) or from a frame given directly."""
    import sim
    from sim.simulator import Results
    cfg = {"model": "llama-3.1-8b", "hardware": "h100_sxm", "seed": 3,
           "workload": {"num_requests": 200, "arrival": {"name": "poisson", "params": {"rate_per_s": 20}},
                        "prompt_tokens": {"name": "uniform", "params": {"low": 16, "high": 600}},
                        "output_tokens": {"name": "uniform", "params": {"low": 2, "high": 300}}}}
    res = sim.run(cfg)
    assert res._iterations is None
    lazy = res.summary()
    full = res.iterations
    assert res._iterations is full and len(full) == lazy["num_iterations"] > 200
    assert res.summary() == lazy
    assert Results(res.config, res.requests, full, res.extra_itl_s, res.info).summary() == lazy


@pytest.mark.parametrize("cluster", [False, True])
def test_packed_rows_give_the_same_frames(monkeypatch, cluster):
    """Rows packed into float64 blocks every PACK_ROWS rows rebuild the same frames (values
    and dtypes) as rows kept as tuples."""
    import sim
    import sim.metrics.records as records
    from tests.conftest import small_config
    cfg = small_config(workload__num_requests=150)
    if cluster:
        cfg["cluster"] = {"router": {"name": "least_kv"}, "pools": [{"name": "a", "num_replicas": 3}]}
    plain = sim.run(cfg)
    monkeypatch.setattr(records, "PACK_ROWS", 7)
    packed = sim.run(cfg)
    pd.testing.assert_frame_equal(plain.requests, packed.requests, check_exact=True)
    pd.testing.assert_frame_equal(plain.iterations, packed.iterations, check_exact=True)
    assert plain.summary() == packed.summary()
