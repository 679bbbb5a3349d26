"""Calibration kernels: CPU tests of the grids/columns contract (no torch needed) and GPU
correctness checks of our Triton kernels (skipped without torch + triton + CUDA)."""
import importlib.util

import pytest

from calibrate import grids


# ------------------------------------------------------------------ CPU: columns and grids
def test_csv_columns_as_documented():
    assert grids.COLUMNS["gemm"] == ["op", "backend", "dtype", "m", "n", "k", "time_s", "flops",
                                     "bytes"]
    assert grids.COLUMNS["attn_prefill"] == ["op", "backend", "dtype", "batch", "seq_q", "seq_kv",
                                             "heads", "kv_heads", "head_dim", "time_s", "flops",
                                             "bytes"]
    assert grids.COLUMNS["attn_decode"] == ["op", "backend", "dtype", "batch", "context", "heads",
                                            "kv_heads", "head_dim", "block_size", "time_s",
                                            "flops", "bytes"]
    assert grids.COLUMNS["elementwise"] == ["op", "backend", "dtype", "tokens", "hidden",
                                            "time_s", "flops", "bytes"]
    assert grids.COLUMNS["nccl"] == ["op", "backend", "dtype", "bytes_per_rank", "world_size",
                                     "time_s", "algbw_bytes_per_s", "busbw_bytes_per_s"]


def test_grids_importable_without_torch():
    # grids must not pull in torch/triton (CPU CI has neither)
    src = open(grids.__file__).read()
    assert "import torch" not in src and "import triton" not in src


def test_gemm_grid_covers_models():
    g = grids.gemm_grid()
    kn = {(k, n) for _, n, k in g}
    for md in grids.MODELS:
        assert (md.hidden, (md.heads + 2 * md.kv_heads) * md.head_dim) in kn
        assert (md.heads * md.head_dim, md.hidden) in kn
        assert (md.hidden, 2 * md.inter) in kn
        assert (md.inter, md.hidden) in kn
        assert (md.hidden, md.vocab) in kn
    ms = {m for m, _, _ in g}
    assert {1, 16384, 3, 3000} <= ms
    assert all(m <= grids.LM_HEAD_MAX_M for m, n, k in g if n in {md.vocab for md in grids.MODELS})
    assert len(g) == len(set(g))


def test_gemm_grid_has_both_ends_of_every_triton_segment():
    for dtype, grid in (("bf16", grids.gemm_grid()), ("fp8", grids.gemm_fp8_grid())):
        for layer, k, n in grids.gemm_kn_pairs():
            ms = {m for m, nn, kk in grid if (nn, kk) == (n, k)}
            max_m = grids.LM_HEAD_MAX_M if layer == "lm_head" else grids.GEMM_MAX_M
            assert grids.gemm_break_ms(n, dtype, grids.DEFAULT_NUM_SMS, max_m) <= ms
            breaks = grids.triton_gemm_breaks(n, dtype, grids.DEFAULT_NUM_SMS)
            # inside a segment the kernel keeps one tile config; up to WAVE_BREAKS_MAX_WAVES waves,
            # one wave count too (what the fit's flat segment ends rely on)
            for lo, hi in zip([0] + breaks[:-1], breaks):
                w = [grids.triton_gemm_waves(m, n, dtype, grids.DEFAULT_NUM_SMS) for m in (lo + 1, hi)]
                assert w[0] == w[1] or w[0] > grids.WAVE_BREAKS_MAX_WAVES or w[1] > grids.WAVE_BREAKS_MAX_WAVES
    assert not set(grids.GEMM_M_EXTRA) & set(grids.GEMM_M_HELDOUT)


def test_attention_grids_hold_their_heldout_shapes():
    assert set(grids.PREFILL_HELDOUT) <= set(grids.PREFILL_SHAPES)
    assert len(set(grids.PREFILL_SHAPES)) == len(grids.PREFILL_SHAPES)
    pts = grids.decode_grid()
    assert len(set(pts)) == len(pts)
    for h, kvh, d in grids.HEAD_CONFIGS:
        mine = {(b, c) for hh, kk, dd, b, c in pts if (hh, kk, dd) == (h, kvh, d)}
        assert set(grids.DECODE_HELDOUT) <= mine
        assert {(3, 128), (384, 128), (1, 24576), (512, 192)} <= mine


def test_decode_grid_kv_limit_and_prefill_flops():
    for h, kvh, d, b, c in grids.decode_grid():
        assert grids.decode_kv_bytes(b, c, kvh, d) <= grids.DECODE_KV_LIMIT_BYTES
        assert h % kvh == 0
    # causal, no prior context: sum_{i=1..s} i
    assert grids.prefill_attended(4, 4) == 10
    # chunked: 2 new tokens after 3 cached ones attend 4 and 5 keys
    assert grids.prefill_attended(2, 5) == 9
    f, b = grids.prefill_flops_bytes(1, 4, 4, 2, 1, 8)
    assert f == 4 * 2 * 8 * 10 and b == (2 * 4 * 2 * 8 + 2 * 4 * 1 * 8) * 2
    f, b = grids.decode_flops_bytes(2, 100, 32, 8, 128)
    assert f == 4 * 2 * 32 * 128 * 100
    assert b == 2 * 2 * 100 * 8 * 128 * 2 + 2 * 2 * 32 * 128 * 2
    assert grids.gemm_flops_bytes(2, 3, 4) == (48, (8 + 12) * 2 + 6 * 2)


def test_elementwise_grid_ops():
    ops = {op for op, _, _ in grids.elementwise_grid()}
    assert ops == {"rmsnorm", "silu_mul", "rotary", "add", "copy"}
    for op, t, hid in grids.elementwise_grid(quick=True):
        if op == "rotary":
            grids.rotary_head_config(hid)


# ------------------------------------------------------------------ GPU: kernel correctness
def _gpu():
    pytest.importorskip("torch")
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton not installed")
    import torch
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


def _assert_ok(errs, tol=2e-2):
    import math
    assert errs
    for k, v in errs.items():
        t = 6e-2 if k.startswith("fp8") else tol
        assert math.isfinite(v) and v < t, (k, v)


@pytest.mark.gpu
def test_gemm_correct():
    _gpu()
    from calibrate.kernels import gemm
    _assert_ok(gemm.check(m=130, n=256, k=256))


@pytest.mark.gpu
def test_attn_prefill_correct():
    _gpu()
    from calibrate.kernels import attn_prefill
    _assert_ok(attn_prefill.check())


@pytest.mark.gpu
def test_attn_decode_correct():
    _gpu()
    from calibrate.kernels import attn_decode
    _assert_ok(attn_decode.check())


@pytest.mark.gpu
def test_elementwise_correct():
    _gpu()
    from calibrate.kernels import elementwise
    _assert_ok(elementwise.check())
