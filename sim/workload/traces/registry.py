"""Trace format registry and ``format: auto`` detection.

Models: the mapping from a format name (``azure``, ``mooncake``, ``servegen``,
``sharegpt``/``arxiv``/``lengths``, ``csv``, ``jsonl``) to its reader function
``reader(path, spec, rng_streams) -> DataFrame``, and the guess of a format from a file
name, extension and header/first record.

Ignores: content sniffing beyond the first line; compressed files.
"""
from __future__ import annotations

import json
from pathlib import Path

from sim.config import ConfigError
from sim.registry import Registry

READERS: Registry = Registry("trace format")


def detect_format(path: Path, has_columns: bool = False) -> str:
    """Guess the reader for ``path``; raise ConfigError saying which formats exist."""
    name = path.name.lower()
    if path.is_dir() or (name.startswith("chunk-") and name.endswith(("-trace.csv", "-dataset.json"))):
        return "servegen"
    if not path.is_file():
        raise ConfigError("workload.trace.path", "no such trace file or folder", str(path))
    with path.open() as f:
        first = f.readline().strip()
    if name.endswith(".csv"):
        head = [h.strip() for h in first.split(",")]
        if "azurellminferencetrace" in name or {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= set(head):
            return "azure"
        if {"num_prefill_tokens", "num_decode_tokens"} <= set(head):
            return "sharegpt" if "sharegpt" in name else "arxiv" if "arxiv" in name else "lengths"
        if has_columns:
            return "csv"
    elif name.endswith((".jsonl", ".json")):
        try:
            keys = set(json.loads(first)) if first else set()
        except (ValueError, TypeError):
            keys = set()
        if {"timestamp", "input_length", "output_length"} <= keys:
            return "mooncake"
        if has_columns:
            return "jsonl"
    raise ConfigError("workload.trace.format",
                      f"cannot detect the trace format from the file name and first line; "
                      f"expected format to be one of {READERS.names()} (csv/jsonl need 'columns')", str(path))
