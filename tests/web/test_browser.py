"""The browser client end to end, in headless Chromium and headless Firefox.

The page the server serves hears a Piper-generated question through the browser's microphone,
and must show the caller's words, the assistant's reply and the turn's latency, and play the
reply's audio (observed through ``window.parleyStats``). The server is the real one with the
real models (the ``voice_server`` fixture). Chromium's microphone is the WAV file itself
(Playwright drives the system's Chromium: no browser download, no network); Firefox's is a
private PulseAudio source the test plays the WAV into (see :mod:`tests.web.firefox`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytest
from playwright.async_api import ConsoleMessage, Page, async_playwright

from audio.wav import write_wav
from tests.corpus import normalize
from tests.web import firefox
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
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


NO_CHROMIUM = "no Chromium found (apt-get install chromium, or set PARLEY_CHROMIUM=/path/to/chrome)"
# Decided at collection, so a machine without a browser does not start the server for nothing.
BROWSERS = [
    pytest.param("chromium", marks=pytest.mark.skipif(find_chromium() is None, reason=NO_CHROMIUM)),
    pytest.param(
        "firefox", marks=pytest.mark.skipif(bool(firefox.missing()), reason=str(firefox.missing()))
    ),
]


class BrowserPage(Protocol):
    """What the test does with a page, in either browser."""

    problems: list[str]  # uncaught exceptions and console errors

    async def goto(self, url: str) -> None: ...
    async def click(self, selector: str) -> None: ...
    async def evaluate(self, expression: str) -> Any: ...  # a JSON-able JS value


@dataclass
class Browser:
    page: BrowserPage
    speak: Callable[[], Awaitable[None]]  # the question into the microphone (once listening)


class ChromiumPage:
    """A Playwright page as a :class:`BrowserPage`."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("pageerror", lambda err: self.problems.append(f"uncaught: {err}"))
        page.on("console", self._console)

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.problems.append(f"console: {msg.text}")

    async def goto(self, url: str) -> None:
        await self.page.goto(url)

    async def click(self, selector: str) -> None:
        await self.page.click(selector)

    async def evaluate(self, expression: str) -> Any:
        return json.loads(
            await self.page.evaluate(f"async () => JSON.stringify(await ({expression}))")
        )


@pytest.fixture(scope="module")
def question_wav(model_dir, tmp_path_factory) -> Path:
    """The question in Piper's voice (noise off: the same audio every run) as 16 kHz WAV.

    Half a second of silence first, so no word falls before capture is running, and 2.5 s
    after it, so the server hears the end of the turn. Chromium plays it once (``%noloop``)
    and then feeds silence; PulseAudio's microphone is silent before and after it.
    """
    tts = Synthesizer(model_dir("piper-joe-medium"), TtsConfig(noise_scale=0, noise_w_scale=0))
    speech = tts.synthesize(QUESTION, RATE)
    audio = np.concatenate(
        [np.zeros(RATE // 2, np.float32), speech, np.zeros(5 * RATE // 2, np.float32)]
    )
    path = tmp_path_factory.mktemp("browser") / "question.wav"
    write_wav(path, audio, RATE)
    return path


@pytest.fixture(params=BROWSERS)
async def browser(request, question_wav: Path) -> AsyncIterator[Browser]:
    """A fresh page in the headless browser, whose microphone will say the question."""
    if request.param == "firefox":
        async with firefox.firefox_page() as (bidi, pulse):
            yield Browser(bidi, lambda: pulse.speak(question_wav))
        return
    args = [
        "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={question_wav}%noloop",  # plays once capture starts
        "--autoplay-policy=no-user-gesture-required",
    ]
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=find_chromium(), args=args)
        try:
            context = await chromium.new_context(permissions=["microphone"])
            yield Browser(ChromiumPage(await context.new_page()), already_speaking)
        finally:
            await chromium.close()


async def already_speaking() -> None:
    """Chromium's fake microphone plays the WAV by itself from when capture starts."""


async def wait_for(page: BrowserPage, condition: str, timeout_ms: int) -> None:
    """Wait until ``condition`` (a JS expression over ``s = window.parleyStats``) holds."""
    check = f"(() => {{ const s = window.parleyStats; return Boolean(s && ({condition})); }})()"
    try:
        async with asyncio.timeout(timeout_ms / 1000):
            while not await page.evaluate(check):
                await asyncio.sleep(0.1)
    except TimeoutError:
        state = await stats(page)
        pytest.fail(
            f"not within {timeout_ms} ms: {condition}; parleyStats {state}; {page.problems}"
        )


async def stats(page: BrowserPage) -> dict:
    return await page.evaluate("window.parleyStats")


async def inner_text(page: BrowserPage, selector: str) -> str:
    return await page.evaluate(f"document.querySelector({json.dumps(selector)}).innerText")


async def test_a_spoken_question_is_heard_answered_and_played(
    voice_server: str, browser: Browser
) -> None:
    page = browser.page
    await page.goto(voice_server + "/")
    await page.click("#start")
    await wait_for(page, "s.connected && s.state === 'listening'", CONNECT_MS)
    speaking = asyncio.create_task(browser.speak())

    # The caller's words: transcribed by the server from audio the page captured and sent.
    await wait_for(page, "s.userTranscripts.length > 0", TRANSCRIPT_MS)
    s = await stats(page)
    heard = normalize(s["userTranscripts"][0]).split()
    assert {"capital", "france"} <= set(heard), s["userTranscripts"]
    assert "capital" in normalize(await inner_text(page, "#transcript .turn.user"))

    # The reply: its transcript shown, its audio received and played out to the end.
    await wait_for(page, "s.turns > 0 && s.assistantTranscripts.length > 0", TRANSCRIPT_MS)
    await wait_for(
        page,
        "s.audioSamplesReceived > 0 && s.audioSamplesPlayed >= s.audioSamplesReceived - 240",
        PLAYBACK_MS,
    )
    s = await stats(page)
    assert s["assistantTranscripts"][0].strip(), "the assistant's transcript is empty"
    assert (await inner_text(page, "#transcript .turn.assistant")).strip()
    assert s["audioSamplesReceived"] > 24_000 // 4, "under a quarter second of reply audio"
    assert s["flushes"] == 0, "playback was flushed, but nobody barged in"

    # The turn's latency figures: a row in the table, from response.parley.metrics.
    cells = await page.evaluate(
        "[...document.querySelectorAll('#metrics tbody tr:first-child td')].map(td => td.innerText)"
    )
    assert cells[:2] == ["1", "completed"], cells
    assert isinstance(s["lastMetrics"]["first_audio_ms"], int | float), s["lastMetrics"]
    assert abs(int(cells[6]) - s["lastMetrics"]["first_audio_ms"]) <= 1, cells  # shown rounded

    assert s["errors"] == [], s["errors"]
    assert page.problems == [], page.problems

    await speaking
    await page.click("#start")  # Stop
    await wait_for(page, "!s.connected && s.state === 'idle'", CONNECT_MS)
