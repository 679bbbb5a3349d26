"""Turn a workload config into a request stream.

Models: a stream is arrival times (open loop) or a client count (closed loop), plus the
prompt and output length of each request in order, drawn from named RNG streams
("workload.arrival", "workload.prompt", "workload.output"). A trace with timestamps gives
both arrivals and lengths; a lengths-only trace gives lengths, paired with the configured
arrival process.

An optional ``workload.priority`` distribution gives each request a priority class, drawn
in request order from its own stream ("workload.priority"), so adding it shifts nothing else.

Ignores: multi-turn sessions (a later issue).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.config import ConfigError, WorkloadConfig
from sim.rng import RngStreams
from sim.workload.arrivals import arrivals
from sim.workload.lengths import lengths

# Draw closed-loop lengths in chunks of this many when the run is bounded by duration only.
_CHUNK = 4096


@dataclass
class RequestStream:
    """Everything the source process needs; arrays are indexed by request id."""

    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    arrival_s: np.ndarray | None = None       # open loop
    concurrency: int | None = None            # closed loop
    duration_s: float | None = None
    hash_ids: list | None = None
    hash_block_tokens: int | None = None
    more_lengths: object = None               # callable(n) -> (prompt, output), closed loop by duration
    priority_of: object = None                # callable(i) -> priority of request i (workload.priority)

    @property
    def closed(self) -> bool:
        return self.concurrency is not None


class _Priorities:
    """Priorities of requests 0, 1, 2, ... drawn in chunks from one named stream."""

    def __init__(self, dist, rng):
        self.dist, self.rng = dist, rng
        self.values = np.zeros(0, np.int64)

    def __call__(self, i: int) -> int:
        while i >= len(self.values):
            self.values = np.concatenate([self.values, self.dist.sample(_CHUNK, self.rng)])
        return int(self.values[i])


def build_stream(w: WorkloadConfig, base_dir: str, streams: RngStreams) -> RequestStream:
    """The request stream of workload ``w`` (errors name the config key)."""
    stream = _build_stream(w, base_dir, streams)
    if w.priority is not None:
        dist = lengths.build(w.priority.name, w.priority.params, key="workload.priority", base_dir=base_dir)
        stream.priority_of = _Priorities(dist, streams.stream("workload.priority"))
    return stream


def _build_stream(w: WorkloadConfig, base_dir: str, streams: RngStreams) -> RequestStream:
    if w.num_requests is None and w.duration_s is None and w.trace is None:
        raise ConfigError("workload.num_requests", "give workload.num_requests or workload.duration_s")
    proc = arrivals.build(w.arrival.name, w.arrival.params, key="workload.arrival")
    trace_df = None
    if w.trace is not None:
        from sim.workload.traces import read_trace  # imported lazily: pandas-heavy readers

        trace_df = read_trace(w.trace, base_dir, streams)
        if len(trace_df) == 0:
            raise ConfigError("workload.trace", "the trace selection is empty (check the window and limits)")
    timed = trace_df is not None and "arrival_s" in trace_df and trace_df["arrival_s"].notna().all()

    def draw_lengths(n: int, from_trace: bool = True) -> tuple[np.ndarray, np.ndarray]:
        if trace_df is not None and from_trace:
            from sim.workload.traces import sample_lengths

            return sample_lengths(trace_df, n, streams.stream("workload.trace_lengths"))
        pd_ = lengths.build(w.prompt_tokens.name, w.prompt_tokens.params, key="workload.prompt_tokens",
                            base_dir=base_dir)
        od_ = lengths.build(w.output_tokens.name, w.output_tokens.params, key="workload.output_tokens",
                            base_dir=base_dir)
        return (pd_.sample(n, streams.stream("workload.prompt")),
                od_.sample(n, streams.stream("workload.output")))

    if timed:
        df = trace_df
        if w.duration_s is not None:
            df = df[df["arrival_s"] < w.duration_s]
        if w.num_requests is not None:
            df = df.iloc[: w.num_requests]
        hash_ids = list(df["hash_ids"]) if "hash_ids" in df else None
        if "prompt_tokens" in df and "output_tokens" in df:
            p, o = df["prompt_tokens"].to_numpy(np.int64), df["output_tokens"].to_numpy(np.int64)
        else:  # arrivals-only trace (e.g. ServeGen m-large): lengths from the configured distributions
            p, o = draw_lengths(len(df), from_trace=False)
        return RequestStream(p, o, arrival_s=df["arrival_s"].to_numpy(float), hash_ids=hash_ids,
                             hash_block_tokens=trace_df.attrs.get("block_size_tokens"))

    if proc.closed:
        if w.num_requests is not None:
            p, o = draw_lengths(w.num_requests)
            return RequestStream(p, o, concurrency=proc.concurrency, duration_s=w.duration_s)
        p, o = draw_lengths(_CHUNK)
        return RequestStream(p, o, concurrency=proc.concurrency, duration_s=w.duration_s,
                             more_lengths=lambda: draw_lengths(_CHUNK))
    t = proc.times(streams.stream("workload.arrival"), n=w.num_requests, duration_s=w.duration_s)
    p, o = draw_lengths(len(t))
    return RequestStream(p, o, arrival_s=t, duration_s=w.duration_s)
