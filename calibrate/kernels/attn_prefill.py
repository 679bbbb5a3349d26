"""Flash-style causal prefill attention in Triton: variable lengths in one launch, GQA, prior
context (chunked prefill: seq_kv >= seq_q, query i sits at position seq_kv - seq_q + i).

Packed layout (cu_seqlens style):
  q: [total_q, heads, D], k/v: [total_kv, kv_heads, D], o: [total_q, heads, D]
  cu_seqlens_q / cu_seqlens_k: int32 [batch+1]
Grid: (q blocks of the longest sequence, heads, batch); blocks past a sequence's end exit.
Keys strictly before the diagonal block run unmasked; the diagonal band runs masked.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _attn_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m_pos,
                lo, hi, seqlen_k, qk_scale,
                BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k_ptrs = k_base + cols[None, :] * stride_kt + offs_d[:, None]
        v_ptrs = v_base + cols[:, None] * stride_vt + offs_d[None, :]
        if MASKED:
            kmask = cols < seqlen_k
            k = tl.load(k_ptrs, mask=kmask[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=kmask[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        qk = tl.dot(q, k) * qk_scale
        if MASKED:
            keep = (cols[None, :] <= offs_m_pos[:, None]) & (cols[None, :] < seqlen_k)
            qk = tl.where(keep, qk, -1.0e30)
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _prefill_kernel(q_ptr, k_ptr, v_ptr, o_ptr, cu_q_ptr, cu_k_ptr, qk_scale,
                    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                    stride_ot, stride_oh, GROUP: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    start_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    q_start = tl.load(cu_q_ptr + b)
    seqlen_q = tl.load(cu_q_ptr + b + 1) - q_start
    if start_m * BLOCK_M >= seqlen_q:
        return
    k_start = tl.load(cu_k_ptr + b)
    seqlen_k = tl.load(cu_k_ptr + b + 1) - k_start
    ctx = seqlen_k - seqlen_q
    kvh = h // GROUP

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mrow = offs_m < seqlen_q
    q_ptrs = q_ptr + (q_start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=mrow[:, None], other=0.0)
    k_base = k_ptr + k_start * stride_kt + kvh * stride_kh
    v_base = v_ptr + k_start * stride_vt + kvh * stride_vh

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e30
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    pos = ctx + offs_m  # absolute position of each query row
    # unmasked part: keys entirely below this block's first query position
    lo_diag = ((ctx + start_m * BLOCK_M) // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _attn_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, pos,
                                0, lo_diag, seqlen_k, qk_scale, BLOCK_N, HEAD_DIM, False)
    hi = tl.minimum(ctx + (start_m + 1) * BLOCK_M, seqlen_k)
    acc, l_i, m_i = _attn_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, pos,
                                lo_diag, hi, seqlen_k, qk_scale, BLOCK_N, HEAD_DIM, True)
    acc = acc / l_i[:, None]
    o_ptrs = o_ptr + (q_start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, acc.to(o_ptr.dtype.element_ty), mask=mrow[:, None])


def _config(head_dim: int):
    # (BLOCK_M, BLOCK_N, num_warps, num_stages)
    if head_dim <= 64:
        return 128, 64, 4, 3
    return 128, 64, 8, 3


def prefill_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, out=None,
                      sm_scale=None):
    total_q, heads, d = q.shape
    kv_heads = k.shape[1]
    assert heads % kv_heads == 0 and d in (64, 128)
    batch = cu_seqlens_q.numel() - 1
    if out is None:
        out = torch.empty_like(q)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(d)
    bm, bn, nw, ns = _config(d)
    grid = (triton.cdiv(max_seqlen_q, bm), heads, batch)
    _prefill_kernel[grid](q, k, v, out, cu_seqlens_q, cu_seqlens_k, sm_scale * 1.4426950408889634,
                          q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                          v.stride(0), v.stride(1), out.stride(0), out.stride(1),
                          GROUP=heads // kv_heads, BLOCK_M=bm, BLOCK_N=bn, HEAD_DIM=d,
                          num_warps=nw, num_stages=ns)
    return out


def make_inputs(seqs_q, seqs_k, heads, kv_heads, d, device="cuda", dtype=torch.bfloat16):
    cu_q = torch.tensor([0] + list(_cumsum(seqs_q)), device=device, dtype=torch.int32)
    cu_k = torch.tensor([0] + list(_cumsum(seqs_k)), device=device, dtype=torch.int32)
    q = torch.randn(sum(seqs_q), heads, d, device=device, dtype=dtype)
    k = torch.randn(sum(seqs_k), kv_heads, d, device=device, dtype=dtype)
    v = torch.randn(sum(seqs_k), kv_heads, d, device=device, dtype=dtype)
    return q, k, v, cu_q, cu_k


def _cumsum(xs):
    s = 0
    for x in xs:
        s += x
        yield s


def reference(q, k, v, seqs_q, seqs_k):
    """float64 reference, one sequence at a time (bottom-right aligned causal mask)."""
    heads, d = q.shape[1], q.shape[2]
    group = heads // k.shape[1]
    outs = []
    qo = ko = 0
    for sq, sk in zip(seqs_q, seqs_k):
        qs = q[qo:qo + sq].double().transpose(0, 1)               # [H, sq, D]
        ks = k[ko:ko + sk].double().transpose(0, 1).repeat_interleave(group, 0)
        vs = v[ko:ko + sk].double().transpose(0, 1).repeat_interleave(group, 0)
        s = qs @ ks.transpose(1, 2) / math.sqrt(d)
        pos = torch.arange(sq, device=q.device)[:, None] + (sk - sq)
        mask = torch.arange(sk, device=q.device)[None, :] <= pos
        s = s.masked_fill(~mask, float("-inf"))
        outs.append((torch.softmax(s, -1) @ vs).transpose(0, 1))
        qo += sq
        ko += sk
    return torch.cat(outs, 0)


def check(device="cuda", dtype=None) -> dict:
    dt = dtype or torch.bfloat16
    from .gemm import rel_err
    res = {}
    cases = [
        ("d128_gqa4_var", [37, 128, 300, 1], [37, 128, 300, 1], 8, 2, 128),
        ("d64_gqa7_var", [200, 64, 513], [200, 64, 513], 14, 2, 64),
        ("d128_chunked", [100, 64, 1], [357, 64, 900], 32, 8, 128),
        ("d64_chunked", [129, 7], [1000, 300], 4, 4, 64),
    ]
    for name, sq, sk, h, kvh, d in cases:
        q, k, v, cu_q, cu_k = make_inputs(sq, sk, h, kvh, d, device, dt)
        out = torch.full_like(q, float("nan"))
        prefill_attention(q, k, v, cu_q, cu_k, max(sq), out)
        res[name] = rel_err(out, reference(q, k, v, sq, sk))
    return res
