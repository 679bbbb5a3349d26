"""The ``interconnect`` and ``price`` sections of a hardware profile: parsed, checked, frozen.

Models: the GPU-to-GPU link of one node as NCCL's tuning model sees it (NVIDIA/nccl
src/graph/tuning.cc): a per-direction datasheet bandwidth, the fraction of it a ring reaches
as NCCL bus bandwidth (busbw) at large sizes, and per algorithm (ring, tree) and protocol (LL,
LL128, Simple) a base latency, a latency per step and a busbw fraction; optionally NCCL
measurements fitted by ``calibrate/fit_nccl.py`` (``fitted``, summarised by ``calibrated``).
``price`` is the on-demand list price of one GPU-hour with its source. The arithmetic lives
in ``sim.cost.comm``; this module only reads and validates.

Ignores: inter-node networks (IB/RoCE), NVLS/NVLink SHARP, and which physical slots or NUMA
nodes the GPUs sit in (one figure per link class).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from sim.config import ConfigError

LINKS = ("nvlink3", "nvlink4", "nvlink5", "pcie3", "pcie4", "pcie5")
ALGORITHMS = ("ring", "tree")
PROTOCOLS = ("ll", "ll128", "simple")
FIT_OPS = ("all_reduce", "p2p")  # the ops calibrate/nccl.py measures (its CSV's `op` column)
_IC_KEYS = {"link", "max_gpus_per_node", "bandwidth_bytes_per_s", "busbw_frac", "algorithms", "calibrated",
            "fitted", "sources", "notes"}
_PROTO_KEYS = {"base_s", "step_s", "bw_frac", "max_busbw_bytes_per_s"}
_CAL_KEYS = {"data", "date", "gpus", "nccl_version", "torch", "points", "held_out_points",
             "heldout_median_abs_pct_err", "heldout_p90_abs_pct_err", "method", "unmeasured_world_sizes"}
_FIT_KEYS = {"op", "world_size", "lines", "points", "held_out_points", "heldout_median_abs_pct_err",
             "heldout_p90_abs_pct_err", "min_bytes", "max_bytes"}
_LINE_KEYS = {"alpha_s", "bandwidth_bytes_per_s", "up_to_bytes"}
_PRICE_KEYS = {"usd_per_gpu_hour", "source", "estimate"}


@dataclass(frozen=True)
class ProtocolParams:
    """One (algorithm, protocol) of NCCL's model: latency ``base_s + steps * step_s``;
    busbw ``min(busbw * bw_frac, max_busbw_bytes_per_s)``."""

    base_s: float
    step_s: float
    bw_frac: float
    max_busbw_bytes_per_s: float = math.inf


@dataclass(frozen=True)
class FittedLine:
    """``t = alpha_s + bytes / bandwidth_bytes_per_s`` for sizes up to ``up_to_bytes``."""

    alpha_s: float
    bandwidth_bytes_per_s: float
    up_to_bytes: float = math.inf


@dataclass(frozen=True)
class CommFit:
    """Measured NCCL times of one (op, world size), fitted piecewise in message size."""

    op: str
    world_size: int
    lines: tuple[FittedLine, ...]
    summary: Mapping[str, Any] = field(default_factory=dict)

    def time_s(self, nbytes: float) -> float:
        for ln in self.lines:
            if nbytes <= ln.up_to_bytes:
                return ln.alpha_s + nbytes / ln.bandwidth_bytes_per_s
        ln = self.lines[-1]
        return ln.alpha_s + nbytes / ln.bandwidth_bytes_per_s

    def line(self, nbytes: float) -> FittedLine:
        return next((ln for ln in self.lines if nbytes <= ln.up_to_bytes), self.lines[-1])


@dataclass(frozen=True)
class Interconnect:
    """The links between the GPUs of one node (see module doc)."""

    link: str
    max_gpus_per_node: int
    bandwidth_bytes_per_s: float
    busbw_frac: float
    algorithms: Mapping[str, Mapping[str, ProtocolParams]]
    fits: tuple[CommFit, ...] = ()
    calibration: Mapping[str, Any] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    notes: str = ""

    @property
    def busbw_bytes_per_s(self) -> float:
        """Bus bandwidth a large ring collective reaches with NCCL's Simple protocol."""
        return self.bandwidth_bytes_per_s * self.busbw_frac


def _num(v, key: str, src: str, *, positive: bool = True, integer: bool = False) -> float:
    bad = isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int))
    if bad or not math.isfinite(v) or (v <= 0 if positive else v < 0):
        what = "a positive integer" if integer else ("a positive number" if positive else "a non-negative number")
        raise ConfigError(key, f"expected {what}, got {v!r}", src)
    return v


def _mapping(d, key: str, src: str, allowed: set[str], required: set[str] = frozenset()) -> Mapping:
    if not isinstance(d, Mapping):
        raise ConfigError(key, "expected a mapping", src)
    bad = sorted(set(d) - allowed)
    if bad:
        raise ConfigError(f"{key}.{bad[0]}", f"unknown key; expected one of {sorted(allowed)}", src)
    missing = sorted(required - set(d))
    if missing:
        raise ConfigError(f"{key}.{missing[0]}", "missing required key", src)
    return d


def _protocol(d, key: str, src: str) -> ProtocolParams:
    _mapping(d, key, src, _PROTO_KEYS, {"base_s", "step_s", "bw_frac"})
    frac = _num(d["bw_frac"], f"{key}.bw_frac", src)
    if frac > 1.0:
        raise ConfigError(f"{key}.bw_frac", f"expected a fraction in (0, 1], got {frac}", src)
    cap = d.get("max_busbw_bytes_per_s")
    return ProtocolParams(base_s=float(_num(d["base_s"], f"{key}.base_s", src, positive=False)),
                          step_s=float(_num(d["step_s"], f"{key}.step_s", src, positive=False)),
                          bw_frac=float(frac),
                          max_busbw_bytes_per_s=math.inf if cap is None else
                          float(_num(cap, f"{key}.max_busbw_bytes_per_s", src)))


def _fit(d, key: str, src: str) -> CommFit:
    _mapping(d, key, src, _FIT_KEYS, {"op", "world_size", "lines"})
    if d["op"] not in FIT_OPS:
        raise ConfigError(f"{key}.op", f"expected one of {list(FIT_OPS)}, got {d['op']!r}", src)
    n = int(_num(d["world_size"], f"{key}.world_size", src, integer=True))
    if n < 2:
        raise ConfigError(f"{key}.world_size", f"expected >= 2, got {n}", src)
    lines_d = d["lines"]
    if not isinstance(lines_d, list) or not lines_d:
        raise ConfigError(f"{key}.lines", "expected a non-empty list", src)
    lines, prev = [], 0.0
    for j, ln in enumerate(lines_d):
        lk, last = f"{key}.lines[{j}]", j == len(lines_d) - 1
        _mapping(ln, lk, src, _LINE_KEYS, {"alpha_s", "bandwidth_bytes_per_s"} | (set() if last else {"up_to_bytes"}))
        if last and "up_to_bytes" in ln:
            raise ConfigError(f"{lk}.up_to_bytes", "the last line is unbounded (no up_to_bytes)", src)
        up = math.inf if last else float(_num(ln["up_to_bytes"], f"{lk}.up_to_bytes", src))
        if up <= prev:
            raise ConfigError(f"{lk}.up_to_bytes", "expected increasing size ranges", src)
        lines.append(FittedLine(float(_num(ln["alpha_s"], f"{lk}.alpha_s", src, positive=False)),
                                float(_num(ln["bandwidth_bytes_per_s"], f"{lk}.bandwidth_bytes_per_s", src)), up))
        prev = up
    summary = {k: v for k, v in d.items() if k not in ("op", "world_size", "lines")}
    return CommFit(op=str(d["op"]), world_size=n, lines=tuple(lines), summary=summary)


def parse_interconnect(d, src: str, key: str = "interconnect") -> Interconnect:
    """The profile's ``interconnect`` mapping as an :class:`Interconnect` (strict)."""
    _mapping(d, key, src, _IC_KEYS, {"link", "max_gpus_per_node", "bandwidth_bytes_per_s", "busbw_frac",
                                     "algorithms"})
    if d["link"] not in LINKS:
        raise ConfigError(f"{key}.link", f"expected one of {list(LINKS)}, got {d['link']!r}", src)
    frac = _num(d["busbw_frac"], f"{key}.busbw_frac", src)
    if frac > 1.0:
        raise ConfigError(f"{key}.busbw_frac", f"expected a fraction in (0, 1], got {frac}", src)
    algs_d = _mapping(d["algorithms"], f"{key}.algorithms", src, set(ALGORITHMS), {"ring"})
    algs: dict[str, dict[str, ProtocolParams]] = {}
    for a, protos in algs_d.items():
        ak = f"{key}.algorithms.{a}"
        _mapping(protos, ak, src, set(PROTOCOLS))
        if not protos:
            raise ConfigError(ak, f"expected at least one protocol of {list(PROTOCOLS)}", src)
        algs[a] = {p: _protocol(v, f"{ak}.{p}", src) for p, v in protos.items()}
    cal = d.get("calibrated", False)
    fits_d = d.get("fitted")
    if cal is False:
        if fits_d:
            raise ConfigError(f"{key}.fitted", "fitted parameters need a 'calibrated' summary (not false)", src)
        cal_map: Mapping = {}
    else:
        cal_map = _mapping(cal, f"{key}.calibrated", src, _CAL_KEYS, {"data", "date", "points"})
        if not isinstance(fits_d, list) or not fits_d:
            raise ConfigError(f"{key}.fitted", "a calibrated interconnect needs a non-empty list of fits", src)
    fits = tuple(_fit(f, f"{key}.fitted[{i}]", src) for i, f in enumerate(fits_d or []))
    seen = set()
    for i, f in enumerate(fits):
        if (f.op, f.world_size) in seen:
            raise ConfigError(f"{key}.fitted[{i}]", f"a second fit of ({f.op}, {f.world_size})", src)
        seen.add((f.op, f.world_size))
    n_max = int(_num(d["max_gpus_per_node"], f"{key}.max_gpus_per_node", src, integer=True))
    sources = d.get("sources") or []
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise ConfigError(f"{key}.sources", "expected a list of strings", src)
    return Interconnect(link=str(d["link"]), max_gpus_per_node=n_max,
                        bandwidth_bytes_per_s=float(_num(d["bandwidth_bytes_per_s"], f"{key}.bandwidth_bytes_per_s",
                                                         src)),
                        busbw_frac=float(frac), algorithms=algs, fits=fits, calibration=dict(cal_map),
                        sources=tuple(sources), notes=str(d.get("notes", "")))


def parse_price(d, src: str, key: str = "price") -> tuple[float, str, bool]:
    """``(usd_per_gpu_hour, source, estimate)`` from the profile's ``price`` mapping."""
    _mapping(d, key, src, _PRICE_KEYS, {"usd_per_gpu_hour", "source"})
    usd = float(_num(d["usd_per_gpu_hour"], f"{key}.usd_per_gpu_hour", src))
    if not isinstance(d["source"], str) or not d["source"].strip():
        raise ConfigError(f"{key}.source", "expected a non-empty string (URL or provider page, basis, date)", src)
    est = d.get("estimate", False)
    if not isinstance(est, bool):
        raise ConfigError(f"{key}.estimate", f"expected true or false, got {est!r}", src)
    return usd, d["source"], est
