"""In-step / whole-step comparisons (calibrate/compare_instep.py, compare_wholestep.py) and the
torch-free step-shape syntax (sim/cost/step_shape.py), on tiny synthetic CSVs and a synthetic
profile whose prices are hand arithmetic (no torch)."""
import csv

import numpy as np
import pytest
import yaml

from calibrate import compare_instep as ci
from calibrate import compare_wholestep as cw
from calibrate import stepshape
from sim.cost import step_shape as ss
from sim.cost.base import BatchShape
from sim.cost.ops import Gemm, op_time
from sim.cost.roofline import RooflineCost
from sim.engine.cuda_graphs import CudaGraphCost
from sim.hardware import load_hardware, profile_from_dict
from sim.model_spec import load_model

KINDS = ("gemm", "attn_prefill", "attn_decode", "elementwise")
# a profile without curves or tables: t = max(F / (1e15 * 0.5), B / (1e12 * 0.5)) + 1 us per launch
EFF = {k: {"compute_frac": 0.5, "bandwidth_frac": 0.5, "launch_s": 1e-6} for k in KINDS}
PROFILE = {"name": "x", "display_name": "x", "memory_bytes": 1e11, "memory_bandwidth_bytes_per_s": 1e12,
           "peak_flops_per_s": {"bf16": 1e15}, "l2_bytes": 1e6, "num_sms": 100, "nvlink_bandwidth_bytes_per_s": 0,
           "pcie_bandwidth_bytes_per_s": 1e10,
           "efficiency": {"default_backend": "vendor", "backends": {"vendor": EFF, "triton": EFF}},
           "calibration": {"launch_overhead_s": {"graph": 2e-7}}}
HW = profile_from_dict(PROFILE)


@pytest.fixture
def profile_path(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text(yaml.safe_dump(PROFILE))
    return str(p)


# ---------------------------------------------------------------- the shape syntax
STRINGS = [("2048x1,512x4", "64@1024"), ("512+1536x2", ""), ("", "4@64:1984"), ("", "1@7:9,3@5"),
           (" 8x3 , 16+4x1 ", " 2@16 , 1@40 "), ("", "3@5:5")]
BAD = [("2048y1", ""), ("0x4", ""), ("4x0", ""), ("", "3@0"), ("", "4@9:5"), ("", "x@4"), ("512+x1", "")]


@pytest.mark.parametrize("prefill,decode", STRINGS)
def test_sim_parser_agrees_with_calibrate(prefill, decode):
    assert ss.parse_shape(prefill, decode) == stepshape.parse_shape(prefill, decode)
    chunks, _ = ss.parse_shape(prefill, decode)
    assert ss.format_prefill(chunks) == stepshape.format_prefill(chunks)
    step = f"{prefill};{decode}"
    assert ss.parse_step(step) == stepshape.parse_step(step)


@pytest.mark.parametrize("prefill,decode", BAD)
def test_sim_parser_rejects_what_calibrate_rejects(prefill, decode):
    with pytest.raises(ValueError) as a:
        ss.parse_shape(prefill, decode)
    with pytest.raises(ValueError) as b:
        stepshape.parse_shape(prefill, decode)
    assert str(a.value) == str(b.value)


def test_shape_values_and_batch_shape():
    assert ss.parse_decode("4@64:1984") == [64, 704, 1344, 1984]
    assert ss.parse_prefill("512+1536x2,8x1") == [(512, 1536), (512, 1536), (8, 0)]
    chunks, ctxs = ss.parse_shape("2048x1,512x4", "64@1024")
    b = ss.batch_shape(chunks, ctxs)
    assert (b.num_prefill_tokens, b.num_decode, b.decode_context_sum, b.num_sampled) == (4096, 64, 65536, 69)
    assert ss.batch_shape(chunks, ctxs, num_sampled=3).num_sampled == 3
    assert ss.phase(chunks, ctxs) == "mixed" and ss.phase([], ctxs) == "decode" and ss.phase(chunks, []) == "prefill"
    with pytest.raises(ValueError, match="PREFILL;DECODE"):
        ss.parse_step("8x1")


# ---------------------------------------------------------------- op mapping (hand arithmetic)
def test_op_mapping_against_hand_computed_prices():
    pr = ci.StepOpPricer(HW)
    # llama GEMM m=1 n=6144 k=4096: bytes (4096 + 4096*6144) * 2 + 6144 * 2 = 50,352,128 at 5e11 B/s, + 1 us
    t = pr.predict("llama-3.1-8b", "vendor", "qkv", "gemm", "m=1 n=6144 k=4096")
    assert t == pytest.approx(50352128 / 5e11 + 1e-6, rel=1e-12)
    assert t == op_time(HW, Gemm(1, 6144, 4096), "vendor")
    # decode 2@16,1@40 as the simulator sees it: 3 sequences over 72 keys; 72 keys x 4096 B (K and V,
    # 8 kv heads x 128 x 2 B each) + 3 x 16384 B (q and o, 32 heads x 128 x 2 B each), + 1 us
    t = pr.predict("llama-3.1-8b", "vendor", "attn_decode", "attn_decode", "decode=2@16,1@40 heads=32/8/128")
    assert t == pytest.approx((72 * 4096 + 3 * 16384) / 5e11 + 1e-6, rel=1e-12)
    # prefill 8x2: one varlen launch of two 8-token prompts: 2 x 8 x (16384 + 4096) bytes, + 1 us
    t = pr.predict("llama-3.1-8b", "triton", "attn_prefill", "attn_prefill", "prefill=8x2 heads=32/8/128")
    assert t == pytest.approx(2 * 8 * (16384 + 4096) / 5e11 + 1e-6, rel=1e-12)
    # the fp32 logits copy of 2 sampled rows is priced as the simulator's sampling op: copy of [2, 2 x vocab]
    t = pr.predict("llama-3.1-8b", "vendor", "logits", "elementwise", "tokens=2 hidden=128256")
    assert t == pytest.approx(2 * 2 * 2 * 128256 * 2 / 5e11 + 1e-6, rel=1e-12)
    # embed is a [tokens, hidden] copy, final_norm an rmsnorm (reads and writes the row, plus the weight)
    t = pr.predict("llama-3.1-8b", "vendor", "final_norm", "elementwise", "tokens=4 hidden=4096")
    assert t == pytest.approx((2 * 4 * 4096 * 2 + 4096 * 2) / 5e11 + 1e-6, rel=1e-12)
    assert pr.predict("llama-3.1-8b", "vendor", "kv_write", "other", "prefill= decode=1@512") is None
    with pytest.raises(ci.CompareError):
        pr.predict("llama-3.1-8b", "vendor", "softmax", "elementwise", "tokens=4 hidden=4096")


def test_op_mapping_is_the_simulators_step_price_on_a_calibrated_profile():
    """On a profile with tables, the per-launch decode and prefill attention prices times the
    layer count are exactly what RooflineCost charges for those steps."""
    hw = load_hardware("h200_sxm")
    pr = ci.StepOpPricer(hw)
    m = load_model("qwen2.5-7b")
    cost = RooflineCost(m, hw, backend="triton")
    t = pr.predict("qwen2.5-7b", "triton", "attn_decode", "attn_decode", "decode=64@64:1984 heads=28/4/128")
    ctx = ss.parse_decode("64@64:1984")
    assert t * m.num_layers == pytest.approx(cost.step_time(BatchShape([], 64, sum(ctx), 0)).attn_s, rel=1e-12)
    t = pr.predict("qwen2.5-7b", "triton", "attn_prefill", "attn_prefill", "prefill=256x16 heads=28/4/128")
    assert t * m.num_layers == pytest.approx(cost.step_time(BatchShape([(256, 0)] * 16, 0, 0, 0)).attn_s, rel=1e-12)


# ---------------------------------------------------------------- in-step tables on a tiny CSV
def _write(path, columns, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def _instep_rows():
    """Three decode GEMM shapes whose in-step times are the synthetic price divided by 1.0, 1.1
    and 0.8 (predicted / in-step = those), a bench_read row 10 % slower than in-step, and a KV
    write (kind other) beside an RMSNorm and the LM head."""
    pr = ci.StepOpPricer(HW)
    rows = []
    for m, ratio in ((1, 1.0), (8, 1.1), (32, 0.8)):
        shape = f"m={m} n=6144 k=4096"
        t = pr.predict("llama-3.1-8b", "vendor", "qkv", "gemm", shape) / ratio
        base = dict(model="llama-3.1-8b", backend="vendor", step=f";{m}@512", op="qkv", kind="gemm", shape=shape)
        rows.append(dict(base, method="instep", time_s=f"{t:.9e}"))
        rows.append(dict(base, method="bench_read", time_s=f"{t * 1.1:.9e}"))
    base = dict(model="llama-3.1-8b", backend="vendor", step=";1@512")
    rows += [dict(base, op="rmsnorm", kind="elementwise", shape="tokens=1 hidden=4096", method="instep", time_s="1e-6"),
             dict(base, op="kv_write", kind="other", shape="prefill= decode=1@512", method="instep", time_s="2e-6"),
             dict(base, op="lm_head", kind="gemm", shape="m=1 n=128256 k=4096", method="instep", time_s="1e-5")]
    return rows


def test_error_method_and_other_tables(tmp_path):
    _write(tmp_path / "instep.csv", ci.COLUMNS, _instep_rows())
    rows = ci.read_rows(tmp_path, "instep.csv", ci.COLUMNS)
    err = ci.error_table(rows, {"new": ci.StepOpPricer(HW)})
    g = next(r for r in err if r["kind"] == "gemm")
    assert (g["phase"], g["backend"], g["source"]) == ("decode", "vendor", "new")
    ratios = [1.0, 1.1, 0.8]
    lm = ci.StepOpPricer(HW).predict("llama-3.1-8b", "vendor", "lm_head", "gemm", "m=1 n=128256 k=4096") / 1e-5
    ratios.append(lm)
    assert g["n"] == 4
    assert g["median_ratio"] == pytest.approx(float(np.median(ratios)), rel=1e-6)
    assert g["median_abs_pct_err"] == pytest.approx(float(np.median([abs(x - 1) * 100 for x in ratios])), rel=1e-6)
    assert g["p90_abs_pct_err"] == pytest.approx(float(np.percentile([abs(x - 1) * 100 for x in ratios], 90)), rel=1e-6)
    meth = ci.method_table(rows)
    assert len(meth) == 1 and meth[0]["source"] == "bench_read" and meth[0]["n"] == 3
    assert meth[0]["median_ratio"] == pytest.approx(1.1, rel=1e-6)
    assert meth[0]["median_abs_pct_err"] == pytest.approx(10.0, rel=1e-5)
    other = ci.other_table(rows)
    assert len(other) == 1 and other[0]["ops"] == "kv_write" and other[0]["steps"] == 3
    oth = {(r["model"], r["phase"]): r for r in other}
    # ;1@512: rmsnorm 2 x 32 x 1 us, kv_write 32 x 2 us, qkv 32 x t(m=1), lm_head 1 x 10 us; the other steps none
    t1 = ci.StepOpPricer(HW).predict("llama-3.1-8b", "vendor", "qkv", "gemm", "m=1 n=6144 k=4096")
    frac_1 = 64e-6 / (64e-6 + 64e-6 + 32 * t1 + 1e-5)
    assert oth[("llama-3.1-8b", "decode")]["median_other_frac"] == pytest.approx(float(np.median([frac_1, 0, 0])))
    assert oth[("llama-3.1-8b", "decode")]["median_other_s"] == 0.0  # two of three steps have none


def test_budget_verdicts_and_report(tmp_path, profile_path):
    _write(tmp_path / "instep.csv", ci.COLUMNS, _instep_rows())
    rows = ci.read_rows(tmp_path, "instep.csv", ci.COLUMNS)
    bud = ci.budget_table(rows, ci.StepOpPricer(HW))
    assert len(bud) == 1 and bud[0]["steps"] == 3
    # ;8@512 and ;32@512 have one op each, priced 1.1 and 0.8 x its in-step time; ;1@512 sums
    # qkv (priced = in-step), 64 norms, 32 KV writes (priced 0) and the LM head (2.1 ms priced, 10 us measured)
    pr = ci.StepOpPricer(HW)
    t1 = pr.predict("llama-3.1-8b", "vendor", "qkv", "gemm", "m=1 n=6144 k=4096")
    norm = pr.predict("llama-3.1-8b", "vendor", "rmsnorm", "elementwise", "tokens=1 hidden=4096")
    lm = pr.predict("llama-3.1-8b", "vendor", "lm_head", "gemm", "m=1 n=128256 k=4096")
    assert norm == pytest.approx((2 * 4096 * 2 + 4096 * 2) / 5e11 + 1e-6, rel=1e-12)
    meas1 = 32 * t1 + 64e-6 + 64e-6 + 1e-5
    r1 = (32 * t1 + 64 * norm + lm) / meas1
    assert bud[0]["median_ratio"] == pytest.approx(float(np.median([r1, 1.1, 0.8])), rel=1e-6)
    assert bud[0]["other_pct"] == pytest.approx(float(np.median([-64e-6 / meas1 * 100, 0.0, 0.0])))
    err = ci.error_table(rows, {"new": ci.StepOpPricer(HW)})
    v = ci.family_verdicts(err, "new")
    assert [(x["kind"], x["meets"]) for x in v] == [("gemm", False)]  # p90 of 0, 10, 20, lm_head's error
    md = ci.report(tmp_path, {"new": profile_path, "old": profile_path})
    assert "| gemm | decode | vendor | new | 4 |" in md and "| gemm | decode | vendor | old | 4 |" in md
    assert "bench_read" in md and "kv_write" in md and "MISSES" in md


def test_read_rows_errors(tmp_path):
    with pytest.raises(ci.CompareError, match="no such file"):
        ci.read_rows(tmp_path, "instep.csv", ci.COLUMNS)
    (tmp_path / "instep.csv").write_text("model,backend\nx,y\n")
    with pytest.raises(ci.CompareError, match="missing columns"):
        ci.read_rows(tmp_path, "instep.csv", ci.COLUMNS)
    _write(tmp_path / "instep.csv", ci.COLUMNS, [dict(_instep_rows()[0], time_s="-1")])
    with pytest.raises(ci.CompareError, match="positive"):
        ci.read_rows(tmp_path, "instep.csv", ci.COLUMNS)
    assert ci.main([str(tmp_path / "nope"), "--profile", "h200_sxm"]) == 2


# ---------------------------------------------------------------- whole steps
@pytest.mark.parametrize("backend", ["vendor", "triton"])
@pytest.mark.parametrize("n,ctx", [(1, 256), (16, 1024), (64, 4096), (512, 256)])
def test_graph_price_equals_cuda_graph_cost_at_captured_sizes(backend, n, ctx):
    hw = load_hardware("h200_sxm")
    cost = RooflineCost(load_model("llama-3.1-8b"), hw, backend=backend)
    shape = BatchShape([], n, n * ctx, n)
    g = cw.graph_step_time(cost, shape, 5.51e-7)
    ref = CudaGraphCost(cost, 512, 5.51e-7).step_time(shape)
    assert g.total_s == pytest.approx(ref.total_s, rel=1e-12)
    assert (g.gemm_s, g.attn_s, g.other_s) == pytest.approx((ref.gemm_s, ref.attn_s, ref.other_s), rel=1e-12)


def test_graph_price_saves_every_launch_of_the_inventory():
    cost = RooflineCost(load_model("llama-3.1-8b"), HW)
    save = 1e-6 - 2e-7
    # decode: 4 x 32 + 1 GEMMs, 6 x 32 + 3 elementwise, 32 attention = 356 launches
    shape = BatchShape([], 2, 32, 2)
    assert cost.step_time(shape).total_s - cw.graph_step_time(cost, shape, 2e-7).total_s == \
        pytest.approx(356 * save, rel=1e-9)
    # mixed: one more attention launch per layer; no sampled rows: no LM head, no sampling
    shape = BatchShape([(8, 0)], 2, 32, 0)
    assert cost.step_time(shape).total_s - cw.graph_step_time(cost, shape, 2e-7).total_s == \
        pytest.approx((128 + 194 + 64) * save, rel=1e-9)
    assert cw.profile_graph_launch_s(HW) == 2e-7
    assert cw.profile_graph_launch_s(load_hardware("t4")) == cw.DEFAULT_GRAPH_LAUNCH_S


def _wholestep_rows():
    """Two steps of llama on the synthetic profile: a decode step measured at exactly its graph
    price (held out) and its eager price / 0.9; a prefill step at its prices / 1.2 (not held out)."""
    pr = cw.StepPricer(HW)
    rows = []
    for pf, dc, ratio, held in (("", "2@16", 1.0, 1), ("8x2", "", 1.2, 0)):
        base = dict(model="llama-3.1-8b", backend="vendor", phase="decode" if dc else "prefill", prefill=pf,
                    decode=dc, num_layers="32", heldout=str(held))
        for mode, r in (("graph", ratio), ("eager_sum", 0.9 if dc else ratio)):
            t = pr.predict(dict(base, mode=mode)).total_s / r
            rows.append(dict(base, mode=mode, time_s=f"{t:.12e}"))
    return rows


def test_wholestep_tables(tmp_path, profile_path):
    _write(tmp_path / "wholestep.csv", cw.COLUMNS, _wholestep_rows())
    rows = ci.read_rows(tmp_path, "wholestep.csv", cw.COLUMNS)
    pred = cw.predictions(rows, cw.StepPricer(HW))
    assert [round(p["ratio"], 9) for p in pred] == [1.0, 0.9, 1.2, 1.2]
    tab = {(r["mode"], r["model"], r["phase"]): r for r in cw.error_table(pred)}
    allg = tab[("graph", "all", "all")]
    assert allg["all"]["n"] == 2 and allg["all"]["median_ratio"] == pytest.approx(1.1)
    assert allg["heldout"]["n"] == 1 and allg["heldout"]["median_abs_pct_err"] == pytest.approx(0.0, abs=1e-7)
    assert cw.meets(allg["heldout"]) is True
    assert tab[("eager_sum", "llama-3.1-8b", "decode")]["heldout"]["median_ratio"] == pytest.approx(0.9)
    assert tab[("graph", "llama-3.1-8b", "prefill")]["heldout"] is None
    md = cw.report(tmp_path, {"new": profile_path}, detail=True, per_row=True)
    assert "new: graph: held out meets" in md and "new: eager_sum: held out MISSES" in md
    assert "| llama-3.1-8b |" in md and "`8x2;`" in md
    with pytest.raises(cw.CompareError, match="mode"):
        cw.StepPricer(HW).predict(dict(rows[0], mode="replay"))


def test_sustained_summary(tmp_path):
    _write(tmp_path / "sustained_clocks.csv", ["time_s", "sm_mhz", "mem_mhz", "power_w", "temp_c", "throttle"],
           [dict(time_s=i / 10, sm_mhz=1600 + 10 * i, mem_mhz=3201, power_w=690, temp_c=60,
                 throttle="0x0000000000000004" if i else "0x0000000000000001") for i in range(5)])
    s = cw.sustained_summary(tmp_path)
    assert s["sm_mhz"][1] == 1620 and s["power_w"][1] == 690
    assert s["throttle_share"] == {"gpu_idle": 0.2, "sw_power_cap": 0.8}
    assert cw.throttle_names("0x000000000000000c") == ["sw_power_cap", "hw_slowdown"]
    assert cw.throttle_names("0x0") == ["none"] and cw.throttle_names("[N/A]") == ["[N/A]"]
    assert "sw_power_cap 80%" in cw.format_sustained(s)


def test_shipped_truth_decode_families_meet_targets_on_the_shipped_profile():
    """The committed H200 truth against the shipped H200 profile: the issue's decode targets."""
    from pathlib import Path
    d = Path(__file__).resolve().parent.parent / "calibrate" / "data" / "h200_sxm" / "truth"
    if not (d / "instep.csv").exists():
        pytest.skip("no H200 truth data")
    hw = load_hardware("h200_sxm")
    rows = ci.read_rows(d, "instep.csv", ci.COLUMNS)
    v = ci.family_verdicts(ci.error_table(rows, {"new": ci.StepOpPricer(hw)}), "new")
    assert len(v) == 4 and all(x["meets"] for x in v), [(x["kind"], x["backend"], x["median_abs_pct_err"],
                                                          x["p90_abs_pct_err"]) for x in v]


def test_summary_keeps_the_truth_section():
    from pathlib import Path

    from calibrate.summary import summary_markdown
    truth = Path(__file__).resolve().parent.parent / "calibrate" / "reports" / "truth_h200_sxm.md"
    if not truth.exists():
        pytest.skip("no truth section")
    md = summary_markdown(["h200_sxm"])
    assert md.rstrip("\n").endswith(truth.read_text().rstrip("\n"))
    assert "## In-step and whole-step truth (H200, 2026-12-01)" in md
    assert "truth_h200_sxm" not in summary_markdown(["h100_sxm"])
