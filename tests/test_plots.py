"""Plots render from real runs and are written where asked."""
import matplotlib

matplotlib.use("Agg")

import sim  # noqa: E402
from sim.metrics import plots  # noqa: E402
from tests.conftest import small_config  # noqa: E402


def test_plots_from_a_run(tmp_path):
    res = sim.run(small_config(workload__num_requests=60))
    fig = res.plot("timeline")
    assert len(fig.axes) == 3 and fig.axes[1].get_ylabel() == "KV use (%)"
    cdf = plots.latency_cdfs(res)
    assert [a.get_xlabel() for a in cdf.axes] == ["TTFT (ms)", "TPOT (ms)", "E2E (ms)"]
    paths = plots.save_all(res, tmp_path)
    assert all(p.stat().st_size > 10_000 for p in paths)
    runs = [sim.run(small_config(workload__num_requests=60, workload__arrival={"name": "poisson", "params": {"rate_per_s": r}}))
            for r in (1, 4)]
    tl = plots.throughput_latency(runs, labels=[1, 4])
    xs = tl.axes[0].lines[0].get_xdata()
    assert xs[1] > xs[0]  # more load, more throughput


def test_cluster_timeline_shows_each_replica():
    import sim
    from tests.conftest import small_config
    cfg = small_config(workload__num_requests=120)
    cfg["cluster"] = {"pools": [{"name": "a", "num_replicas": 3}, {"name": "b", "num_replicas": 2, "hardware": "l40s"}]}
    res = sim.run(cfg)
    fig = res.plot("timeline")
    heat = fig.axes[0].images[0].get_array()
    assert heat.shape[0] == 5  # one row per replica
    assert [t.get_text() for t in fig.axes[0].texts] == ["a", "b"]
