"""FrameBuffer: any chunking in, the same fixed frames out."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from audio.frames import FrameBuffer, frame_samples_for


@pytest.mark.parametrize(("ms", "samples"), [(10, 160), (20, 320), (30, 480), (32, 512)])
def test_frame_samples_at_16k(ms: int, samples: int) -> None:
    assert frame_samples_for(ms, 16000) == samples


def test_frame_samples_must_be_whole() -> None:
    assert frame_samples_for(20, 22050) == 441
    with pytest.raises(ValueError, match="whole number"):
        frame_samples_for(10, 22050)
    with pytest.raises(ValueError, match="positive"):
        frame_samples_for(0, 16000)


def _signal(dtype: type[np.int16] | type[np.float32], n: int) -> npt.NDArray[Any]:
    rng = np.random.default_rng(n)
    if dtype is np.int16:
        return rng.integers(-32768, 32768, n).astype(np.int16)
    return rng.standard_normal(n).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("frame", [320, 480, 512])
def test_random_chunks_give_the_input_cut_into_frames(
    dtype: type[np.int16] | type[np.float32], frame: int
) -> None:
    x = _signal(dtype, 20_011)
    rng = np.random.default_rng(frame)
    buf = FrameBuffer(frame, dtype)
    got, i = [], 0
    while i < len(x):
        n = int(rng.integers(0, 3 * frame))  # empty, sub-frame and multi-frame chunks
        frames = buf.push(x[i : i + n])
        assert frames.dtype == dtype and frames.shape[1:] == (frame,)
        got.append(frames)
        i += n
    n_full = len(x) // frame
    np.testing.assert_array_equal(np.concatenate(got), x[: n_full * frame].reshape(n_full, frame))
    assert buf.pending_samples == len(x) % frame
    np.testing.assert_array_equal(buf.take_remainder(), x[n_full * frame :])
    assert buf.pending_samples == 0


def test_frames_do_not_alias_the_buffer_or_the_input() -> None:
    buf = FrameBuffer(4, np.int16)
    chunk = np.arange(6, dtype=np.int16)
    first = buf.push(chunk)
    chunk[:] = 0
    buf.push(np.full(6, 9, np.int16))
    np.testing.assert_array_equal(first, [[0, 1, 2, 3]])


def test_clear_drops_the_remainder() -> None:
    buf = FrameBuffer(320, np.float32)
    assert buf.push(np.ones(300, np.float32)).shape == (0, 320)
    buf.clear()
    frames = buf.push(np.zeros(320, np.float32))
    assert frames.shape == (1, 320) and not frames.any()


def test_bad_construction_and_chunks_are_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        FrameBuffer(0, np.int16)
    with pytest.raises(ValueError, match="must be an int"):
        FrameBuffer(320.0, np.int16)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="int16 or float32"):
        FrameBuffer(320, np.float64)  # type: ignore[arg-type]
    buf = FrameBuffer(320, np.int16)
    with pytest.raises(ValueError, match="dtype int16"):
        buf.push(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="mono"):
        buf.push(np.zeros((10, 2), np.int16))
