"""Append-only records of a run: one row per request, one per engine iteration.

Models: what a serving engine's metrics would log: per request its arrival, first
scheduling, first token, finish, output tokens, priority, preemptions and the time spent
preempted and KV bytes swapped; per iteration its start, step time and breakdown, batch
shape, queue lengths, KV blocks in use, KV swap traffic (bytes, PCIe seconds) and, for a
pipeline-parallel replica, the stage idle time the micro-batch found (``bubble_s``).

Ignores: per-token timestamps. Inter-token latencies are exact without them: a request in
steady decode emits one token per iteration, so its inter-token gap is that iteration's
step time (iterations are weighted by ``num_itl_tokens``); gaps that are not one step (a
preempted request's first token after it resumes, a decode's next token after prefill-only
steps held it) are kept per request. ``num_decode`` counts the decode rows the GPU ran,
including static batching's padded rows, which emit no token.
"""
from __future__ import annotations

from array import array
from itertools import chain

import numpy as np
import pandas as pd

from sim.engine.request import REJECTED

REQUEST_COLUMNS = ["request_id", "replica", "arrival_s", "scheduled_s", "first_token_s", "finish_s",
                   "prompt_tokens", "output_tokens", "num_preemptions", "rejected", "client",
                   "priority", "preempted_s", "swap_bytes"]
ITERATION_COLUMNS = ["replica", "start_s", "step_s", "num_prefill_reqs", "num_prefill_tokens",
                     "num_decode", "decode_context_sum", "num_running", "num_waiting", "kv_used_blocks",
                     "num_preempted", "gemm_s", "attn_s", "other_s", "comm_s", "host_s",
                     "swap_bytes", "swap_s", "num_itl_tokens", "bubble_s"]
_INT_COLUMNS = frozenset(c for c in ITERATION_COLUMNS if c.startswith("num_") or c in
                         ("replica", "decode_context_sum", "kv_used_blocks"))
_INT64, _FLOAT64 = np.int64, np.float64
_RUN_STEP_COLUMNS = ("start_s", "step_s", "attn_s", "kv_used_blocks")
_RUN_CONST = ("replica", "num_decode", "num_itl_tokens", "decode_context_sum", "num_running", "num_waiting",
              "gemm_s", "other_s", "comm_s", "host_s")


_REQ_INT = frozenset(("request_id", "replica", "prompt_tokens", "output_tokens", "num_preemptions", "client",
                      "priority"))
PACK_ROWS = 1 << 16  # rows kept as tuples before they are packed into a float64 block


def _dtype(column: str):
    return _INT64 if column in _INT_COLUMNS else _FLOAT64


def _pack(rows: list, blocks: list) -> None:
    """Move ``rows`` (tuples of numbers) into a float64 block: 8 bytes a value instead of a
    Python object each. Integers below 2**53 and bools are exact as float64."""
    blocks.append(np.array(rows, dtype=_FLOAT64))
    rows.clear()


def _table(rows: list, blocks: list, width: int) -> np.ndarray:
    """All rows, packed blocks first, as one [n, width] float64 array."""
    parts = [*blocks, np.array(rows, dtype=_FLOAT64).reshape(-1, width)]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _merge_positions(steps: dict, runs: dict) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the stepped rows and of the run rows in the merged frame: the order
    of a stable sort by (replica, start_s) of the stepped rows followed by the run rows."""
    ss, rs = steps["start_s"], runs["start_s"]
    one_replica = not (steps["replica"].any() or runs["replica"].any())
    if one_replica and not (np.diff(ss) < 0).any() and not (np.diff(rs) < 0).any():
        # both already in time order (one replica): a stepped row goes after the run rows
        # that start strictly before it
        pos_s = np.arange(len(ss)) + np.searchsorted(rs, ss, side="left")
    else:
        order = np.lexsort((np.concatenate([ss, rs]), np.concatenate([steps["replica"], runs["replica"]])))
        pos = np.empty(len(order), dtype=np.int64)
        pos[order] = np.arange(len(order))
        return pos[:len(ss)], pos[len(ss):]
    taken = np.zeros(len(ss) + len(rs), dtype=bool)
    taken[pos_s] = True
    return pos_s, np.flatnonzero(~taken)


class Recorder:
    """Collects rows as tuples (cheap) and builds DataFrames at the end. Every ``PACK_ROWS``
    rows of a kind are packed into a float64 block (a long run keeps about 8 bytes per
    value, not a Python object); the frames are the same either way."""

    def __init__(self, kv_blocks_total: int | list[int] = 1):
        """``kv_blocks_total``: the KV blocks of the replica, or of each replica by index."""
        self.kv_blocks_total = kv_blocks_total
        self.requests: list[tuple] = []  # the rows not packed yet (and below: their blocks)
        self.iterations: list[tuple] = []
        self._request_blocks: list[np.ndarray] = []
        self._iteration_blocks: list[np.ndarray] = []
        self._run_blocks: list[np.ndarray] = []
        self.extra_itl_s: list[float] = []
        # fast-forwarded decode runs: the per-step columns as flat lists, the columns constant
        # within a run once per run (_RUN_CONST); prefill, preemption and swap columns are zero
        # typed arrays: numpy reads them without conversion at the end
        self._run_steps: dict[str, array] = {c: array("q" if c in _INT_COLUMNS else "d") for c in _RUN_STEP_COLUMNS}
        self._runs: list[tuple] = []
        self.num_done = 0
        self.progress = None  # optional callable(num_done)

    def request_done(self, r) -> None:
        self.requests.append((r.id, r.replica, r.arrival_s, r.scheduled_s, r.first_token_s, r.finish_s,
                              r.prompt_tokens, r.num_output if r.state != REJECTED else 0,
                              r.num_preemptions, r.state == REJECTED, r.client,
                              r.priority, r.preempted_s, r.swap_bytes))
        if len(self.requests) >= PACK_ROWS:
            _pack(self.requests, self._request_blocks)
        if r.extra_itl_s:
            self.extra_itl_s.extend(r.extra_itl_s)
        self.num_done += 1
        if self.progress is not None and self.num_done % 500 == 0:
            self.progress(self.num_done)

    def iteration(self, replica: int, start_s: float, st, shape, num_running: int, num_waiting: int,
                  kv_used_blocks: int, num_preempted: int, swap_bytes: float = 0.0,
                  swap_s: float = 0.0, num_itl_tokens: int | None = None, bubble_s: float = 0.0) -> None:
        chunks = shape.prefill_chunks
        self.iterations.append((replica, start_s, st.total_s, len(chunks), sum(c for c, _ in chunks),
                                shape.num_decode, shape.decode_context_sum, num_running, num_waiting,
                                kv_used_blocks, num_preempted, st.gemm_s, st.attn_s, st.other_s,
                                st.comm_s, st.host_s, swap_bytes, swap_s,
                                shape.num_decode if num_itl_tokens is None else num_itl_tokens, bubble_s))
        if len(self.iterations) >= PACK_ROWS:
            _pack(self.iterations, self._iteration_blocks)

    def decode_run(self, replica: int, starts: list[float], totals: list[float], attn: list[float],
                   fixed, n: int, context_sum: int, num_running: int, num_waiting: int,
                   kv_used: list[int]) -> None:
        """k pure-decode iterations at once (the same rows as k calls of ``iteration``; the
        decode context sum grows by n per step)."""
        c = self._run_steps  # fromlist: 2x faster than extend from a list
        c["start_s"].fromlist(starts)
        c["step_s"].fromlist(totals)
        c["attn_s"].fromlist(attn)
        c["kv_used_blocks"].fromlist(kv_used)
        self._runs.append((len(starts), replica, n, n, context_sum, num_running, num_waiting,
                           fixed.gemm_s, fixed.other_s, fixed.comm_s, fixed.host_s))
        if len(self._runs) >= PACK_ROWS:
            _pack(self._runs, self._run_blocks)

    @property
    def num_requests(self) -> int:
        return len(self.requests) + sum(len(b) for b in self._request_blocks)

    def _run_columns(self, columns) -> dict[str, np.ndarray]:
        """The fast-forwarded rows of ``columns`` (and replica, start_s), column by column
        (constant columns repeated per run)."""
        runs = self._runs  # integers < 2**53: exact as float64
        width = len(_RUN_CONST) + 1
        table = np.fromiter(chain.from_iterable(runs), dtype=_FLOAT64, count=len(runs) * width).reshape(-1, width)
        if self._run_blocks:
            table = np.concatenate([*self._run_blocks, table])
        k = table[:, 0].astype(_INT64)
        total = int(k.sum())
        want = set(columns) | {"replica", "start_s"}
        out = {c: np.frombuffer(v, dtype=_dtype(c)) if len(v) else np.zeros(0, _dtype(c))
               for c, v in self._run_steps.items() if c in want}
        for i, c in enumerate(_RUN_CONST, start=1):
            if c in want or (c == "num_decode" and "decode_context_sum" in want):
                out[c] = np.repeat(table[:, i].astype(_dtype(c)), k)
        if "decode_context_sum" in want:  # context sum of step j of a run: context_sum + j * n
            first = np.repeat(np.cumsum(k) - k, k)
            out["decode_context_sum"] = out["decode_context_sum"] + out["num_decode"] * (np.arange(total) - first)
        for c in want:
            if c not in out:
                out[c] = np.zeros(total, _dtype(c))
        return out

    def requests_frame(self, pool_of: list[str] | None = None) -> pd.DataFrame:
        """One row per request, by id; ``pool_of[i]``: the pool name of replica i (adds a
        categorical ``pool`` column after ``replica``)."""
        if self._request_blocks:  # packed: rebuild each column with the type from_records gives
            t = _table(self.requests, self._request_blocks, len(REQUEST_COLUMNS))
            df = pd.DataFrame({c: t[:, i].astype(bool if c == "rejected" else _INT64 if c in _REQ_INT else _FLOAT64)
                               for i, c in enumerate(REQUEST_COLUMNS)})
        else:
            df = pd.DataFrame.from_records(self.requests, columns=REQUEST_COLUMNS)
        if pool_of is not None:
            names = list(dict.fromkeys(pool_of))
            codes = np.array([names.index(p) for p in pool_of], dtype=np.int64)
            df.insert(2, "pool", pd.Categorical.from_codes(codes[df["replica"].to_numpy()], names)
                      if len(df) else pd.Categorical([], categories=names))
        df = df.sort_values("request_id", kind="stable").reset_index(drop=True)
        for c in ("scheduled_s", "first_token_s"):
            df.loc[df[c] < 0, c] = np.nan
        ok = ~df["rejected"]
        df["queue_s"] = df["scheduled_s"] - df["arrival_s"]
        df["ttft_s"] = df["first_token_s"] - df["arrival_s"]
        df["e2e_s"] = (df["finish_s"] - df["arrival_s"]).where(ok)
        n = df["output_tokens"]
        df["tpot_s"] = ((df["finish_s"] - df["first_token_s"]) / (n - 1)).where(ok & (n > 1))
        return df

    def iterations_frame(self, columns: list[str] | None = None) -> pd.DataFrame:
        """Stepped rows and fast-forwarded runs merged in (replica, start) order (stepped rows
        first on a tie), each column allocated once and the frame built without a copy.
        ``columns``: only those (of ITERATION_COLUMNS, and kv_usage_frac), in that order."""
        cols = [*ITERATION_COLUMNS, "kv_usage_frac"] if columns is None else list(columns)
        base = [c for c in ITERATION_COLUMNS if c in cols or (c == "kv_used_blocks" and "kv_usage_frac" in cols)]
        need = list(dict.fromkeys([*base, "replica", "start_s"]))
        idx = {c: i for i, c in enumerate(ITERATION_COLUMNS)}
        rows = self.iterations
        if self._iteration_blocks:
            t = _table(rows, self._iteration_blocks, len(ITERATION_COLUMNS))
            steps = {c: t[:, idx[c]].astype(_dtype(c)) for c in need}
        else:
            step_cols = list(zip(*rows)) if rows else [()] * len(ITERATION_COLUMNS)
            steps = {c: np.array(step_cols[idx[c]], dtype=_dtype(c)) for c in need}
        if not self._runs and not self._run_blocks:
            data = steps
            if steps["replica"].any():  # several replicas: group them, each in time order
                order = np.lexsort((steps["start_s"], steps["replica"]))
                data = {c: v[order] for c, v in steps.items()}
        else:
            runs = self._run_columns(need)
            pos_s, pos_r = _merge_positions(steps, runs)
            n = len(pos_s) + len(pos_r)
            data = {}
            for c in need:
                a = np.empty(n, dtype=_dtype(c))
                a[pos_s] = steps[c]
                a[pos_r] = runs[c]
                data[c] = a
        if "kv_usage_frac" in cols:
            tot = self.kv_blocks_total
            if isinstance(tot, (list, tuple)):  # several replicas: each row over its own replica's
                tot = np.asarray(tot, dtype=_INT64)[data["replica"]]
            data["kv_usage_frac"] = data["kv_used_blocks"] / tot
        return pd.DataFrame({c: data[c] for c in cols}, columns=cols, copy=False)
