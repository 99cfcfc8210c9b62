"""TTS with the packaged Piper voice: streaming, rates, and what it says."""

from __future__ import annotations

import numpy as np
import pytest

from audio.resample import resample
from tests.corpus import word_errors
from voice.asr import SAMPLE_RATE
from voice.tts import Synthesizer, TtsConfig


def test_streams_a_chunk_per_sentence(synthesizer):
    chunks = list(synthesizer.stream("First sentence here. And a second one. A third."))
    assert len(chunks) >= 3
    assert all(c.dtype == np.float32 and c.ndim == 1 and len(c) > 0 for c in chunks)


def test_streamed_rate_conversion_equals_one_shot(model_dir):
    # Piper's noise makes every synthesis differ; without it the voice is deterministic.
    quiet = Synthesizer(model_dir("piper-joe-medium"), TtsConfig(noise_scale=0, noise_w_scale=0))
    text = "One. Two three. Four five six."
    native = quiet.synthesize(text)
    streamed = quiet.synthesize(text, 24_000)
    one_shot = resample(native, quiet.sample_rate, 24_000)
    assert quiet.sample_rate == 22_050
    assert len(streamed) == len(one_shot)
    assert np.max(np.abs(streamed - one_shot)) < 1e-4


def test_speech_is_audible_and_intelligible(synthesizer, transcriber):
    audio = synthesizer.synthesize("Good morning, how can I help you?", SAMPLE_RATE)
    assert 0.05 < np.max(np.abs(audio)) <= 1.0
    errors, words = word_errors(
        "good morning how can i help you", transcriber.transcribe(audio).text
    )
    assert errors / words <= 0.15


def test_unsupported_rate_is_a_clear_error(synthesizer):
    with pytest.raises(ValueError, match="supported rates"):
        list(synthesizer.stream("Hello.", 11_025))


def test_empty_text_yields_no_audio(synthesizer):
    assert len(synthesizer.synthesize("")) == 0


async def test_worker_serves_a_first_chunk_before_queued_later_ones_and_beside_a_running_one(
    synthesizer,
):
    import asyncio

    from voice.responder import TtsWorker

    worker = TtsWorker(synthesizer)
    finished: list[str] = []

    async def say(name: str, first: bool = False) -> None:
        audio = await worker.synthesize(f"This is sentence {name}.", 24000, first=first)
        assert len(audio) > 0
        finished.append(name)

    running = asyncio.create_task(say("one"))  # starts at once
    await asyncio.sleep(0)
    later = [asyncio.create_task(say(n)) for n in ("two", "three", "four")]
    await asyncio.sleep(0)
    assert worker.running == 1  # later chunks run one at a time
    later[1].cancel()  # "three" leaves the queue: it never runs
    first = asyncio.create_task(say("five", first=True))
    await asyncio.sleep(0)
    assert worker.running == 2  # the first chunk starts beside "one", not after it
    await asyncio.gather(running, first, later[0], later[2])
    with pytest.raises(asyncio.CancelledError):
        await later[1]
    assert sorted(finished[:2]) == ["five", "one"] and finished[2:] == ["two", "four"]
    worker.close()


async def test_worker_synthesizes_first_chunks_on_the_first_voice_inside_the_pause(
    synthesizer, model_dir
):
    import contextlib

    from voice.responder import FIRST_PAUSE_S, TtsWorker
    from voice.tts import Synthesizer

    fast = Synthesizer(model_dir("piper-joe-medium"), threads=2)
    spoken: list[tuple[str, bool]] = []  # (which voice, inside the pause)
    paused: list[float] = []
    for name, voice in (("main", synthesizer), ("first", fast)):
        original = voice.synthesize

        def spy(text: str, rate: int, name: str = name, original=original):
            spoken.append((name, bool(paused)))
            return original(text, rate)

        voice.synthesize = spy  # type: ignore[method-assign]

    @contextlib.contextmanager
    def pause(max_s: float):
        paused.append(max_s)
        try:
            yield
        finally:
            paused.pop()

    worker = TtsWorker(synthesizer, fast, pause)
    try:
        first = await worker.synthesize("Hello there.", 24000, first=True)
        later = await worker.synthesize("How are you today?", 24000)
    finally:
        worker.close()
        del synthesizer.synthesize  # the session-wide fixture gets its own method back
    assert len(first) > 0 and len(later) > 0
    assert spoken == [("first", True), ("main", False)]
    assert not paused and FIRST_PAUSE_S > 0
