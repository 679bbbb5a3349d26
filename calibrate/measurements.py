"""Reading the runner's CSVs: columns, FLOP/byte counts checked against sim.cost.ops, the
held-out split, one prepared frame per op kind, and the provenance summary (for calibrate.fit
and calibrate.report).

The many-sequence CSVs (attn_prefill_multi.csv, attn_decode_multi.csv; optional) are folded
into the prefill and decode frames (``fold_multi``): a launch of equal lengths becomes an
ordinary row (its rows extend the tables), a mixed launch a row priced as the simulator prices
it (``MultiPrefill``; decode: AttnDecode over the mean context, i.e. the number of requests
and the summed context, with the longest context for the serial chain).  Column ``src`` says
which: grid, many_equal, many_mixed.  ``prepare`` adds the units of the many-sequence terms
(``programs_``; prefill: ``blk_off_``, ``blk_diag_``; decode: ``chain_tok_``, ``chain_btok_``).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from calibrate import grids, grids_multi
from sim.config import ConfigError
from sim.cost.ops import (PREFILL_BLOCK_M, AttnDecode, AttnPrefill, Elementwise, Gemm, prefill_block_flops,
                          prefill_block_pairs, prefill_chain_flops)
from sim.hardware import BACKENDS, OP_KINDS

SHAPE_COLS = {"gemm": ["m", "n", "k"],
              "attn_prefill": ["batch", "seq_q", "seq_kv", "heads", "kv_heads", "head_dim"],
              "attn_decode": ["batch", "context", "heads", "kv_heads", "head_dim"],
              "elementwise": ["op", "tokens", "hidden"],
              "attn_prefill_multi": ["batch", "lengths", "heads", "kv_heads", "head_dim"],
              "attn_decode_multi": ["batch", "contexts", "heads", "kv_heads", "head_dim"]}
MULTI_KINDS = {"attn_prefill_multi": "attn_prefill", "attn_decode_multi": "attn_decode"}
SETS = ("grid", "many_equal", "many_mixed")  # column src of a folded prefill / decode frame
TARGETS = {"median_abs_pct_err": 5.0, "p90_abs_pct_err": 15.0}
# the many-sequence launches' targets (the issue asking for them: median <= 5 %, p90 <= 12 %)
MANY_SEQ_TARGETS = {"median_abs_pct_err": 5.0, "p90_abs_pct_err": 12.0}
HOLDOUT_MOD = 4
COUNT_RTOL = 1e-3


class FitError(ValueError):
    """A problem with the measurement folder (one-line message)."""


# ------------------------------------------------------------------------------ reading
def read_measurements(data_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The op CSVs present in ``data_dir`` (gemm, attn_prefill, attn_decode, elementwise, and
    the many-sequence attn_prefill_multi and attn_decode_multi), as read (see ``fold_multi``)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise FitError(f"{d}: no such directory")
    out = {}
    for kind in list(OP_KINDS) + list(MULTI_KINDS):
        p = d / f"{kind}.csv"
        if not p.exists():
            continue
        try:
            df = pd.read_csv(p, dtype={"lengths": str, "contexts": str})
        except Exception as e:  # noqa: BLE001
            raise FitError(f"{p}: unreadable CSV ({type(e).__name__}: {e})") from None
        missing = [c for c in grids.COLUMNS[kind] if c not in df.columns]
        if missing:
            raise FitError(f"{p}: missing columns {missing}; expected {grids.COLUMNS[kind]}")
        t = pd.to_numeric(df["time_s"], errors="coerce")
        if t.isna().any() or (t <= 0).any():
            raise FitError(f"{p}: time_s must be positive numbers (row {int(np.argmax(t.isna() | (t <= 0))) + 2})")
        df["time_s"] = t.astype(float)
        df["backend"] = df["backend"].astype(str)
        df["dtype"] = df["dtype"].astype(str)
        if kind in MULTI_KINDS:
            _check_multi(p, kind, df)
        out[kind] = df
    if not out:
        raise FitError(f"{d}: no calibration CSVs ({', '.join(k + '.csv' for k in OP_KINDS)})")
    return out


def _check_multi(p: Path, kind: str, df: pd.DataFrame) -> None:
    """Every row's length list parses and agrees with its batch / max / sum columns."""
    col, prior = ("lengths", True) if kind == "attn_prefill_multi" else ("contexts", False)
    mx, sm = ("max_seq_q", "sum_seq_q") if prior else ("max_context", "sum_context")
    for i, r in enumerate(df.to_dict("records")):
        try:
            seqs = grids_multi.expand_lengths(r[col], allow_prior=prior)
        except ValueError as e:
            raise FitError(f"{p} row {i + 2}: {col}: {e}") from None
        news = [n for n, _ in seqs]
        for name, want in (("batch", len(seqs)), (mx, max(news)), (sm, sum(news))):
            if pd.isna(r[name]) or int(r[name]) != want:
                raise FitError(f"{p} row {i + 2}: {name} {r[name]} disagrees with {col} {r[col]!r} ({want})")


def fold_multi(frames: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """``frames`` with each many-sequence frame folded into its op's (column ``src``: grid,
    many_equal, many_mixed; ``lengths`` holds the canonical length list of a many-sequence
    row).  Without many-sequence frames, ``frames`` unchanged."""
    out = {k: v for k, v in frames.items() if k not in MULTI_KINDS}
    for mk, kind in MULTI_KINDS.items():
        if mk not in frames:
            continue
        m = frames[mk]
        col, prior = ("lengths", True) if kind == "attn_prefill" else ("contexts", False)
        rows = []
        for r in m.to_dict("records"):
            ents = grids_multi.parse_lengths(r[col], allow_prior=prior)
            seqs = [(n, p) for n, p, c in ents for _ in range(c)]
            canon = grids_multi.format_lengths(seqs)
            row = {c: r[c] for c in ("op", "backend", "dtype", "heads", "kv_heads", "head_dim", "time_s",
                                     "flops", "bytes")}
            row.update(op=kind, batch=len(seqs), lengths=canon, src="many_equal" if len(ents) == 1 else "many_mixed")
            n0, p0, _ = ents[0]
            eq = len(ents) == 1  # a mixed launch has no single length: NA (make_op reads ``lengths``)
            if kind == "attn_prefill":
                row.update(seq_q=n0 if eq else pd.NA, seq_kv=n0 + p0 if eq else pd.NA)
            else:
                row.update(context=n0 if eq else pd.NA, block_size=r["block_size"])
            rows.append(row)
        base = out.get(kind)
        base = (base.assign(src="grid", lengths=None) if base is not None
                else pd.DataFrame(columns=grids.COLUMNS[kind] + ["src", "lengths"]))
        df = pd.concat([base, pd.DataFrame(rows)], ignore_index=True)
        # integer shape columns stay integers (shape keys, hence the held-out split, print them)
        ints = ["batch", "heads", "kv_heads", "head_dim"] + (["seq_q", "seq_kv"] if kind == "attn_prefill"
                                                            else ["context", "block_size"])
        out[kind] = df.astype({c: "Int64" for c in ints})
    return out


def read_provenance(data_dir: str | Path) -> dict:
    p = Path(data_dir) / "provenance.json"
    return json.loads(p.read_text()) if p.exists() else {}


@dataclass(frozen=True)
class MultiPrefill:
    """A varlen prefill launch of sequences of mixed lengths, as the simulator prices one
    (sim.cost.roofline's ``_attn_prefill``): the summed FLOPs and bytes of each sequence's
    AttnPrefill(1, new, new + prior), its table row (the number of sequences, or of 128-query
    blocks when some sequence has a prior context) and the longest sequence's serial chain."""

    seqs: tuple[tuple[int, int, int], ...]  # (new, prior, count)
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str = "bf16"
    kind = "attn_prefill"

    def _each(self):
        return [(AttnPrefill(1, n, n + p, self.heads, self.kv_heads, self.head_dim, self.dtype), c)
                for n, p, c in self.seqs]

    def flops(self) -> float:
        return float(sum(op.flops() * c for op, c in self._each()))

    def bytes(self) -> float:
        return float(sum(op.bytes() * c for op, c in self._each()))

    def chunked(self) -> bool:
        return any(p > 0 for _, p, _ in self.seqs)

    def table_key(self) -> tuple:
        return (self.heads, self.kv_heads, self.head_dim, int(self.chunked()), self.dtype)

    def chain_flops(self) -> float:
        return prefill_chain_flops(self.head_dim, max(n + p for n, p, _ in self.seqs))

    def query_blocks(self) -> int:
        """128-query blocks of the launch (sum over sequences of ceil(new / 128))."""
        return sum(c * -(-n // PREFILL_BLOCK_M) for n, _, c in self.seqs)

    def programs(self) -> int:
        """Programs that do work: one per query head per query block (AttnPrefill.programs)."""
        return self.heads * self.query_blocks()

    def block_pairs(self) -> tuple[int, int]:
        """(off-diagonal, diagonal) pairs of whole 128-query blocks, summed (AttnPrefill.block_pairs)."""
        off = diag = 0
        for n, p, c in self.seqs:
            o, d = prefill_block_pairs(n, p)
            off, diag = off + c * o, diag + c * d
        return off, diag

    def block_flops(self, diag_frac: float) -> float:
        return prefill_block_flops(self.heads, self.head_dim, *self.block_pairs(), diag_frac)

    def table_row(self) -> int:
        return self.query_blocks() if self.chunked() else sum(c for _, _, c in self.seqs)

    def table_coords(self, ideal_ns: float) -> tuple[float, ...]:
        return (math.log2(self.table_row()), math.log2(ideal_ns))


def _mixed(r: Mapping) -> bool:
    return r.get("src") == "many_mixed"


def make_op(kind: str, r: Mapping):
    """The sim.cost.ops object for one CSV row (a folded mixed launch: as the simulator prices it)."""
    if _mixed(r):
        if kind == "attn_prefill":
            return MultiPrefill(tuple(grids_multi.parse_lengths(r["lengths"])), int(r["heads"]), int(r["kv_heads"]),
                                int(r["head_dim"]), r["dtype"])
        ents = grids_multi.parse_lengths(r["lengths"], allow_prior=False)
        total = sum(n * c for n, _, c in ents)
        return AttnDecode(int(r["batch"]), total / int(r["batch"]), int(r["heads"]), int(r["kv_heads"]),
                          int(r["head_dim"]), r["dtype"], max_context=max(n for n, _, _ in ents))
    if kind == "gemm":
        return Gemm(int(r["m"]), int(r["n"]), int(r["k"]), r["dtype"])
    if kind == "attn_prefill":
        return AttnPrefill(int(r["batch"]), int(r["seq_q"]), int(r["seq_kv"]), int(r["heads"]),
                           int(r["kv_heads"]), int(r["head_dim"]), r["dtype"])
    if kind == "attn_decode":
        return AttnDecode(int(r["batch"]), int(r["context"]), int(r["heads"]), int(r["kv_heads"]),
                          int(r["head_dim"]), r["dtype"])
    return Elementwise(str(r["op"]), int(r["tokens"]), int(r["hidden"]), r["dtype"])


def shape_key(kind: str, r: Mapping) -> str:
    """The shape's identity (hashed for the held-out split): a mixed launch by its length list."""
    if _mixed(r):
        mk = {v: k for k, v in MULTI_KINDS.items()}[kind]
        r = dict(r, contexts=r["lengths"])
        return f"{mk}:{r['dtype']}:" + ",".join(f"{c}={r[c]}" for c in SHAPE_COLS[mk])
    return f"{kind}:{r['dtype']}:" + ",".join(f"{c}={r[c]}" for c in SHAPE_COLS[kind])


def _marked_heldout(kind: str, r: Mapping) -> bool:
    ln = r.get("lengths")
    if isinstance(ln, str) and kind in ("attn_prefill", "attn_decode"):
        marked = grids_multi.PREFILL_MULTI_HELDOUT if kind == "attn_prefill" else grids_multi.DECODE_MULTI_HELDOUT
        return ln in set(marked)
    if kind == "gemm":
        return int(r["m"]) in grids.GEMM_M_HELDOUT
    if kind == "attn_prefill":
        return (int(r["batch"]), int(r["seq_q"]), int(r["seq_kv"])) in set(grids.PREFILL_HELDOUT)
    if kind == "attn_decode":
        return (int(r["batch"]), int(r["context"])) in set(grids.DECODE_HELDOUT)
    return False


def is_heldout(kind: str, r: Mapping) -> bool:
    """Deterministic split: grid-marked held-out shapes, plus hash(shape) % 4 == 0."""
    h = int(hashlib.sha1(shape_key(kind, r).encode()).hexdigest()[:8], 16)
    return _marked_heldout(kind, r) or h % HOLDOUT_MOD == 0


def _peak_or_nan(hw, dtype: str) -> float:
    try:
        return hw.peak_flops(dtype)
    except ConfigError:
        return float("nan")


def prepare(kind: str, df: pd.DataFrame, hw) -> pd.DataFrame:
    """Rows of one op file with flops/bytes from sim.cost.ops (checked against the CSV),
    peaks, ideal time and the held-out flag.  Drops the elementwise 'launch' rows."""
    if kind == "elementwise":
        df = df[df["op"] != "launch"]
        # eager-PyTorch rotary is ~10 small launches, host-bound (no engine runs it): kept in the
        # CSV, not fitted; the vendor curve prices a fused rotary like the other elementwise ops
        vr = (df["op"] == "rotary") & (df["backend"] == "vendor")
        n_vr = int(vr.sum())
        df = df[~vr]
    df = df.reset_index(drop=True).copy()
    recs = df.to_dict("records")
    try:
        ops = [make_op(kind, r) for r in recs]
        flops = np.array([o.flops() for o in ops], float)
        byts = np.array([o.bytes() for o in ops], float)
    except (KeyError, ValueError) as e:
        raise FitError(f"{kind}.csv: cannot count FLOPs/bytes of a row ({type(e).__name__}: {e})") from None
    for col, ours in (("flops", flops), ("bytes", byts)):
        theirs = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
        rel = np.abs(theirs - ours) / np.maximum(np.abs(ours), 1.0)
        if np.any(~np.isfinite(rel)) or np.any(rel > COUNT_RTOL):
            i = int(np.argmax(np.where(np.isfinite(rel), rel, np.inf)))
            raise FitError(f"{kind}.csv row {i + 2}: {col} {theirs[i]:.6g} disagrees with sim.cost.ops "
                           f"({ours[i]:.6g}); the CSV and the cost model must count the same work")
    df["flops_"] = flops
    df["bytes_"] = byts
    # the many-sequence terms' units (sim.cost.ops.many_seq_s): programs, and decode's serial chain
    df["programs_"] = [float(o.programs()) if hasattr(o, "programs") else 0.0 for o in ops]
    if kind == "attn_prefill":  # FLOPs of whole 128-query blocks: below the diagonal, on it
        pairs = [o.block_pairs() for o in ops]
        df["blk_off_"] = [prefill_block_flops(o.heads, o.head_dim, off, 0, 0.0) for o, (off, _) in zip(ops, pairs)]
        df["blk_diag_"] = [prefill_block_flops(o.heads, o.head_dim, 0, dg, 1.0) for o, (_, dg) in zip(ops, pairs)]
    if kind == "attn_decode":
        df["chain_tok_"] = [float(o.chain_tokens(hw.num_sms)) for o in ops]
        df["chain_btok_"] = [float(o.chain_token_bytes()) for o in ops]
    df["peak"] = [_peak_or_nan(hw, dt) for dt in df["dtype"]]
    df["bw"] = hw.memory_bandwidth_bytes_per_s
    df["num_sms"] = hw.num_sms
    df["ideal_ns"] = np.maximum(flops / df["peak"], byts / df["bw"]) * 1e9
    df["heldout"] = [is_heldout(kind, r) for r in recs]
    # rows the profile cannot price (a dtype without a peak, a backend it has no name for)
    keep = df["peak"].notna() & df["backend"].isin(BACKENDS)
    dropped = {f"{be}/{dt}": int(n) for (be, dt), n in df[~keep].groupby(["backend", "dtype"]).size().items()}
    if kind == "elementwise" and n_vr:
        dropped["vendor/rotary (eager composite, host-bound)"] = n_vr
    df = df[keep].reset_index(drop=True)
    df.attrs["dropped"] = dropped
    return df


# ------------------------------------------------------------------------------ provenance
def _date(prov: Mapping) -> str:
    s = str(prov.get("date_utc", ""))
    try:
        return _dt.datetime.fromisoformat(s).date().isoformat()
    except ValueError:
        return s or "date unknown"


def _display_path(data_dir: Path) -> str:
    parts = data_dir.resolve().parts
    if "calibrate" in parts:
        i = len(parts) - 1 - parts[::-1].index("calibrate")
        return "/".join(parts[i:])
    return f"calibrate/data/{data_dir.resolve().name}"


def _driver(prov: Mapping) -> str:
    smi = str(prov.get("nvidia_smi", ""))
    lines = [ln for ln in smi.splitlines() if ln.strip()]
    if len(lines) >= 2 and "driver_version" in lines[0]:
        hdr = [h.strip() for h in lines[0].split(",")]
        val = [v.strip() for v in lines[1].split(",")]
        return dict(zip(hdr, val)).get("driver_version", "")
    return ""


def _provenance_summary(prov: Mapping) -> dict:
    driver = _driver(prov)
    peaks = prov.get("peaks") or {}
    out = {"gpu": prov.get("device_name"), "gpu_name_arg": prov.get("gpu_name_arg"), "driver": driver or None,
           "cuda": prov.get("cuda_runtime"), "torch": prov.get("torch"), "triton": prov.get("triton"),
           "date_utc": prov.get("date_utc"), "clocks_before": prov.get("clocks_before"),
           "clocks_after": prov.get("clocks_after"), "wall_time_s": prov.get("wall_time_s"),
           "quick": prov.get("quick"),
           "checks_passed": {k: bool(v.get("passed")) for k, v in (prov.get("checks") or {}).items()},
           "skipped": prov.get("skipped") or {},
           "measured_copy_bw_bytes_per_s": peaks.get("copy_bw_bytes_per_s"),
           "measured_matmul_bf16_flops_per_s": peaks.get("matmul_bf16_flops_per_s"),
           # later runs of some ops merged in (calibrate.merge): what they replaced, when, how long
           "reruns": [{"ops": r.get("ops"), "date_utc": r.get("date_utc"), "wall_time_s": r.get("wall_time_s"),
                       "driver": _driver(r), "torch": r.get("torch"), "triton": r.get("triton")}
                      for r in prov.get("reruns") or []]}
    return {k: v for k, v in out.items() if v not in (None, "", {}, [])}
