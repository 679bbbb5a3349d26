"""Correctness of the reference step (calibrate/stepref.py): random prior K/V written into a
step's caches, a float64 reference of the same math, and the check that the vendor and Triton
steps compute it (relative error of the final normed hidden state, as calibrate/harness.py checks
kernels).  Run on a CPU with the Triton interpreter (tests/test_calibrate_truth.py) before any
GPU time is spent.

Models: the step's function (embedding, layers with GQA attention over prior context, final norm).
Ignores: the LM head and logits (a GEMM and a copy, checked with the kernels).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .stepref import BLOCK_SIZE, KVPool, Step, Weights, parse_shape, step_model


def fill_priors(step: Step) -> None:
    """Write random prior K/V (the cached context) of every sequence in every layer, and
    keep them for ``reference`` (correctness checks only: timing uses the pool as it is)."""
    md, dev = step.md, step.device
    g = torch.Generator()  # its own stream, so that both backends get the same priors
    g.manual_seed(step.seed + 1)
    dtype = step.w.embed.dtype
    step.priors = []
    for lay in step.layout:
        per = []
        for j, (n, p) in enumerate(step.chunks):
            k, v = (torch.randn(p, md.kv_heads, md.head_dim, generator=g).to(dev, dtype) for _ in "kv")
            o = int(step.cu_k[j])
            lay["kp"][o:o + p], lay["vp"][o:o + p] = k, v
            per.append((k, v))
        for i, c in enumerate(step.contexts):
            k, v = (torch.randn(c - 1, md.kv_heads, md.head_dim, generator=g).to(dev, dtype) for _ in "kv")
            if step.backend == "vendor":
                lay["kd"][i, :, :c - 1], lay["vd"][i, :, :c - 1] = k.transpose(0, 1), v.transpose(0, 1)
            else:
                rows = torch.tensor([step.table_l[i][x // BLOCK_SIZE] * BLOCK_SIZE + x % BLOCK_SIZE
                                     for x in range(c - 1)], dtype=torch.int64, device=dev)
                for buf, src in ((lay["kd"], k), (lay["vd"], v)):
                    buf.view(-1, md.kv_heads, md.head_dim)[rows] = src
            per.append((k, v))
        step.priors.append(per)


def reference(step: Step):
    """float64 final normed hidden state of ``step`` (after ``fill_priors``): the same math, one
    sequence at a time, from the step's weights, ids, positions and prior K/V."""
    md, w, t = step.md, step.w, step.tokens
    H, KVH, D, qs, ks, inter = md.heads, md.kv_heads, md.head_dim, md.q_size, md.kv_size, md.inter
    d = lambda x: x.double()  # noqa: E731
    half = D // 2
    cs = d(step.cs)[step.pos.long()]
    cos, sin = cs[:, None, :half], cs[:, None, half:]

    def rms(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + md.eps) * d(g)

    def rot(x):
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
    seqs = list(step.chunks) + [(1, c - 1) for c in step.contexts]
    x = d(w.embed)[step.ids]
    for li, lw in enumerate(w.layers):
        qkv = rms(x, lw["ln1"]) @ d(w.nk(lw["qkv"])).t()
        if lw["qkv_b"] is not None:
            qkv = qkv + d(lw["qkv_b"])
        q, k = rot(qkv[:, :qs].reshape(t, H, D)), rot(qkv[:, qs:qs + ks].reshape(t, KVH, D))
        v = qkv[:, qs + ks:].reshape(t, KVH, D)
        outs, r0 = [], 0
        for j, (n, p) in enumerate(seqs):
            kp, vp = step.priors[li][j]
            kk = torch.cat([d(kp), k[r0:r0 + n]]).transpose(0, 1).repeat_interleave(H // KVH, 0)
            vv = torch.cat([d(vp), v[r0:r0 + n]]).transpose(0, 1).repeat_interleave(H // KVH, 0)
            s = q[r0:r0 + n].transpose(0, 1) @ kk.transpose(1, 2) / math.sqrt(D)     # [H, n, p + n]
            keep = torch.arange(p + n, device=s.device)[None, :] <= (p + torch.arange(n, device=s.device))[:, None]
            outs.append((torch.softmax(s.masked_fill(~keep, float("-inf")), -1) @ vv).transpose(0, 1))
            r0 += n
        x = x + torch.cat(outs).reshape(t, qs) @ d(w.nk(lw["o"])).t()
        gu = rms(x, lw["ln2"]) @ d(w.nk(lw["gate_up"])).t()
        x = x + (F.silu(gu[:, :inter]) * gu[:, inter:]) @ d(w.nk(lw["down"])).t()
    return rms(x, w.lnf)


def check(model: str, shapes: list[tuple[str, str]], device, dtype, attn=None) -> dict[str, object]:
    """Relative error of each backend's final hidden state against ``reference`` for each
    (prefill, decode) shape (vendor skips mixed contexts): the two backends compute the same
    function iff both are small.  Values are floats, or the error text of a step that failed."""
    from .kernels.gemm import rel_err
    md = step_model(model)
    out: dict[str, object] = {}
    finals: dict = {}
    for be in ("vendor", "triton"):
        w = Weights(md, be, device, dtype, seed=3)
        for p, dstr in shapes:
            chunks, ctxs = parse_shape(p, dstr)
            if be == "vendor" and len(set(ctxs)) > 1:
                continue
            try:
                per = sum(n + pr for n, pr in chunks) + sum(-(-c // BLOCK_SIZE) * BLOCK_SIZE for c in ctxs)
                pool = KVPool(md.layers * (per * md.kv_size + 256), device, dtype)
                step = Step(md, w, p, dstr, pool, attn if be == "vendor" else None, seed=11)
                assert step.kv_distinct == md.layers
                fill_priors(step)
                step.run()
                out[f"{be} {p};{dstr}"] = rel_err(step.env["hf"], reference(step))
                finals.setdefault((p, dstr), []).append(step.env["hf"])
            except Exception as e:  # noqa: BLE001
                out[f"{be} {p};{dstr}"] = f"{type(e).__name__}: {str(e)[:300]}"
    for (p, dstr), hs in finals.items():
        if len(hs) == 2:
            out[f"triton_vs_vendor {p};{dstr}"] = rel_err(hs[1], hs[0].double())
    return out
