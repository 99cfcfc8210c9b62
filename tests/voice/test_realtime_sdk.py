"""The official ``openai`` SDK's realtime client against the local server, in both dialects."""

from __future__ import annotations

import asyncio
import base64

import pytest

from tests.corpus import normalize
from tests.voice.rt_client import RATE, pcm24k

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def question(synthesizer) -> bytes:
    return pcm24k(synthesizer.synthesize(QUESTION, 16_000))


async def _stream(conn, pcm: bytes) -> None:
    step = int(0.04 * RATE) * 2
    for i in range(0, len(pcm), step):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + step]).decode())
        await asyncio.sleep(0.04)


async def test_ga_client_speaks_and_gets_a_complete_response(voice_server, question):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=voice_server + "/v1", api_key="unused", max_retries=0)
    async with client.realtime.connect(model="parley") as conn:
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "You are a helpful assistant. Keep your answers short.",
                "output_modalities": ["audio"],
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "turn_detection": {"type": "server_vad"},
                    },
                    "output": {"format": {"type": "audio/pcm", "rate": 24000}},
                },
            }
        )
        await _stream(conn, bytes(int(0.3 * RATE) * 2) + question + bytes(RATE * 3))
        kinds, audio, transcript, user = [], b"", "", ""
        async with asyncio.timeout(90):
            async for event in conn:
                kinds.append(event.type)
                if event.type == "response.output_audio.delta":
                    audio += base64.b64decode(event.delta)
                elif event.type == "response.output_audio_transcript.delta":
                    transcript += event.delta
                elif event.type == "conversation.item.input_audio_transcription.completed":
                    user = event.transcript
                elif event.type == "error":
                    pytest.fail(f"server error: {event.error}")
                elif event.type == "response.done":
                    done = event
                    break
    assert kinds[0] == "session.created"
    assert "session.updated" in kinds
    assert {"capital", "france"} <= set(normalize(user).split())
    assert done.response.status == "completed"
    assert len(audio) > RATE and transcript.strip()
    # Parley's per-turn metrics ride along as an extra field the SDK keeps
    metrics = done.response.model_extra["parley"]["metrics"]
    assert metrics["first_audio_ms"] is not None


async def test_beta_client_gets_beta_event_names(voice_server):
    from openai import AsyncOpenAI

    # the beta client always speaks wss:// unless given the WebSocket base URL
    ws_url = voice_server.replace("http://", "ws://") + "/v1"
    client = AsyncOpenAI(
        base_url=voice_server + "/v1", websocket_base_url=ws_url, api_key="unused", max_retries=0
    )
    async with client.beta.realtime.connect(model="parley") as conn:
        await conn.session.update(session={"modalities": ["text"], "turn_detection": None})
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Say hello."}],
            }
        )
        await conn.response.create()
        kinds, text = [], ""
        async with asyncio.timeout(60):
            async for event in conn:
                kinds.append(event.type)
                if event.type == "response.text.delta":
                    text += event.delta
                elif event.type == "error":
                    pytest.fail(f"server error: {event.error}")
                elif event.type == "response.done":
                    done = event
                    break
    assert "conversation.item.created" in kinds  # beta's name for GA's item.added
    assert done.response.status == "completed"
    assert text.strip()
