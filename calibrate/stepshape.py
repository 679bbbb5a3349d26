"""Engine-step shapes for the in-step / whole-step measurements (calibrate/instep.py,
wholestep.py): the textual shape syntax, the models' dimensions, the reference step grids, their
held-out flags and first-principles time estimates.  Importable WITHOUT torch (CPU CI tests it);
``calibrate.stepref`` re-exports ``parse_shape``.

Shape syntax (one step, as ``sim.cost.base.BatchShape`` describes it):

  prefill  ``NEW[+PRIOR]xCOUNT[,...]``: COUNT chunks of NEW new tokens each over PRIOR tokens of
           context already cached (chunked prefill; default 0).  ``2048x1,512x4`` is one 2048-token
           prompt and four 512-token prompts; ``512+1536x1`` one 512-token chunk over 1536 cached
           tokens.  Empty: no prefill.
  decode   ``COUNT@CTX[,...]`` and ``COUNT@LO:HI``: COUNT sequences each attending to CTX keys (the
           cached context plus the new token, as ``BatchShape.decode_context_sum`` counts them);
           ``COUNT@LO:HI`` spreads COUNT contexts evenly from LO to HI, context i being
           ``LO + (HI - LO) * i // (COUNT - 1)`` (integer floor; COUNT = 1 gives LO).  ``32@1024``
           is 32 sequences at 1024; ``64@64:1984`` 64 sequences from 64 to 1984 (mean 1023.5).
           Empty: no decode.
  step     ``PREFILL;DECODE`` (either side may be empty): ``2048x1;``, ``;32@1024``, ``512x1;32@1024``.

``sim/cost/step_shape.py`` parses the same syntax for ``servesim cost step``. The two stay apart
on purpose: the GPU machine runs this package without ``sim``'s dependencies (simpy), and the
installed ``sim`` does not carry ``calibrate/``; tests/test_calibrate_compare.py checks that
both parse the same strings the same way (and reject the same bad ones).

Models: what a step's time depends on (dims, layer count, QKV bias); the step samples one token
per prefill chunk and per decode sequence (every chunk treated as its prompt's last).
Ignores: anything that does not change a kernel's shape (rope scaling, eps values).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .grids import MODELS

BLOCK_SIZE = 16              # paged KV block (tokens), as calibrate/grids.py BLOCK_SIZE
WHOLESTEP_KV_LIMIT_BYTES = 40 * 10**9   # whole-step grid: skip shapes whose KV (all layers) exceeds this


@dataclass(frozen=True)
class StepModel:
    """A dense decoder's shapes: ``grids.ModelDims`` plus layer count and QKV bias."""

    name: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int
    vocab: int
    layers: int
    qkv_bias: bool
    rope_theta: float = 500000.0
    eps: float = 1e-5

    @property
    def q_size(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def qkv_size(self) -> int:
        return self.q_size + 2 * self.kv_size

    def kv_bytes_per_token(self, elt: int = 2) -> int:
        """K and V of one token over all layers."""
        return 2 * self.layers * self.kv_size * elt

    def layer_gemms(self) -> list[tuple[str, int, int]]:
        """(name, K, N) of one layer's GEMMs."""
        h, i = self.hidden, self.inter
        return [("qkv", h, self.qkv_size), ("o", self.q_size, h), ("gate_up", h, 2 * i), ("down", i, h)]


# layer counts, QKV bias, rope theta, RMSNorm eps from the HF configs (sim/models/*.yaml):
#   https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json (32 layers, no attention bias,
#     rope_theta 500000.0, rms_norm_eps 1e-05)
#   https://huggingface.co/Qwen/Qwen2.5-7B/blob/main/config.json (28 layers, attention bias on q/k/v,
#     rope_theta 1000000.0, rms_norm_eps 1e-06)
_EXTRA = {"llama-3.1-8b": (32, False, 500000.0, 1e-5), "qwen2.5-7b": (28, True, 1000000.0, 1e-6)}
# CPU smoke models (numbers meaningless): two layers, head_dim 64 (the Triton prefill kernel's minimum)
TINY = {
    "tiny-llama": StepModel("tiny-llama", 256, 4, 2, 64, 512, 512, 2, False),
    "tiny-qwen": StepModel("tiny-qwen", 256, 4, 1, 64, 384, 640, 2, True, 1e6, 1e-6),
}
REAL = ("llama-3.1-8b", "qwen2.5-7b")


def step_model(name: str) -> StepModel:
    if name in TINY:
        return TINY[name]
    md = next((m for m in MODELS if m.name == name), None)
    if md is None or name not in _EXTRA:
        raise KeyError(f"unknown step model {name!r}; known: {list(_EXTRA) + list(TINY)}")
    layers, bias, theta, eps = _EXTRA[name]
    return StepModel(md.name, md.hidden, md.heads, md.kv_heads, md.head_dim, md.inter, md.vocab,
                     layers, bias, theta, eps)


def models_for(tiny: bool) -> list[StepModel]:
    return [step_model(n) for n in (TINY if tiny else REAL)]


# ------------------------------------------------------------------ shape syntax
_CHUNK = re.compile(r"(\d+)(?:\+(\d+))?x(\d+)")
_GROUP = re.compile(r"(\d+)@(\d+)(?::(\d+))?")


def parse_prefill(s: str) -> list[tuple[int, int]]:
    """``2048x1,512+1536x2`` -> [(2048, 0), (512, 1536), (512, 1536)] as (new, prior) chunks."""
    out: list[tuple[int, int]] = []
    for part in filter(None, (p.strip() for p in s.split(","))):
        m = _CHUNK.fullmatch(part)
        if not m or int(m[1]) < 1 or int(m[3]) < 1:
            raise ValueError(f"prefill chunk {part!r}: expected NEW[+PRIOR]xCOUNT with NEW, COUNT >= 1 "
                             "(e.g. 512x4 or 512+1536x1)")
        out += [(int(m[1]), int(m[2] or 0))] * int(m[3])
    return out


def spread(count: int, lo: int, hi: int) -> list[int]:
    """The contexts ``COUNT@LO:HI`` stands for."""
    if count == 1:
        return [lo]
    return [lo + (hi - lo) * i // (count - 1) for i in range(count)]


def parse_decode(s: str) -> list[int]:
    """``32@1024`` -> [1024] * 32; ``4@64:1984`` -> [64, 704, 1344, 1984]; groups joined by commas."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in s.split(","))):
        m = _GROUP.fullmatch(part)
        if not m or int(m[1]) < 1 or int(m[2]) < 1 or (m[3] is not None and int(m[3]) < int(m[2])):
            raise ValueError(f"decode group {part!r}: expected COUNT@CTX or COUNT@LO:HI with COUNT, CTX >= 1, "
                             "LO <= HI (e.g. 32@1024 or 64@64:1984)")
        n, lo = int(m[1]), int(m[2])
        out += [lo] * n if m[3] is None else spread(n, lo, int(m[3]))
    return out


def parse_shape(prefill: str, decode: str) -> tuple[list[tuple[int, int]], list[int]]:
    """(prefill chunks as (new_tokens, prior_context), decode contexts) of a step written in the
    shape syntax (module docstring).  Raises ValueError naming the bad part."""
    return parse_prefill(prefill), parse_decode(decode)


def _runs(xs: list) -> list[tuple[object, int]]:
    out: list[list] = []
    for x in xs:
        if out and out[-1][0] == x:
            out[-1][1] += 1
        else:
            out.append([x, 1])
    return [(x, n) for x, n in out]


def format_prefill(chunks: list[tuple[int, int]]) -> str:
    return ",".join(f"{new}{'+' + str(prior) if prior else ''}x{n}" for (new, prior), n in _runs(list(chunks)))


def format_decode(contexts: list[int]) -> str:
    """Run-length form (``COUNT@CTX`` per run of equal contexts); ``spread_str`` writes the
    compact ``COUNT@LO:HI`` form of an even spread."""
    return ",".join(f"{n}@{c}" for c, n in _runs(list(contexts)))


def spread_str(count: int, lo: int, hi: int) -> str:
    return f"{count}@{lo}:{hi}"


def step_str(prefill: str, decode: str) -> str:
    return f"{prefill};{decode}"


def parse_step(s: str) -> tuple[str, str]:
    if s.count(";") != 1:
        raise ValueError(f"step {s!r}: expected PREFILL;DECODE")
    p, d = s.split(";")
    return p.strip(), d.strip()


def phase(chunks, contexts) -> str:
    return "mixed" if chunks and contexts else ("prefill" if chunks else "decode")


def heldout(prefill: str, decode: str) -> bool:
    """Deterministic held-out flag of a step shape (the same for every model and backend):
    sha1 of ``PREFILL;DECODE`` modulo 3 is 0 -- about a third of the shapes."""
    return int(hashlib.sha1(step_str(prefill, decode).encode()).hexdigest(), 16) % 3 == 0


def step_kv_bytes(md: StepModel, chunks, contexts) -> int:
    """K and V (all layers) that the step's attention reads: prior + new tokens of every chunk,
    and every decode context."""
    toks = sum(new + prior for new, prior in chunks) + sum(contexts)
    return toks * md.kv_bytes_per_token()


# ------------------------------------------------------------------ grids
INSTEP_DECODE = [f"{b}@{c}" for c in (512, 2048) for b in (1, 8, 32, 64, 128, 256)]
INSTEP_PREFILL = ["512x1", "2048x1", "8192x1", "256x16", "512x64"]
# measured in this order (a budget cut loses the tail): one of each regime of the issue first
# (small / mid / large decode batches, 2k and 8k prefill), then the rest, the 32k-token step last
INSTEP_ORDER = [";1@512", "8192x1;", ";32@512", "2048x1;", ";128@512", ";1@2048", ";256@512",
                "512x1;", ";8@512", ";64@512", "256x16;", ";8@2048", ";32@2048", ";128@2048",
                ";64@2048", ";256@2048", "512x64;"]
INSTEP_QUICK = [("", "8@512"), ("512x1", "")]
TINY_INSTEP = [("", "2@16"), ("", "3@40"), ("24x1", ""), ("8+20x2", ""), ("16x1", "2@33")]
TINY_INSTEP_QUICK = [("", "2@16"), ("16x1", "2@33")]


def instep_steps(quick: bool = False, tiny: bool = False) -> list[tuple[str, str]]:
    """(prefill, decode) of the in-step diagnostic: decode batch 1-256 at contexts 512 and 2048,
    prefill 1x512, 1x2048, 1x8192, 16x256, 64x512 (the same for both models and backends)."""
    if tiny:
        return TINY_INSTEP_QUICK if quick else TINY_INSTEP
    if quick:
        return INSTEP_QUICK
    steps = [("", d) for d in INSTEP_DECODE] + [(p, "") for p in INSTEP_PREFILL]
    rank = {parse_step(k): i for i, k in enumerate(INSTEP_ORDER)}
    return sorted(steps, key=lambda s: rank[s])


WS_BATCHES = (1, 4, 16, 32, 64, 128, 256, 512)
WS_CONTEXTS = (256, 1024, 4096)
WS_PREFILL = ["128x1", "512x1", "2048x1", "8192x1", "1024x4", "512x16", "256x64", "64x256"]
WS_CHUNKED = ["2048+2048x1", "512+8192x1"]
WS_MIXED = [("512x1", "32@1024"), ("512x1", "128@1024")]
# decode over mixed contexts (Triton only): an even spread from 64 to 2 * mean - 64, against the
# equal-context shape of the same batch and (up to flooring) mean
WS_SPREAD = [(16, 1024), (64, 1024), (256, 1024), (16, 4096), (64, 4096)]
TINY_WHOLESTEP = [("", "2@16"), ("", "4@40"), ("24x1", ""), ("8x3", ""), ("8+20x1", ""),
                  ("16x1", "2@33"), ("", "3@5:70")]


def wholestep_grid(md: StepModel, backend: str, quick: bool = False, tiny: bool = False,
                   kv_limit_bytes: int = WHOLESTEP_KV_LIMIT_BYTES) -> list[tuple[str, str]]:
    """(prefill, decode) shapes of the whole-step reference for one model and backend, cheapest
    first (so that a wall-time budget cuts the most expensive ones), skipping shapes whose KV
    cache exceeds ``kv_limit_bytes``.  Mixed-context decode is Triton only (the vendor decode
    is SDPA over a contiguous KV, equal contexts only)."""
    if tiny:
        shapes = [("", "2@16"), ("8+20x1", ""), ("", "3@5:70")] if quick else TINY_WHOLESTEP
    elif quick:
        shapes = [("", "1@1024"), ("", "64@1024"), ("2048x1", ""), ("512x1", "32@1024")]
        if backend == "triton":
            shapes.append(("", spread_str(64, 64, 1984)))
    else:
        shapes = [("", f"{b}@{c}") for b in WS_BATCHES for c in WS_CONTEXTS]
        if backend == "triton":
            shapes += [("", spread_str(b, 64, 2 * m - 64)) for b, m in WS_SPREAD]
        shapes += [(p, "") for p in WS_PREFILL + WS_CHUNKED] + WS_MIXED
    out = []
    for p, d in shapes:
        chunks, ctxs = parse_shape(p, d)
        if backend == "vendor" and len(set(ctxs)) > 1:
            continue
        if step_kv_bytes(md, chunks, ctxs) <= kv_limit_bytes:
            out.append((p, d))
    return sorted(out, key=lambda s: (est_step_s(md, *parse_shape(*s), backend), s))


# ------------------------------------------------------------------ first-principles estimates
@dataclass(frozen=True)
class Speeds:
    """Rates used to size the grids (a guess to plan wall time, not a measurement), rounded down
    from what the calibration runner measured on the device tool's H200 (calibrate/data/h200_sxm/):
    gemm.csv bf16 K=4096 N=28672: vendor 677-724 TFLOP/s at M = 2048-8192 and 3.46 TB/s at M = 1-8,
    Triton 644-711 TFLOP/s and 3.03-3.35 TB/s; attn_prefill.csv 1x8192 causal (32/8/128): vendor
    617 TFLOP/s, Triton 444; provenance.json: 4.27 TB/s D2D copy."""

    gemm_flops_per_s: float = 650e12
    attn_flops_per_s: float = 550e12
    bytes_per_s: float = 3.4e12
    launch_s: float = 3e-6           # per kernel (graph replay / host-ahead eager)
    triton_gemm_slowdown: float = 1.1
    triton_attn_slowdown: float = 1.4


H200 = Speeds()


def step_work(md: StepModel, chunks, contexts) -> dict[str, float]:
    """FLOPs and bytes of one step by op class (the ops of calibrate.stepref)."""
    t = sum(n for n, _ in chunks) + len(contexts)
    s = len(chunks) + len(contexts)
    L, e = md.layers, 2
    gemm_f = gemm_b = 0.0
    for _, k, n in md.layer_gemms():
        gemm_f += 2.0 * t * k * n * L
        gemm_b += ((t * k + k * n) * e + t * n * e) * L
    gemm_f += 2.0 * s * md.hidden * md.vocab
    gemm_b += (s * md.hidden + md.hidden * md.vocab + s * md.vocab) * e
    attn_f = sum(4.0 * md.q_size * (new * prior + new * (new + 1) / 2) for new, prior in chunks) * L
    attn_f += sum(4.0 * md.q_size * c for c in contexts) * L
    kv_b = step_kv_bytes(md, chunks, contexts)
    # per token per layer: 2 norms (r+w), rotary (r+w q,k), kv write, silu_mul (r 2I, w I), 2 adds (2r+w)
    ew_b = t * L * e * (4 * md.hidden + 2 * (md.q_size + md.kv_size) + 2 * md.kv_size + 3 * md.inter
                        + 6 * md.hidden) + s * md.vocab * 6
    kernels = L * 13 + 6
    return {"gemm_flops": gemm_f, "gemm_bytes": gemm_b, "attn_flops": attn_f, "kv_bytes": kv_b,
            "ew_bytes": ew_b, "kernels": kernels}


def est_step_s(md: StepModel, chunks, contexts, backend: str = "vendor", sp: Speeds = H200) -> float:
    """Roofline guess of one step's GPU time (GEMMs, attention and elementwise ops in sequence)."""
    w = step_work(md, chunks, contexts)
    tri = backend == "triton"
    g = max(w["gemm_flops"] / sp.gemm_flops_per_s, w["gemm_bytes"] / sp.bytes_per_s)
    a = max(w["attn_flops"] / sp.attn_flops_per_s, w["kv_bytes"] / sp.bytes_per_s)
    return (g * (sp.triton_gemm_slowdown if tri else 1.0) + a * (sp.triton_attn_slowdown if tri else 1.0)
            + w["ew_bytes"] / sp.bytes_per_s + w["kernels"] * sp.launch_s)


# executions of a shape per method (see instep.py / wholestep.py)
INSTEP_REPS = 5                 # event-timed eager steps per in-step shape (fewer for long steps)
WS_EAGER_REPS = 2               # event-timed eager steps per whole-step shape (after one warm-up; 1 if long)
WS_REPLAYS = 20                 # timed graph replays (after one warm-up replay)
WS_LONG_S = 0.05                # a step this long gets one eager rep and no side-stream warm-up before capture
WS_SHAPE_OVERHEAD_S = 0.3       # build, capture, host enqueue and spins, collection
INSTEP_OPS_BENCH_S = 0.025      # wall per standalone bench window (do_bench-like, 10 ms of calls)
TRITON_COMPILE_S = 20.0         # first use of a model's Triton kernels (~15 variants; the runner's
                                # first calls took 77 s of its 283 s on the H200: provenance.json)


def instep_reps(step_s: float) -> int:
    """Event-timed eager steps for a step of ``step_s`` (>= 2; 32 layers give many samples per op)."""
    return max(2, min(INSTEP_REPS, int(1.0 / max(step_s, 1e-6))))


def ws_eager_reps(step_s: float) -> int:
    return 1 if step_s >= WS_LONG_S else WS_EAGER_REPS


def ws_executions(step_s: float) -> int:
    """Runs of a whole-step shape: eager warm-up, eager reps, side-stream warm-up (short steps),
    graph warm-up replay, timed replays."""
    return 1 + ws_eager_reps(step_s) + (0 if step_s >= WS_LONG_S else 1) + 1 + WS_REPLAYS


def est_wholestep_s(tiny: bool = False, quick: bool = False, sp: Speeds = H200) -> dict[str, float]:
    """Wall-time guess of the whole-step grid per model/backend and in total (seconds)."""
    out = {}
    for md in models_for(tiny):
        for be in ("vendor", "triton"):
            tot = 0.0
            for p, d in wholestep_grid(md, be, quick, tiny):
                s = est_step_s(md, *parse_shape(p, d), be, sp)
                tot += ws_executions(s) * s + WS_SHAPE_OVERHEAD_S
            out[f"{md.name}/{be}"] = tot
    out["total"] = sum(out.values())
    return out


def est_instep_s(tiny: bool = False, quick: bool = False, sp: Speeds = H200) -> dict[str, float]:
    """Wall-time guess of the in-step diagnostic: eager steps (+2 warm-ups each), three
    standalone windows per distinct op shape (+ one for vendor GEMMs; ~12 shapes per token count,
    attention and KV write per step) and the Triton kernels' compilation."""
    out = {}
    for md in models_for(tiny):
        for be in ("vendor", "triton"):
            tot, tokens = 0.0, set()
            for p, d in instep_steps(quick, tiny):
                chunks, ctxs = parse_shape(p, d)
                s = est_step_s(md, chunks, ctxs, be, sp)
                tot += (instep_reps(s) + 2) * (s + 0.01)
                tokens.add(sum(n for n, _ in chunks) + len(ctxs))
                tot += 3 * 3 * INSTEP_OPS_BENCH_S          # its attention and kv write, sampled rows
            tot += len(tokens) * 12 * 3.3 * INSTEP_OPS_BENCH_S
            out[f"{md.name}/{be}"] = tot + (TRITON_COMPILE_S if be == "triton" and not tiny else 0.0)
    out["total"] = sum(out.values())
    return out
