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
        self.ref_count = [0] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        # Without prefix caching no block is ever looked up by key, so a LIFO stack serves
        # (same counts, different ids; several times faster than the LRU dict).
        self._stack: list[int] | None = None if prefix_caching else list(range(num_blocks - 1, -1, -1))
        self._key_of: dict[int, Hashable] = {}
        self._block_of_key: dict[Hashable, int] = {}

    # -- queries -------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free) if self._stack is None else len(self._stack)

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
            out = stack[-n:] if n else []
            del stack[len(stack) - n:]
            out.reverse()
            ref = self.ref_count
            for b in out:
                ref[b] = 1
            return out
        out = []
        free, ref = self._free, self.ref_count
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
            b = self._stack.pop()
            self.ref_count[b] = 1
            return b
        b, _ = self._free.popitem(last=False)
        if self._key_of:
            key = self._key_of.pop(b, None)
            if key is not None:
                del self._block_of_key[key]
        self.ref_count[b] = 1
        return b

    def touch(self, block: int) -> None:
        """Take one more reference to ``block`` (a prefix-cache hit)."""
        if self._stack is not None:
            raise RuntimeError("touch() needs a pool built with prefix_caching=True")
        if self.ref_count[block] == 0:
            del self._free[block]
        self.ref_count[block] += 1

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
        ref, free = self.ref_count, self._free
        stack = self._stack
        if stack is not None:
            blocks = list(blocks)
            for b in blocks:
                if ref[b] != 1:
                    raise ValueError(f"block {b} freed more often than allocated")
                ref[b] = 0
            stack.extend(blocks)
            return
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
        assert zero == free, "free list differs from zero-ref blocks"
        if self._stack is not None:
            assert len(free) == len(self._stack), "a block is on the free stack twice"
        assert all(c >= 0 for c in self.ref_count)
        assert all(self._block_of_key[k] == b for b, k in self._key_of.items())
        assert len(self._key_of) == len(self._block_of_key)
