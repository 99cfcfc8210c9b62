"""People, not synthesizers: recordings of read English by more than one speaker, with the
noise of their recordings (``tests.corpus.recordings``), through the ASR and through the real
server over a real socket."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from audio.pcm import pcm16_to_float32
from audio.resample import resample
from tests.corpus import normalize, word_errors
from tests.voice.rt_client import RATE, connect, pcm24k

LEAD_S, TAIL_S = 0.5, 1.2  # silence sent before and after a recording
STORY = "Please tell me a long story about a brave knight and a dragon."


@pytest.fixture
async def client(voice_server):
    async with connect(voice_server) as rt:
        yield rt


def test_whisper_transcribes_people(transcriber, recorded):
    errors = words = 0
    for r in recorded.values():
        e, n = word_errors(r.text, transcriber.transcribe(r.audio).text)
        assert e <= n / 2, r.name  # no recording is lost
        errors, words = errors + e, words + n
    # measured: 7 errors in 103 words (6.8 %): "clubs" heard as "close", "disposed" as "supposed"
    assert errors / words <= 0.15


async def test_a_recorded_sentence_is_one_turn_that_ends_where_the_speech_ends(
    voice_server, recorded
):
    """The labelled sentences, each in a session of its own sent as fast as the server takes it
    (its turn-taking runs on the audio clock), without replies: each is one turn with the right
    words, and the server's end of speech lies near the label's."""
    no_reply = {"type": "server_vad", "create_response": False}
    update = {"type": "realtime", "audio": {"input": {"turn_detection": no_reply}}}
    labelled = [r for r in recorded.values() if r.speech is not None]
    assert len(labelled) == 5
    for r in labelled:
        assert r.speech is not None
        async with connect(voice_server) as client:
            await client.send({"type": "session.update", "session": update})
            await client.wait_for("session.updated")
            lead = np.zeros(round(LEAD_S * 16_000), np.float32)
            await client.stream(pcm24k(np.concatenate([lead, r.audio])), realtime=False)
            await client.stream(bytes(round(TAIL_S * RATE) * 2), realtime=False)
            done = await client.wait_for(
                "conversation.item.input_audio_transcription.completed", timeout=30
            )
            await asyncio.sleep(0.2)  # a second turn, if any, would have started by now
            started = client.of("input_audio_buffer.speech_started")
            stopped = client.of("input_audio_buffer.speech_stopped")
            assert len(started) == len(stopped) == 1, (r.name, [e["type"] for e in client.events])
            errors, words = word_errors(r.text, done["transcript"])
            assert errors <= max(1, words // 6), (r.name, done["transcript"])
            start_s = started[0]["audio_start_ms"] / 1000 - LEAD_S
            end_s = stopped[0]["audio_end_ms"] / 1000 - LEAD_S
            assert abs(start_s - r.speech[0]) <= 0.15, (r.name, start_s, r.speech)
            assert abs(end_s - r.speech[1]) <= 0.15, (r.name, end_s, r.speech)
            assert not client.of("response.created")
            assert not client.of("error")


async def test_a_recorded_question_at_real_time_gets_a_spoken_answer(client, recorded, transcriber):
    """Four card names with pauses between them, at real time: one turn (the pauses do not end
    it), heard right, and a spoken reply."""
    r = recorded["cards-005"]
    await client.silence(0.3)
    await client.stream(pcm24k(r.audio))
    await client.silence(1.5)
    done = await client.wait_for("response.done", timeout=60)
    while done["response"]["status"] == "cancelled":  # a preemptive reply the caller resumed on
        done = await client.wait_for("response.done", after=client.events.index(done) + 1)
    committed = client.of("conversation.item.input_audio_transcription.completed")
    assert len(committed) == 1, [e["transcript"] for e in committed]
    errors, _ = word_errors(r.text, committed[0]["transcript"])
    assert errors <= 2, committed[0]["transcript"]  # "clubs" is often heard as "close"
    response = done["response"]
    assert response["status"] == "completed"
    audio = pcm16_to_float32(client.audio(response["id"]))
    assert normalize(transcriber.transcribe(resample(audio, RATE, 16_000)).text).split()


async def test_a_recorded_interjection_interrupts_the_assistant(client, recorded, synthesizer):
    client.start_mic()
    await client.say(pcm24k(synthesizer.synthesize(STORY, 16_000)))
    await client.wait_for("response.output_audio.delta", timeout=60)
    created = client.of("response.created")[0]["response"]["id"]
    await asyncio.sleep(1.0)
    mark = len(client.events)
    await client.say(pcm24k(recorded["goforward"].audio))
    done = await client.wait_for("response.done", timeout=30, after=mark)
    assert done["response"]["id"] == created
    assert done["response"]["status"] == "cancelled"
    kept = done["response"]["output"][0]["content"][0]["transcript"]
    assert kept.strip()
    heard = await client.wait_for(
        "conversation.item.input_audio_transcription.completed", timeout=30, after=mark
    )
    assert {"forward", "meters"} & set(normalize(heard["transcript"]).split())
