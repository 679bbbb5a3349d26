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
from sim.hardware import HardwareProfile
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
        self._peak = hardware.peak_flops(self.dtype)
        self._bw = hardware.memory_bandwidth_bytes_per_s
        self._kv_bytes_tok_layer = m.kv_bytes_per_token_per_layer
        self._q_o_bytes_per_req = 2 * m.q_size * 2

    # -- parts -------------------------------------------------------------------------
    def _op_s(self, op) -> float:
        """One launch of ``op``: sim.cost.ops.affine_roofline_s (shape tables included)."""
        return affine_roofline_s(self.hw, op.kind, op.flops(), op.bytes(), self.dtype, self.backend, op)[0]

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

    def _attn_decode(self, num: int, context_sum: int, rows=None) -> float:
        """Decode attention of ``num`` requests over ``context_sum`` cached tokens, all layers.

        ``rows``: the decode table's row lookup for this ``num`` (``_dec_rows``), precomputed
        by ``decode_run``; the arithmetic is the same either way (fast-forward == stepping).
        """
        m, eff = self.model, self._dec_eff
        flops = 4.0 * m.num_heads * m.head_dim * context_sum
        bytes_ = context_sum * self._kv_bytes_tok_layer + num * self._q_o_bytes_per_req
        t_c = (flops + eff.fixed_flops) / (self._peak * eff.compute_frac)
        t_m = (bytes_ + eff.fixed_bytes) / (self._bw * eff.bandwidth_frac)
        t = t_c if t_c > t_m else t_m
        ideal_ns = max(flops / self._peak, bytes_ / self._bw) * 1e9
        t = t * eff.correction(ideal_ns) + eff.launch_s
        if self._dec_table is not None and context_sum > 0:
            i0, i1, w = rows if rows is not None else self._dec_rows(num)
            x = math.log2(context_sum / num)
            tab = self._dec_table
            y0 = tab._row(i0, x)
            y = y0 if i1 == i0 else y0 + (tab._row(i1, x) - y0) * w
            t *= math.exp(y)
        return m.num_layers * t

    def _dec_rows(self, num: int) -> tuple[int, int, float]:
        """(row, next row, weight) of the decode table at batch ``num`` (as ShapeTable.log_factor)."""
        rc = self._dec_table._row_coords
        r = math.log2(num)
        if len(rc) == 1 or r <= rc[0]:
            return 0, 0, 0.0
        if r >= rc[-1]:
            return len(rc) - 1, len(rc) - 1, 0.0
        i = bisect.bisect_right(rc, r)
        return i - 1, i, (r - rc[i - 1]) / (rc[i] - rc[i - 1])

    def decode_run(self, n: int, context_sum: int, k: int) -> tuple[list[float], StepTime]:
        """Attention seconds of k pure-decode steps (context grows by n per step) + the fixed parts.

        The same arithmetic as ``step_time`` step by step (``_attn_decode``), for fast-forwarding.
        """
        gemm, other = self._dense(n, n)
        dec = self._attn_decode
        rows = self._dec_rows(n) if self._dec_table is not None else None
        attn = [dec(n, context_sum + i * n, rows) for i in range(k)]
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
