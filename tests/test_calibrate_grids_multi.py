"""Many-sequence calibration: the grids of calibrate.grids_multi (sizes, held-out marks, the
length syntax), reading attn_*_multi.csv, the simulator's pricing of a mixed launch, the
runner's time estimate, and the fit on synthetic data made with known many-sequence terms
(per-program costs, whole-block prefill work, the decode chain floor) or a known decode
imbalance effect (calibrate.fit_multi).

Synthetic measurements exist only inside tmp_path: generated from known OpEfficiency
parameters through sim.cost.ops plus seeded multiplicative noise.  Nothing here is real data.
"""
from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calibrate import estimate, fit_multi, grids, grids_multi
from calibrate.fit import fit_profile
from calibrate.measurements import (FitError, MultiPrefill, fold_multi, is_heldout, make_op, read_measurements,
                                    shape_key)
from sim.cost.ops import AttnDecode, AttnPrefill, op_time, prefill_chain_flops
from sim.hardware import OpEfficiency, load_hardware
from tests.conftest import ROOT

BASE = ROOT / "hardware_profiles" / "h100_sxm.yaml"


# ------------------------------------------------------------------------------ length syntax
def test_length_syntax_examples():
    assert grids_multi.parse_lengths("512x48;128+896x16") == [(512, 0, 48), (128, 896, 16)]
    assert grids_multi.format_lengths([(128, 896)] * 16 + [512] * 48) == "512x48;128+896x16"
    assert grids_multi.format_lengths([3, 700, 3, 700, 700]) == "700x3;3x2"
    for bad in ("", "512", "x3", "512x0", "0x3", "512+x3", "12+3", "512x3;", "05x3", "1.5x2"):
        with pytest.raises(ValueError, match="expected new"):
            grids_multi.parse_lengths(bad)
    with pytest.raises(ValueError, match="no '\\+prior'"):
        grids_multi.parse_lengths("100+20x3", allow_prior=False)
    with pytest.raises(ValueError):
        grids_multi.format_lengths([])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5000), st.sampled_from([0, 0, 1, 17, 4096])), min_size=1, max_size=40))
def test_length_syntax_round_trip(seqs):
    text = grids_multi.format_lengths(seqs)
    back = grids_multi.expand_lengths(text)
    assert sorted(back) == sorted(seqs)                       # the same multiset of sequences
    assert grids_multi.format_lengths(back) == text           # canonical: a fixed point
    assert len(text.split(";")) == len(set(seqs))             # one entry per distinct (new, prior)


# ------------------------------------------------------------------------------ grids
def test_grids_multi_importable_without_torch():
    src = open(grids_multi.__file__).read()
    assert "import torch" not in src and "import triton" not in src


def test_prefill_multi_grid_sizes():
    launches = grids_multi.prefill_multi_launches()
    assert len(launches) == len(set(launches))
    pts = grids_multi.prefill_multi_grid()
    assert len(pts) == len(launches) * len(grids.HEAD_CONFIGS)
    old = {(b, s, kv) for b, s, kv in grids.PREFILL_SHAPES}
    n_equal = n_mixed = n_chunked = 0
    for ln in launches:
        assert grids_multi.format_lengths(grids_multi.expand_lengths(ln)) == ln  # stored canonical
        seqs = grids_multi.expand_lengths(ln)
        assert 16 <= len(seqs) <= 256, ln
        assert all(16 <= n <= 2048 for n, _ in seqs), ln
        assert sum(n for n, _ in seqs) <= grids_multi.PREFILL_MULTI_MAX_TOKENS, ln
        distinct = set(seqs)
        if len(distinct) == 1:
            n, p = seqs[0]
            assert (len(seqs), n, n + p) not in old, ln  # never re-measures the single-sequence grid
            n_equal += 1
        else:
            n_mixed += 1
        n_chunked += any(p for _, p in seqs)
    assert n_equal >= 50 and n_mixed >= 15 and n_chunked >= 12
    # every row of the new table rows is dense: 16-256 sequences, many lengths each
    for b in grids_multi.PREFILL_MULTI_BATCHES:
        lens = {grids_multi.expand_lengths(ln)[0][0] for ln in launches
                if len(set(grids_multi.expand_lengths(ln))) == 1 and len(grids_multi.expand_lengths(ln)) == b
                and not grids_multi.expand_lengths(ln)[0][1]}
        assert len(lens) >= 5, b
    assert set(grids_multi.PREFILL_MULTI_HELDOUT) <= set(launches)


def test_decode_multi_grid_sizes():
    pts = grids_multi.decode_multi_grid()
    assert len(pts) == len(set(pts))
    for h, kvh, d, ln in pts:
        ctx = [c for c, _ in grids_multi.expand_lengths(ln, allow_prior=False)]
        assert 1 <= len(ctx) <= 2048 and min(ctx) >= 16
        assert grids.decode_kv_bytes(1, sum(ctx), kvh, d) <= grids.DECODE_KV_LIMIT_BYTES
    for h, kvh, d in grids.HEAD_CONFIGS:
        mine = {ln for hh, kk, dd, ln in pts if (hh, kk, dd) == (h, kvh, d)}
        for b in grids_multi.DECODE_MULTI_BATCHES:  # new rows, from the shortest context
            assert grids_multi.format_lengths([16] * b) in mine and grids_multi.format_lengths([1024] * b) in mine
        for b in grids.DECODE_BATCHES + grids.DECODE_BATCHES_HALF:  # short contexts for every old row
            assert {grids_multi.format_lengths([c] * b) for c in grids_multi.DECODE_CONTEXTS_SHORT} <= mine
        assert set(grids_multi.DECODE_MULTI_HELDOUT) <= mine
        assert sum(len(set(grids_multi.expand_lengths(ln))) > 1 for ln in mine) >= 15  # mixed launches
    # only the cache limit removes shapes: 2048 x 32768 fits for 2 KV heads of 64, not for 8 of 128
    assert (14, 2, 64, "32768x2048") in pts and (32, 8, 128, "32768x2048") not in pts


def test_grids_are_deterministic():
    """Reruns give the same grid: regenerating the mixed launches from their seeds gives the
    committed lists, and they depend on random.Random(seed).random() only."""
    assert grids_multi._prefill_mixed() == grids_multi.PREFILL_MULTI_MIXED
    assert grids_multi._decode_mixed() == grids_multi.DECODE_MULTI_MIXED
    d1, d2 = grids_multi._Draw(5), grids_multi._Draw(5)
    assert [d1.split(100, 6) for _ in range(20)] == [d2.split(100, 6) for _ in range(20)]
    for _ in range(50):
        parts = d1.split(37, 5)
        assert len(parts) == 5 and sum(parts) == 37 and min(parts) >= 1


def test_multi_flops_bytes_sum_each_sequence():
    h, kvh, d = 32, 8, 128
    ln = "512x48;128+896x16"
    fl, by = grids_multi.prefill_multi_flops_bytes(ln, h, kvh, d)
    a = grids.prefill_flops_bytes(48, 512, 512, h, kvh, d)
    b = grids.prefill_flops_bytes(16, 128, 1024, h, kvh, d)
    assert (fl, by) == (a[0] + b[0], a[1] + b[1])
    op = MultiPrefill(tuple(grids_multi.parse_lengths(ln)), h, kvh, d)
    assert (op.flops(), op.bytes()) == (fl, by)
    assert op.query_blocks() == 48 * 4 + 16 and op.table_row() == 48 * 4 + 16  # chunked: query blocks
    assert op.chain_flops() == prefill_chain_flops(d, 1024)
    fl, by = grids_multi.decode_multi_flops_bytes("700x3;16x200", h, kvh, d)
    ref = [grids.decode_flops_bytes(3, 700, h, kvh, d), grids.decode_flops_bytes(200, 16, h, kvh, d)]
    assert (fl, by) == (ref[0][0] + ref[1][0], ref[0][1] + ref[1][1])


def test_heldout_marks():
    for ln in grids_multi.PREFILL_MULTI_HELDOUT:
        r = {"src": "many_mixed" if ";" in ln else "many_equal", "lengths": ln, "dtype": "bf16", "batch": 1,
             "seq_q": 1, "seq_kv": 1, "heads": 32, "kv_heads": 8, "head_dim": 128}
        assert is_heldout("attn_prefill", r)
    mixed = {"src": "many_mixed", "lengths": "700x3;16x200", "dtype": "bf16", "batch": 203, "context": None,
             "heads": 32, "kv_heads": 8, "head_dim": 128}
    assert shape_key("attn_decode", mixed) == \
        "attn_decode_multi:bf16:batch=203,contexts=700x3;16x200,heads=32,kv_heads=8,head_dim=128"
    marked = dict(mixed, lengths="4000x4;200x60", batch=64)
    assert is_heldout("attn_decode", marked)
    # a quarter of the mixed launches by hash, as for the other shapes
    n = [is_heldout("attn_prefill", {"src": "many_mixed", "lengths": ln, "dtype": "bf16", "heads": h,
                                     "kv_heads": kvh, "head_dim": d, "batch": len(grids_multi.expand_lengths(ln))})
         for h, kvh, d, ln in grids_multi.prefill_multi_grid() if ";" in ln]
    assert 0.1 < np.mean(n) < 0.45


# ------------------------------------------------------------------------------ the simulator's pricing
@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3000), st.sampled_from([0, 0, 300, 2000])), min_size=2, max_size=30),
       st.sampled_from(["vendor", "triton"]))
def test_mixed_prefill_is_priced_as_the_simulator_prices_it(chunks, backend):
    """op_time of the folded mixed row's op = the step model's prefill attention / layers."""
    from sim.cost.roofline import RooflineCost
    from sim.model_spec import load_model
    m = load_model("llama-3.1-8b")
    hw = load_hardware("h200_sxm")
    c = RooflineCost(m, hw, backend=backend)
    op = MultiPrefill(tuple(grids_multi.parse_lengths(grids_multi.format_lengths(chunks))), m.num_heads,
                      m.num_kv_heads, m.head_dim, c.dtype)
    assert m.num_layers * op_time(hw, op, backend) == pytest.approx(c._attn_prefill(chunks), rel=1e-9)


def test_mixed_decode_is_priced_on_requests_and_summed_context():
    from sim.cost.roofline import RooflineCost
    from sim.model_spec import load_model
    m = load_model("llama-3.1-8b")
    hw = load_hardware("h200_sxm")
    c = RooflineCost(m, hw, backend="vendor")
    r = {"src": "many_mixed", "lengths": "700x3;16x200", "dtype": "bf16", "batch": 203, "heads": m.num_heads,
         "kv_heads": m.num_kv_heads, "head_dim": m.head_dim}
    op = make_op("attn_decode", r)
    assert isinstance(op, AttnDecode) and op.batch * op.context == pytest.approx(3 * 700 + 200 * 16)
    assert m.num_layers * op_time(hw, op, "vendor") == pytest.approx(c._attn_decode(203, 2100 + 3200), rel=1e-9)


# ------------------------------------------------------------------------------ time estimate
def test_estimate_reproduces_the_measured_h200_run_and_fits_one_call():
    """The first-principles estimate of the single-sequence grids is within 10 % of the measured
    H200 op times, and a full run with the many-sequence grids fits a 10-minute call."""
    prov = json.loads((ROOT / "calibrate" / "data" / "h200_sxm" / "provenance.json").read_text())
    passes = {"gemm": 1, "attn_prefill": 3, "attn_decode": 3, "elementwise": 5,
              "attn_prefill_multi": 3, "attn_decode_multi": 3}
    est = estimate.run_seconds(grids.OPS, passes, peaks=prov["peaks"])
    for op, measured in estimate.CALIBRATION_RUN.items():
        assert est[op]["seconds"] == pytest.approx(measured, rel=0.10), op
    assert est["attn_prefill_multi"]["seconds"] < 60 and est["attn_decode_multi"]["seconds"] < 90
    assert est["total_s"] < 480
    # window arithmetic: a 1 ms kernel after a 256 MB flush at 75 % of 4.8 TB/s, 10 ms windows
    r = estimate.Rates(989.4e12, 4.8e12)
    f = 256e6 / (0.75 * 4.8e12)
    e = f + 1e-3
    want = estimate.HOST_S + 1e-3 + (6 * e + 1.8e-3) + 4 * 1e-3 + 9 * e + 0.5e-3  # 4 warm-up, 9 timed
    assert estimate.window_s(1e-3, r, 10, 50) == pytest.approx(want)


# ------------------------------------------------------------------------------ reading
def _write(path, kind, rows):
    with open(path / f"{kind}.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(grids.COLUMNS[kind])
        w.writerows(rows)


def test_reading_checks_the_length_columns(tmp_path):
    h, kvh, d = 32, 8, 128
    fl, by = grids_multi.prefill_multi_flops_bytes("512x3;16x13", h, kvh, d)
    good = ["attn_prefill_multi", "triton", "bf16", 16, "512x3;16x13", h, kvh, d, 1e-4, fl, by, 512, 1744]
    _write(tmp_path, "attn_prefill_multi", [good])
    frames = read_measurements(tmp_path)
    folded = fold_multi(frames)["attn_prefill"]
    assert list(folded["src"]) == ["many_mixed"] and folded["lengths"][0] == "512x3;16x13"
    for i, bad, msg in ((4, "512x3;16+x13", "lengths: bad entry"), (3, 15, "batch 15 disagrees"),
                        (12, 1745, "sum_seq_q 1745 disagrees"), (11, 500, "max_seq_q 500 disagrees")):
        row = list(good)
        row[i] = bad
        _write(tmp_path, "attn_prefill_multi", [good, row])
        with pytest.raises(FitError, match=f"row 3: {msg}"):
            read_measurements(tmp_path)


def test_fold_keeps_integer_shapes_and_equal_launches_are_ordinary_rows(tmp_path):
    h, kvh, d = 32, 8, 128
    rows = []
    for ln in ("512x32", "256+768x16", "512x3;16x13"):
        fl, by = grids_multi.prefill_multi_flops_bytes(ln, h, kvh, d)
        seqs = grids_multi.expand_lengths(ln)
        rows.append(["attn_prefill_multi", "vendor", "bf16", len(seqs), ln, h, kvh, d, 1e-4, fl, by,
                     max(n for n, _ in seqs), sum(n for n, _ in seqs)])
    _write(tmp_path, "attn_prefill_multi", rows)
    fl, by = grids.prefill_flops_bytes(2, 3000, 3000, h, kvh, d)
    _write(tmp_path, "attn_prefill", [["attn_prefill", "vendor", "bf16", 2, 3000, 3000, h, kvh, d, 1e-3, fl, by]])
    df = fold_multi(read_measurements(tmp_path))["attn_prefill"]
    recs = df.to_dict("records")
    assert [r["src"] for r in recs] == ["grid", "many_equal", "many_equal", "many_mixed"]
    # the grid row's shape key (hence its held-out draw) is the one it had before any fold
    assert shape_key("attn_prefill", recs[0]) == \
        "attn_prefill:bf16:batch=2,seq_q=3000,seq_kv=3000,heads=32,kv_heads=8,head_dim=128"
    assert make_op("attn_prefill", recs[2]) == AttnPrefill(16, 256, 1024, h, kvh, d, "bf16")
    assert isinstance(make_op("attn_prefill", recs[3]), MultiPrefill)


# ------------------------------------------------------------------------------ synthetic fit
TRUE = {"attn_prefill": dict(compute_frac=0.62, bandwidth_frac=0.7, fixed_flops=2e10, fixed_bytes=1e6, launch_s=5e-6),
        "attn_decode": dict(compute_frac=0.3, bandwidth_frac=0.72, fixed_bytes=3e6, launch_s=5e-6)}
# the many-sequence terms to recover (sim.cost.ops.many_seq_s)
TERMS = {"attn_prefill": dict(per_block_s=2.0e-8, block_diag_frac=0.6),
         "attn_decode": dict(per_seq_s=6.0e-9, chain_s_per_token=2.5e-8, chain_bytes_per_s=3.5e10)}
NO_TERMS: dict = {"attn_prefill": {}, "attn_decode": {}}
IMBALANCE = 0.10          # (vendor) mixed decode launches take (max / mean context) ** 0.10 longer
CONFIGS = [grids.HEAD_CONFIGS[0], grids.HEAD_CONFIGS[3]]  # head_dim 128 and 64: the chain's two rates


def write_multi_synthetic(out, terms=TERMS, backend="triton", imbalance=0.0, seed=0, noise=0.01):
    """attn_prefill(_multi).csv and attn_decode(_multi).csv for two head configurations, one
    backend: every row's time is op_time of its op (calibrate.measurements.make_op: a mixed
    launch as the simulator prices it, decode with its longest context) on a profile of TRUE
    and ``terms``, times (max / mean context) ** imbalance for mixed decode launches, times
    seeded log-normal noise."""
    hw = load_hardware("h100_sxm")
    eff = {k: OpEfficiency(**p, **terms[k]) for k, p in TRUE.items()}
    hw = dataclasses.replace(hw, efficiency={backend: eff})
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)

    def t(kind, r, factor=1.0):
        s = op_time(hw, make_op(kind, dict(r, dtype="bf16")), backend) * factor
        return f"{s * float(np.exp(rng.normal(0, noise))):.6e}"
    pf, pfm, dc, dcm = [], [], [], []
    for h, kvh, d in CONFIGS:
        hd = dict(heads=h, kv_heads=kvh, head_dim=d)
        for b, sq, skv in grids.PREFILL_SHAPES:
            fl, by = grids.prefill_flops_bytes(b, sq, skv, h, kvh, d)
            pf.append(["attn_prefill", backend, "bf16", b, sq, skv, h, kvh, d,
                       t("attn_prefill", dict(hd, batch=b, seq_q=sq, seq_kv=skv)), fl, by])
        for ln in grids_multi.prefill_multi_launches():
            seqs = grids_multi.expand_lengths(ln)
            fl, by = grids_multi.prefill_multi_flops_bytes(ln, h, kvh, d)
            (n0, p0), eq = seqs[0], len(set(seqs)) == 1
            r = dict(hd, batch=len(seqs), seq_q=n0, seq_kv=n0 + p0) if eq else dict(hd, src="many_mixed", lengths=ln)
            pfm.append(["attn_prefill_multi", backend, "bf16", len(seqs), ln, h, kvh, d, t("attn_prefill", r), fl, by,
                        max(n for n, _ in seqs), sum(n for n, _ in seqs)])
        for hh, kk, dd, b, c in grids.decode_grid():
            if (hh, kk, dd) == (h, kvh, d):
                fl, by = grids.decode_flops_bytes(b, c, h, kvh, d)
                dc.append(["attn_decode", backend, "bf16", b, c, h, kvh, d, 16,
                           t("attn_decode", dict(hd, batch=b, context=c)), fl, by])
        for hh, kk, dd, ln in grids_multi.decode_multi_grid():
            if (hh, kk, dd) == (h, kvh, d):
                ctx = [c for c, _ in grids_multi.expand_lengths(ln, allow_prior=False)]
                fl, by = grids_multi.decode_multi_flops_bytes(ln, h, kvh, d)
                eq = len(set(ctx)) == 1
                r = dict(hd, batch=len(ctx), context=ctx[0]) if eq else dict(hd, batch=len(ctx), src="many_mixed",
                                                                             lengths=ln)
                f = 1.0 if eq else (max(ctx) * len(ctx) / sum(ctx)) ** imbalance
                dcm.append(["attn_decode_multi", backend, "bf16", len(ctx), ln, h, kvh, d, 16,
                            t("attn_decode", r, f), fl, by, max(ctx), sum(ctx)])
    _write(out, "attn_prefill", pf)
    _write(out, "attn_prefill_multi", pfm)
    _write(out, "attn_decode", dc)
    _write(out, "attn_decode_multi", dcm)
    _write(out, "elementwise", [["launch", "triton_gpu", "none", 0, 0, "5.0e-06", 0, 0]])
    (out / "provenance.json").write_text(json.dumps({"device_name": "SYNTHETIC (test only)",
                                                     "date_utc": "2030-01-02T03:04:05+00:00"}))
    return out


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    d = write_multi_synthetic(tmp_path_factory.mktemp("multi") / "h100_sxm")
    held: list = []
    return d, fit_profile(d, BASE, heldout=held), held


def test_fit_recovers_the_many_sequence_terms(fitted):
    """Each term of sim.cost.ops.many_seq_s comes back from data made with it: the per-program
    costs and the whole-block work with the roofline, the decode chain from the mixed launches."""
    _, prof, held = fitted
    pf = prof["efficiency"]["backends"]["triton"]["attn_prefill"]
    dc = prof["efficiency"]["backends"]["triton"]["attn_decode"]
    want_p, want_d = TERMS["attn_prefill"], TERMS["attn_decode"]
    assert pf["per_block_s"] == pytest.approx(want_p["per_block_s"], rel=0.1)
    assert pf["block_diag_frac"] == pytest.approx(want_p["block_diag_frac"], abs=0.1)
    assert dc["per_seq_s"] == pytest.approx(want_d["per_seq_s"], rel=0.2)
    assert dc["chain_s_per_token"] == pytest.approx(want_d["chain_s_per_token"], rel=0.2)
    assert dc["chain_bytes_per_s"] == pytest.approx(want_d["chain_bytes_per_s"], rel=0.2)
    ch = dc["fit"]["chain_fit"]
    assert ch["adopted"] and ch["mean_with"] < 2.0 < ch["mean_without"]
    # the terms lower the held-out many-sequence error
    tf = pf["fit"]["per_block_s_fit"]
    assert tf["median_with"] < 2.0 and tf["median_without"] > 2 * tf["median_with"]
    for kind in ("attn_prefill", "attn_decode"):
        errs = prof["calibration"]["errors"]["triton"][kind]
        for pre in ("many_seq_equal_heldout", "many_seq_mixed_heldout"):
            assert errs[f"{pre}_points"] >= 3 and errs[f"{pre}_median_abs_pct_err"] < 2.5, (kind, pre)
        assert errs["many_seq_heldout_points"] == (errs["many_seq_equal_heldout_points"]
                                                   + errs["many_seq_mixed_heldout_points"])
        assert prof["efficiency"]["backends"]["triton"][kind]["fit"]["many_seq_meets_targets"]
    n_grid = sum(is_heldout("attn_prefill", {"dtype": "bf16", "batch": b, "seq_q": q, "seq_kv": kv, "heads": h,
                                             "kv_heads": kvh, "head_dim": d})
                 for h, kvh, d in CONFIGS for b, q, kv in grids.PREFILL_SHAPES)
    assert prof["calibration"]["errors"]["triton"]["attn_prefill"]["held_out_points"] == n_grid
    assert prof["calibration"]["fit_terms"]["triton"]["attn_decode"]["chain_fit"] == ch
    assert {"grid", "many_equal", "many_mixed"} <= set(held[0]["set"]) | set(held[1]["set"])
    # the equal launches extend the tables' rows: prefill to 256 sequences, decode to batch 2048
    rows_pf = {r["batch"] for tab in pf["shape_tables"] if tab["key"]["chunked"] == 0 for r in tab["rows"]}
    assert {1, 16, 32, 256} <= rows_pf
    assert dc["shape_tables"][0]["rows"][-1]["batch"] == 2048
    assert min(min(r["context"]) for r in dc["shape_tables"][0]["rows"]) == 16


def test_fitted_profile_prices_the_launches_through_op_time(fitted, tmp_path):
    """The written profile loads, and op_time (the simulator's path, terms included) gives back
    the fitted launches and prices the mixed ones, decode with its longest context."""
    from calibrate.measurements import prepare
    from sim.hardware import dump_profile
    d, prof, _ = fitted
    p = tmp_path / "fitted.yaml"
    p.write_text(dump_profile(prof))
    hw = load_hardware(str(p))
    frames = fold_multi(read_measurements(d))
    for kind in ("attn_prefill", "attn_decode"):
        df = prepare(kind, frames[kind], hw)
        pred = np.array([op_time(hw, make_op(kind, r), "triton") for r in df.to_dict("records")])
        err = np.abs(pred / df["time_s"].to_numpy() - 1) * 100
        for src in ("grid", "many_equal", "many_mixed"):
            e = err[df["src"].to_numpy() == src]
            assert np.median(e) < 1.5 and np.percentile(e, 90) < 4.0, (kind, src)


def test_no_terms_without_them(tmp_path):
    """Data made without the terms: the per-program costs fit to ~0 and the chain is not adopted."""
    d = write_multi_synthetic(tmp_path / "h100_sxm", terms=NO_TERMS)
    prof = fit_profile(d, BASE)
    pf = prof["efficiency"]["backends"]["triton"]["attn_prefill"]
    dc = prof["efficiency"]["backends"]["triton"]["attn_decode"]
    assert pf.get("per_block_s", 0.0) < 1e-9 and dc.get("per_seq_s", 0.0) < 1e-10
    assert not dc["fit"]["chain_fit"]["adopted"] and "chain_s_per_token" not in dc
    # the fit counts whole-block work, these data the causal pairs: close, not equal
    assert pf["fit"]["many_seq_mixed_heldout_median_abs_pct_err"] < 5.0
    assert dc["fit"]["many_seq_mixed_heldout_median_abs_pct_err"] < 2.5
    assert abs(dc["fit"]["many_seq_mixed_imbalance_trend"]["pct_per_doubling"]) < 1.5


def test_decode_imbalance_trend_is_measured(tmp_path):
    """A backend without a known split plan (vendor) gets no chain floor; what mixed launches
    lose to an imbalance the price cannot see is reported as a trend per doubling of max / mean."""
    d = write_multi_synthetic(tmp_path / "h100_sxm", terms=NO_TERMS, backend="vendor", imbalance=IMBALANCE)
    prof = fit_profile(d, BASE)
    dc = prof["efficiency"]["backends"]["vendor"]["attn_decode"]
    tr = dc["fit"]["many_seq_mixed_imbalance_trend"]
    assert tr["pct_per_doubling"] == pytest.approx((2 ** IMBALANCE - 1) * 100, abs=1.5)
    assert tr["r2"] > 0.8 and tr["launches"] >= 30
    assert "chain_fit" not in dc["fit"] and "chain_s_per_token" not in dc


def test_fit_without_many_sequence_data_has_no_terms(tmp_path):
    """The grids alone (as the H100's data): no term is fitted, the profile keys stay absent."""
    d = write_multi_synthetic(tmp_path / "h100_sxm")
    for f in ("attn_prefill_multi.csv", "attn_decode_multi.csv"):
        (d / f).unlink()
    prof = fit_profile(d, BASE)
    for kind in ("attn_prefill", "attn_decode"):
        c = prof["efficiency"]["backends"]["triton"][kind]
        assert not set(c) & {"per_block_s", "per_seq_s", "block_diag_frac", "chain_s_per_token", "chain_bytes_per_s"}
        assert not [k for k in c["fit"] if k.startswith("many_seq") or k.endswith("_fit")]


def test_report_and_summary_show_many_seq_errors_apart(fitted, tmp_path):
    from calibrate.report import write_report
    from calibrate.summary import summary_markdown
    from sim.hardware import dump_profile
    d, prof, _ = fitted
    p = tmp_path / "fitted.yaml"
    p.write_text(dump_profile(prof))
    md = write_report(d, load_hardware(str(p)), tmp_path / "rep" / "R.md").read_text()
    e = prof["calibration"]["errors"]["triton"]["attn_prefill"]

    def cell(pre):
        return (f"{e[f'{pre}_points']}, {e[f'{pre}_median_abs_pct_err']:.2f}, "
                f"{e[f'{pre}_p90_abs_pct_err']:.2f}")
    assert "## Many-sequence launches" in md
    assert f"| attn_prefill | triton | {cell('many_seq_equal_heldout')} | {cell('many_seq_mixed_heldout')} |" in md
    assert "`per_block_s` fitted" in md and "`per_seq_s` fitted" in md and "max / mean context" in md
    assert "serial-chain floor `chain_s_per_token`" in md
    assert "| attn_prefill | attn_prefill | many_mixed | triton | bf16 |" in md  # held-out table by set
    sm = summary_markdown([str(p)])
    assert (f"| {p} | attn_prefill many-seq mixed | triton | | {e['many_seq_mixed_heldout_points']} | "
            f"{e['many_seq_mixed_heldout_median_abs_pct_err']:.2f} |") in sm
    assert f"| {p} | attn_prefill | triton | {e['points']} | {e['held_out_points']} |" in sm


def test_a_rerun_of_the_many_sequence_grids_merges(tmp_path):
    from calibrate.merge import merge

    def folder(d, ops, tag):
        d.mkdir()
        for op in ops:
            _write(d, op, [[op, "triton", tag] + ["1"] * (len(grids.COLUMNS[op]) - 3)])
        (d / "provenance.json").write_text(json.dumps({"device_name": "GPU X", "ops": ops, "quick": False}))
        return d
    into = folder(tmp_path / "data", grids.OPS, "first")
    rerun = folder(tmp_path / "rerun", grids.MULTI_OPS, "second")
    assert merge(into, rerun) == grids.MULTI_OPS
    for op in grids.OPS:
        with open(into / f"{op}.csv") as fh:
            assert list(csv.reader(fh))[1][2] == ("second" if op in grids.MULTI_OPS else "first")


def test_decode_chain_tokens_follow_the_kernels_split_plan():
    """sim.cost.ops.decode_chain_tokens = calibrate/kernels/attn_decode.py's tokens_per_split
    (needs triton: runs where the kernels import, e.g. the calibration venv on CPU)."""
    pytest.importorskip("triton")
    pytest.importorskip("torch")
    from calibrate.kernels import attn_decode
    from sim.cost.ops import decode_chain_tokens
    for batch in (1, 2, 3, 7, 8, 16, 33, 64, 200, 512, 2048):
        for kvh in (1, 2, 4, 8):
            for ctx in (1, 16, 63, 64, 65, 255, 256, 257, 1000, 4000, 4096, 15652, 32768, 131072):
                _, tps = attn_decode.plan_splits(batch, kvh, ctx, "cpu")
                assert decode_chain_tokens(batch, kvh, ctx, 132) == tps, (batch, kvh, ctx)
