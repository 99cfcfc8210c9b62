"""Band-limited sample-rate conversion of float32 mono audio, built on libsoxr.

One-shot ``resample(x, src, dst)`` and the streaming ``StreamResampler`` produce the same
samples: feeding a signal in chunks of any size and then calling ``flush()`` yields, concatenated,
exactly what ``resample`` yields for the whole signal. Only the rates in ``SUPPORTED_RATES`` are
accepted; anything else is a ValueError that names them.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import soxr

from audio.pcm import (
    BytesLike,
    Float32Array,
    check_mono,
    float32_to_pcm16,
    pcm16_to_float32,
)

SUPPORTED_RATES: Final[tuple[int, ...]] = (8000, 16000, 22050, 24000, 44100, 48000)
QUALITIES: Final[tuple[str, ...]] = ("QQ", "LQ", "MQ", "HQ", "VHQ")
DEFAULT_QUALITY: Final[str] = "HQ"


def check_rate(rate: int, name: str = "sample rate") -> int:
    """Return ``rate`` if it is one of ``SUPPORTED_RATES``; otherwise raise ValueError."""
    if (
        isinstance(rate, bool)
        or not isinstance(rate, int | np.integer)
        or (int(rate) not in SUPPORTED_RATES)
    ):
        supported = ", ".join(str(r) for r in SUPPORTED_RATES)
        raise ValueError(f"unsupported {name} {rate!r}; supported rates are {supported} Hz")
    return int(rate)


def _check_quality(quality: str) -> str:
    if quality not in QUALITIES:
        raise ValueError(f"unknown soxr quality {quality!r}; expected one of {QUALITIES}")
    return quality


def resample(
    x: Float32Array, src_rate: int, dst_rate: int, quality: str = DEFAULT_QUALITY
) -> Float32Array:
    """Resample a whole float32 mono signal from ``src_rate`` to ``dst_rate``.

    Output length is ``len(x) * dst_rate / src_rate`` rounded to a neighbouring integer (libsoxr
    rounds halves either way). Equal rates return a copy. Raises ValueError for unsupported rates
    or a non-float32 / non-1-D input.
    """
    check_mono(x, np.float32)
    src, dst = check_rate(src_rate, "source rate"), check_rate(dst_rate, "target rate")
    if src == dst:
        return x.copy()
    y: Float32Array = soxr.resample(x, src, dst, quality=_check_quality(quality))
    return y


def resample_pcm16(
    data: BytesLike, src_rate: int, dst_rate: int, quality: str = DEFAULT_QUALITY
) -> bytes:
    """Resample PCM16 little-endian bytes (converted through float32, rounded and clipped)."""
    return float32_to_pcm16(resample(pcm16_to_float32(data), src_rate, dst_rate, quality))


class StreamResampler:
    """Streaming resampler: push chunks of any size, then ``flush()`` at the end of the stream.

    ``process(chunk)`` returns whatever output is ready (possibly empty: the filter has a delay);
    ``process(chunk, last=True)`` or ``flush()`` returns the tail and starts a fresh stream, so
    the object can be reused for the next utterance. ``reset()`` drops buffered input without
    emitting it (e.g. on barge-in). Not thread-safe: one owner feeds it.
    """

    __slots__ = ("_dst_rate", "_quality", "_src_rate", "_stream")

    def __init__(self, src_rate: int, dst_rate: int, quality: str = DEFAULT_QUALITY) -> None:
        self._src_rate = check_rate(src_rate, "source rate")
        self._dst_rate = check_rate(dst_rate, "target rate")
        self._quality = _check_quality(quality)
        self._stream = self._new_stream()

    @property
    def src_rate(self) -> int:
        return self._src_rate

    @property
    def dst_rate(self) -> int:
        return self._dst_rate

    def _new_stream(self) -> soxr.ResampleStream | None:
        if self._src_rate == self._dst_rate:
            return None  # pass-through: nothing to filter, nothing buffered
        return soxr.ResampleStream(
            self._src_rate, self._dst_rate, 1, dtype="float32", quality=self._quality
        )

    def process(self, chunk: Float32Array, last: bool = False) -> Float32Array:
        """Feed one float32 mono chunk (may be empty); return the output it makes available.

        With ``last=True`` the stream is flushed and then restarted for a new signal.
        """
        check_mono(chunk, np.float32, "chunk")
        if self._stream is None:
            return chunk.copy()
        y: Float32Array = self._stream.resample_chunk(chunk, last=last)
        if last:
            self._stream = self._new_stream()
        return y

    def flush(self) -> Float32Array:
        """End the current signal: return the remaining output and restart the stream."""
        return self.process(np.zeros(0, dtype=np.float32), last=True)

    def reset(self) -> None:
        """Discard buffered input and filter state without producing output."""
        self._stream = self._new_stream()

    def process_pcm16(self, data: BytesLike, last: bool = False) -> bytes:
        """``process`` for PCM16 bytes; rounding is per sample so chunking does not change it."""
        return float32_to_pcm16(self.process(pcm16_to_float32(data), last=last))
