"""Attention sweeps of the calibration runner (calibrate/run.py): causal prefill and paged
decode, Triton and vendor, over the single-sequence grids (attn_prefill, attn_decode) and the
many-sequence grids (attn_prefill_multi, attn_decode_multi: calibrate/grids_multi.py), each
timed in PASSES passes over its whole grid in shuffled order with fresh inputs per pass
(calibrate.timing.run_passes); the per-point median is written.

Vendor kernels: SDPA (flash / cuDNN / efficient backends, GQA) for launches of equal lengths,
as for the single-sequence grids, so that their rows extend the same tables; for mixed lengths
SDPA would need padding, so they run FlashAttention-2's varlen kernel as torch ships it
(``aten._flash_attention_forward`` with cumulative sequence lengths over packed, contiguous
K/V; bottom-right causal): the kernel flash-attention-based engines call for a ragged batch
(vLLM's FlashAttention backend calls the same varlen entry, over a paged KV cache).  Its
result is checked against a float64 reference first (skipped, and recorded, if it fails); on
the first head configuration it is also timed on the equal-length launches as backend
``vendor_varlen`` (not fitted), which measures how far the two vendor entries differ.

With flush "none" (calibrate.timing) each timed call rotates through copies of its inputs:
fresh q/k/v per copy (prefill), fresh block tables into the shared K/V pools and fresh q
(Triton decode), fresh offsets into the contiguous K/V (vendor decode).
"""
from __future__ import annotations

import random
import zlib

import torch
import triton

from . import grids, grids_multi
from .harness import BUDGET, Budget, CsvOut, Skips, log, write_pass_rows
from .kernels import attn_decode, attn_prefill
from . import timing
from .timing import DEV, bench_pass, rotation, run_passes


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


def _varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal):
    """FlashAttention-2 varlen forward on packed [tokens, heads, D] tensors (torch's build); the
    call returns a tuple whose first element is the output (5 elements in torch 2.11-2.13:
    output, logsumexp, rng state, unused, debug mask; only [0] is read)."""
    return lambda: torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False)


def varlen_check(skips: Skips) -> bool:
    """The vendor varlen path against float64 references (GQA, chunks, one-token decode)."""
    if DEV != "cuda":
        skips.add("vendor_varlen: CUDA only (flash attention)")
        return False
    from .kernels.gemm import rel_err
    worst = 0.0
    try:
        # ((seqs_q, seqs_k), heads, kv_heads, head_dim): a 4-tuple per case (unpacking it into 5
        # names was the "expected 5, got 4" of the first many-sequence run, not the op's outputs)
        for (sq, sk), h, kvh, d in (([37, 300, 1], [37, 900, 1]), 8, 2, 128), (([1, 1, 1], [5, 700, 64]), 14, 2, 64):
            q, k, v, cu_q, cu_k = attn_prefill.make_inputs(sq, sk, h, kvh, d, DEV)
            out = _varlen(q, k, v, cu_q, cu_k, max(sq), max(sk), True)()[0]
            worst = max(worst, rel_err(out, attn_prefill.reference(q, k, v, sq, sk)))
    except Exception as e:  # noqa: BLE001
        skips.add(f"vendor_varlen_check: {type(e).__name__}: {str(e)[:160]}")
        return False
    if not worst < 2e-2:
        skips.add(f"vendor_varlen_check_failed: rel err {worst:.3g}")
        return False
    log(f"[check] vendor varlen PASS  worst rel err {worst:.3e}")
    return True


def _backends_in_pass(backends, p):
    """Alternate which backend goes first from pass to pass."""
    return list(backends) if p % 2 == 0 else list(reversed(backends))


def _shape_str(names):
    return lambda pt: " ".join(f"{k}={v}" for k, v in zip(names, pt))


def launch_order(lengths: str, allow_prior: bool = True) -> list[tuple[int, int]]:
    """The sequences of a many-sequence launch in the order the runner launches them: a seeded
    shuffle (a serving batch is in arrival order, not sorted), the same in every run."""
    seqs = grids_multi.expand_lengths(lengths, allow_prior)
    random.Random(zlib.crc32(lengths.encode())).shuffle(seqs)
    return seqs


def _prefill_bytes(seqs, h, kvh, d) -> int:
    return sum(grids.prefill_flops_bytes(1, n, n + p, h, kvh, d)[1] for n, p in seqs)


def _time_prefill_launch(h, kvh, d, seqs, backends, p, ok_triton, skips: Skips, op: str, varlen_ok: bool):
    """Yield (backend, seconds) for one prefill launch of ``seqs`` [(new, prior), ...]."""
    sq, sk = [n for n, _ in seqs], [n + pr for n, pr in seqs]
    n_copies = rotation(_prefill_bytes(seqs, h, kvh, d))
    copies = [attn_prefill.make_inputs(sq, sk, h, kvh, d, DEV) for _ in range(n_copies)]
    o = torch.empty_like(copies[0][0])
    equal = len(set(seqs)) == 1
    bsz, s_q, s_kv = len(seqs), sq[0], sk[0]
    fb = [grids.prefill_flops_bytes(1, n, n + pr, h, kvh, d) for n, pr in seqs]
    soak = timing.compute_bound(sum(f for f, _ in fb), sum(b for _, b in fb))
    for be in _backends_in_pass(backends, p):
        if (be == "triton" and not ok_triton) or (be == "vendor_varlen" and not (equal and varlen_ok)):
            continue
        try:
            if be == "triton":
                t = bench_pass([lambda c=c: attn_prefill.prefill_attention(c[0], c[1], c[2], c[3], c[4], max(sq), o)
                                for c in copies], soak=soak)
            elif be == "vendor_varlen" or not equal:
                if not varlen_ok:
                    continue
                t = bench_pass([_varlen(c[0], c[1], c[2], c[3], c[4], max(sq), max(sk), True) for c in copies], soak=soak)
            else:
                def views(c, rep=1):
                    return [x.view(bsz, s, hh, d).transpose(1, 2).repeat_interleave(rep, 1) if rep > 1 else
                            x.view(bsz, s, hh, d).transpose(1, 2)
                            for x, s, hh in ((c[0], s_q, h), (c[1], s_kv, kvh), (c[2], s_kv, kvh))]
                with _sdpa_ctx():
                    try:
                        t = bench_pass([_vendor_prefill(*views(c), s_q, s_kv) for c in copies], soak=soak)
                    except Exception:  # noqa: BLE001  (no GQA path: repeat kv heads)
                        skips.add(f"{op}_vendor_gqa_fallback_repeat_kv")
                        fns = []
                        for c in copies:
                            q4, k4, v4 = views(c)
                            fns.append(_vendor_prefill(q4, k4.repeat_interleave(h // kvh, 1),
                                                       v4.repeat_interleave(h // kvh, 1), s_q, s_kv))
                        t = bench_pass(fns, soak=soak)
        except Exception as e:  # noqa: BLE001
            skips.add(f"{op}_{be}: {type(e).__name__}: {str(e)[:120]}")
            continue
        yield be, t


def time_prefill(w: CsvOut, backends, ok_triton, quick, skips: Skips, windows=None):
    bud = Budget("attn_prefill", BUDGET["attn_prefill"])
    shapes = grids.PREFILL_SHAPES_QUICK if quick else grids.PREFILL_SHAPES
    points = [(h, kvh, d, bsz, sq, skv) for h, kvh, d in grids.HEAD_CONFIGS for bsz, sq, skv in shapes]

    def time_point(pt, p):
        h, kvh, d, bsz, sq, skv = pt
        yield from _time_prefill_launch(h, kvh, d, [(sq, skv - sq)] * bsz, backends, p, ok_triton, skips,
                                        "attn_prefill", False)

    got = run_passes("attn_prefill", points, time_point, bud, skips, windows,
                     _shape_str(("heads", "kv_heads", "head_dim", "batch", "seq_q", "seq_kv")), log)

    def row_of(pt):
        h, kvh, d, bsz, sq, skv = pt
        flops, byts = grids.prefill_flops_bytes(bsz, sq, skv, h, kvh, d)
        return dict(op="attn_prefill", dtype="bf16", batch=bsz, seq_q=sq, seq_kv=skv, heads=h, kv_heads=kvh,
                    head_dim=d, flops=flops, bytes=byts)
    write_pass_rows(w, points, backends, got, row_of)


def _multi_backends(backends, varlen_ok: bool) -> list[str]:
    return list(backends) + (["vendor_varlen"] if "vendor" in backends and varlen_ok else [])


def time_prefill_multi(w: CsvOut, backends, ok_triton, quick, skips: Skips, windows=None):
    """Launches of 16-256 sequences (calibrate.grids_multi), equal and mixed lengths."""
    bud = Budget("attn_prefill_multi", BUDGET["attn_prefill_multi"])
    points = grids_multi.prefill_multi_grid(quick)
    varlen_ok = "vendor" in backends and varlen_check(skips)
    bes = _multi_backends(backends, varlen_ok)

    def time_point(pt, p):
        h, kvh, d, ln = pt
        use = [b for b in bes if b != "vendor_varlen" or (h, kvh, d) == grids.HEAD_CONFIGS[0]]
        yield from _time_prefill_launch(h, kvh, d, launch_order(ln), use, p, ok_triton, skips,
                                        "attn_prefill_multi", varlen_ok)

    got = run_passes("attn_prefill_multi", points, time_point, bud, skips, windows,
                     _shape_str(("heads", "kv_heads", "head_dim", "lengths")), log)

    def row_of(pt):
        h, kvh, d, ln = pt
        seqs = grids_multi.expand_lengths(ln)
        flops, byts = grids_multi.prefill_multi_flops_bytes(ln, h, kvh, d)
        return dict(op="attn_prefill_multi", dtype="bf16", batch=len(seqs), lengths=ln, heads=h, kv_heads=kvh,
                    head_dim=d, flops=flops, bytes=byts, max_seq_q=max(n for n, _ in seqs),
                    sum_seq_q=sum(n for n, _ in seqs))
    write_pass_rows(w, points, bes, got, row_of)


class _DecodePools:
    """One K and one V pool shared by every point of a decode sweep (each viewed as [blocks, 16,
    kv_heads, D] for a head configuration), as large as the largest point needs, and split-K
    scratch as large as the largest split launch needs."""

    def __init__(self, needs: list[tuple[int, int, int, list[int]]]):
        page = grids.BLOCK_SIZE
        self.n_el = max(sum(triton.cdiv(c, page) for c in ctxs) * page * kvh * d for h, kvh, d, ctxs in needs) \
            + 16 * page * 1024
        self.k = torch.randn(self.n_el, device=DEV, dtype=torch.bfloat16)
        self.v = torch.randn(self.n_el, device=DEV, dtype=torch.bfloat16)
        acc = ml = 1
        for h, kvh, d, ctxs in needs:
            splits, _ = attn_decode.plan_splits(len(ctxs), kvh, max(ctxs), DEV)
            if splits > 1:
                acc, ml = max(acc, len(ctxs) * h * d * splits), max(ml, len(ctxs) * h * splits * 2)
        self.scratch = (torch.empty(acc, device=DEV, dtype=torch.float32),
                        torch.empty(ml, device=DEV, dtype=torch.float32))
        self.rng = random.Random(grids.BLOCK_SIZE)

    def pools(self, kvh, d):
        page = grids.BLOCK_SIZE
        nb = self.n_el // (page * kvh * d)
        n = nb * page * kvh * d
        return self.k[:n].view(nb, page, kvh, d), self.v[:n].view(nb, page, kvh, d)

    def tables(self, n_pool: int, ctxs: list[int], copies: int) -> list:
        """``copies`` random block tables [batch, max blocks] over a pool of ``n_pool`` blocks
        (disjoint slices of one permutation while it lasts)."""
        nbs = torch.tensor([triton.cdiv(c, grids.BLOCK_SIZE) for c in ctxs], device=DEV)
        total, width = int(nbs.sum()), int(nbs.max())
        mask = torch.arange(width, device=DEV)[None, :] < nbs[:, None]
        out, perm, used = [], torch.randperm(n_pool, device=DEV), 0
        for _ in range(copies):
            if used + total > n_pool:
                perm, used = torch.randperm(n_pool, device=DEV), 0
            tab = torch.zeros(len(ctxs), width, device=DEV, dtype=torch.int32)
            tab[mask] = perm[used: used + total].to(torch.int32)
            out.append(tab)
            used += total
        return out

    def offset(self, n: int) -> int:
        """A random 64-element-aligned start of n contiguous elements in a pool."""
        return self.rng.randrange(0, self.n_el - n + 1, 64) if self.n_el > n else 0


def _time_decode_launch(pools: _DecodePools, h, kvh, d, ctxs, backends, p, ok_triton, skips: Skips, op: str,
                        varlen_ok: bool):
    """Yield (backend, seconds) for one paged decode launch over contexts ``ctxs``."""
    import torch.nn.functional as F
    kpool, vpool = pools.pools(kvh, d)
    b, cmax, total = len(ctxs), max(ctxs), sum(ctxs)
    n = rotation(grids.decode_kv_bytes(1, total, kvh, d))
    qs = [torch.randn(b, h, d, device=DEV, dtype=torch.bfloat16) for _ in range(n)]
    o = torch.empty_like(qs[0])
    equal = len(set(ctxs)) == 1
    for be in _backends_in_pass(backends, p):
        if (be == "triton" and not ok_triton) or (be == "vendor_varlen" and not (equal and varlen_ok)):
            continue
        try:
            if be == "triton":
                lens = torch.tensor(ctxs, device=DEV, dtype=torch.int32)
                fns = [lambda q=q, tab=tab: attn_decode.decode_attention(q, kpool, vpool, tab, lens, cmax, o,
                                                                         scratch=pools.scratch)
                       for q, tab in zip(qs, pools.tables(kpool.shape[0], ctxs, n))]
                t = bench_pass(fns)
            elif be == "vendor_varlen" or not equal:
                if not varlen_ok:
                    continue
                cu_q = torch.arange(b + 1, device=DEV, dtype=torch.int32)
                cu_k = torch.tensor([0] + ctxs, device=DEV, dtype=torch.int32).cumsum(0).to(torch.int32)
                fns = []
                for q in qs:
                    off = pools.offset(total * kvh * d)
                    kk = pools.k[off: off + total * kvh * d].view(total, kvh, d)
                    vv = pools.v[off: off + total * kvh * d].view(total, kvh, d)
                    fns.append(_varlen(q, kk, vv, cu_q, cu_k, 1, cmax, False))
                t = bench_pass(fns)
            else:
                fns = []
                for q in qs:
                    off = pools.offset(b * kvh * cmax * d)
                    k4 = pools.k[off: off + b * kvh * cmax * d].view(b, kvh, cmax, d)
                    v4 = pools.v[off: off + b * kvh * cmax * d].view(b, kvh, cmax, d)
                    fns.append(lambda q4=q.view(b, h, 1, d), k4=k4, v4=v4:
                               F.scaled_dot_product_attention(q4, k4, v4, enable_gqa=True))
                with _sdpa_ctx():
                    t = bench_pass(fns)
        except Exception as e:  # noqa: BLE001
            skips.add(f"{op}_{be}: {type(e).__name__}: {str(e)[:120]}")
            continue
        yield be, t


def time_decode(w: CsvOut, backends, ok_triton, quick, skips: Skips, windows=None):
    """Paged decode over K/V pools shared by every head configuration: each pass draws a fresh
    random block table (Triton) and a fresh random offset of the contiguous KV (vendor)."""
    bud = Budget("attn_decode", BUDGET["attn_decode"])
    page = grids.BLOCK_SIZE
    points = grids.decode_grid(quick)
    if not points:
        return
    pools = _DecodePools([(h, kvh, d, [c] * b) for h, kvh, d, b, c in points])

    def time_point(pt, p):
        h, kvh, d, b, c = pt
        yield from _time_decode_launch(pools, h, kvh, d, [c] * b, backends, p, ok_triton, skips, "attn_decode", False)

    got = run_passes("attn_decode", points, time_point, bud, skips, windows,
                     _shape_str(("heads", "kv_heads", "head_dim", "batch", "context")), log)

    def row_of(pt):
        h, kvh, d, b, c = pt
        flops, byts = grids.decode_flops_bytes(b, c, h, kvh, d)
        return dict(op="attn_decode", dtype="bf16", batch=b, context=c, heads=h, kv_heads=kvh, head_dim=d,
                    block_size=page, flops=flops, bytes=byts)
    write_pass_rows(w, points, backends, got, row_of)


def time_decode_multi(w: CsvOut, backends, ok_triton, quick, skips: Skips, windows=None):
    """Batches up to 2048, contexts down to 16, and mixed contexts (calibrate.grids_multi)."""
    bud = Budget("attn_decode_multi", BUDGET["attn_decode_multi"])
    points = grids_multi.decode_multi_grid(quick)
    if not points:
        return
    order = {ln: [n for n, _ in launch_order(ln, allow_prior=False)] for ln in {pt[3] for pt in points}}
    pools = _DecodePools([(h, kvh, d, order[ln]) for h, kvh, d, ln in points])
    varlen_ok = "vendor" in backends and varlen_check(skips)
    bes = _multi_backends(backends, varlen_ok)

    def time_point(pt, p):
        h, kvh, d, ln = pt
        use = [b for b in bes if b != "vendor_varlen" or (h, kvh, d) == grids.HEAD_CONFIGS[0]]
        yield from _time_decode_launch(pools, h, kvh, d, order[ln], use, p, ok_triton, skips,
                                       "attn_decode_multi", varlen_ok)

    got = run_passes("attn_decode_multi", points, time_point, bud, skips, windows,
                     _shape_str(("heads", "kv_heads", "head_dim", "contexts")), log)

    def row_of(pt):
        h, kvh, d, ln = pt
        ctxs = order[ln]
        flops, byts = grids_multi.decode_multi_flops_bytes(ln, h, kvh, d)
        return dict(op="attn_decode_multi", dtype="bf16", batch=len(ctxs), contexts=ln, heads=h, kv_heads=kvh,
                    head_dim=d, block_size=grids.BLOCK_SIZE, flops=flops, bytes=byts, max_context=max(ctxs),
                    sum_context=sum(ctxs))
    write_pass_rows(w, points, bes, got, row_of)
