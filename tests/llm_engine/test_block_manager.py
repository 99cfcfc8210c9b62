"""BlockManager: exact bookkeeping, no torch, no event loop."""

from __future__ import annotations

from llm_engine.block_manager import BlockManager


def test_grow_and_free_return_to_baseline() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    table: list[int] = []
    assert bm.blocks_needed(table, 0, 9) == 3
    assert bm.grow(table, 0, 9) == []
    assert len(table) == 3 and bm.num_free == 5
    assert bm.grow(table, 9, 3) == []  # 12 tokens still fit in 3 blocks
    assert len(table) == 3
    bm.grow(table, 12, 1)
    assert len(table) == 4
    bm.free(table)
    table.clear()
    assert bm.num_free == 8


def test_can_grow_respects_pool() -> None:
    bm = BlockManager(num_blocks=2, block_size=4)
    table: list[int] = []
    assert bm.can_grow(table, 0, 8)
    assert not bm.can_grow(table, 0, 9)


def test_shared_prefix_is_reused_and_refcounted() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    tokens = list(range(10))
    a: list[int] = []
    bm.grow(a, 0, 10)
    bm.register(a, tokens, 0, 10)  # two full blocks get hashes
    assert bm.match_prefix(tokens) == 8
    b: list[int] = []
    cached = bm.allocate_prefix(b, [*tokens, 99])
    assert cached == 8 and b == a[:2]
    assert [bm.blocks[i].ref_count for i in a] == [2, 2, 1]
    assert bm.num_free == 5
    bm.free(a)
    bm.free(b)
    assert bm.num_free == 8


def test_prefix_match_leaves_one_token_to_compute() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    tokens = list(range(8))
    a: list[int] = []
    bm.grow(a, 0, 8)
    bm.register(a, tokens, 0, 8)
    b: list[int] = []
    assert bm.allocate_prefix(b, tokens) == 4  # not 8: the last token must produce logits


def test_diverging_prefix_stops_matching() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    a: list[int] = []
    bm.grow(a, 0, 8)
    bm.register(a, list(range(8)), 0, 8)
    assert bm.match_prefix([0, 1, 2, 3, 9, 9, 9, 9, 9]) == 4
    assert bm.match_prefix([9, 1, 2, 3, 4, 5, 6, 7, 8]) == 0


def test_copy_on_write_of_shared_partial_block() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    tokens = list(range(8))
    a: list[int] = []
    bm.grow(a, 0, 8)
    bm.register(a, tokens, 0, 8)
    b: list[int] = []
    bm.allocate_prefix(b, [*tokens, 50])
    bm.grow(b, 4, 5)  # b recomputes nothing yet; tables share block 0
    shared = b[0]
    bm.truncate(b, 2)  # b rolls back into the shared block
    assert b == [shared] and bm.blocks[shared].ref_count == 2
    assert bm.blocks_needed(b, 2, 1) == 1  # writing needs a private copy
    copies = bm.grow(b, 2, 1)
    assert copies == [(shared, b[0])] and b[0] != shared
    assert bm.blocks[shared].ref_count == 1  # a still holds it, contents untouched
    assert bm.match_prefix(tokens) == 8  # a's blocks are still found by hash
    bm.free(a)
    bm.free(b)
    assert bm.num_free == 8


def test_truncate_private_block_drops_its_hash() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    tokens = list(range(8))
    a: list[int] = []
    bm.grow(a, 0, 8)
    bm.register(a, tokens, 0, 8)
    bm.truncate(a, 6)
    assert len(a) == 2
    assert bm.match_prefix(tokens) == 4  # block 2 will be overwritten: no longer matchable
    bm.truncate(a, 0)
    assert a == [] and bm.num_free == 4


def test_freed_blocks_keep_hash_until_reused() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    tokens = [1, 2, 3, 4, 5]
    a: list[int] = []
    bm.grow(a, 0, 5)
    bm.register(a, tokens, 0, 5)
    bm.free(a)
    assert bm.num_free == 4
    b: list[int] = []
    assert bm.allocate_prefix(b, tokens) == 4  # evicted prefix comes back for free
    assert bm.num_free == 2
    other: list[int] = []
    bm.grow(other, 0, 4)  # takes the remaining free blocks
    bm.free(b)
    bm.free(other)
    assert bm.num_free == 4


def test_shared_table_copies_its_partial_block_on_write() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    a: list[int] = []
    bm.grow(a, 0, 10)  # 2 full blocks and one holding 2 tokens
    b = bm.share(a)
    assert b == a and [bm.blocks[i].ref_count for i in a] == [2, 2, 2] and bm.num_free == 5
    copies = bm.grow(b, 10, 1)  # b writes token 10 into the shared partial block
    assert copies == [(a[2], b[2])] and b[2] != a[2] and b[:2] == a[:2]
    assert bm.grow(a, 10, 1) == []  # a holds its partial block alone again
    bm.free(a)
    bm.free(b)
    assert bm.num_free == 8
