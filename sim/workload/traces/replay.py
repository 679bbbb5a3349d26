"""Trace replay: read a trace by format and apply the replay controls of a TraceSpec.

Models: ``read_trace`` resolves the path, picks the reader (``format: auto`` guesses), then
applies, in this order: time window ``[start_s, end_s)`` (re-zeroed), ``sample_frac``
(Bernoulli thinning with the stream ``trace.sample``), ``copies`` (N copies superposed,
copy i > 0 shifted by a uniform offset in [0, span) drawn from the stream ``trace.copies``
and wrapped around the span, so the rate is N times the trace's with its time profile kept;
copies are distinct users: client ids and block hashes are offset per copy), ``time_scale``
(multiplies every
inter-arrival time), ``target_rate_per_s`` (rescales times so that (rows - 1) / span equals
it) and ``max_requests`` (first N). ``arrival_s`` always starts at 0.0 after each step.
``sample_lengths`` draws (prompt, output) pairs from a lengths table for an arrival process.

Ignores: anything that needs the simulator (arrival processes, sessions); time controls on
lengths-only traces are errors rather than silently ignored.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sim.config import ConfigError, TraceSpec
from sim.rng import RngStreams
from sim.workload.traces.registry import READERS, detect_format

KEY = "workload.trace"


def resolve_path(path: str, base_dir: str = ".") -> Path:
    """``path`` as is when absolute, else relative to ``base_dir``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


def _rezero(df: pd.DataFrame) -> pd.DataFrame:
    if "arrival_s" in df and len(df):
        df["arrival_s"] = df["arrival_s"] - float(df["arrival_s"].iloc[0])
    return df


def _check_time_controls(spec: TraceSpec, df: pd.DataFrame) -> None:
    if "arrival_s" in df.columns:
        return
    for name, default in (("start_s", 0.0), ("end_s", None), ("time_scale", 1.0), ("target_rate_per_s", None),
                          ("copies", 1)):
        if getattr(spec, name) != default:
            raise ConfigError(f"{KEY}.{name}", "this trace has no arrival times (lengths only); expected no time "
                              "controls: pair it with workload.arrival instead", df.attrs.get("source"))


def _fill_lengths(df: pd.DataFrame, spec: TraceSpec, base_dir: str, rng_streams: RngStreams) -> pd.DataFrame:
    """Arrival-only traces (ServeGen m-large) take lengths from ``columns.lengths_path``."""
    cols = dict(spec.columns or {})
    if "lengths_path" not in cols:
        return df
    lspec = TraceSpec(path=cols["lengths_path"], format=cols.get("lengths_format", "auto"), on_bad_row=spec.on_bad_row)
    table = read_trace(lspec, base_dir, rng_streams)
    p, o = sample_lengths(table, len(df), rng_streams.stream("trace.lengths"))
    df["prompt_tokens"], df["output_tokens"] = p, o
    df.attrs.pop("arrivals_only", None)
    df.attrs["lengths_source"] = table.attrs.get("source")
    return df


def read_trace(spec: TraceSpec, base_dir: str = ".", rng_streams: RngStreams | None = None) -> pd.DataFrame:
    """Read ``spec.path`` into the common frame and apply the replay controls.

    Returns a DataFrame with ``arrival_s`` (float64 from 0.0, non-decreasing; absent for
    lengths-only traces), ``prompt_tokens`` and ``output_tokens`` (int64 >= 1), and where the
    format has them ``hash_ids`` (lists; ``attrs["block_size_tokens"]``) and ``client_id``.
    ``attrs["skipped_rows"]`` maps a reason to the number of rows dropped (``on_bad_row: skip``).
    Raises ConfigError naming the file, the line and what was expected.
    """
    rng_streams = rng_streams if rng_streams is not None else RngStreams(0)
    path = resolve_path(spec.path, base_dir)
    fmt = spec.format if spec.format != "auto" else detect_format(path, bool(spec.columns))
    reader = READERS.get(fmt, f"{KEY}.format")
    if fmt not in ("csv", "jsonl", "servegen") and spec.columns:
        raise ConfigError(f"{KEY}.columns", f"format {fmt!r} has fixed columns; expected no 'columns' mapping", str(path))
    df = reader(path, spec, rng_streams)
    df.attrs["format"] = fmt
    if fmt == "servegen":
        df = _fill_lengths(df, spec, base_dir, rng_streams)
    _check_time_controls(spec, df)
    has_t = "arrival_s" in df.columns
    if has_t:
        t = df["arrival_s"].to_numpy()
        keep = t >= spec.start_s
        if spec.end_s is not None:
            if spec.end_s <= spec.start_s:
                raise ConfigError(f"{KEY}.end_s", f"expected end_s > start_s ({spec.start_s}), got {spec.end_s}")
            keep &= t < spec.end_s
        df = _rezero(df.loc[keep].reset_index(drop=True))
    if spec.sample_frac < 1.0:
        keep = rng_streams.stream("trace.sample").random(len(df)) < spec.sample_frac
        df = _rezero(df.loc[keep].reset_index(drop=True))
    if has_t and spec.copies > 1:
        df = _superpose(df, spec.copies, rng_streams.stream("trace.copies"))
    if has_t and spec.time_scale != 1.0:
        df["arrival_s"] = df["arrival_s"] * spec.time_scale
    if has_t and spec.target_rate_per_s is not None:
        span = float(df["arrival_s"].iloc[-1]) if len(df) else 0.0
        if len(df) < 2 or span <= 0:
            raise ConfigError(f"{KEY}.target_rate_per_s", "expected at least two requests at distinct times "
                              f"to rescale, got {len(df)} rows spanning {span} s", df.attrs.get("source"))
        df["arrival_s"] = df["arrival_s"] * ((len(df) - 1) / span / spec.target_rate_per_s)
    if spec.max_requests is not None:
        df = df.iloc[: spec.max_requests].reset_index(drop=True)
    if len(df) == 0:
        raise ConfigError(KEY, "no requests left after the replay controls (window, sample_frac, max_requests)",
                          df.attrs.get("source"))
    return df


def _superpose(df: pd.DataFrame, copies: int, rng: np.random.Generator) -> pd.DataFrame:
    """``copies`` copies of a timed trace over its own span (see the module doc)."""
    t = df["arrival_s"].to_numpy(np.float64)
    span = float(t[-1]) if len(t) else 0.0
    if span <= 0:
        raise ConfigError(f"{KEY}.copies", f"expected a trace spanning some time to superpose copies of, got "
                          f"{len(df)} rows spanning {span} s", df.attrs.get("source"))
    offsets = np.concatenate([[0.0], rng.uniform(0.0, span, copies - 1)])
    parts = []
    for i, off in enumerate(offsets):
        part = df.copy()
        part["arrival_s"] = np.mod(t + off, span) if i else t
        if "client_id" in part:
            part["client_id"] = part["client_id"] + i * (int(df["client_id"].max()) + 1)
        if "hash_ids" in part and i:
            top = max((max(h) for h in df["hash_ids"] if len(h)), default=0) + 1
            part["hash_ids"] = [[x + i * top for x in h] for h in part["hash_ids"]]
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)
    out = out.iloc[np.argsort(out["arrival_s"].to_numpy(), kind="stable")].reset_index(drop=True)
    out.attrs.update(df.attrs)
    return _rezero(out)


def sample_lengths(df: pd.DataFrame, n: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (prompt_tokens, output_tokens) pairs from a trace frame, pairs kept together.

    With ``rng`` rows are drawn uniformly with replacement (the documented default for
    pairing a lengths-only trace with an arrival process); with ``rng=None`` rows are taken in
    file order, cycling when ``n`` exceeds the table.
    """
    if "prompt_tokens" not in df.columns or len(df) == 0:
        raise ConfigError(KEY, "expected a trace with prompt_tokens and output_tokens", df.attrs.get("source"))
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    idx = rng.integers(0, len(df), size=n) if rng is not None else np.arange(n) % len(df)
    return (df["prompt_tokens"].to_numpy(np.int64)[idx], df["output_tokens"].to_numpy(np.int64)[idx])


def lengths_table(spec: TraceSpec, base_dir: str = ".", rng_streams: RngStreams | None = None) -> pd.DataFrame:
    """Just ``prompt_tokens``/``output_tokens`` of a trace (any format), replay controls applied."""
    df = read_trace(spec, base_dir, rng_streams)
    if "prompt_tokens" not in df.columns:
        raise ConfigError(KEY, "this trace has arrivals only; expected lengths (set columns.lengths_path)",
                          df.attrs.get("source"))
    return df[["prompt_tokens", "output_tokens"]]
