"""Roofline step-time model of a dense transformer on one GPU.

Models: every op of one engine step, per layer: QKV/O/gate-up/down GEMMs over all tokens
of the step, attention for the prefill chunks (causal over their real context) and for the
decode requests (over their summed context), RMSNorms, rotary, SiLU-and-mul, residual adds;
once per step: embedding gather, final norm, LM head over the sampled tokens and sampling.
Each op is priced by the hardware's affine roofline (`sim.cost.ops`) with the efficiency
curves of the chosen kernel backend; a fixed host overhead per step is added (scheduling,
input preparation, sampling bookkeeping on the CPU), as is a per-kernel launch cost.

Ignores: tensor/pipeline parallel communication (one GPU), CUDA graphs (launches are priced
as eager), overlap of host work with GPU work, LoRA, quantization scale math.
"""
from __future__ import annotations

import bisect
import math

from sim.cost.base import BatchShape, StepTime, cost_models
from sim.cost.ops import AttnPrefill, Elementwise, Gemm, affine_roofline_s, prefill_chain_flops
from sim.hardware import TABLE_BASE, HardwareProfile
from sim.model_spec import ModelSpec

_CACHE_LIMIT = 65536


class _Family:
    """A shape family key standing in for an op (the prefill chunks of a step are one launch)."""

    __slots__ = ("key", "chain")

    def __init__(self, key: tuple, chain: float):
        self.key = key
        self.chain = chain

    def table_key(self) -> tuple:
        return self.key

    def chain_flops(self) -> float:
        return self.chain

    def table_coords(self, ideal_ns: float) -> tuple[float, ...]:
        return (math.log2(ideal_ns),)


@cost_models.register("roofline")
class RooflineCost:
    """Per-op roofline of one step of ``model`` on ``hardware``."""

    def __init__(self, model: ModelSpec, hardware: HardwareProfile, host_overhead_s: float = 0.0,
                 backend: str | None = None, dtype: str | None = None):
        self.model = model
        self.hw = hardware
        self.backend = backend or hardware.default_backend
        self.host_overhead_s = float(host_overhead_s)
        self.dtype = dtype or ("bf16" if model.weight_dtype in ("bfloat16", "bf16") else model.weight_dtype)
        if self.dtype in ("float16",):
            self.dtype = "fp16"
        hardware.peak_flops(self.dtype)  # fail early if the GPU lacks this dtype
        m = model
        self._layer_gemms = [(m.hidden_size, m.q_size + 2 * m.kv_size),  # (k, n)
                             (m.q_size, m.hidden_size),
                             (m.hidden_size, 2 * m.intermediate_size),
                             (m.intermediate_size, m.hidden_size)]
        self._dense_cache: dict[tuple[int, int], tuple[float, float]] = {}
        self._token_cache: dict[int, tuple[float, float]] = {}
        self._sampled_cache: dict[int, tuple[float, float]] = {}
        # decode attention: constants of the affine roofline, hoisted out of the hot path
        eff = hardware.op_efficiency("attn_decode", self.backend)
        self._dec_eff = eff
        # the measured table of this model's decode head configuration, if the profile has one
        self._dec_table = getattr(eff, "_tables", {}).get((m.num_heads, m.num_kv_heads, m.head_dim, self.dtype))
        self._dec_fns: dict = {}
        self._fast = {}
        for kind in ("gemm", "elementwise"):
            assert TABLE_BASE[kind] == "roofline"  # _op_s assumes it
            e = hardware.op_efficiency(kind, self.backend)
            self._fast[kind] = (e, getattr(e, "_tables", {}))  # num -> decode attention seconds as a function of the context sum
        self._peak = hardware.peak_flops(self.dtype)
        self._bw = hardware.memory_bandwidth_bytes_per_s
        self._kv_bytes_tok_layer = m.kv_bytes_per_token_per_layer
        self._q_o_bytes_per_req = 2 * m.q_size * 2

    # -- parts -------------------------------------------------------------------------
    def _op_s(self, op) -> float:
        """One launch of a GEMM or elementwise ``op``: sim.cost.ops.affine_roofline_s with the
        profile lookups hoisted (same arithmetic, so the same seconds as ``op_time``)."""
        eff, tabs = self._fast[op.kind]
        flops, bytes_ = op.flops(), op.bytes()
        peak, bw = self._peak, self._bw
        t_c = (flops + eff.fixed_flops) / (peak * eff.compute_frac) if flops > 0 else 0.0
        t_m = (bytes_ + eff.fixed_bytes) / (bw * eff.bandwidth_frac)
        t = max(t_c, t_m)
        ideal_ns = max(flops / peak, bytes_ / bw) * 1e9
        tab = tabs.get(op.table_key()) if tabs else None
        if tab is not None:  # TABLE_BASE of gemm and elementwise: roofline + launch
            return (t + eff.launch_s) * math.exp(tab.log_factor(op.table_coords(ideal_ns)))
        return t * eff.correction(ideal_ns) + eff.launch_s

    def _dense(self, tokens: int, sampled: int) -> tuple[float, float]:
        """(gemm seconds, other seconds) for everything but attention; cached by shape."""
        key = (tokens, sampled)
        hit = self._dense_cache.get(key)
        if hit is not None:
            return hit
        tg, to = self._per_token_part(tokens) if tokens else (0.0, 0.0)
        sg, so = self._sampled_part(sampled) if sampled else (0.0, 0.0)
        out = (tg + sg, to + so)
        if len(self._dense_cache) < _CACHE_LIMIT:
            self._dense_cache[key] = out
        return out

    def _per_token_part(self, tokens: int) -> tuple[float, float]:
        """Layer GEMMs and elementwise ops over ``tokens`` tokens, embedding and final norm."""
        hit = self._token_cache.get(tokens)
        if hit is not None:
            return hit
        m, dt, op = self.model, self.dtype, self._op_s
        L = m.num_layers
        gemm = sum(L * op(Gemm(tokens, n, k, dt)) for k, n in self._layer_gemms)
        ew = [Elementwise("rmsnorm", tokens, m.hidden_size, dt)] * 2 + [
            Elementwise("rotary", tokens, m.q_size + m.kv_size, dt),
            Elementwise("silu_mul", tokens, m.intermediate_size, dt)] + [
            Elementwise("add", tokens, m.hidden_size, dt)] * 2
        other = L * sum(op(e) for e in ew)
        for e in (Elementwise("copy", tokens, m.hidden_size, dt),      # embedding gather
                  Elementwise("rmsnorm", tokens, m.hidden_size, dt)):  # final norm
            other += op(e)
        out = (gemm, other)
        if len(self._token_cache) < _CACHE_LIMIT:
            self._token_cache[tokens] = out
        return out

    def _sampled_part(self, sampled: int) -> tuple[float, float]:
        """LM head over the sampled tokens and sampling (logits to fp32, softmax/top-p)."""
        hit = self._sampled_cache.get(sampled)
        if hit is not None:
            return hit
        m, dt, op = self.model, self.dtype, self._op_s
        out = (op(Gemm(sampled, m.vocab_size, m.hidden_size, dt)),
               op(Elementwise("copy", sampled, 2 * m.vocab_size, dt)))  # read+write [sampled, vocab] fp32
        if len(self._sampled_cache) < _CACHE_LIMIT:
            self._sampled_cache[sampled] = out
        return out

    def _attn_prefill(self, chunks: list[tuple[int, int]]) -> float:
        """All prefill chunks of a step as one varlen launch (as flash-attention varlen runs them)."""
        m = self.model
        flops = bytes_ = 0.0
        longest = 0
        for new, prior in chunks:
            if prior + new > longest:
                longest = prior + new
            op = AttnPrefill(1, new, prior + new, m.num_heads, m.num_kv_heads, m.head_dim, self.dtype)
            flops += op.flops()
            bytes_ += op.bytes()
        fam = _Family((m.num_heads, m.num_kv_heads, m.head_dim, int(any(p for _, p in chunks)), self.dtype),
                      prefill_chain_flops(m.head_dim, longest))
        return m.num_layers * affine_roofline_s(self.hw, "attn_prefill", flops, bytes_, self.dtype, self.backend,
                                                fam)[0]

    def _attn_decode(self, num: int, context_sum: int) -> float:
        """Decode attention of ``num`` requests over ``context_sum`` cached tokens, all layers."""
        f = self._dec_fns.get(num)
        if f is None:
            f = self._dec_fns[num] = self._decode_fn(num)
        return f(context_sum)

    def _decode_fn(self, num: int):
        """Decode attention seconds as a function of the context sum, for ``num`` requests:
        the affine roofline, its correction and (if the profile has one) the measured table of
        this head configuration, with every constant of ``num`` hoisted. Stepping and
        fast-forwarding both call it, so they agree bit for bit."""
        m, eff = self.model, self._dec_eff
        fc = 4.0 * m.num_heads * m.head_dim
        kvb, qo = self._kv_bytes_tok_layer, num * self._q_o_bytes_per_req
        ff, fb, launch, L = eff.fixed_flops, eff.fixed_bytes, eff.launch_s, m.num_layers
        pc, pbw = self._peak * eff.compute_frac, self._bw * eff.bandwidth_frac
        peak, bw = self._peak, self._bw
        corr = eff.correction if eff.corr_log2_x else None
        tab = self._dec_table
        if tab is not None:
            rc = tab._row_coords
            r = math.log2(num)
            if len(rc) == 1 or r <= rc[0]:
                i0 = i1 = 0
                w = 0.0
            elif r >= rc[-1]:
                i0 = i1 = len(rc) - 1
                w = 0.0
            else:
                i1 = bisect.bisect_right(rc, r)
                i0 = i1 - 1
                w = (r - rc[i0]) / (rc[i1] - rc[i0])
            if tab.breaks:
                row = tab._row
            else:  # no class breaks (decode tables): _interp_class on the two rows, inlined
                (_, xs0, ys0), (_, xs1, ys1) = tab.rows[i0], tab.rows[i1]
                bis = bisect.bisect_right

                def row(i: int, x: float, xs0=xs0, ys0=ys0, xs1=xs1, ys1=ys1) -> float:
                    xs, ys = (xs0, ys0) if i == i0 else (xs1, ys1)
                    if x <= xs[0]:
                        return ys[0]
                    if x >= xs[-1]:
                        return ys[-1]
                    j = bis(xs, x)
                    return ys[j - 1] + (ys[j] - ys[j - 1]) * (x - xs[j - 1]) / (xs[j] - xs[j - 1])
        log2, exp = math.log2, math.exp

        def f(context_sum: int) -> float:
            flops = fc * context_sum
            bytes_ = context_sum * kvb + qo
            t_c = (flops + ff) / pc
            t_m = (bytes_ + fb) / pbw
            t = t_c if t_c > t_m else t_m
            if corr is not None:
                a, b = flops / peak, bytes_ / bw
                t = t * corr((a if a > b else b) * 1e9)
            t = t + launch
            if tab is not None and context_sum > 0:
                x = log2(context_sum / num)
                y0 = row(i0, x)
                t *= exp(y0 if i1 == i0 else y0 + (row(i1, x) - y0) * w)
            return L * t
        return f

    def decode_run(self, n: int, context_sum: int, k: int) -> tuple[list[float], StepTime]:
        """Attention seconds of k pure-decode steps (context grows by n per step) + the fixed parts.

        The same function as ``step_time`` step by step (``_decode_fn``), for fast-forwarding.
        """
        gemm, other = self._dense(n, n)
        f = self._dec_fns.get(n)
        if f is None:
            f = self._dec_fns[n] = self._decode_fn(n)
        attn = [f(context_sum + i * n) for i in range(k)]
        return attn, StepTime(total_s=0.0, gemm_s=gemm, attn_s=0.0, other_s=other, host_s=self.host_overhead_s)

    # -- interface ---------------------------------------------------------------------
    def step_time(self, shape: BatchShape) -> StepTime:
        chunks = shape.prefill_chunks
        tokens = shape.num_decode + (sum(c for c, _ in chunks) if chunks else 0)
        gemm, other = self._dense(tokens, shape.num_sampled)
        attn = self._attn_prefill(chunks) if chunks else 0.0
        if shape.num_decode:
            attn += self._attn_decode(shape.num_decode, shape.decode_context_sum)
        host = self.host_overhead_s
        return StepTime(total_s=gemm + attn + other + host, gemm_s=gemm, attn_s=attn, other_s=other, host_s=host)
