"""Bad input over the real socket: each gets an ``error`` event or a clean close, the session
keeps working, other sessions are unaffected and the server keeps serving."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.voice.rt_client import RATE, RealtimeClient, user_text


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def connect(http, url) -> RealtimeClient:
    rt = RealtimeClient(await http.ws_connect(url + "/v1/realtime"))
    await rt.wait_for("session.created")
    return rt


async def still_works(rt: RealtimeClient) -> None:
    """The session answers a valid event after the bad one."""
    mark = len(rt.events)
    await rt.send(
        {"type": "session.update", "session": {"type": "realtime", "instructions": "Hi."}}
    )
    await rt.wait_for("session.updated", after=mark, timeout=30)


async def error_after(rt: RealtimeClient, mark: int) -> dict:
    return (await rt.wait_for("error", after=mark, timeout=30))["error"]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        (json.dumps({"type": "no.such.event"}), "unknown_event"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "%%%"}), "invalid_base64"),
        (json.dumps({"type": "input_audio_buffer.append"}), "missing_required_parameter"),
        (json.dumps({"type": "response.cancel"}), "invalid_value"),  # nothing to cancel
        (json.dumps({"type": "input_audio_buffer.commit"}), "invalid_value"),  # VAD commits
        (
            json.dumps(
                {
                    "type": "conversation.item.truncate",
                    "item_id": "item_x",
                    "content_index": 0,
                    "audio_end_ms": 10,
                }
            ),
            "invalid_value",
        ),
    ],
)
async def test_bad_event_gets_an_error_and_the_session_goes_on(http, voice_server, frame, code):
    rt = await connect(http, voice_server)
    try:
        mark = len(rt.events)
        await rt.ws.send_str(frame)
        error = await error_after(rt, mark)
        assert error["code"] == code
        assert error["message"]
        await still_works(rt)
    finally:
        await rt.close()


async def test_an_item_goes_only_after_the_last_one(http, voice_server):
    """``previous_item_id`` may name the last item (or ``root`` before any): anything else
    would insert mid-conversation, which is refused, and nothing is added."""
    rt = await connect(http, voice_server)
    try:
        mark = len(rt.events)
        await rt.send({**user_text("Hello."), "previous_item_id": "root"})
        first = (await rt.wait_for("conversation.item.added", after=mark, timeout=30))["item"]
        for previous in ("root", "item_nope"):
            mark = len(rt.events)
            await rt.send({**user_text("Hi again."), "previous_item_id": previous})
            error = await error_after(rt, mark)
            assert error["code"] == "invalid_value" and error["param"] == "previous_item_id"
        mark = len(rt.events)
        await rt.send({**user_text("Still here?"), "previous_item_id": first["id"]})
        added = await rt.wait_for("conversation.item.added", after=mark, timeout=30)
        assert added["previous_item_id"] == first["id"]
        assert sum(e["type"] == "conversation.item.added" for e in rt.events) == 2
    finally:
        await rt.close()


async def test_odd_pcm16_bytes_are_refused(http, voice_server):
    rt = await connect(http, voice_server)
    try:
        mark = len(rt.events)
        await rt.append(b"\x01\x02\x03")
        error = await error_after(rt, mark)
        assert "2-byte" in error["message"]
        await still_works(rt)
    finally:
        await rt.close()


async def test_binary_frame_is_refused(http, voice_server):
    rt = await connect(http, voice_server)
    try:
        mark = len(rt.events)
        await rt.ws.send_bytes(b"\x00" * 640)
        assert (await error_after(rt, mark))["code"] == "invalid_json"
        await still_works(rt)
    finally:
        await rt.close()


async def test_oversized_append_is_refused(http, voice_server):
    rt = await connect(http, voice_server)
    try:
        mark = len(rt.events)
        await rt.append(bytes((1 << 20) + 2))  # over the 1 MiB cap, under the frame limit
        assert (await error_after(rt, mark))["code"] == "audio_too_large"
        await still_works(rt)
    finally:
        await rt.close()


async def test_oversized_frame_closes_cleanly_and_the_server_serves_on(http, voice_server):
    rt = await connect(http, voice_server)
    await rt.ws.send_str(
        json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (3 << 20)})
    )
    await asyncio.wait_for(rt._reader, 30)  # the server closes the connection
    assert rt.ws.closed and rt.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    await rt.close()
    other = await connect(http, voice_server)
    await still_works(other)
    await other.close()


async def test_audio_faster_than_real_time_is_refused(http, voice_server):
    rt = await connect(http, voice_server)
    try:
        mark = len(rt.events)
        second = bytes(RATE * 2)
        for _ in range(15):  # 15 s of audio at once: more than the 10 s burst allowed
            await rt.append(second)
        error = await error_after(rt, mark)
        assert "real time" in error["message"]
        await still_works(rt)
    finally:
        await rt.close()


async def test_manual_commit_of_too_little_audio(http, voice_server):
    rt = await connect(http, voice_server)
    try:
        audio = {"input": {"turn_detection": None}}
        await rt.send({"type": "session.update", "session": {"type": "realtime", "audio": audio}})
        await rt.wait_for("session.updated")
        mark = len(rt.events)
        await rt.append(bytes(480))  # 10 ms
        await rt.send({"type": "input_audio_buffer.commit"})
        assert "buffer too small" in (await error_after(rt, mark))["message"]
        await still_works(rt)
    finally:
        await rt.close()


async def test_client_leaving_mid_reply_does_not_disturb_another(http, voice_server):
    leaver = await connect(http, voice_server)
    stayer = await connect(http, voice_server)
    try:
        text = user_text("Tell me a story about a cat.")
        for rt in (leaver, stayer):
            await rt.send(text)
            await rt.send({"type": "response.create"})
        await leaver.wait_for("response.output_audio.delta", timeout=60)
        await leaver.close()  # gone mid-reply
        done = await stayer.wait_for("response.done", timeout=90)
        assert done["response"]["status"] == "completed"
        assert stayer.audio(done["response"]["id"])
        async with http.get(voice_server + "/healthz") as resp:
            assert resp.status == 200
    finally:
        await stayer.close()


async def test_a_session_of_errors_does_not_disturb_another(http, voice_server):
    bad = await connect(http, voice_server)
    good = await connect(http, voice_server)
    try:
        await good.send(user_text("Say hello."))
        await good.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        for i in range(50):
            await bad.ws.send_str("{garbage" if i % 2 else json.dumps({"type": f"x{i}"}))
        done = await good.wait_for("response.done", timeout=60)
        assert done["response"]["status"] == "completed"
        await asyncio.sleep(0.2)
        assert len(bad.of("error")) == 50
    finally:
        await bad.close()
        await good.close()
