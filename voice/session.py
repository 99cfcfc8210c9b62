"""A voice session: one caller, one conversation, the Realtime API's events in and out.

The Session is an actor: every input (client events, ASR results, reply completions, a 50 ms
tick) goes through one inbox and is handled by one task, so the state below is only ever
changed by that task. Long work runs in tasks it owns, which post their results back:

- caller audio -> 16 kHz -> Silero VAD frames -> ``TurnTaker`` -> turn decisions;
- while the caller speaks, a partials task transcribes the utterance every few hundred ms;
  the stable words go out as transcription deltas and are prefilled into the conversation;
- at a ``Pause`` the final transcript is taken and the reply starts at once (preemptive): the
  model generates and the first chunk is synthesized, but nothing is sent until the turn is
  confirmed (``EndOfTurn``) or ``hold_first_audio_s`` has passed since the pause. If the caller
  resumes first, the reply is cancelled and the conversation rolled back: nothing was sent;
- speech over the reply (``OverlapSuspected``, at its first VAD frame): its audio stops going
  out (``Reply.hold``) while the turn-taker confirms it (``OverlapStarted``; else
  ``OverlapDismissed`` sends it again) and tells a barge-in from a backchannel; a client that
  pauses playback (``session.parley.pause_playback``) is told to pause. ``BargeIn``: the reply
  task is cancelled, audio still queued for the client is dropped, and the assistant message
  (and the engine's tokens) is truncated to the words the caller heard (``Playout``).
  ``Backchannel`` ("uh-huh"): the reply goes on from where it stopped.

Errors in one client event become an ``error`` event; the session keeps going. Errors of a
reply end that reply with ``response.done`` status ``failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from audio.codec import decode
from audio.frames import FrameBuffer
from audio.pcm import Float32Array
from audio.resample import StreamResampler
from audio.vad import SileroVad, SpeechTail
from llm_engine.errors import EngineError
from voice import turns as tt
from voice.chunker import ChunkerConfig
from voice.errors import ParleyError
from voice.llm import Dialogue, ReplyParams, ReplyUsage
from voice.metrics import VoiceMetrics
from voice.realtime import events as ev
from voice.realtime.protocol import ProtocolError, new_id
from voice.responder import Reply, TtsWorker
from voice.streaming_asr import AsrWorker, StreamingAsrConfig, StreamingRecognizer

log = logging.getLogger("parley.session")

__all__ = ["Outbox", "OutboxFull", "Session", "VoiceConfig", "VoiceServices"]

ASR_RATE = 16_000
FRAME = SileroVad.FRAME_SAMPLES  # 32 ms at 16 kHz
FRAME_S = FRAME / ASR_RATE
TICK_S = 0.05
PARTIAL_POLL_S = 0.05
OVERLAP_PARTIAL_S = 0.2
_WORD = re.compile(r"\w")

# Small models follow short, plain instructions best (SmolLM2-135M answers a question in the
# language of a longer one's vocabulary, or loops on it).
DEFAULT_INSTRUCTIONS = "You are a helpful voice assistant. Keep your answers short."


@dataclass(slots=True)
class VoiceConfig:
    """The ``[session]`` section.

    instructions:        the system prompt until the client sets its own.
    hold_first_audio_s:  after a pause, how long the first reply audio waits for the end of the
                         turn to be confirmed (0: send as soon as it is ready; a resumed caller
                         then hears the reply start and stop).
    final_after_silence_s: silence after which the final transcript is started, ahead of the
                         pause decision (None: at the pause); speech after it discards it.
    output_lead_s:       reply audio sent ahead of the client's playout (its buffer).
    hold_on_overlap:     send no reply audio while speech over it may be a barge-in (so it
                         stops going out at the speech's onset, not at the decision); a
                         backchannel resumes it. The client plays what it has buffered
                         meanwhile, unless it pauses playback (``session.parley``).
    max_reply_tokens:    a reply's token budget.
    max_input_ahead_s:   input audio may run this far ahead of real time (a burst); beyond it
                         appends are refused with an error (the server would fall behind).
    max_buffer_s:        the input buffer kept for a manual ``commit`` (turn detection off).
    max_outbox_events:   server events queued for a client that does not read; beyond it the
                         connection is closed.
    """

    instructions: str = DEFAULT_INSTRUCTIONS
    # The final transcript starts after 50 ms of silence (where the voice stopped, see
    # audio.vad.SpeechTail), the preemptive reply at the Pause (turns.pause_s = 0.15), and the
    # first audio waits for the end of turn (0.3 s of silence after a complete-looking final,
    # turns.complete_end_of_turn_s), at most until 0.4 s of silence (pause + hold).
    hold_first_audio_s: float = 0.25
    final_after_silence_s: float | None = 0.05
    output_lead_s: float = 0.5
    hold_on_overlap: bool = True
    max_reply_tokens: int = 200
    temperature: float = 0.0
    max_input_ahead_s: float = 10.0
    max_buffer_s: float = 60.0
    max_outbox_events: int = 2000

    def __post_init__(self) -> None:
        for name in ("hold_first_audio_s", "output_lead_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"session.{name} must be >= 0")
        for name in ("max_input_ahead_s", "max_buffer_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"session.{name} must be positive")
        if self.max_reply_tokens < 1 or self.max_outbox_events < 10:
            raise ValueError("session.max_reply_tokens >= 1 and max_outbox_events >= 10 needed")
        if self.temperature < 0:
            raise ValueError("session.temperature must be >= 0")


@dataclass(slots=True)
class VoiceServices:
    """What every session of a process shares."""

    asr: AsrWorker
    tts: TtsWorker
    vad_model: Path
    open_dialogue: Callable[[str], Awaitable[Dialogue]]
    model_name: str
    voice: VoiceConfig = field(default_factory=VoiceConfig)
    turns: tt.TurnConfig = field(default_factory=tt.TurnConfig)
    chunker: ChunkerConfig = field(default_factory=ChunkerConfig)
    streaming: StreamingAsrConfig = field(default_factory=StreamingAsrConfig)
    metrics: VoiceMetrics = field(default_factory=VoiceMetrics)  # every session's replies


class OutboxFull(ParleyError):
    """The client stopped reading: its queue of server events overflowed."""


class Outbox:
    """Server events waiting for the connection's writer, in order."""

    def __init__(self, max_events: int) -> None:
        self._events: deque[ev.ServerEvent] = deque()
        self._ready = asyncio.Event()
        self._max = max_events

    def put(self, event: ev.ServerEvent) -> None:
        if len(self._events) >= self._max:
            raise OutboxFull(f"the client is not reading: {self._max} events are waiting")
        self._events.append(event)
        self._ready.set()

    def drop_audio(self, response_id: str) -> None:
        """Forget queued audio of ``response_id``: it will never be sent."""
        self._events = deque(
            e
            for e in self._events
            if not (
                isinstance(e, ev.AudioDelta | ev.TranscriptDelta) and e.response_id == response_id
            )
        )

    async def get(self) -> ev.ServerEvent:
        while not self._events:
            self._ready.clear()
            await self._ready.wait()
        return self._events.popleft()


# -- inbox messages of internal origin --------------------------------------------------------
@dataclass(slots=True)
class _Tick:
    pass


@dataclass(slots=True)
class _Partial:
    utt: _Utterance
    text: str
    stable: str


@dataclass(slots=True)
class _Final:
    utt: _Utterance
    text: str
    seq: int  # which request of the utterance it answers (only the latest counts)


@dataclass(slots=True)
class _ReplyEnded:
    task: asyncio.Task[None]


_Message = ev.ClientEvent | _Tick | _Partial | _Final | _ReplyEnded


@dataclass(slots=True, eq=False)
class _Utterance:
    item_id: str
    audio_start: float  # seconds of session input audio
    overlap: bool  # spoken over the assistant, not (yet) a turn
    stable: str = ""  # stable words sent as transcription deltas
    quiet_s: float = 0.0  # silence since the last speech frame (until a final is asked for)
    audio_end: float | None = None
    end_wall: float | None = None  # monotonic time the end of speech arrived
    pause_at: float | None = None
    final: str | None = None
    asr_final_wall: float | None = None
    end_of_turn_wall: float | None = None
    final_task: asyncio.Task[None] | None = None
    final_seq: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # EndOfTurn decided
    committed: bool = False
    replied: bool = False  # a reply to it was started


@dataclass(slots=True, eq=False)
class _ActiveReply:
    reply: Reply
    task: asyncio.Task[None]
    utt: _Utterance | None
    mark: Any
    created_at: float = field(default_factory=time.monotonic)
    reply_mark: Any = None  # after the user's turn went in, before the reply
    cancel_reason: ev.CancelReason | None = None
    onset_wall: float | None = None
    client_limit: bool = False  # the client's max_output_tokens bounds it, not the server's cap


class Session:
    """One caller's session; see the module docstring. Create, ``start()``, ``submit()`` client
    events, ``close()``."""

    def __init__(self, services: VoiceServices, outbox: Outbox, model: str | None = None) -> None:
        self._svc = services
        self._out = outbox
        self.config = ev.SessionConfig(
            id=new_id("sess"),
            model=model or services.model_name,
            instructions=services.voice.instructions,
            transcription=ev.TranscriptionConfig(model="whisper"),
        )
        self._inbox: asyncio.Queue[_Message] = asyncio.Queue(maxsize=256)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dialogue: Dialogue | None = None
        self._lock = asyncio.Lock()  # one user of the dialogue at a time
        self._turns = tt.TurnTaker(services.turns)
        self._vad = SileroVad(services.vad_model)
        self._tail = SpeechTail(ASR_RATE, max_tail_s=FRAME_S)  # the voice's end in a frame
        self._speech_at = -math.inf  # when the latest speech frame arrived (monotonic)
        self._recognizer = StreamingRecognizer(services.asr, services.streaming)
        self._resampler = StreamResampler(self.config.input_format.sample_rate, ASR_RATE)
        self._frames = FrameBuffer(FRAME, np.float32)
        self._recent: deque[Float32Array] = deque(maxlen=32)  # ~1 s of pre-roll
        self._arrivals: deque[tuple[float, float]] = deque(maxlen=4096)  # (audio end, wall)
        self._audio_s = 0.0  # session input audio, in seconds
        self._first_audio_wall: float | None = None
        self._manual: list[Float32Array] = []
        self._manual_s = 0.0
        self._utt: _Utterance | None = None
        self._partials: asyncio.Task[None] | None = None
        self._active: _ActiveReply | None = None
        self._drain_pending = False  # the caller hears audio of a finished reply
        self._last_item: str | None = None
        self._last: _ActiveReply | None = None  # the latest reply, finished or not
        self._last_is_tail = False  # nothing was added to the dialogue after self._last
        self._runner: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    # -- life -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._dialogue = await self._svc.open_dialogue(self.config.instructions)
        self._emit(ev.SessionCreated(self.config))
        self._runner = asyncio.create_task(self._run(), name=f"session {self.config.id}")
        self._spawn(self._ticker())

    async def submit(self, event: ev.ClientEvent) -> None:
        """Queue a client event (waits while the session is behind: backpressure)."""
        await self._inbox.put(event)

    async def close(self) -> None:
        tasks = [t for t in (self._runner, *self._tasks) if t is not None]
        if self._active is not None:
            tasks.append(self._active.task)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._dialogue is not None:
            with contextlib.suppress(Exception):
                await self._dialogue.close()
        self.closed.set()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _emit(self, event: ev.ServerEvent) -> None:
        self._out.put(event)

    def _post(self, message: _Message) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait(message)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            if self._inbox.empty():
                self._post(_Tick())

    async def _run(self) -> None:
        while True:
            message = await self._inbox.get()
            try:
                await self._process(message)
            except OutboxFull:
                log.warning("session %s: client not reading; closing", self.config.id)
                self.closed.set()
                return
            except ProtocolError as err:
                self._emit(ev.ErrorEvent(err.code, err.message, err.param, err.event_id))
            except (ParleyError, EngineError, ValueError) as err:
                self._emit(ev.ErrorEvent("invalid_request", str(err), None, _event_id(message)))
            except Exception as err:
                log.exception("session %s: internal error", self.config.id)
                self._emit(ev.ErrorEvent("server_error", str(err), None, None, "server_error"))

    # -- dispatch -----------------------------------------------------------------------------
    async def _process(self, m: _Message) -> None:
        now = time.monotonic()
        match m:
            case _Tick():
                await self._on_tick(now)
            case ev.InputAudioAppend():
                await self._on_audio(m, now)
            case _Partial():
                await self._on_partial(m, now)
            case _Final():
                await self._on_final(m, now)
            case _ReplyEnded():
                await self._on_reply_ended(m.task)
            case ev.SessionUpdate():
                await self._on_session_update(m)
            case ev.InputAudioCommit():
                await self._on_commit(m)
            case ev.InputAudioClear():
                self._manual, self._manual_s = [], 0.0
                self._emit(ev.InputAudioCleared())
            case ev.ItemCreate():
                await self._on_item_create(m)
            case ev.ItemTruncate():
                await self._on_item_truncate(m, now)
            case ev.ResponseCreate():
                await self._on_response_create(m)
            case ev.ResponseCancel():
                await self._on_response_cancel(m, now)

    async def _feed(self, event: tt.TurnInput, now: float) -> None:
        for decision in self._turns.feed(event, now):
            await self._on_turn(decision, now)

    # -- input audio --------------------------------------------------------------------------
    async def _on_audio(self, m: ev.InputAudioAppend, now: float) -> None:
        fmt = self.config.input_format
        try:
            x = decode(m.audio, fmt.encoding)
        except ValueError as err:
            raise ProtocolError("invalid_value", str(err), "audio", m.event_id) from None
        duration = len(x) / fmt.sample_rate
        if self._first_audio_wall is None:
            self._first_audio_wall = now
        ahead = self._audio_s + self._pending_s() + duration - (now - self._first_audio_wall)
        if self.config.turn_detection is not None and ahead > self._svc.voice.max_input_ahead_s:
            raise ProtocolError(
                "invalid_value",
                f"input audio is arriving faster than real time ({ahead:.1f} s ahead); this "
                "append was dropped: send audio at its natural pace",
                "audio",
                m.event_id,
            )
        y = self._resampler.process(x)
        if self.config.turn_detection is None:
            self._buffer_manual(y, m.event_id)
            return
        for frame in self._frames.push(y):
            await self._on_frame(frame, now)

    def _pending_s(self) -> float:
        return self._frames.pending_samples / ASR_RATE

    def _buffer_manual(self, y: Float32Array, event_id: str | None) -> None:
        if self._manual_s + len(y) / ASR_RATE > self._svc.voice.max_buffer_s:
            raise ProtocolError(
                "audio_too_large",
                f"the input buffer holds at most {self._svc.voice.max_buffer_s:.0f} s: "
                "commit or clear it",
                "audio",
                event_id,
            )
        self._manual.append(y)
        self._manual_s += len(y) / ASR_RATE

    async def _on_frame(self, frame: Float32Array, now: float) -> None:
        vad = self._vad.process(frame)
        tail = self._tail.update(frame, vad.is_speech)
        if vad.is_speech:
            self._speech_at = now
        self._recent.append(frame)
        self._audio_s += FRAME_S
        self._arrivals.append((self._audio_s, now))
        utt = self._utt
        if utt is not None:
            self._recognizer.add(frame)
        await self._feed(tt.VadFrame(vad.is_speech, vad.probability, FRAME_S, tail), now)
        if utt is not None and utt is self._utt and (utt.overlap or utt.pause_at is None):
            self._final_after_silence(utt, vad.is_speech, tail)

    def _final_after_silence(self, utt: _Utterance, speech: bool, tail: float) -> None:
        """Start the final transcript once the caller falls silent, ahead of the turn-taker:
        for a turn, after ``final_after_silence_s``, so the reply can start at the Pause with
        its transcript in hand; for speech over the assistant, after ``overlap_pause_s``, so the
        turn-taker can tell "stop" (a barge-in) from "uh-huh" (a backchannel). More speech
        makes a final already started stale."""
        if speech:
            utt.quiet_s = tail  # the voice may have stopped inside the frame
            if utt.final_task is not None:
                self._forget_final(utt)
            return
        utt.quiet_s += FRAME_S
        turns = self._svc.turns
        after = turns.overlap_pause_s if utt.overlap else self._svc.voice.final_after_silence_s
        if after is not None and utt.quiet_s >= after - 1e-9 and utt.final_task is None:
            self._request_final(utt)

    def _wall_at(self, audio_t: float) -> float:
        """When the input audio at ``audio_t`` arrived (monotonic)."""
        for end, wall in reversed(self._arrivals):
            if end <= audio_t + 1e-9:
                return wall
        return self._arrivals[0][1] if self._arrivals else time.monotonic()

    # -- turn decisions -----------------------------------------------------------------------
    async def _on_turn(self, d: tt.TurnEvent, now: float) -> None:
        log.debug("session %s: %s", self.config.id, d)
        match d:
            case tt.SpeechStarted():
                if self._utt is None or self._utt.audio_start != d.audio_start:
                    self._open_utterance(d.audio_start, overlap=False)
            case tt.OverlapSuspected():
                self._hold_output(now)
            case tt.OverlapDismissed():
                self._release_output(now)
            case tt.OverlapStarted():
                self._open_utterance(d.audio_start, overlap=True)
                self._hold_output(now)
            case tt.Resumed():
                await self._on_resumed(d, now)
            case tt.Pause():
                await self._on_pause(d, now)
            case tt.EndOfTurn():
                await self._on_end_of_turn(d)
            case tt.BargeIn():
                utt = self._utt
                if utt is not None and utt.overlap:  # the overlap is the caller's turn now
                    self._overlap_becomes_turn(utt)
                    self._announce(utt)  # first: it tells the client to stop playing
                await self._interrupt("turn_detected", self._wall_at(d.audio_start))
            case tt.Backchannel():
                self._close_utterance()
                self._release_output(now)
            case tt.NoInput():
                pass

    def _open_utterance(self, audio_start: float, overlap: bool) -> None:
        if self._utt is not None and self._utt.overlap and not overlap:
            self._overlap_becomes_turn(self._utt)  # the assistant stopped first
            self._announce(self._utt)
            self._release_output(time.monotonic())
            return
        self._close_utterance()
        utt = _Utterance(new_id("item"), audio_start, overlap)
        self._utt = utt
        self._recognizer.reset()
        # over the assistant an acknowledgement is likely: prime the ASR to spell one as such
        self._recognizer.context = self._recognizer.config.overlap_context if overlap else ""
        pad_s = _padding_s(self.config.turn_detection)
        n_frames = min(len(self._recent), round((self._audio_s - audio_start + pad_s) / FRAME_S))
        for frame in list(self._recent)[len(self._recent) - n_frames :]:
            self._recognizer.add(frame)
        if not overlap:
            self._announce(utt)
        self._partials = self._spawn(self._partial_loop(utt))

    def _audible(self) -> _ActiveReply | None:
        """The reply the caller may be hearing: the running one, or the last while it drains."""
        active = self._active
        if active is not None:
            return active if active.reply.audio and active.reply.opened else None
        if self._drain_pending and self._last is not None and self._last_is_tail:
            return self._last
        return None

    def _hold_output(self, now: float) -> None:
        """Speech over the reply: send no more of its audio until the turn-taker decides."""
        target = self._audible()
        if target is not None and self._svc.voice.hold_on_overlap:
            target.reply.hold(now, pause_player=self.config.pause_playback)

    def _release_output(self, now: float) -> None:
        """Not a barge-in after all: the held reply goes on."""
        for target in (self._active, self._last):
            if target is not None:
                target.reply.release(now)

    def _overlap_becomes_turn(self, utt: _Utterance) -> None:
        utt.overlap = False
        self._forget_final(utt)
        self._recognizer.context = ""

    @staticmethod
    def _forget_final(utt: _Utterance) -> None:
        if utt.final_task is not None:
            utt.final_task.cancel()
        utt.final_task, utt.final, utt.asr_final_wall = None, None, None
        utt.final_seq += 1  # a result already on its way is stale

    def _announce(self, utt: _Utterance) -> None:
        self._emit(ev.SpeechStarted(round(utt.audio_start * 1000), utt.item_id))

    def _close_utterance(self) -> None:
        if self._partials is not None:
            self._partials.cancel()
            self._partials = None
        utt, self._utt = self._utt, None
        if utt is not None and utt.final_task is not None:
            utt.final_task.cancel()

    async def _on_resumed(self, d: tt.Resumed, now: float) -> None:
        utt = self._utt
        active = self._active
        if active is not None and active.utt is utt and not active.reply.opened:
            await self._stop(active, None)  # nothing went out: roll back quietly
            await self._rollback(active)
            self._last_is_tail = False
        if utt is None or utt.committed:
            self._open_utterance(d.audio_start, overlap=False)
            return
        self._forget_final(utt)
        utt.audio_end, utt.pause_at, utt.replied, utt.quiet_s = None, None, False, 0.0

    async def _on_pause(self, d: tt.Pause, now: float) -> None:
        utt = self._utt
        if utt is None or utt.overlap:
            return
        utt.audio_end = d.audio_end
        utt.end_wall = self._wall_at(d.audio_end)
        utt.pause_at = now
        if utt.final is not None:  # the early final is in: reply now
            await self._reply_to(utt)
        elif utt.final_task is None:
            self._request_final(utt)

    def _request_final(self, utt: _Utterance) -> None:
        utt.final_seq += 1
        utt.final_task = self._spawn(self._final(utt, utt.final_seq))

    async def _final(self, utt: _Utterance, seq: int) -> None:
        transcript = await self._recognizer.final()
        self._post(_Final(utt, transcript.text.strip(), seq))

    async def _on_final(self, m: _Final, now: float) -> None:
        utt = m.utt
        if m.seq != utt.final_seq or (utt is not self._utt and not utt.ended.is_set()):
            return  # superseded: the caller spoke on, resumed or was cut off
        utt.final = m.text
        if utt.overlap:
            await self._feed(tt.AsrFinal(m.text), now)
            return
        utt.asr_final_wall = now
        if not utt.ended.is_set():
            await self._feed(tt.AsrFinal(m.text), now)
        if utt.pause_at is not None or utt.ended.is_set():
            await self._reply_to(utt)

    async def _reply_to(self, utt: _Utterance) -> None:
        """The caller paused and their words are known: answer (or just commit the turn)."""
        assert utt.final is not None
        if not _has_words(utt.final):
            if utt.ended.is_set():
                self._discard(utt)
            return
        if utt.replied:
            return
        if self._auto_respond() and self._active is None:
            utt.replied = True
            await self._start_reply(utt, utt.final)
        elif utt.ended.is_set():
            self._commit(utt)

    async def _on_end_of_turn(self, d: tt.EndOfTurn) -> None:
        utt = self._utt
        if utt is None:
            return
        utt.ended.set()
        if utt.audio_end is None:
            utt.audio_end, utt.end_wall = d.audio_end, self._wall_at(d.audio_end)
        utt.end_of_turn_wall = d.at
        if self._partials is not None:
            self._partials.cancel()
            self._partials = None
        self._utt = None  # the next speech is a new utterance
        if utt.final is None:
            if utt.final_task is None:
                self._request_final(utt)
            return  # _on_final finishes the turn
        await self._reply_to(utt)

    def _discard(self, utt: _Utterance) -> None:
        """Speech with no words (a cough, noise): report its end, make no item of it."""
        assert utt.audio_end is not None
        self._emit(ev.SpeechStopped(round(utt.audio_end * 1000), utt.item_id))
        utt.committed = True

    def _commit(self, utt: _Utterance) -> None:
        """The caller's turn becomes a conversation item (once)."""
        if utt.committed:
            return
        utt.committed = True
        assert utt.audio_end is not None and utt.final is not None
        self._emit(ev.SpeechStopped(round(utt.audio_end * 1000), utt.item_id))
        self._emit(ev.InputAudioCommitted(utt.item_id, self._last_item))
        self._add_user_item(utt.item_id, utt.final, audio=True)
        seconds = max(0.0, utt.audio_end - utt.audio_start)
        self._emit(ev.TranscriptionCompleted(utt.item_id, utt.final, seconds))

    def _add_user_item(self, item_id: str, text: str, audio: bool) -> None:
        part = ev.ContentPart("audio" if audio else "text", text)
        item = ev.MessageItem(item_id, "user", (part,))
        self._emit(ev.ItemAdded(item, self._last_item))
        self._last_item = item_id

    # -- partial transcripts ----------------------------------------------------------------
    async def _partial_loop(self, utt: _Utterance) -> None:
        while True:
            await asyncio.sleep(PARTIAL_POLL_S)
            if self._turns.state not in ("speaking", "overlap"):
                continue
            if utt.final_task is not None:
                continue  # the caller went quiet and the final is under way: it covers this
            if not utt.overlap and utt.quiet_s >= FRAME_S - 1e-9:
                # the voice stopped: silence adds no words, and the final follows at
                # final_after_silence_s, on a core this partial would still hold
                continue
            # over the assistant, partials come faster: they decide barge-in vs backchannel
            interval = OVERLAP_PARTIAL_S if utt.overlap else None
            if not self._recognizer.partial_due(interval):
                continue
            partial = await self._recognizer.partial()
            self._post(_Partial(utt, partial.text, partial.stable))
            if not utt.overlap and partial.stable and not self._lock.locked():
                async with self._lock:
                    assert self._dialogue is not None
                    await self._dialogue.set_user(partial.stable, final=False)
                    self._last_is_tail = False

    async def _on_partial(self, m: _Partial, now: float) -> None:
        log.debug("session %s: partial %r stable %r", self.config.id, m.text, m.stable)
        utt = m.utt
        if utt is not self._utt:
            return
        # over the assistant only the stable words count: the last word of a partial is often
        # a guess from a cut-off sound ("uh-h" -> "I hope")
        await self._feed(tt.AsrPartial(m.stable if utt.overlap else m.text), now)
        if utt.overlap or utt is not self._utt:
            return
        if m.stable.startswith(utt.stable) and len(m.stable) > len(utt.stable):
            self._emit(ev.TranscriptionDelta(utt.item_id, m.stable[len(utt.stable) :]))
            utt.stable = m.stable

    # -- replies --------------------------------------------------------------------------------
    def _auto_respond(self) -> bool:
        td = self.config.turn_detection
        return td is not None and td.create_response

    def _limit(self, limit: int | Literal["inf"] | None) -> int | None:
        """The client's bound on a reply's tokens (``limit``, this response's, else the
        session's) where it is below the server's cap, else None."""
        asked = self.config.max_output_tokens if limit is None else limit
        if asked in (None, "inf") or int(asked) >= self._svc.voice.max_reply_tokens:
            return None
        return int(asked)

    def _params(self, limit: int | None) -> ReplyParams:
        v = self._svc.voice
        return ReplyParams(max_tokens=limit or v.max_reply_tokens, temperature=v.temperature)

    async def _start_reply(
        self,
        utt: _Utterance | None,
        user_text: str | None,
        modalities: tuple[ev.Modality, ...] | None = None,
        limit: int | Literal["inf"] | None = None,
    ) -> None:
        assert self._dialogue is not None and self._active is None
        mods = modalities or self.config.output_modalities
        bound = self._limit(limit)
        audio = "audio" in mods
        reply = Reply(
            response_id=new_id("resp"),
            item_id=new_id("item"),
            dialogue=self._dialogue,
            params=self._params(bound),
            tts=self._svc.tts if audio else None,
            output_format=self.config.output_format,
            chunker=self._svc.chunker,
            lead_s=self._svc.voice.output_lead_s,
            emit=self._emit,
            opener=lambda: self._open_reply(reply, utt, mods),
        )
        mark = self._dialogue.mark()
        holder: list[_ActiveReply] = []  # the task first runs after _ActiveReply exists
        task = asyncio.create_task(self._reply_task(reply, user_text, holder))
        limited = bound is not None
        self._active = self._last = _ActiveReply(reply, task, utt, mark, client_limit=limited)
        holder.append(self._active)
        self._last_is_tail = True
        task.add_done_callback(lambda t: self._post(_ReplyEnded(t)))

    async def _reply_task(
        self, reply: Reply, user_text: str | None, holder: list[_ActiveReply]
    ) -> None:
        assert self._dialogue is not None
        async with self._lock:
            if user_text is not None:
                await self._dialogue.set_user(user_text, final=True)
            holder[0].reply_mark = self._dialogue.mark()
            await reply.run()

    async def _open_reply(
        self, reply: Reply, utt: _Utterance | None, mods: tuple[ev.Modality, ...]
    ) -> None:
        """Before the first byte of a reply: hold it for the end of turn, then announce it."""
        if utt is not None:
            await self._hold_first_audio(utt)
            self._commit(utt)
        response = ev.Response(
            reply.response_id,
            output_modalities=mods,
            output_format=self.config.output_format,
            voice=self.config.voice,
        )
        self._emit(ev.ResponseCreated(response))
        kind: ev.Modality = "audio" if reply.audio else "text"
        item = ev.MessageItem(reply.item_id, "assistant", (), "in_progress")
        self._emit(ev.OutputItemAdded(reply.response_id, 0, item))
        self._emit(ev.ItemAdded(item, self._last_item))
        self._last_item = reply.item_id
        part = ev.ContentPart(kind, "")
        self._emit(ev.ContentPartAdded(reply.response_id, reply.item_id, 0, 0, part))
        if reply.audio:
            await self._feed(tt.Playout(True), time.monotonic())

    async def _hold_first_audio(self, utt: _Utterance) -> None:
        """Wait for the end of the turn, at most ``hold_first_audio_s`` after the pause, and
        not while the caller may be resuming: speech within the last ``min_speech_s`` (too
        short yet to count as ``Resumed``) would otherwise hear the reply start, then stop."""
        # an overlap that became the turn may have had its Pause before it was a turn
        paused = utt.pause_at if utt.pause_at is not None else time.monotonic()
        until = paused + self._svc.voice.hold_first_audio_s
        guard = self._svc.turns.min_speech_s
        while not utt.ended.is_set():
            now = time.monotonic()
            wait = max(until, self._speech_at + guard) - now
            if wait <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(utt.ended.wait(), wait)

    async def _on_reply_ended(self, task: asyncio.Task[None]) -> None:
        active = self._active
        if active is None or active.task is not task:
            return  # already finished by _stop
        self._active = None
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, ParleyError | EngineError):
            log.error("reply failed", exc_info=error)
        status: ev.ResponseStatus = "failed" if error is not None else "completed"
        if status == "completed" and active.client_limit and active.reply.finish_reason == "length":
            status = "incomplete"  # cut at the client's max_output_tokens (the server's cap: not)
        self._finish(active, status, error)
        self._drain_pending = active.reply.audio and active.reply.playout.started

    async def _stop(self, active: _ActiveReply, reason: ev.CancelReason | None) -> None:
        """Cancel a running reply and wait for it; stop its audio going out."""
        active.cancel_reason = reason
        active.task.cancel()
        await asyncio.wait([active.task])
        self._out.drop_audio(active.reply.response_id)
        if self._active is active:
            self._active = None

    async def _interrupt(self, reason: ev.CancelReason, onset_wall: float | None) -> None:
        """Stop the reply playing now and keep only what the caller heard of it."""
        active = self._active
        if active is None:
            if self._drain_pending and self._last is not None and self._last_is_tail:
                # the reply is fully sent but the caller is still hearing it
                await self._truncate_heard(self._last, time.monotonic(), None)
                self._drain_pending = False
                await self._feed(tt.Playout(False), time.monotonic())
            return
        await self._stop(active, reason)
        stopped = time.monotonic()
        active.onset_wall = onset_wall
        if active.reply.opened:
            await self._truncate_heard(active, stopped, None)
        else:
            await self._undo_reply(active)
        self._finish(active, "cancelled", None, stopped)
        if active.reply.audio:
            await self._feed(tt.Playout(False), stopped)

    async def _undo_reply(self, active: _ActiveReply) -> None:
        """Nothing of the reply was heard: remove it, keeping the user's committed turn."""
        assert self._dialogue is not None
        utt = active.utt
        async with self._lock:
            if active.reply_mark is not None:
                await self._dialogue.restore(active.reply_mark)
                return
            await self._dialogue.restore(active.mark)
            if utt is not None and utt.committed and utt.final:
                await self._dialogue.set_user(utt.final, final=True)

    async def _rollback(self, active: _ActiveReply) -> None:
        async with self._lock:
            assert self._dialogue is not None
            await self._dialogue.restore(active.mark)

    async def _truncate_heard(
        self, active: _ActiveReply, now: float, played_s: float | None
    ) -> str:
        """Keep what the caller heard of ``active``'s reply (all of it for text)."""
        reply = active.reply
        played = reply.playout.played_s(now) if played_s is None else played_s
        heard = reply.playout.heard_chars(reply.text, played) if reply.audio else len(reply.text)
        assert self._dialogue is not None
        if heard == 0:
            await self._undo_reply(active)
            kept = ""
        else:
            async with self._lock:
                kept = await self._dialogue.keep_reply(heard)
        reply.spoken = kept
        if reply.audio:
            # whole ms, rounded down: never past the audio sent (the client heard it all)
            self._emit(ev.ItemTruncated(reply.item_id, 0, int(played * 1000)))
        return kept

    def _finish(
        self,
        active: _ActiveReply,
        status: ev.ResponseStatus,
        error: BaseException | None,
        stopped: float | None = None,
    ) -> None:
        reply = active.reply
        self._last = active
        if error is not None:
            self._emit(ev.ErrorEvent("response_failed", str(error), None, None, "server_error"))
        if not reply.opened:
            return  # nothing was announced: a rolled-back preemptive reply
        kind: ev.Modality = "audio" if reply.audio else "text"
        item = ev.MessageItem(
            reply.item_id,
            "assistant",
            (ev.ContentPart(kind, reply.spoken),),
            "completed" if status == "completed" else "incomplete",
        )
        if status in ("completed", "incomplete"):  # all of it was sent
            if reply.audio:
                self._emit(ev.AudioDone(reply.response_id, reply.item_id, 0, 0))
                self._emit(ev.TranscriptDone(reply.response_id, reply.item_id, 0, 0, reply.spoken))
            else:
                self._emit(ev.TextDone(reply.response_id, reply.item_id, 0, 0, reply.spoken))
            self._emit(ev.ContentPartDone(reply.response_id, reply.item_id, 0, 0, item.content[0]))
        self._emit(ev.OutputItemDone(reply.response_id, 0, item))
        response = ev.Response(
            reply.response_id,
            status=status,
            output=(item,),
            output_modalities=("audio",) if reply.audio else ("text",),
            output_format=self.config.output_format,
            voice=self.config.voice,
            status_reason=_STATUS_REASONS.get(status, active.cancel_reason),
            error=str(error) if error is not None else None,
            usage=_usage(reply.usage),
            metrics=self._metrics(active, stopped),
        )
        self._emit(ev.ResponseDone(response))
        self._observe(response)

    def _observe(self, response: ev.Response) -> None:
        """Count the reply in the process's metrics (``GET /metrics``)."""
        stats, m = self._svc.metrics, response.metrics
        stats.responses[response.status] += 1
        if m is not None and m.end_of_turn_ms is not None and m.first_audio_ms is not None:
            stats.first_audio_s.observe(m.first_audio_ms / 1000)  # a spoken turn's reply
        if m is not None and m.barge_in_stop_ms is not None:
            stats.barge_in_stop_s.observe(m.barge_in_stop_ms / 1000)

    def _metrics(self, active: _ActiveReply, stopped: float | None) -> ev.TurnMetrics:
        utt, times = active.utt, active.reply.times
        base = utt.end_wall if utt is not None else active.created_at

        def ms(t: float | None) -> float | None:
            return None if t is None or base is None else round((t - base) * 1000, 1)

        stop = decision = None
        if stopped is not None and active.onset_wall is not None:
            decision = round((stopped - active.onset_wall) * 1000, 1)
            held = active.reply.held_at
            out = stopped if held is None else min(held, stopped)
            stop = round((out - active.onset_wall) * 1000, 1)
        return ev.TurnMetrics(
            end_of_turn_ms=ms(utt.end_of_turn_wall) if utt is not None else None,
            asr_final_ms=ms(utt.asr_final_wall) if utt is not None else None,
            first_token_ms=ms(times.first_token),
            first_chunk_ms=ms(times.first_chunk),
            first_audio_ms=ms(times.first_audio),
            barge_in_stop_ms=stop,
            barge_in_decision_ms=decision,
        )

    async def _on_tick(self, now: float) -> None:
        await self._feed(tt.Tick(), now)
        last = self._last
        if self._drain_pending and last is not None and last.reply.playout.drained(now):
            self._drain_pending = False
            await self._feed(tt.Playout(False), now)

    # -- client events ----------------------------------------------------------------------
    async def _on_session_update(self, m: ev.SessionUpdate) -> None:
        old = self.config
        new = m.apply(old)
        if new.instructions != old.instructions:
            await self._with_dialogue(lambda d: self._reopen(d, new.instructions))
        if new.input_format != old.input_format:
            self._resampler = StreamResampler(new.input_format.sample_rate, ASR_RATE)
        if (new.turn_detection is None) != (old.turn_detection is None):
            self._frames.clear()
            self._manual, self._manual_s = [], 0.0
        self.config = new
        self._emit(ev.SessionUpdated(new))

    async def _on_commit(self, m: ev.InputAudioCommit) -> None:
        if self.config.turn_detection is not None:
            raise ProtocolError(
                "invalid_value",
                "input_audio_buffer.commit needs turn detection off (server VAD commits turns)",
                None,
                m.event_id,
            )
        if self._manual_s < 0.1:
            raise ProtocolError(
                "invalid_value",
                f"buffer too small: {self._manual_s * 1000:.0f} ms of audio, 100 ms needed",
                None,
                m.event_id,
            )
        audio = np.concatenate(self._manual)
        self._manual, self._manual_s = [], 0.0
        item_id = new_id("item")
        self._emit(ev.InputAudioCommitted(item_id, self._last_item))
        transcript = await self._svc.asr.transcribe(audio, final=True)
        text = transcript.text.strip()
        self._add_user_item(item_id, text, audio=True)
        self._emit(ev.TranscriptionCompleted(item_id, text, len(audio) / ASR_RATE))
        if text:
            await self._with_dialogue(lambda d: d.set_user(text, final=True))

    async def _with_dialogue(self, fn: Callable[[Dialogue], Awaitable[Any]]) -> None:
        if self._active is not None:
            raise ProtocolError(
                "invalid_value", "a response is in progress: cancel it first", None, None
            )
        async with self._lock:
            assert self._dialogue is not None
            await fn(self._dialogue)
            self._last_is_tail = False

    async def _reopen(self, old: Dialogue, instructions: str) -> None:
        """A new system prompt: the conversation so far is carried over under it."""
        new = await self._svc.open_dialogue(instructions)
        try:
            for msg in old.history:
                if msg["role"] != "system" and msg["content"]:
                    await new.add(msg["role"], msg["content"])  # type: ignore[arg-type]
        except BaseException:
            await new.close()
            raise
        self._dialogue = new
        await old.close()

    async def _on_item_create(self, m: ev.ItemCreate) -> None:
        item = m.item
        text = item.text
        if not text.strip():
            raise ProtocolError("invalid_value", "the item has no text", "item.content", m.event_id)
        previous = m.previous_item_id
        if previous is not None and previous != (self._last_item or "root"):
            # the conversation's KV is one token sequence: an item goes at its end only
            raise ProtocolError(
                "invalid_value",
                f"previous_item_id {previous!r} is not the last item "
                f"({self._last_item or 'root'!r}): items are only appended",
                "previous_item_id",
                m.event_id,
            )
        if item.role == "system":
            raise ProtocolError(
                "unsupported_feature",
                "system items are not supported: set session.instructions",
                "item.role",
                m.event_id,
            )
        await self._with_dialogue(lambda d: d.add(item.role, text))
        self._emit(ev.ItemAdded(item, self._last_item))
        self._last_item = item.id

    async def _on_item_truncate(self, m: ev.ItemTruncate, now: float) -> None:
        last = self._last
        moved_on = self._active is None and last is not None and not self._last_is_tail
        if moved_on and last is not None and last.reply.item_id == m.item_id:
            # the caller spoke since (a barge-in the server already truncated on its own
            # estimate): the dialogue has moved on; acknowledge, change nothing
            self._emit(ev.ItemTruncated(m.item_id, m.content_index, m.audio_end_ms))
            return
        target = self._active or (last if self._last_is_tail else None)
        if target is None or target.reply.item_id != m.item_id:
            raise ProtocolError(
                "invalid_value",
                f"only the latest assistant item can be truncated, not {m.item_id!r}",
                "item_id",
                m.event_id,
            )
        reply = target.reply
        played_s = m.audio_end_ms / 1000
        if played_s > reply.playout.sent_s + 0.05:
            raise ProtocolError(
                "invalid_value",
                f"audio_end_ms {m.audio_end_ms} is past the {reply.playout.sent_s * 1000:.0f} ms "
                "of audio sent",
                "audio_end_ms",
                m.event_id,
            )
        if self._active is not None:
            active = self._active
            await self._stop(active, "client_cancelled")
            await self._truncate_heard(active, now, played_s)
            self._finish(active, "cancelled", None)
        else:
            await self._truncate_heard(target, now, played_s)
        self._drain_pending = False

    async def _on_response_create(self, m: ev.ResponseCreate) -> None:
        if self._active is not None:
            raise ProtocolError(
                "invalid_value",
                "a response is already in progress: cancel it or wait for response.done",
                None,
                m.event_id,
            )
        if m.instructions:
            raise ProtocolError(
                "unsupported_feature",
                "per-response instructions are not supported: use session.update",
                "response.instructions",
                m.event_id,
            )
        await self._start_reply(None, None, m.output_modalities, m.max_output_tokens)

    async def _on_response_cancel(self, m: ev.ResponseCancel, now: float) -> None:
        active = self._active
        if active is None or (m.response_id and m.response_id != active.reply.response_id):
            raise ProtocolError(
                "invalid_value", "no response in progress to cancel", "response_id", m.event_id
            )
        await self._interrupt("client_cancelled", None)


# why a response ended, for the statuses that say (a cancelled one: its cancel reason)
_STATUS_REASONS: dict[ev.ResponseStatus, ev.CancelReason | None] = {
    "completed": None,
    "failed": None,
    "incomplete": "max_output_tokens",
}


def _padding_s(td: ev.TurnDetection | None) -> float:
    return (td.prefix_padding_ms if td is not None else 300) / 1000


def _has_words(text: str | None) -> bool:
    return bool(text and _WORD.search(text))


def _event_id(m: _Message) -> str | None:
    return getattr(m, "event_id", None)


def _usage(u: ReplyUsage | None) -> ev.Usage | None:
    return None if u is None else ev.Usage(u.input_tokens, u.output_tokens, u.cached_tokens)
