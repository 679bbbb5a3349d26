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

from sim.cost.base import BatchShape, StepTime, cost_models
from sim.cost.ops import AttnPrefill, Elementwise, Gemm, affine_roofline_s
from sim.hardware import HardwareProfile
from sim.model_spec import ModelSpec

_CACHE_LIMIT = 65536


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
        self._effs = {kind: hardware.op_efficiency(kind, self.backend) for kind in ("gemm", "elementwise")}
        # decode attention: constants of the affine roofline, hoisted out of the hot path
        eff = hardware.op_efficiency("attn_decode", self.backend)
        self._dec_eff = eff
        self._peak = hardware.peak_flops(self.dtype)
        self._bw = hardware.memory_bandwidth_bytes_per_s
        self._kv_bytes_tok_layer = m.kv_bytes_per_token_per_layer
        self._q_o_bytes_per_req = 2 * m.q_size * 2

    # -- parts -------------------------------------------------------------------------
    def _op_s(self, kind: str, flops: float, bytes_: float) -> float:
        """Affine roofline of one launch (sim.cost.ops.affine_roofline_s without lookups)."""
        eff, peak, bw = self._effs[kind], self._peak, self._bw
        t_c = (flops + eff.fixed_flops) / (peak * eff.compute_frac) if flops > 0 else 0.0
        t_m = (bytes_ + eff.fixed_bytes) / (bw * eff.bandwidth_frac)
        t = t_c if t_c > t_m else t_m
        if eff.corr_log2_x:
            t *= eff.correction(max(flops / peak, bytes_ / bw) * 1e9)
        return t + eff.launch_s

    def _dense(self, tokens: int, sampled: int) -> tuple[float, float]:
        """(gemm seconds, other seconds) for everything but attention; cached by shape."""
        key = (tokens, sampled)
        hit = self._dense_cache.get(key)
        if hit is not None:
            return hit
        m, dt, op = self.model, self.dtype, self._op_s
        L = m.num_layers
        gemm = other = 0.0
        if tokens:
            for k, n in self._layer_gemms:
                g = Gemm(tokens, n, k, dt)
                gemm += L * op("gemm", g.flops(), g.bytes())
            ew = [Elementwise("rmsnorm", tokens, m.hidden_size, dt)] * 2 + [
                Elementwise("rotary", tokens, m.q_size + m.kv_size, dt),
                Elementwise("silu_mul", tokens, m.intermediate_size, dt)] + [
                Elementwise("add", tokens, m.hidden_size, dt)] * 2
            other = L * sum(op("elementwise", e.flops(), e.bytes()) for e in ew)
            for e in (Elementwise("copy", tokens, m.hidden_size, dt),      # embedding gather
                      Elementwise("rmsnorm", tokens, m.hidden_size, dt)):  # final norm
                other += op("elementwise", e.flops(), e.bytes())
        if sampled:
            g = Gemm(sampled, m.vocab_size, m.hidden_size, dt)
            gemm += op("gemm", g.flops(), g.bytes())
            # logits to fp32, softmax/top-p over the vocabulary: read+write of [sampled, vocab] fp32
            e = Elementwise("copy", sampled, 2 * m.vocab_size, dt)
            other += op("elementwise", e.flops(), e.bytes())
        out = (gemm, other)
        if len(self._dense_cache) < _CACHE_LIMIT:
            self._dense_cache[key] = out
        return out

    def _attn_prefill(self, chunks: list[tuple[int, int]]) -> float:
        m = self.model
        flops = bytes_ = 0.0
        for new, prior in chunks:
            op = AttnPrefill(1, new, prior + new, m.num_heads, m.num_kv_heads, m.head_dim, self.dtype)
            flops += op.flops()
            bytes_ += op.bytes()
        return m.num_layers * affine_roofline_s(self.hw, "attn_prefill", flops, bytes_, self.dtype, self.backend)[0]

    def _attn_decode(self, num: int, context_sum: int) -> float:
        m, eff = self.model, self._dec_eff
        flops = 4.0 * m.num_heads * m.head_dim * context_sum
        bytes_ = context_sum * self._kv_bytes_tok_layer + num * self._q_o_bytes_per_req
        t_c = (flops + eff.fixed_flops) / (self._peak * eff.compute_frac)
        t_m = (bytes_ + eff.fixed_bytes) / (self._bw * eff.bandwidth_frac)
        ideal_ns = max(flops / self._peak, bytes_ / self._bw) * 1e9
        return m.num_layers * (max(t_c, t_m) * eff.correction(ideal_ns) + eff.launch_s)

    def decode_run(self, n: int, context_sum: int, k: int) -> tuple[list[float], StepTime]:
        """Attention seconds of k pure-decode steps (context grows by n per step) + the fixed parts.

        The same arithmetic as ``step_time`` step by step, hoisted for fast-forwarding.
        """
        gemm, other = self._dense(n, n)
        m, eff = self.model, self._dec_eff
        L, launch = m.num_layers, eff.launch_s
        fc = 4.0 * m.num_heads * m.head_dim
        kvb, qo = self._kv_bytes_tok_layer, n * self._q_o_bytes_per_req
        pc, bwb = self._peak * eff.compute_frac, self._bw * eff.bandwidth_frac
        peak, bw = self._peak, self._bw
        ff, fb, corr = eff.fixed_flops, eff.fixed_bytes, eff.correction
        has_corr = bool(eff.corr_log2_x)
        attn = []
        ctx = context_sum
        for _ in range(k):
            flops = fc * ctx
            bytes_ = ctx * kvb + qo
            t_c = (flops + ff) / pc
            t_m = (bytes_ + fb) / bwb
            t = t_c if t_c > t_m else t_m
            if has_corr:
                t *= corr(max(flops / peak, bytes_ / bw) * 1e9)
            attn.append(L * (t + launch))
            ctx += n
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
