"""Reader for length-only sets (ShareGPT 8k and arXiv summarization, Vidur/Sarathi CSVs).

Models: one request per row: ``num_prefill_tokens`` -> ``prompt_tokens`` and
``num_decode_tokens`` -> ``output_tokens``. There are no timestamps, so the frame has no
``arrival_s`` column and ``df.attrs["lengths_only"] = True``; the workload generator pairs
the lengths with an arrival process (see :func:`sim.workload.traces.sample_lengths`).

Ignores: ``num_total_tokens`` and ``pd_ratio`` (derived columns).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from sim.workload.traces import _rows
from sim.workload.traces.registry import READERS

COLUMNS = ["num_prefill_tokens", "num_decode_tokens"]


@READERS.register("lengths")
@READERS.register("sharegpt")
@READERS.register("arxiv")
def read_lengths(path: Path, spec, rng_streams=None) -> pd.DataFrame:
    """Read a Vidur-style length CSV into ``prompt_tokens``/``output_tokens`` (no arrivals)."""
    log = _rows.RowLog(path, spec.on_bad_row)
    df = _rows.read_csv_lines(path, log)
    _rows.require_columns(df, COLUMNS, path)
    df = _rows.missing_values(df, COLUMNS, log)
    df = _rows.lengths(df, "num_prefill_tokens", "prompt_tokens", log)
    df = _rows.lengths(df, "num_decode_tokens", "output_tokens", log)
    out = _rows.finish(df, log, has_time=False)
    out.attrs["lengths_only"] = True
    return out
