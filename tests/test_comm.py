"""sim.cost.comm (NCCL alpha-beta model), the interconnect/price profile sections, the
``servesim cost`` collective commands, and calibrate/fit_nccl.py on synthetic nccl.csv.

Expected values are the model's formulas written out by hand (module doc of sim.cost.comm).
Synthetic NCCL measurements exist only inside tmp_path: generated from known alpha/bandwidth
lines plus seeded multiplicative noise. Nothing here is real data.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from calibrate.fit_nccl import fit_interconnect, fit_lines, predict_lines, read_nccl
from calibrate.measurements import FitError
from sim.cli import app
from sim.config import ConfigError
from sim.cost.comm import CommModel
from sim.hardware import load_hardware, profile_from_dict, shipped_hardware
from sim.interconnect import parse_interconnect
from tests.conftest import ROOT

runner = CliRunner()
H100 = load_hardware("h100_sxm")
B_H100 = 450e9 * 0.822  # busbw of the h100 profile (bandwidth x busbw_frac)


def ic_dict(**over) -> dict:
    """A small valid interconnect section (ring LL + Simple on a 100 GB/s link)."""
    d = {"link": "pcie4", "max_gpus_per_node": 8, "bandwidth_bytes_per_s": 100e9, "busbw_frac": 0.5,
         "algorithms": {"ring": {"ll": {"base_s": 5e-6, "step_s": 1e-6, "bw_frac": 0.5},
                                 "simple": {"base_s": 10e-6, "step_s": 4e-6, "bw_frac": 1.0}}},
         "calibrated": False, "sources": ["test"]}
    d.update(over)
    return d


def with_ic(ic: dict | None, hw=H100):
    return dataclasses.replace(hw, interconnect=None if ic is None else parse_interconnect(ic, "<test>"))


# ----------------------------------------------------------------------------- the model
@pytest.mark.parametrize("name", shipped_hardware())
def test_one_gpu_and_zero_bytes_cost_exactly_zero(name):
    m = CommModel(load_hardware(name))
    for nbytes in (0, 1, 4096, 1e9):
        assert m.all_reduce_s(nbytes, 1) == 0.0
        assert m.all_gather_s(nbytes, 1) == 0.0
        assert m.reduce_scatter_s(nbytes, 1) == 0.0
    assert m.all_reduce_s(0, 2) == 0.0 and m.send_recv_s(0) == 0.0
    assert m.all_reduce_s(4096, 2) > 0.0 and m.send_recv_s(4096) > 0.0


def test_profile_without_interconnect_is_free_on_one_gpu_only():
    m = CommModel(with_ic(None))
    assert m.all_reduce_s(1e6, 1) == 0.0 and m.link == "none" and not m.calibrated
    with pytest.raises(ConfigError, match="no interconnect section"):
        m.all_reduce_s(1e6, 2)


def test_large_all_reduce_is_ring_simple_by_hand():
    m = CommModel(H100)
    nbytes = 1 << 30
    for n in (2, 4, 8):
        steps = 2 * (n - 1)
        want = 8.4e-6 + steps * 3.4e-6 + steps / n * nbytes / B_H100
        assert m.all_reduce_s(nbytes, n) == pytest.approx(want, rel=1e-12)
        b = m.breakdown("all_reduce", nbytes, n)
        assert (b["algorithm"], b["protocol"], b["steps"]) == ("ring", "simple", steps)
        assert b["busbw_bytes_per_s"] == pytest.approx(B_H100, rel=1e-12)  # nccl-tests busbw = the link's busbw
        assert b["time_s"] == m.all_reduce_s(nbytes, n) and b["calibrated"] is False and b["link"] == "nvlink4"


def test_ring_bandwidth_term_scales_by_2_n_minus_1_over_n():
    ic = ic_dict(algorithms={"ring": {"simple": {"base_s": 0.0, "step_s": 0.0, "bw_frac": 1.0}}})
    m = CommModel(with_ic(ic))
    t2 = m.all_reduce_s(1e9, 2)
    assert t2 == pytest.approx(1e9 / 50e9, rel=1e-12)  # 2(2-1)/2 = 1
    assert m.all_reduce_s(1e9, 4) / t2 == pytest.approx(6 / 4, rel=1e-12)
    assert m.all_reduce_s(1e9, 8) / t2 == pytest.approx(14 / 8, rel=1e-12)
    # all-gather / reduce-scatter: (n-1)/n of the output (input) bytes, half an all-reduce's traffic
    for n in (2, 4, 8):
        assert m.all_gather_s(1e9, n) == pytest.approx((n - 1) / n * 1e9 / 50e9, rel=1e-12)
        assert m.reduce_scatter_s(1e9, n) == m.all_gather_s(1e9, n)
        assert m.all_gather_s(1e9, n) == pytest.approx(m.all_reduce_s(1e9, n) / 2, rel=1e-12)


def test_all_gather_latency_has_n_minus_1_steps():
    m = CommModel(H100)
    nbytes = 1 << 30
    for n in (2, 8):
        want = 8.4e-6 + (n - 1) * 3.4e-6 + (n - 1) / n * nbytes / B_H100
        assert m.all_gather_s(nbytes, n) == pytest.approx(want, rel=1e-12)


def test_protocol_switch_ll_ll128_simple_on_nvlink():
    m = CommModel(H100)
    got = [m.breakdown("all_reduce", b, 8)["protocol"] for b in (4096, 1 << 20, 16 << 20, 1 << 30)]
    assert got == ["ll", "ll", "ll128", "simple"]
    # small messages are latency-bound: LL's latency base + 14 steps, LL's bandwidth capped at 141 GB/s
    b = m.breakdown("all_reduce", 4096, 8)
    assert b["alpha_s"] == pytest.approx(6.6e-6 + 14 * 0.6e-6, rel=1e-12)
    assert b["busbw_bytes_per_s"] == pytest.approx(141e9, rel=1e-12)
    assert b["time_s"] == min(b["candidates"].values())
    # no LL128 on PCIe (NCCL enables it over NVLink only)
    assert all("ll128" not in k for k in CommModel(load_hardware("l40s")).breakdown("all_reduce", 1e6, 4)["candidates"])


def test_tree_wins_where_its_latency_is_lower_then_ring_takes_over():
    tree = {"simple": {"base_s": 0.0, "step_s": 0.0, "bw_frac": 1.0}}
    ring = {"simple": {"base_s": 20e-6, "step_s": 0.0, "bw_frac": 1.0}}
    m = CommModel(with_ic(ic_dict(algorithms={"ring": ring, "tree": tree})))
    n, big = 4, 50e9
    ring_alg, tree_alg = big * n / (2 * (n - 1)), big / 2
    cross = 20e-6 / (1 / tree_alg - 1 / ring_alg)  # where the two lines meet
    assert m.breakdown("all_reduce", cross * 0.9, n)["algorithm"] == "tree"
    assert m.breakdown("all_reduce", cross * 1.1, n)["algorithm"] == "ring"
    assert m.all_reduce_s(cross, n) == pytest.approx(cross / tree_alg, rel=1e-9)
    # tree is an all-reduce algorithm only
    assert m.breakdown("all_gather", 1e3, n)["algorithm"] == "ring"


def test_tree_on_pcie_takes_the_middle_sizes():
    """With NCCL's PCI latencies (tree Simple 4.0 us/hop < ring Simple 5.7 us/step) the chain wins
    between LL and ring Simple at 8 GPUs: the switch exists in the shipped l40s profile."""
    m = CommModel(load_hardware("l40s"))
    algs = [m.breakdown("all_reduce", b, 8)["algorithm"] + "/" + m.breakdown("all_reduce", b, 8)["protocol"]
            for b in (4096, 1 << 20, 1 << 30)]
    assert algs == ["ring/ll", "tree/simple", "ring/simple"]


@functools.cache
def model_of(name: str) -> CommModel:
    return CommModel(load_hardware(name))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(shipped_hardware()), st.floats(1, 4e9), st.floats(1, 4e9), st.integers(1, 8), st.integers(1, 8))
def test_time_grows_with_bytes_and_with_gpus(name, b1, b2, n1, n2):
    m = model_of(name)
    cap = m.max_gpus_per_node
    n1, n2 = min(n1, cap), min(n2, cap)
    lo, hi = sorted((b1, b2))
    nlo, nhi = sorted((n1, n2))
    for f in (m.all_reduce_s, m.all_gather_s, m.reduce_scatter_s):
        assert f(lo, nhi) <= f(hi, nhi)
        assert f(hi, nlo) <= f(hi, nhi)
    assert m.send_recv_s(lo) <= m.send_recv_s(hi)


def test_send_recv_is_one_step_of_ll_or_simple():
    m = CommModel(H100)
    nbytes = 1 << 30
    assert m.send_recv_s(nbytes) == pytest.approx(8.4e-6 + 3.4e-6 + nbytes / B_H100, rel=1e-12)
    small = m.breakdown("send_recv", 1024, 99)  # num_gpus is ignored: always a pair
    assert (small["protocol"], small["num_gpus"]) == ("ll", 2)
    assert small["time_s"] == pytest.approx(6.6e-6 + 0.6e-6 + 1024 / 141e9, rel=1e-12)
    assert set(small["candidates"]) == {"p2p/ll", "p2p/simple"}


@pytest.mark.parametrize("args,key", [((1e6, 0), "num_gpus"), ((1e6, 9), "num_gpus"), ((1e6, True), "num_gpus"),
                                      ((1e6, 2.0), "num_gpus"), ((-1.0, 2), "nbytes"), ((math.nan, 2), "nbytes"),
                                      ((math.inf, 2), "nbytes")])
def test_bad_arguments_are_config_errors(args, key):
    with pytest.raises(ConfigError) as e:
        CommModel(H100).all_reduce_s(*args)
    assert e.value.key == key
    with pytest.raises(ConfigError):
        CommModel(H100).breakdown("broadcast", 1.0, 2)


def test_numpy_numbers_are_accepted():
    m = CommModel(H100)
    assert m.all_reduce_s(np.int64(1 << 20), np.int64(4)) == m.all_reduce_s(1 << 20, 4)
    assert m.send_recv_s(np.float32(1024.0)) == m.send_recv_s(1024.0)


# ----------------------------------------------------------------------------- profiles
@pytest.mark.parametrize("name", shipped_hardware())
def test_every_shipped_profile_has_a_sourced_interconnect_and_price(name):
    hw = load_hardware(name)
    ic = hw.interconnect
    assert ic is not None and ic.sources and ic.max_gpus_per_node >= 2 and 0 < ic.busbw_frac <= 1
    assert "simple" in ic.algorithms["ring"] and ("ll128" in ic.algorithms["ring"]) == ic.link.startswith("nvlink")
    assert not ic.fits and not ic.calibration  # nothing measured yet
    assert hw.price_usd_per_gpu_hour > 0 and "20" in hw.price_source  # a date
    assert hw.price_is_estimate == hw.price_source.startswith("ESTIMATE")


def base_profile_dict() -> dict:
    return yaml.safe_load((ROOT / "hardware_profiles" / "l40s.yaml").read_text())


@pytest.mark.parametrize("path,value,key", [
    (("interconnect", "bogus"), 1, "interconnect.bogus"),
    (("interconnect", "link"), "nvlink9", "interconnect.link"),
    (("interconnect", "busbw_frac"), 1.5, "interconnect.busbw_frac"),
    (("interconnect", "max_gpus_per_node"), 2.5, "interconnect.max_gpus_per_node"),
    (("interconnect", "algorithms", "ring", "ll256"), {}, "interconnect.algorithms.ring.ll256"),
    (("interconnect", "algorithms", "star"), {}, "interconnect.algorithms.star"),
    (("interconnect", "algorithms", "ring", "ll", "alpha"), 1.0, "interconnect.algorithms.ring.ll.alpha"),
    (("interconnect", "algorithms", "ring", "simple", "step_s"), -1.0, "interconnect.algorithms.ring.simple.step_s"),
    (("interconnect", "calibrated"), {"data": "x", "date": "y", "points": 3}, "interconnect.fitted"),
    (("interconnect", "fitted"), [{"op": "all_reduce"}], "interconnect.fitted"),
    (("price", "currency"), "EUR", "price.currency"),
    (("price", "usd_per_gpu_hour"), -2, "price.usd_per_gpu_hour"),
    (("price", "source"), "", "price.source"),
])
def test_profile_section_errors_name_the_dotted_key(path, value, key):
    d = base_profile_dict()
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(ConfigError) as e:
        profile_from_dict(d, "x.yaml")
    assert e.value.key == key and "x.yaml" in str(e.value)


def test_fitted_lines_must_be_well_formed():
    line = {"alpha_s": 1e-5, "bandwidth_bytes_per_s": 1e10}
    cal = {"data": "d", "date": "2030-01-01", "points": 8}
    ok = ic_dict(calibrated=cal, fitted=[{"op": "all_reduce", "world_size": 2,
                                          "lines": [dict(line, up_to_bytes=1e5), line]}])
    assert len(parse_interconnect(ok, "t").fits[0].lines) == 2
    for fitted, key in [([{"op": "all_reduce", "world_size": 2, "lines": [line, line]}],
                         "interconnect.fitted[0].lines[0].up_to_bytes"),
                        ([{"op": "all_reduce", "world_size": 2, "lines": [dict(line, up_to_bytes=1e5)]}],
                         "interconnect.fitted[0].lines[0].up_to_bytes"),
                        ([{"op": "all_gather", "world_size": 2, "lines": [line]}], "interconnect.fitted[0].op"),
                        ([{"op": "p2p", "world_size": 1, "lines": [line]}], "interconnect.fitted[0].world_size"),
                        ([{"op": "p2p", "world_size": 2, "lines": [line]}] * 2, "interconnect.fitted[1]")]:
        with pytest.raises(ConfigError) as e:
            parse_interconnect(ic_dict(calibrated=cal, fitted=fitted), "t")
        assert e.value.key == key


def test_fit_profile_keeps_interconnect_and_price(tmp_path):
    """calibrate.fit.fit_profile copies every base key but efficiency/calibration: a refit keeps
    both sections (a tiny elementwise-only measurement folder)."""
    from calibrate import grids
    from calibrate.fit import fit_profile
    d = tmp_path / "l40s"
    d.mkdir()
    with open(d / "elementwise.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(grids.COLUMNS["elementwise"])
        for tokens in (1, 16, 128, 1024, 4096, 16384, 65536, 262144):
            f, b = grids.elementwise_flops_bytes("add", tokens, 4096)
            w.writerow(["add", "vendor", "bf16", tokens, 4096, f"{3e-6 + b / 7e11:.6e}", f, b])
    (d / "provenance.json").write_text(json.dumps({"device_name": "SYNTHETIC", "date_utc": "2030-01-01T00:00:00"}))
    base = base_profile_dict()
    out = fit_profile(d, ROOT / "hardware_profiles" / "l40s.yaml")
    assert out["interconnect"] == base["interconnect"] and out["price"] == base["price"]
    assert out["efficiency"]["source"].startswith("calibrated")


# ----------------------------------------------------------------------------- CLI
def test_cli_collectives_print_the_model_time():
    m = CommModel(H100)
    for cmd, fn in (("all-reduce", m.all_reduce_s), ("all-gather", m.all_gather_s),
                    ("reduce-scatter", m.reduce_scatter_s)):
        r = runner.invoke(app, ["cost", cmd, "--hardware", "h100_sxm", "--gpus", "4", "--bytes", "16777216"])
        assert r.exit_code == 0, r.output
        assert r.output.strip() == f"{fn(16777216, 4):.6e}"
    r = runner.invoke(app, ["cost", "send-recv", "--hardware", "h100_sxm", "--bytes", "1048576"])
    assert r.exit_code == 0 and float(r.output) == pytest.approx(m.send_recv_s(1048576), rel=1e-6)


def test_cli_collective_json():
    r = runner.invoke(app, ["cost", "all-reduce", "--hardware", "a100_80gb_sxm", "--gpus", "8", "--bytes", "1e9",
                            "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["time_s"] == CommModel(load_hardware("a100_80gb_sxm")).all_reduce_s(1e9, 8)
    assert (d["algorithm"], d["protocol"], d["link"], d["calibrated"]) == ("ring", "simple", "nvlink3", False)
    r = runner.invoke(app, ["cost", "send-recv", "--hardware", "t4", "--bytes", "100", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["op"] == "send_recv"


def check_error(args, *fragments):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    for f in fragments:
        assert f in r.output, (f, r.output)


def test_cli_collective_errors():
    base = ["cost", "all-reduce", "--hardware", "h100_sxm", "--bytes", "1024"]
    check_error(base + ["--gpus", "0"], "--gpus", ">= 1")
    check_error(base + ["--gpus", "9"], "at most 8 GPUs", "got 9")
    check_error(["cost", "all-gather", "--hardware", "t4", "--gpus", "8", "--bytes", "1"], "at most 4")
    check_error(["cost", "reduce-scatter", "--hardware", "h100_sxm", "--gpus", "2", "--bytes", "-5"], "--bytes", ">= 0")
    check_error(["cost", "send-recv", "--hardware", "nope", "--bytes", "1"], "unknown hardware 'nope'")


def test_cli_hardware_shows_link_and_price():
    r = runner.invoke(app, ["hardware"])
    assert r.exit_code == 0
    head, h100 = r.output.splitlines()[0], next(ln for ln in r.output.splitlines() if ln.startswith("h100_sxm"))
    assert "link" in head and "$/GPU-h" in head and "nvlink4" in h100 and "3.49" in h100
    assert "~0.39" in r.output  # the RTX 5070 Ti price is an estimate
    rows = {x["name"]: x for x in json.loads(runner.invoke(app, ["hardware", "--json"]).output)}
    assert rows["t4"]["link"] == "pcie3" and rows["t4"]["max_gpus_per_node"] == 4
    assert rows["l40s"]["usd_per_gpu_hour"] == 1.09 and rows["l40s"]["link_calibrated"] is False


# ----------------------------------------------------------------------------- NCCL fit
TRUE_AR = ((8e-6, 20e9), (30e-6, 150e9))  # (alpha_s, bandwidth) per protocol regime of the all-reduce
TRUE_P2P = (12e-6, 300e9)
SIZES = [1 << e for e in range(12, 31)]  # calibrate/nccl.py's grid: 4 KiB .. 1 GiB


def true_ar(b):
    return min(a + b / bw for a, bw in TRUE_AR)


def write_nccl(d, noise=0.02, seed=0, world=2, rows=None):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "nccl.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["op", "backend", "dtype", "bytes_per_rank", "world_size", "time_s", "algbw_bytes_per_s",
                    "busbw_bytes_per_s"])
        for op, f in (("all_reduce", true_ar), ("p2p", lambda b: TRUE_P2P[0] + b / TRUE_P2P[1])):
            for b in SIZES:
                t = f(b) * float(np.exp(rng.normal(0, noise)))
                w.writerow([op, "nccl", "bf16", b, world, f"{t:.6e}", f"{b / t:.6e}", f"{b / t:.6e}"])
        for r in rows or []:
            w.writerow(r)
    (d / "nccl_provenance.json").write_text(json.dumps({"date_utc": "2030-01-02T03:04:05+00:00",
                                                        "nccl_version": "2.99.9", "torch": "t",
                                                        "gpus": "name, driver_version\nSYNTH, 1"}))
    return d


def test_fit_lines_recovers_a_known_line_exactly():
    b = np.array(SIZES, float)
    lines = fit_lines(b, 5e-6 + b / 100e9)
    assert len(lines) == 1
    assert lines[0]["alpha_s"] == pytest.approx(5e-6, rel=1e-6)
    assert lines[0]["bandwidth_bytes_per_s"] == pytest.approx(100e9, rel=1e-6)
    assert predict_lines(lines, [1e6])[0] == pytest.approx(5e-6 + 1e6 / 100e9, rel=1e-6)


def test_nccl_fit_recovers_alpha_and_bandwidth(tmp_path):
    d = write_nccl(tmp_path / "h100_x2")
    ic = fit_interconnect(d, base_profile_dict()["interconnect"])
    ar = next(f for f in ic["fitted"] if f["op"] == "all_reduce")
    assert ar["world_size"] == 2 and len(ar["lines"]) == 2
    for got, (alpha, bw) in zip(ar["lines"], TRUE_AR):
        assert got["alpha_s"] == pytest.approx(alpha, rel=0.10)
        assert got["bandwidth_bytes_per_s"] == pytest.approx(bw, rel=0.10)
    assert 262144 < ar["lines"][0]["up_to_bytes"] < 1048576  # the regimes cross at 507,692 bytes
    p2p = next(f for f in ic["fitted"] if f["op"] == "p2p")
    assert len(p2p["lines"]) == 1
    assert p2p["lines"][0]["alpha_s"] == pytest.approx(TRUE_P2P[0], rel=0.10)
    assert p2p["lines"][0]["bandwidth_bytes_per_s"] == pytest.approx(TRUE_P2P[1], rel=0.10)
    c = ic["calibrated"]
    assert c["points"] == 2 * len(SIZES) and c["held_out_points"] == 2 * (len(SIZES) // 4)
    assert c["heldout_median_abs_pct_err"] < 4 and c["heldout_p90_abs_pct_err"] < 10  # 2 % noise
    assert c["date"] == "2030-01-02" and c["nccl_version"] == "2.99.9"
    assert ic["link"] == "pcie4" and ic["sources"] == base_profile_dict()["interconnect"]["sources"]


def test_calibrated_model_uses_fits_and_scales_unmeasured_world_sizes(tmp_path):
    ic = fit_interconnect(write_nccl(tmp_path / "x2"), base_profile_dict()["interconnect"])
    hw = with_ic(ic, load_hardware("l40s"))
    m, model = CommModel(hw), CommModel(load_hardware("l40s"))
    assert m.calibrated and not model.calibrated
    fit_ar = hw.interconnect.fits[0] if hw.interconnect.fits[0].op == "all_reduce" else hw.interconnect.fits[1]
    for b in (4096, 1e6, 1 << 28):
        assert m.all_reduce_s(b, 2) == pytest.approx(fit_ar.time_s(b), rel=1e-12)
        assert m.all_reduce_s(b, 2) == pytest.approx(true_ar(b), rel=0.15)
        ratio = fit_ar.time_s(b) / model.all_reduce_s(b, 2)
        for n in (4, 8):  # not measured: the model times the measured ratio at 2 GPUs
            assert m.all_reduce_s(b, n) == pytest.approx(model.all_reduce_s(b, n) * ratio, rel=1e-12)
            assert m.all_gather_s(b, n) == pytest.approx(model.all_gather_s(b, n) * ratio, rel=1e-12)
        assert m.send_recv_s(b) == pytest.approx(TRUE_P2P[0] + b / TRUE_P2P[1], rel=0.10)
    assert m.all_reduce_s(1e6, 1) == 0.0
    bd = m.breakdown("all_reduce", 1e6, 4)
    assert bd["calibrated"] and bd["calibrated_from"] == {"op": "all_reduce", "world_size": 2, "measured": False}
    assert bd["time_s"] == pytest.approx(bd["model_time_s"] * bd["correction"], rel=1e-12)
    assert m.breakdown("all_reduce", 1e6, 2)["calibrated_from"]["measured"] is True


def test_cli_calibrate_fit_with_nccl_only(tmp_path):
    d = write_nccl(tmp_path / "l40s_x2")
    out = tmp_path / "l40s_fitted.yaml"
    r = runner.invoke(app, ["calibrate", "fit", str(d), "--out", str(out),
                            "--base", str(ROOT / "hardware_profiles" / "l40s.yaml")])
    assert r.exit_code == 0, r.output
    assert "interconnect: pcie4 fitted" in r.output and "all_reduce  2 GPUs: 2 line(s)" in r.output
    hw = load_hardware(str(out))
    base = load_hardware("l40s")
    assert hw.interconnect.fits and hw.efficiency == base.efficiency and hw.price_source == base.price_source
    r = runner.invoke(app, ["cost", "all-reduce", "--hardware", str(out), "--gpus", "2", "--bytes", "1e6", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["calibrated"] is True
    r = runner.invoke(app, ["hardware"])  # shipped profiles only: still uncalibrated
    assert r.exit_code == 0


@pytest.mark.parametrize("mutate,fragments", [
    (lambda p: p.write_text(p.read_text().replace("busbw_bytes_per_s", "busbw")), ["nccl.csv", "'busbw_bytes_per_s'"]),
    (lambda p: p.write_text(p.read_text().replace("all_reduce,nccl,bf16,4096,2,", "all_reduce,nccl,bf16,4096,2,x")),
     ["nccl.csv", "column 'time_s', row 2"]),
    (lambda p: p.write_text(p.read_text().replace("p2p,", "p3p,", 1)), ["column 'op'", "p3p"]),
    (lambda p: p.write_text(p.read_text().replace(",2,", ",1,", 1)), ["column 'world_size', row 2", "integer >= 2"]),
])
def test_malformed_nccl_csv_is_one_line_naming_file_and_column(tmp_path, mutate, fragments):
    d = write_nccl(tmp_path / "l40s_x2")
    mutate(d / "nccl.csv")
    with pytest.raises(FitError) as e:
        read_nccl(d / "nccl.csv")
    for f in fragments:
        assert f in str(e.value)
    check_error(["calibrate", "fit", str(d), "--out", str(tmp_path / "o.yaml"),
                 "--base", str(ROOT / "hardware_profiles" / "l40s.yaml")], *fragments)


def test_nccl_fit_input_errors(tmp_path):
    base = base_profile_dict()["interconnect"]
    d = write_nccl(tmp_path / "a", world=16)
    with pytest.raises(FitError, match="exceeds the base profile's max_gpus_per_node 8"):
        fit_interconnect(d, base)
    d = write_nccl(tmp_path / "b")
    with pytest.raises(FitError, match="no 'interconnect' section"):
        fit_interconnect(d, None)
    d = tmp_path / "c"
    d.mkdir()
    header = "op,backend,dtype,bytes_per_rank,world_size,time_s,algbw_bytes_per_s,busbw_bytes_per_s\n"
    (d / "nccl.csv").write_text(header + "p2p,nccl,bf16,4096,2,1e-5,4e8,4e8\np2p,nccl,bf16,8192,2,1.1e-5,7e8,7e8\n")
    with pytest.raises(FitError, match="2 distinct sizes"):
        fit_interconnect(d, base)
