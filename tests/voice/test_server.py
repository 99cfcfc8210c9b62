"""The HTTP API over a real socket, driven by the official `openai` SDK and raw HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from llm_engine.chat_api import ChatService
from voice.config import ServerConfig
from voice.server import build_app

SYSTEM = {"role": "system", "content": "You are a concise assistant."}


@pytest.fixture
async def api(smol_engine):
    service = ChatService(smol_engine, "smollm2")
    server = TestServer(build_app(service, ServerConfig()), host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}", service
    finally:
        await server.close()
        await service.close()


@pytest.fixture
def client(api):
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=api[0] + "/v1", api_key="unused", max_retries=0)


async def test_sdk_streaming_equals_non_streaming(client, smol_engine):
    messages = [SYSTEM, {"role": "user", "content": "Name three colors."}]
    full = await client.chat.completions.create(  # options at their defaults, as some send
        model="smollm2", messages=messages, max_tokens=24, temperature=0, logit_bias={},
        frequency_penalty=0, modalities=["text"], logprobs=False, top_logprobs=0, n=None,
        tool_choice="auto", parallel_tool_calls=False, user="caller-17", store=False,
        metadata={"call": "17"}, extra_body={"prompt_cache_key": "k", "stop": None},
    )  # fmt: skip
    text = full.choices[0].message.content
    assert text and full.usage.completion_tokens > 0 and full.usage.prompt_tokens > 10
    stream = await client.chat.completions.create(
        model="smollm2",
        messages=messages,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, finish = [], None, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == text
    assert finish == full.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens
    models = await client.models.list()
    assert [m.id for m in models.data] == ["smollm2"]
    card = await client.models.retrieve("smollm2")
    assert card.id == "smollm2" and card.max_model_len == smol_engine.max_context
    from openai import NotFoundError

    with pytest.raises(NotFoundError, match="org/other"):
        await client.models.retrieve("org/other")


async def test_replayed_history_reuses_the_engines_own_reply(client, smol_engine):
    turn1 = [SYSTEM, {"role": "user", "content": "Tell me one fact about the moon."}]
    r1 = await client.chat.completions.create(
        model="smollm2", messages=turn1, max_tokens=20, temperature=0
    )
    reply = r1.choices[0].message.content
    turn2 = [
        *turn1,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "And one about the sun?"},
    ]
    r2 = await client.chat.completions.create(
        model="smollm2", messages=turn2, max_tokens=20, temperature=0
    )
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached >= r1.usage.prompt_tokens + r1.usage.completion_tokens - 1
    assert r2.usage.prompt_tokens - cached < 20  # only the new user turn was prefilled

    conv = smol_engine.open_conversation()  # the same history, prefilled from scratch
    try:
        await conv.set_messages(turn2)
        from llm_engine import SamplingParams

        fresh = "".join([d.text async for d in conv.generate(SamplingParams(max_tokens=20))])
    finally:
        await conv.close()
    assert r2.choices[0].message.content == fresh


async def test_callers_on_one_system_prompt_keep_their_own_cache(client, smol_engine):
    """Caller B's first turn shares only the system prompt with caller A's conversation: it
    must branch off it, not rewrite it, so A's next turn still finds all of its history."""

    async def turn(messages):
        r = await client.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=12, temperature=0
        )
        return r.choices[0].message.content, r.usage

    def then(messages, reply, user):
        return [
            *messages,
            {"role": "assistant", "content": reply},
            {"role": "user", "content": user},
        ]

    a1 = [SYSTEM, {"role": "user", "content": "Tell me one fact about the moon."}]
    b1 = [SYSTEM, {"role": "user", "content": "Name a large animal."}]
    reply_a, usage_a = await turn(a1)
    reply_b, usage_b = await turn(b1)
    system = smol_engine.tokenizer.encode(smol_engine.tokenizer.render([SYSTEM]))
    assert usage_b.prompt_tokens_details.cached_tokens >= len(system)  # A's, shared
    for messages, reply, usage, user in [
        (a1, reply_a, usage_a, "And one about the sun?"),
        (b1, reply_b, usage_b, "Where does it live?"),
    ]:
        _, again = await turn(then(messages, reply, user))
        kept = usage.prompt_tokens + usage.completion_tokens - 1  # all but the reply's last
        assert again.prompt_tokens_details.cached_tokens >= kept


async def test_interrupting_request_reuses_the_history_while_the_old_reply_streams(
    api, client, smol_engine
):
    """A caller who barges in sends the history with the words it heard while the old reply
    still streams: the new request must not wait for it, nor prefill the history again."""
    history = [SYSTEM, {"role": "user", "content": "Write a long story about a dragon."}]
    body = {"messages": history, "max_tokens": 300, "temperature": 0, "stream": True}
    prompt = smol_engine.tokenizer.render(history, add_generation_prompt=True)
    async with (
        aiohttp.ClientSession() as http,
        http.post(api[0] + "/v1/chat/completions", data=json.dumps(body)) as r,
    ):
        heard, streamed = "", 0
        while streamed < 9:
            line = (await r.content.readline()).decode()
            if line.startswith("data: {"):
                heard += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                streamed += 1
        turn = [
            *history,
            {"role": "assistant", "content": heard},
            {"role": "user", "content": "Stop. What is its name?"},
        ]
        reply = await client.chat.completions.create(
            model="smollm2", messages=turn, max_tokens=8, temperature=0
        )
    assert reply.choices[0].message.content
    held = len(smol_engine.tokenizer.encode(prompt)) + streamed
    assert reply.usage.prompt_tokens_details.cached_tokens >= held - 2  # the heard words too


async def test_penalties_reach_the_engine(client, smol_engine):
    from llm_engine import SamplingParams

    messages = [SYSTEM, {"role": "user", "content": "Repeat after me: one one one one one."}]
    penalties = {"frequency_penalty": 1.2, "presence_penalty": 0.5}

    async def api(**kw):
        r = await client.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=16, temperature=0, **kw
        )
        return r.choices[0].message.content

    async with smol_engine.open_conversation() as conv:
        await conv.set_messages(messages)
        params = SamplingParams(max_tokens=16, **penalties)
        native = "".join([d.text async for d in conv.generate(params)])
    assert await api(**penalties) == native
    assert await api() != native  # the penalties changed the reply


async def test_logprobs_and_logit_bias_through_the_sdk(client, smol_engine):
    """Streamed and whole replies carry the same logprobs: one entry per token of the text
    (their bytes spell the reply), the greedy pick first among its alternatives. A bias that
    bans the first token makes its runner-up the first token."""
    messages = [SYSTEM, {"role": "user", "content": "Name a fruit."}]
    ask = {"model": "smollm2", "messages": messages, "max_tokens": 8, "temperature": 0}
    whole = await client.chat.completions.create(**ask, logprobs=True, top_logprobs=2)
    choice = whole.choices[0]
    content = choice.logprobs.content
    assert b"".join(bytes(t.bytes) for t in content).decode() == choice.message.content
    ended = choice.finish_reason == "stop"  # the end-of-turn token has no entry
    assert len(content) == whole.usage.completion_tokens - ended
    for t in content:
        assert len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token
        assert t.logprob == t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
    stream = await client.chat.completions.create(**ask, logprobs=True, top_logprobs=2, stream=True)
    streamed = [
        t
        async for chunk in stream
        for c in chunk.choices
        for t in (c.logprobs.content if c.logprobs else ())
    ]
    assert [t.model_dump() for t in streamed] == [t.model_dump() for t in content]
    plain = await client.chat.completions.create(**ask)
    assert plain.choices[0].logprobs is None

    first = smol_engine.tokenizer.encode(content[0].token)
    assert len(first) == 1
    banned = await client.chat.completions.create(
        **ask, logprobs=True, logit_bias={str(first[0]): -100}
    )
    assert banned.choices[0].logprobs.content[0].token == content[0].top_logprobs[1].token


async def test_n_choices_fork_the_prompt_and_each_equals_its_own_sample(client, smol_engine):
    """n = 3: choice i is what a conversation of its own samples with seed + i, streamed or
    not; and a client that goes on from any choice finds it resident (the forks are kept)."""
    from llm_engine import SamplingParams

    messages = [SYSTEM, {"role": "user", "content": "Tell me about the sea."}]
    ask = {"model": "smollm2", "messages": messages, "max_tokens": 10, "temperature": 1.0}
    whole = await client.chat.completions.create(**ask, n=3, seed=5, logprobs=True)
    assert [c.index for c in whole.choices] == [0, 1, 2]
    texts = [c.message.content for c in whole.choices]
    assert len(set(texts)) > 1
    ended = sum(c.finish_reason == "stop" for c in whole.choices)
    tokens = sum(len(c.logprobs.content) for c in whole.choices)
    assert whole.usage.completion_tokens == tokens + ended
    for i, text in enumerate(texts):
        async with smol_engine.open_conversation() as conv:
            params = SamplingParams(max_tokens=10, temperature=1.0, seed=5 + i)
            alone = [d.text async for d in conv.generate(params, messages=messages)]
        assert "".join(alone) == text
    stream = await client.chat.completions.create(**ask, n=3, seed=5, stream=True)
    streamed, finishes = ["", "", ""], [None] * 3
    async for chunk in stream:
        for c in chunk.choices:
            assert finishes[c.index] is None  # a choice's end is its last chunk
            streamed[c.index] += c.delta.content or ""
            finishes[c.index] = c.finish_reason
    assert streamed == texts and finishes == [c.finish_reason for c in whole.choices]

    turn = [
        *messages,
        {"role": "assistant", "content": texts[2]},
        {"role": "user", "content": "And the sky?"},
    ]
    held = len(smol_engine.tokenizer.encode(texts[2]))
    reply = await client.chat.completions.create(model="smollm2", messages=turn, max_tokens=4)
    assert reply.usage.prompt_tokens_details.cached_tokens > whole.usage.prompt_tokens + held - 4


async def test_next_request_right_after_a_client_left_reuses_the_conversation(smol_engine):
    """The stream a client left is closed, and the same caller's next turn comes at once (a
    barge-in): it takes the now idle conversation, whose abort must already be queued."""
    from llm_engine import SamplingParams
    from llm_engine.api_request import ChatRequest
    from llm_engine.chat_api import Completion

    service = ChatService(smol_engine, "smollm2")
    history = [SYSTEM, {"role": "user", "content": "Write a long story about a dragon."}]
    try:
        params = SamplingParams(max_tokens=200, ignore_eos=True)
        stream = service.complete(
            ChatRequest(history, params, "smollm2", stream=True), Completion()
        )
        heard = (await anext(stream)).text
        await stream.aclose()  # the client left
        turn = [
            *history,
            {"role": "assistant", "content": heard},
            {"role": "user", "content": "What is its name?"},
        ]
        done = Completion()
        request = ChatRequest(turn, SamplingParams(max_tokens=8), "smollm2")
        reply = "".join([piece.text async for piece in service.complete(request, done)])
        assert reply and done.usage.cached_tokens > 0
    finally:
        await service.close()


async def _post(base: str, body: bytes | str) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            base + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
        ) as r,
    ):
        return r.status, await r.json()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b'{"messages": "\xff\xfe"}', None),
        ('{"messages": []}', "messages"),
        ('{"messages": [{"role": "robot", "content": "hi"}]}', "messages.0.role"),
        ('{"messages": [{"role": "user", "content": 5}]}', "messages.0.content"),
        ('{"messages": [{"role": "user", "content": "hi"}], "temperature": 5}', "temperature"),
        ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "max_tokens"),
        ('{"messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}', "frobnicate"),
        ('{"messages": [{"role": "user", "content": "hi"}], "tools": [{}]}', "tools.0"),
        ('{"messages": [{"role": "user", "content": "hi"}], "n": 17}', "n"),
        ('{"messages": [{"role": "user", "content": "hi"}], "seed": 18446744073709551616}', "seed"),
        ('{"messages": [{"role": "user", "content": "hi"}], "n": 0}', "n"),
        ('{"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"x": 5}}', "logit_bias"),
        (
            '{"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"7": 101}}',
            "logit_bias",
        ),
        ('{"messages": [{"role": "user", "content": "hi"}], "logit_bias": [7]}', "logit_bias"),
        (
            '{"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"49152": 1}}',
            "logit_bias",
        ),
        ('{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}', "top_logprobs"),
        (
            '{"messages": [{"role": "user", "content": "hi"}],'
            ' "logprobs": true, "top_logprobs": 21}',
            "top_logprobs",
        ),
        ('{"messages": [{"role": "user", "content": "hi"}], "logprobs": 1}', "logprobs"),
        ('{"messages": [{"role": "user", "content": "hi"}], "modalities": ["x"]}', "modalities"),
        (
            '{"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}',
            "tool_choice",
        ),
        ('{"messages": [{"role": "user", "content": "hi"}], "user": 17}', "user"),
        (
            '{"messages": [{"role": "user", "content": "hi"}], "presence_penalty": 3}',
            "presence_penalty",
        ),
        ('{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream"),
        ('{"messages": [{"role": "user", "content": "hi"}], "ignore_eos": 1}', "ignore_eos"),
        (
            '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "min_tokens": 6}',
            "min_tokens",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}], "min_tokens": 2,'
            ' "response_format": {"type": "json_object"}}',
            "min_tokens",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}],'
            ' "response_format": {"type": "json_schema", "json_schema": {"schema": 5}}}',
            "response_format.json_schema",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}], "response_format": {"type":'
            ' "json_schema", "json_schema": {"schema": {"type": "string", "pattern": "a+"}}}}',
            "response_format.json_schema",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}],'
            ' "response_format": {"type": "yaml"}}',
            "response_format",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}],'
            ' "response_format": {"type": "json_object"}, "ignore_eos": true}',
            "ignore_eos",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}],'
            ' "stream_options": {"include_usage": 1}}',
            "stream_options.include_usage",
        ),
        ("[1, 2]", None),
        ('{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}", None),  # past the parser's depth
    ],
)
async def test_bad_requests_get_a_400_with_a_message(api, body, param):
    status, payload = await _post(api[0], body)
    assert status == 400
    assert payload["error"]["message"] and payload["error"]["param"] == param


async def test_over_the_context_limit_then_still_serving(api, client):
    long = " ".join(["word"] * 20_000)
    status, payload = await _post(
        api[0], json.dumps({"messages": [{"role": "user", "content": long}]})
    )
    assert status == 400 and payload["error"]["code"] == "context_length_exceeded"
    ok = await client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert ok.choices[0].message.content is not None


@pytest.mark.parametrize(("path", "n"), [("chat/completions", 1), ("chat/completions", 3),
                                         ("completions", 2)])  # fmt: skip
async def test_client_leaving_mid_stream_aborts_and_frees_the_conversation(
    api, client, smol_engine, path, n
):
    base, story = api[0], "Write a long story about a dragon."
    body = {"max_tokens": 400, "temperature": 0, "stream": True, "n": n}
    if path == "completions":
        body["prompt"], body["temperature"] = story, 1  # a story, not one token over and over
    else:
        body["messages"] = [{"role": "user", "content": story}]
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/v1/{path}", data=json.dumps(body)) as r,
    ):
        assert r.status == 200
        await r.content.readline()  # the first event arrived: generation is running
    # leaving the block closed the connection mid-stream
    for _ in range(200):  # the abort lands within a step; wait on the engine, not a clock
        await smol_engine.sync()
        if not any(st.gen is not None for st in smol_engine._convs.values()):
            break
        await asyncio.sleep(0.01)
    assert not any(st.gen is not None for st in smol_engine._convs.values())
    tok = smol_engine.tokenizer
    prompt = (
        body["prompt"]
        if path == "completions"
        else tok.render(body["messages"], add_generation_prompt=True)
    )
    generated = [len(slot.conv.tokens) - len(tok.encode(prompt)) for slot in api[1]._slots]
    assert len(generated) == n and max(generated) < 50  # stopped, not run to the end
    again = await client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=4,
    )
    assert again.usage.completion_tokens == 4


async def test_concurrent_streams_each_equal_their_single_result(client):
    prompts = ["Count to five.", "Name a fruit.", "What is rain?"]

    async def ask(p: str) -> str:
        r = await client.chat.completions.create(
            model="smollm2",
            messages=[SYSTEM, {"role": "user", "content": p}],
            max_tokens=16,
            temperature=0,
        )
        return r.choices[0].message.content

    alone = [await ask(p) for p in prompts]
    together = await asyncio.gather(*(ask(p) for p in prompts))
    assert list(together) == alone


async def test_http_errors_under_v1_are_openai_json(api, client):
    import openai

    base = api[0]
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "/v1/embeddings", json={"input": "hi"}) as r:
            assert r.status == 404
            assert "/v1/embeddings" in (await r.json())["error"]["message"]
        async with http.get(base + "/v1/chat/completions") as r:
            assert r.status == 405 and r.headers["Allow"] == "POST"
            assert (await r.json())["error"]["type"] == "invalid_request_error"
        big = b'{"messages": [{"role": "user", "content": "' + b"a" * (5 << 20) + b'"}]}'
        async with http.post(base + "/v1/chat/completions", data=big) as r:
            assert r.status == 413 and "limit" in (await r.json())["error"]["message"]
        async with http.get(base + "/") as r:  # outside /v1/: aiohttp's own page, not the API's
            assert r.status == 404 and r.content_type == "text/plain"
    with pytest.raises(openai.NotFoundError) as raised:  # what SDK users see: a parsed error
        await client.embeddings.create(model="smollm2", input="hi")
    assert "/v1/embeddings" in raised.value.message


@pytest.mark.parametrize("when", ["reply", "stream start", "mid-stream"])
async def test_an_unexpected_failure_is_reported_as_json_and_serving_goes_on(
    api, client, monkeypatch, when
):
    """A bug in one request (planted: the service fails where no handler expects it) answers
    that request with an OpenAI-style error, no internals in it, and the server serves on."""
    import openai

    base, service = api
    complete = service.complete

    async def broken(request, completion):
        if when == "mid-stream":
            async with contextlib.aclosing(complete(request, completion)) as pieces:
                yield await anext(pieces)
        raise RuntimeError("planted bug: internals the client must not see")

    monkeypatch.setattr(service, "complete", broken)
    messages = [{"role": "user", "content": "Hi"}]
    if when == "reply":
        status, payload = await _post(base, json.dumps({"messages": messages}))
        assert status == 500 and payload["error"]["type"] == "server_error"
        assert "planted" not in payload["error"]["message"]
    else:
        with pytest.raises(openai.APIError) as raised:
            stream = await client.chat.completions.create(
                model="smollm2", messages=messages, stream=True
            )
            async for _ in stream:
                pass
        error = raised.value  # the server's own report, not a dropped connection
        assert isinstance(error.body, dict) and error.body["type"] == "server_error"
        assert "planted" not in error.message
    monkeypatch.setattr(service, "complete", complete)
    ok = await client.chat.completions.create(model="smollm2", messages=messages, max_tokens=4)
    assert ok.choices[0].message.content


async def _continuation(engine, ids: list[int], n: int) -> list[int]:
    """The engine's greedy continuation of raw tokens, through its own conversation API."""
    from llm_engine import SamplingParams

    async with engine.open_conversation() as conv:
        await conv.append_tokens(ids)
        params = SamplingParams(max_tokens=n, temperature=0)
        return [t async for d in conv.generate(params) for t in d.token_ids]


async def test_text_completions_continue_the_prompt_as_is(client, smol_engine):
    """/v1/completions continues the prompt's own tokens (no chat template), as the engine does
    natively; streamed, whole, and from token ids alike."""
    prompt = "The three primary colors are"
    ids = smol_engine.tokenizer.encode(prompt)
    expected = smol_engine.tokenizer.decode(await _continuation(smol_engine, ids, 12))
    whole = await client.completions.create(
        model="smollm2", prompt=prompt, max_tokens=12, temperature=0, logprobs=3
    )
    choice = whole.choices[0]
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    assert choice.text == expected and choice.finish_reason == "length"
    assert whole.usage.prompt_tokens == len(ids) and whole.usage.completion_tokens == 12
    lp = choice.logprobs  # the legacy shape: parallel lists
    assert "".join(lp.tokens) == choice.text and len(lp.token_logprobs) == 12
    assert lp.text_offset == [sum(map(len, lp.tokens[:i])) for i in range(12)]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 3 and top[token] == logprob == max(top.values())  # greedy: the best
    stream = await client.completions.create(
        model="smollm2", prompt=[ids], max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12
    # the prompt is resident now: a longer one starting with it prefills only what is new
    longer = await client.completions.create(
        model="smollm2", prompt=prompt + " red, yellow and", max_tokens=2, temperature=0
    )
    assert longer.usage.prompt_tokens_details.cached_tokens >= len(ids)


async def test_text_completions_batch_prompts_and_choices(client):
    """Choice p * n + i of a batch is prompt p's i-th, sampled with seed + i: the same as
    asking for that prompt alone. ``echo`` puts the prompt in front."""
    prompts = ["Once upon a time", "My favourite food is"]
    batch = await client.completions.create(
        model="smollm2", prompt=prompts, n=2, max_tokens=8, temperature=1, seed=11, echo=True
    )
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    for p, prompt in enumerate(prompts):
        for i in range(2):
            alone = await client.completions.create(
                model="smollm2", prompt=prompt, max_tokens=8, temperature=1, seed=11 + i
            )
            assert batch.choices[p * 2 + i].text == prompt + alone.choices[0].text
    assert batch.usage.completion_tokens == 4 * 8


async def test_echo_with_logprobs_scores_the_prompt_as_evaluation_harnesses_ask(
    client, smol_engine
):
    """lm-evaluation-harness scores a continuation so: the context and continuation as token
    ids, ``echo``, ``logprobs`` 1, ``max_tokens`` 1; the continuation's logprobs are
    ``token_logprobs[len(context):-1]``, and it is greedy if each equals its top one. With
    ``max_tokens`` 0 only the prompt comes back; a batch scores each prompt as alone."""
    tok = smol_engine.tokenizer
    context = tok.encode("Question: What colour is the sky on a clear day?\nAnswer:")
    ids = context + tok.encode(" blue")
    async with smol_engine.open_conversation() as conv:
        want = await conv.score(ids, top=1)
    scored = await client.completions.create(
        model="smollm2", prompt=[ids], max_tokens=1, logprobs=1, echo=True, temperature=0
    )
    choice, lp = scored.choices[0], scored.choices[0].logprobs
    assert choice.text.startswith(tok.decode(ids)) and len(lp.token_logprobs) == len(ids) + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1 : len(ids)] == pytest.approx([w.logprob for w in want[1:]], abs=1e-4)
    assert lp.tokens[: len(ids)] == [tok.token_bytes(t).decode() for t in ids]
    assert lp.text_offset == [sum(map(len, lp.tokens[:i])) for i in range(len(ids) + 1)]
    greedy = [w.top[0][0] == w.token_id for w in want[len(context) :]]
    continuation = zip(
        lp.token_logprobs[len(context) : -1], lp.top_logprobs[len(context) : -1], strict=True
    )
    assert [logprob == max(top.values()) for logprob, top in continuation] == greedy
    assert scored.usage.prompt_tokens == len(ids) and scored.usage.completion_tokens == 1

    prompts = ["The cat sat on the mat.", "Rain fell all day long"]
    alone = []
    for prompt in prompts:
        async with smol_engine.open_conversation() as conv:
            alone.append(await conv.score(tok.encode(prompt)))
    batch = await client.completions.create(
        model="smollm2", prompt=prompts, max_tokens=0, logprobs=0, echo=True
    )
    assert [c.text for c in batch.choices] == prompts and batch.usage.completion_tokens == 0
    for c, want_scores in zip(batch.choices, alone, strict=True):
        assert c.finish_reason == "length" and c.logprobs.top_logprobs[1:] == [{}] * (
            len(want_scores) - 1
        )
        assert c.logprobs.token_logprobs[1:] == pytest.approx(
            [w.logprob for w in want_scores[1:]], abs=1e-4
        )
    stream = await client.completions.create(
        model="smollm2", prompt=prompts[0], max_tokens=0, logprobs=0, echo=True, stream=True
    )
    chunks = [c.choices[0] async for c in stream if c.choices]
    assert "".join(c.text for c in chunks) == prompts[0]
    streamed = [lp for c in chunks if c.logprobs for lp in c.logprobs.token_logprobs]
    assert streamed == batch.choices[0].logprobs.token_logprobs


async def test_a_text_completion_leaves_the_chat_conversation_it_reuses_intact(client, smol_engine):
    """A prompt that shares tokens with a resident chat forks it: that KV is reused, the
    prompt is continued as it is (no assistant header added after the chat's closed user
    message), and the chat client continuing afterwards still finds its whole history."""
    tok, history = smol_engine.tokenizer, [SYSTEM, {"role": "user", "content": "Name an animal."}]
    first = await client.chat.completions.create(
        model="smollm2", messages=history, max_tokens=8, temperature=0
    )
    reply = first.choices[0].message.content
    asked = tok.render(history)  # the chat's transcript, up to its closed user message
    ids = tok.encode(asked)
    text = await client.completions.create(
        model="smollm2", prompt=asked, max_tokens=6, temperature=0
    )
    # all of it is resident: only its last token is computed again, for the next one's logits
    assert text.usage.prompt_tokens_details.cached_tokens == len(ids) - 1
    assert text.choices[0].text == tok.decode(await _continuation(smol_engine, ids, 6))
    other = tok.render(history, add_generation_prompt=True) + "Certainly not"  # another reply
    await client.completions.create(model="smollm2", prompt=other, max_tokens=2)
    history += [{"role": "assistant", "content": reply}, {"role": "user", "content": "Why?"}]
    again = await client.chat.completions.create(
        model="smollm2", messages=history, max_tokens=4, temperature=0
    )
    transcript = first.usage.prompt_tokens + first.usage.completion_tokens
    # all of it but the reply's last token, which was sampled and never fed
    assert again.usage.prompt_tokens_details.cached_tokens >= transcript - 1


async def test_json_mode_replies_are_json_objects(client):
    """``response_format: json_object``: a reply that ends is one JSON object, greedy or
    sampled, streamed or whole; one cut by max_tokens is the start of one. Unconstrained, the
    same greedy request gets prose."""
    from llm_engine.grammar import START, JsonSchema, feed

    async def ask(content: str, **kw):
        return await client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": content}], max_tokens=120,
            **kw,
        )  # fmt: skip

    prose = await ask("Hello, how are you?", temperature=0)
    with pytest.raises(ValueError):
        json.loads(prose.choices[0].message.content)
    json_mode = {"response_format": {"type": "json_object"}}
    ended = 0
    for content in ("Hello, how are you?", "Describe a cat as JSON with its name and age."):
        for sampling in ({"temperature": 0}, {"temperature": 1, "seed": 4}):
            reply = (await ask(content, **json_mode, **sampling)).choices[0]
            text = reply.message.content
            if reply.finish_reason == "stop":
                ended += 1
                assert isinstance(json.loads(text), dict), text
            else:
                started = feed(JsonSchema.any_object(), [START], text.encode())
                assert reply.finish_reason == "length" and started, text
    assert ended >= 2
    stream = await client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hello, how are you?"}],
        max_tokens=120, temperature=0, stream=True, **json_mode,
    )  # fmt: skip
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    whole = await ask("Hello, how are you?", temperature=0, **json_mode)
    assert streamed == whole.choices[0].message.content


async def test_structured_outputs_through_the_sdks_parse(client):
    """The SDK's ``parse`` sends a Pydantic model as a strict ``json_schema`` and validates the
    reply against it: a reply that ends always does; one cut by ``max_tokens`` is the start of
    one (the SDK then raises, as it does against OpenAI)."""
    from typing import Literal

    import openai
    import pydantic

    from llm_engine.grammar import START, JsonSchema, feed

    class Pet(pydantic.BaseModel):
        name: str
        age: int
        species: Literal["cat", "dog", "bird"]

    async def parse(content: str, **kw):
        return await client.chat.completions.parse(
            model="smollm2", messages=[{"role": "user", "content": content}],
            response_format=Pet, max_tokens=120, **kw,
        )  # fmt: skip

    pet = await parse("My cat Tom is 3 years old. Extract the pet as JSON.", temperature=0)
    assert isinstance(pet.choices[0].message.parsed, Pet)
    grammar = JsonSchema.compile(Pet.model_json_schema())
    for seed in range(3):
        try:
            reply = await parse("Tell me about a pet.", temperature=1, seed=seed)
        except openai.LengthFinishReasonError as cut:
            text = cut.completion.choices[0].message.content
            assert feed(grammar, [START], text.encode()) is not None, text
        else:
            assert isinstance(reply.choices[0].message.parsed, Pet)


ORDER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_order_status",
        "description": "Look up the status of an order by its id",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string", "description": "the order id"}},
            "required": ["order_id"],
        },
    },
}


async def test_tool_calls_through_the_sdk(client, smol_engine):
    """A call comes back as OpenAI's tool_calls (streamed and whole alike); the client runs it
    and sends the result, and the next request reuses the conversation's cache; tool_choice
    none gets a reply, a named choice that function."""
    messages = [
        {"role": "system", "content": "You are a customer service assistant."},
        {"role": "user", "content": "Where is my order 12345?"},
    ]
    ask = {"model": "smollm2", "tools": [ORDER_TOOL], "max_tokens": 100, "temperature": 0}
    first = await client.chat.completions.create(messages=messages, tool_choice="required", **ask)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_order_status" and call.id.startswith("call_")
    assert set(json.loads(call.function.arguments)) == {"order_id"}
    stream = await client.chat.completions.create(
        messages=messages, stream=True, tool_choice="required", **ask
    )
    chunks = [c async for c in stream]
    streamed = [t for c in chunks for t in (c.choices[0].delta.tool_calls or [])]
    assert [(t.function.name, t.function.arguments) for t in streamed] == [
        (call.function.name, call.function.arguments)
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"status": "shipped"}'},
    ]
    after = await client.chat.completions.create(messages=messages, **ask)
    assert after.choices[0].finish_reason in ("stop", "tool_calls", "length")
    # the whole first request, its call too: the history's call is matched to the model's
    # own spelling of it, whose tokens the conversation holds (all computed but the last,
    # which was sampled and never fed)
    seen = first.usage.prompt_tokens + first.usage.completion_tokens
    assert after.usage.prompt_tokens_details.cached_tokens >= seen - 1
    reply = await client.chat.completions.create(messages=messages, tool_choice="none", **ask)
    assert reply.choices[0].message.tool_calls is None
    stream = await client.chat.completions.create(
        messages=messages, tool_choice="none", stream=True, **ask
    )
    texts = [c.choices[0].delta.content async for c in stream if c.choices[0].delta.content]
    content = reply.choices[0].message.content
    assert "".join(texts) == content
    if len(smol_engine.tokenizer.encode(content)) > 2:
        assert len(texts) > 1  # streamed as it was written, not whole at the end
    named = {"type": "function", "function": {"name": "get_order_status"}}
    forced = await client.chat.completions.create(
        messages=[{"role": "user", "content": "Hello! Order 555 please."}], tool_choice=named, **ask
    )
    assert forced.choices[0].message.tool_calls[0].function.name == "get_order_status"


async def test_ignore_eos_generates_past_the_end_of_turn(client):
    """vLLM's ``ignore_eos`` and ``min_tokens``, as load generators send them for replies of a
    fixed or a least length."""
    ask = {"model": "smollm2", "max_tokens": 40, "temperature": 0,
           "messages": [SYSTEM, {"role": "user", "content": "Say hi."}]}  # fmt: skip
    natural = await client.chat.completions.create(**ask)
    assert natural.choices[0].finish_reason == "stop" and natural.usage.completion_tokens < 40
    fixed = await client.chat.completions.create(**ask, extra_body={"ignore_eos": True})
    assert fixed.choices[0].finish_reason == "length" and fixed.usage.completion_tokens == 40
    least = await client.chat.completions.create(**ask, extra_body={"min_tokens": 30})
    assert least.usage.completion_tokens >= 30 > natural.usage.completion_tokens
    text = await client.completions.create(
        model="smollm2", prompt="Hi", max_tokens=40, extra_body={"ignore_eos": True}
    )
    assert text.usage.completion_tokens == 40


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a", 5]}, "prompt"),
        ({"prompt": [[1, -2]]}, "prompt"),
        ({"prompt": [[49152]]}, "prompt"),
        ({"prompt": ["a"] * 65}, "prompt"),
        ({"prompt": ["a"] * 9, "n": 15}, "n"),
        ({"prompt": "a", "suffix": "b"}, "suffix"),
        ({"prompt": "a", "best_of": 2}, "best_of"),
        ({"prompt": "a", "echo": True, "max_tokens": -1}, "max_tokens"),
        ({"prompt": "a", "logprobs": True}, "logprobs"),
        ({"prompt": "a", "messages": []}, "messages"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "\ud800"}, None),
    ],
)
async def test_bad_text_completions_get_a_400_with_a_message(api, body, param):
    async with (
        aiohttp.ClientSession() as http,
        http.post(api[0] + "/v1/completions", data=json.dumps(body)) as r,
    ):
        assert r.status == 400
        error = (await r.json())["error"]
        assert error["message"] and error["param"] == param


def _metrics(text: str) -> dict[str, float]:
    samples = (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    return {name: float(value) for name, value in samples}


async def test_metrics_in_prometheus_text_follow_the_engine(api, client):
    async def scrape() -> dict[str, float]:
        async with aiohttp.ClientSession() as http, http.get(api[0] + "/metrics") as r:
            assert r.status == 200 and r.content_type == "text/plain"
            return _metrics(await r.text())

    before = await scrape()
    reply = await client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=5
    )
    after = await scrape()
    generated = "parley_engine_generated_tokens_total"
    assert after[generated] - before[generated] == reply.usage.completion_tokens
    computed = "parley_engine_computed_tokens_total"
    # each reply token but the last was fed back, and the prompt tokens not cached ran
    usage = reply.usage
    ran = usage.prompt_tokens - usage.prompt_tokens_details.cached_tokens
    assert ran >= 1
    assert after[computed] - before[computed] >= ran + usage.completion_tokens - 1
    assert after["parley_engine_steps_total"] > before["parley_engine_steps_total"]
    blocks = after['parley_kv_blocks{state="free"}'] + after['parley_kv_blocks{state="used"}']
    assert blocks == api[1].engine.stats().total_blocks and after["parley_engine_generating"] == 0


async def test_metrics_count_the_apis_requests_tokens_and_latencies(api, client):
    """Each request by route pattern and status; each finished completion's time to first
    token and duration (histograms, their buckets cumulative) and its usage."""

    async def scrape() -> dict[str, float]:
        async with aiohttp.ClientSession() as http, http.get(api[0] + "/metrics") as r:
            return _metrics(await r.text())

    before = await scrape()
    messages = [SYSTEM, {"role": "user", "content": "Name a colour."}]
    first = await client.chat.completions.create(model="smollm2", messages=messages, max_tokens=6)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "Another?"}]  # fmt: skip
    stream = await client.chat.completions.create(
        model="smollm2", messages=messages, max_tokens=4, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    second = [chunk async for chunk in stream][-1].usage
    await client.models.retrieve("smollm2")
    with contextlib.suppress(Exception):
        await client.models.retrieve("no-such-model")
    async with aiohttp.ClientSession() as http, http.get(api[0] + "/v1/no/such/path") as r:
        assert r.status == 404
    after = await scrape()

    def moved(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    chat = 'parley_api_requests_total{route="/v1/chat/completions",code="200"}'
    assert moved(chat) == 2
    assert moved('parley_api_requests_total{route="/v1/models/{model}",code="200"}') == 1
    assert moved('parley_api_requests_total{route="/v1/models/{model}",code="404"}') == 1
    assert moved('parley_api_requests_total{route="unmatched",code="404"}') == 1
    for histogram in ("api_time_to_first_token_seconds", "api_request_duration_seconds"):
        name = f"parley_{histogram}"
        assert moved(f"{name}_count") == 2 and moved(f"{name}_sum") > 0
        buckets = [v for k, v in after.items() if k.startswith(f"{name}_bucket")]
        assert buckets == sorted(buckets) and buckets[-1] == after[f"{name}_count"]
    usage = [first.usage, second]
    assert moved("parley_api_prompt_tokens_total") == sum(u.prompt_tokens for u in usage)
    assert moved("parley_api_completion_tokens_total") == sum(u.completion_tokens for u in usage)
    cached = sum(u.prompt_tokens_details.cached_tokens for u in usage)
    assert moved("parley_api_cached_prompt_tokens_total") == cached > 0  # the second reused


@pytest.mark.parametrize("path", ["/healthz", "/health"])
async def test_healthz(api, path):
    async with aiohttp.ClientSession() as http, http.get(api[0] + path) as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"


async def test_the_tokenizer_endpoints_are_the_served_models_own(api, client, smol_dir):
    """vLLM's /tokenize, /detokenize and /tokenizer_info, which lm-evaluation-harness uses as
    its tokenizer when a server has them: the same tokens and spellings as the model's HF
    tokenizer, a chat's count equal to what the chat endpoint prefills (tools included), and
    a round trip back to the text."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(smol_dir)
    text = "Héllo wörld, 1234 tokens! <|im_end|> ok"
    messages = [SYSTEM, {"role": "user", "content": "Where is my order 12345?"}]

    async def post(path: str, body: dict) -> dict:
        async with aiohttp.ClientSession() as http, http.post(api[0] + path, json=body) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    plain = await post("/tokenize", {"prompt": text, "add_special_tokens": False,
                                     "return_token_strs": True})  # fmt: skip
    assert plain["tokens"] == hf(text, add_special_tokens=False)["input_ids"]
    assert plain["token_strs"] == hf.convert_ids_to_tokens(plain["tokens"])
    assert plain["count"] == len(plain["tokens"]) and plain["max_model_len"] > 0
    default = await post("/tokenize", {"prompt": text})
    assert default["tokens"] == hf(text)["input_ids"] and default["token_strs"] is None
    assert (await post("/detokenize", {"tokens": plain["tokens"]}))["prompt"] == text
    for tools in (None, [ORDER_TOOL]):
        counted = await post("/tokenize", {"messages": messages, "tools": tools})
        chat = await client.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=1, **({"tools": tools} if tools else {})
        )
        assert counted["count"] == chat.usage.prompt_tokens
    bare = await post("/tokenize", {"messages": messages, "add_generation_prompt": False})
    assert bare["tokens"] == hf(hf.apply_chat_template(messages, tokenize=False),
                                add_special_tokens=False)["input_ids"]  # fmt: skip
    async with aiohttp.ClientSession() as http, http.get(api[0] + "/tokenizer_info") as r:
        info = await r.json()
    assert info["eos_token"] == hf.eos_token and info["chat_template"] == hf.chat_template
    assert info["tokenizer_class"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"prompt": "a", "messages": []}, "prompt"),
        ("/tokenize", {"prompt": 5}, "prompt"),
        ("/tokenize", {"prompt": "a", "tools": []}, "tools"),
        ("/tokenize", {"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ("/tokenize", {"prompt": "a", "add_special_tokens": "yes"}, "add_special_tokens"),
        ("/tokenize", {"prompt": "a", "continue_final_message": True}, "continue_final_message"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
        ("/detokenize", {"tokens": [49152]}, "tokens"),
        ("/detokenize", {"tokens": "abc"}, "tokens"),
        ("/detokenize", [], None),
    ],
)
async def test_bad_tokenizer_requests_get_a_400_with_a_message(api, path, body, param):
    async with aiohttp.ClientSession() as http, http.post(api[0] + path, json=body) as r:
        assert r.status == 400
        error = (await r.json())["error"]
        assert error["message"] and error["param"] == param
    async with aiohttp.ClientSession() as http, http.get(api[0] + path) as r:
        assert r.status == 405 and (await r.json())["error"]["message"]


async def test_with_an_api_key_the_api_needs_it_and_health_does_not(smol_engine):
    """``[server] api_key``: OpenAI's clients send theirs as a bearer token and get an
    AuthenticationError without the right one; health and metrics stay open to probes."""
    from openai import AsyncOpenAI, AuthenticationError

    service = ChatService(smol_engine, "smollm2")
    server = TestServer(build_app(service, ServerConfig(api_key="s3cret")), host="127.0.0.1")
    await server.start_server()
    base = f"http://127.0.0.1:{server.port}"
    try:
        messages = [{"role": "user", "content": "Hi"}]
        for key in ("wrong", "s3cret-and-more"):
            client = AsyncOpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
            with pytest.raises(AuthenticationError) as raised:
                await client.chat.completions.create(model="smollm2", messages=messages)
            assert raised.value.body["code"] == "invalid_api_key"
        client = AsyncOpenAI(base_url=base + "/v1", api_key="s3cret", max_retries=0)
        reply = await client.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=2
        )
        assert reply.usage.completion_tokens == 2
        async with aiohttp.ClientSession() as http:
            for path in ("/health", "/healthz", "/metrics"):
                async with http.get(base + path) as r:
                    assert r.status == 200
            async with http.post(base + "/tokenize", json={"prompt": "a"}) as r:
                assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
            headers = {"Authorization": "Bearer s3cret"}
            async with http.post(base + "/tokenize", json={"prompt": "a"}, headers=headers) as r:
                assert r.status == 200
            async with http.get(base + "/v1/nowhere", headers=headers) as r:
                assert r.status == 404  # the key is right: the path is what is wrong
    finally:
        await server.close()
        await service.close()


async def test_responses_api_answers_streams_and_goes_on_from_a_stored_response(client):
    """/v1/responses serves what the chat endpoint does for the same conversation: whole,
    streamed as typed events (which the SDK's own accumulator reads back), and continued
    from ``previous_response_id`` with only the new input sent and the resident KV reused;
    stored responses can be retrieved and deleted, unstored ones cannot be named."""
    import openai

    system = "You are a concise assistant."
    ask = {"model": "smollm2", "instructions": system, "max_output_tokens": 40, "temperature": 0}
    first = await client.responses.create(input="Name a fruit.", **ask)
    asked = [{"role": "system", "content": system}, {"role": "user", "content": "Name a fruit."}]
    chat = await client.chat.completions.create(
        model="smollm2", max_tokens=40, temperature=0, messages=asked
    )
    assert first.id.startswith("resp_") and first.object == "response"
    assert first.output_text == chat.choices[0].message.content
    cut = chat.choices[0].finish_reason == "length"
    assert first.status == ("incomplete" if cut else "completed")
    assert first.usage.input_tokens == chat.usage.prompt_tokens
    assert first.usage.output_tokens == chat.usage.completion_tokens

    events = [
        e async for e in await client.responses.create(input="Name a fruit.", stream=True, **ask)
    ]
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert kinds[-1] == ("response.incomplete" if cut else "response.completed")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == first.output_text == events[-1].response.output_text
    if not cut:  # the SDK's accumulator gives a final response only for a completed one
        async with client.responses.stream(input="Name a fruit.", **ask) as stream:
            final = await stream.get_final_response()
        assert final.output_text == first.output_text

    second = await client.responses.create(
        input="And a vegetable?", previous_response_id=first.id, **ask
    )
    history = [
        {"role": "system", "content": system}, {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And a vegetable?"},
    ]  # fmt: skip
    again = await client.chat.completions.create(
        model="smollm2", messages=history, max_tokens=40, temperature=0
    )
    assert second.output_text == again.choices[0].message.content
    assert second.previous_response_id == first.id
    seen = first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens >= seen - 1  # the KV went on

    assert (await client.responses.retrieve(first.id)).output_text == first.output_text
    await client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(input="More?", previous_response_id=first.id, **ask)
    assert refused.value.body["param"] == "previous_response_id"
    unstored = await client.responses.create(
        input="Hi", store=False, text={"verbosity": "low"}, **ask
    )
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unstored.id)


async def test_responses_api_tool_call_round_trip_and_structured_output(client):
    """A function call comes back as a function_call item; its output, sent as the next
    request's input after the stored response, gets the reply. ``text.format`` with a
    schema (the SDK's ``parse``) gets a value of the schema."""
    from pydantic import BaseModel

    tool = {"type": "function", **ORDER_TOOL["function"]}
    ask = {"model": "smollm2", "tools": [tool], "max_output_tokens": 60, "temperature": 0,
           "instructions": "You are a customer service assistant."}  # sent every time  # fmt: skip
    called = await client.responses.create(
        input="Where is my order 12345?", tool_choice="required", **ask
    )
    (call,) = called.output
    assert call.type == "function_call" and call.name == "get_order_status"
    assert set(json.loads(call.arguments)) == {"order_id"} and call.call_id.startswith("call_")
    result = {
        "type": "function_call_output",
        "call_id": call.call_id,
        "output": '{"status": "shipped"}',
    }
    answered = await client.responses.create(
        input=[result], previous_response_id=called.id, tool_choice="none", **ask
    )
    assert [item.type for item in answered.output] == ["message"] and answered.output_text
    seen = called.usage.input_tokens + called.usage.output_tokens
    assert answered.usage.input_tokens_details.cached_tokens >= seen - 1  # the last: not fed

    class Pet(BaseModel):
        name: str
        age: int

    parsed = await client.responses.parse(
        model="smollm2", input="Tom is a 3 year old cat. Give his name and age.",
        text_format=Pet, max_output_tokens=120, temperature=0,
    )  # fmt: skip
    assert isinstance(parsed.output_parsed, Pet)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": []}, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input.0"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input.0"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input.0"),
        ({"input": [{"role": "wizard", "content": "hi"}]}, "input.0.role"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools.0"),
        ({"input": "hi", "previous_response_id": "resp_nope"}, "previous_response_id"),
        ({"input": "hi", "reasoning": {"effort": "high"}}, "reasoning"),
        ({"input": "hi", "background": True}, "background"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "text": {"format": {"type": "grammar"}}}, "text"),
        ({"input": "hi", "text": "plain"}, "text"),
        ({"input": "hi", "text": {"style": "terse"}}, "text.style"),
        ({"input": "hi", "store": "yes"}, "store"),
        ({"input": "hi", "instructions": 5}, "instructions"),
        ({"input": "hi", "frequency": 1}, "frequency"),
        ([], None),
    ],
)
async def test_bad_responses_requests_get_a_400_with_a_message(api, body, param):
    async with aiohttp.ClientSession() as http, http.post(api[0] + "/v1/responses", json=body) as r:
        assert r.status == 400, await r.text()
        error = (await r.json())["error"]
        assert error["message"] and error["param"] == param
