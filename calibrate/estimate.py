"""Wall-time estimate of a calibration run, op by op, from first principles: each point's
kernel time (FLOPs over an achieved compute rate, bytes over an achieved bandwidth, plus a
launch), the timing window calibrate.timing.bench spends on it (estimate calls, warm-up,
timed calls, each timed call after a 256 MB flush), times backends and passes, plus the first
pass's kernel compilation.

The runner prints it before it times anything (``python -m calibrate.run ... --estimate``
prints it and stops), so a grid that cannot fit the one device call is seen before the call.

Checked against the H200 run of 2026-11-23 (calibrate/data/h200_sxm/provenance.json: gemm
66.3 s, attn_prefill 68.5 s, attn_decode 134.2 s, elementwise 29.1 s): see ``CALIBRATION_RUN``.

Ignores: the host's own time beyond HOST_S per window (Python, input creation), the cost of
the rotating input copies of flush "none", clock ramps.  Importable without torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from calibrate import grids, grids_multi

# datasheet H200 SXM (https://www.nvidia.com/en-us/data-center/h200/; dense = half the sparsity
# figure), used when the run has not measured its own peaks yet
DATASHEET = {"bf16_flops_per_s": 989.4e12, "bandwidth_bytes_per_s": 4.8e12}
# achieved fractions of the peaks (best achieved in the H200 run above: GEMM 795 of 989 TFLOP/s,
# prefill Triton 509 / vendor 682 TFLOP/s, decode 4.3-4.6 TB/s and elementwise 4.2 TB/s of 4.8)
COMPUTE_FRAC = {"gemm": 0.75, "attn_prefill": {"triton": 0.45, "vendor": 0.6}}
BANDWIDTH_FRAC = 0.8
LAUNCH_S = {"gemm": 5e-6, "attn_prefill": 8e-6, "attn_decode": 10e-6, "elementwise": 5e-6}
FLUSH_BANDWIDTH_FRAC = 0.75   # the 256 MB zero (or read) before each timed call
HOST_S = 1.0e-3               # host time per window the GPU does not hide (H200 run: ~1 ms)
# first-pass compilation and first calls, measured on the H200 run (first pass minus a later one):
# decode 81 - 27 s, prefill 34 - 17 s; GEMM and elementwise (few kernel variants) ~0
COMPILE_S = {"gemm": 5.0, "attn_prefill": 17.0, "attn_decode": 54.0, "elementwise": 1.0}
CHECKS_S = 25.0               # kernel correctness checks and peak measurements (H200: 17-20 s)
CALIBRATION_RUN = {"gemm": 66.3, "attn_prefill": 68.5, "attn_decode": 134.2, "elementwise": 29.1}
BLOCK_M, BLOCK_N = 128, 64    # calibrate/kernels/attn_prefill.py tiles (FlashAttention 2 tiles alike)


@dataclass(frozen=True)
class Rates:
    flops_per_s: float
    bandwidth_bytes_per_s: float

    @classmethod
    def from_peaks(cls, peaks: dict | None) -> "Rates":
        """Measured peaks (provenance 'peaks': an 8192^3 matmul and a 2 GiB copy) or the datasheet."""
        p = peaks or {}
        return cls(float(p.get("matmul_bf16_flops_per_s") or 0.8 * DATASHEET["bf16_flops_per_s"]) / 0.8,
                   float(p.get("copy_bw_bytes_per_s") or 0.89 * DATASHEET["bandwidth_bytes_per_s"]) / 0.89)


def window_s(t: float, rates: Rates, rep_ms: float, max_reps: int, flush: str = "zero",
             warmup_ms: float = 5.0, max_warmup: int = 25) -> float:
    """Wall seconds of one calibrate.timing.bench window on a kernel of ``t`` seconds."""
    f = 0.0 if flush == "none" else 256e6 / (FLUSH_BANDWIDTH_FRAC * rates.bandwidth_bytes_per_s)
    e = f + t
    est = e + 0.5e-3 if e > 2e-3 else 6 * e + 1.8e-3          # 1 (then 5) calls behind a spin
    n_warm = max(1, min(max_warmup, int(warmup_ms * 1e-3 / e)))
    n_rep = max(1, min(max_reps, int(rep_ms * 1e-3 / e)))
    return HOST_S + t + est + n_warm * t + n_rep * e + 0.5e-3


def _padded_prefill_flops(seqs, heads: int, head_dim: int) -> float:
    """FLOPs the tiled prefill kernel executes: whole 128-query blocks over 64-key tiles up to
    each block's last key (what short sequences waste)."""
    total = 0
    for new, prior in seqs:
        for j in range(-(-new // BLOCK_M)):
            keys = min(prior + (j + 1) * BLOCK_M, prior + new)
            total += BLOCK_M * (-(-keys // BLOCK_N) * BLOCK_N)
    return 4.0 * heads * head_dim * total


def kernel_s(op: str, backend: str, pt, rates: Rates) -> float:
    """Rough kernel seconds of one grid point of ``op`` (a point as the runner's grids list it)."""
    bw = BANDWIDTH_FRAC * rates.bandwidth_bytes_per_s
    if op == "gemm":
        m, n, k, dt = pt
        fl, by = grids.gemm_flops_bytes(m, n, k, 2 if dt == "bf16" else 1, 2)
        peak = rates.flops_per_s * (2 if dt == "fp8" else 1)
        return max(fl / (COMPUTE_FRAC["gemm"] * peak), by / bw) + LAUNCH_S["gemm"]
    if op in ("attn_prefill", "attn_prefill_multi"):
        if op == "attn_prefill":
            h, kvh, d, b, sq, skv = pt
            seqs = [(sq, skv - sq)] * b
        else:
            h, kvh, d, ln = pt
            seqs = grids_multi.expand_lengths(ln)
        by = sum(grids.prefill_flops_bytes(1, n, n + p, h, kvh, d)[1] for n, p in seqs)
        fl = _padded_prefill_flops(seqs, h, d)
        frac = COMPUTE_FRAC["attn_prefill"]["triton" if backend == "triton" else "vendor"]
        return max(fl / (frac * rates.flops_per_s), by / bw) + LAUNCH_S["attn_prefill"]
    if op in ("attn_decode", "attn_decode_multi"):
        if op == "attn_decode":
            h, kvh, d, b, c = pt
            by = grids.decode_flops_bytes(b, c, h, kvh, d)[1]
        else:
            h, kvh, d, ln = pt
            by = grids_multi.decode_multi_flops_bytes(ln, h, kvh, d)[1]
        return by / bw + LAUNCH_S["attn_decode"]
    sub, t_, hid = pt
    return grids.elementwise_flops_bytes(sub, t_, hid)[1] / bw + LAUNCH_S["elementwise"]


def points(op: str, quick: bool = False, num_sms: int = grids.DEFAULT_NUM_SMS) -> list:
    """The runner's grid of ``op`` (GEMM points carry their dtype)."""
    if op == "gemm":
        return ([(m, n, k, "bf16") for m, n, k in grids.gemm_grid(quick, num_sms)]
                + [(m, n, k, "fp8") for m, n, k in grids.gemm_fp8_grid(quick, num_sms)])
    if op == "attn_prefill":
        shapes = grids.PREFILL_SHAPES_QUICK if quick else grids.PREFILL_SHAPES
        return [(h, kvh, d, b, sq, skv) for h, kvh, d in grids.HEAD_CONFIGS for b, sq, skv in shapes]
    if op == "attn_decode":
        return grids.decode_grid(quick)
    if op == "attn_prefill_multi":
        return grids_multi.prefill_multi_grid(quick)
    if op == "attn_decode_multi":
        return grids_multi.decode_multi_grid(quick)
    return grids.elementwise_grid(quick)


def op_seconds(op: str, passes: int, backends=("triton", "vendor"), quick: bool = False, flush: str = "zero",
               peaks: dict | None = None, compiled: bool = False, timing: dict | None = None,
               pass_timing: dict | None = None) -> dict:
    """{'points', 'windows', 'seconds'} of ``op``: its windows at the runner's window settings
    (``timing``: single-pass ops, ``pass_timing``: multi-pass ops; calibrate.timing's defaults),
    plus COMPILE_S unless ``compiled`` (a multi op after its single-sequence op: same kernels)."""
    rates = Rates.from_peaks(peaks)
    tm = {"rep_ms": 20, "max_reps": 100, **(timing or {})}
    pm = {"rep_ms": 10, "max_reps": 50, **(pass_timing or {})}
    rep_ms, max_reps = (tm if passes == 1 else pm)["rep_ms"], (tm if passes == 1 else pm)["max_reps"]
    pts = points(op, quick)
    total, n_win = 0.0, 0
    for pt in pts:
        bes = list(backends)
        if op in ("attn_prefill_multi", "attn_decode_multi") and "vendor" in bes and tuple(pt[:3]) == \
                grids.HEAD_CONFIGS[0] and ";" not in pt[3]:
            bes.append("vendor")  # the varlen cross-check of equal launches (calibrate/run_attention.py)
        for be in bes:
            if op == "elementwise" and pt[0] == "copy" and be != "vendor":
                continue
            total += window_s(kernel_s(op, be, pt, rates), rates, rep_ms, max_reps, flush)
            n_win += 1
    base = op.replace("_multi", "")
    compile_s = 0.0 if compiled else COMPILE_S[base]
    return {"points": len(pts), "windows": n_win * passes, "seconds": round(total * passes + compile_s, 1)}


def run_seconds(ops, passes: dict, backends=("triton", "vendor"), quick: bool = False, flush: str = "zero",
                peaks: dict | None = None, timing: dict | None = None, pass_timing: dict | None = None) -> dict:
    """Per-op estimates for a run of ``ops`` in that order, and the total with CHECKS_S."""
    out, done = {}, set()
    for op in ops:
        out[op] = op_seconds(op, passes[op], backends, quick, flush, peaks,
                             compiled=op.replace("_multi", "") in done, timing=timing, pass_timing=pass_timing)
        done.add(op)
    out["total_s"] = round(sum(v["seconds"] for v in out.values()) + CHECKS_S, 1)
    return out


def format_estimate(est: dict) -> str:
    lines = [f"[estimate] {op:18s} {v['points']:5d} points {v['windows']:6d} windows ~{v['seconds']:6.1f} s"
             for op, v in est.items() if op != "total_s"]
    return "\n".join(lines + [f"[estimate] total (with checks and peaks) ~{est['total_s']:.0f} s"])
