"""Reader for the Azure LLM inference 2023 traces (Splitwise; code and conv CSVs).

Models: one request per row: ``TIMESTAMP`` (``YYYY-MM-DD HH:MM:SS.fffffff``, 100 ns
precision, no time zone) -> ``arrival_s`` as offsets from the first row; ``ContextTokens``
-> ``prompt_tokens``; ``GeneratedTokens`` -> ``output_tokens``.

Ignores: the absolute date and time zone (only offsets matter); nothing else is in the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sim.workload.traces import _rows
from sim.workload.traces.registry import READERS

COLUMNS = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]


@READERS.register("azure")
def read_azure(path: Path, spec, rng_streams=None) -> pd.DataFrame:
    """Read an Azure 2023 trace CSV into the common frame (see sim.workload.traces)."""
    log = _rows.RowLog(path, spec.on_bad_row)
    df = _rows.read_csv_lines(path, log)
    _rows.require_columns(df, COLUMNS, path)
    df = _rows.missing_values(df, COLUMNS, log)
    ts = pd.to_datetime(df["TIMESTAMP"], format="ISO8601", errors="coerce")
    df = log.bad(df, ts.isna().to_numpy(), "invalid 'TIMESTAMP'",
                 "a datetime like 2023-11-16 18:15:46.6805900", df["TIMESTAMP"])
    ts = pd.to_datetime(df["TIMESTAMP"], format="ISO8601")
    df["_t"] = (ts - ts.iloc[0]).dt.total_seconds().to_numpy(dtype=np.float64)
    df = _rows.lengths(df, "ContextTokens", "prompt_tokens", log)
    df = _rows.lengths(df, "GeneratedTokens", "output_tokens", log)
    df = _rows.ordered(df, "TIMESTAMP", log)
    return _rows.finish(df, log)
