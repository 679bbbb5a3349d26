"""Queue orders: which waiting request is admitted next, and which running one is preempted.

Models: the waiting queue of one replica under three orders, each with the victim choice
that goes with it when KV blocks run out:

- ``fcfs``: arrival order; a preempted request goes back to the head; the victim is the
  last-admitted running request (vLLM v0 and v1 ``--scheduling-policy fcfs``);
- ``priority``: lowest ``(priority, arrival)`` first (lower value = more urgent, as in vLLM);
  a preempted request re-enters by its key; the victim is the running request with the
  highest ``(priority, arrival)`` (vLLM v1 ``--scheduling-policy priority``);
- ``shortest-prompt-first``: fewest prompt tokens first (ties by arrival), a
  shortest-job-first approximation that needs no output-length oracle; the victim is the
  last-admitted running request.

A queue offers the deque methods the scheduler uses (``append``, ``appendleft`` for a
preempted request, ``popleft``, ``[0]``, ``len``, iteration) plus ``victim(running)``.

Ignores: preempting running requests for a more urgent arrival (vLLM v0's
``_schedule_priority_preemption``), aging, per-class quotas.
"""
from __future__ import annotations

import heapq
from collections import deque

from sim.registry import Registry

queue_orders: Registry = Registry("scheduling policy")


def _last_admitted(running: dict, skip) -> object:
    for rid in reversed(running):
        if rid not in skip:
            return running[rid]
    raise RuntimeError("no running request can be preempted")


@queue_orders.register("fcfs")
class FCFSQueue(deque):
    """First come, first served (a plain deque: no overhead on the default path)."""

    def victim(self, running: dict, skip=()):
        return _last_admitted(running, skip)


class _HeapQueue:
    """A heap ordered by ``key(request)``; ``appendleft`` re-inserts by key too."""

    def __init__(self):
        self._heap: list = []

    def key(self, r) -> tuple:
        raise NotImplementedError

    def append(self, r) -> None:
        heapq.heappush(self._heap, (*self.key(r), r.id, r))

    appendleft = append

    def popleft(self):
        return heapq.heappop(self._heap)[-1]

    def __getitem__(self, i: int):
        if i != 0:
            raise IndexError("only the head of a priority queue can be read")
        return self._heap[0][-1]

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self):
        return (e[-1] for e in sorted(self._heap))


@queue_orders.register("priority")
class PriorityQueue(_HeapQueue):
    """Lowest (priority, arrival time) first; victims are the highest (priority, arrival)."""

    def key(self, r) -> tuple:
        return (r.priority, r.arrival_s)

    def victim(self, running: dict, skip=()):
        cands = [r for rid, r in running.items() if rid not in skip]
        if not cands:
            raise RuntimeError("no running request can be preempted")
        return max(cands, key=lambda r: (r.priority, r.arrival_s, r.id))


@queue_orders.register("shortest-prompt-first")
class ShortestPromptFirst(_HeapQueue):
    """Fewest prompt tokens first (ties by arrival); victims are the last admitted."""

    def key(self, r) -> tuple:
        return (r.prompt_tokens, r.arrival_s)

    def victim(self, running: dict, skip=()):
        return _last_admitted(running, skip)
