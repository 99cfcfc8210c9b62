"""What the caller has heard of a reply: playout time and the text it carried. No I/O.

A reply goes out as chunks of audio, each speaking one piece of text (a ``voice.chunker.Chunk``:
its cleaned text and ``[source_start, source_end)``, the characters of the raw reply it came
from). ``Playout`` records when each piece of audio was sent and models the client's player:
it starts playing what it receives at once and plays continuously while it has audio, so at
wall time ``now`` it has played everything sent except what is still buffered:

    buffer_end = max(buffer_end, sent_at) + duration      (per piece of audio sent)
    played(now) = sent - max(0, buffer_end - now)

That is exact for a client that paces playback by what arrives (a browser, a phone gateway)
up to its network delay; a Realtime client that knows better says so with
``conversation.item.truncate``, which gives the played time directly. A client that pauses its
player when told to (``pause(now)`` / ``resume(now)``) plays nothing in between: its buffer
keeps what it held at the pause.

``heard_chars(played_s)`` maps a playout time back to the raw reply text: chunks played to
their end count whole; in the chunk being played, words count in proportion to the audio
played (Piper gives no word timings, so a word is heard once the share of the chunk's audio
played reaches the share of its characters up to that word's end). The result is a character
offset at a word end in the raw text, never inside a word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Playout"]

_WORD_END = re.compile(r"\S+")


@dataclass(slots=True)
class _Piece:
    start_s: float  # reply audio time at which this chunk's audio starts
    duration_s: float  # grows while the chunk's audio is being sent
    source_start: int
    source_end: int


class Playout:
    """Playout bookkeeping of one reply. Times in seconds; ``now`` is monotonic and never
    earlier than the last ``sent``."""

    __slots__ = ("_buffer_end", "_paused_at", "_pieces", "_sent_s")

    def __init__(self) -> None:
        self._pieces: list[_Piece] = []
        self._sent_s = 0.0
        self._buffer_end: float | None = None
        self._paused_at: float | None = None

    @property
    def sent_s(self) -> float:
        """Seconds of audio sent so far."""
        return self._sent_s

    @property
    def started(self) -> bool:
        return self._buffer_end is not None

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def pause(self, now: float) -> None:
        """The client's player stops at ``now``, keeping what it has buffered."""
        if self._paused_at is None:
            self._paused_at = now

    def resume(self, now: float) -> None:
        """The client's player goes on at ``now`` from where it paused."""
        if self._paused_at is None:
            return
        if self._buffer_end is not None and self._buffer_end > self._paused_at:
            self._buffer_end += max(0.0, now - self._paused_at)
        self._paused_at = None

    def _clock(self, now: float) -> float:
        """``now`` on the player's clock, which stands still while it is paused."""
        return now if self._paused_at is None else min(now, self._paused_at)

    def begin_chunk(self, source_start: int, source_end: int) -> None:
        """The audio sent next speaks the raw reply text ``[source_start, source_end)``."""
        if not 0 <= source_start <= source_end:
            raise ValueError(f"bad source range [{source_start}, {source_end})")
        self._pieces.append(_Piece(self._sent_s, 0.0, source_start, source_end))

    def sent(self, duration_s: float, now: float) -> None:
        """``duration_s`` seconds of the current chunk's audio went out at ``now``."""
        if not self._pieces:
            raise ValueError("sent() before begin_chunk()")
        if duration_s < 0:
            raise ValueError("duration_s must be >= 0")
        self._pieces[-1].duration_s += duration_s
        self._sent_s += duration_s
        now = self._clock(now)
        start = now if self._buffer_end is None else max(self._buffer_end, now)
        self._buffer_end = start + duration_s

    def buffered_s(self, now: float) -> float:
        """Seconds of sent audio the client has not played yet."""
        if self._buffer_end is None:
            return 0.0
        return max(0.0, self._buffer_end - self._clock(now))

    def played_s(self, now: float) -> float:
        return self._sent_s - self.buffered_s(now)

    def drained(self, now: float) -> bool:
        """Whether the client has played everything sent (true when nothing was)."""
        return self.buffered_s(now) <= 0.0

    def heard_chars(self, text: str, played_s: float) -> int:
        """Characters of the raw reply ``text`` heard after ``played_s`` seconds of playout."""
        heard = 0
        for piece in self._pieces:
            if played_s >= piece.start_s + piece.duration_s - 1e-9:
                heard = piece.source_end
                continue
            if played_s > piece.start_s and piece.duration_s > 0:
                share = (played_s - piece.start_s) / piece.duration_s
                heard = _words_within(text, piece.source_start, piece.source_end, share, heard)
            break
        return heard


def _words_within(text: str, start: int, end: int, share: float, default: int) -> int:
    """The end of the last word of ``text[start:end]`` that ends within ``share`` of it."""
    limit = start + share * (end - start)
    heard = default
    for m in _WORD_END.finditer(text, start, end):
        if m.end() > limit:
            break
        heard = m.end()
    return heard
