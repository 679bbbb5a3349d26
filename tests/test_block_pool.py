"""Exact fixtures for the block pool: a pool of 11 blocks of 16 tokens."""
import pytest

from sim.kv.block_pool import BlockPool
from sim.kv.manager import KVManager


class R:
    def __init__(self):
        self.blocks = []


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_allocate_and_free_conserve_blocks(prefix_caching):
    pool = BlockPool(11, 16, prefix_caching=prefix_caching)
    a = pool.allocate(4)
    b = pool.allocate(7)
    assert len(set(a) | set(b)) == 11 and pool.num_free == 0 and pool.num_used == 11
    with pytest.raises(MemoryError):
        pool.allocate(1)
    pool.free(a)
    assert pool.num_free == 4
    pool.check()
    pool.free(b)
    assert pool.num_free == 11 and pool.usage_frac() == 0.0
    pool.check()
    with pytest.raises(ValueError):
        pool.free([a[0]])


def test_lru_order_and_prefix_keys():
    pool = BlockPool(11, 16)
    assert pool.allocate(3) == [0, 1, 2]  # fresh pool hands out ids in order
    blocks = [0, 1, 2]
    pool.set_key(0, "k0")
    pool.set_key(1, "k1")
    pool.free(blocks)  # released tail first: 2, 1, 0 join the LRU end
    # the 8 never-used blocks are older in the free list than the 3 just freed
    assert pool.allocate(8) == [3, 4, 5, 6, 7, 8, 9, 10]
    assert pool.lookup("k0") == 0 and pool.lookup("k1") == 1
    pool.touch(0)  # prefix hit on a free cached block: ref 0 -> 1, leaves the free list
    assert pool.ref_count[0] == 1 and pool.num_free == 2
    nxt = pool.allocate(1)  # LRU end: block 2 (freed first), which has no key
    assert nxt == [2]
    nxt = pool.allocate(1)  # then block 1: its key is evicted
    assert nxt == [1] and pool.lookup("k1") is None and pool.lookup("k0") == 0
    pool.touch(0)
    assert pool.ref_count[0] == 2
    pool.free([0])
    assert pool.ref_count[0] == 1 and pool.num_free == 0
    pool.check()


def test_manager_grows_by_block_boundaries():
    kv = KVManager(BlockPool(11, 16, prefix_caching=False))
    r = R()
    assert kv.grow(r, 1) and len(r.blocks) == 1
    assert kv.grow(r, 16) and len(r.blocks) == 1
    assert kv.grow(r, 17) and len(r.blocks) == 2
    assert kv.extra_blocks(r, 16 * 11) == 9
    assert kv.grow(r, 16 * 11) and kv.pool.num_free == 0
    assert not kv.grow(r, 16 * 11 + 1)
    kv.release(r)
    assert r.blocks == [] and kv.pool.num_free == 11


def test_stack_pool_finds_a_block_freed_twice():
    """Without prefix caching reference counts are implied by the free stack: a block freed
    while free is caught by check() (or at once, when the stack would overflow)."""
    pool = BlockPool(4, 16, prefix_caching=False)
    a = pool.allocate(2)
    assert pool.ref_count == [1 if b in a else 0 for b in range(4)]
    pool.free([a[0]])
    pool.free([a[0]])  # freed twice while a[1] is still held: not caught at once...
    with pytest.raises(AssertionError, match="twice"):
        pool.check()  # ...but by the invariant check
    pool = BlockPool(2, 16, prefix_caching=False)
    b = pool.allocate(1)
    pool.free(b)
    with pytest.raises(ValueError):
        pool.free(b + [b[0]])  # more free blocks than the pool has
    assert pool.num_free == 2
    pool.check()
