"""One assistant reply, from the model's text to paced audio events.

``Reply.run()`` streams the dialogue's reply into a ``SentenceChunker`` (first a short clause,
then sentences); each chunk is synthesized by the shared ``TtsWorker``, encoded in the output
format and sent as ``response.output_audio.delta`` events, paced so the client holds at most
``lead_s`` seconds it has not played. Each chunk's text goes out as a transcript delta with its
first audio, so ``Playout`` knows which text each second of audio carries. A text-only reply
sends the model's text as it comes.

Generation and speech overlap: the model keeps generating while earlier chunks are spoken.

Nothing is sent before ``opener()`` returns: the session uses it to hold a preemptive reply
until the caller's turn is confirmed, and to announce the response (``response.created`` ...).
``hold()`` stops the audio going out (generation and synthesis go on) until ``release()``: the
session holds it while speech over the reply is not yet known to be a barge-in. A client that
pauses its player is told so (``parley.output_audio.paused`` / ``resumed``), and ``playout``
stops its clock meanwhile.
Cancelling ``run()`` stops everything at once; the caller then reads ``text``, ``playout`` and
``times`` to truncate the reply to what was heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from audio.codec import encode
from audio.pcm import Float32Array
from voice.aio import settle_like
from voice.chunker import Chunk, ChunkerConfig, SentenceChunker
from voice.llm import Dialogue, ReplyParams, ReplyUsage
from voice.playout import Playout
from voice.realtime import events as ev
from voice.tts import Synthesizer

__all__ = ["Reply", "ReplyTimes", "TtsWorker"]

_DELTA_S = 0.1  # audio per output event: pacing granularity
FIRST_PAUSE_S = 0.3  # the longest a first chunk holds the engine (~4 words take ~80 ms)


_Result = asyncio.Future[Float32Array]


@dataclass(order=True, slots=True)
class _TtsJob:
    """A queued synthesis. Jobs sort by ``rank``: first chunks before later ones, then by
    arrival."""

    rank: tuple[bool, int]  # (not first, arrival number)
    text: str = field(compare=False)
    sample_rate: int = field(compare=False)
    done: _Result = field(compare=False)

    @property
    def first(self) -> bool:
        return not self.rank[0]


class TtsWorker:
    """The process's Synthesizers behind two threads.

    A reply's first chunk goes before queued later chunks of other replies: its caller is
    waiting in silence, theirs are listening to the audio sent ahead (``output_lead_s``).
    At 4 sessions a first chunk could otherwise wait behind three sentences (150-300 ms each
    on one thread). Nor does it wait for a later chunk already running: later chunks run one
    at a time, first chunks whenever one of the two threads is free. (Piper phonemizes under
    its own lock; onnxruntime sessions take concurrent runs.) A queued job whose awaiter is
    cancelled never runs.

    ``first``, when given, is the same voice with more threads: it synthesizes first chunks
    inside ``pause`` (the local engine's ``Engine.paused``), which holds the engine's decode
    steps for as long (at most ``FIRST_PAUSE_S``) so that the chunk has the cores. The reply's
    later tokens are needed only a chunk later; a live turn's first token is never held.
    """

    THREADS = 2  # a later chunk on one, a first chunk beside it

    def __init__(
        self,
        synthesizer: Synthesizer,
        first: Synthesizer | None = None,
        pause: Callable[[float], AbstractContextManager[None]] | None = None,
    ) -> None:
        self._synth = synthesizer
        self._first = first
        self._pause = pause
        self._pool = ThreadPoolExecutor(self.THREADS, thread_name_prefix="parley-tts")
        self._jobs: list[_TtsJob] = []  # a heap
        self._arrivals = itertools.count()
        self._running: list[_TtsJob] = []

    @property
    def running(self) -> int:
        """Syntheses running now."""
        return len(self._running)

    async def synthesize(self, text: str, sample_rate: int, *, first: bool = False) -> Float32Array:
        """``first``: a reply's first chunk (served before queued later chunks)."""
        done: _Result = asyncio.get_running_loop().create_future()
        rank = (not first, next(self._arrivals))
        heapq.heappush(self._jobs, _TtsJob(rank, text, sample_rate, done))
        self._start_next()
        return await done

    def _start_next(self) -> None:
        while len(self._running) < self.THREADS and self._jobs:
            job = self._jobs[0]  # first chunks sort first: a later one on top means none queued
            if job.done.done():
                heapq.heappop(self._jobs)  # its awaiter was cancelled
                continue
            if not job.first and not all(other.first for other in self._running):
                return  # a later chunk is running already
            heapq.heappop(self._jobs)
            self._running.append(job)
            run = self._run_first if job.first and self._first else self._synth.synthesize
            running = asyncio.get_running_loop().run_in_executor(
                self._pool, run, job.text, job.sample_rate
            )
            running.add_done_callback(functools.partial(self._finished, job))

    def _run_first(self, text: str, rate: int) -> Float32Array:  # on a TTS thread
        assert self._first is not None
        with self._pause(FIRST_PAUSE_S) if self._pause else contextlib.nullcontext():
            return self._first.synthesize(text, rate)

    def _finished(self, job: _TtsJob, running: asyncio.Future[Float32Array]) -> None:
        self._running.remove(job)
        settle_like(job.done, running)
        self._start_next()

    def close(self) -> None:
        for job in self._jobs:
            job.done.cancel()
        self._jobs.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(slots=True)
class ReplyTimes:
    """Monotonic times of a reply's stages (None until reached)."""

    first_token: float | None = None
    first_chunk: float | None = None
    first_audio: float | None = None


class Reply:
    """One response of a session; see the module docstring."""

    def __init__(
        self,
        *,
        response_id: str,
        item_id: str,
        dialogue: Dialogue,
        params: ReplyParams,
        tts: TtsWorker | None,
        output_format: ev.AudioFormat,
        chunker: ChunkerConfig,
        lead_s: float,
        emit: Callable[[ev.ServerEvent], None],
        opener: Callable[[], Awaitable[None]],
    ) -> None:
        self.response_id = response_id
        self.item_id = item_id
        self.text = ""  # the raw reply text generated so far
        self.spoken = ""  # the transcript sent so far
        self.finish_reason: str | None = None  # the dialogue's, once the text is all generated
        self.playout = Playout()
        self.times = ReplyTimes()
        self._dialogue = dialogue
        self._params = params
        self._tts = tts
        self._format = output_format
        self._chunker = SentenceChunker(chunker)
        self._lead_s = lead_s
        self._emit = emit
        self._opener = opener
        self._opened = False
        self._flowing = asyncio.Event()  # cleared while held
        self._flowing.set()
        self._held_at: float | None = None
        self._replied = False  # the dialogue's reply is this one's

    @property
    def usage(self) -> ReplyUsage | None:
        """This reply's token counts as far as it went (see ``Dialogue.usage``)."""
        return self._dialogue.usage if self._replied else None

    @property
    def audio(self) -> bool:
        return self._tts is not None

    @property
    def opened(self) -> bool:
        """Whether anything of this reply has been sent."""
        return self._opened

    @property
    def held_at(self) -> float | None:
        """When ``hold()`` stopped the audio (None: it flows)."""
        return self._held_at

    def hold(self, now: float, pause_player: bool) -> None:
        """Send no more audio (nor its transcript) until ``release()``. ``pause_player``: the
        client pauses playback when told to, so it is told."""
        if self._held_at is not None:
            return
        self._held_at = now
        self._flowing.clear()
        if pause_player:
            self.playout.pause(now)
            played = int(self.playout.played_s(now) * 1000)  # as the truncation reports it
            self._emit(ev.OutputAudioPaused(self.response_id, self.item_id, played))

    def release(self, now: float) -> None:
        """Not a barge-in after all: the audio goes on from where it stopped."""
        if self._held_at is None:
            return
        self._held_at = None
        self._flowing.set()
        if self.playout.paused:
            self.playout.resume(now)
            self._emit(ev.OutputAudioResumed(self.response_id, self.item_id))

    async def run(self) -> None:
        if self._tts is None:
            await self._run_text()
            return
        chunks: asyncio.Queue[Chunk | None] = asyncio.Queue()
        generator = asyncio.create_task(self._generate(chunks))
        try:
            await self._speak(chunks)
            await generator  # re-raises its error, if any
            await self._open()  # a reply with nothing to say is still announced
        finally:
            generator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await generator

    async def _open(self) -> None:
        if not self._opened:
            await self._opener()
            self._opened = True

    def _reply(self) -> AsyncGenerator[str, None]:
        self._replied = True
        return self._dialogue.reply(self._params)

    async def _run_text(self) -> None:
        # closed at once when cancelled (at any await here): the engine's abort is then queued
        # before the truncate that follows, not whenever the garbage collector gets to it
        async with contextlib.aclosing(self._reply()) as pieces:
            async for piece in pieces:
                if self.times.first_token is None:
                    self.times.first_token = time.monotonic()
                await self._open()
                self.text += piece
                self.spoken += piece
                self._emit(ev.TextDelta(self.response_id, self.item_id, 0, 0, piece))
        self.finish_reason = self._dialogue.finish_reason
        await self._open()

    async def _generate(self, chunks: asyncio.Queue[Chunk | None]) -> None:
        try:
            async with contextlib.aclosing(self._reply()) as pieces:
                async for piece in pieces:
                    if self.times.first_token is None:
                        self.times.first_token = time.monotonic()
                    self.text += piece
                    for chunk in self._chunker.push(piece):
                        self._chunk_ready(chunk, chunks)
            self.finish_reason = self._dialogue.finish_reason
            for chunk in self._chunker.flush():
                self._chunk_ready(chunk, chunks)
        finally:
            chunks.put_nowait(None)

    def _chunk_ready(self, chunk: Chunk, chunks: asyncio.Queue[Chunk | None]) -> None:
        if self.times.first_chunk is None:
            self.times.first_chunk = time.monotonic()
        chunks.put_nowait(chunk)

    async def _speak(self, chunks: asyncio.Queue[Chunk | None]) -> None:
        assert self._tts is not None
        rate = self._format.sample_rate
        while (chunk := await chunks.get()) is not None:
            audio = await self._tts.synthesize(chunk.text, rate, first=not self.spoken)
            if not len(audio):
                continue
            await self._open()
            await self._paced()
            self.playout.begin_chunk(chunk.source_start, chunk.source_end)
            text = chunk.text if not self.spoken else " " + chunk.text
            self.spoken += text
            self._emit(ev.TranscriptDelta(self.response_id, self.item_id, 0, 0, text))
            await self._send_audio(audio, rate)

    async def _send_audio(self, audio: Float32Array, rate: int) -> None:
        step = max(1, int(_DELTA_S * rate))
        for start in range(0, len(audio), step):
            piece = audio[start : start + step]
            await self._paced()
            now = time.monotonic()
            if self.times.first_audio is None:
                self.times.first_audio = now
            self._emit(
                ev.AudioDelta(
                    self.response_id, self.item_id, 0, 0, encode(piece, self._format.encoding)
                )
            )
            self.playout.sent(len(piece) / rate, now)

    async def _paced(self) -> None:
        """Wait until the next audio may go: not held, and the client holds under ``lead_s``."""
        while True:
            await self._flowing.wait()
            wait = self.playout.buffered_s(time.monotonic()) - self._lead_s
            if wait <= 0:
                return
            await asyncio.sleep(wait)
