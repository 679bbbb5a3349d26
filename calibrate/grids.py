"""Shape grids and CSV column lists for the calibration run.

Importable WITHOUT torch or triton (CPU CI tests these lists).  The models listed here are the
ones the simulator ships; every grid is derived from their real dimensions.
"""
from __future__ import annotations

from dataclasses import dataclass

# ---------------------------------------------------------------- CSV columns (the contract)
COLUMNS: dict[str, list[str]] = {
    "gemm": ["op", "backend", "dtype", "m", "n", "k", "time_s", "flops", "bytes"],
    "attn_prefill": ["op", "backend", "dtype", "batch", "seq_q", "seq_kv", "heads", "kv_heads",
                     "head_dim", "time_s", "flops", "bytes"],
    "attn_decode": ["op", "backend", "dtype", "batch", "context", "heads", "kv_heads", "head_dim",
                    "block_size", "time_s", "flops", "bytes"],
    "elementwise": ["op", "backend", "dtype", "tokens", "hidden", "time_s", "flops", "bytes"],
    "nccl": ["op", "backend", "dtype", "bytes_per_rank", "world_size", "time_s",
             "algbw_bytes_per_s", "busbw_bytes_per_s"],
    # launches of many sequences (equal or mixed lengths): ``lengths`` / ``contexts`` in the
    # compact syntax of format_lengths (e.g. "512x48;128+896x16"); flops/bytes summed per sequence
    "attn_prefill_multi": ["op", "backend", "dtype", "batch", "lengths", "heads", "kv_heads", "head_dim",
                           "time_s", "flops", "bytes", "max_seq_q", "sum_seq_q"],
    "attn_decode_multi": ["op", "backend", "dtype", "batch", "contexts", "heads", "kv_heads", "head_dim",
                          "block_size", "time_s", "flops", "bytes", "max_context", "sum_context"],
}
MULTI_OPS = ["attn_prefill_multi", "attn_decode_multi"]
OPS = ["gemm", "attn_prefill", "attn_decode", "elementwise"] + MULTI_OPS
ELEMENTWISE_OPS = ["rmsnorm", "silu_mul", "rotary", "add", "copy", "launch"]
BLOCK_SIZE = 16  # paged KV block size (tokens per block)
DECODE_KV_LIMIT_BYTES = 40 * 10**9  # skip decode combos whose K+V cache exceeds this


@dataclass(frozen=True)
class ModelDims:
    name: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int
    vocab: int


MODELS: list[ModelDims] = [
    ModelDims("llama-3.1-8b", 4096, 32, 8, 128, 14336, 128256),
    ModelDims("llama-3.1-70b", 8192, 64, 8, 128, 28672, 128256),
    ModelDims("qwen2.5-0.5b", 896, 14, 2, 64, 4864, 151936),
    ModelDims("qwen2.5-7b", 3584, 28, 4, 128, 18944, 152064),
    ModelDims("qwen2.5-72b", 8192, 64, 8, 128, 29568, 152064),
    ModelDims("mistral-7b", 4096, 32, 8, 128, 14336, 32768),
]

# log-spaced M for the fit + a few odd "held-out" values the fit never sees
GEMM_M_MAIN = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
GEMM_M_HELDOUT = [3, 24, 96, 384, 3000]
# half-octave M values (1.5 x 2^k) between the main ones, except next to a held-out value (24,
# 96, 384, 3000 ~ 3072): more points per Triton tile/wave segment and per cuBLAS kernel choice
GEMM_M_EXTRA = [48, 192, 768, 1536, 6144, 12288]
GEMM_M_QUICK = [1, 16, 128, 1024, 4096]
GEMM_MAX_M = 16384
LM_HEAD_MAX_M = 512
DEFAULT_NUM_SMS = 132  # H100 SXM and H200; the runner passes the device's own count
# M values where calibrate/kernels/gemm.py:_config changes tile class (the last M of each
# class); the fit never interpolates a Triton GEMM's measured ratio across one of them
TRITON_GEMM_M_BREAKS = {"bf16": (16, 64, 256), "fp8": (64, 256)}
# (last M of the class, BLOCK_M, BLOCK_N) per class, as in calibrate/kernels/gemm.py:_config
TRITON_GEMM_TILES = {"bf16": ((16, 16, 64), (64, 64, 64), (256, 128, 128), (1 << 62, 128, 256)),
                     "fp8": ((64, 64, 64), (256, 128, 128), (1 << 62, 128, 256))}
def triton_gemm_tiles_yaml() -> dict[str, list[dict]]:
    """TRITON_GEMM_TILES as a profile's ``gemm_tiles`` (sim.hardware: the last class unbounded)."""
    return {dt: [({"up_to_m": last} if last < (1 << 62) else {}) | {"block_m": bm, "block_n": bn}
                 for last, bm, bn in classes] for dt, classes in TRITON_GEMM_TILES.items()}


WAVE_BREAKS_MAX_WAVES = 4  # past a few waves, quantization costs little


def triton_gemm_breaks(n: int, dtype: str, num_sms: int) -> list[int]:
    """M values after which the Triton GEMM changes tile class or needs one more wave of CTAs
    (up to WAVE_BREAKS_MAX_WAVES waves), for an (M, n) problem on ``num_sms`` SMs."""
    out, lo = [], 0
    for last_m, bm, bn in TRITON_GEMM_TILES[dtype]:
        tiles_n = -(-n // bn)
        for w in range(1, WAVE_BREAKS_MAX_WAVES + 1):
            m = (w * num_sms // tiles_n) * bm  # the largest M that fits in w waves
            if lo < m < last_m:
                out.append(m)
        if last_m < (1 << 62):
            out.append(last_m)
        lo = last_m
    return sorted(set(out))


def gemm_kn_pairs(models=None) -> list[tuple[str, int, int]]:
    """(layer, K, N) for every model's real linear layers, deduplicated on (K, N)."""
    seen: dict[tuple[int, int], str] = {}
    for md in models or MODELS:
        layers = [
            ("qkv", md.hidden, (md.heads + 2 * md.kv_heads) * md.head_dim),
            ("o", md.heads * md.head_dim, md.hidden),
            ("gate_up", md.hidden, 2 * md.inter),
            ("down", md.inter, md.hidden),
            ("lm_head", md.hidden, md.vocab),
        ]
        for layer, k, n in layers:
            seen.setdefault((k, n), layer)
    return [(layer, k, n) for (k, n), layer in seen.items()]


def triton_gemm_waves(m: int, n: int, dtype: str, num_sms: int) -> int:
    """Waves of CTAs the Triton GEMM launches for an (m, n) problem (its tile config by m)."""
    for last_m, bm, bn in TRITON_GEMM_TILES[dtype]:
        if m <= last_m:
            return -(-(-(-m // bm) * -(-n // bn)) // num_sms)
    raise AssertionError("unreachable")


def gemm_break_ms(n: int, dtype: str, num_sms: int, max_m: int) -> set[int]:
    """Both ends of every Triton tile-class/wave segment up to max_m: each break b and b + 1, so
    that the fit interpolates inside a segment instead of extrapolating to its ends."""
    out = set()
    for b in triton_gemm_breaks(n, dtype, num_sms):
        out |= {m for m in (b, b + 1) if m <= max_m}
    return out


def _gemm_shapes(ms: list[int], dtype: str, quick: bool, num_sms: int) -> list[tuple[int, int, int]]:
    out = set()
    for layer, k, n in gemm_kn_pairs(MODELS[:2] if quick else None):
        max_m = LM_HEAD_MAX_M if layer == "lm_head" else GEMM_MAX_M
        mm = set(ms) if quick else set(ms) | gemm_break_ms(n, dtype, num_sms, max_m)
        out |= {(m, n, k) for m in mm if m <= max_m}
    return sorted(out)


def gemm_grid(quick: bool = False, num_sms: int = DEFAULT_NUM_SMS) -> list[tuple[int, int, int]]:
    """bf16 (M, N, K) shapes, sorted, unique: main + held-out + half-octave M on every model's
    (K, N), plus both ends of each Triton tile/wave segment (which depend on ``num_sms``)."""
    ms = GEMM_M_QUICK if quick else sorted(GEMM_M_MAIN + GEMM_M_HELDOUT + GEMM_M_EXTRA)
    return _gemm_shapes(ms, "bf16", quick, num_sms)


def gemm_fp8_grid(quick: bool = False, num_sms: int = DEFAULT_NUM_SMS) -> list[tuple[int, int, int]]:
    """fp8 grid: same (K, N) pairs, main + half-octave M and the fp8 kernel's segment ends (no
    grid-marked held-out M)."""
    if quick:
        return gemm_grid(True)
    return _gemm_shapes(sorted(GEMM_M_MAIN + GEMM_M_EXTRA), "fp8", quick, num_sms)


# attention head configs (heads, kv_heads, head_dim)
HEAD_CONFIGS = [(32, 8, 128), (64, 8, 128), (28, 4, 128), (14, 2, 64)]

# prefill: (batch, seq_q, seq_kv); seq_kv = total context incl. the new tokens.  Lengths on a
# half-octave grid (1.5 x 2^k between the powers of two) for one prompt and for batches of 2-16
# prompts (up to 32k tokens in the launch), and chunked prefill (seq_q < seq_kv) over chunk x
# half-octave context pairs, for one sequence and for a few batches of chunks; the fit keeps a
# table row per batch, so each row needs its own dense grid.  (2, 3000, 3000) and
# (1, 1000, 6000) are held out.
PREFILL_HELDOUT = [(2, 3000, 3000), (1, 1000, 6000)]
PREFILL_HALF_OCTAVE = [128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192,
                       12288, 16384, 24576, 32768]
PREFILL_MAX_BATCH_TOKENS = 32768
PREFILL_SHAPES = (
    [(b, s, s) for b in (1, 2, 4, 8, 16) for s in PREFILL_HALF_OCTAVE
     if b * s <= PREFILL_MAX_BATCH_TOKENS]
    + [(1, q, kv) for q in (256, 512, 1024, 2048, 4096) for kv in PREFILL_HALF_OCTAVE if kv >= 2 * q]
    + [(b, q, kv) for b, q in ((2, 512), (4, 256), (4, 512), (8, 256)) for kv in (1024, 2048, 4096, 8192)
       if kv >= 2 * q]
    + PREFILL_HELDOUT
)
PREFILL_SHAPES_QUICK = [(1, 512, 512), (1, 4096, 4096), (4, 256, 256), (1, 512, 2048)]

# decode: batches on a half-octave grid (1.5 x 2^k between the powers of two) x contexts on
# octaves, plus power-of-two batches x half-octave contexts, plus the held-out shapes
DECODE_BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
DECODE_BATCHES_HALF = [3, 6, 12, 24, 48, 96, 192, 384]
DECODE_CONTEXTS = [128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
DECODE_CONTEXTS_HALF = [192, 384, 768, 1536, 3072, 6144, 12288, 24576]
DECODE_HELDOUT = [(3, 3000), (24, 700), (96, 1500), (200, 5000)]


def decode_kv_bytes(batch: int, context: int, kv_heads: int, head_dim: int, elt: int = 2) -> int:
    return 2 * batch * context * kv_heads * head_dim * elt


def decode_grid(quick: bool = False) -> list[tuple[int, int, int, int, int]]:
    """(heads, kv_heads, head_dim, batch, context) with K+V <= DECODE_KV_LIMIT_BYTES."""
    out = []
    cfgs = HEAD_CONFIGS[:1] + HEAD_CONFIGS[3:] if quick else HEAD_CONFIGS
    for h, kvh, d in cfgs:
        if quick:
            pts = [(1, 1024), (8, 4096), (64, 2048), (256, 512)]
        else:
            pts = sorted({(b, c) for b in DECODE_BATCHES + DECODE_BATCHES_HALF for c in DECODE_CONTEXTS}
                         | {(b, c) for b in DECODE_BATCHES for c in DECODE_CONTEXTS_HALF}) + DECODE_HELDOUT
        for b, c in pts:
            if decode_kv_bytes(b, c, kvh, d) <= DECODE_KV_LIMIT_BYTES:
                out.append((h, kvh, d, b, c))
    return out


ELEM_TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
ELEM_TOKENS_QUICK = [1, 64, 4096]


def elementwise_grid(quick: bool = False) -> list[tuple[str, int, int]]:
    """(op, tokens, hidden).  rmsnorm/add/copy: hidden = model hidden; silu_mul: hidden = the
    intermediate size I (input [T, 2I], output [T, I]); rotary: hidden = (heads + kv_heads) *
    head_dim (the rotated q and k widths together; head config from HEAD_CONFIGS)."""
    toks = ELEM_TOKENS_QUICK if quick else ELEM_TOKENS
    hiddens = sorted({m.hidden for m in MODELS})
    inters = sorted({m.inter for m in MODELS})
    out = []
    for t in toks:
        for hd in hiddens:
            out += [("rmsnorm", t, hd), ("add", t, hd), ("copy", t, hd)]
        for i in inters:
            out.append(("silu_mul", t, i))
        for h, kvh, d in HEAD_CONFIGS:
            out.append(("rotary", t, (h + kvh) * d))
    return out


def rotary_head_config(hidden: int) -> tuple[int, int, int]:
    for h, kvh, d in HEAD_CONFIGS:
        if (h + kvh) * d == hidden:
            return h, kvh, d
    raise KeyError(hidden)


# ------------------------------------------------------------------ analytic flops / bytes
def gemm_flops_bytes(m: int, n: int, k: int, in_bytes: int = 2, out_bytes: int = 2):
    return 2 * m * n * k, (m * k + k * n) * in_bytes + m * n * out_bytes


def prefill_attended(seq_q: int, seq_kv: int) -> int:
    """Sum over query positions of attended keys (causal, bottom-right aligned)."""
    ctx = seq_kv - seq_q
    return seq_q * ctx + seq_q * (seq_q + 1) // 2


def prefill_flops_bytes(batch, seq_q, seq_kv, heads, kv_heads, head_dim, elt=2):
    flops = 4 * batch * heads * head_dim * prefill_attended(seq_q, seq_kv)
    byts = (2 * batch * seq_q * heads * head_dim + 2 * batch * seq_kv * kv_heads * head_dim) * elt
    return flops, byts


def decode_flops_bytes(batch, context, heads, kv_heads, head_dim, elt=2):
    flops = 4 * batch * heads * head_dim * context
    byts = decode_kv_bytes(batch, context, kv_heads, head_dim, elt) + 2 * batch * heads * head_dim * elt
    return flops, byts


def elementwise_flops_bytes(op: str, tokens: int, hidden: int, elt: int = 2):
    n = tokens * hidden
    if op == "rmsnorm":      # x read, w read, y written; ~4 flops/elt
        return 4 * n, (2 * n + hidden) * elt
    if op == "silu_mul":     # [T,2I] read, [T,I] written; ~5 flops/out elt
        return 5 * n, 3 * n * elt
    if op == "rotary":       # q,k read+written, cos/sin (T*head_dim) read; 3 flops/elt
        return 3 * n, 2 * n * elt
    if op == "add":
        return n, 3 * n * elt
    if op == "copy":
        return 0, 2 * n * elt
    if op == "launch":
        return 0, 0
    raise KeyError(op)


def estimate_points(quick: bool = False) -> dict[str, int]:
    """Points per grid (GEMM on DEFAULT_NUM_SMS SMs)."""
    from calibrate import grids_multi
    return {
        "gemm_bf16": len(gemm_grid(quick)),
        "gemm_fp8": len(gemm_fp8_grid(quick)),
        "attn_prefill": len(PREFILL_SHAPES_QUICK if quick else PREFILL_SHAPES) * len(HEAD_CONFIGS),
        "attn_decode": len(decode_grid(quick)),
        "elementwise": len(elementwise_grid(quick)),
        "attn_prefill_multi": len(grids_multi.prefill_multi_grid(quick)),
        "attn_decode_multi": len(grids_multi.decode_multi_grid(quick)),
    }


if __name__ == "__main__":
    print(estimate_points(False), estimate_points(True))
    print(gemm_kn_pairs())
