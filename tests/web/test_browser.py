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
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import ConsoleMessage, Page, async_playwright

from audio.wav import write_wav
from tests.corpus import normalize
from tests.web import find_browser, firefox
from voice.tts import Synthesizer, TtsConfig

QUESTION = "What is the capital of France?"
STORY = "Please tell me a long story about a brave knight and a dragon."
INTERJECTION = "Stop, stop. Wait a moment please."
RATE = 16_000
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Generous bounds for a 2-core CPU running ASR, the LLM and TTS at once; the waits end as
# soon as the page reaches the state, so a fast machine does not wait for them.
CONNECT_MS = 30_000
TRANSCRIPT_MS = 90_000
PLAYBACK_MS = 120_000


def find_chromium() -> str | None:
    return find_browser("PARLEY_CHROMIUM", CHROMIUM_NAMES)


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
        value = await self.page.evaluate(f"async () => JSON.stringify(await ({expression}))")
        return None if value is None else json.loads(value)  # undefined: None


@pytest.fixture(scope="module")
def speech_wav(model_dir, tmp_path_factory) -> Callable[..., Path]:
    """Texts in Piper's voice (noise off: the same audio every run), one after the other with
    ``gap_s`` of silence between them, as a 16 kHz WAV file.

    Half a second of silence first, so no word falls before capture is running, and 2.5 s
    after the last, so the server hears the end of the turn. Chromium plays its file once
    (``%noloop``) and then feeds silence; PulseAudio's microphone is silent after it.
    """
    tts = Synthesizer(model_dir("piper-joe-medium"), TtsConfig(noise_scale=0, noise_w_scale=0))
    folder = tmp_path_factory.mktemp("browser")

    def make(*texts: str, gap_s: float = 2.5) -> Path:
        path = folder / f"{abs(hash((texts, gap_s)))}.wav"
        if not path.exists():
            parts = [np.zeros(RATE // 2, np.float32)]
            for i, text in enumerate(texts):
                gap = np.zeros(int(RATE * (2.5 if i == len(texts) - 1 else gap_s)), np.float32)
                parts += [tts.synthesize(text, RATE), gap]
            write_wav(path, np.concatenate(parts), RATE)
        return path

    return make


@contextlib.asynccontextmanager
async def open_browser(name: str, wav: Path) -> AsyncIterator[Browser]:
    """A fresh page in headless ``name`` whose microphone will say ``wav``."""
    if name == "firefox":
        async with firefox.firefox_page() as (bidi, pulse):
            yield Browser(bidi, lambda: pulse.speak(wav))
        return
    args = [
        "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",  # plays once capture starts
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


async def first_metrics_row(page: BrowserPage) -> list[str]:
    """The cells of the latency table's first turn."""
    cells = "#metrics tbody tr:first-child td"
    return await page.evaluate(f"[...document.querySelectorAll('{cells}')].map(td => td.innerText)")


@pytest.mark.parametrize("name", BROWSERS)
async def test_a_spoken_question_is_heard_answered_and_played(
    voice_server: str, speech_wav, name: str
) -> None:
    async with open_browser(name, speech_wav(QUESTION)) as browser:
        await ask_and_check_the_reply(voice_server, browser)


async def ask_and_check_the_reply(voice_server: str, browser: Browser) -> None:
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
    cells = await first_metrics_row(page)
    assert cells[:2] == ["1", "completed"], cells
    assert isinstance(s["lastMetrics"]["first_audio_ms"], int | float), s["lastMetrics"]
    assert abs(int(cells[6]) - s["lastMetrics"]["first_audio_ms"]) <= 1, cells  # shown rounded

    assert s["errors"] == [], s["errors"]
    assert page.problems == [], page.problems

    await speaking
    await page.click("#start")  # Stop
    await wait_for(page, "!s.connected && s.state === 'idle'", CONNECT_MS)


@pytest.mark.parametrize("name", BROWSERS[:1])
async def test_barge_in_stops_playback_and_tells_the_server_what_was_heard(
    voice_server: str, speech_wav, name: str
) -> None:
    """The caller asks for a story and cuts in two seconds after the question.

    Chromium only: in headless Firefox the echo canceller, which never finds an echo on the
    test's silent speaker, muted the caller while the assistant was audible in about half of
    the runs (with a loopback echo path too), so the server heard no interjection at all.
    """
    async with open_browser(name, speech_wav(STORY, INTERJECTION, gap_s=2.0)) as browser:
        page = browser.page
        await page.goto(voice_server + "/")
        await page.click("#start")
        await wait_for(page, "s.connected && s.state === 'listening'", CONNECT_MS)
        speaking = asyncio.create_task(browser.speak())
        await wait_for(page, "s.audioSamplesPlayed > 0", TRANSCRIPT_MS)  # the story began

        # The server decides it is a barge-in and cancels the story: the page drops its
        # playback at once and sends the server how much of the story the caller heard.
        await wait_for(page, "s.turns >= 1", TRANSCRIPT_MS)
        assert (await first_metrics_row(page))[:2] == ["1", "cancelled"], str(await stats(page))
        # Nothing more plays until a reply to the interjection sends new audio.
        cut = last = await stats(page)
        for _ in range(5):
            await asyncio.sleep(0.1)
            s = await stats(page)
            if s["audioSamplesReceived"] != cut["audioSamplesReceived"]:
                break
            last = s
        played = last["audioSamplesPlayed"] - cut["audioSamplesPlayed"]
        assert played < 24_000 // 10, f"{played} samples played after the cut"
        assert cut["truncatesSent"] >= 1, cut
        # the voice's onset paused playback before the decision (the page asked for it)
        assert cut["pauses"] >= 1, cut
        assert cut["lastMetrics"]["barge_in_stop_ms"] is not None, cut["lastMetrics"]
        classes = await page.evaluate(
            "[...document.querySelector('#transcript .turn.assistant').classList]"
        )
        assert "interrupted" in classes, classes

        # The interjection is the caller's next turn.
        await speaking
        await wait_for(page, "s.userTranscripts.length >= 2", TRANSCRIPT_MS)
        s = await stats(page)
        heard = set(normalize(" ".join(s["userTranscripts"][1:])).split())
        assert {"stop", "wait", "moment"} & heard, s["userTranscripts"]
        assert s["errors"] == [], s["errors"]
        assert page.problems == [], page.problems


@pytest.mark.parametrize("name", BROWSERS)
async def test_stop_while_starting_leaves_nothing_open(voice_app, speech_wav, name: str) -> None:
    """Start then Stop at once, at every moment of the start-up (microphone, audio, socket):
    no socket stays open on the server, and the page ends idle without errors."""
    from voice.realtime.handler import SESSIONS_KEY

    url, app = voice_app
    sessions = app[SESSIONS_KEY]
    async with open_browser(name, speech_wav(QUESTION)) as browser:
        page = browser.page
        await page.goto(url + "/")
        before = set(sessions)  # other tests' sessions may still be closing
        for delay_ms in range(0, 200, 10):
            await page.evaluate(
                "(async () => { const b = document.querySelector('#start'); b.click();"
                f" await new Promise(r => setTimeout(r, {delay_ms})); b.click(); }})()"
            )
            await wait_for(page, "s.state === 'idle'", CONNECT_MS)
        await asyncio.sleep(1.0)  # late sockets would be open by now
        s = await stats(page)
        left = set(sessions) - before
        assert not left, f"{len(left)} session(s) left open"
        assert not s["connected"], s
        assert s["errors"] == [], s["errors"]
        assert page.problems == [], page.problems


CONNECT_JS = """async (url, protocols) => {
  const ws = new WebSocket(url, protocols);
  return await new Promise((resolve) => {
    ws.onmessage = (e) => {
      resolve({opened: true, protocol: ws.protocol, event: JSON.parse(e.data)});
      ws.close();
    };
    ws.onclose = (e) => resolve({opened: false, code: e.code});
  });
}"""


@pytest.mark.skipif(find_chromium() is None, reason=NO_CHROMIUM)
async def test_browser_clients_connect_with_openais_subprotocols_and_key(
    voice_app, speech_wav
) -> None:
    """OpenAI's browser clients open the Realtime socket offering the subprotocols "realtime",
    "openai-insecure-api-key.<key>" and, for beta events, "openai-beta.realtime-v1". A browser
    fails the handshake unless the server picks one it offered: Parley picks "realtime" and
    speaks the dialect asked for. With ``[server] api_key`` set, that key admits the socket
    and no other does; Parley's own page, opened as ``/#key=<key>``, sends it."""
    from voice.config import ServerConfig
    from voice.realtime.handler import VOICE_KEY
    from voice.server import build_app

    url, app = voice_app
    keyed = TestServer(build_app(None, ServerConfig(api_key="k3y"), voice=app[VOICE_KEY]))
    await keyed.start_server()
    keyed_url = f"ws://127.0.0.1:{keyed.port}/v1/realtime"
    beta = ["realtime", "openai-insecure-api-key.k3y", "openai-beta.realtime-v1"]
    try:
        async with open_browser("chromium", speech_wav(QUESTION)) as browser:
            page = browser.page
            await page.goto(url + "/")  # a page of the server's own origin
            ws_url = url.replace("http", "ws", 1) + "/v1/realtime"
            for target, protocols, dialect_key in [
                (ws_url, beta, "input_audio_format"),  # the key is not checked here
                (ws_url, ["realtime"], "audio"),  # GA: audio settings nested
                (keyed_url, beta, "input_audio_format"),
                (keyed_url, ["realtime", "openai-insecure-api-key.k3y"], "audio"),
            ]:
                got = await page.evaluate(
                    f"({CONNECT_JS})({json.dumps(target)}, {json.dumps(protocols)})"
                )
                assert got["opened"], (target, protocols, got)
                assert got["protocol"] == "realtime"
                assert got["event"]["type"] == "session.created"
                assert dialect_key in got["event"]["session"]
            for protocols in (["realtime", "openai-insecure-api-key.nope"], ["realtime"]):
                got = await page.evaluate(
                    f"({CONNECT_JS})({json.dumps(keyed_url)}, {json.dumps(protocols)})"
                )
                assert not got["opened"]
            keyed_page = f"http://127.0.0.1:{keyed.port}/"
            await page.goto(keyed_page)  # no key: the page says it cannot connect
            await page.click("#start")
            await wait_for(page, "s.errors.length > 0 && !s.connected", CONNECT_MS)
            assert "/#key=" in (await stats(page))["errors"][0]
            await page.goto("about:blank")  # a new fragment alone would not load the page again
            await page.goto(keyed_page + "#key=k3y")
            await page.click("#start")
            await wait_for(page, "s.connected && s.state === 'listening'", CONNECT_MS)
            await page.click("#start")  # Stop
            await wait_for(page, "!s.connected && s.state === 'idle'", CONNECT_MS)
            assert (await stats(page))["errors"] == []
    finally:
        await keyed.close()
