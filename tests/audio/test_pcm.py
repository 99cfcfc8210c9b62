"""PCM16 <-> int16 <-> float32 conversions: exact round trips, clipping, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from audio import pcm


def test_int16_float32_round_trip_is_exact_for_every_value() -> None:
    x = np.arange(-32768, 32768, dtype=np.int16)
    f = pcm.int16_to_float32(x)
    assert f.dtype == np.float32
    assert f.min() == -1.0 and f.max() == np.float32(32767 / 32768)
    np.testing.assert_array_equal(pcm.float32_to_int16(f), x)


def test_bytes_round_trip_is_little_endian_and_exact() -> None:
    x = np.array([0, 1, -1, 256, -32768, 32767], dtype=np.int16)
    data = pcm.int16_to_pcm16(x)
    assert data[:6] == b"\x00\x00\x01\x00\xff\xff"
    np.testing.assert_array_equal(pcm.pcm16_to_int16(data), x)
    assert pcm.float32_to_pcm16(pcm.pcm16_to_float32(data)) == data


def test_float_to_int16_scales_rounds_and_clips() -> None:
    f = np.array([0.5, -0.5, 1.0, -1.0, 2.0, -2.0, np.inf, -np.inf, 1.4 / 32768], np.float32)
    expected = [16384, -16384, 32767, -32768, 32767, -32768, 32767, -32768, 1]
    np.testing.assert_array_equal(pcm.float32_to_int16(f), expected)


def test_pcm16_to_int16_returns_a_writeable_copy() -> None:
    data = bytearray(b"\x01\x00\x02\x00")
    x = pcm.pcm16_to_int16(data)
    x[0] = 7
    assert data[0] == 1 and x.flags.writeable


def test_check_pcm16_bytes_counts_samples() -> None:
    assert pcm.check_pcm16_bytes(b"") == 0
    assert pcm.check_pcm16_bytes(memoryview(b"\x00" * 8)) == 4


@pytest.mark.parametrize("data", [b"\x00", b"\x00\x01\x02"])
def test_odd_byte_length_is_rejected(data: bytes) -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        pcm.pcm16_to_int16(data)


def test_non_bytes_is_rejected() -> None:
    with pytest.raises(ValueError, match="bytes-like"):
        pcm.check_pcm16_bytes("abcd")  # type: ignore[arg-type]


def test_wrong_dtype_shape_and_nan_are_rejected() -> None:
    with pytest.raises(ValueError, match="dtype float32"):
        pcm.float32_to_int16(np.zeros(4, np.float64))
    with pytest.raises(ValueError, match="mono"):
        pcm.int16_to_float32(np.zeros((2, 4), np.int16))
    with pytest.raises(ValueError, match="NaN"):
        pcm.float32_to_int16(np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="numpy array"):
        pcm.int16_to_pcm16([1, 2])  # type: ignore[arg-type]
