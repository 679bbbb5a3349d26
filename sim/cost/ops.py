"""Single GPU ops as FLOPs and bytes, and their predicted time on a hardware profile.

Models: the kernels one transformer step launches: GEMMs, causal prefill attention (with a
prior context, GQA), paged decode attention, and memory-bound elementwise ops. Each op
counts its FLOPs and the fewest bytes it must move (each input read once, each output
written once) exactly as `calibrate/` counts them in its CSVs, so fitted efficiencies and
predictions use one definition. ``op_time`` applies the hardware's affine roofline
(see sim.hardware), and for attention the many-sequence terms where the profile has them
(``many_seq_s``: a fixed cost per program, prefill work in whole 128-query blocks, the serial
chain of a decode launch's longest program).

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

    def query_blocks(self) -> int:
        """128-query blocks (``PREFILL_BLOCK_M``) of the launch: batch x ceil(seq_q / 128)."""
        return self.batch * -(-self.seq_q // PREFILL_BLOCK_M)

    def block_pairs(self) -> tuple[int, int]:
        """(off-diagonal, diagonal) query-key pairs of whole 128-query blocks (``prefill_block_pairs``)."""
        off, diag = prefill_block_pairs(self.seq_q, self.seq_kv - self.seq_q)
        return self.batch * off, self.batch * diag

    def block_flops(self, diag_frac: float) -> float:
        """FLOPs a flash-style kernel computes in whole 128-query blocks, the diagonal band's at
        ``diag_frac`` (``prefill_block_flops``)."""
        return prefill_block_flops(self.heads, self.head_dim, *self.block_pairs(), diag_frac)

    def programs(self) -> int:
        """Programs of a flash-style kernel that do work: one per query head per query block
        (the unit of ``OpEfficiency.per_block_s``)."""
        return self.heads * self.query_blocks()

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
    """One query token per sequence over ``context`` cached tokens (paged KV); ``context`` is
    the mean when contexts differ, ``max_context`` the longest (0: all equal to ``context``)."""

    batch: int
    context: float
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str = "bf16"
    max_context: float = 0
    kind = "attn_decode"

    def programs(self) -> int:
        """One program per sequence per KV head (the unit of ``OpEfficiency.per_seq_s``)."""
        return self.batch * self.kv_heads

    def chain_tokens(self, num_sms: int) -> int:
        """Tokens the longest program walks serially (``decode_chain_tokens`` of the longest context)."""
        return decode_chain_tokens(self.batch, self.kv_heads, self.max_context or self.context, num_sms)

    def chain_token_bytes(self) -> int:
        """K and V bytes of one token of one KV head (what a program reads per token)."""
        return 2 * self.head_dim * DTYPE_BYTES[self.dtype]

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


def prefill_block_pairs(new: int, prior: int) -> tuple[int, int]:
    """Query-key pairs a flash-style kernel computes for one chunk of ``new`` tokens over
    ``prior`` cached ones in whole blocks of 128 query rows (a short or partial block's masked
    rows are computed too): (off-diagonal pairs, diagonal pairs).  Block i (nb = ceil(new / 128)
    blocks) spans keys up to prior + min((i + 1) 128, new); its diagonal band is the keys of its
    own rows' positions (at most 128), the rest lies below the diagonal:
    off = 128 (nb prior + 64 nb (nb - 1)), diag = 128 new."""
    nb = -(-new // PREFILL_BLOCK_M)
    return PREFILL_BLOCK_M * (nb * prior + (PREFILL_BLOCK_M // 2) * nb * (nb - 1)), PREFILL_BLOCK_M * new


def prefill_block_flops(heads: int, head_dim: int, off_pairs: int, diag_pairs: int, diag_frac: float) -> float:
    """FLOPs of whole 128-query blocks: 4 heads head_dim (off + diag_frac x diag) (QK^T and PV;
    ``diag_frac``: the share of the diagonal band's tiles that costs like full tiles)."""
    return 4.0 * heads * head_dim * (off_pairs + diag_frac * diag_pairs)


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


# the paged decode kernel's split plan (calibrate/kernels/attn_decode.py: plan_splits and BLOCK_N):
# one program per (sequence, KV head, context split) walks its split in tiles of 64 tokens; the
# splits aim at 2 waves of programs, at least 4 tiles per split, at most 64 splits, all sized for
# the longest context
DECODE_BLOCK_N = 64
DECODE_MAX_SPLITS = 64


def decode_chain_tokens(batch: int, kv_heads: int, max_context: float, num_sms: int) -> int:
    """Tokens of the longest program of a split decode launch (the serial chain): the longest
    context split as the kernel splits it, in whole 64-token tiles.  Equal to plan_splits'
    tokens_per_split (tested against it on CPU)."""
    c = math.ceil(max_context)
    if c <= 0:
        return 0
    bn = DECODE_BLOCK_N
    splits = max(1, min(-(-2 * num_sms // (batch * kv_heads)), -(-c // (4 * bn)), DECODE_MAX_SPLITS))
    return -(-(-(-c // splits)) // bn) * bn


# backends whose prefill kernel's program structure is known exactly (calibrate/kernels/
# attn_prefill.py: one program per (query block, head, sequence), no split over the context);
# their shape tables scale max(curve, chain roof), the others' the curve alone
CHAIN_ROOF_BACKENDS = frozenset({"triton"})


def affine_roofline_s(hw: HardwareProfile, kind: str, flops: float, bytes_: float,
                      dtype: str = "bf16", backend: str | None = None, op=None) -> tuple[float, float, float]:
    """(total seconds, compute-bound seconds, memory-bound seconds) for one launch; with ``op``
    of a shape family the profile has a table for, (roofline + launch) x the table's ratio; with
    an attention ``op``, the many-sequence terms of the profile (``many_seq_s``; a prefill
    profile with ``block_diag_frac`` prices ``op.block_flops`` in place of ``flops``)."""
    eff = hw.op_efficiency(kind, backend)
    if eff.block_diag_frac is not None and op is not None and kind == "attn_prefill":
        flops = op.block_flops(eff.block_diag_frac)  # the work of whole 128-query blocks (sim.hardware)
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
            return many_seq_s(hw, eff, kind, op, (tb * eff.correction(ideal_ns) + eff.launch_s) * f), t_c, t_m
    return many_seq_s(hw, eff, kind, op, t * eff.correction(ideal_ns) + eff.launch_s), t_c, t_m


def chain_token_s(eff, token_bytes: float) -> float:
    """Seconds per token of a decode program walking its context alone: the latency of a token
    (``chain_s_per_token``) plus its K/V bytes at one program's rate (``chain_bytes_per_s``)."""
    return eff.chain_s_per_token + (token_bytes / eff.chain_bytes_per_s if eff.chain_bytes_per_s else 0.0)


def many_seq_s(hw: HardwareProfile, eff, kind: str, op, t: float) -> float:
    """An attention launch's price ``t`` (curve or table) plus the many-sequence terms of its
    profile, where it has them (sim.hardware.OpEfficiency): the fixed cost of each program that
    does work (prefill: ``per_block_s`` per query head per 128-query block; decode: ``per_seq_s``
    per sequence per KV head), and for decode the serial chain of the longest program as a floor
    (``launch_s`` + its tokens x ``chain_token_s``): a launch ends no sooner than its longest
    program.  ``t`` unchanged for any other op (``kind``) or a profile without the terms."""
    if op is None:
        return t
    if eff.per_block_s and kind == "attn_prefill":
        t = t + eff.per_block_s * op.programs()
    elif kind == "attn_decode":
        if eff.per_seq_s:
            t = t + eff.per_seq_s * op.programs()
        if eff.chain_s_per_token or eff.chain_bytes_per_s:
            c = eff.launch_s + op.chain_tokens(hw.num_sms) * chain_token_s(eff, op.chain_token_bytes())
            if c > t:
                t = c
    return t


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
