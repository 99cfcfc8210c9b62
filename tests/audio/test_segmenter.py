"""SpeechSegmenter: exact event sequences from synthetic frame decisions."""

from __future__ import annotations

import pytest

from audio.segmenter import SegmenterConfig, SpeechEnd, SpeechSegmenter, SpeechStart, segment

# 10 ms frames at 16 kHz keep the arithmetic readable: every number below is frames * 160.
F = 160
CFG = SegmenterConfig(start_ms=30, end_ms=50, pad_start_ms=20, pad_end_ms=10)


def decisions(pattern: str) -> list[bool]:
    return [c == "#" for c in pattern]


def test_region_opens_after_start_ms_and_closes_after_end_ms() -> None:
    seg = SpeechSegmenter(CFG)
    events = [(i, e) for i, d in enumerate(decisions("....####......")) for e in seg.push(d, F)]
    # speech frames 4..7; opens on the 3rd speech frame (index 6); 5 silent frames close it (12).
    assert events == [
        (6, SpeechStart(start=(4 - 2) * F, detected_at=7 * F)),
        (12, SpeechEnd(start=2 * F, end=(8 + 1) * F, detected_at=13 * F)),
    ]


def test_short_bursts_and_short_gaps_are_ignored() -> None:
    #            burst      region with a 4-frame gap inside       burst
    pattern = "..##....######....####.......#...."
    assert segment(decisions(pattern), F, CFG) == [((8 - 2) * F, (22 + 1) * F)]


def test_start_padding_stops_at_zero_and_at_the_previous_region() -> None:
    cfg = SegmenterConfig(start_ms=20, end_ms=30, pad_start_ms=100, pad_end_ms=0)
    assert segment(decisions("##....##...."), F, cfg) == [(0, 2 * F), (2 * F, 8 * F)]


def test_finish_closes_an_open_region_at_the_stream_end() -> None:
    seg = SpeechSegmenter(CFG)
    for d in decisions("..######.."):
        seg.push(d, F)
    assert seg.in_speech
    assert seg.finish() == [SpeechEnd(start=0, end=9 * F, detected_at=10 * F)]
    assert not seg.in_speech and seg.finish() == []


def test_frames_of_varying_size_count_in_samples() -> None:
    seg = SpeechSegmenter(SegmenterConfig(start_ms=30, end_ms=30, pad_start_ms=0, pad_end_ms=0))
    assert seg.push(True, 320) == []
    assert seg.push(True, 160) == [SpeechStart(start=0, detected_at=480)]
    assert seg.push(False, 480) == [SpeechEnd(start=0, end=480, detected_at=960)]
    assert seg.position == 960


def test_reset_starts_a_new_stream() -> None:
    seg = SpeechSegmenter(CFG)
    for d in decisions("#####"):
        seg.push(d, F)
    seg.reset()
    assert seg.position == 0 and not seg.in_speech and seg.finish() == []


def test_defaults_are_valid_and_bad_configs_are_rejected() -> None:
    cfg = SegmenterConfig()
    assert cfg.samples(cfg.start_ms) == 3200
    with pytest.raises(ValueError, match="pad_end_ms"):
        SegmenterConfig(end_ms=100, pad_end_ms=200)
    with pytest.raises(ValueError, match="positive"):
        SegmenterConfig(start_ms=0)
    with pytest.raises(ValueError, match=">= 0"):
        SegmenterConfig(pad_start_ms=-1)
    with pytest.raises(ValueError, match="n_samples"):
        SpeechSegmenter().push(True, 0)
