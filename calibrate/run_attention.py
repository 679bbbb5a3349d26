"""Attention sweeps of the calibration runner (calibrate/run.py): causal prefill and paged
decode, Triton and vendor (SDPA), each timed in PASSES passes over its whole grid in shuffled
order with fresh inputs per pass (calibrate.timing.run_passes); the per-point median is written.
"""
from __future__ import annotations

import random

import torch
import triton

from . import grids
from .harness import BUDGET, Budget, CsvOut, Skips, log, write_pass_rows
from .kernels import attn_decode, attn_prefill
from .timing import DEV, bench_pass, run_passes


def _sdpa_ctx():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                        SDPBackend.EFFICIENT_ATTENTION])


def _vendor_prefill(q4, k4, v4, sq, skv):
    """SDPA on [B,H,S,D] views (memory [B,S,H,D]); causal bottom-right for chunked."""
    import torch.nn.functional as F
    if sq == skv:
        return lambda: F.scaled_dot_product_attention(q4, k4, v4, is_causal=True, enable_gqa=True)
    from torch.nn.attention.bias import causal_lower_right
    bias = causal_lower_right(sq, skv)
    return lambda: F.scaled_dot_product_attention(q4, k4, v4, attn_mask=bias, enable_gqa=True)


def _backends_in_pass(backends, p):
    """Alternate which backend goes first from pass to pass."""
    return list(backends) if p % 2 == 0 else list(reversed(backends))


def _shape_str(names):
    return lambda pt: " ".join(f"{k}={v}" for k, v in zip(names, pt))


def time_prefill(w: CsvOut, backends, ok_triton, quick, skips: Skips, windows=None):
    bud = Budget("attn_prefill", BUDGET["attn_prefill"])
    shapes = grids.PREFILL_SHAPES_QUICK if quick else grids.PREFILL_SHAPES
    points = [(h, kvh, d, bsz, sq, skv) for h, kvh, d in grids.HEAD_CONFIGS for bsz, sq, skv in shapes]

    def time_point(pt, p):
        h, kvh, d, bsz, sq, skv = pt
        q, k, v, cu_q, cu_k = attn_prefill.make_inputs([sq] * bsz, [skv] * bsz, h, kvh, d, DEV)
        o = torch.empty_like(q)
        for be in _backends_in_pass(backends, p):
            if be == "triton" and not ok_triton:
                continue
            try:
                if be == "triton":
                    fn = lambda: attn_prefill.prefill_attention(q, k, v, cu_q, cu_k, sq, o)  # noqa: E731
                    t = bench_pass(fn)
                else:
                    q4 = q.view(bsz, sq, h, d).transpose(1, 2)
                    k4 = k.view(bsz, skv, kvh, d).transpose(1, 2)
                    v4 = v.view(bsz, skv, kvh, d).transpose(1, 2)
                    with _sdpa_ctx():
                        fn = _vendor_prefill(q4, k4, v4, sq, skv)
                        try:
                            t = bench_pass(fn)
                        except Exception:  # noqa: BLE001  (no GQA path: repeat kv heads)
                            skips.add("attn_prefill_vendor_gqa_fallback_repeat_kv")
                            k4 = k4.repeat_interleave(h // kvh, 1)
                            v4 = v4.repeat_interleave(h // kvh, 1)
                            fn = _vendor_prefill(q4, k4, v4, sq, skv)
                            t = bench_pass(fn)
            except Exception as e:  # noqa: BLE001
                skips.add(f"attn_prefill_{be}: {type(e).__name__}: {str(e)[:120]}")
                continue
            yield be, t

    got = run_passes("attn_prefill", points, time_point, bud, skips, windows,
                     _shape_str(("heads", "kv_heads", "head_dim", "batch", "seq_q", "seq_kv")), log)

    def row_of(pt):
        h, kvh, d, bsz, sq, skv = pt
        flops, byts = grids.prefill_flops_bytes(bsz, sq, skv, h, kvh, d)
        return dict(op="attn_prefill", dtype="bf16", batch=bsz, seq_q=sq, seq_kv=skv, heads=h, kv_heads=kvh,
                    head_dim=d, flops=flops, bytes=byts)
    write_pass_rows(w, points, backends, got, row_of)


def time_decode(w: CsvOut, backends, ok_triton, quick, skips: Skips, windows=None):
    """Paged decode over one K and one V pool shared by every head configuration (each viewed as
    [blocks, 16, kv_heads, D]) and as large as the largest point needs: each pass draws a fresh
    random block table (Triton) and a fresh random offset of the contiguous KV (vendor)."""
    import torch.nn.functional as F
    bud = Budget("attn_decode", BUDGET["attn_decode"])
    page = grids.BLOCK_SIZE
    points = grids.decode_grid(quick)
    if not points:
        return
    n_el = max(b * triton.cdiv(c, page) * page * kvh * d for (h, kvh, d, b, c) in points) + 16 * page * 1024
    kflat = torch.randn(n_el, device=DEV, dtype=torch.bfloat16)
    vflat = torch.randn(n_el, device=DEV, dtype=torch.bfloat16)
    bmax, hmax, hdmax = (max(v) for v in zip(*[(b, h, h * d) for (h, kvh, d, b, c) in points]))
    scratch = (torch.empty(bmax * hdmax * 64, device=DEV, dtype=torch.float32),  # <= 64 splits
               torch.empty(bmax * hmax * 64 * 2, device=DEV, dtype=torch.float32))
    rng = random.Random(grids.BLOCK_SIZE)

    def pools(kvh, d):
        nb = n_el // (page * kvh * d)
        return (kflat[: nb * page * kvh * d].view(nb, page, kvh, d),
                vflat[: nb * page * kvh * d].view(nb, page, kvh, d))

    def time_point(pt, p):
        h, kvh, d, b, c = pt
        kpool, vpool = pools(kvh, d)
        nb = triton.cdiv(c, page)
        table = torch.randperm(kpool.shape[0], device=DEV)[: b * nb].to(torch.int32).view(b, nb)
        lens = torch.full((b,), c, device=DEV, dtype=torch.int32)
        q = torch.randn(b, h, d, device=DEV, dtype=torch.bfloat16)
        o = torch.empty_like(q)
        for be in _backends_in_pass(backends, p):
            if be == "triton" and not ok_triton:
                continue
            try:
                if be == "triton":
                    fn = lambda: attn_decode.decode_attention(q, kpool, vpool, table, lens, c, o,  # noqa: E731
                                                              scratch=scratch)
                    t = bench_pass(fn)
                else:
                    n = b * kvh * c * d
                    off = rng.randrange(0, n_el - n + 1, 64) if n_el > n else 0
                    k4 = kflat[off: off + n].view(b, kvh, c, d)
                    v4 = vflat[off: off + n].view(b, kvh, c, d)
                    q4 = q.view(b, h, 1, d)
                    fn = lambda: F.scaled_dot_product_attention(q4, k4, v4, enable_gqa=True)  # noqa: E731
                    with _sdpa_ctx():
                        t = bench_pass(fn)
            except Exception as e:  # noqa: BLE001
                skips.add(f"attn_decode_{be}: {type(e).__name__}: {str(e)[:120]}")
                continue
            yield be, t

    got = run_passes("attn_decode", points, time_point, bud, skips, windows,
                     _shape_str(("heads", "kv_heads", "head_dim", "batch", "context")), log)

    def row_of(pt):
        h, kvh, d, b, c = pt
        flops, byts = grids.decode_flops_bytes(b, c, h, kvh, d)
        return dict(op="attn_decode", dtype="bf16", batch=b, context=c, heads=h, kv_heads=kvh, head_dim=d,
                    block_size=page, flops=flops, bytes=byts)
    write_pass_rows(w, points, backends, got, row_of)
