"""Streaming speech recognition for live sessions: partial hypotheses while the caller speaks,
a final transcript at the pause.

Two owners:

- ``AsrWorker``, one per process: owns the ``Transcriber`` and the threads that run it.
  ``await worker.transcribe(audio, final=..., key=...)`` queues a job; finals run before
  partials; a queued partial is superseded by a newer request with the same ``key`` (a newer
  partial takes its place in the queue, a final absorbs it), and the superseded awaiter gets the
  newer request's result. Cancelling an awaiter removes its job if nobody else waits for it; a
  job already running finishes on its thread and its result is dropped. A partial runs only
  while no other job does (partials take one core at most, whatever the number of callers); a
  final starts whenever one of the Transcriber's ``workers`` is free, so a caller who stopped
  talking never waits for a partial that began just before (one in six turns did, for ~90 ms).
- ``StreamingRecognizer``, one per session, used from that session's event loop.

Calling contract of ``StreamingRecognizer`` (one utterance at a time):

- ``reset()`` at speech start: forgets the audio, the hypotheses and the stable text. Partials
  still in flight from before the reset return their hypothesis with ``stable=""`` and change
  nothing; the session should cancel them.
- ``add(frame)`` for every frame as it arrives: 16 kHz mono float32, finite (ValueError else).
  Never transcribes; cheap.
- ``partial_due()``: whether to ask for a partial now. Judged on the audio clock: at least
  ``min_partial_audio_s`` of audio, ``partial_interval_s`` more since the last request, and no
  partial of this recognizer still in flight (so a slow CPU gets fewer, not queued, partials).
- ``await partial() -> Partial``: the hypothesis for all audio so far and its ``stable`` prefix.
- ``context``: the decoder's previous-text prompt for the requests that follow (the session
  sets ``config.overlap_context`` for speech over the assistant); ``reset()`` keeps it.
- ``await final() -> Transcript``: the transcript of all audio added before the call, with the
  same quality as ``Transcriber.transcribe`` on that audio (the same call, for utterances up to
  ``max_buffer_s``). It does not reset.

Stable text is local agreement: the longest common word prefix of the last ``agreement``
hypotheses (words compared without case and punctuation), never including the newest
hypothesis's last ``holdback_words`` words (likely cut off mid-word). It never retracts within an
utterance: each ``stable`` starts with the previous one, word for word. If a later hypothesis
contradicts it, it stops growing until the hypotheses agree with it again; ``final()`` is the
authority (it may, rarely, disagree with a stable word).

The audio buffer is bounded: once it holds more than ``max_buffer_s``, the next partial (or the
final) first seals its head, cut at the quietest 20 ms in the last ``seal_search_s`` before the
limit, transcribing it once with final quality; the sealed text leads every later hypothesis and
its audio is dropped. Utterances longer than ``max_buffer_s`` therefore end with a final made of
sealed pieces plus the rest. ``partial_due()`` is true whenever a seal is due.

Long turns are sealed early, for speed: once the buffer holds more than ``seal_after_s``, the next
partial seals its head the same way (the cut in the last half of ``seal_after_s``), so the
final, which the caller waits for, transcribes only the rest: its cost stops growing with the
turn's length. The final itself never seals early: a head not yet sealed goes into its one call.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial as bind
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from audio.pcm import check_mono
from voice.aio import settle_like
from voice.asr import SAMPLE_RATE, AsrConfig, Transcriber, Transcript
from voice.errors import ParleyError

Float32Array = npt.NDArray[np.float32]
Waiter = asyncio.Future[Transcript]
W = TypeVar("W")  # whatever stands for one awaiter of a job

__all__ = [
    "AsrWorker", "AsrWorkerClosed", "JobQueue", "LocalAgreement", "Partial",
    "StreamingAsrConfig", "StreamingRecognizer", "check_audio", "quietest_point",
]  # fmt: skip

SEAL_FRAME_S = 0.02  # the cut for sealing lands in the middle of the quietest such frame


class AsrWorkerClosed(ParleyError):
    """The ASR worker was closed: it takes no more requests, queued ones fail with this."""


@dataclass(slots=True)
class StreamingAsrConfig:
    """How a StreamingRecognizer paces partials and judges stable text (times in audio seconds).

    partial_interval_s:  audio between partial requests. A partial of 1-4 s of audio costs
                         230-350 ms of CPU time (one thread, measured on this 2-core machine
                         under load; ~140-210 ms wall with two threads when quiet), so 0.5 s
                         spends about half a core per speaking caller and leaves the rest to
                         the LLM and TTS. Its stable text covered 80 % of the final's words
                         0.0-0.15 s of audio before the end of 2-2.6 s utterances; at 0.3 s
                         hypotheses 0.3 s apart agreed on a misheard word once in three
                         utterances ("pairs" for "Paris"). See ``bench/streaming_asr.py``.
    min_partial_audio_s: no partial before this much audio (Whisper guesses on less).
    agreement:           consecutive hypotheses that must agree on a word to make it stable.
    holdback_words:      the newest hypothesis's last words, never stable (maybe cut off).
    max_buffer_s:        audio kept unsealed; kept below Whisper's 30 s window with its lead.
    seal_search_s:       the stretch before ``max_buffer_s`` searched for a quiet cut.
    seal_after_s:        unsealed audio beyond which a partial seals early (None: only at
                         ``max_buffer_s``). A final's cost grows with its audio (on this CPU
                         ~100 ms for 3 s of recorded speech, ~300 ms for 7 s); sealed at 4 s, a
                         7 s turn's final took 128 ms. Word error on 15 4-7 s utterances (people,
                         Piper, espeak), whole vs head and rest: 9.3 vs 8.5 % of 247 words.
    overlap_context:     the decoder's previous-text prompt for speech over the assistant, where
                         an acknowledgement is likely: whisper-tiny reads a hummed "mm-hmm" or
                         "uh-huh" as words ("in a mom", "I have") without it. Measured on Piper
                         speech, 10 syntheses each: partials read as acknowledgements went 5 ->
                         10 of 10 for "uh huh", 1 -> 9 of 20 for "mm-hmm", 0 -> 20 of 23 for
                         "mhm"; "stop", "no", "wait", "hold on", "I have a question" were read as
                         before. "" turns it off.
    """

    partial_interval_s: float = 0.5
    min_partial_audio_s: float = 0.5
    agreement: int = 2
    holdback_words: int = 1
    max_buffer_s: float = 25.0
    seal_search_s: float = 5.0
    seal_after_s: float | None = 4.0
    overlap_context: str = "Mm-hmm. Uh-huh. Yeah. Okay."

    def __post_init__(self) -> None:
        if not 0.05 <= self.partial_interval_s <= 10:
            raise ValueError("streaming_asr.partial_interval_s must be within [0.05, 10] s")
        if not 0 <= self.min_partial_audio_s <= 10:
            raise ValueError("streaming_asr.min_partial_audio_s must be within [0, 10] s")
        if self.agreement < 2:
            raise ValueError("streaming_asr.agreement must be at least 2 hypotheses")
        if self.holdback_words < 0:
            raise ValueError("streaming_asr.holdback_words must not be negative")
        if not 5 <= self.max_buffer_s <= 27:
            raise ValueError("streaming_asr.max_buffer_s must be within [5, 27] s")
        if not SEAL_FRAME_S <= self.seal_search_s <= self.max_buffer_s / 2:
            raise ValueError("streaming_asr.seal_search_s must be within [0.02, max_buffer_s/2]")
        early = self.seal_after_s
        if early is not None and not 2 <= early < self.max_buffer_s:
            raise ValueError("streaming_asr.seal_after_s must be within [2, max_buffer_s) s")


@dataclass(slots=True, frozen=True)
class Partial:
    """A hypothesis of the utterance so far.

    text:   the whole hypothesis.
    stable: the words judged final; each stable of an utterance starts with the previous one.
            It is a word prefix of ``text`` (compared without case and punctuation) unless this
            hypothesis contradicts words already stable; those are held, not retracted.
    """

    text: str
    stable: str


def check_audio(audio: Any, name: str = "audio") -> None:
    """Raise ValueError unless ``audio`` is 1-D float32 numpy audio with finite samples."""
    check_mono(audio, np.float32, name)
    if not np.isfinite(audio).all():
        raise ValueError(f"{name} contains NaN or infinite samples")


# -- the worker's queue: no asyncio, no threads -------------------------------------------------


@dataclass(slots=True, eq=False)
class Job(Generic[W]):
    audio: Float32Array
    final: bool
    waiters: list[W] = field(default_factory=list)
    context: str = ""  # the Transcriber's previous-text prompt


class JobQueue(Generic[W]):
    """Finals first (in arrival order), then partials (in arrival order, at most one per key).

    A partial pushed with the key of a queued partial replaces its audio and joins its waiters,
    keeping its place; a final absorbs the queued partial of its key (its waiters get the
    final's result). Key None is never superseded.
    """

    def __init__(self) -> None:
        self._finals: deque[Job[W]] = deque()
        self._partials: dict[Hashable, Job[W]] = {}

    def __len__(self) -> int:
        return len(self._finals) + len(self._partials)

    def push(
        self, audio: Float32Array, final: bool, key: Hashable | None, waiter: W, context: str = ""
    ) -> None:
        slot: Hashable = object() if key is None else key
        queued = self._partials.pop(slot, None) if final else self._partials.get(slot)
        waiters = [*(queued.waiters if queued else []), waiter]
        if final:
            self._finals.append(Job(audio, True, waiters, context))
        elif queued:
            queued.audio, queued.waiters, queued.context = audio, waiters, context
        else:
            self._partials[slot] = Job(audio, False, waiters, context)

    def pop(self, finals_only: bool = False) -> Job[W] | None:
        if self._finals:
            return self._finals.popleft()
        if self._partials and not finals_only:
            return self._partials.pop(next(iter(self._partials)))
        return None

    def abandon(self, waiter: W) -> None:
        """``waiter`` stopped waiting: drop it, and its job if that has no waiter left."""
        for job in self._finals:
            if waiter in job.waiters:
                job.waiters.remove(waiter)
                if not job.waiters:
                    self._finals.remove(job)
                return
        for slot, job in self._partials.items():
            if waiter in job.waiters:
                job.waiters.remove(waiter)
                if not job.waiters:
                    del self._partials[slot]
                return

    def drain(self) -> list[Job[W]]:
        jobs = [*self._finals, *self._partials.values()]
        self._finals.clear()
        self._partials.clear()
        return jobs


# -- the worker ---------------------------------------------------------------------------------


class AsrWorker:
    """The process's ASR threads. Use from one event loop; see the module docstring."""

    def __init__(self, transcriber: Transcriber) -> None:
        self._transcriber = transcriber  # ours now: touched only by the worker threads
        self._slots = transcriber.config.workers
        self._executor = ThreadPoolExecutor(self._slots, thread_name_prefix="parley-asr")
        self._queue: JobQueue[Waiter] = JobQueue()
        self._running: set[asyncio.Future[Transcript]] = set()
        self._closed = False

    @classmethod
    def load(cls, model_dir: Path, config: AsrConfig | None = None) -> AsrWorker:
        return cls(Transcriber(model_dir, config))

    @property
    def asr_config(self) -> AsrConfig:
        return self._transcriber.config

    @property
    def queued(self) -> int:
        """Jobs waiting for a thread (not counting those running)."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Jobs running now."""
        return len(self._running)

    async def transcribe(
        self, audio: Float32Array, *, final: bool, key: Hashable | None = None, context: str = ""
    ) -> Transcript:
        """Transcribe ``audio`` on a worker thread (``context``: see ``Transcriber.transcribe``).

        A final runs ``Transcriber.transcribe(audio, live=True)`` (its retry in the full
        window only when very unsure); a partial runs the short window only
        (no low-confidence retry in the 30 s window: it would triple a partial's cost). A queued
        partial is superseded by a newer request with the same ``key``; its awaiter then gets
        that request's result. Raises AsrWorkerClosed after ``close()``, ValueError on bad audio.
        """
        check_audio(audio)
        if self._closed:
            raise AsrWorkerClosed("the ASR worker is closed")
        waiter: Waiter = asyncio.get_running_loop().create_future()
        self._queue.push(audio, final, key, waiter, context)
        self._start_next()
        try:
            return await waiter
        except asyncio.CancelledError:
            self._queue.abandon(waiter)
            raise

    async def close(self) -> None:
        """Refuse new requests, fail queued ones, let the running one finish, stop the thread."""
        self._closed = True
        for job in self._queue.drain():
            _deliver(job, lambda w: w.set_exception(AsrWorkerClosed("the ASR worker closed")))
        if self._running:
            await asyncio.wait(set(self._running))
        self._executor.shutdown(wait=True)

    def _start_next(self) -> None:
        while len(self._running) < self._slots:
            job = self._queue.pop(finals_only=bool(self._running))
            if job is None:
                return
            running = asyncio.get_running_loop().run_in_executor(self._executor, self._run, job)
            self._running.add(running)
            running.add_done_callback(bind(self._finished, job))

    def _run(self, job: Job[Waiter]) -> Transcript:  # on a worker thread
        config = self._transcriber.config
        if job.final:
            return self._transcriber.transcribe(job.audio, live=True, context=job.context)
        seconds = len(job.audio) / SAMPLE_RATE + config.lead_silence_s
        if seconds > config.max_window_s:
            return self._transcriber.transcribe(job.audio)  # long form: no window to choose
        window = config.window_for(seconds)
        return self._transcriber.transcribe(job.audio, window_s=window, context=job.context)

    def _finished(self, job: Job[Waiter], done: asyncio.Future[Transcript]) -> None:
        self._running.discard(done)
        _deliver(job, lambda waiter: settle_like(waiter, done))
        if not self._closed:
            self._start_next()


def _deliver(job: Job[Waiter], settle: Callable[[Waiter], object]) -> None:
    for waiter in job.waiters:
        if not waiter.done():  # a cancelled awaiter's future is done already
            settle(waiter)


# -- stable text --------------------------------------------------------------------------------


def _key(word: str) -> str:
    return word.strip(".,!?;:\"'()-").lower()


class LocalAgreement:
    """Stable text by local agreement over consecutive hypotheses; no I/O, no asyncio.

    ``update(hypothesis)`` returns the stable text: it only ever grows, word by word, keeping
    the surface form of the words it already holds.
    """

    def __init__(self, agreement: int = 2, holdback_words: int = 1) -> None:
        self._history: deque[list[str]] = deque(maxlen=agreement)
        self._holdback = holdback_words
        self._stable: list[str] = []

    @property
    def stable(self) -> str:
        return " ".join(self._stable)

    def reset(self) -> None:
        self._history.clear()
        self._stable = []

    def update(self, hypothesis: str) -> str:
        words = hypothesis.split()
        self._history.append([_key(w) for w in words])
        if len(self._history) < (self._history.maxlen or 0):
            return self.stable
        agreed = min(_common_prefix(self._history), len(words) - self._holdback)
        n = len(self._stable)
        if agreed > n and self._history[-1][:n] == [_key(w) for w in self._stable]:
            self._stable += words[n:agreed]
        return self.stable


def _common_prefix(lists: deque[list[str]]) -> int:
    n = min(len(words) for words in lists)
    for i in range(n):
        if any(words[i] != lists[0][i] for words in lists):
            return i
    return n


# -- audio buffer -------------------------------------------------------------------------------


class _AudioBuffer:
    """Appended frames, joined on demand. Arrays handed out are never written again."""

    def __init__(self) -> None:
        self._chunks: list[Float32Array] = []
        self._samples = 0

    def __len__(self) -> int:
        return self._samples

    def append(self, frame: Float32Array) -> None:
        self._chunks.append(frame.copy())  # the caller may reuse its frame buffer
        self._samples += len(frame)

    def audio(self) -> Float32Array:
        if len(self._chunks) != 1:
            joined = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
            self._chunks = [joined]
        return self._chunks[0]

    def drop_head(self, n: int) -> None:
        rest = self.audio()[n:].copy()
        self._chunks, self._samples = [rest], len(rest)


def quietest_point(audio: Float32Array, start: int, stop: int, frame: int) -> int:
    """The sample index at the middle of the lowest-energy ``frame`` in ``audio[start:stop]``."""
    n = (stop - start) // frame
    assert n >= 1, "the search stretch must hold at least one frame"
    frames = audio[start : start + n * frame].reshape(n, frame)  # [n, frame]
    energy = np.einsum("ij,ij->i", frames, frames)  # [n]
    return start + int(np.argmin(energy)) * frame + frame // 2


# -- the recognizer -----------------------------------------------------------------------------


class StreamingRecognizer:
    """One session's streaming ASR over the shared worker; see the module docstring."""

    def __init__(self, worker: AsrWorker, config: StreamingAsrConfig | None = None) -> None:
        self.config = config or StreamingAsrConfig()
        self._worker = worker
        self._agreement = LocalAgreement(self.config.agreement, self.config.holdback_words)
        self._buffer = _AudioBuffer()
        self._sealed: list[str] = []  # text of the sealed head of the utterance
        self._sealed_samples = 0
        self._requested_at = 0  # utterance samples when the last partial was asked for
        self._in_flight = 0  # partial() calls awaiting the worker
        self._epoch = 0  # bumped by reset(): results of older audio are not folded in
        self._seal_lock = asyncio.Lock()
        self._last: tuple[Transcript, Partial] | None = None
        self.context = ""  # the decoder's previous-text prompt for this utterance's requests

    @property
    def audio_s(self) -> float:
        """Seconds of audio added since the last reset."""
        return (self._sealed_samples + len(self._buffer)) / SAMPLE_RATE

    @property
    def buffered_s(self) -> float:
        """Seconds of audio held (not yet sealed): at most ``max_buffer_s`` after a partial."""
        return len(self._buffer) / SAMPLE_RATE

    @property
    def stable(self) -> str:
        return self._agreement.stable

    def reset(self) -> None:
        self._epoch += 1
        self._agreement.reset()
        self._buffer = _AudioBuffer()
        self._sealed, self._sealed_samples, self._requested_at = [], 0, 0
        self._last = None

    def add(self, audio: Float32Array) -> None:
        check_audio(audio, "frame")
        self._buffer.append(audio)

    def partial_due(self, interval_s: float | None = None) -> bool:
        """Whether a partial should be requested now: none is running and ``interval_s``
        (default ``config.partial_interval_s``) of audio came since the last request."""
        if self._in_flight:
            return False
        if self._seal_due():
            return True
        interval = self.config.partial_interval_s if interval_s is None else interval_s
        since = self._sealed_samples + len(self._buffer) - self._requested_at
        return (
            len(self._buffer) >= self.config.min_partial_audio_s * SAMPLE_RATE
            and since >= interval * SAMPLE_RATE
        )

    async def partial(self) -> Partial:
        epoch, self._in_flight = self._epoch, self._in_flight + 1
        previous, self._requested_at = self._requested_at, self._sealed_samples + len(self._buffer)
        try:
            await self._seal_while_due(early=True)
            sealed, audio = self._sealed_text(), self._buffer.audio()
            result = await self._worker.transcribe(
                audio, final=False, key=self, context=self.context
            )
        except asyncio.CancelledError:
            if epoch == self._epoch:
                self._requested_at = previous  # no partial came of it: the next is due
            raise
        finally:
            self._in_flight -= 1
        text = _join(sealed, result.text)
        if epoch != self._epoch:
            return Partial(text, "")
        return self._fold(result, text)

    async def final(self) -> Transcript:
        await self._seal_while_due()
        sealed = self._sealed_text()
        audio = self._buffer.audio()
        result = await self._worker.transcribe(audio, final=True, key=self, context=self.context)
        return dataclasses.replace(result, text=_join(sealed, result.text)) if sealed else result

    def _fold(self, result: Transcript, text: str) -> Partial:
        if self._last is not None and self._last[0] is result:
            return self._last[1]  # a superseded request shares its successor's result
        partial = Partial(text, self._agreement.update(text))
        self._last = (result, partial)
        return partial

    def _sealed_text(self) -> str:
        return " ".join(t for t in self._sealed if t)

    def _seal_due(self, early: bool = False) -> bool:
        return len(self._buffer) > self._limit_s(early) * SAMPLE_RATE

    def _limit_s(self, early: bool) -> float:
        """The unsealed audio beyond which a seal is due."""
        after = self.config.seal_after_s
        return after if early and after is not None else self.config.max_buffer_s

    async def _seal_while_due(self, early: bool = False) -> None:
        async with self._seal_lock:
            while self._seal_due(early):
                await self._seal_once(self._limit_s(early))

    async def _seal_once(self, limit_s: float) -> None:
        epoch, audio = self._epoch, self._buffer.audio()
        stop = round(limit_s * SAMPLE_RATE)
        search_s = min(self.config.seal_search_s, limit_s / 2)
        start = stop - round(search_s * SAMPLE_RATE)
        cut = quietest_point(audio, start, stop, round(SEAL_FRAME_S * SAMPLE_RATE))
        result = await self._worker.transcribe(audio[:cut], final=True)
        if epoch != self._epoch:
            return  # reset meanwhile: that audio is gone already
        self._sealed.append(result.text)
        self._sealed_samples += cut
        self._buffer.drop_head(cut)


def _join(head: str, tail: str) -> str:
    return f"{head} {tail}".strip() if head else tail
