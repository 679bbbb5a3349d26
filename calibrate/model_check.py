"""End-to-end sanity check: a transformers LlamaForCausalLM with llama-3.1-8b dims and random
bf16 weights (config built in code, nothing downloaded), timed in eager PyTorch.

  python -m calibrate.model_check --out DIR [--layers 32] [--quick]

Writes DIR/model_check.csv: phase,batch,seq_or_context,num_layers,time_s,mode
  phase   prefill | decode
  mode    eager       : CUDA-event median of the eager forward (host launch overhead included)
          graph       : the same decode step captured once in a CUDA graph (StaticCache) and
                        replayed: no host launch overhead
          kernel_sum  : sum of the GPU kernel times of one eager step (torch.profiler); eager
                        minus kernel_sum is host/launch overhead not hidden by the GPU
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
import traceback

import torch

DEV = os.environ.get("CALIBRATE_DEVICE", "cuda")  # cpu: API smoke test only (tiny model)
COLS = ["phase", "batch", "seq_or_context", "num_layers", "time_s", "mode"]


def log(*a):
    print(*a, flush=True)


def build_model(layers: int, tiny: bool = False):
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM
    dims = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128)
    if tiny:  # CPU API smoke test only
        dims = dict(vocab_size=1000, hidden_size=256, intermediate_size=512,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    cfg = LlamaConfig(**dims, num_hidden_layers=layers, max_position_embeddings=131072, rope_theta=500000.0,
                      rms_norm_eps=1e-5, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(DEV):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    model = model.to(torch.bfloat16).eval()
    log(f"[model] transformers {transformers.__version__}: {layers} layers, "
        f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params")
    return model, cfg


def event_median(fn, iters=10, warmup=3, between=None):
    ts = []
    if DEV != "cuda":
        for i in range(warmup + iters):
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                ts.append(time.perf_counter() - t0)
        return statistics.median(ts)
    for i in range(warmup + iters):
        if between:
            between()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        if i >= warmup:
            ts.append(s.elapsed_time(e) * 1e-3)
    return statistics.median(ts)


def kernel_sum(fn) -> float:
    """Sum of device kernel time (s) of one call of fn, via torch.profiler."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    tot = 0.0
    for ev in prof.events():
        dt = getattr(ev, "device_type", None)
        if dt is not None and "CUDA" in str(dt):
            tot += ev.time_range.elapsed_us()
    return tot * 1e-6


def random_dynamic_cache(cfg, batch, ctx):
    from transformers import DynamicCache
    try:
        cache = DynamicCache(config=cfg)
    except TypeError:
        cache = DynamicCache()
    kvh, d = cfg.num_key_value_heads, cfg.head_dim
    for layer in range(cfg.num_hidden_layers):
        k = torch.randn(batch, kvh, ctx, d, device=DEV, dtype=torch.bfloat16)
        v = torch.randn(batch, kvh, ctx, d, device=DEV, dtype=torch.bfloat16)
        cache.update(k, v, layer)
    return cache


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tiny", action="store_true", help="tiny dims (CPU API smoke test)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    rows = []
    torch.manual_seed(0)
    model, cfg = build_model(args.layers, args.tiny)
    L = args.layers
    prefill_lens = [128, 512] if args.quick else [128, 512, 2048, 8192]
    batches = [1, 8] if args.quick else [1, 8, 32, 128]
    contexts = [512] if args.quick else [512, 2048]

    def add(phase, b, s, t, mode):
        rows.append(dict(phase=phase, batch=b, seq_or_context=s, num_layers=L, time_s=f"{t:.6e}",
                         mode=mode))
        log(f"{phase:8s} b={b:4d} s={s:6d} {mode:10s} {t * 1e3:9.3f} ms")

    with torch.inference_mode():
        # ---- prefill
        for s in prefill_lens:
            try:
                ids = torch.randint(0, cfg.vocab_size, (1, s), device=DEV)
                kw = dict(use_cache=False)
                try:
                    model(ids[:, :8], logits_to_keep=1, **kw)
                    kw["logits_to_keep"] = 1
                except TypeError:
                    pass
                fn = lambda: model(ids, **kw)  # noqa: E731
                add("prefill", 1, s, event_median(fn, iters=5, warmup=2), "eager")
                add("prefill", 1, s, kernel_sum(fn), "kernel_sum")
            except Exception as e:  # noqa: BLE001
                log(f"[prefill {s}] failed: {type(e).__name__}: {e}")
        torch.cuda.empty_cache()
        # ---- decode, eager with DynamicCache
        for ctx in contexts:
            for b in batches:
                try:
                    cache = random_dynamic_cache(cfg, b, ctx)
                    ids = torch.randint(0, cfg.vocab_size, (b, 1), device=DEV)
                    pos = [ctx]

                    def step():
                        cp = torch.tensor([pos[0]], device=DEV)
                        model(ids, past_key_values=cache, use_cache=True, cache_position=cp,
                              position_ids=cp.expand(b, 1))
                        pos[0] += 1
                    add("decode", b, ctx, event_median(step, iters=10, warmup=3), "eager")
                    add("decode", b, ctx, kernel_sum(step), "kernel_sum")
                    del cache
                    torch.cuda.empty_cache()
                except Exception as e:  # noqa: BLE001
                    log(f"[decode eager b={b} ctx={ctx}] failed: {type(e).__name__}: {e}")
                    torch.cuda.empty_cache()
                try:
                    add("decode", b, ctx, graph_decode(model, cfg, b, ctx), "graph")
                except Exception as e:  # noqa: BLE001
                    log(f"[decode graph b={b} ctx={ctx}] failed: {type(e).__name__}: "
                        f"{str(e)[:300]}")
                    log(traceback.format_exc()[-1500:])
                torch.cuda.empty_cache()
    path = os.path.join(args.out, "model_check.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLS)
        w.writeheader()
        w.writerows(rows)
    log("\nphase,batch,seq_or_context,num_layers,time_s,mode")
    for r in rows:
        log(",".join(str(r[c]) for c in COLS))
    log(f"[model_check] wall {time.time() - t_start:.1f} s -> {path}")
    return 0


def graph_decode(model, cfg, b, ctx) -> float:
    """One decode step with a StaticCache, captured in a CUDA graph; median replay time."""
    from transformers import StaticCache
    max_len = ctx + 16
    try:
        cache = StaticCache(config=cfg, max_batch_size=b, max_cache_len=max_len,
                            device=DEV, dtype=torch.bfloat16)
    except TypeError:
        cache = StaticCache(config=cfg, max_cache_len=max_len)
    ids = torch.randint(0, cfg.vocab_size, (b, 1), device=DEV)
    cp = torch.tensor([ctx], device=DEV)
    pid = cp.expand(b, 1).contiguous()

    def step():
        return model(ids, past_key_values=cache, use_cache=True, cache_position=cp,
                     position_ids=pid)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step()  # also lazily allocates the static cache tensors
    torch.cuda.current_stream().wait_stream(s)
    # fill the static cache with random data (never time on zeros)
    for lay in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(lay, name, None)
            if torch.is_tensor(t):
                t.normal_()
    for name in ("key_cache", "value_cache"):
        for t in getattr(cache, name, []) or []:
            if torch.is_tensor(t):
                t.normal_()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    t = event_median(g.replay, iters=20, warmup=3)
    del g, cache
    return t


if __name__ == "__main__":
    sys.exit(main())
