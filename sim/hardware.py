"""GPU hardware profiles: datasheet peaks plus achieved-efficiency curves.

Models: one GPU as peak dense FLOP rates per dtype, HBM capacity and bandwidth, L2, SM
count and link bandwidths (datasheet figures with their source), and, per kernel backend
and op kind, an *affine roofline* efficiency: an op moving B bytes and doing F FLOPs takes

    t = max((F + F0) / (P * compute_frac), (B + B0) / (W * bandwidth_frac)) * corr(x) + launch_s

where P, W are the peaks, (compute_frac, bandwidth_frac) the asymptotic achieved fractions,
(F0, B0) the fixed work-equivalents that make small problems inefficient, and corr(x) an
optional piecewise-linear correction in log2 of the op's size feature fitted from residuals.
A calibrated profile adds *shape tables*: for each measured shape family (a GEMM's (n, k), an
attention head configuration, an elementwise op at one width) the ratio measured / (affine
roofline + launch) at each measured size, interpolated in log-log space between measured
sizes (never across a kernel's tile-class or wave break) and clamped beyond them; an op of a
family with a table costs (max(...) + launch_s) x ratio (for a GEMM kernel with fixed tiles,
``gemm_tiles``, the compute roof in whole waves of tiles), any other op the formula above.
Attention curves fitted on launches of many sequences add their terms (``per_block_s``,
``block_diag_frac``, ``per_seq_s``, ``chain_s_per_token``, ``chain_bytes_per_s``; priced by
sim.cost.ops.many_seq_s, absent = no effect). Uncalibrated profiles carry documented defaults
(``efficiency.source``).
The node's GPU-to-GPU links and the on-demand price of a GPU-hour come from the profile's
``interconnect`` and ``price`` sections (parsed by sim.interconnect, priced by sim.cost.comm).

Ignores: clock throttling, power limits, ECC, MIG partitions.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from sim.config import ConfigError, read_yaml
from sim.interconnect import Interconnect, parse_interconnect, parse_price

PROFILES_DIR = Path(__file__).resolve().parent.parent / "hardware_profiles"
OP_KINDS = ("gemm", "attn_prefill", "attn_decode", "elementwise")
BACKENDS = ("vendor", "triton")


# shape-table families and axes per op kind (the key's values and the axis coordinates of an op)
TABLE_KEYS = {"gemm": ("n", "k", "dtype"), "attn_prefill": ("heads", "kv_heads", "head_dim", "chunked", "dtype"),
              "attn_decode": ("heads", "kv_heads", "head_dim", "dtype"), "elementwise": ("op", "hidden", "dtype")}
# what a shape table's ratio multiplies: the affine roofline + launch ("roofline": GEMMs and
# elementwise ops, whose tables run along the token count, where the roofline is already linear)
# or the corrected curve ("curve": attention, whose families mix shapes of one total work)
TABLE_BASE = {"gemm": "roofline", "elementwise": "roofline", "attn_prefill": "curve", "attn_decode": "curve"}
TABLE_AXES = {"gemm": ("m",), "attn_prefill": ("batch", "ideal_ns"), "attn_decode": ("batch", "context"),
              "elementwise": ("tokens",)}


def _interp_class(xs: tuple[float, ...], ys: tuple[float, ...], x: float) -> float:
    """Linear interpolation of ys over increasing xs at x, clamped at both ends."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1 = xs[i - 1], xs[i]
    return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0)


@dataclass(frozen=True)
class ShapeTable:
    """Measured/curve ratios of one shape family, on one or two log2 axes.

    ``rows``: ((row coordinate, xs, log ratios), ...) with coordinates in log2 (one row with
    coordinate 0.0 for a one-axis table). ``breaks``: log2 sizes on the last axis where the
    kernel changes tile class; a query interpolates only between points of its own class
    (a value equal to a break belongs to the class below it).
    """

    key: tuple
    rows: tuple[tuple[float, tuple[float, ...], tuple[float, ...]], ...]
    breaks: tuple[float, ...] = ()

    def __post_init__(self):
        classes = []
        for _, xs, ys in self.rows:
            by_class: dict[int, tuple[list, list]] = {}
            for x, y in zip(xs, ys):
                c = bisect.bisect_left(self.breaks, x)
                by_class.setdefault(c, ([], []))
                by_class[c][0].append(x)
                by_class[c][1].append(y)
            classes.append({c: (tuple(a), tuple(b)) for c, (a, b) in by_class.items()})
        object.__setattr__(self, "_classes", classes)
        object.__setattr__(self, "_row_coords", tuple(r[0] for r in self.rows))

    def _row(self, i: int, x: float) -> float:
        if self.breaks:
            pts = self._classes[i].get(bisect.bisect_left(self.breaks, x))
            if pts is not None:
                return _interp_class(pts[0], pts[1], x)
        _, xs, ys = self.rows[i]
        return _interp_class(xs, ys, x)

    def log_factor(self, coords: tuple[float, ...]) -> float:
        """Natural log of the ratio at log2 ``coords`` (one per axis)."""
        x = coords[-1]
        rc = self._row_coords
        if len(rc) == 1:
            return self._row(0, x)
        r = coords[0]
        if r <= rc[0]:
            return self._row(0, x)
        if r >= rc[-1]:
            return self._row(len(rc) - 1, x)
        i = bisect.bisect_right(rc, r)
        y0, y1 = self._row(i - 1, x), self._row(i, x)
        return y0 + (y1 - y0) * (r - rc[i - 1]) / (rc[i] - rc[i - 1])


@dataclass(frozen=True)
class OpEfficiency:
    """Achieved fraction of peak for one op kind on one backend (see module doc)."""

    compute_frac: float = 0.7
    bandwidth_frac: float = 0.8
    fixed_flops: float = 0.0
    fixed_bytes: float = 0.0
    launch_s: float = 4.0e-6
    corr_log2_x: tuple[float, ...] = ()
    corr_factor: tuple[float, ...] = ()
    tables: tuple[ShapeTable, ...] = ()
    # GEMM kernels with fixed tile configs (the Triton GEMM): per dtype, ((last M, BLOCK_M,
    # BLOCK_N), ...) by increasing M class, the last class unbounded (last M = inf); a shape
    # table's base then charges whole waves of tiles (sim.cost.ops.gemm_wave_flops)
    gemm_tiles: Mapping[str, tuple[tuple[float, int, int], ...]] = field(default_factory=dict)
    # many-sequence terms (sim.cost.ops.many_seq_s; 0 = absent): the fixed cost of one program of
    # a flash-style attention kernel, added to the curve's or table's price: per query head per
    # 128-query block (attn_prefill), per sequence per KV head (attn_decode); and the serial chain
    # of a decode launch's longest program, a floor on its price: seconds per token walked plus
    # that token's K/V bytes at one program's rate (attn_decode)
    per_block_s: float = 0.0
    per_seq_s: float = 0.0
    # prefill work in whole 128-query blocks (sim.cost.ops.prefill_block_flops): None = the causal
    # pairs' FLOPs; a fraction = whole blocks, the diagonal band's tiles at that fraction
    block_diag_frac: float | None = None
    chain_s_per_token: float = 0.0
    chain_bytes_per_s: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "_tables", {t.key: t for t in self.tables})

    def table_factor(self, key: tuple, coords: tuple[float, ...]) -> float | None:
        """Measured / (affine roofline + launch) ratio of the shape family ``key`` at log2
        ``coords``; None for a family without a table."""
        t = self._tables.get(key)
        return math.exp(t.log_factor(coords)) if t is not None else None

    def correction(self, x: float) -> float:
        """Multiplicative residual correction at size feature ``x`` (1.0 if none)."""
        xs = self.corr_log2_x
        if not xs or x <= 0:
            return 1.0
        lx = math.log2(x)
        if lx <= xs[0]:
            return self.corr_factor[0]
        if lx >= xs[-1]:
            return self.corr_factor[-1]
        i = bisect.bisect_right(xs, lx)
        x0, x1 = xs[i - 1], xs[i]
        y0, y1 = self.corr_factor[i - 1], self.corr_factor[i]
        return y0 + (y1 - y0) * (lx - x0) / (x1 - x0)


@dataclass(frozen=True)
class HardwareProfile:
    """One GPU: datasheet figures and efficiency curves per backend and op kind."""

    name: str
    display_name: str
    memory_bytes: float
    memory_bandwidth_bytes_per_s: float
    peak_flops_per_s: Mapping[str, float]
    l2_bytes: float
    num_sms: int
    nvlink_bandwidth_bytes_per_s: float
    pcie_bandwidth_bytes_per_s: float
    sources: tuple[str, ...] = ()
    notes: str = ""
    default_backend: str = "vendor"
    efficiency_source: str = "default"
    efficiency: Mapping[str, Mapping[str, OpEfficiency]] = field(default_factory=dict)
    calibration: Mapping[str, Any] = field(default_factory=dict)
    path: str = ""
    # GPU-to-GPU links of one node (sim.interconnect; priced by sim.cost.comm); None if the profile has none
    interconnect: Interconnect | None = None
    price_usd_per_gpu_hour: float | None = None  # on-demand list price, see price_source
    price_source: str = ""
    price_is_estimate: bool = False

    def peak_flops(self, dtype: str) -> float:
        d = {"bfloat16": "bf16", "float16": "fp16", "float8_e4m3fn": "fp8", "float32": "fp32"}.get(dtype, dtype)
        v = self.peak_flops_per_s.get(d)
        if v is None and d == "bf16":
            v = self.peak_flops_per_s.get("fp16")  # e.g. T4 runs bf16 models in fp16
        if v is None:
            raise ConfigError("hardware", f"{self.name} has no {d} peak; it has {sorted(self.peak_flops_per_s)}")
        return float(v)

    def op_efficiency(self, op_kind: str, backend: str | None = None) -> OpEfficiency:
        be = backend or self.default_backend
        table = self.efficiency.get(be)
        if table is None:
            raise ConfigError("backend", f"{self.name} has no efficiency curves for backend '{be}'; it has {sorted(self.efficiency)}")
        eff = table.get(op_kind)
        if eff is None:
            raise ConfigError("op", f"{self.name}/{be} has no curve for '{op_kind}'")
        return eff


_REQUIRED = ("name", "display_name", "memory_bytes", "memory_bandwidth_bytes_per_s", "peak_flops_per_s",
             "l2_bytes", "num_sms", "nvlink_bandwidth_bytes_per_s", "pcie_bandwidth_bytes_per_s")
_EFF_KEYS = {"compute_frac", "bandwidth_frac", "fixed_flops", "fixed_bytes", "launch_s", "correction", "fit",
             "shape_tables", "gemm_tiles", "per_block_s", "per_seq_s", "chain_s_per_token", "chain_bytes_per_s",
             "block_diag_frac"}
# the many-sequence terms and the one op kind each belongs to (sim.cost.ops.many_seq_s)
TERM_KINDS = {"per_block_s": "attn_prefill", "block_diag_frac": "attn_prefill", "per_seq_s": "attn_decode",
              "chain_s_per_token": "attn_decode", "chain_bytes_per_s": "attn_decode"}


def _parse_tiles(d, key: str, src: str) -> dict[str, tuple[tuple[float, int, int], ...]]:
    """``{dtype: [{up_to_m: 16, block_m: 16, block_n: 64}, ..., {block_m: 128, block_n: 256}]}``:
    the tile config per M class (increasing ``up_to_m``; the last class has none: unbounded)."""
    if not isinstance(d, Mapping) or not d:
        raise ConfigError(key, "expected a mapping dtype -> list of tile classes", src)
    out = {}
    for dt, classes in d.items():
        k = f"{key}.{dt}"
        if not isinstance(classes, list) or not classes:
            raise ConfigError(k, "expected a non-empty list of tile classes", src)
        rows, prev = [], 0.0
        for j, c in enumerate(classes):
            ck, last = f"{k}[{j}]", j == len(classes) - 1
            want = {"block_m", "block_n"} | (set() if last else {"up_to_m"})
            if not isinstance(c, Mapping) or set(c) != want:
                raise ConfigError(ck, f"expected the keys {sorted(want)}"
                                  + (" (the last class is unbounded: no up_to_m)" if last else ""), src)
            vals = [c[n] for n in sorted(want)]
            if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in vals):
                raise ConfigError(ck, "expected positive integers", src)
            up = math.inf if last else float(c["up_to_m"])
            if up <= prev:
                raise ConfigError(f"{ck}.up_to_m", "expected increasing M classes", src)
            rows.append((up, int(c["block_m"]), int(c["block_n"])))
            prev = up
        out[str(dt)] = tuple(rows)
    return out


def _log2_list(v, key: str, src: str) -> tuple[float, ...]:
    if not isinstance(v, list) or not v or any(isinstance(x, bool) or not isinstance(x, (int, float)) or x <= 0
                                               for x in v):
        raise ConfigError(key, f"expected a non-empty list of positive numbers, got {v!r}", src)
    out = tuple(math.log2(float(x)) for x in v)
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ConfigError(key, "expected increasing values", src)
    return out


def _parse_table(d: Mapping, op: str, key: str, src: str) -> ShapeTable:
    """One shape table: {key: {...}, breaks: [...], rows: [{<row axis>: v, <axis>: [...], factor: [...]}]}."""
    if not isinstance(d, Mapping) or set(d) - {"key", "breaks", "rows"} or "key" not in d or "rows" not in d:
        raise ConfigError(key, "expected a mapping with keys key, rows[, breaks]", src)
    names = TABLE_KEYS[op]
    k = d["key"]
    if not isinstance(k, Mapping) or set(k) != set(names):
        raise ConfigError(f"{key}.key", f"expected the keys {list(names)}", src)
    axes = TABLE_AXES[op]
    rows = []
    for j, r in enumerate(d["rows"] or []):
        rk = f"{key}.rows[{j}]"
        want = set(axes) | {"factor"}
        if not isinstance(r, Mapping) or set(r) != want:
            raise ConfigError(rk, f"expected the keys {sorted(want)}", src)
        xs = _log2_list(r[axes[-1]], f"{rk}.{axes[-1]}", src)
        fs = r["factor"]
        if not isinstance(fs, list) or len(fs) != len(xs) or any(not isinstance(f, (int, float)) or f <= 0 for f in fs):
            raise ConfigError(f"{rk}.factor", f"expected {len(xs)} positive numbers", src)
        rc = math.log2(float(r[axes[0]])) if len(axes) == 2 else 0.0
        rows.append((rc, xs, tuple(math.log(float(f)) for f in fs)))
    if not rows or any(b[0] <= a[0] for a, b in zip(rows, rows[1:])):
        raise ConfigError(f"{key}.rows", "expected at least one row, rows in increasing order", src)
    breaks = _log2_list(d["breaks"], f"{key}.breaks", src) if d.get("breaks") else ()
    return ShapeTable(key=tuple(k[n] for n in names), rows=tuple(rows), breaks=breaks)


def _parse_eff(d: Mapping, key: str, src: str, op: str = "gemm") -> OpEfficiency:
    if not isinstance(d, Mapping):
        raise ConfigError(key, "expected a mapping", src)
    bad = set(d) - _EFF_KEYS
    if bad:
        raise ConfigError(f"{key}.{sorted(bad)[0]}", f"unknown key; expected one of {sorted(_EFF_KEYS)}", src)
    kw: dict[str, Any] = {}
    for k, kind in TERM_KINDS.items():
        if k in d and kind != op:
            raise ConfigError(f"{key}.{k}", f"only an {kind} curve has {k}", src)
    for k in ("compute_frac", "bandwidth_frac", "fixed_flops", "fixed_bytes", "launch_s", *TERM_KINDS):
        if k in d:
            v = d[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"{key}.{k}", f"expected a non-negative number, got {v!r}", src)
            kw[k] = float(v)
    for k in ("compute_frac", "bandwidth_frac"):
        if k in kw and not 0 < kw[k] <= 1.5:
            raise ConfigError(f"{key}.{k}", f"expected a fraction in (0, 1.5], got {kw[k]}", src)
    if kw.get("block_diag_frac", 0.0) > 1.0:
        raise ConfigError(f"{key}.block_diag_frac", f"expected a fraction in [0, 1], got {kw['block_diag_frac']}", src)
    corr = d.get("correction")
    if corr:
        xs, ys = corr.get("log2_x", []), corr.get("factor", [])
        if len(xs) != len(ys) or any(b <= a for a, b in zip(xs, xs[1:])):
            raise ConfigError(f"{key}.correction", "expected log2_x increasing and as long as factor", src)
        kw["corr_log2_x"] = tuple(float(x) for x in xs)
        kw["corr_factor"] = tuple(float(y) for y in ys)
    tabs = d.get("shape_tables")
    if tabs:
        if not isinstance(tabs, list):
            raise ConfigError(f"{key}.shape_tables", "expected a list", src)
        kw["tables"] = tuple(_parse_table(t, op, f"{key}.shape_tables[{i}]", src) for i, t in enumerate(tabs))
    if "gemm_tiles" in d:
        if op != "gemm":
            raise ConfigError(f"{key}.gemm_tiles", "only a gemm curve has tile configs", src)
        kw["gemm_tiles"] = _parse_tiles(d["gemm_tiles"], f"{key}.gemm_tiles", src)
    return OpEfficiency(**kw)


def profile_from_dict(d: Mapping, src: str = "<dict>") -> HardwareProfile:
    for k in _REQUIRED:
        if k not in d:
            raise ConfigError(k, "missing required key", src)
    eff_section = d.get("efficiency") or {}
    eff: dict[str, dict[str, OpEfficiency]] = {}
    for be, ops in (eff_section.get("backends") or {}).items():
        if be not in BACKENDS:
            raise ConfigError(f"efficiency.backends.{be}", f"unknown backend; expected one of {list(BACKENDS)}", src)
        eff[be] = {}
        for op, params in (ops or {}).items():
            if op not in OP_KINDS:
                raise ConfigError(f"efficiency.backends.{be}.{op}", f"unknown op kind; expected one of {list(OP_KINDS)}", src)
            eff[be][op] = _parse_eff(params, f"efficiency.backends.{be}.{op}", src, op)
        for op in OP_KINDS:
            eff[be].setdefault(op, OpEfficiency())
    if not eff:
        eff = {"vendor": {op: OpEfficiency() for op in OP_KINDS}}
    for k in ("memory_bytes", "memory_bandwidth_bytes_per_s", "l2_bytes"):
        if not isinstance(d[k], (int, float)) or d[k] <= 0:
            raise ConfigError(k, f"expected a positive number, got {d[k]!r}", src)
    ic = parse_interconnect(d["interconnect"], src) if d.get("interconnect") is not None else None
    price = parse_price(d["price"], src) if d.get("price") is not None else (None, "", False)
    return HardwareProfile(
        name=str(d["name"]), display_name=str(d["display_name"]),
        memory_bytes=float(d["memory_bytes"]),
        memory_bandwidth_bytes_per_s=float(d["memory_bandwidth_bytes_per_s"]),
        peak_flops_per_s={str(k): float(v) for k, v in d["peak_flops_per_s"].items() if v is not None},
        l2_bytes=float(d["l2_bytes"]), num_sms=int(d["num_sms"]),
        nvlink_bandwidth_bytes_per_s=float(d["nvlink_bandwidth_bytes_per_s"] or 0),
        pcie_bandwidth_bytes_per_s=float(d["pcie_bandwidth_bytes_per_s"]),
        sources=tuple(d.get("sources") or ()), notes=str(d.get("notes", "")),
        default_backend=str(eff_section.get("default_backend", "vendor")),
        efficiency_source=str(eff_section.get("source", "default")),
        efficiency=eff, calibration=dict(d.get("calibration") or {}), path=src,
        interconnect=ic, price_usd_per_gpu_hour=price[0], price_source=price[1], price_is_estimate=price[2],
    )


def shipped_hardware() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_hardware(name_or_path: str, base_dir: str | Path = ".") -> HardwareProfile:
    """A shipped profile by name (``hardware_profiles/<name>.yaml``) or a path to one."""
    p = PROFILES_DIR / f"{name_or_path}.yaml"
    if not p.exists():
        p = Path(name_or_path)
        if not p.is_absolute():
            p = Path(base_dir) / p
        if not p.exists() or p.suffix not in (".yaml", ".yml"):
            raise ConfigError("hardware", f"unknown hardware '{name_or_path}'; expected one of {shipped_hardware()} "
                                          "or a path to a profile YAML")
    return profile_from_dict(read_yaml(p), str(p))


class _ProfileDumper(yaml.SafeDumper):
    """Lists of plain numbers or strings on one line (shape tables stay readable)."""


def _list_repr(dumper, data):
    flow = bool(data) and all(isinstance(x, (int, float, str)) and not isinstance(x, bool) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ProfileDumper.add_representer(list, _list_repr)


def dump_profile(d: Mapping) -> str:
    return yaml.dump(dict(d), Dumper=_ProfileDumper, sort_keys=False, width=120)
