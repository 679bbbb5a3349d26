"""Single GPU ops as FLOPs and bytes, and their predicted time on a hardware profile.

Models: the kernels one transformer step launches: GEMMs, causal prefill attention (with a
prior context, GQA), paged decode attention, and memory-bound elementwise ops. Each op
counts its FLOPs and the fewest bytes it must move (each input read once, each output
written once) exactly as `calibrate/` counts them in its CSVs, so fitted efficiencies and
predictions use one definition. ``op_time`` applies the hardware's affine roofline
(see sim.hardware).

Ignores: L2 reuse across ops, kernel fusion beyond what an op names, tensor-parallel
sharding (a sharded op is a smaller op).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

from sim.hardware import TABLE_BASE, HardwareProfile
from sim.model_spec import DTYPE_BYTES


@dataclass(frozen=True)
class Gemm:
    """C[m, n] = A[m, k] @ B[k, n] (B = weights)."""

    m: int
    n: int
    k: int
    dtype: str = "bf16"
    kind = "gemm"

    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k

    def bytes(self) -> float:
        b = DTYPE_BYTES[self.dtype]
        out_b = 2 if b < 2 else b  # fp8 GEMMs write bf16
        return (self.m * self.k + self.k * self.n) * b + self.m * self.n * out_b

    def table_key(self) -> tuple:
        return (self.n, self.k, self.dtype)

    def table_coords(self, ideal_ns: float) -> tuple[float, ...]:
        return (math.log2(self.m),)


@dataclass(frozen=True)
class AttnPrefill:
    """Causal attention of ``seq_q`` new tokens over ``seq_kv`` keys (the last seq_q are new)."""

    batch: int
    seq_q: int
    seq_kv: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str = "bf16"
    kind = "attn_prefill"

    def attended_pairs(self) -> float:
        prior = self.seq_kv - self.seq_q
        return self.batch * (self.seq_q * prior + self.seq_q * (self.seq_q + 1) / 2.0)

    def flops(self) -> float:
        return 4.0 * self.heads * self.head_dim * self.attended_pairs()

    def bytes(self) -> float:
        b = DTYPE_BYTES[self.dtype]
        q_o = 2 * self.batch * self.seq_q * self.heads * self.head_dim * b
        kv = 2 * self.batch * self.seq_kv * self.kv_heads * self.head_dim * b
        return q_o + kv

    def table_key(self) -> tuple:
        return (self.heads, self.kv_heads, self.head_dim, int(self.seq_kv > self.seq_q), self.dtype)

    def chain_flops(self) -> float:
        """FLOPs of the longest serial chain: one query block over the whole context."""
        return prefill_chain_flops(self.head_dim, self.seq_kv)

    def table_row(self) -> int:
        """The row of its family's table: the number of sequences for whole prompts; for chunks
        over a prior context, the number of 128-query blocks (``PREFILL_BLOCK_M``) in the launch,
        since a chunk's time at one total work depends on how many query blocks share it."""
        if self.seq_kv > self.seq_q:
            return self.batch * -(-self.seq_q // PREFILL_BLOCK_M)
        return self.batch

    def table_coords(self, ideal_ns: float) -> tuple[float, ...]:
        return (math.log2(self.table_row()), math.log2(ideal_ns))


@dataclass(frozen=True)
class AttnDecode:
    """One query token per sequence over ``context`` cached tokens (paged KV)."""

    batch: int
    context: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str = "bf16"
    kind = "attn_decode"

    def flops(self) -> float:
        return 4.0 * self.batch * self.heads * self.head_dim * self.context

    def bytes(self) -> float:
        b = DTYPE_BYTES[self.dtype]
        kv = 2 * self.batch * self.context * self.kv_heads * self.head_dim * b
        q_o = 2 * self.batch * self.heads * self.head_dim * b
        return kv + q_o

    def table_key(self) -> tuple:
        return (self.heads, self.kv_heads, self.head_dim, self.dtype)

    def table_coords(self, ideal_ns: float) -> tuple[float, ...]:
        return (math.log2(self.batch), math.log2(self.context))


# reads, writes (in units of tokens*hidden elements) and flops per element of each elementwise op
_ELEMENTWISE = {
    "rmsnorm": (1, 1, 4), "add": (2, 1, 1), "copy": (1, 1, 0),
    "silu_mul": (2, 1, 5),   # hidden = intermediate size; reads [T, 2I], writes [T, I]
    "rotary": (1, 1, 3),     # hidden = (heads + kv_heads) * head_dim, in place on q and k
}


@dataclass(frozen=True)
class Elementwise:
    """A memory-bound op over a [tokens, hidden] activation."""

    op: str
    tokens: int
    hidden: int
    dtype: str = "bf16"
    kind = "elementwise"

    def flops(self) -> float:
        return float(_ELEMENTWISE[self.op][2] * self.tokens * self.hidden)

    def bytes(self) -> float:
        r, w, _ = _ELEMENTWISE[self.op]
        b = DTYPE_BYTES[self.dtype]
        extra = self.hidden * b if self.op == "rmsnorm" else 0
        return (r + w) * self.tokens * self.hidden * b + extra

    def table_key(self) -> tuple:
        return (self.op, self.hidden, self.dtype)

    def table_coords(self, ideal_ns: float) -> tuple[float, ...]:
        return (math.log2(self.tokens),)


Op = Union[Gemm, AttnPrefill, AttnDecode, Elementwise]

# query rows per program of a flash-style prefill kernel (calibrate/kernels/attn_prefill.py and
# FlashAttention 2/3 at head_dim <= 128 all tile queries by 128): one program walks the whole
# context of its query block serially, so no launch finishes before its longest program does
PREFILL_BLOCK_M = 128


def prefill_chain_flops(head_dim: int, seq_kv: int) -> float:
    """FLOPs of one prefill program over a context of ``seq_kv`` keys (full tiles)."""
    return 4.0 * PREFILL_BLOCK_M * head_dim * seq_kv


def chain_ns(chain_flops: float, peak: float, num_sms: int) -> float:
    """Ideal time (ns) of the serial chain of ``chain_flops`` on one SM (1/num_sms of the peak)."""
    return chain_flops * num_sms / peak * 1e9


def gemm_wave_flops(tiles: tuple[tuple[float, int, int], ...], m: int, n: int, k: int, num_sms: int) -> float:
    """FLOPs of the whole waves of tiles a fixed-config GEMM kernel launches for (m, n, k):
    ``tiles`` ((last M, BLOCK_M, BLOCK_N), ...) by M class (sim.hardware.OpEfficiency.gemm_tiles).
    Every CTA computes a full BLOCK_M x BLOCK_N tile over the whole K loop and a wave keeps all
    ``num_sms`` SMs busy, so the launch takes as long as ceil(CTAs / SMs) full waves: its time is
    flat in M within a wave count and steps at each new wave (lm_head: ~10-20 waves at M 256-512)."""
    for last_m, bm, bn in tiles:
        if m <= last_m:
            ctas = -(-m // bm) * -(-n // bn)
            return 2.0 * (-(-ctas // num_sms) * num_sms) * bm * bn * k
    raise ValueError(f"no tile class for m={m}")


# backends whose prefill kernel's program structure is known exactly (calibrate/kernels/
# attn_prefill.py: one program per (query block, head, sequence), no split over the context);
# their shape tables scale max(curve, chain roof), the others' the curve alone
CHAIN_ROOF_BACKENDS = frozenset({"triton"})


def affine_roofline_s(hw: HardwareProfile, kind: str, flops: float, bytes_: float,
                      dtype: str = "bf16", backend: str | None = None, op=None) -> tuple[float, float, float]:
    """(total seconds, compute-bound seconds, memory-bound seconds) for one launch; with ``op``
    of a shape family the profile has a table for, (roofline + launch) x the table's ratio."""
    eff = hw.op_efficiency(kind, backend)
    peak = hw.peak_flops(dtype)
    bw = hw.memory_bandwidth_bytes_per_s
    t_c = (flops + eff.fixed_flops) / (peak * eff.compute_frac) if flops > 0 else 0.0
    t_m = (bytes_ + eff.fixed_bytes) / (bw * eff.bandwidth_frac)
    ideal_ns = max(flops / peak, bytes_ / bw) * 1e9
    t = max(t_c, t_m)
    if op is not None and eff.tables:
        cf = getattr(op, "chain_flops", None)
        x_ns, tb = ideal_ns, t
        if cf is not None:  # prefill: its table runs along max(ideal time, serial chain's ideal time)
            c_ns = chain_ns(cf(), peak, hw.num_sms)
            if c_ns > x_ns:
                x_ns = c_ns
            if (backend or hw.default_backend) in CHAIN_ROOF_BACKENDS:
                tc = c_ns * 1e-9 / eff.compute_frac
                if tc > tb:
                    tb = tc
        f = eff.table_factor(op.table_key(), op.table_coords(x_ns))
        if f is not None:  # a measured shape family: its table scales the roofline or the curve
            if TABLE_BASE[kind] == "roofline":
                tiles = eff.gemm_tiles.get(dtype) if eff.gemm_tiles else None
                if tiles:  # a fixed-tile GEMM kernel: the compute roof in whole waves of tiles
                    tq = (gemm_wave_flops(tiles, op.m, op.n, op.k, hw.num_sms) + eff.fixed_flops) / (
                        peak * eff.compute_frac)
                    tb = tq if tq > t_m else t_m
                    return (tb + eff.launch_s) * f, t_c, t_m
                return (t + eff.launch_s) * f, t_c, t_m
            return (tb * eff.correction(ideal_ns) + eff.launch_s) * f, t_c, t_m
    return t * eff.correction(ideal_ns) + eff.launch_s, t_c, t_m


def op_time_breakdown(hw: HardwareProfile, op: Op, backend: str | None = None) -> dict:
    """Prediction with its parts: time_s, flops, bytes, bound, achieved rates."""
    flops, bytes_ = op.flops(), op.bytes()
    dtype = op.dtype
    total, t_c, t_m = affine_roofline_s(hw, op.kind, flops, bytes_, dtype, backend, op)
    eff = hw.op_efficiency(op.kind, backend)
    return {"time_s": total, "op": op.kind, "backend": backend or hw.default_backend,
            "flops": flops, "bytes": bytes_, "bound": "compute" if t_c >= t_m else "memory",
            "compute_s": t_c, "memory_s": t_m, "launch_s": eff.launch_s,
            "achieved_flops_per_s": flops / total, "achieved_bytes_per_s": bytes_ / total,
            "peak_flops_per_s": hw.peak_flops(dtype), "peak_bytes_per_s": hw.memory_bandwidth_bytes_per_s,
            "efficiency_source": hw.efficiency_source}


def op_time(hw: HardwareProfile, op: Op, backend: str | None = None) -> float:
    """Predicted seconds for one launch of ``op`` on ``hw`` with ``backend`` kernels."""
    return affine_roofline_s(hw, op.kind, op.flops(), op.bytes(), op.dtype, backend, op)[0]
