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
    FLOPs and bytes, with the family key, the serial chain of the longest chunk and the table row
    of AttnPrefill.table_row: the number of chunks, or of 128-query blocks when some chunk has a
    prior context (bit for bit)."""
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
    fam = _Family((m.num_heads, m.num_kv_heads, m.head_dim, int(chunked), c.dtype),
                  prefill_chain_flops(m.head_dim, max(o.seq_kv for o in ops)), row)
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
