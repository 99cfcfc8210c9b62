"""Turn-taking: who has the floor, decided from VAD frames, ASR text and playout. No I/O.

``TurnTaker.feed(event, now)`` takes one input and returns the decisions it triggers, in order.
The Session feeds, in the order they happen:

- ``VadFrame`` for every frame of caller audio (its speech decision and length);
- ``AsrPartial`` / ``AsrFinal`` for the utterance in progress (ignored when there is none);
- ``Playout(playing)`` when the caller starts / stops hearing assistant audio;
- ``Tick`` on a timer (e.g. every 50 ms), so timeouts fire when no audio arrives.

``now`` is the Session's monotonic clock in seconds; it must never go backwards.

Two clocks. Speech and silence are measured in *audio* seconds (the sum of frame durations), so
decisions do not depend on how the transport batches frames. Each output also carries audio
times (``audio_start``/``audio_end``, seconds since the first frame) so latency metrics start
from the audio, and ``at``, the ``now`` at which the decision was made. When frames stop coming,
the wall time since the last frame counts as silence (a caller whose client stops sending has
stopped talking), so ``Tick`` alone can end a turn.

An utterance's life:

- The assistant silent: ``min_speech_s`` of unbroken speech opens a turn: ``SpeechStarted``.
  After ``pause_s`` of silence: ``Pause`` (a candidate end; the Session may start a preemptive
  reply). Speech confirmed again (``resume_min_speech_s``): ``Resumed`` (drop the preemptive
  reply). After ``end_of_turn_s``: ``EndOfTurn``; earlier (``complete_end_of_turn_s``) when the
  ``AsrFinal`` text looks complete (ends in ``.``, ``?`` or ``!``, see ``_looks_complete``). A
  ``Pause`` always precedes ``EndOfTurn``. Silence counts from where the voice stopped: the
  last speech frame's end less its ``quiet_tail_s``.
- The assistant playing: a frame with a speech probability of ``hold_probability`` or more
  may start an overlap: ``OverlapSuspected`` (stop sending the assistant's audio). A frame
  under it before the overlap is confirmed, or ``overlap_pause_s`` without confirmation:
  ``OverlapDismissed`` (send it again). ``barge_in_min_speech_s`` of speech (only frames with
  probability at least ``playback_min_probability`` count, to resist echo) is an overlap:
  ``OverlapStarted`` (transcribe it, do not announce it yet), from the suspected start. It
  resolves once, as either
  ``BargeIn`` then ``SpeechStarted`` (stop the assistant; the speech is now a normal turn), or
  ``Backchannel(text)`` (an acknowledgement, or a sound with no words: not a turn; keep talking).
  With ``barge_in="confirm"`` it is a barge-in as soon as the transcript holds words that are not
  a backchannel phrase, or the speech lasts longer than ``backchannel_max_s``; it is a
  backchannel once ``overlap_pause_s`` of silence follows a complete backchannel phrase (or an empty
  final transcript), or ``end_of_turn_s`` of silence follows whatever was heard.
  With ``barge_in="onset"`` it is a barge-in at once unless the text heard so far (ASR fed during
  the onset) is already a backchannel phrase; then the ``confirm`` rules decide.
  If playout stops before the overlap resolves, the speech becomes a turn: ``SpeechStarted``.
- The caller resuming after a ``Pause`` while a preemptive reply is playing: ``BargeIn`` then
  ``Resumed`` (the caller is continuing their own turn, so no backchannel hold).
- After ``BargeIn`` the assistant counts as silent; the next ``Playout(True)`` starts a new reply.
- ``NoInput`` once when the caller has said nothing for ``no_input_s`` while the assistant was
  silent (wall clock; re-armed by a finished turn or by playout stopping).

The trade-off in ``barge_in``: ``confirm`` lets "uh-huh" through but delays a real barge-in
until the ASR shows a non-backchannel word or the speech outlasts ``backchannel_max_s`` (an
interjection whose first word is "yeah" or "okay" waits the longest); ``onset`` stops the
assistant ``barge_in_min_speech_s`` after onset but interrupts on most acknowledgements, since
the ASR rarely has words that early.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DEFAULT_BACKCHANNELS",
    "AsrFinal",
    "AsrPartial",
    "Backchannel",
    "BargeIn",
    "EndOfTurn",
    "NoInput",
    "OverlapDismissed",
    "OverlapStarted",
    "OverlapSuspected",
    "Pause",
    "Playout",
    "Resumed",
    "SpeechStarted",
    "Tick",
    "TurnConfig",
    "TurnEvent",
    "TurnInput",
    "TurnState",
    "TurnTaker",
    "VadFrame",
]

_EPS = 1e-9  # frame durations are summed in floating point; 10 x 0.02 must reach 0.2

DEFAULT_BACKCHANNELS: tuple[str, ...] = (
    "uh-huh", "mm-hmm", "mhm", "mm", "hmm", "yeah", "yes", "yep", "yup", "ok", "okay",
    "right", "sure", "got it", "i see", "alright", "all right", "cool", "thanks", "thank you",
    "uh", "um", "ah", "oh", "huh",  # ASR often hears an "uh-huh" as its first half
)  # fmt: skip


@dataclass(slots=True)
class TurnConfig:
    """Thresholds, in seconds of audio unless stated.

    min_speech_s:           unbroken speech that opens a turn; shorter runs (clicks, noise
                            bursts) are ignored.
    resume_min_speech_s:    unbroken speech that resumes a turn after a Pause: shorter than
                            ``min_speech_s``, as a last short word after a hesitation ("a good
                            ... book?") may hold under 0.1 s of VAD speech and would otherwise
                            be dropped (a reply to "a good?").
    pause_s:                silence that makes a candidate end of turn (``Pause``).
    overlap_pause_s:        silence that ends speech over the assistant, whose transcript then
                            tells a backchannel from a barge-in; longer than ``pause_s`` so a
                            two-part acknowledgement ("uh huh") is heard as one.
    end_of_turn_s:          silence that ends the turn.
    complete_end_of_turn_s: silence that ends the turn when the final transcript looks
                            complete (two different words or more, terminal punctuation, no
                            dangling article or conjunction); None disables the early end.
    barge_in:               "confirm" (hold until it is clearly not a backchannel) or "onset".
    hold_probability:       a frame over the assistant this likely to be speech holds its audio
                            until the speech is confirmed and decided, or dismissed; None: the
                            audio is held once the overlap is confirmed.
    barge_in_min_speech_s:  unbroken speech over the assistant before it counts as an overlap.
    backchannel_max_s:      the longest an acknowledgement may last (onset to last speech).
    backchannels:           phrases that do not interrupt, alone or repeated ("yeah yeah").
    playback_min_probability: while the assistant plays, a speech frame also needs at least
                            this VAD probability (raise it where the assistant's echo leaks in).
    no_input_s:             wall-clock seconds without caller speech before ``NoInput``;
                            None disables it.
    """

    min_speech_s: float = 0.2
    resume_min_speech_s: float = 0.064  # two Silero frames: noise rarely holds it that long
    pause_s: float = 0.15  # with the final at 50 ms of silence: see VoiceConfig
    overlap_pause_s: float = 0.25
    end_of_turn_s: float = 0.8
    complete_end_of_turn_s: float | None = 0.3
    barge_in: Literal["confirm", "onset"] = "confirm"
    # one Silero frame, under its speech threshold (0.5): the first frames of a word lag its
    # onset (a soft one, or a fricative as in "stop": 0.11, 0.18, 0.49, 0.90). Over 30 onsets
    # (Piper and recordings, 8 frame alignments each) the first frame at 0.3 ends 43 ms after
    # the onset at p50, 146 p95; at 0.5 51 and 174; three frames at 0.5, 115 and 238. Silero
    # gave no frame of 4 minutes of synthetic noise (white, pink, hum, clicks, typing) 0.3.
    hold_probability: float | None = 0.3
    # three Silero frames: an overlap is this much speech, then the transcript decides. A/B,
    # 12 interjections each: onset -> paused p50 142 vs 202 ms (0.15), p95 222 vs 281 (when
    # this also held the audio); backchannels alike (1 of 10 cut in both)
    barge_in_min_speech_s: float = 0.096
    backchannel_max_s: float = 0.8
    backchannels: tuple[str, ...] = DEFAULT_BACKCHANNELS
    playback_min_probability: float = 0.0
    no_input_s: float | None = None

    def __post_init__(self) -> None:
        self.backchannels = tuple(self.backchannels)  # TOML gives a list
        for name in (
            "min_speech_s", "resume_min_speech_s", "pause_s", "overlap_pause_s",
            "barge_in_min_speech_s", "backchannel_max_s",
        ):  # fmt: skip
            if not getattr(self, name) > 0:
                raise ValueError(f"turns.{name} must be positive, got {getattr(self, name)}")
        if not self.pause_s <= self.end_of_turn_s:
            raise ValueError("turns.end_of_turn_s must be at least pause_s")
        early = self.complete_end_of_turn_s
        if early is not None and not self.pause_s <= early <= self.end_of_turn_s:
            raise ValueError("turns.complete_end_of_turn_s must lie in [pause_s, end_of_turn_s]")
        if self.barge_in not in ("confirm", "onset"):
            raise ValueError(f"turns.barge_in must be 'confirm' or 'onset', not {self.barge_in!r}")
        if self.hold_probability is not None and not 0.0 < self.hold_probability <= 1.0:
            raise ValueError("turns.hold_probability must be in (0, 1] (or None)")
        if self.barge_in_min_speech_s > self.backchannel_max_s:
            raise ValueError("turns.barge_in_min_speech_s must not exceed backchannel_max_s")
        if not all(_words(phrase) for phrase in self.backchannels):
            raise ValueError("turns.backchannels: every phrase needs at least one word")
        if not 0.0 <= self.playback_min_probability <= 1.0:
            raise ValueError("turns.playback_min_probability must be in [0, 1]")
        if self.no_input_s is not None and not self.no_input_s > 0:
            raise ValueError("turns.no_input_s must be positive (or None)")


# ---- inputs -------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class VadFrame:
    """One frame of caller audio: the VAD's decision and probability, and its length.

    ``quiet_tail_s``: for a speech frame, how much audio before its end is already quiet (the
    VAD's hangover, read from the level: ``audio.vad.SpeechTail``); the speech is taken to end
    that much earlier, so silence timers start where the voice stopped.
    """

    is_speech: bool
    probability: float
    duration_s: float
    quiet_tail_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.duration_s > 0:
            raise ValueError(f"VadFrame.duration_s must be positive, got {self.duration_s}")
        if not 0.0 <= self.quiet_tail_s <= self.duration_s:
            raise ValueError(
                f"VadFrame.quiet_tail_s must be in [0, duration_s], got {self.quiet_tail_s}"
            )
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"VadFrame.probability must be in [0, 1], got {self.probability}")


@dataclass(slots=True, frozen=True)
class AsrPartial:
    """The transcript so far of the utterance in progress (replaces the previous one)."""

    text: str


@dataclass(slots=True, frozen=True)
class AsrFinal:
    """The transcript of the utterance up to its latest pause (no more words expected)."""

    text: str


@dataclass(slots=True, frozen=True)
class Playout:
    """The caller started (True) or stopped (False) hearing assistant audio."""

    playing: bool


@dataclass(slots=True, frozen=True)
class Tick:
    """Time passed; lets timeouts fire while no audio arrives."""


TurnInput = VadFrame | AsrPartial | AsrFinal | Playout | Tick

# ---- outputs: ``at`` is the decision time (``now``), audio_* are seconds of caller audio ----


@dataclass(slots=True, frozen=True)
class SpeechStarted:
    """A caller turn began; its speech starts at ``audio_start``."""

    at: float
    audio_start: float


@dataclass(slots=True, frozen=True)
class OverlapSuspected:
    """Speech over the assistant may be starting: hold its audio. ``OverlapStarted`` (or a
    ``BargeIn``) or ``OverlapDismissed`` follows."""

    at: float
    audio_start: float


@dataclass(slots=True, frozen=True)
class OverlapDismissed:
    """The suspected overlap was too short to count: the assistant's audio goes on."""

    at: float


@dataclass(slots=True, frozen=True)
class OverlapStarted:
    """The caller speaks over the assistant; BargeIn or Backchannel will follow."""

    at: float
    audio_start: float


@dataclass(slots=True, frozen=True)
class Pause:
    """A candidate end of turn: silence since ``audio_end``."""

    at: float
    audio_end: float


@dataclass(slots=True, frozen=True)
class Resumed:
    """Speech came back after a Pause, from ``audio_start``; the turn goes on."""

    at: float
    audio_start: float


@dataclass(slots=True, frozen=True)
class EndOfTurn:
    """The turn is over; ``early`` when decided on a complete-looking final transcript."""

    at: float
    audio_start: float
    audio_end: float
    early: bool


@dataclass(slots=True, frozen=True)
class BargeIn:
    """Stop the assistant now: the caller's interrupting speech began at ``audio_start``."""

    at: float
    audio_start: float


@dataclass(slots=True, frozen=True)
class Backchannel:
    """Speech over the assistant that does not interrupt it ("" when no words were heard)."""

    at: float
    text: str
    audio_start: float
    audio_end: float


@dataclass(slots=True, frozen=True)
class NoInput:
    """The caller has said nothing for ``silent_s`` seconds while the assistant was silent."""

    at: float
    silent_s: float


TurnEvent = (
    SpeechStarted
    | OverlapSuspected
    | OverlapDismissed
    | OverlapStarted
    | Pause
    | Resumed
    | EndOfTurn
    | BargeIn
    | Backchannel
    | NoInput
)
TurnState = Literal["idle", "speaking", "paused", "overlap"]
_Match = Literal["empty", "prefix", "complete", "other"]


@dataclass(slots=True)
class _Utterance:
    start: float  # audio time of its first speech frame
    speech_end: float  # audio time where its speech ended (last speech frame, less its quiet tail)
    overlap: bool  # began over the assistant and not yet resolved
    paused: bool = False


class TurnTaker:
    """The turn-taking state machine; see the module docstring for the rules."""

    __slots__ = (
        "_config",
        "_cue_start",
        "_final",
        "_idle_since",
        "_last_frame_at",
        "_no_input_sent",
        "_now",
        "_phrases",
        "_playing",
        "_pos",
        "_run_start",
        "_suspect_start",
        "_text",
        "_utt",
    )

    def __init__(self, config: TurnConfig | None = None) -> None:
        self._config = config if config is not None else TurnConfig()
        self._phrases = tuple(_words(p) for p in self._config.backchannels)
        self._pos = 0.0  # audio seconds fed so far
        self._now: float | None = None
        self._last_frame_at: float | None = None
        self._playing = False
        self._run_start: float | None = None  # audio start of the current unbroken speech run
        self._cue_start: float | None = None  # audio start of the frames at hold_probability
        self._suspect_start: float | None = None  # of an OverlapSuspected not yet resolved
        self._text = ""  # the latest transcript of the current utterance (or candidate run)
        self._final = False
        self._utt: _Utterance | None = None
        self._idle_since: float | None = None  # wall time the caller's silence began
        self._no_input_sent = False

    @property
    def config(self) -> TurnConfig:
        return self._config

    @property
    def state(self) -> TurnState:
        if self._utt is None:
            return "idle"
        if self._utt.overlap:
            return "overlap"
        return "paused" if self._utt.paused else "speaking"

    @property
    def assistant_playing(self) -> bool:
        """Whether the machine believes the caller is hearing the assistant."""
        return self._playing

    @property
    def audio_time(self) -> float:
        """Seconds of caller audio fed so far (the clock of the events' audio_* fields)."""
        return self._pos

    def feed(self, event: TurnInput, now: float) -> list[TurnEvent]:
        """Consume one input at time ``now``; return the decisions it triggers, in order.

        ValueError if ``now`` is earlier than a previous call's; TypeError for a non-input.
        """
        if self._now is not None and now < self._now:
            raise ValueError(f"time went backwards: {now} < {self._now}")
        if self._idle_since is None:
            self._idle_since = now
        self._now = now
        out: list[TurnEvent] = []
        if isinstance(event, VadFrame):
            self._on_frame(event, now, out)
        elif isinstance(event, AsrPartial | AsrFinal):
            self._on_text(event.text, isinstance(event, AsrFinal), now, out)
        elif isinstance(event, Playout):
            self._on_playout(event.playing, now, out)
        elif not isinstance(event, Tick):
            raise TypeError(f"not a turn-taking input: {event!r}")
        self._check_timers(now, out)
        return out

    # ---- inputs ---------------------------------------------------------------------------

    def _on_frame(self, frame: VadFrame, now: float, out: list[TurnEvent]) -> None:
        c = self._config
        heard = not self._playing or frame.probability >= c.playback_min_probability
        speech = frame.is_speech and heard
        hold = c.hold_probability
        cue = hold is not None and heard and (speech or frame.probability >= hold)
        frame_start = self._pos
        self._pos += frame.duration_s
        self._last_frame_at = now
        self._track_suspicion(cue, frame_start, now, out)
        if not speech:
            self._run_start = None
            return
        if self._run_start is None:
            self._run_start = frame_start
            if self._utt is None:  # a new candidate: forget text heard for an earlier one
                self._text, self._final = "", False
        utt = self._utt
        if utt is None:
            self._maybe_open(now, out)
        elif utt.paused:
            self._maybe_resume(utt, now, out)
        else:  # a final covers audio before this frame
            utt.speech_end = max(utt.speech_end, self._pos - frame.quiet_tail_s)
            self._final = False
            if utt.overlap and self._pos - utt.start > c.backchannel_max_s + _EPS:
                self._barge_in(utt, now, out)
            elif not utt.overlap and self._playing and self._run_reached(c.barge_in_min_speech_s):
                self._playing = False  # assistant audio started over the caller's own turn
                out.append(BargeIn(now, self._run_start))

    def _on_text(self, text: str, final: bool, now: float, out: list[TurnEvent]) -> None:
        if self._utt is None and self._run_start is None:
            return  # no utterance to attach it to (late ASR output)
        self._text, self._final = text, final
        if self._utt is not None and self._utt.overlap and self._match() == "other":
            self._barge_in(self._utt, now, out)

    def _on_playout(self, playing: bool, now: float, out: list[TurnEvent]) -> None:
        if playing == self._playing:
            return
        self._playing = playing
        if playing:
            return
        self._dismiss(now, out)
        if self._utt is None:
            self._idle_since, self._no_input_sent = now, False
        elif self._utt.overlap:  # the assistant finished first: the caller has the floor
            self._utt.overlap = False
            out.append(SpeechStarted(now, self._utt.start))

    # ---- transitions ----------------------------------------------------------------------

    def _track_suspicion(
        self, cue: bool, frame_start: float, now: float, out: list[TurnEvent]
    ) -> None:
        """Hold the assistant at the first frame of a run of cues (frames at
        ``hold_probability``) over it; dismiss at the run's end, or once it has gone
        ``overlap_pause_s`` unconfirmed (then not again in the same run). The frame that
        confirms the overlap (or barges in) resolves it instead."""
        if not cue:
            self._cue_start = None
            self._dismiss(now, out)
            return
        fresh = self._cue_start is None
        if fresh:
            self._cue_start = frame_start
        start, utt = self._suspect_start, self._utt
        if start is not None:
            if _reached(self._pos - start, self._config.overlap_pause_s):
                self._dismiss(now, out)  # a long murmur that Silero never calls speech
        elif fresh and self._playing and (utt is None or utt.paused):
            self._suspect_start = frame_start
            out.append(OverlapSuspected(now, frame_start))

    def _dismiss(self, now: float, out: list[TurnEvent]) -> None:
        if self._suspect_start is not None:
            self._suspect_start = None
            out.append(OverlapDismissed(now))

    def _onset(self) -> float:
        """Where the speech run began, or the suspected overlap it confirms."""
        assert self._run_start is not None
        start, self._suspect_start = self._suspect_start, None
        return self._run_start if start is None else min(start, self._run_start)

    def _maybe_open(self, now: float, out: list[TurnEvent]) -> None:
        c = self._config
        need = c.barge_in_min_speech_s if self._playing else c.min_speech_s
        if self._run_start is None or not self._run_reached(need):
            return
        utt = _Utterance(self._onset(), self._pos, overlap=self._playing)
        self._utt = utt
        if not self._playing:
            out.append(SpeechStarted(now, utt.start))
        elif c.barge_in == "onset" and self._match() not in ("prefix", "complete"):
            self._barge_in(utt, now, out)
        else:
            out.append(OverlapStarted(now, utt.start))
            if self._match() == "other":
                self._barge_in(utt, now, out)

    def _maybe_resume(self, utt: _Utterance, now: float, out: list[TurnEvent]) -> None:
        c = self._config
        need = c.barge_in_min_speech_s if self._playing else c.resume_min_speech_s
        if self._run_start is None or not self._run_reached(need):
            return
        utt.paused, utt.speech_end, self._final = False, self._pos, False
        onset = self._onset()
        if self._playing:  # a preemptive reply is audible: stop it
            self._playing = False
            out.append(BargeIn(now, onset))
        out.append(Resumed(now, onset))

    def _barge_in(self, utt: _Utterance, now: float, out: list[TurnEvent]) -> None:
        utt.overlap, self._playing = False, False
        out += [BargeIn(now, utt.start), SpeechStarted(now, utt.start)]

    def _end_utterance(self, now: float) -> None:
        self._utt, self._text, self._final = None, "", False
        self._idle_since, self._no_input_sent = now, False

    # ---- timers ---------------------------------------------------------------------------

    def _check_timers(self, now: float, out: list[TurnEvent]) -> None:
        stalled = _reached(self._frame_gap(now), self._config.overlap_pause_s)
        if self._suspect_start is not None and stalled:
            self._dismiss(now, out)  # the audio stopped coming: do not hold the assistant on
        utt = self._utt
        if utt is None:
            self._check_no_input(now, out)
            return
        silence = self._silence(utt, now)
        if utt.overlap:
            self._resolve_overlap(utt, silence, now, out)
            return
        c = self._config
        if not utt.paused:
            if not _reached(silence, c.pause_s):
                return
            utt.paused = True
            out.append(Pause(now, utt.speech_end))
        by_silence = _reached(silence, c.end_of_turn_s)
        early = (
            c.complete_end_of_turn_s is not None
            and self._final
            and _looks_complete(self._text)
            and _reached(silence, c.complete_end_of_turn_s)
        )
        if by_silence or early:
            out.append(EndOfTurn(now, utt.start, utt.speech_end, early=not by_silence))
            self._end_utterance(now)

    def _resolve_overlap(
        self, utt: _Utterance, silence: float, now: float, out: list[TurnEvent]
    ) -> None:
        c = self._config
        if not _reached(silence, c.overlap_pause_s):
            return
        match = self._match()
        words_done = match == "complete" or (match == "empty" and self._final)
        if words_done or _reached(silence, c.end_of_turn_s):
            out.append(Backchannel(now, self._text.strip(), utt.start, utt.speech_end))
            self._end_utterance(now)

    def _check_no_input(self, now: float, out: list[TurnEvent]) -> None:
        limit = self._config.no_input_s
        if limit is None or self._playing or self._no_input_sent or self._run_start is not None:
            return
        assert self._idle_since is not None  # set by the first feed
        waited = now - self._idle_since
        if _reached(waited, limit):
            self._no_input_sent = True
            out.append(NoInput(now, waited))

    # ---- measures -------------------------------------------------------------------------

    def _silence(self, utt: _Utterance, now: float) -> float:
        """Silence since the utterance's last speech: audio heard, plus any wall-clock gap
        since the last frame. An unconfirmed speech run (maybe a click) holds the count at
        the run's start; if the run is rejected, the count includes it."""
        heard = self._pos if self._run_start is None else self._run_start
        return max(0.0, heard - utt.speech_end) + self._frame_gap(now)

    def _frame_gap(self, now: float) -> float:
        """Wall-clock seconds since the last frame arrived (0 before the first)."""
        return 0.0 if self._last_frame_at is None else max(0.0, now - self._last_frame_at)

    def _run_reached(self, seconds: float) -> bool:
        return self._run_start is not None and _reached(self._pos - self._run_start, seconds)

    def _match(self) -> _Match:
        """How the current transcript relates to the backchannel phrases."""
        words = _words(self._text)
        if not words:
            return "empty"
        complete, prefix = _segment(words, self._phrases)
        if complete:
            return "complete"
        return "prefix" if prefix and not self._final else "other"


def _reached(value: float, threshold: float) -> bool:
    return value + _EPS >= threshold


_WORD = re.compile(r"[a-z0-9']+")


_HELD = re.compile(r"([a-z])\1{2,}")


def _words(text: str) -> tuple[str, ...]:
    """Lower-case words; hyphens separate ("Mm-hmm." -> ("mm", "hmm")); a letter held longer
    than twice counts twice, as ASR spells a hum any length ("MMMM", "hmmm" -> "mm", "hmm")."""
    return tuple(_WORD.findall(_HELD.sub(r"\1\1", text.lower().replace("-", " "))))


def _segment(words: tuple[str, ...], phrases: tuple[tuple[str, ...], ...]) -> tuple[bool, bool]:
    """(whether ``words`` is a sequence of phrases, whether it is such a sequence followed by
    the start of one more phrase): "yeah okay" is complete, "yeah got" a prefix."""
    n = len(words)
    reach = [True] + [False] * n  # reach[i]: words[:i] is a sequence of whole phrases
    prefix = False
    for i in range(n):
        if not reach[i]:
            continue
        for p in phrases:
            if words[i : i + len(p)] == p:
                reach[i + len(p)] = True
            elif i + len(p) > n and p[: n - i] == words[i:]:
                prefix = True
    return reach[n], prefix


def _looks_complete(text: str) -> bool:
    """Two different words or more ending in a full stop, question or exclamation mark (an
    ellipsis trails off: no), the last not one a sentence cannot end on. One word is not
    enough: Whisper writes a clipped "Stop," or "So," as "Stop." or "So." when it hears nothing
    after it, and may repeat it ("Stop. Stop. Stop.")."""
    t = text.rstrip().rstrip("\"')\u201d\u2019")
    words = _words(t)
    return (
        len(set(words)) >= 2
        and words[-1] not in _DANGLING
        and t.endswith((".", "?", "!"))
        and not t.endswith(("..", "\u2026"))
    )


# Words an utterance does not end on: the caller stopped mid-phrase ("I'd like a.", "and the?").
_DANGLING = frozenset({
    "a", "an", "the", "and", "or", "but", "because", "if", "my", "your", "our", "their",
    "um", "uh", "er", "erm",
})  # fmt: skip
