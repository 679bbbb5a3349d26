"""A pool of fixed-size KV blocks with ids, reference counts and an LRU free list.

Models: vLLM's block pool. Free blocks sit in an LRU queue; a freed block that carries a
prefix key (a full block whose content hash is known) stays findable by that key until it
is reused for something else, so a later request with the same prefix can take it back
(ref count 0 -> 1) instead of recomputing it. Only full blocks carry keys.

Ignores: block contents (only identity and keys), host/disk tiers (see engine swap).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, Iterable


class BlockPool:
    """``num_blocks`` blocks of ``block_size_tokens`` tokens each."""

    def __init__(self, num_blocks: int, block_size_tokens: int, prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError("num_blocks must be >= 1")
        self.num_blocks = num_blocks
        self.block_size_tokens = block_size_tokens
        self.prefix_caching = prefix_caching
        # Without prefix caching no block is ever shared or looked up by key, so a LIFO stack
        # of free ids serves (same counts, different ids) and reference counts are implied
        # (1 for a block off the stack, 0 on it): allocate and free are list slices, with no
        # per-block Python work. ``check`` verifies the stack holds no block twice.
        self._stack: list[int] | None = None if prefix_caching else list(range(num_blocks - 1, -1, -1))
        self._ref: list[int] | None = [0] * num_blocks if prefix_caching else None
        self._free: OrderedDict[int, None] = OrderedDict(
            (i, None) for i in range(num_blocks)) if prefix_caching else OrderedDict()
        self._key_of: dict[int, Hashable] = {}
        self._block_of_key: dict[Hashable, int] = {}

    # -- queries -------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free) if self._stack is None else len(self._stack)

    @property
    def ref_count(self) -> list[int]:
        """Reference count of every block (implied by the free stack without prefix caching)."""
        if self._ref is not None:
            return self._ref
        ref = [1] * self.num_blocks
        for b in self._stack:
            ref[b] = 0
        return ref

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def usage_frac(self) -> float:
        return self.num_used / self.num_blocks

    def lookup(self, key: Hashable) -> int | None:
        """The block holding prefix ``key``, whether in use or free (cached), else None."""
        return self._block_of_key.get(key)

    # -- mutations -----------------------------------------------------------------------
    def allocate(self, n: int) -> list[int]:
        """Take ``n`` blocks from the LRU end of the free list (evicting their keys)."""
        if n > self.num_free:
            raise MemoryError(f"need {n} blocks, {self.num_free} free")
        stack = self._stack
        if stack is not None:
            if not n:
                return []
            out = stack[-n:]
            del stack[-n:]
            out.reverse()
            return out
        out = []
        free, ref = self._free, self._ref
        for _ in range(n):
            b, _ = free.popitem(last=False)
            key = self._key_of.pop(b, None)
            if key is not None:
                del self._block_of_key[key]
            ref[b] = 1
            out.append(b)
        return out

    def allocate_one(self) -> int:
        if self._stack is not None:
            return self._stack.pop()
        b, _ = self._free.popitem(last=False)
        if self._key_of:
            key = self._key_of.pop(b, None)
            if key is not None:
                del self._block_of_key[key]
        self._ref[b] = 1
        return b

    def touch(self, block: int) -> None:
        """Take one more reference to ``block`` (a prefix-cache hit)."""
        if self._stack is not None:
            raise RuntimeError("touch() needs a pool built with prefix_caching=True")
        if self._ref[block] == 0:
            del self._free[block]
        self._ref[block] += 1

    def set_key(self, block: int, key: Hashable) -> None:
        """Mark a full, in-use block as holding prefix ``key`` (first writer wins)."""
        if key in self._block_of_key or block in self._key_of:
            return
        self._key_of[block] = key
        self._block_of_key[key] = block

    def free(self, blocks: Iterable[int]) -> None:
        """Drop one reference to each block; blocks reaching zero join the free list.

        Blocks are released in reverse order so that a request's tail blocks (least likely
        to be shared) are evicted first, as vLLM does.
        """
        stack = self._stack
        if stack is not None:
            n = len(stack)
            stack.extend(blocks)
            if len(stack) > self.num_blocks:  # cheap guard; check() finds any duplicate
                del stack[n:]
                raise ValueError("blocks freed more often than allocated")
            return
        ref, free = self._ref, self._free
        for b in reversed(list(blocks)):
            c = ref[b] - 1
            if c < 0:
                raise ValueError(f"block {b} freed more often than allocated")
            ref[b] = c
            if c == 0:
                free[b] = None

    def check(self) -> None:
        """Invariants (tests): free list == blocks with ref 0; keys are a bijection."""
        zero = {b for b, c in enumerate(self.ref_count) if c == 0}
        free = set(self._free) if self._stack is None else set(self._stack)
        if self._stack is not None:
            assert len(free) == len(self._stack), "a block is on the free stack twice"
            assert all(0 <= b < self.num_blocks for b in free), "unknown block on the free stack"
        assert zero == free, "free list differs from zero-ref blocks"
        assert all(c >= 0 for c in self.ref_count)
        assert all(self._block_of_key[k] == b for b, k in self._key_of.items())
        assert len(self._key_of) == len(self._block_of_key)
