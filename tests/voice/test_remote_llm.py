"""RemoteDialogue against a real ``parley serve`` process, plus its pure SSE core.

The served engine runs in its own process on the same SmolLM2 weights as the in-process
``smol_engine`` (float32, no quantization on both sides), so greedy replies must be equal. The
malformed-server cases use a raw asyncio socket server that writes exact bytes; every other
case talks to the real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from voice.llm import Dialogue, LlmError, ReplyParams, local_dialogue
from voice.remote_llm import (
    RemoteDialogue,
    RemoteLlm,
    RemoteLlmConfig,
    RemoteLlmError,
    SseDecoder,
    StreamEvent,
    StreamFormatError,
    parse_event,
)

MODEL = "smollm2-135m-instruct"
SYSTEM = "You are a concise assistant."
TURNS = ["Name three colors.", "Which of them is the color of the sky?", "Thanks. Bye!"]
GREEDY = ReplyParams(max_tokens=24, temperature=0.0)
STARTUP_S = 300  # `parley serve` may also load ASR/TTS models
HANG_GUARD_S = 30  # a test that waits longer than this has hung


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"parley serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)  # polling another process's readiness: there is no event to wait on
    pytest.fail(f"parley serve not healthy after {STARTUP_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def served(smol_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``parley serve`` in its own process; yields its base URL (…/v1)."""
    tmp = tmp_path_factory.mktemp("serve")
    profile = tmp / "profile.toml"
    profile.write_text(  # the in-process smol_engine's settings, so greedy output is identical
        '[engine]\ndtype = "float32"\nquant = "none"\nnum_blocks = 256\nblock_size = 16\n'
        "max_batch = 8\n"
    )
    port, log = _free_port(), tmp / "serve.log"
    parley = Path(sys.executable).with_name("parley")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(parley), "--config", str(profile), "serve", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_healthy(proc, port, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _config(base_url: str, **kw: object) -> RemoteLlmConfig:
    return RemoteLlmConfig(base_url=base_url, model=MODEL, read_timeout_s=60, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def llm(served: str) -> AsyncIterator[RemoteLlm]:
    client = RemoteLlm(_config(served))
    yield client
    await client.close()


async def _say(dialogue: Dialogue, params: ReplyParams = GREEDY) -> str:
    async with asyncio.timeout(HANG_GUARD_S):
        return "".join([piece async for piece in dialogue.reply(params)])


async def _turn(dialogue: Dialogue, text: str, params: ReplyParams = GREEDY) -> str:
    """A spoken turn: a partial transcript first (prefilled locally), then the final one."""
    await dialogue.set_user(" ".join(text.split()[:2]), final=False)
    await dialogue.set_user(text, final=True)
    return await _say(dialogue, params)


def _client_connections(port: int) -> int:
    """Established TCP connections of this machine's clients to ``port`` (Linux /proc)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    n += 1
    return n


async def _until(condition: Callable[[], bool]) -> bool:
    """Let the loop run (socket closes are deferred a loop turn) until ``condition`` holds."""
    for _ in range(200):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


# --- config and profile -------------------------------------------------------------------


def test_config_normalizes_and_builds_the_url() -> None:
    cfg = RemoteLlmConfig(base_url="https://api.example.com/v1/", model="m")
    assert cfg.chat_url == "https://api.example.com/v1/chat/completions"


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"base_url": "localhost:8000/v1"}, "http(s) URL"),
        ({"base_url": "http://h:8000/v1/chat/completions"}, "API root"),
        ({"model": ""}, "served model"),
        ({"api_key_env": "sk-abc123"}, "NAME of an environment variable"),
        ({"connect_timeout_s": 0}, "positive"),
        ({"read_timeout_s": -1}, "positive"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 3.0}, "temperature"),
        ({"max_connections": 0}, "max_connections"),
    ],
)
def test_config_rejects(kw: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError) as err:
        RemoteLlmConfig(**kw)  # type: ignore[arg-type]
    assert words in str(err.value)


def test_remote_profile_is_complete() -> None:
    root = Path(__file__).parents[2] / "configs"
    remote = tomllib.loads((root / "remote.toml").read_text())
    default = tomllib.loads((root / "default.toml").read_text())
    assert set(remote) == {*default, "llm"}
    for name, section in default.items():
        assert set(remote[name]) == set(section), f"[{name}] differs from default.toml"
    assert remote["llm"]["backend"] == "remote"
    cfg = RemoteLlmConfig(**remote["llm"]["remote"])
    assert cfg.chat_url.startswith("http://")
    from voice.config import load_config

    loaded = load_config(root / "remote.toml")
    assert loaded.llm.backend == "remote" and loaded.llm.remote == cfg


def test_api_key_env_must_be_set() -> None:
    cfg = RemoteLlmConfig(api_key_env="PARLEY_TEST_UNSET_KEY")
    with pytest.raises(LlmError, match=r"\$PARLEY_TEST_UNSET_KEY.*not set"):
        RemoteLlm(cfg, environ={})


# --- the pure SSE core --------------------------------------------------------------------


def test_sse_decoder_splits_events_across_chunks() -> None:
    d = SseDecoder()
    stream = b': keep-alive\r\n\r\ndata: {"a":1}\r\n\r\nevent: x\ndata: one\ndata: two\n\nda'
    out: list[str] = []
    for i in range(len(stream)):  # byte by byte: every split point
        out += d.feed(stream[i : i + 1])
    out += d.feed(b"ta: [DONE]\n\n")
    assert out == ['{"a":1}', "one\ntwo", "[DONE]"]
    assert d.end() == []


def test_sse_decoder_keeps_multibyte_text_and_flushes_a_last_event() -> None:
    d = SseDecoder()
    raw = 'data: {"x":"héllo ☕"}\n'.encode()
    assert d.feed(raw[:10]) == [] and d.feed(raw[10:]) == []
    assert d.end() == ['{"x":"héllo ☕"}']


def test_sse_decoder_rejects_bad_bytes() -> None:
    with pytest.raises(StreamFormatError, match="UTF-8"):
        SseDecoder().feed(b"data: \xff\xfe\n")
    with pytest.raises(StreamFormatError, match="over 8 bytes"):
        SseDecoder(max_line=8).feed(b"data: 0123456789")


def _chunk(delta: dict[str, object], finish: str | None = None) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


@pytest.mark.parametrize(
    ("data", "event"),
    [
        (_chunk({"role": "assistant", "content": ""}), StreamEvent()),
        (_chunk({"content": "Hi"}), StreamEvent(text="Hi")),
        (_chunk({"content": None, "reasoning_content": "hm"}), StreamEvent()),
        (_chunk({}, "stop"), StreamEvent(finish_reason="stop")),
        ('{"choices": [], "usage": {"prompt_tokens": 3}}', StreamEvent()),
        (" [DONE]", StreamEvent(done=True)),
    ],
)
def test_parse_event(data: str, event: StreamEvent) -> None:
    assert parse_event(data) == event


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"choices": [5]}', "choices[0].delta"),
        (_chunk({"content": 5}), "bad delta"),
        ('{"error": {"message": "boom", "type": "server_error"}}', "mid-reply: boom"),
        ('{"object": "error", "message": "out of memory"}', "mid-reply: out of memory"),
        ('{"error": "overloaded"}', "mid-reply: overloaded"),
    ],
)
def test_parse_event_rejects(data: str, words: str) -> None:
    with pytest.raises(StreamFormatError) as err:
        parse_event(data)
    assert words in str(err.value)


def test_request_body_applies_the_config() -> None:
    llm = RemoteLlm(RemoteLlmConfig(model="m", max_tokens=50, temperature=0.7))
    msgs = [{"role": "user", "content": "hi"}]
    body = llm.request_body(msgs, ReplyParams(max_tokens=100, temperature=0.0, seed=7))
    assert body == {
        "model": "m", "messages": msgs, "stream": True, "max_tokens": 50, "temperature": 0.7,
        "seed": 7,
    }  # fmt: skip
    body = RemoteLlm(RemoteLlmConfig()).request_body(msgs, ReplyParams(max_tokens=20))
    assert body["max_tokens"] == 20 and body["temperature"] == 0.0 and "seed" not in body


# --- against `parley serve` ---------------------------------------------------------------


async def test_greedy_replies_equal_the_local_engine(llm: RemoteLlm, smol_engine: object) -> None:
    remote = llm.open(SYSTEM)
    local = local_dialogue(smol_engine, SYSTEM)  # type: ignore[arg-type]
    try:
        for text in TURNS:
            expected = await _turn(local, text)
            assert await _turn(remote, text) == expected
            assert expected
        assert remote.history == local.history
        assert remote.history[0] == {"role": "system", "content": SYSTEM}
        assert [m["role"] for m in remote.history[1:]] == ["user", "assistant"] * len(TURNS)
    finally:
        await local.close()
        await remote.close()


async def test_set_user_revises_the_open_message(llm: RemoteLlm) -> None:
    d = llm.open("")
    await d.set_user("", final=False)
    assert d.history == []
    await d.set_user("Name three", final=False)
    await d.set_user("Name three colors.", final=False)
    assert d.history == [{"role": "user", "content": "Name three colors."}]
    reply = await _say(d)  # an open user message is closed by reply()
    await d.set_user("Thanks.", final=False)
    assert [m["role"] for m in d.history] == ["user", "assistant", "user"]
    assert d.history[1]["content"] == reply


async def test_cancel_mid_stream_closes_the_connection_and_keeps_the_partial_reply(
    served: str,
) -> None:
    llm = RemoteLlm(_config(served))  # its own connection pool, so the count below is its own
    port = _port(served)
    try:
        d = llm.open(SYSTEM)
        await d.set_user("Write a long story about a dragon.", final=True)
        pieces: list[str] = []
        three = asyncio.Event()

        async def consume() -> None:
            async for piece in d.reply(ReplyParams(max_tokens=400)):
                pieces.append(piece)
                if len(pieces) == 3:
                    three.set()

        task = asyncio.create_task(consume())
        async with asyncio.timeout(HANG_GUARD_S):
            await three.wait()
        assert _client_connections(port) == 1, "the stream is open while the reply streams"
        task.cancel()
        async with asyncio.timeout(HANG_GUARD_S):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert await _until(lambda: _client_connections(port) == 0), "connection not closed"
        assert len(pieces) < 400
        assert d.history[-1] == {"role": "assistant", "content": "".join(pieces)}
        kept = d.history[-1]["content"]

        await d.set_user("Shorter, please.", final=True)
        assert await _say(d)  # the server is free again and the next turn works
        assert d.history[2]["content"] == kept
    finally:
        await llm.close()


async def test_leaving_the_loop_closes_the_connection(served: str) -> None:
    llm = RemoteLlm(_config(served))
    try:
        d = llm.open(SYSTEM)
        await d.set_user("Count from one to one hundred.", final=True)
        got = ""
        async with contextlib.aclosing(d.reply(ReplyParams(max_tokens=300))) as reply:
            async for piece in reply:
                got += piece
                if len(got) > 5:
                    break
        assert await _until(lambda: _client_connections(_port(served)) == 0)
        assert d.history[-1] == {"role": "assistant", "content": got}
    finally:
        await llm.close()


async def test_keep_reply_then_the_next_turn_matches_the_local_engine(
    llm: RemoteLlm, smol_engine: object
) -> None:
    remote = llm.open(SYSTEM)
    local = local_dialogue(smol_engine, SYSTEM)  # type: ignore[arg-type]
    try:
        await remote.set_user(TURNS[0], final=True)
        pieces = [p async for p in remote.reply(GREEDY)]
        assert len(pieces) > 4
        heard = len("".join(pieces[:3]))  # a token boundary, where the engine can cut exactly
        await local.set_user(TURNS[0], final=True)
        assert "".join([p async for p in local.reply(GREEDY)]) == "".join(pieces)

        kept = await remote.keep_reply(heard)
        assert kept == "".join(pieces[:3]) == await local.keep_reply(heard)
        assert remote.history[-1] == {"role": "assistant", "content": kept}
        assert await remote.keep_reply(heard) == kept  # idempotent

        follow = "Please go on."
        assert await _turn(remote, follow) == await _turn(local, follow)
        assert remote.history == local.history
        assert remote.history[2]["content"] == kept  # what was sent is what was heard
    finally:
        await local.close()
        await remote.close()


async def test_local_reply_closed_mid_stream_then_kept_at_once(smol_engine: object) -> None:
    """A barge-in closes the reply and truncates it to what was heard straight away: the
    engine's stream is closed with the reply, so the truncate never finds it generating."""
    local = local_dialogue(smol_engine, SYSTEM)  # type: ignore[arg-type]
    try:
        await local.set_user("Count from one to one hundred.", final=True)
        got = ""
        reply = local.reply(ReplyParams(max_tokens=300))
        async for piece in reply:
            got += piece
            if len(got) > 5:
                break
        await reply.aclose()
        assert await local.keep_reply(len(got)) == got
        assert await _turn(local, "Thanks.")  # the next turn goes on from there
    finally:
        await local.close()


async def test_keep_reply_edges(llm: RemoteLlm) -> None:
    d = llm.open(SYSTEM)
    assert await d.keep_reply(5) == ""  # no reply yet
    await d.set_user(TURNS[0], final=True)
    reply = await _say(d)
    assert await d.keep_reply(10_000) == reply
    assert await d.keep_reply(0) == ""
    assert [m["role"] for m in d.history] == ["system", "user"]  # no empty assistant message
    await d.add("user", "Say hi.")
    assert await d.keep_reply(3) == ""  # the reply is no longer the last message


async def test_mark_and_restore(llm: RemoteLlm) -> None:
    d = llm.open(SYSTEM)
    await d.set_user(TURNS[0], final=True)
    first = await _say(d)
    await d.set_user("Which of", final=False)
    mark = d.mark()
    before = d.history

    await d.set_user(TURNS[1], final=True)
    assert await _say(d)
    await d.restore(mark)
    assert d.history == before
    await d.set_user(TURNS[1], final=False)  # the user message is open again: revised, not added
    assert d.history == [*before[:-1], {"role": "user", "content": TURNS[1]}]
    assert await _say(d)
    assert d.history[2] == {"role": "assistant", "content": first}
    with pytest.raises(TypeError):
        await d.restore((3, False))


async def test_unreachable_server_fails_fast() -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    llm = RemoteLlm(RemoteLlmConfig(base_url=url, model=MODEL))
    try:
        d = llm.open(SYSTEM)
        await d.set_user("Hello?", final=True)
        before = d.history
        with pytest.raises(LlmError, match=r"cannot connect to http://127\.0\.0\.1:\d+/v1/chat"):
            await _say(d)
        assert d.history == before  # no empty assistant message left behind
    finally:
        await llm.close()


async def test_http_400_carries_the_server_message(llm: RemoteLlm) -> None:
    d = llm.open(SYSTEM)
    await d.set_user(TURNS[0], final=True)
    before = d.history
    with pytest.raises(RemoteLlmError) as err:
        await _say(d, ReplyParams(temperature=5.0))
    assert err.value.status == 400 and err.value.url == llm.config.chat_url
    assert "HTTP 400" in str(err.value) and "'temperature' must be a number" in str(err.value)
    assert d.history == before
    assert await _say(d)  # the same dialogue goes on


async def test_over_long_prompt_is_an_llm_error(llm: RemoteLlm) -> None:
    d = llm.open(SYSTEM)
    await d.set_user("hello " * 9000, final=True)
    with pytest.raises(RemoteLlmError, match=r"HTTP 400: .*context") as err:
        await _say(d)
    assert err.value.status == 400 and llm.config.chat_url in str(err.value)


async def test_one_dialogues_failure_leaves_another_alone(llm: RemoteLlm) -> None:
    async def answer() -> str:
        d = llm.open(SYSTEM)
        return await _turn(d, TURNS[0])

    expected = await answer()

    async def failing() -> None:
        d = llm.open(SYSTEM)
        await d.set_user(TURNS[0], final=True)
        await _say(d, ReplyParams(temperature=9.0))

    async def cancelled() -> None:
        d = llm.open(SYSTEM)
        await d.set_user("Write a long story.", final=True)
        async for _ in d.reply(ReplyParams(max_tokens=300)):
            raise asyncio.CancelledError  # as if the session cancelled it at its first piece

    results = await asyncio.gather(failing(), cancelled(), answer(), return_exceptions=True)
    assert isinstance(results[0], RemoteLlmError)
    assert isinstance(results[1], asyncio.CancelledError)
    assert results[2] == expected
    assert await answer() == expected  # and the shared client still works afterwards


async def test_closed_client_and_dialogue_raise(served: str) -> None:
    llm = RemoteLlm(_config(served))
    d = llm.open(SYSTEM)
    await d.set_user("Hi.", final=True)
    await llm.close()
    with pytest.raises(LlmError, match="closed"):
        await _say(d)
    await d.close()
    with pytest.raises(LlmError, match="closed dialogue"):
        await _say(d)


# --- servers that misbehave (exact bytes over a raw socket) ---------------------------------

SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
GOOD = f"data: {_chunk({'content': 'Hello'})}\n\n".encode()


@contextlib.asynccontextmanager
async def _raw_server(response: bytes, *, hang: bool = False) -> AsyncIterator[tuple[str, list]]:
    """Answers every request with ``response`` bytes, then closes (or waits for the client)."""
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
             if k.lower() == b"content-length"),
            0,
        )  # fmt: skip
        requests.append(head + await reader.readexactly(length))
        writer.write(response)
        if hang:
            await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", requests
    finally:
        server.close()
        await server.wait_closed()


async def _fail_against(response: bytes, *, hang: bool = False) -> tuple[RemoteLlmError, list]:
    async with _raw_server(response, hang=hang) as (url, requests):
        llm = RemoteLlm(RemoteLlmConfig(base_url=url, model="m", read_timeout_s=0.5))
        try:
            d = llm.open(SYSTEM)
            await d.set_user("Hi.", final=True)
            with pytest.raises(RemoteLlmError) as err:
                await _say(d)
            assert url + "/chat/completions" in str(err.value)
            return err.value, [d.history[-1], *requests]
        finally:
            await llm.close()


@pytest.mark.parametrize(
    ("response", "hang", "words"),
    [
        (b"hello, this is not HTTP\r\n\r\n", False, "bad HTTP response from"),
        (SSE_HEAD + b"data: {not json\n\n", False, "not JSON"),
        (SSE_HEAD + b'data: {"error": {"message": "boom"}}\n\n', False, "mid-reply: boom"),
        (SSE_HEAD + GOOD, False, "ended before the reply finished"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(GOOD) + GOOD + b"\r\n40\r\nda",
            False,
            "closed the connection mid-reply",
        ),
        (
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n"
            b"<html><body>upstream   down</body></html>",
            False,
            "HTTP 502: <html><body>upstream down</body></html>",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
            b'{"error": {"message": "stream is not supported"}}',
            False,
            "not an event stream: stream is not supported",
        ),
        (SSE_HEAD + GOOD, True, "sent nothing for 0.5 s"),  # stalls mid-stream
        (b"", True, "sent nothing for 0.5 s"),  # accepts, never answers
    ],
)
async def test_misbehaving_server_is_an_llm_error(response: bytes, hang: bool, words: str) -> None:
    err, (last, *_) = await _fail_against(response, hang=hang)
    assert words in str(err)
    if GOOD in response:  # the text that arrived before the failure stays in the history
        assert last == {"role": "assistant", "content": "Hello"}
    else:
        assert last["role"] == "user"


async def test_sends_the_key_from_the_named_variable_and_the_body() -> None:
    done = SSE_HEAD + GOOD + f"data: {_chunk({}, 'stop')}\n\ndata: [DONE]\n\n".encode()
    async with _raw_server(done) as (url, requests):
        env = {"PARLEY_TEST_KEY": "sekrit"}
        llm = RemoteLlm(
            RemoteLlmConfig(base_url=url, model="m", api_key_env="PARLEY_TEST_KEY"), env
        )
        try:
            d = llm.open(SYSTEM)
            await d.set_user("Hi.", final=True)
            assert await _say(d, ReplyParams(max_tokens=7)) == "Hello"
        finally:
            await llm.close()
    head, _, body = requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions ")
    assert b"\r\nAuthorization: Bearer sekrit" in head
    assert json.loads(body) == {
        "model": "m",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi."}],
        "stream": True,
        "max_tokens": 7,
        "temperature": 0.0,
    }
    assert "sekrit" not in repr(asdict(llm.config)) and os.environ.get("PARLEY_TEST_KEY") is None


async def test_voice_session_on_the_remote_backend(served: str, model_dir: Any) -> None:
    """A Realtime session whose model is the separate `parley serve` process: it answers, and
    a cancelled reply leaves the remote history holding only what was heard."""
    import aiohttp

    from tests.voice.rt_client import RealtimeClient, user_text
    from voice.config import LlmConfig, load_config
    from voice.realtime.handler import SESSIONS_KEY
    from voice.server import ModelDirs, serve_in_thread

    config = load_config()
    config.llm = LlmConfig("remote", _config(served))
    config.session.max_reply_tokens = 48
    dirs = ModelDirs.for_config(config, model_dir)
    assert dirs.llm is None and dirs.llm_name == MODEL
    with serve_in_thread(config, dirs) as (url, app):
        async with aiohttp.ClientSession() as http:
            rt = RealtimeClient(await http.ws_connect(url + "/v1/realtime"))
            await rt.wait_for("session.created")
            await rt.send(user_text("Tell me a story about a cat."))
            await rt.send({"type": "response.create"})
            first = await rt.wait_for("response.output_audio.delta", timeout=60)
            await asyncio.sleep(1.0)
            await rt.send({"type": "response.cancel"})
            done = await rt.wait_for("response.done", timeout=30)
            response = done["response"]
            assert response["status"] == "cancelled"
            kept = response["output"][0]["content"][0]["transcript"]
            sent = "".join(e["delta"] for e in rt.of("response.output_audio_transcript.delta"))
            assert kept and sent.startswith(kept)
            sid = rt.of("session.created")[0]["session"]["id"]
            dialogue = app[SESSIONS_KEY][sid]._dialogue
            assert isinstance(dialogue, RemoteDialogue)
            assert dialogue.history[-1] == {"role": "assistant", "content": kept}
            assert first["response_id"] == response["id"]
            # the next turn goes through the same remote backend with that history
            await rt.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
            nxt = await rt.wait_for("response.done", timeout=60, after=rt.events.index(done) + 1)
            assert nxt["response"]["status"] == "completed"
            await rt.close()
