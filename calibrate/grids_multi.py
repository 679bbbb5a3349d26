"""Grids of the many-sequence launches (attn_prefill_multi, attn_decode_multi) and their
compact length syntax.

Serving batches are often many short sequences (an offline run prefills 64 prompts of 512
tokens in one step; early decode steps run hundreds of requests over short contexts), which
the single-sequence grids (calibrate/grids.py: prefill up to 16 sequences per launch, decode
up to batch 512 over contexts >= 128) do not reach.  Equal-length launches here extend the
fit's tables (prefill rows to 256 sequences, decode rows to batch 2048, decode contexts down
to 16); mixed-length launches test the simulator's pricing, which sees only the number of
sequences, the summed work and the longest chain (prefill) or the number of requests and the
summed context (decode).  Mixed launches are drawn once from fixed seeds with
random.Random.random() alone (stable across Python versions), so every run has the same grid.

Importable WITHOUT torch or triton, like calibrate/grids.py.
"""
from __future__ import annotations

import math
import random
import re
from typing import Iterable

from calibrate.grids import (DECODE_BATCHES, DECODE_BATCHES_HALF, DECODE_CONTEXTS, DECODE_CONTEXTS_HALF,
                             DECODE_KV_LIMIT_BYTES, HEAD_CONFIGS, PREFILL_SHAPES, decode_flops_bytes,
                             decode_kv_bytes, prefill_flops_bytes)

# The compact length syntax of attn_prefill_multi.csv (``lengths``) and attn_decode_multi.csv
# (``contexts``): entries "new[+prior]xcount" joined by ";" -- "512x48;128+896x16" is 48
# prompts of 512 new tokens and 16 chunks of 128 new tokens over 896 cached ones; a decode
# launch lists contexts ("700x3;16x200").  Canonical form: one entry per (new, prior), by
# decreasing new then prior.
_ENTRY = re.compile(r"^([1-9][0-9]*)(?:\+([1-9][0-9]*))?x([1-9][0-9]*)$")


def format_lengths(seqs: Iterable) -> str:
    """Canonical string of a launch's sequences: (new, prior) pairs or plain lengths (no prior)."""
    counts: dict[tuple[int, int], int] = {}
    for sq in seqs:
        new, prior = (sq, 0) if isinstance(sq, int) else (int(sq[0]), int(sq[1]))
        if new < 1 or prior < 0:
            raise ValueError(f"a sequence needs new >= 1 and prior >= 0, got ({new}, {prior})")
        counts[(new, prior)] = counts.get((new, prior), 0) + 1
    if not counts:
        raise ValueError("a launch needs at least one sequence")
    return ";".join(f"{n}+{p}x{c}" if p else f"{n}x{c}" for (n, p), c in sorted(counts.items(), reverse=True))


def parse_lengths(text: str, allow_prior: bool = True) -> list[tuple[int, int, int]]:
    """(new, prior, count) per entry of ``text``; ValueError naming the first bad entry."""
    out = []
    for e in str(text).split(";"):
        m = _ENTRY.match(e.strip())
        if m is None:
            raise ValueError(f"bad entry {e!r} in {text!r}; expected new[+prior]xcount, e.g. 512x48;128+896x16")
        if m.group(2) and not allow_prior:
            raise ValueError(f"bad entry {e!r} in {text!r}; a decode context has no '+prior'")
        out.append((int(m.group(1)), int(m.group(2) or 0), int(m.group(3))))
    return out


def expand_lengths(text: str, allow_prior: bool = True) -> list[tuple[int, int]]:
    """Every sequence of ``text`` as (new, prior), in entry order."""
    return [(n, p) for n, p, c in parse_lengths(text, allow_prior) for _ in range(c)]


def prefill_multi_flops_bytes(lengths: str, heads: int, kv_heads: int, head_dim: int, elt: int = 2):
    """Summed exactly as prefill_flops_bytes counts each sequence (one chunk: new over new + prior)."""
    fl = by = 0
    for n, p, c in parse_lengths(lengths):
        f1, b1 = prefill_flops_bytes(1, n, n + p, heads, kv_heads, head_dim, elt)
        fl, by = fl + c * f1, by + c * b1
    return fl, by


def decode_multi_flops_bytes(contexts: str, heads: int, kv_heads: int, head_dim: int, elt: int = 2):
    """Summed exactly as decode_flops_bytes counts each sequence."""
    fl = by = 0
    for ctx, _, c in parse_lengths(contexts, allow_prior=False):
        f1, b1 = decode_flops_bytes(1, ctx, heads, kv_heads, head_dim, elt)
        fl, by = fl + c * f1, by + c * b1
    return fl, by


class _Draw:
    """Seeded draws from random.Random(seed).random() alone (stable across Python versions)."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def log_uniform(self, lo: float, hi: float) -> int:
        return int(round(math.exp(math.log(lo) + self.r.random() * (math.log(hi) - math.log(lo)))))

    def pick(self, xs):
        return xs[min(int(self.r.random() * len(xs)), len(xs) - 1)]

    def split(self, n: int, k: int) -> list[int]:
        """n as k positive counts (k <= n)."""
        cuts: set[int] = set()
        while len(cuts) < k - 1:
            cuts.add(1 + min(int(self.r.random() * (n - 1)), n - 2))
        edges = [0] + sorted(cuts) + [n]
        return [b - a for a, b in zip(edges, edges[1:])]


def _fit_tokens(entries: list[list[int]], limit: int) -> list[list[int]]:
    """Halve the longest entry's length (entries [new, prior, count]) until the launch's new
    tokens (prefill) or contexts (decode) sum to at most ``limit``."""
    while sum(n * c for n, _, c in entries) > limit:
        i = max(range(len(entries)), key=lambda j: entries[j][0])
        entries[i][0] = max(16, entries[i][0] // 2)
    return entries


def _launch(entries) -> str:
    return format_lengths([(n, p) for n, p, c in entries for _ in range(c)])


# prefill: equal lengths for 16-256 sequences (up to 64k new tokens; the shapes attn_prefill
# already measures at batch 16 are left out), equal chunks over a prior context, and mixed
# launches (seeded, below); rows per batch of these extend the prefill tables to 256 sequences
PREFILL_MULTI_BATCHES = [16, 32, 64, 128, 256]
PREFILL_MULTI_LENGTHS = [16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048]
PREFILL_MULTI_MAX_TOKENS = 65536
PREFILL_MULTI_CHUNKS = [(16, 512), (32, 256), (64, 128), (128, 64), (16, 128), (64, 512)]  # (batch, new)
PREFILL_MULTI_PRIORS = [1024, 4096]
# held out: batches between the table rows, and one mixed launch (an offline batch's 512-token
# prompts with a few short ones)
PREFILL_MULTI_HELDOUT = ["384x48", "200x96", "64x200", "100+1000x24", "512x48;128x16"]
PREFILL_MULTI_SEED = 20261201


def _prefill_mixed() -> list[str]:
    d = _Draw(PREFILL_MULTI_SEED)
    out = []
    for n in PREFILL_MULTI_BATCHES:  # bimodal: a few long prompts among many short ones
        n_long = max(1, n // d.pick((8, 4, 2)))
        out.append([[d.log_uniform(512, 2048), 0, n_long], [d.log_uniform(16, 160), 0, n - n_long]])
    for n in PREFILL_MULTI_BATCHES + [48]:  # spread: 3-6 lengths log-uniform over 16-2048
        k = 3 + int(d.r.random() * 4)
        out.append([[d.log_uniform(16, 2048), 0, c] for c in d.split(n, k)])
    for n, mid in ((64, 512), (32, 1024), (128, 256)):  # near-equal: +-25 % around a length
        out.append([[int(mid * (0.75 + 0.5 * d.r.random())), 0, c] for c in d.split(n, 4)])
    for n in (16, 32, 64):  # a chunked-prefill step: chunks over cached context next to new prompts
        out.append([[d.log_uniform(64, 512), d.log_uniform(256, 4096) if i % 2 else 0, c]
                    for i, c in enumerate(d.split(n, 4))])
    return [_launch(_fit_tokens(e, PREFILL_MULTI_MAX_TOKENS)) for e in out]


PREFILL_MULTI_MIXED = _prefill_mixed()
PREFILL_MULTI_QUICK = ["16x32", "64x16", "200+300x16", "512x3;32x13"]


def prefill_multi_launches(quick: bool = False) -> list[str]:
    """Length strings of the many-sequence prefill grid (one set for every head config)."""
    if quick:
        return list(PREFILL_MULTI_QUICK)
    old = {(b, s) for b, s, kv in PREFILL_SHAPES if s == kv}
    equal = [format_lengths([s] * b) for b in PREFILL_MULTI_BATCHES for s in PREFILL_MULTI_LENGTHS
             if b * s <= PREFILL_MULTI_MAX_TOKENS and (b, s) not in old]
    chunked = [format_lengths([(q, p)] * b) for b, q in PREFILL_MULTI_CHUNKS for p in PREFILL_MULTI_PRIORS]
    out = equal + chunked + PREFILL_MULTI_MIXED + PREFILL_MULTI_HELDOUT
    return list(dict.fromkeys(out))


def prefill_multi_grid(quick: bool = False) -> list[tuple[int, int, int, str]]:
    """(heads, kv_heads, head_dim, lengths) for every head config."""
    return [(h, kvh, d, ln) for h, kvh, d in HEAD_CONFIGS for ln in prefill_multi_launches(quick)]


# decode: batches 768-2048 over all contexts, short contexts (16-96) for every batch, and mixed
# launches (seeded, below); equal-context rows extend the decode tables to batch 2048
DECODE_MULTI_BATCHES = [768, 1024, 1536, 2048]
DECODE_CONTEXTS_SHORT = [16, 32, 64]
DECODE_CONTEXTS_SHORT_HALF = [24, 48, 96]
DECODE_MULTI_MAX_SUM = 8 * 10**6  # summed context of a mixed launch: K+V < 40 GB at 4 KiB/token
DECODE_MULTI_HELDOUT = ["100x1200", "40x640", "20x48", "1000x1800", "4000x4;200x60"]
DECODE_MULTI_SEED = 20261202


def _decode_mixed() -> list[str]:
    d = _Draw(DECODE_MULTI_SEED)
    out = []
    for n in (128, 256, 512, 1024, 2048):  # early decode: hundreds of requests over short contexts
        out.append([[d.log_uniform(16, 600), 0, c] for c in d.split(n, 3 + int(d.r.random() * 4))])
    for n in (8, 32, 128, 512):  # bimodal: a few long contexts among many short ones
        n_long = max(1, n // 8)
        out.append([[d.log_uniform(8192, 32768), 0, n_long], [d.log_uniform(64, 1024), 0, n - n_long]])
    for n in (4, 16, 64, 256, 1024):  # spread: 3-6 contexts log-uniform over 16-32k
        k = min(n, 3 + int(d.r.random() * 4))
        out.append([[d.log_uniform(16, 32768), 0, c] for c in d.split(n, k)])
    for n, mid in ((64, 2048), (256, 512), (32, 8192)):  # near-equal: +-25 % around a context
        out.append([[int(mid * (0.75 + 0.5 * d.r.random())), 0, c] for c in d.split(n, 4)])
    return [_launch(_fit_tokens(e, DECODE_MULTI_MAX_SUM)) for e in out]


DECODE_MULTI_MIXED = _decode_mixed()
DECODE_MULTI_QUICK = ["16x2048", "64x8", "100x2;20x30", "2048x1;16x7"]


def decode_multi_grid(quick: bool = False) -> list[tuple[int, int, int, str]]:
    """(heads, kv_heads, head_dim, contexts) with K+V <= DECODE_KV_LIMIT_BYTES."""
    if quick:
        cfgs, launches = HEAD_CONFIGS[:1] + HEAD_CONFIGS[3:], DECODE_MULTI_QUICK
    else:
        cfgs = HEAD_CONFIGS
        pts = ({(b, c) for b in DECODE_MULTI_BATCHES for c in DECODE_CONTEXTS_SHORT + DECODE_CONTEXTS}
               | {(b, c) for b in (1024, 2048) for c in DECODE_CONTEXTS_SHORT_HALF + DECODE_CONTEXTS_HALF}
               | {(b, c) for b in DECODE_BATCHES + DECODE_BATCHES_HALF for c in DECODE_CONTEXTS_SHORT}
               | {(b, c) for b in DECODE_BATCHES for c in DECODE_CONTEXTS_SHORT_HALF})
        launches = [format_lengths([c] * b) for b, c in sorted(pts)] + DECODE_MULTI_MIXED + DECODE_MULTI_HELDOUT
        launches = list(dict.fromkeys(launches))
    out = []
    for h, kvh, d in cfgs:
        for ln in launches:
            total = sum(c * n for c, _, n in parse_lengths(ln, allow_prior=False))
            if decode_kv_bytes(1, total, kvh, d) <= DECODE_KV_LIMIT_BYTES:
                out.append((h, kvh, d, ln))
    return out


