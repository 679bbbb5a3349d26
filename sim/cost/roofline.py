"""Roofline step-time model of a dense transformer on one GPU.

Models: every op of one engine step, per layer: QKV/O/gate-up/down GEMMs over all tokens
of the step, attention for the prefill chunks (causal over their real context) and for the
decode requests (over their summed context), RMSNorms, rotary, SiLU-and-mul, residual adds;
once per step: embedding gather, final norm, LM head over the sampled tokens and sampling
(a pipeline stage runs only its own layers: ``embed`` / ``head`` say whether it also runs the
embedding gather / the final norm, LM head and sampling, as the first / last stage does).
Each op is priced by the hardware's affine roofline (`sim.cost.ops`) with the efficiency
curves of the chosen kernel backend; a fixed host overhead per step is added (scheduling,
input preparation, sampling bookkeeping on the CPU), as is a per-kernel launch cost.

Ignores: tensor/pipeline parallel communication (``sim.cost.parallel`` adds it around a sharded
model), CUDA graphs (launches are priced as eager), overlap of host work with GPU work, LoRA,
quantization scale math.
"""
from __future__ import annotations

import math

from sim.cost.base import BatchShape, StepTime, cost_models
from sim.cost.decode_price import DecodePriceMixin
from sim.cost.ops import (_ELEMENTWISE, CHAIN_ROOF_BACKENDS, PREFILL_BLOCK_M, Elementwise, Gemm, chain_ns,
                          gemm_wave_flops, prefill_block_flops, prefill_chain_flops)
from sim.hardware import TABLE_BASE, HardwareProfile
from sim.model_spec import DTYPE_BYTES, ModelSpec

_CACHE_LIMIT = 65536


class _Family:
    """A shape family key standing in for an op (the prefill chunks of a step are one launch);
    ``row``: its table row (``AttnPrefill.table_row``: chunks, or 128-query blocks if chunked);
    ``blocks``: its query blocks, ``pairs``: (off-diagonal, diagonal) pairs of whole blocks
    (``AttnPrefill.block_pairs``), both summed over the chunks."""

    __slots__ = ("key", "chain", "row", "blocks", "pairs")
    kind = "attn_prefill"

    def __init__(self, key: tuple, chain: float, row: int, blocks: int = 0, pairs: tuple[int, int] = (0, 0)):
        self.key = key
        self.chain = chain
        self.row = row
        self.blocks = blocks
        self.pairs = pairs

    def programs(self) -> int:
        return self.key[0] * self.blocks  # heads x query blocks

    def block_flops(self, diag_frac: float) -> float:
        return prefill_block_flops(self.key[0], self.key[2], self.pairs[0], self.pairs[1], diag_frac)

    def table_key(self) -> tuple:
        return self.key

    def chain_flops(self) -> float:
        return self.chain

    def table_coords(self, ideal_ns: float) -> tuple[float, ...]:
        return (math.log2(self.row), math.log2(ideal_ns))


@cost_models.register("roofline")
class RooflineCost(DecodePriceMixin):
    """Per-op roofline of one step of ``model`` on ``hardware``."""

    def __init__(self, model: ModelSpec, hardware: HardwareProfile, host_overhead_s: float = 0.0,
                 backend: str | None = None, dtype: str | None = None, embed: bool = True,
                 head: bool = True, sample_vocab: int | None = None):
        """``embed``: the step runs the embedding gather; ``head``: it runs the final norm, the LM
        head and sampling (a pipeline stage other than the first / last does not);
        ``sample_vocab``: the width sampling reads (default the model's vocabulary; a TP rank's
        LM head is ``vocab / tp`` wide but samples the gathered full-vocabulary logits)."""
        self.model = model
        self.embed = bool(embed)
        self.head = bool(head)
        self.sample_vocab = model.vocab_size if sample_vocab is None else int(sample_vocab)
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
        self._dec_steps: dict = {}
        self._fast = {}
        for kind in ("gemm", "elementwise"):
            assert TABLE_BASE[kind] == "roofline"  # _op_s assumes it
            e = hardware.op_efficiency(kind, self.backend)
            self._fast[kind] = (e, getattr(e, "_tables", {}))  # num -> decode attention seconds as a function of the context sum
        self._peak = hardware.peak_flops(self.dtype)
        self._bw = hardware.memory_bandwidth_bytes_per_s
        self._kv_bytes_tok_layer = m.kv_bytes_per_token_per_layer
        self._tok_fns = self._token_fns()
        b = DTYPE_BYTES[self.dtype]
        self._dtype_bytes = b
        # per chunk: FLOPs per attended pair, bytes per new token (q, o), bytes per key (k, v)
        self._pf_consts = (4.0 * m.num_heads * m.head_dim, 2 * 1 * m.num_heads * m.head_dim * b,
                           2 * 1 * m.num_kv_heads * m.head_dim * b)
        self._pf_fns = (self._prefill_fn(0), self._prefill_fn(1))
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
            tiles = eff.gemm_tiles.get(op.dtype) if op.kind == "gemm" and eff.gemm_tiles else None
            if tiles:  # fixed-tile GEMM kernel: compute roof in whole waves (ops.gemm_wave_flops)
                tq = (gemm_wave_flops(tiles, op.m, op.n, op.k, self.hw.num_sms) + eff.fixed_flops) / (
                    peak * eff.compute_frac)
                t = tq if tq > t_m else t_m
            return (t + eff.launch_s) * math.exp(tab.log_factor(op.table_coords(ideal_ns)))
        return t * eff.correction(ideal_ns) + eff.launch_s

    def _dense(self, tokens: int, sampled: int) -> tuple[float, float]:
        """(gemm seconds, other seconds) for everything but attention; cached by shape."""
        key = (tokens, sampled)
        hit = self._dense_cache.get(key)
        if hit is not None:
            return hit
        tg, to = self._per_token_part(tokens) if tokens else (0.0, 0.0)
        sg, so = self._sampled_part(sampled) if sampled and self.head else (0.0, 0.0)
        out = (tg + sg, to + so)
        if len(self._dense_cache) < _CACHE_LIMIT:
            self._dense_cache[key] = out
        return out

    def _family_fn(self, op):
        """Seconds of one launch of ``op``'s shape family (a GEMM's (n, k), an elementwise op at
        one width) as a function of its token count: ``_op_s`` with the family's constants and
        table lookup hoisted; the same arithmetic, so the same seconds (tested)."""
        eff, tabs = self._fast[op.kind]
        peak, bw, launch = self._peak, self._bw, eff.launch_s
        ff, fb, pc, pbw = eff.fixed_flops, eff.fixed_bytes, self._peak * eff.compute_frac, self._bw * eff.bandwidth_frac
        tab = tabs.get(op.table_key()) if tabs else None
        row = None
        if tab is not None and len(tab.rows) == 1:
            row = tab._row
        corr, log2, exp = eff.correction, math.log2, math.exp
        b = DTYPE_BYTES[op.dtype]
        tiles = None
        if op.kind == "gemm":
            n, k, out_b = op.n, op.k, (2 if b < 2 else b)
            if tab is not None and eff.gemm_tiles:
                tiles = eff.gemm_tiles.get(op.dtype)
            num_sms = self.hw.num_sms

            def work(m):
                return 2.0 * m * n * k, (m * k + k * n) * b + m * n * out_b
        else:
            r, w, fl = _ELEMENTWISE[op.op]
            hidden, extra = op.hidden, (op.hidden * b if op.op == "rmsnorm" else 0)

            def work(m):
                return float(fl * m * hidden), (r + w) * m * hidden * b + extra

        def f(m: int) -> float:
            flops, bytes_ = work(m)
            t_c = (flops + ff) / pc if flops > 0 else 0.0
            t_m = (bytes_ + fb) / pbw
            t = t_c if t_c > t_m else t_m
            if tab is not None:
                if tiles:  # fixed-tile GEMM kernel: compute roof in whole waves (ops.gemm_wave_flops)
                    tq = (gemm_wave_flops(tiles, m, n, k, num_sms) + ff) / pc
                    t = tq if tq > t_m else t_m
                lf = row(0, log2(m)) if row is not None else tab.log_factor((log2(m),))
                return (t + launch) * exp(lf)
            a, c = flops / peak, bytes_ / bw
            return t * corr((a if a > c else c) * 1e9) + launch
        return f

    def _token_fns(self):
        """Per-layer GEMM family functions, and the elementwise ones: RMSNorm (twice per layer,
        and the final norm), rotary, SiLU-and-mul, residual add (twice per layer), embedding
        gather (once per step)."""
        m, dt = self.model, self.dtype
        gemms = [self._family_fn(Gemm(1, n, k, dt)) for k, n in self._layer_gemms]
        ew = (self._family_fn(Elementwise("rmsnorm", 1, m.hidden_size, dt)),
              self._family_fn(Elementwise("rotary", 1, m.q_size + m.kv_size, dt)),
              self._family_fn(Elementwise("silu_mul", 1, m.intermediate_size, dt)),
              self._family_fn(Elementwise("add", 1, m.hidden_size, dt)),
              self._family_fn(Elementwise("copy", 1, m.hidden_size, dt)))
        return gemms, ew

    def _per_token_part(self, tokens: int) -> tuple[float, float]:
        """Layer GEMMs and elementwise ops over ``tokens`` tokens, embedding and final norm;
        each family priced once, the per-layer ops summed in layer order (norm, norm, rotary,
        silu_mul, add, add), then the embedding gather and the final norm."""
        hit = self._token_cache.get(tokens)
        if hit is not None:
            return hit
        gemms, (norm_f, rot_f, silu_f, add_f, copy_f) = self._tok_fns
        L = self.model.num_layers
        gemm = sum(L * f(tokens) for f in gemms)
        norm, add = norm_f(tokens), add_f(tokens)
        other = L * (norm + norm + rot_f(tokens) + silu_f(tokens) + add + add)
        if self.embed:
            other += copy_f(tokens)
        if self.head:
            other += norm
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
               op(Elementwise("copy", sampled, 2 * self.sample_vocab, dt)))  # read+write [sampled, vocab] fp32
        if len(self._sampled_cache) < _CACHE_LIMIT:
            self._sampled_cache[sampled] = out
        return out

    def _attn_prefill(self, chunks: list[tuple[int, int]]) -> float:
        """All prefill chunks of a step as one varlen launch (as flash-attention varlen runs them):
        the summed FLOPs and bytes of each chunk's AttnPrefill(1, new, prior + new), priced by
        ``affine_roofline_s`` with the chunk family's table at (row = number of chunks, or of
        128-query blocks when some chunk has a prior context (``AttnPrefill.table_row``), size of
        the summed work / longest chunk's chain), plus the many-sequence terms (whole-block work,
        a cost per query head per query block: ``ops.many_seq_s``), its constants hoisted (same
        seconds)."""
        c4, qo, kvb = self._pf_consts
        flops = bytes_ = 0.0
        longest = 0
        chunked = 0
        qblocks = 0
        off = diag = 0
        half = PREFILL_BLOCK_M // 2
        for new, prior in chunks:
            seq_kv = prior + new
            if seq_kv > longest:
                longest = seq_kv
            if prior:
                chunked = 1
            nb = -(-new // PREFILL_BLOCK_M)
            qblocks += nb
            off += PREFILL_BLOCK_M * (nb * prior + half * nb * (nb - 1))  # ops.prefill_block_pairs
            diag += PREFILL_BLOCK_M * new
            flops += c4 * (1 * (new * prior + new * (new + 1) / 2.0))
            bytes_ += qo * new + kvb * seq_kv
        return self._pf_fns[chunked](flops, bytes_, longest, qblocks if chunked else len(chunks), qblocks, off, diag)

    def _prefill_fn(self, chunked: int):
        """``affine_roofline_s(hw, "attn_prefill", flops, bytes_, dtype, backend, family)`` for the
        model's head configuration (``chunked``: some chunk has a prior context), all layers,
        with the profile lookups hoisted."""
        m, hw = self.model, self.hw
        eff = hw.op_efficiency("attn_prefill", self.backend)
        peak, bw, num_sms, L = self._peak, self._bw, hw.num_sms, m.num_layers
        ff, fb, launch, cfrac = eff.fixed_flops, eff.fixed_bytes, eff.launch_s, eff.compute_frac
        pc, pbw = peak * eff.compute_frac, bw * eff.bandwidth_frac
        tab = None
        if eff.tables:
            tab = eff._tables.get((m.num_heads, m.num_kv_heads, m.head_dim, chunked, self.dtype))
        chain_roof = self.backend in CHAIN_ROOF_BACKENDS
        corr, log2, exp, hd = eff.correction, math.log2, math.exp, m.head_dim
        heads, pb, bdf = m.num_heads, eff.per_block_s, eff.block_diag_frac

        def g(flops: float, bytes_: float, longest: int, batch: int, qblocks: int = 0, off: int = 0,
              diag: int = 0) -> float:
            if bdf is not None:  # whole 128-query blocks (ops.prefill_block_flops)
                flops = prefill_block_flops(heads, hd, off, diag, bdf)
            t_c = (flops + ff) / pc if flops > 0 else 0.0
            t_m = (bytes_ + fb) / pbw
            a, c = flops / peak, bytes_ / bw
            ideal_ns = (a if a > c else c) * 1e9
            t = t_c if t_c > t_m else t_m
            if tab is None:
                t = t * corr(ideal_ns) + launch
            else:
                x_ns, tb = ideal_ns, t
                c_ns = chain_ns(prefill_chain_flops(hd, longest), peak, num_sms)
                if c_ns > x_ns:
                    x_ns = c_ns
                if chain_roof:
                    tc = c_ns * 1e-9 / cfrac
                    if tc > tb:
                        tb = tc
                t = (tb * corr(ideal_ns) + launch) * exp(tab.log_factor((log2(batch), log2(x_ns))))
            if pb:  # ops.many_seq_s: a cost per query head per query block
                t = t + pb * (heads * qblocks)
            return L * t
        return g

    def _attn_decode(self, num: int, context_sum: int, context_max: int = 0) -> float:
        """Decode attention of ``num`` requests over ``context_sum`` cached tokens, the longest
        ``context_max`` (0: unknown, the mean), all layers."""
        f = self._dec_fns.get(num)
        if f is None:
            f = self._dec_fns[num] = self._decode_fn(num)
        return f(context_sum, context_max) if context_max else f(context_sum)

    def decode_step_fn(self, n: int):
        """(attention seconds as a function of the context sum, the fixed parts as a StepTime)
        of a pure-decode step of ``n`` requests: what ``step_time`` prices, for fast-forwarding
        (the engine prices a run's steps one by one and stops at the next arrival)."""
        hit = self._dec_steps.get(n)
        if hit is not None:
            return hit
        gemm, other = self._dense(n, n)
        f = self._dec_fns.get(n)
        if f is None:
            f = self._dec_fns[n] = self._decode_fn(n)
        out = f, StepTime(total_s=0.0, gemm_s=gemm, attn_s=0.0, other_s=other, host_s=self.host_overhead_s)
        self._dec_steps[n] = out  # one per batch size (<= max_num_seqs)
        return out

    def decode_run(self, n: int, context_sum: int, k: int) -> tuple[list[float], StepTime]:
        """Attention seconds of k pure-decode steps (context grows by n per step) + the fixed parts."""
        f, fixed = self.decode_step_fn(n)
        return [f(context_sum + i * n) for i in range(k)], fixed

    # -- interface ---------------------------------------------------------------------
    def step_time(self, shape: BatchShape) -> StepTime:
        chunks = shape.prefill_chunks
        tokens = shape.num_decode + (sum(c for c, _ in chunks) if chunks else 0)
        gemm, other = self._dense(tokens, shape.num_sampled)
        attn = self._attn_prefill(chunks) if chunks else 0.0
        if shape.num_decode:
            attn += self._attn_decode(shape.num_decode, shape.decode_context_sum, shape.decode_context_max)
        host = self.host_overhead_s
        return StepTime(total_s=gemm + attn + other + host, gemm_s=gemm, attn_s=attn, other_s=other, host_s=host)
