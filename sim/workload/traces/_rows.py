"""Row-level validation shared by the trace readers: line numbers, bad rows, skip counts.

Models: a raw trace table as parsed by pandas, where every row remembers the 1-based line
of the file it came from (header = line 1 for CSV; first record = line 1 for JSONL). Checks
are vectorized over whole columns; only the first offending line is named in an error.
With ``on_bad_row == "skip"`` offending rows are dropped and counted per reason in
``df.attrs["skipped_rows"]`` (and their lines in ``df.attrs["skipped_lines"]``).

Ignores: quoted CSV fields that span several lines (none of the supported traces have
them; line numbers would be off after such a field).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from sim.config import ConfigError

KEY = "workload.trace"
_PARSER_LINE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def trace_error(path: Path | str, line: int | None, message: str, key: str = KEY) -> ConfigError:
    """A ConfigError naming the trace file and (when known) the 1-based line."""
    where = f"{path}, line {line}" if line is not None else str(path)
    return ConfigError(key, message, where)


class RowLog:
    """Accumulates skipped rows per reason for one file (only used when skipping)."""

    def __init__(self, path: Path, on_bad_row: str):
        self.path = path
        self.skip = on_bad_row == "skip"
        self.counts: dict[str, int] = {}
        self.lines: list[int] = []

    def bad(self, df: pd.DataFrame, mask: np.ndarray, reason: str, expected: str,
            values: pd.Series | None = None) -> pd.DataFrame:
        """Raise on the first masked row, or drop and count all masked rows."""
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return df
        if not self.skip:
            i = int(np.flatnonzero(mask)[0])
            got = "" if values is None else f", got {values.iloc[i]!r}"
            more = int(mask.sum()) - 1
            tail = f" ({more} more such rows; on_bad_row: skip drops them)" if more else ""
            raise trace_error(self.path, int(df["_line"].iloc[i]), f"{reason}: expected {expected}{got}{tail}")
        self.counts[reason] = self.counts.get(reason, 0) + int(mask.sum())
        self.lines.extend(int(x) for x in df["_line"].to_numpy()[mask])
        return df.loc[~mask].reset_index(drop=True)

    def add(self, reason: str, lines: list[int]) -> None:
        if lines:
            self.counts[reason] = self.counts.get(reason, 0) + len(lines)
            self.lines.extend(lines)

    def attach(self, df: pd.DataFrame) -> pd.DataFrame:
        df.attrs["skipped_rows"] = dict(self.counts)
        df.attrs["skipped_lines"] = sorted(self.lines)
        return df


def read_csv_lines(path: Path, log: RowLog, header: bool = True) -> pd.DataFrame:
    """Read a CSV as strings with a ``_line`` column (1-based file line of each row)."""
    if not path.is_file():
        raise trace_error(path, None, "no such trace file")
    kw = dict(dtype=str, skip_blank_lines=False, keep_default_na=False, na_values=[""])
    if not header:
        kw["header"] = None
    first = 2 if header else 1
    try:
        df = pd.read_csv(path, **kw)
        df["_line"] = np.arange(first, first + len(df))
        return df
    except pd.errors.EmptyDataError:
        raise trace_error(path, 1, "empty file: expected a header line") from None
    except pd.errors.ParserError as e:
        m = _PARSER_LINE.search(str(e))
        if not m:
            raise trace_error(path, None, f"unreadable CSV: {e}") from None
        if not log.skip:
            raise trace_error(path, int(m.group(2)),
                              f"malformed row: expected {m.group(1)} fields, saw {m.group(3)}") from None
    # skip mode: find every line with too many fields, vectorized, and read around them
    raw = pd.Series(path.read_text().splitlines())
    nfields = raw.str.count(",") + 1
    width = int(nfields.iloc[0]) if header else int(nfields.mode().iloc[0])
    bad = np.flatnonzero((nfields > width).to_numpy())  # 0-based file lines
    log.add("malformed", [int(b) + 1 for b in bad])
    df = pd.read_csv(path, skiprows=list(bad), **kw)
    keep = np.setdiff1d(np.arange(len(raw)), bad)
    df["_line"] = keep[(1 if header else 0):][: len(df)] + 1
    return df


def read_jsonl_lines(path: Path, log: RowLog) -> pd.DataFrame:
    """Read JSON Lines (one object per line) with a ``_line`` column; blank lines ignored."""
    if not path.is_file():
        raise trace_error(path, None, "no such trace file")
    lines = path.read_text().splitlines()
    nums = [i + 1 for i, s in enumerate(lines) if s.strip()]
    body = [lines[i - 1] for i in nums]
    try:
        recs = json.loads("[" + ",".join(body) + "]")
        if len(recs) != len(body) or not all(isinstance(r, dict) for r in recs):
            raise ValueError("not one object per line")
        keep = nums
    except ValueError:
        recs, keep = [], []
        for n, s in zip(nums, body):
            try:
                r = json.loads(s)
                if not isinstance(r, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                if not log.skip:
                    raise trace_error(path, n, f"malformed row: expected one JSON object per line ({e})") from None
                log.add("malformed", [n])
                continue
            recs.append(r)
            keep.append(n)
    if not recs:
        raise trace_error(path, None, "no records: expected one JSON object per line")
    df = pd.DataFrame.from_records(recs)
    df["_line"] = np.asarray(keep, dtype=np.int64)
    return df


def require_columns(df: pd.DataFrame, cols: list[str], path: Path, jsonl: bool = False) -> None:
    """Error (naming the header or the first record) when a needed column is missing."""
    missing = [c for c in cols if c not in df.columns]
    if missing:
        have = [c for c in df.columns if c != "_line"]
        raise trace_error(path, int(df["_line"].iloc[0]) if jsonl and len(df) else 1,
                          f"missing column {missing[0]!r}: expected columns {cols}, found {have}")


def missing_values(df: pd.DataFrame, cols: list[str], log: RowLog) -> pd.DataFrame:
    """Rows with an empty field (including blank or short CSV lines) are malformed."""
    for c in cols:
        df = log.bad(df, df[c].isna().to_numpy(), f"malformed row (empty {c!r})", f"a value in column {c!r}")
    return df


def lengths(df: pd.DataFrame, src: str, dst: str, log: RowLog) -> pd.DataFrame:
    """Parse column ``src`` into int64 ``dst``; non-integer or < 1 values are invalid rows."""
    raw = df[src]
    try:  # plain integers (the usual case): parsed once, without pandas' coercion
        ints = raw.to_numpy().astype(np.int64)
    except (ValueError, TypeError, OverflowError):
        ints = None
    if ints is not None:
        bad = ints < 1
        df = log.bad(df, bad, f"invalid {src!r}", "an integer token count >= 1", raw)
        df[dst] = ints[~bad]
        return df
    x = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(x) | (x != np.floor(x)) | (x < 1)
    df = log.bad(df, bad, f"invalid {src!r}", "an integer token count >= 1", raw)
    df[dst] = pd.to_numeric(df[src]).astype(np.int64)
    return df


def times(df: pd.DataFrame, src: str, log: RowLog, to_seconds: float) -> pd.DataFrame:
    """Parse numeric column ``src`` (in units of ``to_seconds`` s) into float ``_t``."""
    raw = df[src]
    x = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    df = log.bad(df, ~np.isfinite(x), f"invalid {src!r}", "a finite number", raw)
    df["_t"] = pd.to_numeric(df[src]).to_numpy(dtype=float) * to_seconds
    return df


def ordered(df: pd.DataFrame, src: str, log: RowLog) -> pd.DataFrame:
    """Check ``_t`` is non-decreasing; error mode names the first line that goes back in time.

    Skip mode sorts (stably) instead of dropping, and records how many rows arrived
    earlier than their predecessor in ``df.attrs["reordered_rows"]``.
    """
    t = df["_t"].to_numpy()
    back = np.zeros(len(t), dtype=bool)
    back[1:] = t[1:] < np.maximum.accumulate(t)[:-1]
    if back.any():
        if not log.skip:
            i = int(np.flatnonzero(back)[0])
            raise trace_error(log.path, int(df["_line"].iloc[i]),
                              f"unsorted {src!r}: expected non-decreasing times, got {df[src].iloc[i]!r} "
                              f"after {df[src].iloc[i - 1]!r} (line {int(df['_line'].iloc[i - 1])})")
        df = df.sort_values("_t", kind="stable").reset_index(drop=True)
    df.attrs["reordered_rows"] = int(back.sum())
    return df


def finish(df: pd.DataFrame, log: RowLog, extra: list[str] = (), has_time: bool = True) -> pd.DataFrame:
    """Common output columns (arrival_s from the first row, lengths, extras) plus skip counts."""
    if len(df) == 0:
        raise trace_error(log.path, None, "no valid rows left" + (" after skipping bad rows" if log.counts else ""))
    out = pd.DataFrame()
    if has_time:
        t = df["_t"].to_numpy(dtype=np.float64)
        out["arrival_s"] = t - t[0]
    for c in ("prompt_tokens", "output_tokens"):
        if c in df.columns:
            out[c] = df[c].to_numpy(dtype=np.int64)
    for c in extra:
        if c in df.columns:
            out[c] = pd.Series(df[c].to_list(), dtype=object)
    out.attrs.update(df.attrs)
    out.attrs["source"] = str(log.path)
    return log.attach(out)

