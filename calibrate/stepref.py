"""Reference transformer step from raw torch ops (no transformers library): one engine
iteration of a dense Llama/Qwen-style decoder as a flat list of ops, on one of two backends.

Models: per layer RMSNorm, QKV GEMM (+ bias), neox rotary, KV write, attention (prefill chunks
over their prior context; decode over a KV cache), O GEMM, residual add, RMSNorm, gate_up GEMM,
SiLU-and-mul, down GEMM, residual add; per step embedding gather, final norm, gather of the
sampled rows, LM head over them, fp32 logits copy -- the ops of sim/cost/roofline.py, plus three
it does not price (kind ``other``): the KV write, the Triton backend's QKV bias add, the row
gather (and, vendor mixed steps, the concatenation of the two attention outputs).
  vendor: F.linear (cuBLAS, weights [N, K]), F.rms_norm, torch.add, F.silu(g) * u; prefill
          attention torch.nn.attention.varlen.varlen_attn if it exists, handles GQA and a prior
          context and captures in a CUDA graph (checked at start-up, calibrate/stepattn.py), else
          its flash kernel called directly, else SDPA per sequence; decode SDPA of one query per
          sequence over a contiguous [B, kv_heads, ctx, D] cache (equal contexts only).
  triton: calibrate/kernels (GEMM on [K, N] weights, RMSNorm, add, SiLU-and-mul, varlen prefill
          over a packed K/V with prior context, paged decode with a block table).
  Both use our Triton rotary (torch has no fused rotary; engines run their own fused kernel).
Weights are random (std 1/sqrt(K), never zeros), all layers distinct; each layer's KV cache is its
own region of a random pool (``KVPool``) unless the step's KV does not fit, then regions repeat.
Ignores: sampling proper, llama3 rope scaling, fused add+norm kernels, tensor parallelism.

Importable without torch (the shape syntax lives in calibrate/stepshape.py, re-exported here);
the vendor attention calls are picked in calibrate/stepattn.py, the step is checked against a
float64 reference in calibrate/stepcheck.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .stepshape import BLOCK_SIZE, StepModel, parse_shape, step_model  # noqa: F401  (re-exported)

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # CPU CI: the shape syntax works without torch
    torch = F = None

TOL = 2e-2  # relative error vs float64 (calibrate/harness.py TOL["bf16"])


@dataclass
class Op:
    """One op of a step: ``fn(*args)`` with args from ``ins`` (str = a value an earlier op left
    in the step's env, anything else a constant); ``out`` names its result.  For rotated
    standalone timing, args in ``keep`` are shared by every copy (big tables read sparsely) and
    ``vary[i](arg, n)`` gives n variants of arg i stacked (other tensors are copied)."""

    name: str
    kind: str
    shape: str
    layer: int | None
    fn: Callable
    ins: tuple
    out: str | None
    keep: frozenset = frozenset()
    vary: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return self.name, self.shape


class Weights:
    """All layers' random weights in the backend's layout: vendor [N, K] (nn.Linear), triton
    [K, N] row-major.  The same seed gives the same values in both layouts."""

    def __init__(self, md: StepModel, backend: str, device, dtype, seed: int = 0):
        self.md, self.backend = md, backend
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        rnd = lambda *s: torch.randn(*s, generator=g, device=device, dtype=dtype)  # noqa: E731

        def mat(n, k):
            w = rnd(n, k).mul_(k ** -0.5)
            return w if backend == "vendor" else w.t().contiguous()
        norm = lambda: rnd(md.hidden).mul_(0.1).add_(1.0)  # noqa: E731
        self.layers = []
        for _ in range(md.layers):
            lw = {"ln1": norm(), "qkv": mat(md.qkv_size, md.hidden)}
            lw["qkv_b"] = rnd(md.qkv_size).mul_(0.1) if md.qkv_bias else None
            lw.update(o=mat(md.hidden, md.q_size), ln2=norm(), gate_up=mat(2 * md.inter, md.hidden),
                      down=mat(md.hidden, md.inter))
            self.layers.append(lw)
        self.embed = rnd(md.vocab, md.hidden)
        self.lnf = norm()
        self.lm = mat(md.vocab, md.hidden)

    def nk(self, w):
        """A GEMM weight as [N, K] (a view)."""
        return w if self.backend == "vendor" else w.t()


class KVPool:
    """Random K and V buffers that steps carve their per-layer caches from."""

    def __init__(self, elems: int, device, dtype):
        self.k = torch.empty(elems, device=device, dtype=dtype).normal_()
        self.v = torch.empty(elems, device=device, dtype=dtype).normal_()

    def regions(self, layers: int, per_layer: int):
        """(per-layer (k, v) flat slices, number of distinct regions)."""
        per = -(-per_layer // 256) * 256
        n = min(layers, self.k.numel() // max(per, 1))
        if n < 1:
            raise MemoryError(f"one layer's KV ({per_layer * 2 * self.k.element_size() / 1e9:.1f} GB) "
                              f"exceeds the pool")
        return [(self.k[(i % n) * per:(i % n) * per + per_layer],
                 self.v[(i % n) * per:(i % n) * per + per_layer]) for i in range(layers)], n


def _cumsum(xs):
    out, s = [], 0
    for x in xs:
        s += x
        out.append(s)
    return out


def _gshape(m, n, k):
    return f"m={m} n={n} k={k}"


class Step:
    """One step of ``md`` on ``backend`` for a shape in the step syntax (calibrate/stepshape.py):
    ``ops`` in launch order; ``run()`` executes them (eagerly, or inside a CUDA graph capture)
    and leaves every op's result in ``env`` (``env["hf"]``: the final normed hidden state)."""

    def __init__(self, md: StepModel, w: Weights, prefill: str, decode: str, pool: KVPool,
                 attn=None, seed: int = 1):
        from .kernels import elementwise as ew
        chunks, ctxs = parse_shape(prefill, decode)
        be = w.backend
        if be == "vendor" and len(set(ctxs)) > 1:
            raise ValueError("the vendor decode (SDPA over a contiguous KV) needs equal contexts")
        if not chunks and not ctxs:
            raise ValueError("empty step")
        self.md, self.w, self.backend, self.attn = md, w, be, attn
        self.prefill, self.decode, self.chunks, self.contexts = prefill, decode, chunks, ctxs
        dev = self.device = pool.k.device
        ks = md.kv_size
        tp, b = sum(n for n, _ in chunks), len(ctxs)
        self.tokens = t = tp + b
        g = torch.Generator()  # host-side randomness (ids, block table, priors): same for both backends
        g.manual_seed(seed)
        self.seed = seed
        # one layer's KV: packed prefill K/V (prior + new tokens per chunk), then the decode cache
        cu_q, cu_k = [0] + _cumsum([n for n, _ in chunks]), [0] + _cumsum([n + p for n, p in chunks])
        pf_tok = cu_k[-1]
        nblk = [-(-c // BLOCK_SIZE) for c in ctxs]
        dec_tok = sum(nblk) * BLOCK_SIZE if be == "triton" else b * (ctxs[0] if ctxs else 0)
        regions, self.kv_distinct = pool.regions(md.layers, (pf_tok + dec_tok) * ks)
        self.kv_layer_bytes = 2 * (pf_tok + dec_tok) * ks * pool.k.element_size()
        i32, i64 = torch.int32, torch.int64
        dt = lambda xs, ty: torch.tensor(xs, dtype=ty).to(dev)  # noqa: E731
        pos = [p + i for n, p in chunks for i in range(n)] + [c - 1 for c in ctxs]
        self.ids = torch.randint(0, md.vocab, (t,), generator=g).to(dev)
        self.pos, self.cs = dt(pos, i32), ew.rope_cache(max(pos) + 1, md.head_dim, md.rope_theta, device=dev)
        rows = [cu_q[j + 1] - 1 for j in range(len(chunks))] + [tp + i for i in range(b)]
        self.sampled = len(rows)
        sidx = None if rows == list(range(t)) else dt(rows, i64)
        if chunks:
            self.cu_q, self.cu_k = dt(cu_q, i32), dt(cu_k, i32)
            self.pf_rows = dt([cu_k[j] + p + i for j, (n, p) in enumerate(chunks) for i in range(n)], i64)
        if ctxs and be == "triton":
            perm = torch.randperm(sum(nblk), generator=g).tolist()
            self.table_l, o = [], 0
            for nb in nblk:
                self.table_l.append(perm[o:o + nb] + [0] * (max(nblk) - nb))
                o += nb
            self.table, self.lens = dt(self.table_l, i32), dt(ctxs, i32)
            self.dec_rows = dt([self.table_l[i][(c - 1) // BLOCK_SIZE] * BLOCK_SIZE + (c - 1) % BLOCK_SIZE
                                for i, c in enumerate(ctxs)], i64)
        elif ctxs:
            self.dec_rows = dt([ctxs[0] - 1], i64)
        self.layout = []
        for kr, vr in regions:
            lay = {}
            if chunks:
                lay["kp"], lay["vp"] = (r[:pf_tok * ks].view(pf_tok, md.kv_heads, md.head_dim) for r in (kr, vr))
            if ctxs:
                shp = (-1, BLOCK_SIZE, md.kv_heads, md.head_dim) if be == "triton" else \
                      (b, md.kv_heads, ctxs[0], md.head_dim)
                lay["kd"], lay["vd"] = (r[pf_tok * ks:].view(*shp) for r in (kr, vr))
            self.layout.append(lay)
        self.ops: list[Op] = []
        self._build(tp, b, pf_tok, dec_tok, max(n for n, _ in chunks) if chunks else 0, sidx)

    def args(self, op: Op, env: dict | None = None) -> tuple:
        env = self.env if env is None else env
        return tuple(env[a] if isinstance(a, str) else a for a in op.ins)

    def run(self, hook: Callable[[int], None] | None = None, keep: dict | None = None) -> None:
        """All ops in order; ``hook(i)`` after op i (e.g. a CUDA event record); ``keep`` gets the
        arguments of the first op of every (name, shape) group (to time that op alone on the
        step's own tensors)."""
        env = self.env = {}
        for i, op in enumerate(self.ops):
            a = [env[x] if isinstance(x, str) else x for x in op.ins]
            if keep is not None and op.key not in keep:
                keep[op.key] = (op, tuple(a))
            r = op.fn(*a)
            if op.out is not None:
                env[op.out] = r
            if hook is not None:
                hook(i)

    def _build(self, tp, b, pf_tok, dec_tok, max_new, sidx):
        from .kernels import attn_decode as kdec, attn_prefill as kpre, elementwise as ew, gemm as kg
        md, w, t, ops = self.md, self.w, self.tokens, self.ops
        H, KVH, D, qs, ks, hid, inter = md.heads, md.kv_heads, md.head_dim, md.q_size, md.kv_size, md.hidden, md.inter
        vendor, dev, chunks, ctxs = self.backend == "vendor", self.device, self.chunks, self.contexts
        if vendor:
            norm = lambda x, g: F.rms_norm(x, (hid,), g, md.eps)  # noqa: E731
            lin = lambda a, wt, bias=None: F.linear(a, wt, bias)  # noqa: E731
            silu = lambda gu: F.silu(gu[:, :inter]) * gu[:, inter:]  # noqa: E731
            add = torch.add
        else:
            norm = lambda x, g: ew.rmsnorm(x, g, md.eps)  # noqa: E731
            lin, silu, add = kg.matmul, ew.silu_mul, ew.add

        def op(name, kind, shape, layer, fn, ins, out, keep=(), vary=None):
            ops.append(Op(name, kind, shape, layer, fn, tuple(ins), out, frozenset(keep), vary or {}))

        def rotary(qkv, pos, cs):
            out, n = torch.empty_like(qkv), qkv.shape[0]
            ew.rotary(qkv[:, :qs].view(n, H, D), qkv[:, qs:qs + ks].view(n, KVH, D), pos, cs,
                      out[:, :qs].view(n, H, D), out[:, qs:qs + ks].view(n, KVH, D))
            return out

        def kv_write(qr, qkv, *lay):
            if chunks:
                for buf, src in ((lay[0], qr[:tp, qs:qs + ks]), (lay[1], qkv[:tp, qs + ks:])):
                    buf.view(-1, ks).index_copy_(0, lay[2], src)
            if ctxs:
                kd_, vd_, r = lay[-3:]
                for buf, src in ((kd_, qr[tp:, qs:qs + ks]), (vd_, qkv[tp:, qs + ks:])):
                    if vendor:
                        buf.index_copy_(2, r, src.reshape(b, KVH, 1, D))
                    else:
                        buf.view(-1, ks).index_copy_(0, r, src)

        def shift(mod):  # n variants of an index tensor, each moved by its size (mod rows)
            return lambda r, n: (r[None] + torch.arange(n, device=dev)[:, None] * r.numel()) % mod

        tok_h = f"tokens={t} hidden={hid}"
        op("embed", "elementwise", tok_h, None, F.embedding, (self.ids, w.embed), "x", keep=(1,),
           vary={0: lambda ids, n: torch.randint(0, md.vocab, (n, ids.numel()), device=dev)})
        kv_args, kv_keep, kv_vary = [], [], {}
        if chunks:
            kv_keep += [2, 3]
            kv_vary[4] = shift(pf_tok)
        if ctxs:
            j = 2 + (3 if chunks else 0)
            kv_keep += [j, j + 1]
            kv_vary[j + 2] = shift(ctxs[0] if vendor else dec_tok)
        pos_vary = {1: lambda p, n: ((p[None].long() + torch.arange(n, device=dev)[:, None] * p.numel())
                                     % self.cs.shape[0]).to(p.dtype)}
        for li, lw in enumerate(w.layers):
            lay = self.layout[li]
            op("rmsnorm", "elementwise", tok_h, li, norm, ("x", lw["ln1"]), "h")
            qkv_ins = ("h", lw["qkv"], lw["qkv_b"]) if vendor else ("h", lw["qkv"])
            op("qkv", "gemm", _gshape(t, md.qkv_size, hid), li, lin, qkv_ins, "qkv")
            if not vendor and lw["qkv_b"] is not None:
                op("bias_add", "other", f"tokens={t} hidden={md.qkv_size}", li, torch.add, ("qkv", lw["qkv_b"]), "qkv")
            op("rotary", "elementwise", f"tokens={t} hidden={(H + KVH) * D}", li, rotary, ("qkv", self.pos, self.cs),
               "qr", keep=(2,), vary=pos_vary)
            kv_args = ([lay["kp"], lay["vp"], self.pf_rows] if chunks else []) + \
                      ([lay["kd"], lay["vd"], self.dec_rows] if ctxs else [])
            op("kv_write", "other", f"prefill={self.prefill} decode={self.decode}", li, kv_write,
               ["qr", "qkv"] + kv_args, None, keep=kv_keep, vary=kv_vary)
            heads = f"heads={H}/{KVH}/{D}"
            if chunks:
                if vendor:
                    fn = lambda qr, k, v, cq, ck: self.attn.prefill(  # noqa: E731
                        qr[:tp, :qs].view(tp, H, D), k, v, cq, ck, chunks).reshape(tp, qs)
                else:
                    def fn(qr, k, v, cq, ck):
                        ao = qr.new_empty(qr.shape[0], qs)
                        kpre.prefill_attention(qr[:tp, :qs].view(tp, H, D), k, v, cq, ck, max_new,
                                               out=ao[:tp].view(tp, H, D))
                        return ao
                op("attn_prefill", "attn_prefill", f"prefill={self.prefill} {heads}", li, fn,
                   ("qr", lay["kp"], lay["vp"], self.cu_q, self.cu_k), "ap" if vendor and ctxs else "ao")
            if ctxs:
                if vendor:
                    fn = lambda qr, k, v: self.attn.decode(qr[tp:, :qs].view(b, H, 1, D), k, v).reshape(b, qs)  # noqa: E731
                    ins = ("qr", lay["kd"], lay["vd"])
                else:
                    def fn(qr, ao, k, v, table, lens):
                        ao = qr.new_empty(qr.shape[0], qs) if ao is None else ao
                        kdec.decode_attention(qr[tp:, :qs].view(b, H, D), k, v, table, lens, max(ctxs),
                                              out=ao[tp:].view(b, H, D))
                        return ao
                    ins = ("qr", "ao" if chunks else None, lay["kd"], lay["vd"], self.table, self.lens)
                op("attn_decode", "attn_decode", f"decode={self.decode} {heads}", li, fn, ins,
                   "ad" if vendor and chunks else "ao")
            if vendor and chunks and ctxs:
                op("attn_cat", "other", f"tokens={t} hidden={qs}", li,
                   lambda ap, ad: torch.cat([ap, ad]), ("ap", "ad"), "ao")
            op("o", "gemm", _gshape(t, hid, qs), li, lin, ("ao", lw["o"]), "o")
            op("add", "elementwise", tok_h, li, add, ("x", "o"), "x")
            op("rmsnorm", "elementwise", tok_h, li, norm, ("x", lw["ln2"]), "h")
            op("gate_up", "gemm", _gshape(t, 2 * inter, hid), li, lin, ("h", lw["gate_up"]), "gu")
            op("silu_mul", "elementwise", f"tokens={t} hidden={inter}", li, silu, ("gu",), "a")
            op("down", "gemm", _gshape(t, hid, inter), li, lin, ("a", lw["down"]), "d")
            op("add", "elementwise", tok_h, li, add, ("x", "d"), "x")
        op("final_norm", "elementwise", tok_h, None, norm, ("x", w.lnf), "hf")
        s = self.sampled
        if sidx is not None:
            op("rows", "other", f"rows={s} tokens={t} hidden={hid}", None, torch.index_select,
               ("hf", 0, sidx), "hs")
        op("lm_head", "gemm", _gshape(s, md.vocab, hid), None, lin, ("hs" if sidx is not None else "hf", w.lm),
           "logits")
        op("logits", "elementwise", f"tokens={s} hidden={md.vocab}", None, lambda lg: lg.float(), ("logits",),
           "logits_f32")

