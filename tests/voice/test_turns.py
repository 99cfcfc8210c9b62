"""Turn-taking on scripted event sequences with a fake clock: exact decisions, in order."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

from voice.turns import (
    AsrFinal,
    AsrPartial,
    Backchannel,
    BargeIn,
    EndOfTurn,
    NoInput,
    OverlapDismissed,
    OverlapStarted,
    OverlapSuspected,
    Pause,
    Playout,
    Resumed,
    SpeechStarted,
    Tick,
    TurnConfig,
    TurnEvent,
    TurnInput,
    TurnTaker,
    VadFrame,
)

FRAME = 0.01  # 10 ms VAD frames, so the scripts' thresholds fall on frame edges: min speech 0.2,
# resume 0.2, pause 0.25, end of turn 0.8, early end 0.4, barge-in min speech 0.15 (and the
# hold then: no OverlapSuspected), backchannel max 0.8
SCRIPTED = {
    "pause_s": 0.25,
    "resume_min_speech_s": 0.2,
    "complete_end_of_turn_s": 0.4,
    "barge_in_min_speech_s": 0.15,
    "hold_probability": None,
}
EARLY_HOLD = {"hold_probability": 0.3}
# the scripts were written for these; the other thresholds are the defaults


def script_config(**kwargs: Any) -> TurnConfig:
    return TurnConfig(**{**SCRIPTED, **kwargs})


def _rounded(event: TurnEvent) -> TurnEvent:
    """Times summed from 10 ms frames, rounded to the microsecond for exact comparison."""
    values: dict[str, Any] = {}
    for f in fields(event):
        v = getattr(event, f.name)
        values[f.name] = round(v, 6) if isinstance(v, float) else v
    return type(event)(**values)


class Script:
    """Feeds a TurnTaker in real time: each frame advances the fake clock by its length."""

    def __init__(self, config: TurnConfig | None = None, now: float = 0.0) -> None:
        self.turns = TurnTaker(config or script_config())
        self.now = now
        self.events: list[TurnEvent] = []

    def feed(self, event: TurnInput) -> Script:
        self.events += [_rounded(e) for e in self.turns.feed(event, self.now)]
        return self

    def frames(
        self, seconds: float, speech: bool, probability: float | None = None, tail: float = 0.0
    ) -> Script:
        """``seconds`` of frames; ``tail``: the last one's quiet tail (the voice stopped early)."""
        p = probability if probability is not None else (1.0 if speech else 0.0)
        n = round(seconds / FRAME)
        for i in range(n):
            self.now += FRAME
            self.feed(VadFrame(speech, p, FRAME, tail if i == n - 1 else 0.0))
        return self

    def speech(self, seconds: float, probability: float | None = None, tail: float = 0.0) -> Script:
        return self.frames(seconds, True, probability, tail)

    def silence(self, seconds: float, probability: float | None = None) -> Script:
        """Frames the VAD calls non-speech; ``probability`` may still reach hold_probability."""
        return self.frames(seconds, False, probability)

    def tick_at(self, now: float) -> Script:
        self.now = now
        return self.feed(Tick())

    def take(self) -> list[TurnEvent]:
        events, self.events = self.events, []
        return events


def playing() -> Script:
    """A script whose assistant is already audible at t=0, then 0.5 s of caller silence."""
    return Script().feed(Playout(True)).silence(0.5)


# ---- the assistant silent -------------------------------------------------------------------


def test_speech_while_assistant_silent_is_a_turn():
    s = Script().silence(0.1).speech(1.0).silence(1.0)
    assert s.take() == [
        SpeechStarted(at=0.3, audio_start=0.1),
        Pause(at=1.35, audio_end=1.1),
        EndOfTurn(at=1.9, audio_start=0.1, audio_end=1.1, early=False),
    ]
    assert s.turns.state == "idle"


def test_pause_then_resume():
    s = Script().speech(0.5).silence(0.3)
    assert s.take() == [SpeechStarted(0.2, 0.0), Pause(0.75, 0.5)]
    assert s.turns.state == "paused"
    s.speech(0.5)  # resumed only once min_speech_s of speech is confirmed
    assert s.take() == [Resumed(at=1.0, audio_start=0.8)]
    assert s.turns.state == "speaking"
    s.silence(1.0)
    assert s.take() == [Pause(1.55, 1.3), EndOfTurn(2.1, 0.0, 1.3, early=False)]


def test_pause_then_end_of_turn_early_on_a_complete_final_transcript():
    s = Script().speech(0.5).silence(0.3)
    assert s.take() == [SpeechStarted(0.2, 0.0), Pause(0.75, 0.5)]
    s.feed(AsrFinal("What time is it?"))  # 0.3 s of silence: under complete_end_of_turn_s
    assert s.take() == []
    s.silence(0.1)
    assert s.take() == [EndOfTurn(0.9, 0.0, 0.5, early=True)]


@pytest.mark.parametrize("text", ["Stop.", "So...", "and then", "Stop. Stop. Stop.", "I'd like a."])
def test_one_word_or_unfinished_transcripts_wait_for_the_full_silence(text):
    s = Script().speech(0.5).silence(0.3)
    s.take()
    s.feed(AsrFinal(text))  # "Stop." may be a clipped "Stop, stop, wait"
    s.silence(0.4)
    assert s.take() == []
    s.silence(0.1)
    assert s.take() == [EndOfTurn(1.3, 0.0, 0.5, early=False)]


def test_default_early_end_comes_at_0_3_s_of_silence():
    s = Script(TurnConfig()).speech(0.5).silence(0.2).feed(AsrFinal("What time is it?"))
    assert s.take() == [SpeechStarted(0.2, 0.0), Pause(0.65, 0.5)]
    s.silence(0.1)
    assert s.take() == [EndOfTurn(0.8, 0.0, 0.5, early=True)]


def test_silence_counts_from_where_the_voice_stopped_inside_the_last_speech_frame():
    s = Script().speech(0.5, tail=0.01).silence(0.3)  # the VAD's last speech frame was quiet
    assert s.take() == [SpeechStarted(0.2, 0.0), Pause(0.74, 0.49)]
    s.feed(AsrFinal("What time is it?")).silence(0.1)
    assert s.take() == [EndOfTurn(0.89, 0.0, 0.49, early=True)]


def test_a_quiet_tail_in_mid_speech_does_not_end_it_early():
    s = Script().speech(0.3, tail=0.01).speech(0.2).silence(0.3)  # more speech followed
    assert s.take() == [SpeechStarted(0.2, 0.0), Pause(0.75, 0.5)]


def test_final_transcript_after_the_early_threshold_ends_the_turn_at_once():
    s = Script().speech(0.5).silence(0.5)
    s.take()
    s.now += 0.01  # the ASR answers between frames
    s.feed(AsrFinal("Book a table."))
    assert s.take() == [EndOfTurn(1.01, 0.0, 0.5, early=True)]


@pytest.mark.parametrize("text", ["I was thinking that", "I was thinking...", "Well,"])
def test_incomplete_final_transcript_waits_for_end_of_turn_s(text):
    s = Script().speech(0.5).silence(0.3).feed(AsrFinal(text)).silence(0.7)
    assert s.take() == [SpeechStarted(0.2, 0.0), Pause(0.75, 0.5), EndOfTurn(1.3, 0.0, 0.5, False)]


def test_partial_transcripts_do_not_end_a_turn_early():
    s = Script().speech(0.5).silence(0.3).feed(AsrPartial("What time is it?")).silence(0.7)
    assert s.take()[-1] == EndOfTurn(1.3, 0.0, 0.5, early=False)


def test_early_end_of_turn_can_be_disabled():
    s = Script(script_config(complete_end_of_turn_s=None))
    s.speech(0.5).silence(0.3).feed(AsrFinal("What time is it?")).silence(0.7)
    assert s.take()[-1] == EndOfTurn(1.3, 0.0, 0.5, early=False)


def test_a_final_transcript_is_void_once_the_caller_resumes():
    s = Script().speech(0.5).silence(0.3).feed(AsrFinal("I want to fly.")).speech(0.3)
    assert s.take() == [SpeechStarted(0.2, 0.0), Pause(0.75, 0.5), Resumed(1.0, 0.8)]
    s.silence(0.5)  # 0.4 s would have ended it early; the final was for the first part only
    assert s.take() == [Pause(1.35, 1.1)]


def test_a_final_transcript_is_void_once_more_speech_follows_it():
    s = Script().speech(0.5).feed(AsrFinal("Book it.")).speech(0.2).silence(0.5)
    assert s.take() == [SpeechStarted(0.2, 0.0), Pause(0.95, 0.7)]  # no early end at 1.1


# ---- noise ------------------------------------------------------------------------------------


def test_noise_bursts_do_not_start_a_turn():
    s = Script().speech(0.1).silence(0.5).speech(0.18).silence(0.5).speech(0.04).silence(2.0)
    assert s.take() == []
    assert s.turns.state == "idle"


def test_exactly_min_speech_starts_a_turn():
    s = Script().silence(0.1).speech(0.2)  # ten 20 ms frames sum to 0.2 only approximately
    assert s.take() == [SpeechStarted(0.3, 0.1)]


def test_a_click_during_a_pause_neither_resumes_nor_delays_the_end_of_turn():
    s = Script().speech(0.5).silence(0.3).speech(0.06).silence(1.0)
    assert s.take() == [
        SpeechStarted(0.2, 0.0),
        Pause(0.75, 0.5),
        EndOfTurn(1.3, 0.0, 0.5, early=False),  # silence counted from 0.5, click included
    ]


def test_a_short_word_after_a_pause_resumes_the_turn():
    # "Can you recommend a good ... book?": the last word is under min_speech_s of speech
    s = Script(script_config(resume_min_speech_s=0.1)).speech(0.5).silence(0.3).speech(0.12)
    assert s.take() == [SpeechStarted(0.2, 0.0), Pause(0.75, 0.5), Resumed(0.9, 0.8)]
    s.silence(1.0)
    assert s.take() == [Pause(1.17, 0.92), EndOfTurn(1.72, 0.0, 0.92, early=False)]


@pytest.mark.parametrize(("run", "resumes"), [(0.05, False), (0.07, True)])
def test_by_default_two_silero_frames_of_speech_resume_a_paused_turn(run, resumes):
    s = Script(TurnConfig()).speech(0.5).silence(0.2).speech(run).silence(0.05)
    assert (Resumed(round(0.7 + 0.07, 6), 0.7) in s.take()) == resumes


def test_asr_text_with_no_utterance_is_ignored():
    s = Script().feed(AsrPartial("hello there")).feed(AsrFinal("hello there."))
    assert s.take() == []
    s = playing().feed(AsrPartial("stop")).speech(0.3)
    assert s.take() == [OverlapStarted(0.65, 0.5)]  # the stale "stop" did not barge in


# ---- the assistant playing: backchannels and barge-in ---------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Uh-huh.", "uh huh", "Mm-hmm.", "Yeah, yeah.", "Okay.", "OK", "got it", "All right.",
        "MMMM.", "Hmmmm", "Uh.",  # how Whisper tiny writes a hum or a clipped uh-huh
    ],
)  # fmt: skip
def test_backchannel_during_playback_does_not_interrupt(text):
    s = playing().speech(0.4).feed(AsrPartial(text)).silence(0.5)
    assert s.take() == [
        OverlapStarted(at=0.65, audio_start=0.5),
        Backchannel(at=1.15, text=text, audio_start=0.5, audio_end=0.9),
    ]
    assert s.turns.assistant_playing
    assert s.turns.state == "idle"


@pytest.mark.parametrize("text", ["Wait", "No", "yeah but", "okay so what", "What?"])
def test_interjection_during_playback_barges_in_with_its_onset_time(text):
    s = playing().speech(0.4).feed(AsrPartial(text)).speech(0.6).silence(1.0)
    assert s.take() == [
        OverlapStarted(0.65, 0.5),
        BargeIn(at=0.9, audio_start=0.5),
        SpeechStarted(at=0.9, audio_start=0.5),
        Pause(1.75, 1.5),
        EndOfTurn(2.3, 0.5, 1.5, early=False),
    ]
    assert not s.turns.assistant_playing


def test_long_speech_over_the_assistant_barges_in_without_a_transcript():
    s = playing().speech(1.0)
    assert s.take() == [
        OverlapStarted(0.65, 0.5),
        BargeIn(1.31, 0.5),  # the first frame past backchannel_max_s (0.8 s from onset)
        SpeechStarted(1.31, 0.5),
    ]


def test_backchannel_word_then_more_words_barges_in():
    s = playing().speech(0.2).feed(AsrPartial("yeah")).speech(0.1)
    assert s.take() == [OverlapStarted(0.65, 0.5)]
    s.feed(AsrPartial("yeah but"))
    assert s.take() == [BargeIn(0.8, 0.5), SpeechStarted(0.8, 0.5)]


def test_partial_prefix_of_a_phrase_waits_for_the_final():
    s = playing().speech(0.3).feed(AsrPartial("got")).silence(0.3)
    assert s.take() == [OverlapStarted(0.65, 0.5)]  # "got" may become "got it"
    s.feed(AsrFinal("Got it."))
    assert s.take() == [Backchannel(1.1, "Got it.", 0.5, 0.8)]


def test_final_that_is_only_part_of_a_phrase_barges_in():
    s = playing().speech(0.3).silence(0.3).feed(AsrFinal("Got"))
    assert s.take() == [
        OverlapStarted(0.65, 0.5),
        BargeIn(1.1, 0.5),
        SpeechStarted(1.1, 0.5),
        Pause(1.1, 0.8),  # already 0.3 s silent: a normal turn from here on
    ]
    s.silence(0.5)
    assert s.take() == [EndOfTurn(1.6, 0.5, 0.8, early=False)]


def test_wordless_sound_over_the_assistant_is_dropped():
    s = playing().speech(0.3).feed(AsrFinal("")).silence(0.3)
    assert s.take() == [OverlapStarted(0.65, 0.5), Backchannel(1.05, "", 0.5, 0.8)]


def test_overlap_with_no_transcript_resolves_after_end_of_turn_s():
    s = playing().speech(0.3).silence(1.0)
    assert s.take() == [OverlapStarted(0.65, 0.5), Backchannel(1.6, "", 0.5, 0.8)]
    assert s.turns.assistant_playing


def test_custom_backchannel_list():
    s = Script(script_config(backchannels=["ja", "genau"])).feed(Playout(True)).silence(0.5)
    s.speech(0.3).feed(AsrPartial("Genau."))
    assert s.take() == [OverlapStarted(0.65, 0.5)]
    s.feed(AsrPartial("yeah"))
    assert s.take() == [BargeIn(0.8, 0.5), SpeechStarted(0.8, 0.5)]


def test_onset_mode_barges_in_at_confirmed_onset():
    s = Script(script_config(barge_in="onset")).feed(Playout(True)).silence(0.5).speech(0.4)
    assert s.take() == [BargeIn(0.65, 0.5), SpeechStarted(0.65, 0.5)]


def test_onset_mode_lets_a_backchannel_through_if_the_asr_already_heard_it():
    s = Script(script_config(barge_in="onset")).feed(Playout(True)).silence(0.5)
    s.speech(0.1).feed(AsrPartial("Yeah.")).speech(0.3).silence(0.5)
    assert s.take() == [OverlapStarted(0.65, 0.5), Backchannel(1.15, "Yeah.", 0.5, 0.9)]


def test_noise_bursts_over_the_assistant_are_ignored():
    s = playing().speech(0.1).silence(0.2).speech(0.14).silence(1.0)
    assert s.take() == []
    assert s.turns.assistant_playing


def test_echo_guard_ignores_low_probability_speech_only_during_playback():
    s = Script(script_config(playback_min_probability=0.6)).feed(Playout(True))
    s.speech(1.0, probability=0.5)
    assert s.take() == []
    s.feed(Playout(False)).speech(0.3, probability=0.5)
    assert s.take() == [SpeechStarted(1.2, 1.0)]


def test_speech_over_the_assistant_holds_it_before_the_overlap_is_confirmed():
    s = Script(script_config(**EARLY_HOLD)).feed(Playout(True)).silence(0.5).speech(0.3)
    assert s.take() == [OverlapSuspected(0.51, 0.5), OverlapStarted(0.65, 0.5)]
    assert s.turns.state == "overlap"
    s.feed(AsrPartial("Stop"))
    assert s.take() == [BargeIn(0.8, 0.5), SpeechStarted(0.8, 0.5)]


def test_a_frame_under_the_speech_threshold_holds_and_the_overlap_starts_there():
    s = Script(script_config(**EARLY_HOLD)).feed(Playout(True)).silence(0.5)
    s.silence(0.02, probability=0.2).silence(0.03, probability=0.4)  # "s..."
    assert s.take() == [OverlapSuspected(0.53, 0.52)]
    s.speech(0.15)  # "...top": the overlap, from the first frame that held the assistant
    assert s.take() == [OverlapStarted(0.7, 0.52)]


@pytest.mark.parametrize("burst", [0.01, 0.1, 0.14])
def test_a_burst_too_short_to_be_an_overlap_is_dismissed_at_its_end(burst):
    s = Script(script_config(**EARLY_HOLD)).feed(Playout(True)).silence(0.5)
    s.speech(burst).silence(0.02)
    end = round(0.5 + burst + 0.01, 6)
    assert s.take() == [OverlapSuspected(0.51, 0.5), OverlapDismissed(end)]
    assert s.turns.state == "idle" and s.turns.assistant_playing
    s.silence(0.5).speech(0.3)  # a later interjection is suspected and confirmed afresh
    start = round(end + 0.01 + 0.5, 6)
    assert s.take() == [
        OverlapSuspected(round(start + 0.01, 6), start),
        OverlapStarted(round(start + 0.15, 6), start),
    ]


def test_a_murmur_that_never_becomes_speech_is_dismissed_once():
    s = Script(script_config(**EARLY_HOLD)).feed(Playout(True)).silence(0.5)
    s.silence(1.0, probability=0.4)
    assert s.take() == [OverlapSuspected(0.51, 0.5), OverlapDismissed(0.75)]  # overlap_pause_s
    s.speech(0.2)  # speech in the same run: an overlap, held from its confirmation
    assert s.take() == [OverlapStarted(1.65, 1.5)]


def test_a_suspected_overlap_is_dismissed_when_playout_stops_or_frames_stop():
    s = Script(script_config(**EARLY_HOLD)).feed(Playout(True)).silence(0.5).speech(0.05)
    s.feed(Playout(False))
    assert s.take() == [OverlapSuspected(0.51, 0.5), OverlapDismissed(0.55)]
    s.speech(0.2)  # the same speech goes on as the caller's own turn
    assert s.take() == [SpeechStarted(0.7, 0.5)]

    s = Script(script_config(**EARLY_HOLD)).feed(Playout(True)).silence(0.5).speech(0.05)
    s.tick_at(0.7)  # the client stopped sending audio mid-burst
    assert s.take() == [OverlapSuspected(0.51, 0.5)]
    s.tick_at(0.8)  # overlap_pause_s without a frame
    assert s.take() == [OverlapDismissed(0.8)]


def test_no_hold_while_the_assistant_is_silent_or_the_caller_has_the_floor():
    s = Script(script_config(**EARLY_HOLD)).speech(0.5).feed(Playout(True)).speech(0.1)
    assert s.take() == [SpeechStarted(0.2, 0.0), BargeIn(0.51, 0.0)]  # as without the hold
    s = Script(script_config(**EARLY_HOLD)).speech(0.1).silence(0.5, probability=0.4)
    assert s.take() == []


def test_echo_guard_applies_to_the_hold():
    s = Script(script_config(playback_min_probability=0.6, **EARLY_HOLD)).feed(Playout(True))
    s.speech(0.5, probability=0.5).silence(0.5, probability=0.55)
    assert s.take() == []


def test_resuming_over_a_preemptive_reply_holds_it_at_once():
    s = Script(script_config(**EARLY_HOLD)).speech(0.5).silence(0.3).feed(Playout(True))
    s.speech(0.05).silence(0.05)  # a click: the reply plays on
    assert s.take() == [
        SpeechStarted(0.2, 0.0), Pause(0.75, 0.5), OverlapSuspected(0.81, 0.8),
        OverlapDismissed(0.86),
    ]  # fmt: skip
    s.silence(0.02, probability=0.4).speech(0.2)
    assert s.take() == [OverlapSuspected(0.91, 0.9), BargeIn(1.07, 0.9), Resumed(1.07, 0.9)]


def test_playout_ending_during_an_overlap_hands_the_caller_the_turn():
    s = playing().speech(0.3)
    assert s.take() == [OverlapStarted(0.65, 0.5)]
    s.feed(Playout(False))
    assert s.take() == [SpeechStarted(0.8, 0.5)]
    s.speech(0.5).silence(1.0)
    assert s.take() == [Pause(1.55, 1.3), EndOfTurn(2.1, 0.5, 1.3, early=False)]


# ---- preemptive replies -----------------------------------------------------------------------


def test_resumed_while_a_preemptive_reply_plays_barges_in_at_once():
    s = Script().speech(0.5).silence(0.3).feed(Playout(True)).speech(0.4)
    assert s.take() == [
        SpeechStarted(0.2, 0.0),
        Pause(0.75, 0.5),
        BargeIn(0.95, 0.8),  # barge_in_min_speech_s, no backchannel hold: it is their turn
        Resumed(0.95, 0.8),
    ]
    assert not s.turns.assistant_playing
    s.silence(1.0)
    assert s.take() == [Pause(1.45, 1.2), EndOfTurn(2.0, 0.0, 1.2, early=False)]


def test_end_of_turn_while_a_preemptive_reply_plays():
    s = Script().speech(0.5).silence(0.3).feed(Playout(True)).silence(0.5)
    assert s.take() == [SpeechStarted(0.2, 0.0), Pause(0.75, 0.5), EndOfTurn(1.3, 0.0, 0.5, False)]
    assert s.turns.assistant_playing


def test_assistant_audio_starting_over_the_callers_speech_is_stopped():
    s = Script().speech(0.5).feed(Playout(True)).speech(0.1)
    assert s.take() == [SpeechStarted(0.2, 0.0), BargeIn(0.51, 0.0)]
    assert not s.turns.assistant_playing


# ---- time -------------------------------------------------------------------------------------


def test_ticks_without_frames_end_the_turn():
    s = Script().tick_at(0.0)
    assert s.take() == []
    s.speech(0.5).tick_at(0.6)  # the client stopped sending audio
    assert s.take() == [SpeechStarted(0.2, 0.0)]
    s.tick_at(0.75)
    assert s.take() == [Pause(0.75, 0.5)]
    s.tick_at(1.0).tick_at(1.3).tick_at(5.0)
    assert s.take() == [EndOfTurn(1.3, 0.0, 0.5, early=False)]


def test_a_late_tick_emits_pause_and_end_of_turn_in_order():
    s = Script().speech(0.5).tick_at(3.0)
    assert s.take() == [SpeechStarted(0.2, 0.0), Pause(3.0, 0.5), EndOfTurn(3.0, 0.0, 0.5, False)]


def test_frames_delivered_in_a_burst_are_timed_by_their_audio():
    s = Script(now=2.0)
    for is_speech, count in ((True, 50), (False, 100)):
        for _ in range(count):
            s.feed(VadFrame(is_speech, float(is_speech), FRAME))
    s.feed(Tick())
    assert s.take() == [SpeechStarted(2.0, 0.0), Pause(2.0, 0.5), EndOfTurn(2.0, 0.0, 0.5, False)]
    assert s.turns.audio_time == pytest.approx(1.5)


def test_long_silence_gives_one_no_input_per_idle_period():
    s = Script(script_config(no_input_s=5.0))
    for t in range(13):
        s.tick_at(float(t))
    assert s.take() == [NoInput(at=5.0, silent_s=5.0)]
    s.speech(0.5).silence(1.0)  # audio time starts at 0 while the clock reads 12
    assert s.take() == [
        SpeechStarted(12.2, 0.0),
        Pause(12.75, 0.5),
        EndOfTurn(13.3, 0.0, 0.5, False),
    ]
    s.tick_at(18.0).tick_at(18.3).tick_at(25.0)
    assert s.take() == [NoInput(18.3, 5.0)]
    s.feed(Playout(True)).tick_at(40.0)  # no NoInput while the assistant talks
    s.feed(Playout(False)).tick_at(44.0).tick_at(45.0)
    assert s.take() == [NoInput(45.0, 5.0)]


def test_no_input_is_off_by_default():
    s = Script()
    for t in range(100):
        s.tick_at(float(t))
    assert s.take() == []


def test_time_must_not_go_backwards():
    turns = TurnTaker()
    turns.feed(Tick(), 1.0)
    assert turns.feed(Tick(), 1.0) == []  # identical timestamps are fine
    with pytest.raises(ValueError, match="backwards"):
        turns.feed(Tick(), 0.5)


def test_unknown_inputs_are_rejected():
    with pytest.raises(TypeError, match="turn-taking input"):
        TurnTaker().feed("frame", 0.0)  # type: ignore[arg-type]


def test_redundant_playout_events_change_nothing():
    s = Script(script_config(no_input_s=5.0)).tick_at(0.0).tick_at(3.0)
    s.feed(Playout(False)).tick_at(5.0)  # not playing: does not restart the no-input timer
    assert s.take() == [NoInput(5.0, 5.0)]
    s.feed(Playout(True)).feed(Playout(True)).silence(0.5).speech(0.3)
    assert s.take() == [OverlapStarted(5.65, 0.5)]


# ---- inputs and config ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_speech_s": 0},
        {"pause_s": -0.1},
        {"resume_min_speech_s": 0},
        {"pause_s": 1.0, "end_of_turn_s": 0.5},
        {"complete_end_of_turn_s": 0.1},
        {"complete_end_of_turn_s": 2.0},
        {"barge_in": "never"},
        {"barge_in_min_speech_s": 0.0},
        {"barge_in_min_speech_s": 1.0, "backchannel_max_s": 0.5},
        {"hold_probability": 0.0},
        {"hold_probability": 1.5},
        {"backchannels": ("yeah", "")},
        {"backchannels": ("...",)},
        {"playback_min_probability": 1.5},
        {"no_input_s": 0},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="turns"):
        TurnConfig(**kwargs)


def test_config_accepts_a_list_of_backchannels_from_toml():
    assert TurnConfig(backchannels=["yeah", "sure"]).backchannels == ("yeah", "sure")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "args",
    [
        (True, 1.0, 0.0),
        (True, 1.0, -0.02),
        (True, 1.5, 0.02),
        (True, 1.0, 0.02, 0.03),
        (True, 1.0, 0.02, -0.01),
    ],
)
def test_vad_frame_rejects_bad_values(args):
    with pytest.raises(ValueError, match="VadFrame"):
        VadFrame(*args)
