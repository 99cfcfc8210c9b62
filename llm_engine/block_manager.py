"""Paged KV bookkeeping: which pool block holds which tokens. No torch.

A sequence owns a *block table* (``list[int]`` of block ids); token ``p`` lives in block
``table[p // block_size]`` at offset ``p % block_size``. Blocks are reference counted: full
blocks are registered under a chain hash of their tokens (the hash of everything before them
and their own tokens), so another sequence that starts with the same tokens -- a shared system
prompt -- reuses them instead of recomputing. A sequence never writes into a block someone else
holds: writing into a shared, partially used block first copies it (copy on write).

Freed blocks keep their hash until they are reused, so a conversation evicted from the pool can
often get its prefix back for free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

_NO_HASH = -1


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int = _NO_HASH
    tokens: tuple[int, ...] = ()


def chain_hash(tokens: Sequence[int], prev: int) -> int:
    """Hash of a full block given the hash of the block before it (``-1`` for the first)."""
    return hash((prev, tuple(tokens)))


class BlockManager:
    """Allocate, share, copy-on-write, truncate and free KV blocks for block tables."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        assert num_blocks > 0 and block_size > 0
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: dict[int, None] = dict.fromkeys(range(num_blocks))  # insertion-ordered set
        self._by_hash: dict[int, int] = {}

    @property
    def num_free(self) -> int:
        return len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # --- prefix sharing -------------------------------------------------------------------

    def match_prefix(self, tokens: Sequence[int]) -> int:
        """How many leading tokens of ``tokens`` are held in cached full blocks (no change)."""
        return len(self._cached_blocks(tokens)) * self.block_size

    def _cached_blocks(self, tokens: Sequence[int]) -> list[int]:
        bs, prev, found = self.block_size, _NO_HASH, []
        for i in range(len(tokens) // bs):
            chunk = tuple(tokens[i * bs : (i + 1) * bs])
            h = chain_hash(chunk, prev)
            bid = self._by_hash.get(h)
            if bid is None or self.blocks[bid].tokens != chunk:
                break
            found.append(bid)
            prev = h
        return found

    def allocate_prefix(self, table: list[int], tokens: Sequence[int]) -> int:
        """For an empty table, take the cached full blocks that start ``tokens`` (at most
        ``len(tokens) - 1`` tokens, so one is always left to compute). Returns tokens cached."""
        assert not table
        usable = self._cached_blocks(tokens[: max(len(tokens) - 1, 0)])
        for bid in usable:
            block = self.blocks[bid]
            if block.ref_count == 0:
                del self._free[bid]
            block.ref_count += 1
            table.append(bid)
        return len(usable) * self.block_size

    def share(self, table: list[int]) -> list[int]:
        """A second table over ``table``'s blocks (one more reference each): it reads the same
        KV, and either table writing into a shared partial block copies it first."""
        for bid in table:
            assert self.blocks[bid].ref_count > 0, f"sharing free block {bid}"
            self.blocks[bid].ref_count += 1
        return list(table)

    # --- growth ----------------------------------------------------------------------------

    def _needs_copy(self, table: list[int], num_cached: int) -> bool:
        partial = num_cached % self.block_size != 0
        return partial and self.blocks[table[num_cached // self.block_size]].ref_count > 1

    def blocks_needed(self, table: list[int], num_cached: int, num_new: int) -> int:
        """Fresh blocks needed to write ``num_new`` tokens after ``num_cached``."""
        extra = max(self.blocks_for(num_cached + num_new) - len(table), 0)
        return extra + int(self._needs_copy(table, num_cached))

    def can_grow(self, table: list[int], num_cached: int, num_new: int) -> bool:
        return self.blocks_needed(table, num_cached, num_new) <= self.num_free

    def grow(self, table: list[int], num_cached: int, num_new: int) -> list[tuple[int, int]]:
        """Make ``table`` cover ``num_cached + num_new`` tokens, all writable by this table.

        Returns block copies ``(src, dst)`` the KV pool must perform before the write.
        """
        assert self.can_grow(table, num_cached, num_new)
        copies = []
        if self._needs_copy(table, num_cached):
            i = num_cached // self.block_size
            src, dst = table[i], self._take()
            self.blocks[src].ref_count -= 1
            table[i] = dst
            copies.append((src, dst))
        while len(table) < self.blocks_for(num_cached + num_new):
            table.append(self._take())
        return copies

    def _take(self) -> int:
        bid = next(iter(self._free))
        del self._free[bid]
        block = self.blocks[bid]
        self._unregister(block)
        block.ref_count = 1
        return bid

    def register(self, table: list[int], tokens: Sequence[int], start: int, end: int) -> None:
        """Tokens ``[start, end)`` were just computed: hash the blocks they filled."""
        bs = self.block_size
        for i in range(start // bs, end // bs):
            block = self.blocks[table[i]]
            if block.hash != _NO_HASH:
                continue
            prev = self.blocks[table[i - 1]].hash if i else _NO_HASH
            if i and prev == _NO_HASH:
                return  # the chain is broken before this block; leave it private
            chunk = tuple(tokens[i * bs : (i + 1) * bs])
            h = chain_hash(chunk, prev)
            if h in self._by_hash:
                continue  # an identical block is already registered; keep that one
            block.hash, block.tokens = h, chunk
            self._by_hash[h] = block.block_id

    def _unregister(self, block: Block) -> None:
        if block.hash != _NO_HASH and self._by_hash.get(block.hash) == block.block_id:
            del self._by_hash[block.hash]
        block.hash, block.tokens = _NO_HASH, ()

    # --- shrinking -------------------------------------------------------------------------

    def truncate(self, table: list[int], num_tokens: int) -> None:
        """Shrink ``table`` to ``num_tokens`` tokens. A now-partial block held only by this
        table loses its hash (it will be overwritten); a shared one is copied on next write."""
        keep = self.blocks_for(num_tokens)
        self.free(table[keep:])
        del table[keep:]
        if num_tokens % self.block_size and table:
            last = self.blocks[table[-1]]
            if last.ref_count == 1:
                self._unregister(last)

    def free(self, table: list[int]) -> None:
        """Drop this table's reference on each of its blocks (the caller clears the table)."""
        for bid in reversed(table):  # tail blocks first: they are the least reusable
            block = self.blocks[bid]
            assert block.ref_count > 0, f"double free of block {bid}"
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[bid] = None  # keeps its hash until reused (oldest freed reused first)
