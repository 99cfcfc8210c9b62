"""Conversations: incremental append, rollback, shared prefixes, concurrency, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import torch

from llm_engine import SamplingParams
from llm_engine.errors import InvalidRequest
from tests.llm_engine.helpers import greedy, hf_greedy, hf_logits, next_logits

SYSTEM = "You are a helpful assistant who answers briefly."
TURNS = ["What is the capital of France?", "And of Italy?", "Which one is bigger?"]


async def test_turn_by_turn_equals_full_recompute(smol_engine: Any, hf_smol: Any) -> None:
    conv = smol_engine.open_conversation(SYSTEM)
    try:
        for turn in TURNS[:2]:
            before = conv.tokens
            await conv.append({"role": "user", "content": turn})
            assert conv.tokens[: len(before)] == before  # history never re-tokenized
            await greedy(conv, 8)
        await conv.append({"role": "user", "content": TURNS[2]})
        incremental = await next_logits(smol_engine, conv)
        tokens = conv.tokens
    finally:
        await conv.close()
    fresh = smol_engine.open_conversation()
    try:
        await fresh.append_tokens(tokens)
        recomputed = await next_logits(smol_engine, fresh)
    finally:
        await fresh.close()
    torch.testing.assert_close(incremental, recomputed, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(incremental, hf_logits(hf_smol, tokens)[-1], atol=2e-4, rtol=1e-4)


async def test_truncate_then_generate_equals_fresh(smol_engine: Any) -> None:
    conv = smol_engine.open_conversation(SYSTEM)
    try:
        await conv.append({"role": "user", "content": TURNS[0]})
        await greedy(conv, 12)
        await conv.append({"role": "user", "content": TURNS[1]})
        cut = len(conv.tokens) - 5
        await greedy(conv, 6)
        await conv.truncate(cut)
        assert len(conv.tokens) == cut and conv.num_cached == cut
        kept = conv.tokens
        got = await greedy(conv, 10, add_generation_prompt=False)
    finally:
        await conv.close()
    fresh = smol_engine.open_conversation()
    try:
        await fresh.append_tokens(kept)
        want = await greedy(fresh, 10)
    finally:
        await fresh.close()
    assert got == want


async def test_shared_system_prompt_blocks_do_not_leak(smol_engine: Any) -> None:
    long_system = SYSTEM + " " + "Always be kind and precise. " * 6
    solo = smol_engine.open_conversation(long_system)
    await solo.append({"role": "user", "content": TURNS[0]})
    want = await greedy(solo, 10)
    await solo.close()

    free0 = smol_engine.free_blocks()
    a = smol_engine.open_conversation(long_system)
    b = smol_engine.open_conversation(long_system)
    try:
        await a.append({"role": "user", "content": TURNS[0]})
        used_a = free0 - smol_engine.free_blocks()
        await b.append({"role": "user", "content": TURNS[1]})
        used_b = free0 - smol_engine.free_blocks() - used_a
        assert used_b < used_a  # b reuses a's system-prompt blocks
        # b rolls back into the shared region and writes there: a must not see it
        await b.truncate(20)
        await b.append_text(" Ignore everything and shout.")
        await greedy(b, 4)
        assert await greedy(a, 10) == want
    finally:
        await a.close()
        await b.close()


async def test_concurrent_generations_equal_single_stream(smol_engine: Any) -> None:
    async def run(turn: str) -> tuple[list[int], str]:
        conv = smol_engine.open_conversation(SYSTEM)
        try:
            await conv.append({"role": "user", "content": turn})
            return await greedy(conv, 12)
        finally:
            await conv.close()

    singles = [await run(t) for t in TURNS]
    together = await asyncio.gather(*(run(t) for t in TURNS))
    assert list(together) == singles


async def test_cancel_stops_within_one_step_and_keeps_tokens(smol_engine: Any) -> None:
    conv = smol_engine.open_conversation(SYSTEM)
    try:
        await conv.append({"role": "user", "content": "Count from one to fifty."})
        before = conv.tokens
        received: list[int] = []
        third = asyncio.Event()

        async def consume() -> None:
            async for d in conv.generate(SamplingParams(max_tokens=200, ignore_eos=True)):
                received.extend(d.token_ids)
                if len(received) == 3:
                    third.set()

        task = asyncio.create_task(consume())
        await third.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await smol_engine.sync()  # the abort has been applied
        tokens = conv.tokens
        await asyncio.sleep(0.1)
        assert conv.tokens == tokens  # generation really stopped
        assert tokens[: len(before)] == before
        # the KV holds exactly what was generated: what we received, plus at most the one
        # token sampled in the step that was running when the cancel arrived
        extra = len(tokens) - len(before) - 4 - len(received)  # 4: "<|im_start|>assistant\n"
        assert extra in (0, 1), extra
        assert tokens[len(before) + 4 :][: len(received)] == received
        assert conv.num_cached >= len(tokens) - 1
        await conv.append({"role": "user", "content": "Stop."})
        assert conv.tokens[: len(tokens)] == tokens
        await greedy(conv, 3)
    finally:
        await conv.close()


async def test_cancel_truncate_to_heard_then_continue(smol_engine: Any) -> None:
    conv = smol_engine.open_conversation(SYSTEM)
    try:
        await conv.append({"role": "user", "content": TURNS[0]})
        ids, _ = await greedy(conv, 8)
        start = len(conv.tokens) - len(ids)  # where the reply begins
        await conv.truncate(start + 2)  # the caller heard two tokens
        heard = smol_engine.tokenizer.decode(ids[:2])
        assert conv.messages[-1] == {"role": "assistant", "content": heard}
        assert conv.num_cached == start + 2
        await conv.append({"role": "user", "content": "Wait."})
        text = smol_engine.tokenizer.decode(conv.tokens)
        assert text.endswith(f"assistant\n{heard}<|im_end|>\n<|im_start|>user\nWait.<|im_end|>\n")
    finally:
        await conv.close()


async def test_partial_transcript_then_final(smol_engine: Any) -> None:
    conv = smol_engine.open_conversation(SYSTEM)
    ref = smol_engine.open_conversation(SYSTEM)
    try:
        await conv.append({"role": "user", "content": "What is the capital"}, partial=True)
        assert smol_engine.tokenizer.decode(conv.tokens).endswith("user\nWhat is the capital")
        await conv.append({"role": "user", "content": TURNS[0]})
        await ref.append({"role": "user", "content": TURNS[0]})
        assert conv.messages == ref.messages
        assert smol_engine.tokenizer.decode(conv.tokens) == smol_engine.tokenizer.decode(ref.tokens)
    finally:
        await conv.close()
        await ref.close()


async def test_partial_without_waiting_then_reply_with_the_final(smol_engine: Any) -> None:
    """A live transcript prefilled without waiting, then the final turn handed to ``generate``:
    the tokens are in place when each call returns, the reply and the token list equal the
    append-then-generate path's, and a prefill nobody waits for still completes."""
    conv = smol_engine.open_conversation(SYSTEM)
    ref = smol_engine.open_conversation(SYSTEM)
    try:
        await conv.append({"role": "user", "content": "What is the"}, partial=True, wait=False)
        assert smol_engine.tokenizer.decode(conv.tokens).endswith("user\nWhat is the")
        params = SamplingParams(max_tokens=12, ignore_eos=True)
        turn = {"role": "user", "content": TURNS[0]}
        got = [t async for d in conv.generate(params, messages=turn) for t in d.token_ids]
        await ref.append(turn)
        want = [t async for d in ref.generate(params) for t in d.token_ids]
        assert got == want and conv.tokens == ref.tokens and conv.messages == ref.messages
        await conv.append({"role": "user", "content": TURNS[1]}, wait=False)
        assert conv.messages[-1] == {"role": "user", "content": TURNS[1]}
        assert await conv.prefilled() == len(conv.tokens) == conv.num_cached
    finally:
        await conv.close()
        await ref.close()


async def test_generate_takes_tokens_in_its_own_command(smol_engine: Any) -> None:
    """``generate(tokens=...)`` appends raw ids and continues them in one engine command: the
    same reply as append-then-generate, and the ids are computed once (each token's KV, once
    ``computed`` says); its last is not computed again, as it is when a plain append's
    prefill finished before the generate arrived."""
    ids = smol_engine.tokenizer.encode("The three primary colors are")
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    async with smol_engine.open_conversation() as conv, smol_engine.open_conversation() as ref:
        deltas = [d async for d in conv.generate(params, tokens=ids)]
        assert deltas[0].position == len(ids) and deltas[0].computed == len(ids)
        await ref.append_tokens(ids)  # waited for: generate computes the last one again
        want = [t async for d in ref.generate(params) for t in d.token_ids]
        assert [t for d in deltas for t in d.token_ids] == want and conv.tokens == ref.tokens
        assert ref.computed == conv.computed + 1
        with pytest.raises(InvalidRequest, match="not both"):
            await anext(
                conv.generate(params, tokens=ids, messages={"role": "user", "content": "x"})
            )
        with pytest.raises(InvalidRequest, match="token ids"):
            await anext(conv.generate(params, tokens=[]))
        assert conv.tokens == ref.tokens  # refused before anything changed


async def test_prefilled_waits_for_the_system_prompt(smol_engine: Any) -> None:
    conv = smol_engine.open_conversation(f"{SYSTEM} Today is {id(smol_engine)}.")  # not cached
    try:
        n = await conv.prefilled()
        assert n == len(conv.tokens) == conv.num_cached > 0
        assert await conv.prefilled() == n  # nothing queued: at once
    finally:
        await conv.close()


async def test_stop_string_and_eos(smol_engine: Any) -> None:
    conv = smol_engine.open_conversation(SYSTEM)
    try:
        await conv.append({"role": "user", "content": "Name a color."})
        deltas = [d async for d in conv.generate(SamplingParams(max_tokens=40))]
        assert deltas[-1].finish_reason == "stop"
        assert conv.tokens[-1] in smol_engine.tokenizer.eos_ids
        full = "".join(d.text for d in deltas)
        assert "<|im_end|>" not in full
        await conv.truncate(len(conv.tokens) - len(deltas))
        word = full.split()[1]
        deltas = [d async for d in conv.generate(SamplingParams(max_tokens=40, stop=(word,)))]
        text = "".join(d.text for d in deltas)
        assert deltas[-1].finish_reason == "stop" and word not in text
        assert full.startswith(text)
    finally:
        await conv.close()


async def test_seeded_sampling_is_repeatable(smol_engine: Any) -> None:
    async def run(seed: int) -> list[int]:
        conv = smol_engine.open_conversation(SYSTEM)
        try:
            await conv.append({"role": "user", "content": "Tell me a story."})
            p = SamplingParams(
                max_tokens=12,
                temperature=1.0,
                top_k=50,
                top_p=0.9,
                repetition_penalty=1.1,
                seed=seed,
                ignore_eos=True,
            )
            return [t async for d in conv.generate(p) for t in d.token_ids]
        finally:
            await conv.close()

    assert await run(1) == await run(1)
    assert await run(1) != await run(2)


async def test_cancelled_append_keeps_tokens_and_next_append_works(smol_engine: Any) -> None:
    conv = smol_engine.open_conversation(SYSTEM)
    try:
        task = asyncio.create_task(
            conv.append({"role": "user", "content": "Tell me"}, partial=True)
        )
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        n = await conv.append({"role": "user", "content": "Tell me a joke."})
        assert n == len(conv.tokens) and conv.num_cached == n
        assert conv.messages[-1] == {"role": "user", "content": "Tell me a joke."}
    finally:
        await conv.close()


async def test_cancel_before_generation_starts_leaves_conversation_idle(smol_engine: Any) -> None:
    conv = smol_engine.open_conversation(SYSTEM)
    try:
        await conv.append({"role": "user", "content": TURNS[0]})

        async def consume() -> None:
            async for _ in conv.generate(SamplingParams(max_tokens=500, ignore_eos=True)):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0)  # the start command is queued, no token seen yet
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await smol_engine.sync()
        n = len(conv.tokens)
        await asyncio.sleep(0.1)
        assert len(conv.tokens) == n  # nothing keeps generating in the background
        await conv.append({"role": "user", "content": "Hello?"})  # not busy
    finally:
        await conv.close()


async def test_set_messages_reuses_own_reply_tokens(smol_engine: Any) -> None:
    """An OpenAI-style client re-sends the whole history with our reply as text: the reply's
    generated tokens are kept, only the new user turn is tokenized and prefilled."""
    conv = smol_engine.open_conversation()
    try:
        history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TURNS[0]}]
        await conv.set_messages(history)
        deltas = [d async for d in conv.generate(SamplingParams(max_tokens=30))]
        reply = "".join(d.text for d in deltas)
        before = conv.tokens
        resent = [
            *history,
            {"role": "assistant", "content": reply},
            {"role": "user", "content": TURNS[1]},
        ]
        conv2, common = smol_engine.longest_prefix(
            smol_engine.tokenizer.encode(smol_engine.tokenizer.render(resent))
        )
        assert conv2 is conv and common >= len(before) - 1
        await conv.set_messages(resent)
        assert conv.tokens[: len(before)] == before
        assert conv.messages == resent
        # a different history rolls back to the common prefix only
        await conv.set_messages([history[0], {"role": "user", "content": "Something else."}])
        assert conv.tokens[:5] == before[:5]
        assert smol_engine.tokenizer.decode(conv.tokens).endswith("Something else.<|im_end|>\n")
    finally:
        await conv.close()


async def test_paused_holds_decoding_but_not_a_live_turns_first_token(smol_engine: Any) -> None:
    """Inside ``paused`` no decode step runs (the voice's first chunk has the cores); a turn
    waiting for its first token still gets it; on leaving, decoding goes on."""
    talker, caller = smol_engine.open_conversation(SYSTEM), smol_engine.open_conversation(SYSTEM)
    received: list[int] = []
    going = asyncio.Event()

    async def talk() -> None:
        await talker.append({"role": "user", "content": "Count from one to fifty."})
        params = SamplingParams(max_tokens=500, ignore_eos=True)
        async for d in talker.generate(params):
            received.extend(d.token_ids)
            going.set()

    task = asyncio.create_task(talk())
    try:
        await going.wait()
        with smol_engine.paused(60.0):
            await smol_engine.sync()  # the step running when the pause began has finished
            held = len(received)
            await asyncio.sleep(0.3)  # ~50 decode steps' time
            assert len(received) == held
            turn = {"role": "user", "content": "Hello!"}
            params = SamplingParams(max_tokens=1)
            reply = [d async for d in caller.generate(params, messages=turn)]
            assert sum(len(d.token_ids) for d in reply) == 1  # the live turn ran
            await asyncio.sleep(0.05)
            assert len(received) <= held + 1  # the talker rode along in that one step only
        going.clear()
        await asyncio.wait_for(going.wait(), 60)  # decoding resumed
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await talker.close()
        await caller.close()


async def test_fork_shares_the_kv_and_the_branches_stay_apart(smol_engine: Any) -> None:
    async def script(conv: Any, branch: str) -> tuple[list[int], str]:
        await conv.append({"role": "user", "content": TURNS[0]})
        await greedy(conv, 9)  # the reply ends inside a block: the fork shares a partial one
        return await answer(conv, branch)

    async def answer(conv: Any, turn: str) -> tuple[list[int], str]:
        await conv.append({"role": "user", "content": turn})
        return await greedy(conv, 8)

    want = {}
    for turn in (TURNS[1], TURNS[2]):  # each branch as a conversation of its own
        async with smol_engine.open_conversation(SYSTEM) as solo:
            want[turn] = await script(solo, turn)

    conv = smol_engine.open_conversation(SYSTEM)
    await conv.append({"role": "user", "content": TURNS[0]})
    await greedy(conv, 9)
    free = smol_engine.free_blocks()
    fork = await conv.fork()
    try:
        assert fork.tokens == conv.tokens and fork.messages == conv.messages
        assert fork.num_cached == conv.num_cached  # nothing computed again
        await fork.prefilled()  # the reply's last token, not computed by conv either
        held = -(-len(conv.tokens) // smol_engine.config.block_size)
        assert held >= 3 and free - smol_engine.free_blocks() <= 1  # a copy of the partial one
        got = await asyncio.gather(answer(conv, TURNS[1]), answer(fork, TURNS[2]))
        assert list(got) == [want[TURNS[1]], want[TURNS[2]]]

        n = len(fork.tokens) // 2
        early = await fork.fork(n)  # inside the first reply: it stays open, as truncate leaves it
        async with early:
            await fork.truncate(n)
            assert early.tokens == fork.tokens and early.messages == fork.messages
        with pytest.raises(InvalidRequest, match="cannot fork"):
            await conv.fork(len(conv.tokens) + 1)
    finally:
        await conv.close()
        await fork.close()


async def test_fork_while_generating_leaves_the_generation_undisturbed(smol_engine: Any) -> None:
    async with smol_engine.open_conversation(SYSTEM) as solo:
        await solo.append({"role": "user", "content": TURNS[0]})
        want = await greedy(solo, 24)

    conv = smol_engine.open_conversation(SYSTEM)
    await conv.append({"role": "user", "content": TURNS[0]})
    ids, text, forks = [], "", []
    try:
        async for d in conv.generate(SamplingParams(max_tokens=24, ignore_eos=True)):
            ids, text = ids + d.token_ids, text + d.text
            if len(ids) in (5, 11):  # the reply as it stands when the engine applies the fork
                forks.append((await conv.fork(), len(ids), text))
        assert ids == want[0]
        prompt = len(conv.tokens) - len(ids)
        for fork, received, heard in forks:  # each holds what the conversation held then
            n = len(fork.tokens)
            assert fork.tokens == conv.tokens[:n] and prompt + received <= n < len(conv.tokens)
            reply = fork.messages[-1]
            assert reply["role"] == "assistant" and reply["content"].startswith(heard)
            rest, _ = await greedy(fork, len(conv.tokens) - n, add_generation_prompt=False)
            assert rest == conv.tokens[n:]  # it goes on with the reply as the original did
    finally:
        await conv.close()
        for fork, _, _ in forks:
            await fork.close()


async def test_frequency_and_presence_penalties_count_the_reply_only(smol_engine: Any) -> None:
    """A penalized greedy reply equals a step-by-step reference: the next token's logits,
    lowered by OpenAI's formula over the reply's tokens so far (not the prompt's), argmax."""
    params = {"frequency_penalty": 1.2, "presence_penalty": 0.5}
    n = 16
    async with smol_engine.open_conversation(SYSTEM) as conv:
        await conv.append({"role": "user", "content": "Repeat after me: one one one one one."})
        plain = await greedy(conv, n)
        await conv.truncate(len(conv.tokens) - n)
        got, _ = await greedy(conv, n, add_generation_prompt=False, **params)
        prompt = conv.tokens[:-n]
    assert got != plain[0]  # the penalties changed the reply
    async with smol_engine.open_conversation() as ref:
        await ref.append_tokens(prompt)
        want: list[int] = []
        for _ in range(n):
            logits = (await next_logits(smol_engine, ref)).clone()
            for t in set(want):
                logits[t] -= (
                    want.count(t) * params["frequency_penalty"] + params["presence_penalty"]
                )
            want.append(int(logits.argmax()))
            await ref.append_tokens(want[-1:])
    assert got == want


async def test_logprobs_are_the_models_and_logit_bias_steers(smol_engine: Any) -> None:
    """Each token's logprobs are the log-softmax of the model's next-token logits at its step,
    whatever bias changed the pick; banning the greedy pick takes the runner-up."""
    n = 6
    async with smol_engine.open_conversation(SYSTEM) as conv:
        await conv.append({"role": "user", "content": "Name a fruit."})
        prompt = conv.tokens
        plain, _ = await greedy(conv, n, add_generation_prompt=False)
        await conv.truncate(len(prompt))
        params = SamplingParams(
            max_tokens=n, ignore_eos=True, logprobs=3, logit_bias={plain[0]: -100}
        )
        deltas = [d async for d in conv.generate(params, add_generation_prompt=False)]
        got = conv.tokens[len(prompt) :]
    steps = [lp for d in deltas for lp in d.logprobs or ()]
    assert [s.token_id for s in steps] == got and got[0] != plain[0]
    async with smol_engine.open_conversation() as ref:
        await ref.append_tokens(prompt)
        for i, step in enumerate(steps):
            want = (await next_logits(smol_engine, ref)).double().log_softmax(-1)
            if i == 0:
                assert got[0] == int(want.topk(2).indices[1])  # the runner-up
            top = want.topk(3)
            assert [t for t, _ in step.top] == top.indices.tolist()
            assert step.logprob == pytest.approx(float(want[got[i]]), abs=0.01)
            assert [lp for _, lp in step.top] == pytest.approx(top.values.tolist(), abs=0.01)
            await ref.append_tokens(got[i : i + 1])


async def test_a_bias_outside_the_vocabulary_is_refused_before_anything_changes(
    smol_engine: Any,
) -> None:
    async with smol_engine.open_conversation(SYSTEM) as conv:
        before = conv.tokens
        bad = SamplingParams(logit_bias={smol_engine.model_config.vocab_size: 5.0})
        with pytest.raises(InvalidRequest, match="logit_bias"):
            async for _ in conv.generate(bad, messages={"role": "user", "content": "Hi."}):
                pass
        assert conv.tokens == before and not conv.messages[1:]
        reply, _ = await greedy(conv, 2)  # and the conversation still serves
        assert len(reply) == 2


SCORED = (
    "The lighthouse keeper climbed the spiral stairs each evening at dusk. He trimmed the "
    "wick, polished the great lens and wrote the weather in a leather book. Ships passed "
    "safely through the narrow channel, and nobody in the village ever thanked him for it."
)


async def test_score_is_each_tokens_logprob_given_all_before(
    smol_engine: Any, hf_smol: Any
) -> None:
    """score() gives each token the log-softmax of the model's logits at the position before
    it: from a fresh conversation (the first token has none); again when the pool's
    shared-prefix cache holds the tokens (they are computed anyway); after a resident
    history (the position before is computed again). The conversation continues as any."""
    ids = smol_engine.tokenizer.encode(SCORED)
    assert len(ids) > smol_engine.config.block_size * 3
    want = hf_logits(hf_smol, ids).double().log_softmax(-1)
    async with smol_engine.open_conversation() as fresh:
        scored = await fresh.score(ids, top=3)
    assert scored[0] is None and len(scored) == len(ids)
    for i in range(1, len(ids)):
        step, row = scored[i], want[i - 1]
        assert step is not None and step.token_id == ids[i]
        assert step.logprob == pytest.approx(float(row[ids[i]]), abs=1e-3)
        top = row.topk(3)
        assert [lp for _, lp in step.top] == pytest.approx(top.values.tolist(), abs=1e-3)
        assert row[[t for t, _ in step.top]].tolist() == pytest.approx(
            top.values.tolist(), abs=1e-3
        )
    assert smol_engine.cached_prefix(ids) >= 3 * smol_engine.config.block_size
    async with smol_engine.open_conversation() as again:
        assert await again.score(ids, top=3) == scored
    cut = 21
    async with smol_engine.open_conversation() as resident:
        await resident.append_tokens(ids[:cut])
        tail = await resident.score(ids[cut:])
        assert [s.top for s in tail if s is not None] == [[]] * (len(ids) - cut)
        assert [s.logprob for s in tail if s] == pytest.approx(
            [s.logprob for s in scored[cut:] if s], abs=1e-4
        )
        got, _ = await greedy(resident, 5, add_generation_prompt=False)
    assert got == hf_greedy(hf_smol, ids, 5)


async def test_a_conversation_being_scored_refuses_other_changes(smol_engine: Any) -> None:
    ids = smol_engine.tokenizer.encode(SCORED * 6)
    assert len(ids) > smol_engine.config.max_step_tokens  # two steps at least
    async with smol_engine.open_conversation() as conv:
        scoring = asyncio.ensure_future(conv.score(ids))
        await asyncio.sleep(0)  # the score is queued first
        with pytest.raises(InvalidRequest, match="scored"):
            await conv.append_tokens(ids[:3])
        assert len(await scoring) == len(ids) and conv.tokens == ids
        with pytest.raises(InvalidRequest, match="top"):
            await conv.score(ids[:2], top=21)
        with pytest.raises(InvalidRequest, match="token ids"):
            await conv.score([])


async def test_a_cancelled_score_leaves_its_tokens_prefilled_and_the_conversation_free(
    smol_engine: Any,
) -> None:
    ids = smol_engine.tokenizer.encode(SCORED * 6)
    async with smol_engine.open_conversation() as conv:
        scoring = asyncio.ensure_future(conv.score(ids))
        await asyncio.sleep(0)
        scoring.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scoring
        await conv.append_tokens(ids[:3])  # no longer busy
        assert conv.tokens == ids + ids[:3] and conv.num_cached == len(conv.tokens)
