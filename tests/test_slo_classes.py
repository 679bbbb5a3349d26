"""Per-class SLO targets (slo.classes): config, the hand-computed fixture, summary and CLI."""

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import sim
from sim.cli import app
from sim.config import ConfigError, SLOConfig, SLOTargets, dump_yaml, load_config
from sim.metrics.records import Recorder
from sim.metrics.summary import format_summary, summarize
from tests.conftest import small_config

SLO = {"ttft_s": 0.5, "tpot_s": 0.05,
       "classes": {0: {"ttft_s": 0.25, "tpot_s": 0.03125}, 1: {"ttft_s": 4.0}, 3: {"e2e_s": 2.0}, 5: {"ttft_s": 1.0}}}

# (arrival, first token, finish, output tokens, class, rejected); -1 = never happened.
# The effective targets (ttft, tpot, e2e): class 0 (0.25, 0.03125, -), class 1 (4.0, 0.05, -),
# class 2 has no entry (0.5, 0.05, -), class 3 (0.5, 0.05, 2.0).
ROWS = [
    (0.0, 0.125, 0.375, 9, 0, False),   # r0 ttft .125, tpot .03125 (= target)        met
    (1.0, 1.375, 1.375, 1, 0, False),   # r1 ttft .375 > .25 (top-level would pass)   missed
    (2.0, 2.125, 2.625, 9, 0, False),   # r2 tpot .0625 > .03125                      missed
    (0.5, 3.5, 3.6875, 5, 1, False),    # r3 ttft 3.0 <= 4 (top-level would fail)     met
    (1.5, 2.0, 2.25, 5, 1, False),      # r4 tpot .0625 > .05 (falls back)            missed
    (2.5, -1, -1, 0, 1, True),          # r5 rejected: neither met nor in the denominator
    (3.0, 3.25, 3.25, 1, 2, False),     # r6 ttft .25, no tpot (one token)            met
    (3.5, 4.25, 4.25, 1, 2, False),     # r7 ttft .75 > .5                            missed
    (4.0, 4.25, 5.75, 33, 3, False),    # r8 e2e 1.75 <= 2, tpot .046875              met
    (4.5, 4.75, 7.0, 49, 3, False),     # r9 e2e 2.5 > 2                              missed
    (5.0, -1, -1, 0, 2, False),         # r10 unfinished
]


def fixture_summary(slo: SLOConfig) -> dict:
    rec = Recorder()
    for i, (a, ft, fin, n, c, rej) in enumerate(ROWS):
        rec.requests.append((i, 0, a, -1 if rej else a, ft, fin, 16, n, 0, rej, -1, c, 0.0, 0.0))
    return summarize(rec.requests_frame(), rec.iterations_frame(), [], slo)


def slo_config(data) -> SLOConfig:
    return load_config({"model": "m", "hardware": "h", "slo": data}).slo


def test_hand_computed_fixture():
    s = fixture_summary(slo_config(SLO))
    # met: r0, r3, r6, r8 of 9 completed; the run lasts 7.0 s (arrival 0 to the last finish)
    assert s["num_completed"] == 9 and s["duration_s"] == 7.0
    assert s["goodput_requests_per_s"] == pytest.approx(4 / 7)
    assert s["slo_attainment_frac"] == pytest.approx(4 / 9)
    by = s["slo_by_class"]
    assert list(by) == ["0", "1", "2", "3", "5"]
    expect = {"0": (3, 3, 1), "1": (3, 2, 1), "2": (3, 2, 1), "3": (2, 2, 1), "5": (0, 0, 0)}
    for c, (num, completed, met) in expect.items():
        d = by[c]
        assert (d["num_requests"], d["num_completed"]) == (num, completed), c
        assert d["goodput_requests_per_s"] == pytest.approx(met / 7), c
        assert d["slo_attainment_frac"] == pytest.approx(met / completed if completed else 0.0), c
    assert by["0"]["ttft_s"]["p50"] == 0.125
    assert by["0"]["ttft_s"]["p99"] == pytest.approx(np.percentile([0.125, 0.375, 0.125], 99))
    assert by["2"]["tpot_s"] == {"p50": None, "p99": None}   # one-token requests have no TPOT
    assert by["5"]["ttft_s"] == {"p50": None, "p99": None}
    assert by["1"]["targets"] == {"ttft_s": 4.0, "tpot_s": 0.05, "e2e_s": None}
    assert by["2"]["targets"] == {"ttft_s": 0.5, "tpot_s": 0.05, "e2e_s": None}
    assert by["3"]["targets"] == {"ttft_s": 0.5, "tpot_s": 0.05, "e2e_s": 2.0}
    assert sum(d["goodput_requests_per_s"] for d in by.values()) == pytest.approx(s["goodput_requests_per_s"])


def test_fixture_without_classes_uses_one_target_set():
    s = fixture_summary(slo_config({"ttft_s": 0.5, "tpot_s": 0.05}))
    # met: r0, r1, r6, r8, r9 (r2, r4: TPOT; r3, r7: TTFT)
    assert s["goodput_requests_per_s"] == pytest.approx(5 / 7)
    assert s["slo_attainment_frac"] == pytest.approx(5 / 9)
    assert "slo_by_class" not in s
    assert fixture_summary(slo_config({"ttft_s": 0.5, "tpot_s": 0.05, "classes": {}})) == s


def test_targets_for_falls_back_field_by_field():
    slo = slo_config(SLO)
    assert slo.classes[0] == SLOTargets(0.25, 0.03125, None)
    assert slo.targets_for(0) == SLOTargets(0.25, 0.03125, None)
    assert slo.targets_for(1) == SLOTargets(4.0, 0.05, None)
    assert slo.targets_for(9) == SLOTargets(0.5, 0.05, None)


def test_resolved_config_round_trips():
    cfg = load_config({"model": "m", "hardware": "h", "slo": SLO})
    assert load_config(yaml.safe_load(dump_yaml(cfg))).slo == cfg.slo   # keys come back as "0", "1"
    assert load_config(cfg).slo == cfg.slo


@pytest.mark.parametrize("classes,key,fragment", [
    ({-1: {"ttft_s": 1.0}}, "slo.classes.-1", "integer >= 0"),
    ({"gold": {"ttft_s": 1.0}}, "slo.classes.gold", "integer >= 0"),
    ({True: {"ttft_s": 1.0}}, "slo.classes.True", "integer >= 0"),
    ({1.5: {"ttft_s": 1.0}}, "slo.classes.1.5", "integer >= 0"),
    ({0: {"ttft_s": 0}}, "slo.classes.0.ttft_s", "> 0"),
    ({0: {"tpot_s": -0.1}}, "slo.classes.0.tpot_s", "> 0"),
    ({0: {"ttft_s": "fast"}}, "slo.classes.0.ttft_s", "a number"),
    ({0: {"ttft": 1.0}}, "slo.classes.0.ttft", "unknown key"),
    ({0: {"classes": {}}}, "slo.classes.0.classes", "unknown key"),
    ({0: 0.5}, "slo.classes.0", "mapping"),
    ([0.5], "slo.classes", "mapping"),
    ({0: {}, "0": {}}, "slo.classes.0", "twice"),
])
def test_config_errors_name_the_dotted_key(tmp_path, classes, key, fragment):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"model": "m", "hardware": "h", "slo": {"ttft_s": 1.0, "classes": classes}}))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert e.value.key == key and fragment in e.value.message and e.value.source == str(p)


def test_unknown_slo_key_still_rejected():
    with pytest.raises(ConfigError) as e:
        slo_config({"ttft_s": 1.0, "class": {0: {}}})
    assert e.value.key == "slo.class" and "classes" in e.value.message


def _run(slo):
    return sim.run(small_config(workload__num_requests=120,
                                workload__priority={"name": "uniform", "params": {"low": 1, "high": 3}}),
                   slo=slo)


def test_simulated_run_class_breakdown_adds_up():
    res = _run({"ttft_s": 0.2, "tpot_s": 0.05, "classes": {1: {"ttft_s": 0.05}, 3: {"ttft_s": 10.0}}})
    s = res.summary()
    by = s["slo_by_class"]
    assert list(by) == ["1", "2", "3"]
    assert sum(d["num_requests"] for d in by.values()) == s["num_requests"]
    assert sum(d["goodput_requests_per_s"] for d in by.values()) == pytest.approx(s["goodput_requests_per_s"])
    # the same targets, recomputed from the requests table by hand
    done = res.requests[res.requests["finish_s"] >= 0]
    ttft_target = done["priority"].map({1: 0.05, 2: 0.2, 3: 10.0})
    tp = done["tpot_s"]
    met = (done["ttft_s"] <= ttft_target) & (tp.isna() | (tp <= 0.05))
    assert s["goodput_requests_per_s"] == pytest.approx(met.sum() / s["duration_s"])
    for c in (1, 2, 3):
        m = done["priority"] == c
        assert by[str(c)]["slo_attainment_frac"] == pytest.approx(met[m].mean())
    table = format_summary(s)
    assert all(f"class {c}" in table for c in (1, 2, 3))


def test_without_classes_summary_is_unchanged():
    res = _run({"ttft_s": 0.2, "tpot_s": 0.05})
    s = res.summary()
    assert "slo_by_class" not in s and "class " not in format_summary(s)
    done = res.requests[res.requests["finish_s"] >= 0]   # the formula before per-class targets
    tp = done["tpot_s"].to_numpy()
    met = (done["ttft_s"].to_numpy() <= 0.2) & np.where(np.isnan(tp), True, tp <= 0.05)
    assert s["goodput_requests_per_s"] == met.sum() / s["duration_s"]
    assert s["slo_attainment_frac"] == met.mean()
    # a class entry equal to the top-level targets changes nothing but adds the breakdown
    s2 = _run({"ttft_s": 0.2, "tpot_s": 0.05, "classes": {2: {"ttft_s": 0.2}}}).summary()
    assert {k: v for k, v in s2.items() if k != "slo_by_class"} == s


def test_cli_prints_one_line_per_class(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(small_config(workload__num_requests=40,
                                             workload__priority={"name": "uniform", "params": {"low": 1, "high": 2}})))
    r = CliRunner().invoke(app, ["run", str(p), "--no-progress",
                                 "--set", "slo={ttft_s: 0.5, tpot_s: 0.05, classes: {1: {ttft_s: 0.1}}}"])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip().startswith("class ")]
    assert len(lines) == 2 and "class 1" in lines[0] and "class 2" in lines[1]
    assert "meeting its SLO" in lines[0] and "TTFT p99" in lines[0]
