"""NCCL microbenchmarks through torch.distributed: all-reduce (bf16, 4 KiB .. 1 GiB per rank)
and point-to-point send/recv between GPU 0 and GPU 1.  One process per GPU
(torch.multiprocessing).  NVLink multicast / NVLS stays OFF in every process.

  python -m calibrate.nccl --out DIR [--world-size 2] [--quick]

Writes DIR/nccl.csv: op,backend,dtype,bytes_per_rank,world_size,time_s,algbw_bytes_per_s,
busbw_bytes_per_s  (all_reduce: busbw = algbw * 2(n-1)/n; p2p: one direction, busbw = algbw)
and DIR/nccl_provenance.json.
"""
from __future__ import annotations

import os

# never use multicast: set before torch / NCCL are loaded, inherited by the spawned workers
os.environ["NCCL_NVLS_ENABLE"] = "0"
os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
os.environ["NVSHMEM_DISABLE_NVLS"] = "1"

import argparse  # noqa: E402
import csv  # noqa: E402
import datetime as _dt  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

COLS = ["op", "backend", "dtype", "bytes_per_rank", "world_size", "time_s", "algbw_bytes_per_s",
        "busbw_bytes_per_s"]
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
            "NVSHMEM_DISABLE_NVLS": "1"}


def sizes(quick):
    lo, hi = 12, 30  # 4 KiB .. 1 GiB
    step = 4 if quick else 1
    return [1 << e for e in range(lo, hi + 1, step)]


def _time(fn, iters, warmup, dist):
    import torch
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        dist.barrier()
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) * 1e-3)
    return ts


def worker(rank, world, port, out_dir, quick):
    for k, v in SAFE_ENV.items():
        os.environ[k] = v
    import torch
    import torch.distributed as dist
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, device_id=torch.device("cuda", rank))
    rows = []
    for nbytes in sizes(quick):
        n = nbytes // 2
        x = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        iters = 20 if nbytes <= (64 << 20) else 8
        ts = _time(lambda: dist.all_reduce(x), iters, 5, dist)
        t = statistics.median(ts)
        # worst rank's median is the collective's time
        tt = torch.tensor([t], device="cuda", dtype=torch.float64)
        dist.all_reduce(tt, op=dist.ReduceOp.MAX)
        t = float(tt.item())
        alg = nbytes / t
        rows.append(dict(op="all_reduce", backend="nccl", dtype="bf16", bytes_per_rank=nbytes,
                         world_size=world, time_s=f"{t:.6e}", algbw_bytes_per_s=f"{alg:.6e}",
                         busbw_bytes_per_s=f"{alg * 2 * (world - 1) / world:.6e}"))
        del x
    # correctness of the all-reduce sum (fresh random data)
    x = torch.randn(1 << 20, device="cuda", dtype=torch.float32)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    ref = torch.stack(parts).double().sum(0)
    dist.all_reduce(x)
    ar_err = float((x.double() - ref).norm() / ref.norm())
    # p2p: rank 0 -> rank 1, timed on the receiver (recv completes after data landed)
    for nbytes in sizes(quick):
        n = nbytes // 2
        buf = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        iters = 20 if nbytes <= (64 << 20) else 8

        def xfer():
            if rank == 0:
                dist.send(buf, 1)
            elif rank == 1:
                dist.recv(buf, 0)
        ts = _time(xfer, iters, 5, dist)
        tt = torch.tensor([statistics.median(ts)], device="cuda", dtype=torch.float64)
        dist.all_reduce(tt, op=dist.ReduceOp.MAX)
        t = float(tt.item())
        rows.append(dict(op="p2p", backend="nccl", dtype="bf16", bytes_per_rank=nbytes,
                         world_size=world, time_s=f"{t:.6e}", algbw_bytes_per_s=f"{nbytes / t:.6e}",
                         busbw_bytes_per_s=f"{nbytes / t:.6e}"))
    if rank == 0:
        with open(os.path.join(out_dir, "nccl.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLS)
            w.writeheader()
            w.writerows(rows)
        print("op,bytes_per_rank,time_us,busbw_GB/s", flush=True)
        for r in rows:
            print(f"{r['op']},{r['bytes_per_rank']},{float(r['time_s']) * 1e6:.1f},"
                  f"{float(r['busbw_bytes_per_s']) / 1e9:.1f}", flush=True)
        with open(os.path.join(out_dir, "nccl_provenance.json.part"), "w") as f:
            json.dump({"all_reduce_rel_err_fp32": ar_err,
                       "nccl_version": ".".join(map(str, torch.cuda.nccl.version())),
                       "torch": torch.__version__}, f)
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--port", type=int, default=29517)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    import torch
    import torch.multiprocessing as mp
    t0 = time.time()
    world = min(args.world_size, torch.cuda.device_count())
    assert world >= 2, f"needs >= 2 GPUs, found {torch.cuda.device_count()}"

    def smi(*a):
        try:
            return subprocess.run(["nvidia-smi", *a], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except Exception as e:  # noqa: BLE001
            return f"unavailable: {e}"
    prov = {"date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "hostname": socket.gethostname(), "world_size": world,
            "gpus": smi("--query-gpu=name,driver_version,memory.total", "--format=csv"),
            "topology": smi("topo", "-m"),
            "clocks_before": smi("--query-gpu=clocks.sm,clocks.mem,clocks.max.sm", "--format=csv"),
            "env": {k: os.environ.get(k) for k in SAFE_ENV},
            "command": " ".join([sys.executable, "-m", "calibrate.nccl"] + (argv or sys.argv[1:])),
            "method": "CUDA events around one collective after a barrier; median over iters; "
                      "max over ranks"}
    mp.spawn(worker, args=(world, args.port, args.out, args.quick), nprocs=world, join=True)
    part = os.path.join(args.out, "nccl_provenance.json.part")
    if os.path.exists(part):
        with open(part) as f:
            prov.update(json.load(f))
        os.remove(part)
    prov["clocks_after"] = smi("--query-gpu=clocks.sm,clocks.mem,clocks.max.sm", "--format=csv")
    prov["wall_time_s"] = round(time.time() - t0, 1)
    with open(os.path.join(args.out, "nccl_provenance.json"), "w") as f:
        json.dump(prov, f, indent=2)
    print(f"[nccl] done in {prov['wall_time_s']} s", flush=True)


if __name__ == "__main__":
    main()
