"""A small pool: idle conversations are evicted and recomputed; live requests never fail."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.llm_engine.helpers import greedy

TOPICS = ["cats", "the sea", "bread", "winter", "music", "trains"]


@pytest.fixture(scope="module")
def tiny_pool(smol_dir: Path) -> Iterator[Any]:
    from llm_engine import Engine, EngineConfig

    # 8 blocks x 16 = 128 tokens: about two of these ~65-token conversations fit
    engine = Engine(
        EngineConfig(
            model_dir=smol_dir,
            dtype="float32",
            quant="none",
            num_blocks=8,
            block_size=16,
            max_batch=4,
            max_step_tokens=64,
        )
    )
    engine.start()
    yield engine
    engine.close()


async def _turn(conv: Any, topic: str) -> tuple[list[int], str]:
    await conv.append({"role": "user", "content": f"Say one sentence about {topic}."})
    return await greedy(conv, 8)


async def test_eviction_recomputes_and_matches_big_pool(tiny_pool: Any, smol_engine: Any) -> None:
    async def scenario(engine: Any) -> list[tuple[list[int], str]]:
        convs = [engine.open_conversation("You are brief.") for _ in range(3)]
        try:
            out = [await _turn(c, t) for c, t in zip(convs, TOPICS, strict=False)]
            out += [await _turn(c, t) for c, t in zip(convs, TOPICS[3:], strict=False)]
            return out
        finally:
            for c in convs:
                await c.close()

    want = await scenario(smol_engine)
    evicted_before = tiny_pool.scheduler.num_evicted
    got = await scenario(tiny_pool)
    assert tiny_pool.scheduler.num_evicted > evicted_before  # the pool really ran out
    assert got == want
    assert tiny_pool.free_blocks() == tiny_pool.config.num_blocks


async def test_concurrent_live_requests_over_capacity_all_finish(tiny_pool: Any) -> None:
    async def one(topic: str) -> int:
        conv = tiny_pool.open_conversation("You are brief.")
        try:
            ids, _ = await _turn(conv, topic)
            return len(ids)
        finally:
            await conv.close()

    results = await asyncio.gather(*(one(t) for t in TOPICS))
    assert results == [8] * len(TOPICS)
    assert tiny_pool.running
    assert tiny_pool.free_blocks() == tiny_pool.config.num_blocks


async def test_forks_over_capacity_evict_recompute_and_match_big_pool(
    tiny_pool: Any, smol_engine: Any
) -> None:
    """Forks of one conversation answer different turns at once in a pool too small for them
    all: evicting a sequence whose blocks a sibling still holds frees only its own, and every
    fork still answers as in a big pool."""

    async def scenario(engine: Any) -> list[tuple[list[int], str]]:
        root = engine.open_conversation("You are brief.")
        forks: list[Any] = []
        try:
            await _turn(root, TOPICS[0])
            topics = TOPICS[1:4]
            forks = [await root.fork() for _ in topics]
            turns = (_turn(f, t) for f, t in zip(forks, topics, strict=True))
            return list(await asyncio.gather(*turns))
        finally:
            for conv in [root, *forks]:
                await conv.close()

    want = await scenario(smol_engine)
    evicted_before = tiny_pool.scheduler.num_evicted
    assert await scenario(tiny_pool) == want
    assert tiny_pool.scheduler.num_evicted > evicted_before
    assert tiny_pool.free_blocks() == tiny_pool.config.num_blocks


async def test_a_prompt_scored_while_the_pool_runs_out_scores_as_in_a_big_one(
    smol_dir: Path, smol_engine: Any
) -> None:
    """A generation that outgrows a small pool preempts a prompt being scored, in small steps,
    again and again; the prompt's logprobs and the generation still equal the big pool's."""
    from llm_engine import Engine, EngineConfig, SamplingParams

    story = "Once upon a time, in a village by the sea, there lived an old fisherman and his cat"
    scored = "Tell me a long and detailed story about cats, with many characters. " * 6

    async def run(engine: Any) -> tuple[list[int], list[Any]]:
        async with engine.open_conversation() as writer, engine.open_conversation() as reader:
            await writer.append_tokens(engine.tokenizer.encode(story))
            params = SamplingParams(max_tokens=70, ignore_eos=True)
            stream = writer.generate(params, add_generation_prompt=False)
            first = await anext(stream)  # generating: the score arrives after it
            scores = await reader.score(engine.tokenizer.encode(scored), top=2)
            return first.token_ids + [t async for d in stream for t in d.token_ids], scores

    want = await run(smol_engine)
    config = EngineConfig(model_dir=smol_dir, dtype="float32", quant="none", num_blocks=8,
                          block_size=16, max_batch=4, max_step_tokens=8)  # fmt: skip
    async with Engine(config) as small:
        got = await run(small)
        assert small.scheduler.num_evicted > 0 and small.free_blocks() == config.num_blocks
    assert got[0] == want[0]
    assert [s and s.token_id for s in got[1]] == [s and s.token_id for s in want[1]]
    assert [s.logprob for s in got[1] if s] == pytest.approx(
        [s.logprob for s in want[1] if s], abs=1e-4
    )


async def test_cached_tokens_count_only_what_was_not_computed(tiny_pool: Any) -> None:
    """The API's ``cached_tokens`` is what the engine did not compute: a replayed request
    computes its last prompt token again (for the reply's first logits), and a conversation
    evicted between two requests computes its history again, though its tokens still match."""
    from llm_engine import SamplingParams
    from llm_engine.api_request import ChatRequest
    from llm_engine.chat_api import ChatService, Completion

    service = ChatService(tiny_pool, "smollm2")

    async def ask(messages: list[dict[str, str]]) -> tuple[str, Any]:
        """The reply and its usage, whose cached tokens must be those the engine's own
        counters say it did not prefill (nothing else runs on this engine meanwhile)."""
        completion, text = Completion(), ""
        params = SamplingParams(max_tokens=6, temperature=0.0)
        before = tiny_pool.stats()
        async for piece in service.complete(ChatRequest(messages, params, "smollm2"), completion):
            text += piece.text
        after, usage = tiny_pool.stats(), completion.usage
        decoded = after.generated_tokens - before.generated_tokens - 1  # the last is not fed
        prefilled = after.computed_tokens - before.computed_tokens - decoded
        assert 1 <= prefilled <= usage.prompt_tokens
        assert usage.cached_tokens == usage.prompt_tokens - prefilled
        return text, usage

    history = [{"role": "system", "content": "Answer in a few words."}, _user("cats")]
    try:
        reply, first = await ask(history)
        assert first.cached_tokens == 0  # its system prompt is no other test's
        again_reply, again = await ask(history)  # a client's "regenerate"
        assert again_reply == reply
        assert again.prompt_tokens == first.prompt_tokens
        assert 0 < again.cached_tokens < first.prompt_tokens  # its last token is computed
        evicted = tiny_pool.scheduler.num_evicted
        others = [tiny_pool.open_conversation("You are brief.") for _ in range(3)]
        for conv, topic in zip(others * 2, TOPICS, strict=True):  # more than the pool holds
            await _turn(conv, topic)
        for conv in others:
            await conv.close()
        assert tiny_pool.scheduler.num_evicted > evicted
        history += [{"role": "assistant", "content": reply}, _user("bread")]
        _, later = await ask(history)
        resident = first.prompt_tokens + first.completion_tokens
        assert 0 <= later.cached_tokens < resident  # its tokens match, its KV had gone
    finally:
        await service.close()
    assert tiny_pool.free_blocks() == tiny_pool.config.num_blocks


def _user(topic: str) -> dict[str, str]:
    return {"role": "user", "content": f"Say one sentence about {topic}."}
