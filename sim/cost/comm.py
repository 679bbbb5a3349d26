"""Communication cost: NCCL collectives and point-to-point transfers inside one node.

Models: the time NCCL takes for an all-reduce, all-gather, reduce-scatter or send/recv
between the GPUs of one node, over NVLink/NVSwitch (SXM parts) or over PCIe peer-to-peer
through the host's root complex (GPUs without NVLink), with NCCL's own alpha-beta tuning
model (NVIDIA/nccl src/graph/tuning.cc, ``ncclTopoTuneModel`` and ``ncclTopoGetAlgoTime``)
restricted to one node. For each algorithm a and protocol p the profile gives a base
latency, a latency per step and a busbw fraction (``hw.interconnect``, sim.interconnect):

    B        = bandwidth_bytes_per_s * busbw_frac            ring busbw reached at large sizes
    busbw    = min(B * bw_frac[a,p], max_busbw[a,p])
    ring     steps s = 2(n-1) (all-reduce), n-1 (all-gather, reduce-scatter)
             t = base[p] + s * step[p] + nbytes * s / (n * busbw)
             (all-reduce: 2(n-1) alpha + 2(n-1)/n * nbytes / busbw)
    tree     (all-reduce only; NCCL's double binary tree spans nodes, inside one node each
             tree is a chain, so its latency has 2(n-1) hops, not 2 log2 n:
             tuning.cc adds 2 * ((nRanks/nNodes - 1) * intraLat + log2(nNodes) * interLat))
             t = base[p] + 2(n-1) * step[p] + nbytes / (busbw / 2)
    send/recv one ring step with LL or Simple (NCCL switches at nChannels x 16 KiB,
             NCCL_P2P_LL_THRESHOLD in src/enqueue.cc): t = base[p] + step[p] + nbytes / busbw

and NCCL runs the fastest: the time is the minimum over the (algorithm, protocol) pairs the
profile lists. LL (8-byte flag+data stores, low latency, half the bandwidth) wins small
messages, LL128 (NVLink only) the middle, Simple large ones. With NCCL's constants the ring
wins almost everywhere over NVLink (the chain's LL128 ties it near 2 MiB on 8 A100s); over
PCIe, whose chain hops are cheaper than ring steps, the chain takes some middle sizes at 6-8
GPUs. nbytes is the tensor per rank for all-reduce, the gathered OUTPUT per rank for
all-gather and the INPUT per rank for reduce-scatter (NCCL's own ``nBytes``:
ncclFuncMaxSendRecvCount). One GPU or zero bytes costs exactly 0.0. Uncalibrated, NCCL's
constants are optimistic for small messages (about 2-3x below 1 MiB against a public 8x A100
curve; docs/cost_model.md).

Calibrated (``calibrate/fit_nccl.py`` fitted DIR/nccl.csv of ``calibrate/nccl.py``): at a
measured world size an all-reduce takes the fitted piecewise alpha-beta time; at another world
size n the model above is scaled by the measured/model ratio of the nearest measured world
size m at the same bytes: t(n, b) = model(n, b) * fit(m, b) / model(m, b). All-gather and
reduce-scatter (not measured) take the all-reduce ratio at the same bytes (same chunk per
step); send/recv takes its own p2p fit.

Ignores: NVLS / NVLink SHARP (multicast all-reduce on NVSwitch; calibrate/nccl.py measures with
it off), SHARP/CollNet, PAT, inter-node IB/RoCE (a replica stays within max_gpus_per_node),
NCCL's per-channel caps and its tree correction factors for medium sizes, contention with
concurrent compute kernels, and vLLM's custom all-reduce: for tensors under 8 MiB
(``max_size=8192 * 1024``) on 2, 4, 6 or 8 fully NVLink-connected GPUs (or 2 PCIe GPUs with
P2P), vLLM runs its own one-shot kernel (world size 2, or < 512 KiB at <= 4 GPUs, < 256 KiB at
<= 8) or two-shot kernel (reduce-scatter + all-gather over P2P) instead of NCCL
(vllm-project/vllm vllm/distributed/device_communicators/custom_all_reduce.py and
csrc/custom_all_reduce.cuh); it is faster than NCCL for small tensors, and this model
prices NCCL, not it.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

from sim.config import ConfigError
from sim.hardware import HardwareProfile
from sim.interconnect import CommFit, Interconnect

OPS = ("all_reduce", "all_gather", "reduce_scatter", "send_recv")
_P2P_PROTOCOLS = ("ll", "simple")  # NCCL p2p never uses LL128 (src/enqueue.cc)


class CommModel:
    """Seconds of NCCL collectives on one node of ``hw`` (see module doc)."""

    def __init__(self, hw: HardwareProfile):
        self.hw = hw
        ic: Interconnect | None = hw.interconnect
        self.interconnect = ic
        self.link: str = ic.link if ic else "none"
        self.max_gpus_per_node: int = ic.max_gpus_per_node if ic else 1
        self.calibrated: bool = bool(ic and ic.fits)
        self._fits: dict[tuple[str, int], CommFit] = {(f.op, f.world_size): f for f in ic.fits} if ic else {}
        self._cands: dict[tuple[str, int], tuple[tuple[str, str, float, float, int], ...]] = {}
        self._srcs: dict[tuple[str, int], tuple[str, int] | None] = {}

    # ------------------------------------------------------------------ public API
    def all_reduce_s(self, nbytes: float, num_gpus: int) -> float:
        """All-reduce of ``nbytes`` per rank over ``num_gpus`` GPUs."""
        return self._time("all_reduce", nbytes, num_gpus)

    def all_gather_s(self, nbytes: float, num_gpus: int) -> float:
        """All-gather whose gathered OUTPUT is ``nbytes`` per rank."""
        return self._time("all_gather", nbytes, num_gpus)

    def reduce_scatter_s(self, nbytes: float, num_gpus: int) -> float:
        """Reduce-scatter whose INPUT is ``nbytes`` per rank."""
        return self._time("reduce_scatter", nbytes, num_gpus)

    def send_recv_s(self, nbytes: float) -> float:
        """One point-to-point transfer of ``nbytes`` between two GPUs of the node."""
        return self._time("send_recv", nbytes, 2)

    def breakdown(self, op: str, nbytes: float, num_gpus: int) -> dict[str, Any]:
        """The prediction and how it was made: ``time_s``, algorithm and protocol chosen, their
        latency (``alpha_s``) and bandwidths, the uncalibrated ``model_time_s``, the calibration
        ``correction`` and where it came from, and every candidate's time."""
        if op not in OPS:
            raise ConfigError("op", f"expected one of {list(OPS)}, got {op!r}")
        n = 2 if op == "send_recv" else num_gpus
        t = self._time(op, nbytes, n)
        n, nbytes = int(n), float(nbytes)  # checked by _time; plain numbers for JSON
        out: dict[str, Any] = {"op": op, "num_gpus": n, "nbytes": nbytes, "time_s": t, "link": self.link,
                               "hardware": self.hw.name, "calibrated": False, "algorithm": None, "protocol": None,
                               "steps": 0, "alpha_s": 0.0, "bandwidth_bytes_per_s": None, "busbw_bytes_per_s": None,
                               "model_time_s": t, "correction": 1.0, "calibrated_from": None, "candidates": {}}
        if t == 0.0:
            return out
        cands = self._candidates(op, n)
        times = {f"{a}/{p}": lat + nbytes / alg for a, p, lat, alg, _ in cands}
        a, p, lat, alg, steps = min(cands, key=lambda c: c[2] + nbytes / c[3])
        model = lat + nbytes / alg
        out.update(algorithm=a, protocol=p, steps=steps, alpha_s=lat, bandwidth_bytes_per_s=alg,
                   busbw_bytes_per_s=alg * _bus_factor(op, a, n), model_time_s=model, candidates=times)
        src = self._calibration_source(op, n)
        if src is not None:
            measured = _measured(op, n, src)
            out.update(calibrated=True, correction=t / model,
                       calibrated_from={"op": src[0], "world_size": src[1], "measured": measured})
            if measured:
                ln = self._fits[src].line(nbytes)
                out.update(alpha_s=ln.alpha_s, bandwidth_bytes_per_s=ln.bandwidth_bytes_per_s,
                           busbw_bytes_per_s=ln.bandwidth_bytes_per_s * _bus_factor(op, "ring", n))
        return out

    # ------------------------------------------------------------------ internals
    def _time(self, op: str, nbytes: float, n: int) -> float:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ConfigError("num_gpus", f"expected an integer >= 1, got {n!r}")
        if isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Real) or not nbytes >= 0 \
                or not math.isfinite(nbytes):
            raise ConfigError("nbytes", f"expected a finite number >= 0, got {nbytes!r}")
        n, nbytes = int(n), float(nbytes)
        if n == 1:
            return 0.0
        if self.interconnect is None:
            raise ConfigError("interconnect", f"{self.hw.name} has no interconnect section; it cannot price "
                                              f"{op} over {n} GPUs", self.hw.path or None)
        if n > self.max_gpus_per_node:
            raise ConfigError("num_gpus", f"{self.hw.name}: {self.link} connects at most {self.max_gpus_per_node} "
                                          f"GPUs per node, got {n}")
        if nbytes == 0:
            return 0.0
        model = self._model(op, nbytes, n)
        src = self._calibration_source(op, n)
        if src is None:
            return model
        fit = self._fits[src]
        if _measured(op, n, src):
            return fit.time_s(nbytes)
        # scale the model by the measured all-reduce ratio of the nearest measured world size
        m = src[1]
        return model * fit.time_s(nbytes) / self._model("all_reduce", nbytes, m)

    def _model(self, op: str, nbytes: float, n: int) -> float:
        return min(lat + nbytes / alg for _, _, lat, alg, _ in self._candidates(op, n))

    def _calibration_source(self, op: str, n: int) -> tuple[str, int] | None:
        """The fit a prediction uses: (fit op, world size), or None (uncalibrated)."""
        if not self._fits:
            return None
        key = (op, n)
        if key not in self._srcs:
            self._srcs[key] = self._find_source(op, n)
        return self._srcs[key]

    def _find_source(self, op: str, n: int) -> tuple[str, int] | None:
        if op == "send_recv":
            ws = sorted(w for o, w in self._fits if o == "p2p")
            return ("p2p", ws[0]) if ws else None
        ws = sorted(w for o, w in self._fits if o == "all_reduce")
        if not ws:
            return None
        return "all_reduce", min(ws, key=lambda w: (abs(w - n), w))

    def _candidates(self, op: str, n: int) -> tuple[tuple[str, str, float, float, int], ...]:
        """(algorithm, protocol, latency_s, algbw_bytes_per_s, steps) per pair NCCL could pick."""
        key = (op, n)
        c = self._cands.get(key)
        if c is None:
            c = self._cands[key] = tuple(_candidates(self.interconnect, op, n))
            if not c:
                raise ConfigError("interconnect.algorithms", f"{self.hw.name}: no algorithm/protocol can run {op}",
                                  self.hw.path or None)
        return c


def _measured(op: str, n: int, src: tuple[str, int]) -> bool:
    """Whether the fit ``src`` measured exactly this (op, world size)."""
    return op == "send_recv" or (op == "all_reduce" and src == ("all_reduce", n))


def _bus_factor(op: str, algorithm: str, n: int) -> float:
    """busbw / algbw as nccl-tests reports it (doc/PERFORMANCE.md of NVIDIA/nccl-tests)."""
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter"):
        return (n - 1) / n
    return 1.0


def _candidates(ic: Interconnect, op: str, n: int):
    big = ic.busbw_bytes_per_s
    ring = ic.algorithms.get("ring", {})
    if op == "send_recv":
        for p in _P2P_PROTOCOLS:
            if p in ring:
                pp = ring[p]
                yield "p2p", p, pp.base_s + pp.step_s, min(big * pp.bw_frac, pp.max_busbw_bytes_per_s), 1
        return
    steps = 2 * (n - 1) if op == "all_reduce" else n - 1
    for p, pp in ring.items():
        busbw = min(big * pp.bw_frac, pp.max_busbw_bytes_per_s)
        yield "ring", p, pp.base_s + steps * pp.step_s, busbw * n / steps, steps
    if op == "all_reduce":
        for p, pp in ic.algorithms.get("tree", {}).items():
            busbw = min(big * pp.bw_frac, pp.max_busbw_bytes_per_s)
            yield "tree", p, pp.base_s + 2 * (n - 1) * pp.step_s, busbw / 2, 2 * (n - 1)
