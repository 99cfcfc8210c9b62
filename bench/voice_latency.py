"""Voice latency benchmark: a caller talking to Parley over ``/v1/realtime``, timed client side.

Run (from the repository root, on a quiet machine: figures on a busy one are several times
worse, see DESIGN.md):

    .venv/bin/python bench/voice_latency.py                  # sessions 1,4,8, 16 turns each
    .venv/bin/python bench/voice_latency.py --quick          # sessions 1,4, 3 turns (~3 min)
    .venv/bin/python bench/voice_latency.py --url http://127.0.0.1:8000   # a running server
    .venv/bin/python bench/voice_latency.py --barge-in onset # the other barge-in policy
    .venv/bin/python bench/voice_latency.py --speech recorded # people instead of Piper

Without ``--url`` the real server (default models, ``configs/default.toml``, replies capped at
``--reply-tokens``) runs in this process, in a thread with its own event loop; the client shares
the process (and the GIL) with it. With ``--url`` the server's own config applies (start it
with a short ``session.max_reply_tokens``, or turns last as long as its replies).

Each session is one caller with a live microphone: 24 kHz PCM16 streamed at real time in 20 ms
appends, silence between utterances, as a real client sends it. The speech is Piper's (noise off,
so every run hears the same audio), or with ``--speech recorded`` people's: the recordings of
``tests.corpus.recordings`` (read sentences and card names, 1-7 s, with their background noise;
"go forward ten meters" interrupts). Per session, turns alternate over a few short utterances;
every fourth turn (from the third) asks for a story and, one second into its audio, interrupts it.
Each reply is heard to its end (its audio length after its first delta) plus a short gap. The
interjection's own reply is heard out too but not counted (its turn began over the assistant).
Where the server split a turn at a pause (the caller went on after it), every reply up to the one
that completes is heard out, so none spills into the next turn.

Measured, per turn (client clock, monotonic):
  - end of speech -> first audio: from sending the 20 ms append that holds the utterance's last
    speech sample (see ``speech_bounds``; a recording's label where it has one) to receiving
    the reply's first ``response.output_audio.delta``; a turn whose reply audio began before
    that (a reply to part of it: the assistant talked over the caller) is counted as "early",
    not timed;
  - the server's stages (``response.parley.metrics``, ms after the end of speech as it saw it),
    as medians, and for the slowest few turns each (what held them up);
  - barge-in, from sending the interjection's first speech sample: to receiving
    ``parley.output_audio.paused`` for the interrupted response (the client asks for it, as
    the page does), "paused": the server stopped sending its audio and told the player to
    pause, while it tells a barge-in from a backchannel; to receiving its ``response.done``
    (status cancelled), "stopped (done)", the barge-in decided and the reply cancelled; to the
    last audio delta of that response received after the onset, "last audio (>=)" (a lower
    bound: the server may have had nothing to send for a while before it stopped); to the
    barge-in decision (the interjection's ``input_audio_buffer.speech_started``, which the
    server sends just before it cancels), and from the decision to "stopped"; beside the
    server's own ``barge_in_stop_ms`` and ``barge_in_decision_ms`` (from the speech onset its
    VAD found, which lags the first speech sample).
The same scenario runs with 1, 4, 8 concurrent sessions (staggered starts). In-process only, the
one-session scenario also runs on a second server with ``hold_first_audio_s`` = ``--hold`` (the
reply always waits for the end of turn to be confirmed) beside the default: one after
the other, so on a noisy machine their ratio carries the noise of both runs.
No asserts: these are figures to read, against the targets printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audio.pcm import float32_to_pcm16
from audio.resample import resample
from tests.corpus import recordings
from voice import assets
from voice.config import ParleyConfig, load_config
from voice.server import ModelDirs, serve_in_thread
from voice.tts import Synthesizer, TtsConfig

RATE = 24_000  # the Realtime API's default input: PCM16 mono at 24 kHz
CHUNK = RATE // 50  # 20 ms appends
SPEECH_LEVEL = 0.005  # |sample| above this may be speech (about -46 dBFS; Piper's pauses are ~0)
NOISE_MARGIN = 10.0  # ... in a block 20 dB above the recording's noise floor
QUESTIONS = (
    "What is the capital of France?",
    "How many days are in a week?",
    "Who wrote Romeo and Juliet?",
    "What color is the sky?",
    "How do I boil an egg?",
    "Can you recommend a good book?",
)
STORY = "Please tell me a long story about a brave knight and a dragon."
INTERJECTION = "Stop, wait a moment please."
RECORDED_INTERJECTION = "goforward"
BARGE_EVERY, BARGE_FIRST = 4, 2  # turns 2, 6, 10, ... ask for the story and interrupt it
HEAR_S = 1.0  # the caller hears this much of the story before interrupting
GAP_S = 0.6  # silence after a reply ends before the next question
STAGGER_S = 1.0  # session k starts k * STAGGER_S after the first
TIMEOUT_S = 120.0  # for any one awaited event
SLOWEST = 3  # turns listed per concurrency level, with their stages
STAGES = ("end_of_turn_ms", "asr_final_ms", "first_token_ms", "first_chunk_ms", "first_audio_ms")
TARGET_P50_MS, TARGET_P95_MS, TARGET_BARGE_P95_MS, TARGET_RATIO_4 = 400.0, 600.0, 150.0, 1.5


# -- speech to send -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Utterance:
    text: str
    pcm: bytes  # 24 kHz PCM16
    onset: int  # sample index of the first speech sample
    end: int  # sample index of the last speech sample


@dataclass(frozen=True, slots=True)
class Script:
    """What every caller says: questions in turn, and a story request it interrupts."""

    questions: list[Utterance]
    story: Utterance
    interjection: Utterance


def speech_bounds(audio: np.ndarray) -> tuple[int, int]:
    """The first and last speech sample: louder than ``SPEECH_LEVEL`` and ``NOISE_MARGIN``
    times the noise floor (the 10th percentile RMS of 10 ms blocks: ~0 for Piper, -41 to -63
    dBFS for the recordings); the first also in a block that loud, so a click or a breath
    before the words is not their onset. On the labelled recordings the end lies 20-60 ms
    before the label's (one soft ending 200 ms), so unlabelled ones read a little slow."""
    block = RATE // 100
    n = len(audio) // block
    audio = audio[: n * block]
    rms = np.sqrt(np.mean(np.square(audio.reshape(n, block)), axis=1))
    level = max(SPEECH_LEVEL, NOISE_MARGIN * float(np.percentile(rms, 10)))
    loud = np.abs(audio) > level
    voiced = loud & np.repeat(rms > level, block)
    assert voiced.any(), "the audio holds no speech"
    return int(np.argmax(voiced)), int(np.flatnonzero(loud)[-1])


def utterance(text: str, audio: np.ndarray, bounds_s: tuple[float, float] | None) -> Utterance:
    """``audio`` at ``RATE``; its speech from ``bounds_s`` (seconds) if given, else measured."""
    if bounds_s is None:
        onset, end = speech_bounds(audio)
    else:
        onset, end = (min(round(t * RATE), len(audio) - 1) for t in bounds_s)
    return Utterance(text, float32_to_pcm16(audio), onset, end)


def piper_voice(tts_dir: Path) -> Callable[[str], Utterance]:
    """Piper without its noise: every run hears the same audio."""
    synth = Synthesizer(tts_dir, TtsConfig(noise_scale=0, noise_w_scale=0))
    return lambda text: utterance(text, synth.synthesize(text, RATE), None)


def piper_script(tts_dir: Path) -> Script:
    say = piper_voice(tts_dir)
    return Script([say(q) for q in QUESTIONS], say(STORY), say(INTERJECTION))


def recorded_script(tts_dir: Path, cache_dir: Path) -> Script:
    """People's recordings as the questions and the interjection; Piper still asks for the
    story (a recording that asks for a long reply is not to be had)."""
    spoken = {
        r.name: utterance(r.text, resample(r.audio, 16_000, RATE), r.speech)
        for r in recordings(cache_dir)
    }
    interjection = spoken.pop(RECORDED_INTERJECTION)
    return Script(list(spoken.values()), piper_voice(tts_dir)(STORY), interjection)


# -- the client -----------------------------------------------------------------------------
class Connection:
    """A Realtime WebSocket: sends events, records every received one with its arrival time
    (``_t``, monotonic) in ``events``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._new = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                event = json.loads(msg.data)
                event["_t"] = time.monotonic()
                async with self._new:
                    self.events.append(event)
                    self._new.notify_all()

    async def append(self, pcm: bytes) -> None:
        audio = base64.b64encode(pcm).decode()
        await self.ws.send_str(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))

    async def wait_for(
        self, match: Callable[[dict[str, Any]], bool], after: int = 0
    ) -> dict[str, Any]:
        """The first event at index >= ``after`` that ``match``es (TimeoutError after a while)."""

        def found() -> dict[str, Any] | None:
            return next((e for e in self.events[after:] if match(e)), None)

        async with asyncio.timeout(TIMEOUT_S), self._new:
            await self._new.wait_for(lambda: found() is not None)
        event = found()
        assert event is not None
        return event

    def deltas(self, response_id: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e["type"] == "response.output_audio.delta" and e["response_id"] == response_id
        ]

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()


def of_type(kind: str, response_id: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def match(e: dict[str, Any]) -> bool:
        rid = e.get("response_id") or e.get("response", {}).get("id")
        return bool(e["type"] == kind and (response_id is None or rid == response_id))

    return match


@dataclass(slots=True)
class Spoken:
    """When an utterance's first and last speech samples were sent (monotonic)."""

    utterance: Utterance
    onset_at: float = 0.0
    end_at: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class LiveMic:
    """A microphone that never stops: 20 ms of audio per append at real time, silence when
    nobody speaks. Each append leaves when its last sample is captured, as from a sound card."""

    def __init__(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        self._send = send
        self._queue: asyncio.Queue[Spoken] = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def say(self, utterance: Utterance) -> Spoken:
        """Speak ``utterance``; returns once its last sample was sent."""
        spoken = Spoken(utterance)
        self._queue.put_nowait(spoken)
        await spoken.done.wait()
        return spoken

    async def _run(self) -> None:
        start, sent = time.monotonic(), 0
        current, pos = None, 0
        while True:
            if current is None and not self._queue.empty():
                current, pos = self._queue.get_nowait(), 0
            await asyncio.sleep(max(0.0, start + (sent + CHUNK) / RATE - time.monotonic()))
            if current is None:
                await self._send(bytes(2 * CHUNK))
            else:
                await self._send(current.utterance.pcm[2 * pos : 2 * (pos + CHUNK)])
                self._mark(current, pos, time.monotonic())
                pos += CHUNK
                if 2 * pos >= len(current.utterance.pcm):
                    current.done.set()
                    current = None
            sent += CHUNK

    @staticmethod
    def _mark(spoken: Spoken, pos: int, now: float) -> None:
        if pos <= spoken.utterance.onset < pos + CHUNK:
            spoken.onset_at = now
        if pos <= spoken.utterance.end < pos + CHUNK:
            spoken.end_at = now

    def close(self) -> None:
        self._task.cancel()


# -- one caller -----------------------------------------------------------------------------
@dataclass(slots=True)
class Barge:
    paused_ms: float | None  # onset -> parley.output_audio.paused of the interrupted response
    stopped_ms: float  # onset -> the interrupted response's response.done
    last_audio_ms: float | None  # onset -> its last audio delta (None: none after the onset)
    decision_ms: float | None  # onset -> the interjection's speech_started
    server_ms: float | None  # the server's barge_in_stop_ms
    server_decision_ms: float | None  # the server's barge_in_decision_ms


@dataclass(slots=True)
class Results:
    first_audio_ms: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    barges: list[Barge] = field(default_factory=list)
    missed_barges: int = 0  # the story ended (or was not interrupted) before the interjection
    failed_turns: int = 0  # no reply, or a reply without audio
    early_turns: int = 0  # the reply's audio started before the caller finished (not timed)
    # each timed turn: (client first audio ms, what the caller said, the server's stages)
    turns: list[tuple[float, str, dict[str, float | None]]] = field(default_factory=list)

    def merge(self, other: Results) -> None:
        self.first_audio_ms += other.first_audio_ms
        self.turns += other.turns
        for stage, values in other.stages.items():
            self.stages[stage] += values
        self.barges += other.barges
        self.missed_barges += other.missed_barges
        self.failed_turns += other.failed_turns
        self.early_turns += other.early_turns


@dataclass(slots=True)
class Caller:
    conn: Connection
    mic: LiveMic
    results: Results = field(default_factory=Results)

    async def ask(self, utterance: Utterance) -> int | None:
        """Say ``utterance`` and time its reply's first audio; returns the index of the events
        from which its replies are (None: no audio came)."""
        mark = len(self.conn.events)
        spoken = await self.mic.say(utterance)
        first = await self.conn.wait_for(
            lambda e: e["type"] in ("response.output_audio.delta", "response.done"), mark
        )
        if first["type"] == "response.done":
            self.results.failed_turns += 1
            return None
        if first["_t"] < spoken.end_at:  # a reply to part of the question: it talked over
            self.results.early_turns += 1
        else:
            self.results.first_audio_ms.append(1000 * (first["_t"] - spoken.end_at))
        return mark

    async def hear_out(self, mark: int, skip: str | None = None) -> dict[str, Any]:
        """Hear every reply from event ``mark`` on (but ``skip``) until one completes, each to
        the end of its audio as a client plays it (from its first delta, at real time): a turn
        the server split in two (the caller paused, then went on) has a cancelled reply, then
        the one that counts. Returns the completed one's ``response.done``."""
        while True:
            done = await self.conn.wait_for(
                lambda e: of_type("response.done")(e) and e["response"]["id"] != skip, mark
            )
            mark = self.conn.events.index(done) + 1
            deltas = self.conn.deltas(done["response"]["id"])
            audio_s = sum(len(e["delta"]) * 3 // 4 for e in deltas) / 2 / RATE
            if deltas:
                await asyncio.sleep(max(0.0, deltas[0]["_t"] + audio_s - time.monotonic()))
            if done["response"]["status"] != "cancelled":
                await asyncio.sleep(GAP_S)
                return done

    def record_stages(self, done: dict[str, Any], utterance: Utterance, timed: int) -> None:
        """The reply's server stages; with the turn's client figure when ``ask`` timed it
        (``timed``: the number of timed turns before it)."""
        metrics = done["response"].get("parley", {}).get("metrics", {})
        for stage in STAGES:
            if metrics.get(stage) is not None:
                self.results.stages[stage].append(metrics[stage])
        if len(self.results.first_audio_ms) > timed:
            stages = {stage: metrics.get(stage) for stage in STAGES}
            self.results.turns.append((self.results.first_audio_ms[-1], utterance.text, stages))

    async def question(self, utterance: Utterance) -> None:
        timed = len(self.results.first_audio_ms)
        mark = await self.ask(utterance)
        if mark is not None:
            self.record_stages(await self.hear_out(mark), utterance, timed)

    async def barge_in(self, story: Utterance, interjection: Utterance) -> None:
        timed = len(self.results.first_audio_ms)
        mark = await self.ask(story)
        if mark is None:
            return
        first = await self.conn.wait_for(of_type("response.output_audio.delta"), mark)
        response_id = first["response_id"]
        await asyncio.sleep(HEAR_S)
        mark = len(self.conn.events)
        spoken = await self.mic.say(interjection)
        done = await self.conn.wait_for(of_type("response.done", response_id))
        self.record_stages(done, story, timed)
        if done["response"]["status"] != "cancelled":
            self.results.missed_barges += 1
        else:
            self.results.barges.append(self._barge(done, spoken, mark))
        await self.hear_out(mark, skip=response_id)  # the interjection is the next turn

    def _barge(self, done: dict[str, Any], spoken: Spoken, mark: int) -> Barge:
        onset = spoken.onset_at
        late = [e["_t"] for e in self.conn.deltas(done["response"]["id"]) if e["_t"] >= onset]
        started = [
            e["_t"]
            for e in self.conn.events[mark:]
            if e["type"] == "input_audio_buffer.speech_started"
        ]
        rid = done["response"]["id"]
        paused = [
            e["_t"]
            for e in self.conn.events[mark:]
            if of_type("parley.output_audio.paused", rid)(e) and e["_t"] >= onset
        ]
        metrics = done["response"].get("parley", {}).get("metrics", {})
        return Barge(
            paused_ms=1000 * (paused[0] - onset) if paused else None,
            stopped_ms=1000 * (done["_t"] - onset),
            last_audio_ms=1000 * (late[-1] - onset) if late else None,
            decision_ms=1000 * (started[0] - onset) if started else None,
            server_ms=metrics.get("barge_in_stop_ms"),
            server_decision_ms=metrics.get("barge_in_decision_ms"),
        )


async def run_caller(url: str, speech: Script, turns: int, offset: int, delay: float) -> Results:
    """One session: ``turns`` turns, questions rotated by ``offset``, starting after ``delay``."""
    await asyncio.sleep(delay)
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/v1/realtime") as ws:
        conn = Connection(ws)
        await conn.wait_for(of_type("session.created"))
        # a player that pauses when the caller talks over it, as the page's
        update = {"type": "session.update", "session": {"parley": {"pause_playback": True}}}
        await ws.send_str(json.dumps(update))
        await conn.wait_for(of_type("session.updated"))
        caller = Caller(conn, LiveMic(conn.append))
        try:
            await asyncio.sleep(0.5)
            for turn in range(turns):
                await play_turn(caller, speech, turn, offset)
        finally:
            caller.mic.close()
            await conn.close()
    return caller.results


async def play_turn(caller: Caller, speech: Script, turn: int, offset: int) -> None:
    try:
        if turn % BARGE_EVERY == BARGE_FIRST:
            await caller.barge_in(speech.story, speech.interjection)
        else:
            await caller.question(speech.questions[(turn + offset) % len(speech.questions)])
    except TimeoutError:
        caller.results.failed_turns += 1
        await asyncio.sleep(GAP_S)


async def run_sessions(url: str, speech: Script, sessions: int, turns: int) -> Results:
    runs = [run_caller(url, speech, turns, k, k * STAGGER_S) for k in range(sessions)]
    total = Results()
    for results in await asyncio.gather(*runs):
        total.merge(results)
    return total


# -- the server -----------------------------------------------------------------------------
def model_dirs(config: ParleyConfig) -> ModelDirs:
    registry = assets.load_registry(config.registry)
    cache = config.cache_dir or assets.default_cache_dir()
    return ModelDirs.for_config(config, lambda name: assets.ensure(registry[name], cache))


# -- report ---------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summary(values: list[float]) -> str:
    if not values:
        return f"{'-':>5} {'-':>7} {'-':>7} {'-':>7}"
    figures = (statistics.fmean(values), pct(values, 50), pct(values, 95))
    return f"{len(values):5d} " + " ".join(f"{round(x):7d}" for x in figures)  # no "-0"


def print_latency(by_sessions: dict[int, Results]) -> None:
    print("\n## end of speech -> first audio (client, ms)")
    print("sessions     n    mean     p50     p95  p50 vs 1  failed  early")
    base = pct(by_sessions[min(by_sessions)].first_audio_ms, 50)
    for n, r in by_sessions.items():
        ratio = pct(r.first_audio_ms, 50) / base
        counts = f"{r.failed_turns:6d} {r.early_turns:6d}"
        print(f"{n:8d} {summary(r.first_audio_ms)}  {ratio:7.2f}x  {counts}")
    print("\n## server stages, p50 (ms after the end of speech as the server saw it)")
    print("sessions  " + "  ".join(f"{s.removesuffix('_ms'):>12}" for s in STAGES))
    for n, r in by_sessions.items():
        print(f"{n:8d}  " + "  ".join(f"{pct(r.stages[s], 50):12.0f}" for s in STAGES))
    print("\n## the slowest turns (client ms; the server's stages, ms)")
    print("sessions  client  " + "  ".join(f"{s.removesuffix('_ms'):>12}" for s in STAGES))
    for n, r in by_sessions.items():
        for client_ms, text, stages in sorted(r.turns, key=lambda t: t[0])[-SLOWEST:]:
            cells = "  ".join(f"{'-' if v is None else f'{v:.0f}':>12}" for v in stages.values())
            print(f"{n:8d}  {client_ms:6.0f}  {cells}  {text[:30]!r}")


def print_barge_in(by_sessions: dict[int, Results]) -> None:
    print("\n## barge-in (ms after the interjection's first speech sample was sent)")
    print("sessions  measure                        n    mean     p50     p95")
    for n, r in by_sessions.items():
        rows: dict[str, list[float | None]] = {
            "onset -> paused": [b.paused_ms for b in r.barges],
            "onset -> stopped (done)": [b.stopped_ms for b in r.barges],
            "onset -> last audio (>=)": [b.last_audio_ms for b in r.barges],
            "onset -> decision": [b.decision_ms for b in r.barges],
            "decision -> stopped": [
                b.stopped_ms - b.decision_ms for b in r.barges if b.decision_ms is not None
            ],
            "server barge_in_stop_ms": [b.server_ms for b in r.barges],
            "server barge_in_decision_ms": [b.server_decision_ms for b in r.barges],
        }
        for label, values in rows.items():
            kept = [v for v in values if v is not None]
            print(f"{n:8d}  {label:28s} {summary(kept)}")
        if r.missed_barges:
            print(f"{n:8d}  ({r.missed_barges} stories ended before the interjection)")


def print_hold(default: Results, held: Results, default_s: float, hold_s: float) -> None:
    print("\n## trade-off: first audio held for the end of turn (1 session, client ms)")
    print("hold_first_audio_s     n    mean     p50     p95")
    print(f"{default_s:18.2f} {summary(default.first_audio_ms)}   (default: soon after the pause)")
    print(f"{hold_s:18.2f} {summary(held.first_audio_ms)}   (always the confirmed end of turn)")


def target_rows(
    by_sessions: dict[int, Results], held: Results | None
) -> list[tuple[str, float, float | None, str]]:
    """(figure, measured, target or None, unit) for the summary table."""
    least = min(by_sessions)
    one = by_sessions[least]
    label = "1 session" if least == 1 else f"{least} sessions"

    def target(value: float) -> float | None:  # the targets are for one session
        return value if least == 1 else None

    p50, p95 = pct(one.first_audio_ms, 50), pct(one.first_audio_ms, 95)
    # audio stops going out at the pause; the cancel waits for the backchannel's hold
    paused = [b.paused_ms for b in one.barges if b.paused_ms is not None]
    barge = [b.stopped_ms for b in one.barges]
    past_hold = [b.stopped_ms - b.decision_ms for b in one.barges if b.decision_ms is not None]
    rows: list[tuple[str, float, float | None, str]] = [
        (f"{label}: end of speech -> first audio p50", p50, target(TARGET_P50_MS), "ms"),
        (f"{label}: end of speech -> first audio p95", p95, target(TARGET_P95_MS), "ms"),
        (f"{label}: barge-in onset -> paused p95", pct(paused, 95), target(TARGET_BARGE_P95_MS),
         "ms"),
        (f"{label}: barge-in onset -> stopped (done) p95", pct(barge, 95), None, "ms"),
        (f"{label}: barge-in decision -> stopped p95", pct(past_hold, 95),
         target(TARGET_BARGE_P95_MS), "ms"),
    ]  # fmt: skip
    for n, r in by_sessions.items():
        if n != least:
            ratio = pct(r.first_audio_ms, 50) / p50
            goal = target(TARGET_RATIO_4) if n == 4 else None
            rows.append((f"{n} sessions: p50 / {label} p50", ratio, goal, "x"))
    if held is not None:
        for q, base in ((50, p50), (95, p95)):
            ratio = pct(held.first_audio_ms, q) / base
            rows.append((f"held first audio: p{q} / default p{q}", ratio, None, "x"))
    return rows


def print_targets(rows: list[tuple[str, float, float | None, str]]) -> None:
    print("\n## summary against the targets")
    print(f"{'figure':46s} {'measured':>9} {'target':>9}  met")
    for label, value, target, unit in rows:
        digits = 0 if unit == "ms" else 2
        measured = f"{value:.{digits}f} {unit}"
        if target is None:
            print(f"{label:46s} {measured:>9} {'-':>9}")
            continue
        met = "-" if np.isnan(value) else "yes" if value <= target else "no"
        print(f"{label:46s} {measured:>9} {f'{target:.{digits}f} {unit}':>9}  {met}")


# -- entry point ----------------------------------------------------------------------------
async def scenario(url: str, speech: Script, counts: list[int], turns: int) -> dict[int, Results]:
    by_sessions = {}
    for n in counts:
        load = os.getloadavg()[0]
        print(f"# {n} session(s), {turns} turns each ... (load average {load:.2f})", flush=True)
        by_sessions[n] = await run_sessions(url, speech, n, turns)
    return by_sessions


def bench_config(args: argparse.Namespace, hold_s: float | None = None) -> ParleyConfig:
    """The default profile with the flags' reply length and barge-in policy (and
    ``hold_first_audio_s`` if given)."""
    config = load_config()
    config.session.max_reply_tokens = args.reply_tokens
    if args.barge_in is not None:
        config.turns.barge_in = args.barge_in
    if hold_s is not None:
        config.session.hold_first_audio_s = hold_s
    return config


def in_process(args: argparse.Namespace, speech: Script) -> None:
    config = bench_config(args)
    dirs = model_dirs(config)
    with serve_in_thread(config, dirs) as (url, _):
        by_sessions = asyncio.run(scenario(url, speech, args.sessions, args.turns))
    held = None
    if 1 in by_sessions:
        print(f"# server with hold_first_audio_s = {args.hold:g}")
        with serve_in_thread(bench_config(args, args.hold), dirs) as (url, _):
            held = asyncio.run(scenario(url, speech, [1], args.turns))[1]
    report(by_sessions)
    if held is not None:
        print_hold(by_sessions[1], held, config.session.hold_first_audio_s, args.hold)
    print_targets(target_rows(by_sessions, held))


def report(by_sessions: dict[int, Results]) -> None:
    print_latency(by_sessions)
    print_barge_in(by_sessions)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", help="a running server (base URL); default: start one in-process")
    p.add_argument("--sessions", default="1,4,8", help="concurrency levels (default 1,4,8)")
    p.add_argument("--turns", type=int, default=16, help="turns per session (default 16)")
    p.add_argument("--quick", action="store_true", help="sessions 1,4 and 3 turns (~3 min)")
    p.add_argument("--reply-tokens", type=int, default=40, help="in-process max_reply_tokens")
    p.add_argument("--hold", type=float, default=10.0, help="the held hold_first_audio_s")
    p.add_argument(
        "--barge-in",
        choices=["confirm", "onset"],
        help="in-process turns.barge_in (default: the profile's)",
    )
    p.add_argument(
        "--speech",
        choices=["piper", "recorded"],
        default="piper",
        help="who talks: Piper (default) or people's recordings",
    )
    args = p.parse_args()
    if args.quick:
        args.sessions, args.turns = "1,4", 3
    args.sessions = sorted({int(n) for n in args.sessions.split(",")})
    return args


def main() -> None:
    args = parse_args()
    config = load_config()
    cache = assets.default_cache_dir()
    tts_dir = assets.ensure(assets.load_registry()[config.models.tts], cache)
    recorded = args.speech == "recorded"
    speech = recorded_script(tts_dir, cache) if recorded else piper_script(tts_dir)
    print(f"load average: {os.getloadavg()[0]:.2f} (above ~0.5 is not a quiet machine)")
    if args.url:
        by_sessions = asyncio.run(scenario(args.url.rstrip("/"), speech, args.sessions, args.turns))
        report(by_sessions)
        print_targets(target_rows(by_sessions, None))
    else:
        in_process(args, speech)
    print(f"\nload average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
