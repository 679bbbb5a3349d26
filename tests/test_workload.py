"""Arrival processes and length distributions."""
import numpy as np
import pytest

import sim
from sim.config import ConfigError
from sim.workload.arrivals import arrivals
from sim.workload.lengths import lengths
from tests.conftest import small_config


def gaps(name, **params):
    return np.diff(arrivals.build(name, params).times(np.random.default_rng(0), n=200001))


def test_poisson_gamma_constant_rates_and_cv():
    g = gaps("poisson", rate_per_s=5.0)
    assert g.mean() == pytest.approx(0.2, rel=0.01) and g.std() / g.mean() == pytest.approx(1, rel=0.02)
    g = gaps("gamma", rate_per_s=5.0, cv=3.0)
    assert g.mean() == pytest.approx(0.2, rel=0.03) and g.std() / g.mean() == pytest.approx(3, rel=0.05)
    g = gaps("constant", rate_per_s=4.0)
    assert np.allclose(g, 0.25)


def test_duration_bounded_arrivals():
    t = arrivals.build("poisson", {"rate_per_s": 10.0}).times(np.random.default_rng(1), duration_s=50.0)
    assert t[0] == 0 and t[-1] < 50 and len(t) == pytest.approx(500, rel=0.15)


def test_lengths():
    rng = np.random.default_rng(0)
    assert (lengths.build("fixed", {"value": 7}).sample(5, rng) == 7).all()
    u = lengths.build("uniform", {"low": 3, "high": 5}).sample(10000, rng)
    assert set(np.unique(u)) == {3, 4, 5}
    ln = lengths.build("lognormal", {"median": 100, "sigma": 0.5, "max": 300}).sample(20000, rng)
    assert np.median(ln) == pytest.approx(100, rel=0.05) and ln.max() <= 300 and ln.min() >= 1


def test_empirical(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("a,b\n5,1\n7,2\n")
    e = lengths.build("empirical", {"path": "l.csv", "column": "a"}, base_dir=str(tmp_path))
    assert set(e.sample(100, np.random.default_rng(0))) == {5, 7}
    with pytest.raises(ConfigError, match="no column 'c'"):
        lengths.build("empirical", {"path": "l.csv", "column": "c"}, base_dir=str(tmp_path))
    p.write_text("a\n5\n-2\n")
    with pytest.raises(ConfigError, match="line 3"):
        lengths.build("empirical", {"path": "l.csv", "column": "a"}, base_dir=str(tmp_path))


def test_closed_loop_keeps_concurrency():
    cfg = small_config(workload__arrival={"name": "closed_loop", "params": {"concurrency": 6}})
    res = sim.run(cfg)
    it = res.iterations
    assert res.summary()["num_completed"] == 200
    # 6 clients, each with exactly one request in the system: running + waiting == 6 until the tail
    busy = (it["num_running"] + it["num_waiting"]).to_numpy()
    assert busy.max() == 6 and (busy[: len(busy) // 2] == 6).all()


def test_closed_loop_duration():
    cfg = small_config(workload__arrival={"name": "closed_loop", "params": {"concurrency": 4}},
                       workload__num_requests=None, workload__duration_s=5.0)
    cfg["workload"].pop("num_requests")
    req = sim.run(cfg).requests
    assert req["arrival_s"].max() < 5.0 and len(req) > 4


def test_workload_needs_a_size():
    cfg = small_config()
    cfg["workload"].pop("num_requests")
    with pytest.raises(ConfigError, match="num_requests"):
        sim.run(cfg)
