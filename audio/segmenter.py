"""Speech regions from per-frame VAD decisions: hysteresis in time, no I/O, no clock.

Feed one decision per frame with the frame's length in samples; positions are sample offsets
from the start of the stream (frame sizes may vary between calls). The rule:

- a region opens once speech frames have run for ``start_ms`` without a break; it starts at the
  first frame of that run, moved earlier by ``pad_start_ms`` (never before 0 nor before the
  previous region's end);
- an open region closes once non-speech frames have run for ``end_ms``; it ends where the last
  speech frame ended, moved later by ``pad_end_ms`` (at most ``end_ms``, so the end is known when
  the region closes).

``push`` returns ``SpeechStart`` when a region opens and ``SpeechEnd`` when it closes; each event
carries ``detected_at``, the offset at which the decision was made (the latency of the rule).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class SegmenterConfig:
    """Hysteresis settings, in milliseconds of audio at ``sample_rate``."""

    sample_rate: int = 16000
    # 200 ms of unbroken speech rejects clicks and WebRTC's start-of-stream false alarm (~100 ms)
    # while keeping barge-in prompt; the region still starts at the run's first frame.
    start_ms: int = 200  # continuous speech needed to open a region
    end_ms: int = 500  # continuous non-speech needed to close it (spans pauses between words)
    pad_start_ms: int = 30
    pad_end_ms: int = 30

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.start_ms <= 0 or self.end_ms <= 0:
            raise ValueError(
                f"start_ms and end_ms must be positive, got {self.start_ms}, {self.end_ms}"
            )
        if self.pad_start_ms < 0 or self.pad_end_ms < 0:
            raise ValueError("pad_start_ms and pad_end_ms must be >= 0")
        if self.pad_end_ms > self.end_ms:
            raise ValueError(
                f"pad_end_ms ({self.pad_end_ms}) must not exceed end_ms ({self.end_ms})"
            )

    def samples(self, ms: int) -> int:
        """``ms`` milliseconds in samples at ``sample_rate`` (rounded)."""
        return round(ms * self.sample_rate / 1000)


@dataclass(slots=True, frozen=True)
class SpeechStart:
    """A region opened; it begins at sample ``start``. Decided at sample ``detected_at``."""

    start: int
    detected_at: int


@dataclass(slots=True, frozen=True)
class SpeechEnd:
    """A region closed: speech over samples ``[start, end)``. Decided at ``detected_at``."""

    start: int
    end: int
    detected_at: int


SegmenterEvent = SpeechStart | SpeechEnd


class SpeechSegmenter:
    """Streaming hysteresis over frame decisions; see the module docstring for the rule."""

    __slots__ = (
        "_config",
        "_end_n",
        "_floor",
        "_in_speech",
        "_last_speech_end",
        "_pad_end_n",
        "_pad_start_n",
        "_pos",
        "_run",
        "_run_start",
        "_start",
        "_start_n",
    )

    def __init__(self, config: SegmenterConfig | None = None) -> None:
        self._config = config if config is not None else SegmenterConfig()
        c = self._config
        self._start_n = c.samples(c.start_ms)
        self._end_n = c.samples(c.end_ms)
        self._pad_start_n = c.samples(c.pad_start_ms)
        self._pad_end_n = c.samples(c.pad_end_ms)
        self.reset()

    @property
    def config(self) -> SegmenterConfig:
        return self._config

    @property
    def position(self) -> int:
        """Samples consumed so far (end offset of the last pushed frame)."""
        return self._pos

    @property
    def in_speech(self) -> bool:
        """Whether a region is open."""
        return self._in_speech

    def reset(self) -> None:
        """Start a new stream at offset 0."""
        self._pos = 0
        self._in_speech = False
        self._run = 0  # length of the current run of speech (closed) or non-speech (open)
        self._run_start = 0  # first sample of the current speech run, while closed
        self._start = 0  # start of the open region
        self._last_speech_end = 0  # end of the last speech frame, while open
        self._floor = 0  # regions never start before the previous one ended

    def push(self, is_speech: bool, n_samples: int) -> list[SegmenterEvent]:
        """Consume one frame of ``n_samples`` samples; return the events it triggers (0 or 1)."""
        if n_samples <= 0:
            raise ValueError(f"n_samples must be positive, got {n_samples}")
        frame_start, self._pos = self._pos, self._pos + n_samples
        if self._in_speech:
            return self._push_open(is_speech, frame_start)
        return self._push_closed(is_speech, frame_start)

    def _push_closed(self, is_speech: bool, frame_start: int) -> list[SegmenterEvent]:
        if not is_speech:
            self._run = 0
            return []
        if self._run == 0:
            self._run_start = frame_start
        self._run += self._pos - frame_start
        if self._run < self._start_n:
            return []
        self._in_speech, self._run = True, 0
        self._start = max(self._run_start - self._pad_start_n, self._floor)
        self._last_speech_end = self._pos
        return [SpeechStart(start=self._start, detected_at=self._pos)]

    def _push_open(self, is_speech: bool, frame_start: int) -> list[SegmenterEvent]:
        if is_speech:
            self._run = 0
            self._last_speech_end = self._pos
            return []
        self._run += self._pos - frame_start
        if self._run < self._end_n:
            return []
        return [self._close()]

    def finish(self) -> list[SegmenterEvent]:
        """End of stream: close an open region at the stream's end (padding permitting)."""
        return [self._close()] if self._in_speech else []

    def _close(self) -> SpeechEnd:
        end = min(self._last_speech_end + self._pad_end_n, self._pos)
        self._in_speech, self._run, self._floor = False, 0, end
        return SpeechEnd(start=self._start, end=end, detected_at=self._pos)


def segment(
    decisions: Iterable[bool], frame_samples: int, config: SegmenterConfig | None = None
) -> list[tuple[int, int]]:
    """Regions ``(start, end)`` in samples for a whole sequence of equal-size frame decisions."""
    seg = SpeechSegmenter(config)
    ends: list[SpeechEnd] = []
    for d in decisions:
        ends += [e for e in seg.push(d, frame_samples) if isinstance(e, SpeechEnd)]
    ends += [e for e in seg.finish() if isinstance(e, SpeechEnd)]
    return [(e.start, e.end) for e in ends]
