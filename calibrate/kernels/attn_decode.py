"""Paged decode attention in Triton (one query token per sequence), GQA, split-K
(flash-decoding) over the context for long contexts / small batches.

  q: [batch, heads, D]; k_cache/v_cache: [num_blocks, BLOCK_SIZE, kv_heads, D]
  block_table: int32 [batch, max_blocks]; context_lens: int32 [batch]
One program = (sequence, kv head, split): it loads all GROUP query heads sharing that kv head
(padded to 16 rows for tl.dot) so each K/V page is read once per kv head.  With more than one
split, partial (acc, max, sum) go to fp32 scratch and a second kernel merges them.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


# the integers that change with (batch, context) are not specialized on (divisibility by 16, == 1):
# a calibration grid of ~1,000 decode shapes otherwise compiled dozens of variants (~2 s each)
@triton.jit(do_not_specialize=["stride_bt", "tokens_per_split", "num_splits"])
def _decode_kernel(q_ptr, k_ptr, v_ptr, bt_ptr, lens_ptr, o_ptr, pacc_ptr, pml_ptr, qk_scale,
                   stride_qb, stride_qh, stride_kb, stride_kt, stride_kh,
                   stride_vb, stride_vt, stride_vh, stride_bt, stride_ob, stride_oh,
                   tokens_per_split, num_splits,
                   GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                   PAGE: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    s = tl.program_id(2)
    ctx = tl.load(lens_ptr + b)
    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    gmask = offs_g < GROUP
    heads = kvh * GROUP + offs_g
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=gmask[:, None], other=0.0)
    start = s * tokens_per_split
    end = tl.minimum(start + tokens_per_split, ctx)
    m_i = tl.zeros([GROUP_PAD], dtype=tl.float32) - 1.0e30
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], dtype=tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    for n0 in range(start, end, BLOCK_N):
        tok = n0 + offs_n
        tmask = tok < end
        # int64: page * stride overflows int32 once the pool passes 2^31 elements (4 GiB)
        page = tl.load(bt_ptr + b * stride_bt + tok // PAGE, mask=tmask, other=0).to(tl.int64)
        slot = tok % PAGE
        k = tl.load(k_ptr + page[None, :] * stride_kb + slot[None, :] * stride_kt
                    + kvh * stride_kh + offs_d[:, None], mask=tmask[None, :], other=0.0)
        qk = tl.dot(q, k) * qk_scale                       # [GROUP_PAD, BLOCK_N]
        qk = tl.where(tmask[None, :], qk, -1.0e30)
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + page[:, None] * stride_vb + slot[:, None] * stride_vt
                    + kvh * stride_vh + offs_d[None, :], mask=tmask[:, None], other=0.0)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    if SPLIT:
        # scratch: pacc [batch, heads, num_splits, D] fp32; pml [batch, heads, num_splits, 2]
        row = (b * (GROUP * tl.num_programs(1)) + heads) * num_splits + s
        tl.store(pacc_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=gmask[:, None])
        tl.store(pml_ptr + row * 2, m_i, mask=gmask)
        tl.store(pml_ptr + row * 2 + 1, l_i, mask=gmask)
    else:
        out = acc / l_i[:, None]
        tl.store(o_ptr + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=gmask[:, None])


@triton.jit(do_not_specialize=["num_splits"])
def _reduce_kernel(pacc_ptr, pml_ptr, o_ptr, stride_ob, stride_oh, num_splits, num_heads,
                   SPLITS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    smask = offs_s < num_splits
    row = (b * num_heads + h) * num_splits + offs_s
    m = tl.load(pml_ptr + row * 2, mask=smask, other=-1.0e30)
    l = tl.load(pml_ptr + row * 2 + 1, mask=smask, other=0.0)
    m_max = tl.max(m, 0)
    w = tl.math.exp2(m - m_max)
    w = tl.where(smask, w, 0.0)
    acc = tl.load(pacc_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], mask=smask[:, None],
                  other=0.0)
    out = tl.sum(acc * w[:, None], 0) / tl.sum(l * w, 0)
    tl.store(o_ptr + b * stride_ob + h * stride_oh + offs_d, out.to(o_ptr.dtype.element_ty))


_NUM_SMS = None


def _num_sms(device):
    global _NUM_SMS
    if _NUM_SMS is None:
        dev = torch.device(device)
        _NUM_SMS = (torch.cuda.get_device_properties(dev).multi_processor_count
                    if dev.type == "cuda" else 132)
    return _NUM_SMS


BLOCK_N = 64


def plan_splits(batch, kv_heads, max_context, device="cuda"):
    """Number of context splits: aim for ~2 waves of programs, each split >= 4 * BLOCK_N
    tokens.  Returns (num_splits, tokens_per_split)."""
    target = 2 * _num_sms(device)
    progs = batch * kv_heads
    splits = max(1, min(triton.cdiv(target, progs), triton.cdiv(max_context, 4 * BLOCK_N), 64))
    tps = triton.cdiv(triton.cdiv(max_context, splits), BLOCK_N) * BLOCK_N
    splits = triton.cdiv(max_context, tps)
    return splits, tps


def decode_attention(q, k_cache, v_cache, block_table, context_lens, max_context, out=None,
                     sm_scale=None, num_splits=None, scratch=None):
    batch, heads, d = q.shape
    page = k_cache.shape[1]
    kv_heads = k_cache.shape[2]
    group = heads // kv_heads
    if out is None:
        out = torch.empty_like(q)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(d)
    if num_splits is None:
        splits, tps = plan_splits(batch, kv_heads, max_context, q.device)
    else:
        splits = num_splits
        tps = triton.cdiv(triton.cdiv(max_context, splits), BLOCK_N) * BLOCK_N
        splits = triton.cdiv(max_context, tps)
    split = splits > 1
    if split:
        if scratch is None or scratch[0].numel() < batch * heads * splits * d:
            scratch = (torch.empty(batch * heads * splits * d, device=q.device, dtype=torch.float32),
                       torch.empty(batch * heads * splits * 2, device=q.device, dtype=torch.float32))
        pacc, pml = scratch
    else:
        pacc = pml = out
    nw = 4
    _decode_kernel[(batch, kv_heads, splits)](
        q, k_cache, v_cache, block_table, context_lens, out, pacc, pml,
        sm_scale * 1.4426950408889634,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_table.stride(0),
        out.stride(0), out.stride(1), tps, splits,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=d, PAGE=page,
        BLOCK_N=BLOCK_N, SPLIT=split, num_warps=nw, num_stages=3)
    if split:
        _reduce_kernel[(batch, heads)](pacc, pml, out, out.stride(0), out.stride(1), splits, heads,
                                       SPLITS_PAD=max(2, triton.next_power_of_2(splits)),
                                       HEAD_DIM=d, num_warps=4)
    return out


def make_paged(batch, contexts, heads, kv_heads, d, page=16, extra_blocks=7, device="cuda",
               dtype=torch.bfloat16):
    """Random q and a randomly permuted paged cache holding each sequence's context."""
    blocks_per = [triton.cdiv(c, page) for c in contexts]
    nblocks = sum(blocks_per) + extra_blocks
    k_cache = torch.randn(nblocks, page, kv_heads, d, device=device, dtype=dtype)
    v_cache = torch.randn(nblocks, page, kv_heads, d, device=device, dtype=dtype)
    perm = torch.randperm(nblocks, device=device).to(torch.int32)
    maxb = max(blocks_per)
    table = torch.zeros(batch, maxb, device=device, dtype=torch.int32)
    o = 0
    for i, nb in enumerate(blocks_per):
        table[i, :nb] = perm[o:o + nb]
        o += nb
    lens = torch.tensor(contexts, device=device, dtype=torch.int32)
    q = torch.randn(batch, heads, d, device=device, dtype=dtype)
    return q, k_cache, v_cache, table, lens


def gather_contiguous(k_cache, table, ctx_len, i):
    """Sequence i's K (or V) as [ctx, kv_heads, D]."""
    page = k_cache.shape[1]
    nb = triton.cdiv(ctx_len, page)
    return k_cache[table[i, :nb].long()].reshape(nb * page, *k_cache.shape[2:])[:ctx_len]


def reference(q, k_cache, v_cache, table, contexts):
    heads, d = q.shape[1], q.shape[2]
    group = heads // k_cache.shape[2]
    outs = []
    for i, c in enumerate(contexts):
        k = gather_contiguous(k_cache, table, c, i).double().transpose(0, 1).repeat_interleave(group, 0)
        v = gather_contiguous(v_cache, table, c, i).double().transpose(0, 1).repeat_interleave(group, 0)
        s = (k @ q[i].double()[:, :, None])[..., 0] / math.sqrt(d)   # [H, c]
        outs.append((torch.softmax(s, -1)[:, None, :] @ v)[:, 0, :])
    return torch.stack(outs, 0)


def check(device="cuda", dtype=None) -> dict:
    dt = dtype or torch.bfloat16
    from .gemm import rel_err
    res = {}
    cases = [
        ("h32kv8_d128_var", [1, 17, 300, 1000], 32, 8, 128, None),
        ("h14kv2_d64_var", [5, 64, 2049], 14, 2, 64, None),
        ("h28kv4_d128_split", [4000, 33], 28, 4, 128, 7),
        ("h64kv8_d128_nosplit", [700, 129, 16], 64, 8, 128, 1),
    ]
    for name, ctxs, h, kvh, d, ns in cases:
        q, kc, vc, table, lens = make_paged(len(ctxs), ctxs, h, kvh, d, device=device, dtype=dt)
        out = torch.full_like(q, float("nan"))
        decode_attention(q, kc, vc, table, lens, max(ctxs), out=out, num_splits=ns)
        res[name] = rel_err(out, reference(q, kc, vc, table, ctxs))
    return res
