"""Trace readers and replay: recorded request streams as a pandas frame (issue #5).

Models: per-request traces (Azure 2023, Mooncake, generic CSV/JSONL), length-only sets
(ShareGPT, arXiv) and ServeGen per-client statistics sampled into requests, all read into
one frame -- ``arrival_s`` (float64 from 0.0, non-decreasing; absent for lengths-only),
``prompt_tokens``/``output_tokens`` (int64 >= 1), optional ``hash_ids`` (lists, with
``attrs["block_size_tokens"]``) and ``client_id`` -- plus replay controls and statistics.
See docs/traces.md.

Ignores: simulation concerns (arrival processes for lengths-only sets live in the workload
generator, which calls :func:`sample_lengths`).
"""
from sim.workload.traces import azure, generic, lengths, mooncake, servegen  # noqa: F401  (register readers)
from sim.workload.traces.registry import READERS, detect_format
from sim.workload.traces.replay import lengths_table, read_trace, resolve_path, sample_lengths
from sim.workload.traces.stats import prefix_reuse, trace_stats

__all__ = ["READERS", "detect_format", "read_trace", "lengths_table", "sample_lengths", "resolve_path",
           "trace_stats", "prefix_reuse"]
