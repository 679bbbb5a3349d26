"""Step prediction intervals (sim/cost/uncertainty.py), the cost-noise wrapper (sim/cost/noise.py),
run replicates (sim/replicates.py) and their CLI flags.

Synthetic uncertainty sections are built in the tests from stated distributions (a degenerate
one: every quantile the same log ratio, so the interval is exact arithmetic; a uniform one on
[-0.2, 0.2] in log, whose quantile function is linear)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import sim
from sim.cli import app
from sim.config import ConfigError, read_yaml
from sim.cost.base import BatchShape, StepTime
from sim.cost.noise import NoisyCost, replicate_factors, stream_name
from sim.cost.parallel import ParallelCost
from sim.cost.roofline import RooflineCost
from sim.cost.uncertainty import (LEVELS, CostFactors, Residuals, Uncertainty, decode_attention_s, draw_factors,
                                  parse_uncertainty, profile_uncertainty, step_interval, step_phase, step_quantiles)
from sim.hardware import load_hardware, profile_from_dict
from sim.model_spec import load_model
from tests.conftest import ROOT, small_config

runner = CliRunner()
H100 = ROOT / "hardware_profiles" / "h100_sxm.yaml"


def flat(v: float) -> dict:
    """A degenerate distribution: every quantile, the min and the max equal ``v``."""
    return {"points": 9, "sd": 0.0, "min": v, "max": v, "quantiles": [v] * len(LEVELS)}


def uniform(a: float) -> dict:
    """Uniform on [-a, a]: quantile at level l is -a + 2 a l."""
    return {"points": 9, "sd": 0.0, "min": -a, "max": a, "quantiles": [-a + 2 * a * lv for lv in LEVELS]}


def profile_with(section: dict | None):
    d = dict(read_yaml(H100))
    cal = dict(d["calibration"])
    cal.pop("uncertainty", None)
    if section is not None:
        cal["uncertainty"] = section
    d["calibration"] = cal
    return profile_from_dict(d, "synthetic.yaml")


# ------------------------------------------------------------------------------ distributions
def test_residuals_quantiles_and_ppf():
    x = np.linspace(-0.1, 0.3, 41)
    r = Residuals.from_samples(x)
    assert r.quantiles == pytest.approx(np.quantile(x, LEVELS), abs=1e-15)
    assert (r.min, r.max, r.points) == (-0.1, 0.3, 41)
    assert r.sd == pytest.approx(np.std(x, ddof=1))
    assert r.ppf(np.array(LEVELS)) == pytest.approx(r.quantiles, abs=1e-15)
    assert float(r.ppf(0.0)) == -0.1 and float(r.ppf(1.0)) == 0.3
    assert Residuals.from_dict(r.to_dict(digits=12), "k").quantiles == pytest.approx(r.quantiles, abs=1e-12)


@given(st.lists(st.floats(-1, 1), min_size=2, max_size=60), st.lists(st.floats(0, 1), min_size=2, max_size=20))
@settings(max_examples=60, deadline=None)
def test_ppf_is_monotone_and_within_the_sample(xs, us):
    r = Residuals.from_samples(xs)
    u = np.sort(np.asarray(us))
    y = r.ppf(u)
    assert np.all(np.diff(y) >= -1e-12)
    assert np.all(y >= min(xs) - 1e-12) and np.all(y <= max(xs) + 1e-12)


def test_bad_sections_are_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"calibration.uncertainty.ops.vendor.gemm.quantiles.*19 numbers"):
        parse_uncertainty({"ops": {"vendor": {"gemm": {"quantiles": [0.0, 0.1]}}}}, "vendor", "p.yaml")
    bad = dict(flat(0.0), quantiles=[0.1] + [0.0] * 18)
    with pytest.raises(ConfigError, match="non-decreasing"):
        parse_uncertainty({"ops": {"vendor": {"gemm": bad}}}, "vendor")
    with pytest.raises(ConfigError, match="unknown op kind"):
        parse_uncertainty({"ops": {"vendor": {"softmax": flat(0.0)}}}, "vendor")
    assert parse_uncertainty({"ops": {"vendor": {"gemm": flat(0.0)}}}, "triton") is None


def test_shipped_profiles_carry_the_section():
    for name in ("h100_sxm", "h200_sxm"):
        hw = load_hardware(name)
        for be in ("vendor", "triton"):
            u = profile_uncertainty(hw, be)
            assert set(u.ops) == {"gemm", "attn_prefill", "attn_decode", "elementwise"}
            assert all(r.points >= 60 for r in u.ops.values())
    assert set(profile_uncertainty(load_hardware("h200_sxm")).step) == {"decode", "prefill", "mixed"}
    assert profile_uncertainty(load_hardware("h100_sxm")).step == {}  # no whole-step truth on the H100
    assert profile_uncertainty(load_hardware("a100_80gb_sxm")) is None  # uncalibrated


# ------------------------------------------------------------------------------ step intervals
ST = StepTime(total_s=0.0, gemm_s=3e-3, attn_s=2e-3, other_s=1e-3, comm_s=4e-4, host_s=5e-4)


def test_exact_factors_give_an_exact_interval():
    unc = Uncertainty({"gemm": Residuals.from_dict(flat(math.log(1.1)), "g"),
                       "attn_decode": Residuals.from_dict(flat(math.log(0.9)), "d"),
                       "attn_prefill": Residuals.from_dict(flat(math.log(1.3)), "p"),
                       "elementwise": Residuals.from_dict(flat(0.0), "e")},
                      {"decode": Residuals.from_dict(flat(math.log(1.05)), "s")})
    want = (3e-3 * 1.1 + 2e-3 * 0.9 + 1e-3) * 1.05 + 4e-4 + 5e-4
    for lv in ((0.1, 0.9), (0.01, 0.5, 0.99)):
        assert step_quantiles(unc, ST, "decode", levels=lv) == pytest.approx([want] * len(lv), rel=1e-12)
    # without the step term; a mixed step with 0.5 ms of its attention decode
    assert step_quantiles(unc, ST, "decode", use_step=False)[0] == pytest.approx(
        3e-3 * 1.1 + 2e-3 * 0.9 + 1e-3 + 9e-4, rel=1e-12)
    assert step_quantiles(unc, ST, "mixed", attn_decode_s=5e-4)[0] == pytest.approx(  # no step term for mixed
        3e-3 * 1.1 + 1.5e-3 * 1.3 + 5e-4 * 0.9 + 1e-3 + 9e-4, rel=1e-12)
    with pytest.raises(ValueError, match="attn_decode_s"):
        step_quantiles(unc, ST, "mixed")


def test_exact_factors_from_a_synthetic_profile():
    hw = profile_with({"levels": list(LEVELS),
                       "ops": {"vendor": {"gemm": flat(math.log(1.2)), "attn_prefill": flat(math.log(0.8)),
                                          "attn_decode": flat(math.log(1.1)), "elementwise": flat(0.0)}},
                       "step": {"mixed": flat(math.log(1.05))}})
    cost = RooflineCost(load_model("llama-3.1-8b"), hw, host_overhead_s=1e-3, backend="vendor")
    shape = BatchShape([(512, 0)], 32, 32 * 1024, 33)
    st_ = cost.step_time(shape)
    dec = decode_attention_s(cost, shape)
    want = (st_.gemm_s * 1.2 + (st_.attn_s - dec) * 0.8 + dec * 1.1 + st_.other_s) * 1.05 + 1e-3
    assert step_interval(hw, st_, shape, cost, "vendor") == pytest.approx((want, want), rel=1e-12)
    assert step_interval(hw, st_, shape, cost, "triton") is None  # no section for that backend
    with pytest.raises(ValueError, match="cost model"):
        step_interval(hw, st_, shape)


def test_one_uniform_kind_gives_its_quantiles():
    """Only the GEMM factor varies (uniform on [-0.2, 0.2] in log): the step is monotone in it,
    so its p10 / p90 are the GEMM's at 10 % / 90 % plus the fixed rest (Latin-hypercube draws:
    the empirical quantile is within about 1/samples of the level)."""
    unc = Uncertainty({"gemm": Residuals.from_dict(uniform(0.2), "g")})
    lo, hi = step_quantiles(unc, ST, "decode", samples=20000)
    rest = 2e-3 + 1e-3 + 4e-4 + 5e-4
    assert lo == pytest.approx(3e-3 * math.exp(-0.2 + 0.4 * 0.1) + rest, rel=1e-4)
    assert hi == pytest.approx(3e-3 * math.exp(-0.2 + 0.4 * 0.9) + rest, rel=1e-4)
    assert step_quantiles(unc, ST, "decode", seed=3) == step_quantiles(unc, ST, "decode", seed=3)


def test_step_interval_on_profiles():
    shape = BatchShape([(512, 0)], 32, 32 * 1024, 33)
    hw = load_hardware("h200_sxm")
    cost = RooflineCost(load_model("llama-3.1-8b"), hw)
    st_ = cost.step_time(shape)
    assert step_phase(shape) == "mixed" and step_phase(BatchShape([(8, 0)])) == "prefill"
    assert step_phase(BatchShape([], 4, 400, 4)) == "decode"
    assert 0 < decode_attention_s(cost, shape) < st_.attn_s
    lo, hi = step_interval(hw, st_, shape, cost)
    assert 0 < lo < hi
    a100 = load_hardware("a100_80gb_sxm")
    assert step_interval(a100, RooflineCost(load_model("llama-3.1-8b"), a100).step_time(shape), shape) is None


# ------------------------------------------------------------------------------ the noise wrapper
SHAPES = [BatchShape([(512, 0)], 0, 0, 1), BatchShape([], 24, 24 * 900, 24, 2000),
          BatchShape([(300, 700), (64, 0)], 16, 16 * 500, 18), BatchShape([], 1, 5, 1)]
FACT = CostFactors(1.07, 0.91, 1.13, 0.96, 1.02, 1.08, 0.97)


def _costs():
    hw, m = load_hardware("h100_sxm"), load_model("llama-3.1-8b")
    return [RooflineCost(m, hw, host_overhead_s=1e-3), ParallelCost(m, hw, 2, 1, 1e-3), ParallelCost(m, hw, 2, 2, 1e-3)]


@pytest.mark.parametrize("i", range(3))
def test_unit_factors_change_nothing(i):
    cost = _costs()[i]
    noisy = NoisyCost(cost, CostFactors())
    for s in SHAPES:
        assert noisy.step_time(s) == cost.step_time(s)
    if i == 2:
        assert noisy.stage_times(SHAPES[2]) == cost.stage_times(SHAPES[2])


@pytest.mark.parametrize("i", range(3))
def test_factors_scale_each_part(i):
    cost = _costs()[i]
    noisy = NoisyCost(cost, FACT)
    f = FACT
    for s in SHAPES:
        a, b = cost.step_time(s), noisy.step_time(s)
        ph = step_phase(s)
        k = f.step(ph)
        dec = decode_attention_s(cost, s)
        assert b.gemm_s == pytest.approx(a.gemm_s * f.gemm * k, rel=1e-12)
        assert b.attn_s == pytest.approx(((a.attn_s - dec) * f.attn_prefill + dec * f.attn_decode) * k, rel=1e-12)
        assert b.other_s == pytest.approx(a.other_s * f.elementwise * k, rel=1e-12)
        assert (b.comm_s, b.host_s) == (a.comm_s, a.host_s)
        assert b.total_s == b.gemm_s + b.attn_s + (b.other_s + b.comm_s) + b.host_s


@pytest.mark.parametrize("i", range(3))
def test_decode_step_fn_adds_up_to_step_time_bit_for_bit(i):
    noisy = NoisyCost(_costs()[i], FACT)
    for n, c in ((1, 7), (24, 24 * 900), (64, 64 * 3000)):
        price, fx = noisy.decode_step_fn(n)
        other = fx.other_s + fx.comm_s if fx.comm_s else fx.other_s
        st_ = noisy.step_time(BatchShape([], n, c, n))
        assert fx.gemm_s + price(c) + other + fx.host_s == st_.total_s
        assert not hasattr(price, "run")


def test_draws_are_reproducible_and_named_per_profile():
    hw = load_hardware("h200_sxm")
    a, b = replicate_factors(hw, "vendor", 7, 3), replicate_factors(hw, "vendor", 7, 3)
    assert a == b and a != replicate_factors(hw, "vendor", 7, 4) and a != replicate_factors(hw, "triton", 7, 3)
    unc = profile_uncertainty(hw, "vendor")
    r = unc.ops["gemm"]
    assert math.exp(r.min) <= a.gemm <= math.exp(r.max)
    assert stream_name(3, "h200_sxm", "vendor") == "cost.noise/3/h200_sxm/vendor"
    assert replicate_factors(load_hardware("t4"), "vendor", 7, 0) is None
    no_step = draw_factors(profile_uncertainty(load_hardware("h100_sxm")), np.random.default_rng(0))
    assert (no_step.step_decode, no_step.step_prefill, no_step.step_mixed) == (1.0, 1.0, 1.0)


# ------------------------------------------------------------------------------ simulations
def _frames_equal(a, b):
    assert a.requests.equals(b.requests)
    assert a.iterations.equals(b.iterations)


def test_unit_noise_run_equals_plain_run_bit_for_bit(monkeypatch):
    cfg = small_config()
    plain = sim.run(cfg)
    monkeypatch.setattr("sim.cost.noise.replicate_factors", lambda *a: CostFactors())
    _frames_equal(sim.run(cfg, cost_noise_replicate=0), plain)
    assert sim.run(cfg, cost_noise_replicate=None).requests.equals(plain.requests)


@pytest.mark.parametrize("over", [{}, {"engine__cuda_graphs": True}, {"parallelism__tp": 2},
                                  {"parallelism__pp": 2, "workload__num_requests": 60}])
def test_noisy_runs_reproducible_and_fast_forward_exact(over):
    cfg = small_config(**over)
    a = sim.run(cfg, cost_noise_replicate=2)
    _frames_equal(a, sim.run(cfg, cost_noise_replicate=2))
    _frames_equal(a, sim.run(cfg, cost_noise_replicate=2, fast_forward=False))
    assert not a.iterations["step_s"].equals(sim.run(cfg).iterations["step_s"])


def test_cluster_pools_on_one_profile_share_draws():
    from sim.replicates import replicate_factors as pool_factors
    cfg = sim.load_config(small_config(cluster={"pools": [{"name": "a", "num_replicas": 2},
                                                          {"name": "b", "parallelism": {"tp": 2}}]}))
    f = pool_factors(cfg, 1)
    assert f["a"] == f["b"]
    a = sim.run(cfg, cost_noise_replicate=1)
    _frames_equal(a, sim.run(cfg, cost_noise_replicate=1, fast_forward=False))


def test_noise_needs_a_calibrated_roofline():
    with pytest.raises(ConfigError, match=r"key 'hardware'.*no calibration.uncertainty"):
        sim.run(small_config(hardware="a100_80gb_sxm"), cost_noise_replicate=0)
    with pytest.raises(ConfigError, match="cost_model.name.*'roofline'"):
        sim.run(small_config(cost_model={"name": "constant", "params": {"step_s": 0.01}}), cost_noise_replicate=0)
    with pytest.raises(ConfigError, match="cost_noise_replicate"):
        sim.load_config(small_config(cost_noise_replicate=-1))


def test_run_replicates_intervals():
    reps = sim.run_replicates(small_config(workload__num_requests=80), n=4,
                              slo={"ttft_s": 0.2, "tpot_s": 0.02})
    assert reps.n == 4 and len(reps.factors) == 4 and len(set(map(str, reps.factors))) == 4
    iv = reps.intervals
    for k in ("ttft_s.p50", "tpot_s.p99", "e2e_s.mean", "output_tokens_per_s", "goodput_requests_per_s"):
        assert iv[k]["p10"] <= iv[k]["p50"] <= iv[k]["p90"], k
    tpot = [s["tpot_s"]["p50"] for s in reps.summaries]
    assert iv["tpot_s.p50"]["p50"] == pytest.approx(float(np.median(tpot)))
    assert min(tpot) < max(tpot)
    assert reps.base.summary() == sim.run(small_config(workload__num_requests=80),
                                          slo={"ttft_s": 0.2, "tpot_s": 0.02}).summary()
    again = sim.run_replicates(small_config(workload__num_requests=80), n=4, slo={"ttft_s": 0.2, "tpot_s": 0.02})
    assert again.summaries == reps.summaries
    assert "TTFT p99 (ms)" in reps.format()
    with pytest.raises(ConfigError, match="replicates"):
        sim.run_replicates(small_config(), n=0)


# ------------------------------------------------------------------------------ CLI
def test_cli_run_replicates(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(small_config(workload__num_requests=40)))
    r = runner.invoke(app, ["run", str(p), "--replicates", "2", "--json", "--no-progress"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["replicates"] == 2 and s["intervals"]["ttft_s.p50"]["p10"] <= s["intervals"]["ttft_s.p50"]["p90"]
    r = runner.invoke(app, ["run", str(p), "--replicates", "2", "--no-progress", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0 and "cost-noise replicates: 2" in r.output and "p90" in r.output
    assert json.loads((tmp_path / "o" / "replicates.json").read_text())["replicates"] == 2
    r = runner.invoke(app, ["run", str(p), "--replicates", "0", "--no-progress"])
    assert r.exit_code == 2 and r.output.strip().startswith("error:") and "--replicates" in r.output


def test_cli_cost_step_interval():
    base = ["cost", "step", "--model", "llama-3.1-8b", "--decode-batch", "32", "--decode-context", "1024"]
    r = runner.invoke(app, base + ["--hardware", "h200_sxm", "--interval", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    lo, hi = d["interval_s"]
    assert 0 < lo < hi and lo < d["time_s"] * 1.2
    r = runner.invoke(app, base + ["--hardware", "h200_sxm", "--interval", "--prefill", "512x1", "--cuda-graphs"])
    assert r.exit_code == 0 and r.output.splitlines()[1].startswith("p10-p90 ")
    r = runner.invoke(app, base + ["--hardware", "a100_80gb_sxm", "--interval", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["interval_s"] is None
    r = runner.invoke(app, base + ["--hardware", "h200_sxm", "--json"])
    assert "interval_s" not in json.loads(r.output)
