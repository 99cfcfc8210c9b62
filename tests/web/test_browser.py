"""The browser client end to end: a real headless Chromium whose microphone is a WAV file.

Chromium opens the page the server serves, its fake microphone speaks a Piper-generated
question, and the page must show the caller's words, the assistant's reply and the turn's
latency, and play the reply's audio (observed through ``window.parleyStats``). The server is
the real one with the real models (the ``voice_server`` fixture). Playwright drives the
system's Chromium: no browser download, no network.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from playwright.async_api import ConsoleMessage, Page, async_playwright

from audio.wav import write_wav
from tests.corpus import normalize
from voice.tts import Synthesizer, TtsConfig

QUESTION = "What is the capital of France?"
RATE = 16_000
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Generous bounds for a 2-core CPU running ASR, the LLM and TTS at once; the waits end as
# soon as the page reaches the state, so a fast machine does not wait for them.
CONNECT_MS = 30_000
TRANSCRIPT_MS = 90_000
PLAYBACK_MS = 120_000


def find_chromium() -> str | None:
    """``$PARLEY_CHROMIUM``, else the first Chromium or Chrome on ``PATH``."""
    if path := os.environ.get("PARLEY_CHROMIUM"):
        return path
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    return None


# Decided at collection, so a machine without a browser does not start the server for nothing.
pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium found (apt-get install chromium, or set PARLEY_CHROMIUM=/path/to/chrome)",
)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    assert path is not None
    return path


@pytest.fixture(scope="module")
def question_wav(model_dir, tmp_path_factory) -> Path:
    """The question in Piper's voice (noise off: the same audio every run) as 16 kHz WAV.

    Half a second of silence first, so no word falls before capture is running, and 2.5 s
    after it, so the server hears the end of the turn. Chromium plays it once (``%noloop``)
    and then feeds silence.
    """
    tts = Synthesizer(model_dir("piper-joe-medium"), TtsConfig(noise_scale=0, noise_w_scale=0))
    speech = tts.synthesize(QUESTION, RATE)
    audio = np.concatenate(
        [np.zeros(RATE // 2, np.float32), speech, np.zeros(5 * RATE // 2, np.float32)]
    )
    path = tmp_path_factory.mktemp("browser") / "question.wav"
    write_wav(path, audio, RATE)
    return path


@pytest.fixture
async def page(chromium: str, question_wav: Path) -> AsyncIterator[tuple[Page, list[str]]]:
    """A fresh page in headless Chromium with the WAV as its microphone; and its errors."""
    args = [
        "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={question_wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=args)
        try:
            context = await browser.new_context(permissions=["microphone"])
            page = await context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda err: problems.append(f"uncaught: {err}"))

            def on_console(msg: ConsoleMessage) -> None:
                if msg.type == "error":
                    problems.append(f"console: {msg.text}")

            page.on("console", on_console)
            yield page, problems
        finally:
            await browser.close()


async def wait_for(page: Page, condition: str, timeout_ms: int) -> None:
    """Wait until ``condition`` (a JS expression over ``s = window.parleyStats``) holds."""
    await page.wait_for_function(
        f"() => {{ const s = window.parleyStats; return Boolean(s && ({condition})); }}",
        timeout=timeout_ms,
        polling=100,
    )


async def stats(page: Page) -> dict:
    return await page.evaluate("() => JSON.parse(JSON.stringify(window.parleyStats))")


async def test_a_spoken_question_is_heard_answered_and_played(voice_server: str, page) -> None:
    page, problems = page
    await page.goto(voice_server + "/")
    await page.click("#start")
    await wait_for(page, "s.connected && s.state === 'listening'", CONNECT_MS)

    # The caller's words: transcribed by the server from audio the page captured and sent.
    await wait_for(page, "s.userTranscripts.length > 0", TRANSCRIPT_MS)
    s = await stats(page)
    heard = normalize(s["userTranscripts"][0]).split()
    assert {"capital", "france"} <= set(heard), s["userTranscripts"]
    assert "capital" in normalize(await page.inner_text("#transcript .turn.user"))

    # The reply: its transcript shown, its audio received and played out to the end.
    await wait_for(page, "s.turns > 0 && s.assistantTranscripts.length > 0", TRANSCRIPT_MS)
    await wait_for(
        page,
        "s.audioSamplesReceived > 0 && s.audioSamplesPlayed >= s.audioSamplesReceived - 240",
        PLAYBACK_MS,
    )
    s = await stats(page)
    assert s["assistantTranscripts"][0].strip(), "the assistant's transcript is empty"
    assert (await page.inner_text("#transcript .turn.assistant")).strip()
    assert s["audioSamplesReceived"] > 24_000 // 4, "under a quarter second of reply audio"
    assert s["flushes"] == 0, "playback was flushed, but nobody barged in"

    # The turn's latency figures: a row in the table, from response.parley.metrics.
    cells = await page.locator("#metrics tbody tr").first.locator("td").all_inner_texts()
    assert cells[:2] == ["1", "completed"], cells
    assert isinstance(s["lastMetrics"]["first_audio_ms"], int | float), s["lastMetrics"]
    assert abs(int(cells[6]) - s["lastMetrics"]["first_audio_ms"]) <= 1, cells  # shown rounded

    assert s["errors"] == [], s["errors"]
    assert problems == [], problems

    await page.click("#start")  # Stop
    await wait_for(page, "!s.connected && s.state === 'idle'", CONNECT_MS)
