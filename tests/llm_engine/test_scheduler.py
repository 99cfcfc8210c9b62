"""Scheduler: batching, chunking, priority, eviction and preemption; no torch, no event loop."""

from __future__ import annotations

from llm_engine.scheduler import Scheduler, Sequence


def _run(sched: Scheduler) -> list[Sequence]:
    """One step with a fake model: every computed sequence that is generating samples 7."""
    batch = sched.schedule()
    ready = sched.complete(batch)
    for seq in ready:
        sched.append_token(seq, 7)
    return ready


def _seq(sched: Scheduler, sid: int, n: int, generating: bool = False) -> Sequence:
    seq = Sequence(sid)
    sched.add(seq)
    sched.extend(seq, list(range(100 * sid, 100 * sid + n)))
    if generating:
        sched.request(seq, generating=True)
    return seq


def test_prefill_is_chunked_then_decodes() -> None:
    sched = Scheduler(num_blocks=32, block_size=4, max_batch=4, max_step_tokens=8)
    seq = _seq(sched, 1, 20, generating=True)
    batch = sched.schedule()
    assert batch.prefills == [(seq, 8)] and not batch.decodes
    assert sched.complete(batch) == []
    _run(sched)  # 16
    assert _run(sched) == [seq]  # 20: first token sampled
    assert len(seq.tokens) == 21 and seq.num_cached == 20
    batch = sched.schedule()
    assert batch.decodes == [seq] and not batch.prefills


def test_decodes_batch_together_and_new_turn_prefill_interleaves() -> None:
    sched = Scheduler(num_blocks=64, block_size=4, max_batch=8, max_step_tokens=10)
    a = _seq(sched, 1, 3, generating=True)
    b = _seq(sched, 2, 3, generating=True)
    _run(sched)
    long_ = _seq(sched, 3, 40, generating=True)
    batch = sched.schedule()
    assert batch.decodes == [a, b]  # running sequences keep decoding ...
    assert batch.prefills == [(long_, 8)]  # ... while the new turn prefills within the budget


def test_live_turn_prefill_goes_before_plain_append() -> None:
    sched = Scheduler(num_blocks=64, block_size=4, max_batch=8, max_step_tokens=8)
    append_only = _seq(sched, 1, 8)
    live = _seq(sched, 2, 8, generating=True)
    batch = sched.schedule()
    assert batch.prefills == [(live, 8)]
    sched.complete(batch)
    batch = sched.schedule()
    assert batch.prefills == [(append_only, 8)]


def test_append_completes_and_goes_idle() -> None:
    sched = Scheduler(num_blocks=8, block_size=4, max_batch=2, max_step_tokens=64)
    seq = _seq(sched, 1, 6)
    _run(sched)
    assert sched.is_done(seq)
    sched.stop(seq)
    assert not sched.schedule()


def test_max_batch_limits_decodes() -> None:
    sched = Scheduler(num_blocks=64, block_size=4, max_batch=2, max_step_tokens=64)
    seqs = [_seq(sched, i, 2, generating=True) for i in range(1, 4)]
    _run(sched)
    batch = sched.schedule()
    assert batch.decodes == seqs[:2]


def test_pool_exhaustion_evicts_lru_idle_first() -> None:
    sched = Scheduler(num_blocks=5, block_size=4, max_batch=4, max_step_tokens=64)
    old = _seq(sched, 1, 8)
    _run(sched)
    sched.stop(old)
    recent = _seq(sched, 2, 8)
    _run(sched)
    sched.stop(recent)
    sched.request(recent)  # touch: recent is now most recently used
    sched.stop(recent)
    new = _seq(sched, 3, 8)
    batch = sched.schedule()
    assert batch.prefills == [(new, 8)]
    assert old.num_cached == 0 and not old.block_table  # evicted: tokens kept, KV dropped
    assert old.tokens == list(range(100, 108))
    assert recent.num_cached == 8
    assert sched.num_evicted == 1


def test_evicted_sequence_is_recomputed_on_return() -> None:
    sched = Scheduler(num_blocks=4, block_size=4, max_batch=4, max_step_tokens=64)
    a = _seq(sched, 1, 8)
    _run(sched)
    sched.stop(a)
    b = _seq(sched, 2, 16)
    _run(sched)
    sched.stop(b)
    assert a.num_cached == 0
    sched.request(a, generating=True)
    assert _run(sched) == [a]  # b is evicted in turn, a recomputed and sampled
    assert a.num_cached == 8 and b.num_cached == 0


def test_preempts_latest_arrival_when_nothing_idle() -> None:
    sched = Scheduler(num_blocks=4, block_size=4, max_batch=4, max_step_tokens=64)
    first = _seq(sched, 1, 7, generating=True)
    second = _seq(sched, 2, 7, generating=True)
    _run(sched)
    assert first.num_cached == 7 and second.num_cached == 7  # 2 blocks each: pool full
    _run(sched)  # position 7 still fits in each sequence's second block
    assert first.num_cached == 8 and second.num_cached == 8
    _run(sched)  # first needs a 3rd block for position 8: second is preempted
    assert second.num_cached == 0 and not second.block_table
    assert first.num_cached == 9
    assert second.pending  # still wants its work; it resumes when there is room
    sched.stop(first)
    sched.remove(first)
    assert _run(sched) == [second]


def test_shared_prefix_blocks_are_reused_between_sequences() -> None:
    sched = Scheduler(num_blocks=16, block_size=4, max_batch=4, max_step_tokens=64)
    system = list(range(9))
    a = Sequence(1)
    sched.add(a)
    sched.extend(a, [*system, 50, 51])
    _run(sched)
    b = Sequence(2)
    sched.add(b)
    sched.extend(b, [*system, 60])
    batch = sched.schedule()
    assert batch.prefills == [(b, 2)]  # 8 tokens came from a's blocks
    assert b.block_table[:2] == a.block_table[:2]


def test_truncate_and_remove_return_blocks() -> None:
    sched = Scheduler(num_blocks=8, block_size=4, max_batch=4, max_step_tokens=64)
    seq = _seq(sched, 1, 13)
    _run(sched)
    sched.stop(seq)
    assert sched.blocks.num_free == 4
    sched.truncate(seq, 5)
    assert seq.tokens == list(range(100, 105)) and seq.num_cached == 5
    assert sched.blocks.num_free == 6
    sched.remove(seq)
    assert sched.blocks.num_free == 8
