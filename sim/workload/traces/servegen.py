"""Reader that samples a request stream from ServeGen per-client statistics (Alibaba Bailian).

Models: ServeGen's ``generate_workload`` at the published rates. For every client and every
10-min window in range with a positive rate and a fit, ``n = round(rate * 600)`` requests
arrive; their ``n + 1`` inter-arrival gaps are drawn from the fitted Gamma(a, scale) or
Weibull(c, scale) and rescaled so that the gaps sum to the window (the first ``n`` cumulative
sums are the arrivals, all inside the window). Lengths come from the client's 6-hourly
``input_tokens`` / ``output_tokens`` PMFs in ``chunk-<id>-dataset.json`` (Python dict
literals, parsed with ``ast.literal_eval``); a window with an empty PMF uses the client's
nearest non-empty one. ``arrival_s`` is seconds since the trace start (window 0), so the
``start_s``/``end_s`` window of the spec selects trace time; ``read_trace`` re-zeros it.
A ``client_id`` column is added. All draws use the stream ``trace.servegen``.

Differences from ServeGen, on purpose: ServeGen draws ``ceil(rate * 600)`` gaps and drops
the last arrival (which lands on the window end), and it reuses one uniform for every
length field, which makes input and output lengths comonotonic; here counts are
``round(rate * 600)`` and input/output lengths are drawn independently.

Without dataset files (``language/m-large``) the frame has arrivals only
(``df.attrs["arrivals_only"] = True``); lengths then come from ``columns.lengths_path``
(a length trace, see ``read_trace``) or from the workload's length distributions.

Ignores: reason_ratio and multimodal fields; rate_fn rescaling of the aggregate (use
``target_rate_per_s``); PMF values < 1 token (dropped, PMF renormalized).
"""
from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from sim.config import ConfigError
from sim.workload.traces import _rows
from sim.workload.traces.registry import READERS

WINDOW_S = 600.0
MAX_REQUESTS = 5_000_000
_CHUNK = re.compile(r"chunk-(\d+)-(trace\.csv|dataset\.json)$")
TRACE_COLS = ["t", "rate", "cv", "pat", "shape", "scale"]


def _files(path: Path) -> dict[int, Path]:
    if path.is_dir():
        files = {int(m.group(1)): p for p in path.iterdir() if (m := _CHUNK.search(p.name)) and m.group(2) == "trace.csv"}
    elif (m := _CHUNK.search(path.name)) and path.exists():
        files = {int(m.group(1)): path.with_name(f"chunk-{m.group(1)}-trace.csv")}
    else:
        raise _rows.trace_error(path, None, "no such ServeGen folder or chunk-<id>-trace.csv file")
    if not files:
        raise _rows.trace_error(path, None, "no chunk-<id>-trace.csv files: expected a ServeGen model folder")
    return dict(sorted(files.items()))


def _read_fast(path: Path) -> pd.DataFrame | None:
    """Typed C-engine read; None when the file needs the line-by-line checks."""
    try:
        df = pd.read_csv(path, header=None, names=TRACE_COLS, skip_blank_lines=False,
                         dtype={"t": float, "rate": float, "cv": float, "pat": object, "shape": float, "scale": float})
    except (ValueError, pd.errors.ParserError):
        return None
    df["_line"] = np.arange(1, len(df) + 1)
    return df


def _read_client(path: Path, on_bad_row: str) -> tuple[pd.DataFrame, dict]:
    log = _rows.RowLog(path, on_bad_row)
    if not path.is_file():
        raise _rows.trace_error(path, None, "no such trace file")
    df = _read_fast(path)
    if df is None:
        df = _rows.read_csv_lines(path, log, header=False)
        if df.shape[1] - 1 != len(TRACE_COLS):
            raise _rows.trace_error(path, 1, f"expected {len(TRACE_COLS)} columns {TRACE_COLS}, found {df.shape[1] - 1}")
        df.columns = TRACE_COLS + ["_line"]
    df = _rows.missing_values(df, ["t", "rate"], log)
    for c in ("t", "rate", "shape", "scale"):
        x = pd.to_numeric(df[c], errors="coerce") if df[c].dtype != float else df[c]
        bad = (x.isna().to_numpy() & df[c].notna().to_numpy()) | (x < 0).to_numpy()
        df = log.bad(df, bad, f"invalid {c!r}", "a number >= 0", df[c])
        if df[c].dtype != float:
            df[c] = pd.to_numeric(df[c])
    active = (df["rate"] > 0).to_numpy()
    bad = active & ~df["pat"].isin(["Gamma", "Weibull"]).to_numpy()
    df = log.bad(df, bad, "invalid fit name", "Gamma or Weibull where rate > 0", df["pat"])
    active = (df["rate"] > 0).to_numpy()
    bad = active & ~((df["shape"] > 0) & (df["scale"] > 0)).to_numpy()
    df = log.bad(df, bad, "invalid fit parameters", "shape > 0 and scale > 0 where rate > 0")
    df["_t"] = df["t"].astype(float)
    df = _rows.ordered(df, "t", log)
    return df, dict(log.counts)


def _suspect(df: pd.DataFrame) -> bool:
    """Cheap whole-file check; a suspect file goes through the line-by-line checks."""
    active = df["rate"].to_numpy() > 0
    num = df[["t", "rate", "shape", "scale"]].to_numpy()
    return bool(np.isnan(num[:, :2]).any() or (num < 0).any() or (np.diff(df["t"].to_numpy()) < 0).any()
                or (active & ~df["pat"].isin(["Gamma", "Weibull"]).to_numpy()).any()
                or (active & ~((df["shape"] > 0) & (df["scale"] > 0)).to_numpy()).any())


def _read_all(files: dict[int, Path], on_bad_row: str) -> tuple[pd.DataFrame, dict]:
    """All clients' windows with rate > 0: client_id, t, rate, pat, shape, scale."""
    parts, skipped = [], {}
    for cid, f in files.items():
        df = _read_fast(f) if f.is_file() else None
        if df is None or _suspect(df):
            df, counts = _read_client(f, on_bad_row)
            for k, v in counts.items():
                skipped[k] = skipped.get(k, 0) + v
        df = df.loc[df["rate"] > 0, ["t", "rate", "pat", "shape", "scale"]]
        df.insert(0, "client_id", cid)
        parts.append(df)
    table = pd.concat(parts, ignore_index=True)
    return table, skipped


def _pmf(text: str, where: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        d = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError("workload.trace", "expected a Python dict literal {tokens: probability}", where) from None
    if not d:
        return None
    v = np.fromiter(d.keys(), dtype=float)
    p = np.fromiter(d.values(), dtype=float)
    keep = v >= 1
    if not keep.any() or p[keep].sum() <= 0:
        return None
    v, p = v[keep], p[keep]
    order = np.argsort(v)
    return v[order].astype(np.int64), np.cumsum(p[order]) / p.sum()


class _Lengths:
    """Lazily parsed PMFs of one client's dataset file."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.raw = json.loads(path.read_text())
        except ValueError as e:
            raise _rows.trace_error(path, None, f"expected a JSON object keyed by window start: {e}") from None
        self.keys = np.array(sorted(int(k) for k in self.raw), dtype=np.int64)
        self._cache: dict[tuple[int, str], tuple | None] = {}

    def pmf(self, key: int, field: str):
        if (key, field) not in self._cache:
            text = self.raw[str(key)].get(field, "{}")
            self._cache[(key, field)] = _pmf(text, f"{self.path}: window {key}, field {field!r}")
        return self._cache[(key, field)]

    def nearest(self, key: int, field: str):
        for k in sorted(self.keys, key=lambda k: (abs(int(k) - key), k)):
            got = self.pmf(int(k), field)
            if got is not None:
                return got
        return None


def _span(table: pd.DataFrame, spec) -> tuple[float, float]:
    start = math.floor(spec.start_s / WINDOW_S) * WINDOW_S
    if spec.end_s is not None:
        return start, float(spec.end_s)
    if spec.max_requests is None:
        raise ConfigError("workload.trace.end_s", "a ServeGen trace needs end_s or max_requests "
                          "(the whole m-large folder is about 237 million requests)")
    need = spec.max_requests / spec.sample_frac * 1.1 + 10
    per_w = table[table["t"] >= start].groupby("t")["n"].sum()
    reached = per_w.index[per_w.cumsum().to_numpy() >= need]
    end = float(reached[0]) + WINDOW_S if len(reached) else float(per_w.index.max() + WINDOW_S)
    return start, end


@READERS.register("servegen")
def read_servegen(path: Path, spec, rng_streams=None) -> pd.DataFrame:
    """Sample requests from a ServeGen model folder (or one chunk file) over the spec's window."""
    if rng_streams is None:
        raise ConfigError("workload.trace", "the servegen reader samples requests and needs rng_streams", str(path))
    for k in spec.columns or {}:
        if k not in ("lengths_path", "lengths_format"):
            raise ConfigError(f"workload.trace.columns.{k}", "unknown servegen option; expected lengths_path "
                              "and/or lengths_format (a length trace for arrival-only folders)", str(path))
    files = _files(path)
    table, skipped = _read_all(files, spec.on_bad_row)
    table["n"] = np.round(table["rate"] * WINDOW_S).astype(np.int64)
    start, end = _span(table, spec)
    table = table[(table["t"] + WINDOW_S > start) & (table["t"] < end) & (table["n"] > 0)].reset_index(drop=True)
    total = int(table["n"].sum())
    if total > MAX_REQUESTS:
        raise ConfigError("workload.trace.end_s", f"[{start}, {end}) s holds about {total} requests; expected at most "
                          f"{MAX_REQUESTS}: narrow start_s/end_s", str(path))
    rng = rng_streams.stream("trace.servegen")
    gaps_n = table["n"].to_numpy() + 1
    shape = np.repeat(table["shape"].to_numpy(), gaps_n)
    scale = np.repeat(table["scale"].to_numpy(), gaps_n)
    is_gamma = np.repeat((table["pat"] == "Gamma").to_numpy(), gaps_n)
    gaps = np.empty(len(shape))
    gaps[is_gamma] = rng.gamma(shape[is_gamma], scale[is_gamma])
    gaps[~is_gamma] = scale[~is_gamma] * rng.weibull(shape[~is_gamma])
    gaps = np.maximum(gaps, 1e-300)
    starts = np.concatenate([[0], np.cumsum(gaps_n)[:-1]])
    sums = np.add.reduceat(gaps, starts)
    grp = np.repeat(np.arange(len(table)), gaps_n)
    within = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[starts] - gaps[starts], gaps_n)
    t = np.repeat(table["t"].to_numpy(), gaps_n) + within * np.repeat(WINDOW_S / sums, gaps_n)
    last = np.zeros(len(gaps), dtype=bool)
    last[np.cumsum(gaps_n) - 1] = True
    out = pd.DataFrame({"arrival_s": t[~last], "client_id": table["client_id"].to_numpy()[grp[~last]]})
    out = _lengths(out, files, spec, rng, skipped)
    out = out.sort_values(["arrival_s", "client_id"], kind="stable").reset_index(drop=True)
    out.attrs.update({"source": str(path), "skipped_rows": skipped, "skipped_lines": [],
                      "time_origin": "trace", "window_s": WINDOW_S})
    if "prompt_tokens" not in out:
        out.attrs["arrivals_only"] = True
    return out


def _lengths(out: pd.DataFrame, files: dict[int, Path], spec, rng, skipped: dict) -> pd.DataFrame:
    if "lengths_path" in (spec.columns or {}):
        return out
    datasets = {cid: f.with_name(f"chunk-{cid}-dataset.json") for cid, f in files.items()}
    if not any(p.exists() for p in datasets.values()):
        return out
    prompt = np.zeros(len(out), dtype=np.int64)
    output = np.zeros(len(out), dtype=np.int64)
    ok = np.ones(len(out), dtype=bool)
    for cid, idx in out.groupby("client_id").indices.items():
        if not datasets[cid].exists():
            raise _rows.trace_error(datasets[cid], None, "missing dataset file: expected one per client "
                                    "(or set columns.lengths_path)")
        ds = _Lengths(datasets[cid])
        keys = ds.keys[np.maximum(np.searchsorted(ds.keys, out["arrival_s"].to_numpy()[idx], side="right") - 1, 0)]
        for key in np.unique(keys):
            sel = idx[keys == key]
            for field, dst in (("input_tokens", prompt), ("output_tokens", output)):
                pmf = ds.pmf(int(key), field) or ds.nearest(int(key), field)
                if pmf is None:
                    ok[sel] = False
                    continue
                values, cdf = pmf
                dst[sel] = values[np.minimum(np.searchsorted(cdf, rng.random(len(sel)), side="right"), len(values) - 1)]
    if not ok.all():
        skipped["no_length_pmf"] = skipped.get("no_length_pmf", 0) + int((~ok).sum())
    out["prompt_tokens"] = prompt
    out["output_tokens"] = output
    return out[ok].reset_index(drop=True)
