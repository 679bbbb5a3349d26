"""Generic CSV / JSONL trace reader driven by a column mapping.

Models: any per-request table whose columns ``TraceSpec.columns`` maps onto our fields:
``arrival_s`` (seconds) or ``timestamp_ms`` (milliseconds) -- optional; without either the
trace is lengths-only -- plus ``prompt_tokens``, ``output_tokens`` (required) and
``hash_ids`` (optional; a JSON list such as ``[1, 2, 3]`` in CSV, a list in JSONL). The
extra key ``block_size_tokens`` (a number, not a column) sets the tokens per hash block.

Ignores: columns that are not mapped; time zones and datetime strings (convert first).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from sim.config import ConfigError
from sim.workload.traces import _rows
from sim.workload.traces.mooncake import check_hash_ids
from sim.workload.traces.registry import READERS

FIELDS = ("arrival_s", "timestamp_ms", "prompt_tokens", "output_tokens", "hash_ids")
OPTIONS = ("block_size_tokens",)


def _mapping(spec) -> dict[str, str]:
    cols = dict(spec.columns or {})
    for k in cols:
        if k not in FIELDS + OPTIONS:
            raise ConfigError(f"workload.trace.columns.{k}", f"unknown field; expected one of {list(FIELDS + OPTIONS)}")
    for k in ("prompt_tokens", "output_tokens"):
        if k not in cols:
            raise ConfigError("workload.trace.columns", f"missing {k!r}: expected a mapping of our fields "
                              f"{list(FIELDS)} to your column names, with prompt_tokens and output_tokens")
    if "arrival_s" in cols and "timestamp_ms" in cols:
        raise ConfigError("workload.trace.columns", "give arrival_s or timestamp_ms, not both")
    return cols


def _parse_json_lists(df: pd.DataFrame, col: str) -> pd.DataFrame:
    def parse(v):
        try:
            return json.loads(v) if isinstance(v, str) else v
        except ValueError:
            return None
    df[col] = df[col].map(parse)
    return df


def _read(path: Path, spec, jsonl: bool) -> pd.DataFrame:
    cols = _mapping(spec)
    log = _rows.RowLog(path, spec.on_bad_row)
    df = _rows.read_jsonl_lines(path, log) if jsonl else _rows.read_csv_lines(path, log)
    used = {k: v for k, v in cols.items() if k in FIELDS}
    _rows.require_columns(df, list(used.values()), path, jsonl=jsonl)
    df = _rows.missing_values(df, list(used.values()), log)
    tcol = used.get("arrival_s") or used.get("timestamp_ms")
    if tcol:
        df = _rows.times(df, tcol, log, 1.0 if "arrival_s" in used else 1e-3)
    df = _rows.lengths(df, used["prompt_tokens"], "prompt_tokens", log)
    df = _rows.lengths(df, used["output_tokens"], "output_tokens", log)
    if "hash_ids" in used:
        if not jsonl:
            df = _parse_json_lists(df, used["hash_ids"])
        df = check_hash_ids(df, used["hash_ids"], log)
    if tcol:
        df = _rows.ordered(df, tcol, log)
    out = _rows.finish(df, log, extra=["hash_ids"], has_time=bool(tcol))
    if not tcol:
        out.attrs["lengths_only"] = True
    if "block_size_tokens" in cols:
        try:
            out.attrs["block_size_tokens"] = int(cols["block_size_tokens"])
        except (TypeError, ValueError):
            raise ConfigError("workload.trace.columns.block_size_tokens",
                              f"expected an integer, got {cols['block_size_tokens']!r}") from None
    return out


@READERS.register("csv")
def read_csv(path: Path, spec, rng_streams=None) -> pd.DataFrame:
    """Read a CSV with a header using ``spec.columns`` (our field -> your column)."""
    return _read(path, spec, jsonl=False)


@READERS.register("jsonl")
def read_jsonl(path: Path, spec, rng_streams=None) -> pd.DataFrame:
    """Read JSON Lines using ``spec.columns`` (our field -> your key)."""
    return _read(path, spec, jsonl=True)
