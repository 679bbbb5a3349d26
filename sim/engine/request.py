"""A request as the engine sees it.

Models: vLLM v1's request state: ``num_computed`` (tokens whose KV exists) catching up
to ``num_tokens`` (prompt + generated). A step gives a request some tokens; when its
computed tokens reach its tokens, one token is sampled. Prefill, chunked prefill,
decode and recompute after preemption are all that one rule. A swapped-out request keeps
its computed tokens (its KV sits in host memory) and resumes where it stopped.

Ignores: token ids (only counts), stop strings, beam search, n > 1.
"""
from __future__ import annotations

WAITING, RUNNING, FINISHED, REJECTED, SWAPPED = 0, 1, 2, 3, 4


class Request:
    """One request's lengths, progress and timestamps (seconds of simulated time)."""

    __slots__ = ("id", "arrival_s", "prompt_tokens", "output_tokens", "num_computed", "num_output",
                 "blocks", "state", "scheduled_s", "first_token_s", "finish_s", "last_token_s",
                 "num_preemptions", "priority", "hash_ids", "decode_offset", "decode_c0", "decode_bucket",
                 "finish_step", "extra_itl_s", "replica", "client", "preempted_at_s", "preempted_s",
                 "swapped_blocks", "swap_bytes")

    def __init__(self, rid: int, arrival_s: float, prompt_tokens: int, output_tokens: int,
                 priority: int = 0, hash_ids=None, client: int = -1):
        self.id = rid
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.num_computed = 0
        self.num_output = 0
        self.blocks: list[int] = []
        self.state = WAITING
        self.scheduled_s = -1.0
        self.first_token_s = -1.0
        self.finish_s = -1.0
        self.last_token_s = -1.0
        self.num_preemptions = 0
        self.priority = priority
        self.hash_ids = hash_ids
        self.decode_offset = 0      # num_computed = decode_offset + step index, while in steady decode
        self.decode_c0 = 0          # num_computed when it entered steady decode
        self.decode_bucket = -1     # block-boundary residue class while in steady decode, else -1
        self.finish_step = -1
        self.extra_itl_s: list[float] | None = None  # inter-token gaps not equal to a step (after preemption)
        self.replica = -1
        self.client = client
        self.preempted_at_s = -1.0  # when last preempted (-1: not waiting after a preemption)
        self.preempted_s = 0.0      # time spent preempted (until scheduled again)
        self.swapped_blocks = 0     # blocks held in host swap space
        self.swap_bytes = 0.0       # KV bytes copied over PCIe for this request (out + in)

    @property
    def num_tokens(self) -> int:
        return self.prompt_tokens + self.num_output

    def __repr__(self) -> str:
        return (f"Request(id={self.id}, prompt={self.prompt_tokens}, out={self.num_output}/{self.output_tokens}, "
                f"computed={self.num_computed}, state={self.state})")
