"""Continuous batching: which tokens of which sequences to compute in the next step.

No torch, no asyncio. A :class:`Sequence` is a token list and how much of it is in the KV
pool. Work is "compute the tokens past ``num_cached``" for sequences that asked for it
(``pending``): a decode is the case of one token (the last sampled one). Each step holds every
decode (up to ``max_batch``) plus prefill chunks within ``max_step_tokens``, live turns (a
generation waiting for its first token) before plain appends. When the pool is short, the
least recently used idle sequences are evicted (their tokens stay; their KV is recomputed when
they return), then the latest-arrived pending sequences are preempted the same way.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from llm_engine.block_manager import BlockManager


@dataclass(slots=True, eq=False)
class Sequence:
    """One conversation's tokens and KV placement (owned by the engine thread)."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    num_cached: int = 0  # leading tokens whose KV is in the pool
    block_table: list[int] = field(default_factory=list)
    pending: bool = False  # someone waits for tokens[num_cached:] to be computed
    generating: bool = False  # sample after the last token is computed
    arrival: int = 0  # when the current work was requested (lower = older = first)
    last_used: int = 0
    computed: int = 0  # tokens whose KV its steps computed (recomputations included)
    # scoring: positions from here on are computed (not taken from the pool's shared prefix
    # cache) and their logits kept, so that every token after them gets its logprob
    logits_from: int | None = None

    @property
    def num_uncached(self) -> int:
        return len(self.tokens) - self.num_cached

    @property
    def decoding(self) -> bool:
        """Generating past its first token: one new token (the last sampled) to compute."""
        return self.generating and self.num_uncached == 1 and self.num_cached > 0


@dataclass(slots=True)
class ScheduledBatch:
    """The work of one step: ``decodes`` compute one token each; each prefill computes
    ``n`` tokens from its ``num_cached``. ``copies`` are block copies to do first."""

    decodes: list[Sequence]
    prefills: list[tuple[Sequence, int]]
    copies: list[tuple[int, int]]

    def __bool__(self) -> bool:
        return bool(self.decodes or self.prefills)


class Scheduler:
    """Decides each step's batch; owns the :class:`BlockManager`."""

    def __init__(
        self, num_blocks: int, block_size: int, max_batch: int, max_step_tokens: int
    ) -> None:
        self.blocks = BlockManager(num_blocks, block_size)
        self.max_batch = max_batch
        self.max_step_tokens = max_step_tokens
        self.seqs: dict[int, Sequence] = {}
        self._clock = itertools.count(1)
        self._dropped: set[int] = set()
        self.num_evicted = 0  # sequences whose KV was dropped to make room (for tests/metrics)

    # --- requests --------------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        self.seqs[seq.seq_id] = seq
        seq.last_used = next(self._clock)

    def remove(self, seq: Sequence) -> None:
        self._drop_kv(seq)
        del self.seqs[seq.seq_id]

    def fork(self, src: Sequence, dst: Sequence, n_tokens: int) -> None:
        """Add ``dst`` as a copy of ``src``'s first ``n_tokens`` tokens that shares their KV
        blocks (nothing recomputed; what ``src`` had not computed yet is requested)."""
        assert 0 <= n_tokens <= len(src.tokens) and not dst.tokens
        dst.tokens = src.tokens[:n_tokens]
        dst.num_cached = min(n_tokens, src.num_cached)
        dst.block_table = self.blocks.share(
            src.block_table[: self.blocks.blocks_for(dst.num_cached)]
        )
        self.add(dst)
        if dst.num_uncached:
            self.request(dst)

    def extend(self, seq: Sequence, tokens: list[int]) -> None:
        """Append tokens and ask for them to be computed."""
        seq.tokens.extend(tokens)
        self.request(seq)

    def request(self, seq: Sequence, generating: bool = False) -> None:
        """Ask for ``seq``'s uncached tokens to be computed (then sampled if generating)."""
        if not seq.pending:
            seq.arrival = next(self._clock)
        seq.pending = True
        seq.generating = generating or seq.generating
        seq.last_used = next(self._clock)

    def stop(self, seq: Sequence) -> None:
        """Stop generating (abort or finish); the sequence becomes idle at once."""
        seq.pending = seq.generating = False
        seq.last_used = next(self._clock)

    def truncate(self, seq: Sequence, n_tokens: int) -> None:
        assert 0 <= n_tokens <= len(seq.tokens)
        del seq.tokens[n_tokens:]
        if seq.num_cached > n_tokens:
            seq.num_cached = n_tokens
            self.blocks.truncate(seq.block_table, n_tokens)
        seq.last_used = next(self._clock)

    def uncache_last(self, seq: Sequence) -> None:
        """Forget the last token's KV so computing it again yields next-token logits."""
        if seq.tokens and seq.num_uncached == 0:
            self.uncache_from(seq, len(seq.tokens) - 1)

    def uncache_from(self, seq: Sequence, pos: int) -> None:
        """Forget the KV of positions ``pos`` on (kept in the tokens, computed again)."""
        if seq.num_cached > pos:
            seq.num_cached = pos
            self.blocks.truncate(seq.block_table, pos)

    def is_done(self, seq: Sequence) -> bool:
        """True when a pending non-generating request (an append) has nothing left to compute."""
        return not seq.generating and seq.num_uncached == 0

    def has_live_turn(self) -> bool:
        """Whether a generation waits for its first token (its prefill is still to run)."""
        return any(s.pending and s.generating and not s.decoding for s in self.seqs.values())

    # --- scheduling ------------------------------------------------------------------------

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch([], [], [])
        protected: set[int] = set()
        dropped = self._dropped = set()  # preempted this step: they wait for the next one
        active = sorted((s for s in self.seqs.values() if s.pending), key=lambda s: s.arrival)
        for seq in active:
            room = len(batch.decodes) < self.max_batch
            if seq.decoding and room and self._reserve(seq, 1, protected, batch):
                batch.decodes.append(seq)
        budget = max(self.max_step_tokens - len(batch.decodes), self.blocks.block_size)
        # live turns (generation waiting for its first token) go before plain appends
        waiting = [s for s in active if s.seq_id not in protected and s.seq_id not in dropped]
        waiting.sort(key=lambda s: (not s.generating, s.arrival))
        for seq in waiting:
            if budget <= 0:
                break
            if seq.num_cached == 0 and not seq.block_table:
                usable = (
                    seq.tokens if seq.logits_from is None else seq.tokens[: seq.logits_from + 1]
                )
                seq.num_cached = self.blocks.allocate_prefix(seq.block_table, usable)
            n = min(budget, seq.num_uncached)
            if n > 0 and self._reserve(seq, n, protected, batch):
                batch.prefills.append((seq, n))
                budget -= n
        return batch

    def _reserve(self, seq: Sequence, n: int, protected: set[int], batch: ScheduledBatch) -> bool:
        bm = self.blocks
        while not bm.can_grow(seq.block_table, seq.num_cached, n):
            victim = self._victim(seq, protected)
            if victim is None:
                return False
            self._drop_kv(victim)
            self._dropped.add(victim.seq_id)
            self.num_evicted += 1
        batch.copies += bm.grow(seq.block_table, seq.num_cached, n)
        protected.add(seq.seq_id)
        return True

    def _victim(self, for_seq: Sequence, protected: set[int]) -> Sequence | None:
        idle = [s for s in self.seqs.values() if not s.pending and s.block_table]
        if idle:
            return min(idle, key=lambda s: s.last_used)
        later = [
            s
            for s in self.seqs.values()
            if s.block_table and s.seq_id not in protected and s.arrival > for_seq.arrival
        ]
        return max(later, key=lambda s: s.arrival) if later else None

    def _drop_kv(self, seq: Sequence) -> None:
        self.blocks.free(seq.block_table)
        seq.block_table.clear()
        seq.num_cached = 0

    # --- after the step --------------------------------------------------------------------

    def complete(self, batch: ScheduledBatch) -> list[Sequence]:
        """Record the step's computed tokens; return sequences that now need a sampled token."""
        ready = []
        for seq, n in [(s, 1) for s in batch.decodes] + batch.prefills:
            start = seq.num_cached
            seq.num_cached += n
            self.blocks.register(seq.block_table, seq.tokens, start, seq.num_cached)
            if seq.generating and seq.num_uncached == 0:
                ready.append(seq)
        return ready

    def append_token(self, seq: Sequence, token: int) -> None:
        """A sampled token joins the sequence (computed in the next step if still generating)."""
        seq.tokens.append(token)
        seq.last_used = next(self._clock)
