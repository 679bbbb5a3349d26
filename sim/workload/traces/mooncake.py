"""Reader for the Mooncake (Kimi) FAST'25 JSONL traces with 512-token prefix-block hashes.

Models: one request per line: ``timestamp`` (integer ms from the first request) ->
``arrival_s``; ``input_length`` -> ``prompt_tokens``; ``output_length`` -> ``output_tokens``;
``hash_ids`` (list of ints, one per 512-token prompt block, the last one partial) ->
``hash_ids`` with ``df.attrs["block_size_tokens"] = 512``.

Ignores: the 3-s quantization of the conversation trace's timestamps (replayed as is) and
whether ``len(hash_ids) == ceil(input_length / 512)`` (not enforced; the shared files satisfy it).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from sim.workload.traces import _rows
from sim.workload.traces.registry import READERS

BLOCK_SIZE_TOKENS = 512
COLUMNS = ["timestamp", "input_length", "output_length"]


def check_hash_ids(df: pd.DataFrame, col: str, log: _rows.RowLog) -> pd.DataFrame:
    """Each value must be a list of ints (bool excluded); bad rows raise or are skipped."""
    ok = df[col].map(lambda v: isinstance(v, list) and all(type(h) is int for h in v)).to_numpy(dtype=bool)
    df = log.bad(df, ~ok, f"invalid {col!r}", "a list of integer block hashes", df[col])
    df["hash_ids"] = df[col]
    return df


@READERS.register("mooncake")
def read_mooncake(path: Path, spec, rng_streams=None) -> pd.DataFrame:
    """Read a Mooncake JSONL trace into the common frame (with ``hash_ids``)."""
    log = _rows.RowLog(path, spec.on_bad_row)
    df = _rows.read_jsonl_lines(path, log)
    _rows.require_columns(df, COLUMNS + ["hash_ids"], path, jsonl=True)
    df = _rows.missing_values(df, COLUMNS + ["hash_ids"], log)
    df = _rows.times(df, "timestamp", log, 1e-3)
    df = _rows.lengths(df, "input_length", "prompt_tokens", log)
    df = _rows.lengths(df, "output_length", "output_tokens", log)
    df = check_hash_ids(df, "hash_ids", log)
    df = _rows.ordered(df, "timestamp", log)
    out = _rows.finish(df, log, extra=["hash_ids"])
    out.attrs["block_size_tokens"] = BLOCK_SIZE_TOKENS
    return out
