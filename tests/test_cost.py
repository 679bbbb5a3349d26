"""Op counting, the affine roofline and the step model."""
import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.cost.base import BatchShape
from sim.cost.ops import AttnDecode, AttnPrefill, Elementwise, Gemm, op_time, op_time_breakdown
from sim.cost.roofline import RooflineCost
from sim.hardware import load_hardware, profile_from_dict, shipped_hardware
from sim.model_spec import load_model

H100 = load_hardware("h100_sxm")
M8 = load_model("llama-3.1-8b")


@functools.lru_cache(maxsize=None)
def _hw(name: str):
    return load_hardware(name)


@functools.lru_cache(maxsize=None)
def _cost(hw_name: str, backend: str):
    return RooflineCost(M8, _hw(hw_name), backend=backend)


def test_op_counts_exact():
    g = Gemm(2, 3, 4)
    assert g.flops() == 48 and g.bytes() == (8 + 12) * 2 + 6 * 2
    a = AttnPrefill(1, 3, 5, 2, 1, 4)  # 3 new tokens after 2 cached: attends 3+4+5 = 12 keys
    assert a.attended_pairs() == 12 and a.flops() == 4 * 2 * 4 * 12
    assert a.bytes() == 2 * 3 * 2 * 4 * 2 + 2 * 5 * 1 * 4 * 2
    d = AttnDecode(2, 10, 4, 2, 8)
    assert d.flops() == 4 * 2 * 4 * 8 * 10 and d.bytes() == 2 * 2 * 10 * 2 * 8 * 2 + 2 * 2 * 4 * 8 * 2
    assert Elementwise("add", 3, 5).bytes() == 3 * 3 * 5 * 2


def test_roofline_regimes():
    small = op_time_breakdown(H100, Gemm(1, 4096, 4096))
    big = op_time_breakdown(H100, Gemm(8192, 4096, 4096))
    assert small["bound"] == "memory" and big["bound"] == "compute"
    assert big["achieved_flops_per_s"] <= H100.peak_flops("bf16")
    assert small["achieved_bytes_per_s"] <= H100.memory_bandwidth_bytes_per_s


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 16384), st.integers(1, 16384))
def test_gemm_time_monotone_in_m(m1, m2):
    # the roofline curve is monotone; measured shape tables need not be (cuBLAS picks kernels
    # per shape), so this holds for a shape family the profile has no table for
    lo, hi = sorted((m1, m2))
    assert op_time(H100, Gemm(lo, 4000, 4000)) <= op_time(H100, Gemm(hi, 4000, 4000))


def test_shape_table_reproduces_measurement_and_interpolates():
    # a measured family: the profile gives back the committed measurement at a measured size
    import pandas as pd
    from pathlib import Path
    csv = Path(__file__).resolve().parent.parent / "calibrate" / "data" / "h100_sxm" / "gemm.csv"
    if not csv.exists():
        pytest.skip("no committed H100 measurements")
    d = pd.read_csv(csv)
    row = d[(d.backend == "vendor") & (d.dtype == "bf16") & (d.m == 128) & (d.n == 6144) & (d.k == 4096)].iloc[0]
    assert op_time(H100, Gemm(128, 6144, 4096), "vendor") == pytest.approx(row.time_s, rel=2e-3)
    # between two measured sizes: between their times (log-log interpolation of the ratio)
    t = [op_time(H100, Gemm(m, 6144, 4096), "vendor") for m in (1024, 1500, 2048)]
    assert min(t[0], t[2]) <= t[1] <= max(t[0], t[2])


def test_step_time_parts_and_decode_run_agree():
    c = RooflineCost(M8, H100, host_overhead_s=0.002)
    st1 = c.step_time(BatchShape([(512, 0)], 0, 0, 1))
    assert st1.total_s == pytest.approx(st1.gemm_s + st1.attn_s + st1.other_s + st1.host_s)
    assert st1.host_s == 0.002
    attn, fixed = c.decode_run(8, 8 * 1000, 5)
    for j in range(5):
        s = c.step_time(BatchShape([], 8, 8 * 1000 + 8 * j, 8))
        assert s.attn_s == attn[j] and s.gemm_s == fixed.gemm_s and s.other_s == fixed.other_s


def test_decode_is_memory_bound_near_weights_over_bandwidth():
    c = RooflineCost(M8, H100)
    t = c.step_time(BatchShape([], 1, 100, 1)).total_s
    floor = M8.weight_bytes / H100.memory_bandwidth_bytes_per_s
    # measured (calibrate/data/h100_sxm): cuBLAS GEMMs at M=1 read weights at 50-65 % of the
    # datasheet bandwidth, so a batch-1 step costs ~1.8x the weight-streaming floor
    assert floor < t < 2.2 * floor


def test_profiles_load_and_reject_bad_efficiency():
    for n in shipped_hardware():
        h = load_hardware(n)
        assert h.memory_bytes > 1e10 and h.peak_flops("bf16") > 1e13
    d = {"name": "x", "display_name": "x", "memory_bytes": 1e10, "memory_bandwidth_bytes_per_s": 1e12,
         "peak_flops_per_s": {"bf16": 1e14}, "l2_bytes": 1e6, "num_sms": 10, "nvlink_bandwidth_bytes_per_s": 0,
         "pcie_bandwidth_bytes_per_s": 1e10,
         "efficiency": {"backends": {"vendor": {"gemm": {"compute_frac": 2.5}}}}}
    with pytest.raises(Exception, match="efficiency.backends.vendor.gemm.compute_frac"):
        profile_from_dict(d)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 20000), st.sampled_from(["h100_sxm", "h200_sxm", "a100_80gb_sxm"]),
       st.sampled_from(["vendor", "triton"]))
def test_step_model_prices_ops_exactly_as_op_time(tokens, hw_name, backend):
    hw = _hw(hw_name)
    if backend not in hw.efficiency:
        return
    c = _cost(hw_name, backend)
    for op in (Gemm(tokens, 6144, 4096), Gemm(tokens, 4000, 4000), Elementwise("rmsnorm", tokens, 4096),
               Elementwise("silu_mul", tokens, 14336), Elementwise("add", tokens, 1234)):
        assert c._op_s(op) == op_time(hw, op, backend)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 20000), st.sampled_from(["h100_sxm", "h200_sxm", "a100_80gb_sxm"]),
       st.sampled_from(["vendor", "triton"]))
def test_family_functions_price_ops_exactly_as_op_time(tokens, hw_name, backend):
    """The hoisted per-family functions the step model sums give op_time's seconds bit for bit."""
    hw = _hw(hw_name)
    if backend not in hw.efficiency:
        return
    c = _cost(hw_name, backend)
    for op in (Gemm(tokens, 6144, 4096), Gemm(tokens, 4096, 14336), Gemm(tokens, 4000, 4000),
               Elementwise("rmsnorm", tokens, 4096), Elementwise("silu_mul", tokens, 14336),
               Elementwise("rotary", tokens, 6144), Elementwise("add", tokens, 1234)):
        assert c._family_fn(op)(tokens) == op_time(hw, op, backend)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 8192), st.integers(0, 30000)), min_size=1, max_size=6),
       st.sampled_from(["h100_sxm", "h200_sxm", "l40s"]), st.sampled_from(["vendor", "triton"]))
def test_prefill_attention_is_affine_roofline_of_summed_chunks(chunks, hw_name, backend):
    """The step's prefill attention equals affine_roofline_s over the chunks' summed AttnPrefill
    FLOPs and bytes, with the family key, the serial chain of the longest chunk, the table row
    of AttnPrefill.table_row (the number of chunks, or of 128-query blocks when some chunk has a
    prior context) and the many-sequence terms of the summed query blocks and whole-block pairs
    (bit for bit)."""
    from sim.cost.ops import AttnPrefill, affine_roofline_s, prefill_chain_flops
    from sim.cost.roofline import _Family
    hw = _hw(hw_name)
    if backend not in hw.efficiency:
        return
    c = _cost(hw_name, backend)
    m = M8
    ops = [AttnPrefill(1, new, prior + new, m.num_heads, m.num_kv_heads, m.head_dim, c.dtype) for new, prior in chunks]
    flops = bytes_ = 0.0
    for op in ops:
        flops += op.flops()
        bytes_ += op.bytes()
    chunked = any(p for _, p in chunks)
    row = sum(-(-new // 128) for new, _ in chunks) if chunked else len(chunks)  # query blocks / chunks
    pairs = [op.block_pairs() for op in ops]
    fam = _Family((m.num_heads, m.num_kv_heads, m.head_dim, int(chunked), c.dtype),
                  prefill_chain_flops(m.head_dim, max(o.seq_kv for o in ops)), row,
                  sum(op.query_blocks() for op in ops), (sum(p[0] for p in pairs), sum(p[1] for p in pairs)))
    ref = m.num_layers * affine_roofline_s(hw, "attn_prefill", flops, bytes_, c.dtype, backend, fam)[0]
    assert c._attn_prefill(chunks) == ref


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 512), st.integers(1, 32768), st.sampled_from(["h100_sxm", "h200_sxm", "a100_80gb_sxm", "t4"]),
       st.sampled_from(["vendor", "triton"]))
def test_decode_attention_is_op_time_of_mean_context(num, context, hw_name, backend):
    """The step model's (inlined) decode attention of ``num`` requests with ``context`` tokens
    each is op_time of that AttnDecode on every layer (to rounding: the sums differ in order)."""
    hw = _hw(hw_name)
    if backend not in hw.efficiency:
        return
    c = _cost(hw_name, backend)
    m = M8
    ref = m.num_layers * op_time(hw, AttnDecode(num, context, m.num_heads, m.num_kv_heads, m.head_dim, c.dtype), backend)
    assert c._attn_decode(num, num * context) == pytest.approx(ref, rel=1e-9)


def test_gemm_tiles_parsed_strictly_and_charge_whole_waves():
    from sim.cost.ops import gemm_wave_flops
    base = {"name": "x", "display_name": "x", "memory_bytes": 1e10, "memory_bandwidth_bytes_per_s": 1e12,
            "peak_flops_per_s": {"bf16": 1e14}, "l2_bytes": 1e6, "num_sms": 10, "nvlink_bandwidth_bytes_per_s": 0,
            "pcie_bandwidth_bytes_per_s": 1e10}
    tiles = {"bf16": [{"up_to_m": 16, "block_m": 16, "block_n": 64}, {"block_m": 128, "block_n": 256}]}
    h = profile_from_dict({**base, "efficiency": {"backends": {"triton": {"gemm": {"gemm_tiles": tiles}}}}})
    t = h.op_efficiency("gemm", "triton").gemm_tiles["bf16"]
    assert t[0] == (16, 16, 64) and t[1][1:] == (128, 256)
    # 17 <= m <= 128: one tile row; n = 2560: 10 tiles = one wave of 10 SMs; n = 2561: two waves
    assert gemm_wave_flops(t, 100, 2560, 64, 10) == 2.0 * 10 * 128 * 256 * 64
    assert gemm_wave_flops(t, 129, 2561, 64, 10) == 2.0 * 30 * 128 * 256 * 64
    for bad, where in (({"bf16": [{"block_m": 16, "block_n": 64}, {"block_m": 1, "block_n": 1}]}, "gemm_tiles.bf16[0]"),
                       ({"bf16": [{"up_to_m": 16, "block_m": 16, "block_n": 64, "x": 1}]}, "gemm_tiles.bf16[0]"),
                       ({"bf16": []}, "gemm_tiles.bf16")):
        with pytest.raises(Exception, match=where.replace("[", r"\[").replace("]", r"\]")):
            profile_from_dict({**base, "efficiency": {"backends": {"triton": {"gemm": {"gemm_tiles": bad}}}}})
    with pytest.raises(Exception, match="attn_decode.gemm_tiles"):
        profile_from_dict({**base, "efficiency": {"backends": {"triton": {"attn_decode": {"gemm_tiles": tiles}}}}})


@settings(max_examples=120, deadline=None)
@given(st.integers(1, 512), st.integers(1, 40000), st.integers(1, 200),
       st.sampled_from(["h100_sxm", "h200_sxm", "a100_80gb_sxm", "t4"]), st.sampled_from(["vendor", "triton"]),
       st.floats(0.0, 0.5))
def test_decode_run_pricing_is_stepwise_pricing(num, context, m, hw_name, backend, horizon_s):
    """A decode price's ``run`` gives, step by step, the attention seconds of the price itself at
    each step's context sum, the total in step_time's order, the start times by sequential
    addition, and stops after the first step ending at or after the horizon (bit for bit)."""
    hw = _hw(hw_name)
    if backend not in hw.efficiency:
        return
    c = _cost(hw_name, backend)
    f, fixed = c.decode_step_fn(num)
    g, o, h = fixed.gemm_s, fixed.other_s, fixed.host_s
    c0 = num * context
    out = f.run(c0, m, 1.0, 1.0 + horizon_s, g, o, h)
    if out is None:  # not memory-bound throughout: the engine steps the price itself
        return
    starts, totals, attn, end = out
    t, want = 1.0, []
    for i in range(m):
        a = f(c0 + i * num)
        tot = g + a + o + h
        want.append((t, tot, a))
        t = t + tot
        if t >= 1.0 + horizon_s:
            break
    assert list(zip(starts, totals, attn)) == want and end == t


def test_decode_run_pricing_applies_to_calibrated_decode():
    """The run pricer covers ordinary decode runs of the calibrated profiles (it returns None
    only off its memory-bound path)."""
    for hw_name in ("h100_sxm", "h200_sxm"):
        for backend in ("vendor", "triton"):
            f, fixed = _cost(hw_name, backend).decode_step_fn(13)
            assert f.run(13 * 600, 50, 0.0, 1e9, fixed.gemm_s, fixed.other_s, fixed.host_s) is not None
            # with the longest context known (the chain floor of H200 Triton binds at 9,000)
            assert f.run(13 * 600, 50, 0.0, 1e9, fixed.gemm_s, fixed.other_s, fixed.host_s, 9000) is not None


# ------------------------------------------------------------------------------ many-sequence terms
def _with_terms(hw, backend, prefill=None, decode=None):
    """``hw`` with the many-sequence terms set on ``backend``'s attention curves."""
    import dataclasses
    eff = dict(hw.efficiency[backend])
    if prefill is not None:
        eff["attn_prefill"] = dataclasses.replace(eff["attn_prefill"], **prefill)
    if decode is not None:
        eff["attn_decode"] = dataclasses.replace(eff["attn_decode"], **decode)
    return dataclasses.replace(hw, efficiency={**hw.efficiency, backend: eff})


def test_many_seq_terms_parsed_strictly():
    base = {"name": "x", "display_name": "x", "memory_bytes": 1e10, "memory_bandwidth_bytes_per_s": 1e12,
            "peak_flops_per_s": {"bf16": 1e14}, "l2_bytes": 1e6, "num_sms": 10, "nvlink_bandwidth_bytes_per_s": 0,
            "pcie_bandwidth_bytes_per_s": 1e10}

    def prof(kind, **kw):
        return profile_from_dict({**base, "efficiency": {"backends": {"triton": {kind: kw}}}})
    e = prof("attn_prefill", per_block_s=2e-8, block_diag_frac=0.5).op_efficiency("attn_prefill", "triton")
    assert (e.per_block_s, e.block_diag_frac, e.per_seq_s) == (2e-8, 0.5, 0.0)
    e = prof("attn_decode", per_seq_s=3e-9, chain_s_per_token=2e-8, chain_bytes_per_s=3e10).op_efficiency(
        "attn_decode", "triton")
    assert (e.per_seq_s, e.chain_s_per_token, e.chain_bytes_per_s, e.block_diag_frac) == (3e-9, 2e-8, 3e10, None)
    for kind, kw, where in (("attn_decode", {"per_block_s": 1e-8}, "attn_decode.per_block_s"),
                            ("attn_prefill", {"per_seq_s": 1e-8}, "attn_prefill.per_seq_s"),
                            ("gemm", {"chain_s_per_token": 1e-8}, "gemm.chain_s_per_token"),
                            ("attn_prefill", {"per_block_s": -1e-8}, "attn_prefill.per_block_s"),
                            ("attn_prefill", {"block_diag_frac": 1.5}, "attn_prefill.block_diag_frac"),
                            ("attn_decode", {"chain_bytes_per_s": "fast"}, "attn_decode.chain_bytes_per_s")):
        with pytest.raises(Exception, match=where):
            prof(kind, **kw)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.integers(0, 20000))
def test_block_pairs_are_whole_query_blocks(new, prior):
    """prefill_block_pairs' closed form = the sum over 128-row query blocks of 128 x its keys,
    split into the keys of its own rows' positions (diagonal) and those before them."""
    from sim.cost.ops import PREFILL_BLOCK_M as B, prefill_block_pairs
    off = diag = 0
    for i in range(-(-new // B)):
        rows = min(B, new - i * B)
        keys = prior + i * B + rows
        off += B * (keys - rows)
        diag += B * rows
    assert prefill_block_pairs(new, prior) == (off, diag)
    a = AttnPrefill(3, new, new + prior, 4, 2, 64)
    assert a.block_pairs() == (3 * off, 3 * diag)
    # whole blocks hold at least the causal pairs
    assert a.block_flops(1.0) >= a.flops() - 1e-6 * a.flops()


def test_terms_absent_leave_prices_unchanged():
    """The shipped profiles without the terms (H100, ...) price exactly as the curve or table
    alone: many_seq_s returns its input, and the step model's attention is op_time's."""
    from sim.cost.ops import many_seq_s
    for name in ("h100_sxm", "a100_80gb_sxm", "t4"):
        hw = _hw(name)
        for be, effs in hw.efficiency.items():
            for kind, eff in effs.items():
                assert (eff.per_block_s, eff.per_seq_s, eff.chain_s_per_token, eff.chain_bytes_per_s,
                        eff.block_diag_frac) == (0.0, 0.0, 0.0, 0.0, None), (name, be, kind)
                for op in (AttnPrefill(64, 16, 16, 32, 8, 128), AttnDecode(700, 20, 32, 8, 128, max_context=9000)):
                    assert many_seq_s(hw, eff, kind, op, 1.2345e-5) == 1.2345e-5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3000), st.sampled_from([0, 0, 100, 4000])), min_size=1, max_size=40),
       st.sampled_from(["vendor", "triton"]), st.floats(0.0, 1.0))
def test_prefill_terms_priced_as_op_time(chunks, backend, diag_frac):
    """With a per-block cost and whole-block work (on top of H200's tables), the step model's
    prefill attention = L x op_time of the launch (the folded mixed op), and the per-block term
    adds exactly per_block_s x heads x query blocks."""
    from calibrate import grids_multi
    from calibrate.measurements import MultiPrefill
    m = M8
    base = _hw("h200_sxm")
    on = _with_terms(base, backend, prefill={"per_block_s": 3e-8, "block_diag_frac": diag_frac})
    off = _with_terms(base, backend, prefill={"per_block_s": 0.0, "block_diag_frac": diag_frac})
    c_on, c_off = RooflineCost(m, on, backend=backend), RooflineCost(m, off, backend=backend)
    op = MultiPrefill(tuple(grids_multi.parse_lengths(grids_multi.format_lengths(chunks))), m.num_heads,
                      m.num_kv_heads, m.head_dim, c_on.dtype)
    assert c_on._attn_prefill(chunks) == pytest.approx(m.num_layers * op_time(on, op, backend), rel=1e-12)
    blocks = sum(-(-n // 128) for n, _ in chunks)
    assert op_time(on, op, backend) - op_time(off, op, backend) == pytest.approx(3e-8 * m.num_heads * blocks,
                                                                                rel=1e-9)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 40000), min_size=1, max_size=300), st.sampled_from(["vendor", "triton"]),
       st.booleans())
def test_decode_terms_priced_as_op_time(contexts, backend, know_max):
    """The step model's decode attention with the per-sequence cost and the chain floor (H200
    Triton's values, on either backend) = L x op_time of the mean-context AttnDecode with the
    longest context (or the mean when the step does not know it), to rounding."""
    m = M8
    src = _hw("h200_sxm").op_efficiency("attn_decode", "triton")
    hw = _with_terms(_hw("h200_sxm"), backend, decode={k: getattr(src, k) for k in
                                                       ("per_seq_s", "chain_s_per_token", "chain_bytes_per_s")})
    assert src.per_seq_s > 0 and src.chain_s_per_token > 0
    c = RooflineCost(m, hw, backend=backend)
    n, tot, mx = len(contexts), sum(contexts), max(contexts)
    op = AttnDecode(n, tot / n, m.num_heads, m.num_kv_heads, m.head_dim, c.dtype, max_context=mx if know_max else 0)
    want = m.num_layers * op_time(hw, op, backend)
    shape = BatchShape([], n, tot, n, decode_context_max=mx if know_max else 0)
    assert c.step_time(shape).attn_s == pytest.approx(want, rel=1e-9)


def test_chain_floor_prices_a_long_outlier():
    """4 contexts of 4,000 among 60 of 200 (H200, Triton, llama-3.1-8b heads): no split at 512
    programs, so each long sequence's program walks 4,000 tokens alone; the floor prices that
    (measured 149 us per layer for this launch at 32 heads) where the mean context does not."""
    m = M8
    hw = _hw("h200_sxm")
    eff = hw.op_efficiency("attn_decode", "triton")
    c = RooflineCost(m, hw, backend="triton")
    n, tot = 64, 4 * 4000 + 60 * 200
    mean_only = c._attn_decode(n, tot) / m.num_layers
    with_max = c._attn_decode(n, tot, 4000) / m.num_layers
    from sim.cost.ops import chain_token_s, decode_chain_tokens
    assert decode_chain_tokens(n, m.num_kv_heads, 4000, hw.num_sms) == 4032  # one split, whole 64-token tiles
    assert with_max == pytest.approx(eff.launch_s + 4032 * chain_token_s(eff, 2 * 128 * 2), rel=1e-12)
    assert 120e-6 < with_max < 180e-6 and mean_only < 60e-6


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 512), st.integers(1, 20000), st.integers(0, 30000), st.integers(1, 120),
       st.sampled_from(["vendor", "triton"]), st.floats(0.0, 0.3))
def test_decode_run_with_longest_context_is_stepwise(num, context, extra, m, backend, horizon_s):
    """The run pricer with a longest context (growing by one per step) gives, bit for bit, the
    price stepped at each step's context sum and longest context."""
    src = _hw("h200_sxm").op_efficiency("attn_decode", "triton")
    hw = _with_terms(_hw("h200_sxm"), backend, decode={k: getattr(src, k) for k in
                                                       ("per_seq_s", "chain_s_per_token", "chain_bytes_per_s")})
    c = RooflineCost(M8, hw, backend=backend)
    f, fixed = c.decode_step_fn(num)
    g, o, h = fixed.gemm_s, fixed.other_s, fixed.host_s
    c0, cmax = num * context, context + extra
    out = f.run(c0, m, 1.0, 1.0 + horizon_s, g, o, h, cmax)
    if out is None:
        return
    starts, totals, attn, end = out
    t, want = 1.0, []
    for i in range(m):
        a = f(c0 + i * num, cmax + i)
        tot = g + a + o + h
        want.append((t, tot, a))
        t = t + tot
        if t >= 1.0 + horizon_s:
            break
    assert list(zip(starts, totals, attn)) == want and end == t
