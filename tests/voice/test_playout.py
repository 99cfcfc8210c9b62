"""Playout: what the caller has heard, from send times and chunk text. Pure: a fake clock."""

from __future__ import annotations

import pytest

from voice.playout import Playout

TEXT = "Hello there, my friend. The weather is lovely today."
#       0         1         2         3         4
#       0123456789012345678901234567890123456789012345678901


def two_chunks() -> Playout:
    p = Playout()
    p.begin_chunk(0, 23)  # "Hello there, my friend."
    p.sent(1.0, now=10.0)
    p.sent(1.0, now=10.1)  # sent ahead: the client buffers it
    p.begin_chunk(23, len(TEXT))  # " The weather is lovely today."
    p.sent(2.0, now=10.2)
    return p


def test_played_follows_real_time_from_the_first_send():
    p = two_chunks()
    assert p.sent_s == 4.0
    assert p.played_s(10.0) == 0.0
    assert p.played_s(11.5) == pytest.approx(1.5)
    assert p.played_s(20.0) == 4.0
    assert p.buffered_s(13.0) == pytest.approx(1.0)
    assert not p.drained(13.99) and p.drained(14.0)


def test_a_starved_client_waits_for_audio():
    p = Playout()
    p.begin_chunk(0, 5)
    p.sent(0.5, now=0.0)
    assert p.played_s(1.0) == pytest.approx(0.5)  # played it all, then waits
    p.sent(0.5, now=2.0)  # the TTS was late: playback stalled from 0.5 s to 2.0 s
    assert p.played_s(2.25) == pytest.approx(0.75)
    assert not p.drained(2.49) and p.drained(2.5)


def test_a_paused_player_keeps_its_buffer():
    p = two_chunks()  # 4 s sent from 10.0 on
    p.pause(11.0)
    assert p.paused
    assert p.played_s(11.0) == pytest.approx(1.0)
    assert p.played_s(30.0) == pytest.approx(1.0)  # nothing plays while paused
    assert not p.drained(30.0)
    p.pause(12.0)  # already paused: the first pause counts
    p.resume(13.0)
    assert not p.paused
    assert p.played_s(13.5) == pytest.approx(1.5)  # on from where it stopped
    assert p.drained(16.0) and not p.drained(15.99)
    p.resume(20.0)  # not paused: nothing changes
    assert p.played_s(20.0) == 4.0


def test_audio_sent_to_a_paused_player_waits_for_the_resume():
    p = Playout()
    p.begin_chunk(0, 5)
    p.sent(0.5, now=0.0)
    p.pause(1.0)  # it had run dry at 0.5
    p.sent(0.5, now=1.5)
    assert p.played_s(3.0) == pytest.approx(0.5)
    p.resume(4.0)
    assert p.played_s(4.25) == pytest.approx(0.75)
    assert p.drained(4.5)


def test_heard_text_ends_at_a_word():
    p = two_chunks()
    assert p.heard_chars(TEXT, 0.0) == 0
    assert p.heard_chars(TEXT, 2.0) == 23  # the first chunk whole
    assert p.heard_chars(TEXT, 4.0) == len(TEXT)
    # halfway through the second chunk: words whose end lies in its first half
    cut = p.heard_chars(TEXT, 3.0)
    assert TEXT[:cut] == "Hello there, my friend. The weather"
    # within the first chunk, proportionally
    cut = p.heard_chars(TEXT, 1.2)
    assert TEXT[:cut] == "Hello there,"
    assert TEXT[cut - 1] != " " and (cut == len(TEXT) or not TEXT[cut].isalnum())


def test_heard_never_decreases_with_playout():
    p = two_chunks()
    cuts = [p.heard_chars(TEXT, t / 10) for t in range(0, 41)]
    assert cuts == sorted(cuts)


def test_misuse_is_refused():
    p = Playout()
    with pytest.raises(ValueError):
        p.sent(0.1, now=0.0)
    with pytest.raises(ValueError):
        p.begin_chunk(5, 2)
    p.begin_chunk(0, 1)
    with pytest.raises(ValueError):
        p.sent(-1.0, now=0.0)
