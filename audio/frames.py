"""Re-framing: chunks of any size in, fixed-size frames out, the remainder kept for next time.

Transports deliver audio in whatever sizes the network hands over; VAD and ASR want fixed frames
(20 / 30 ms for webrtcvad, 32 ms = 512 samples for Silero at 16 kHz). ``FrameBuffer`` keeps at
most ``frame_samples - 1`` samples between calls, so the frames it yields, concatenated, are the
input stream cut at multiples of ``frame_samples``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from audio.pcm import check_mono

FRAME_DTYPES = (np.int16, np.float32)


def frame_samples_for(frame_ms: float, sample_rate: int) -> int:
    """Samples in a ``frame_ms`` frame at ``sample_rate``; ValueError unless it is a whole number.

    E.g. 20 ms -> 320, 30 ms -> 480, 32 ms -> 512 at 16 kHz.
    """
    if frame_ms <= 0 or sample_rate <= 0:
        raise ValueError(
            f"frame_ms and sample_rate must be positive, got {frame_ms}, {sample_rate}"
        )
    exact = frame_ms * sample_rate / 1000
    n = round(exact)
    if abs(exact - n) > 1e-9:
        raise ValueError(f"{frame_ms} ms at {sample_rate} Hz is not a whole number of samples")
    return n


class FrameBuffer:
    """Accumulates 1-D int16 or float32 chunks and returns complete frames.

    ``push(chunk)`` returns a ``(n_frames, frame_samples)`` array (``n_frames`` may be 0) that owns
    its memory, so rows may be kept after later pushes. Chunks must match the buffer's dtype
    exactly; no conversion happens here. Not thread-safe: one owner feeds it.
    """

    __slots__ = ("_dtype", "_fill", "_frame_samples", "_pending")

    def __init__(self, frame_samples: int, dtype: type[np.int16] | type[np.float32]) -> None:
        if isinstance(frame_samples, bool) or not isinstance(frame_samples, int):
            raise ValueError(f"frame_samples must be an int, got {frame_samples!r}")
        if frame_samples <= 0:
            raise ValueError(f"frame_samples must be positive, got {frame_samples}")
        if dtype not in FRAME_DTYPES:
            raise ValueError(f"dtype must be numpy int16 or float32, got {dtype!r}")
        self._frame_samples = frame_samples
        self._dtype: type[np.int16] | type[np.float32] = dtype
        self._pending: npt.NDArray[Any] = np.zeros(frame_samples, dtype=dtype)
        self._fill = 0  # samples of _pending in use

    @property
    def frame_samples(self) -> int:
        return self._frame_samples

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self._dtype)

    @property
    def pending_samples(self) -> int:
        """Samples held back, waiting for the rest of their frame (0 <= n < frame_samples)."""
        return self._fill

    def push(self, chunk: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Append ``chunk``; return the frames it completes, shape (n_frames, frame_samples)."""
        check_mono(chunk, self._dtype, "chunk")
        n = self._frame_samples
        if self._fill + len(chunk) < n:
            self._pending[self._fill : self._fill + len(chunk)] = chunk
            self._fill += len(chunk)
            return np.zeros((0, n), dtype=self._dtype)
        stream = np.concatenate([self._pending[: self._fill], chunk])
        n_frames = len(stream) // n
        tail = stream[n_frames * n :]
        self._pending[: len(tail)] = tail
        self._fill = len(tail)
        return stream[: n_frames * n].reshape(n_frames, n)

    def take_remainder(self) -> npt.NDArray[Any]:
        """Return the held-back partial frame (a copy, possibly empty) and empty the buffer."""
        tail = self._pending[: self._fill].copy()
        self._fill = 0
        return tail

    def clear(self) -> None:
        """Drop any held-back samples (e.g. when the stream is interrupted)."""
        self._fill = 0
