"""The vendor attention calls of the reference step (calibrate/stepref.py), picked once per
process by a correctness check, so that a torch version without (or with a differently spelled)
varlen attention still gets a working vendor step and the choice is recorded.

Models: prefill = torch.nn.attention.varlen.varlen_attn over packed q/k/v with cu_seqlens
(flash attention's varlen kernel; causal is bottom-right aligned there, so a chunk over a prior
context attends to all of it), else that kernel called directly (aten._flash_attention_forward,
as calibrate/run_attention.py's vendor varlen rows), else SDPA per sequence (``is_causal`` for a whole prompt,
``causal_lower_right`` for a chunk over a prior context), GQA via ``enable_gqa`` or, if refused,
repeated KV heads; decode = SDPA of one query per sequence over a contiguous KV.
Ignores: cuDNN's varlen path (torch keeps it off), paged KV for the vendor decode.
"""
from __future__ import annotations

import contextlib
import inspect
import math

import torch
import torch.nn.functional as F

from .stepref import TOL, _cumsum


def sdpa_ctx(device):
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from .run_attention import _sdpa_ctx  # flash / cuDNN / efficient, as the calibration's vendor rows
    return _sdpa_ctx()


class VendorAttn:
    """The vendor attention calls, picked once per process: the first candidate that runs,
    matches a float64 reference (GQA, a chunk over a prior context, q as a strided slice of the
    QKV output, as in a step) within TOL and, on a GPU, can be captured in a CUDA graph.
    ``info`` records the choice and every candidate's error."""

    def __init__(self, device, dtype, heads: int = 8, kv_heads: int = 2, head_dim: int = 128):
        from .kernels.attn_prefill import reference as pf_ref
        self.device, self.info = device, {"prefill_checks": {}, "decode_checks": {}}
        g = torch.Generator(device=device)
        g.manual_seed(7)
        h, kvh, d, chunks = heads, kv_heads, head_dim, [(37, 0), (64, 100), (1, 20)]
        tq = sum(n for n, _ in chunks)
        qkv = torch.randn(tq, (h + 2 * kvh) * d, generator=g, device=device, dtype=dtype)
        q = qkv[:, :h * d].view(tq, h, d)
        k = torch.randn(sum(n + p for n, p in chunks), kvh, d, generator=g, device=device, dtype=dtype)
        v = torch.randn_like(k)
        cu_q = torch.tensor([0] + _cumsum([n for n, _ in chunks]), device=device, dtype=torch.int32)
        cu_k = torch.tensor([0] + _cumsum([n + p for n, p in chunks]), device=device, dtype=torch.int32)
        ref = pf_ref(q, k, v, [n for n, _ in chunks], [n + p for n, p in chunks])
        self.prefill_name = self.prefill = None
        for name, fn in (("varlen_attn", self._varlen), ("aten_flash_varlen", self._flash),
                         ("sdpa_per_sequence", self._sdpa_seq), ("sdpa_per_sequence_repeat_kv", self._sdpa_seq_rep)):
            err = _try_err(lambda: fn(q, k, v, cu_q, cu_k, chunks), ref)
            if isinstance(err, float) and err < TOL:
                err = self._captures(lambda: fn(q, k, v, cu_q, cu_k, chunks)) or err
            self.info["prefill_checks"][name] = err
            if isinstance(err, float) and err < TOL:
                self.prefill_name, self.prefill = name, fn
                break
        b, c = 3, 50
        qd = qkv[:b, :h * d].view(b, h, 1, d)
        kc = torch.randn(b, kvh, c, d, generator=g, device=device, dtype=dtype)
        vc = torch.randn_like(kc)
        s = (qd.double() @ kc.double().repeat_interleave(h // kvh, 1).transpose(2, 3)) / math.sqrt(d)
        dref = torch.softmax(s, -1) @ vc.double().repeat_interleave(h // kvh, 1)
        self.decode_name = self.decode = None
        for name, fn in (("sdpa_gqa", self._dec_gqa), ("sdpa_gqa_contiguous_q", self._dec_gqa_cq),
                         ("sdpa_repeat_kv", self._dec_rep)):
            err = _try_err(lambda: fn(qd, kc, vc), dref)
            if isinstance(err, float) and err < TOL:
                err = self._captures(lambda: fn(qd, kc, vc)) or err
            self.info["decode_checks"][name] = err
            if isinstance(err, float) and err < TOL:
                self.decode_name, self.decode = name, fn
                break
        self.info.update(prefill=self.prefill_name, decode=self.decode_name)
        if self.prefill is None or self.decode is None:
            raise RuntimeError(f"no vendor attention call passed its check: {self.info}")

    def _captures(self, fn) -> str | None:
        """None if ``fn`` can be captured in a CUDA graph and replayed (GPU only), else why not."""
        if torch.device(self.device).type != "cuda":
            return None
        try:
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            g.replay()
            torch.cuda.synchronize()
            return None
        except Exception as e:  # noqa: BLE001
            return f"CUDA graph capture: {type(e).__name__}: {str(e)[:200]}"

    def _varlen(self, q, k, v, cu_q, cu_k, chunks):
        """varlen_attn, causal and GQA spelled as the installed torch spells them (its API
        changed between releases: ``is_causal=`` earlier, ``window_size=(-1, 0)`` and
        ``enable_gqa=`` later)."""
        if not hasattr(self, "_varlen_fn"):
            from torch.nn.attention.varlen import varlen_attn
            params = inspect.signature(varlen_attn).parameters
            kw = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
            if "enable_gqa" in params:
                kw["enable_gqa"] = True
            self._varlen_fn, self._varlen_kw = varlen_attn, kw
        return self._varlen_fn(q, k, v, cu_q, cu_k, max(n for n, _ in chunks), max(n + p for n, p in chunks),
                               **self._varlen_kw)

    def _flash(self, q, k, v, cu_q, cu_k, chunks):
        """The kernel varlen_attn wraps, called as calibrate/run_attention.py's vendor varlen rows do."""
        return torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max(n for n, _ in chunks),
                                                       max(n + p for n, p in chunks), 0.0, True, False)[0]

    def _sdpa_seq(self, q, k, v, cu_q, cu_k, chunks, repeat=False):
        from torch.nn.attention.bias import causal_lower_right
        out = q.new_empty(q.shape)
        group = q.shape[1] // k.shape[1]
        qo = ko = 0
        with sdpa_ctx(self.device):
            for n, p in chunks:
                q4 = q[qo:qo + n].transpose(0, 1).unsqueeze(0)
                k4 = k[ko:ko + n + p].transpose(0, 1).unsqueeze(0)
                v4 = v[ko:ko + n + p].transpose(0, 1).unsqueeze(0)
                if repeat:
                    k4, v4 = k4.repeat_interleave(group, 1), v4.repeat_interleave(group, 1)
                kw = {"is_causal": True} if p == 0 else {"attn_mask": causal_lower_right(n, n + p)}
                o4 = F.scaled_dot_product_attention(q4, k4, v4, enable_gqa=not repeat, **kw)
                out[qo:qo + n] = o4[0].transpose(0, 1)
                qo, ko = qo + n, ko + n + p
        return out

    def _sdpa_seq_rep(self, q, k, v, cu_q, cu_k, chunks):
        return self._sdpa_seq(q, k, v, cu_q, cu_k, chunks, repeat=True)

    def _dec_gqa(self, q4, kc, vc):
        with sdpa_ctx(self.device):
            return F.scaled_dot_product_attention(q4, kc, vc, enable_gqa=True)

    def _dec_gqa_cq(self, q4, kc, vc):
        return self._dec_gqa(q4.contiguous(), kc, vc)

    def _dec_rep(self, q4, kc, vc):
        g = q4.shape[1] // kc.shape[1]
        with sdpa_ctx(self.device):
            return F.scaled_dot_product_attention(q4, kc.repeat_interleave(g, 1), vc.repeat_interleave(g, 1))


def _try_err(fn, ref):
    try:
        out = fn()
        from .kernels.gemm import rel_err
        return rel_err(out.reshape(ref.shape), ref)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e)[:200]}"


