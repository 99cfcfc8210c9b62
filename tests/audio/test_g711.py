"""G.711 mu-law / A-law: reference code points, segment and error bounds, audioop as oracle."""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

import numpy as np
import numpy.typing as npt
import pytest

from audio import g711

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)


def _audioop() -> ModuleType | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return importlib.import_module("audioop")
        except ImportError:  # removed in Python 3.13
            return None


AUDIOOP = _audioop()
needs_audioop = pytest.mark.skipif(AUDIOOP is None, reason="stdlib audioop is gone (3.13+)")


@pytest.mark.parametrize(
    ("code", "value"),
    [
        (0xFF, 0),
        (0x7F, 0),
        (0x00, -32124),
        (0x80, 32124),
        (0xFE, 8),
        (0x7E, -8),
        (0xEF, 132),
        (0x70, -120),
    ],
)
def test_ulaw_reference_code_points(code: int, value: int) -> None:
    assert g711.ulaw_table()[code] == value


@pytest.mark.parametrize(
    ("code", "value"),
    [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0xD4, 24), (0xC5, 264)],
)
def test_alaw_reference_code_points(code: int, value: int) -> None:
    assert g711.alaw_table()[code] == value


def test_encode_picks_the_expected_codes() -> None:
    x = np.array([0, -1, 32767, -32768], np.int16)
    np.testing.assert_array_equal(g711.ulaw_encode(x), [0xFF, 0x7E, 0x80, 0x00])
    np.testing.assert_array_equal(g711.alaw_encode(x), [0xD5, 0x55, 0xAA, 0x2A])


@pytest.mark.parametrize(
    ("encode", "decode"),
    [(g711.ulaw_encode, g711.ulaw_decode), (g711.alaw_encode, g711.alaw_decode)],
)
def test_every_code_survives_decode_encode(encode: object, decode: object) -> None:
    values = decode(ALL_CODES)  # type: ignore[operator]
    np.testing.assert_array_equal(decode(encode(values)), values)  # type: ignore[operator]


def test_tables_are_odd_symmetric_and_monotonic() -> None:
    u = g711.ulaw_table().astype(np.int32)
    # mu-law: 0x80..0xFF positive, decreasing magnitude as the code rises.
    assert np.all(np.diff(u[0x80:]) < 0) and np.all(u[0x00:0x80] == -u[0x80:])
    a = g711.alaw_table().astype(np.int32)
    a_pos = a[ALL_CODES ^ 0xD5][:128]  # codes in magnitude order after removing the XOR mask
    assert np.all(np.diff(a_pos) > 0) and np.all(a[ALL_CODES ^ 0x80] == -a)


def _ulaw_segment(x: npt.NDArray[np.int16]) -> npt.NDArray[np.int64]:
    v = np.minimum(np.abs(x.astype(np.int64) >> 2), 8159) + 33  # 33 .. 8192
    seg: npt.NDArray[np.int64] = np.minimum(np.floor(np.log2(v)).astype(np.int64) - 5, 7)
    return seg


def _alaw_segment(x: npt.NDArray[np.int16]) -> npt.NDArray[np.int64]:
    v = x.astype(np.int64) >> 3
    v = np.where(v < 0, -v - 1, v)  # 0 .. 4095
    return np.where(v < 32, 0, np.floor(np.log2(np.maximum(v, 1))).astype(np.int64) - 4)


def test_ulaw_segments_and_quantisation_error_over_all_int16() -> None:
    codes = g711.ulaw_encode(ALL_INT16)
    seg = (~codes.astype(np.int64) & 0x70) >> 4
    np.testing.assert_array_equal(seg, _ulaw_segment(ALL_INT16))
    err = np.abs(g711.ulaw_decode(codes).astype(np.int64) - ALL_INT16)
    unclipped = np.abs(ALL_INT16.astype(np.int64)) <= 32124 + 256
    # half a step (4 << seg) plus the 2 bits dropped before coding and the sign asymmetry
    assert np.all(err[unclipped] <= (4 << seg[unclipped]) + 3)
    assert np.all(err[~unclipped] <= 32768 - 32124)


def test_alaw_segments_and_quantisation_error_over_all_int16() -> None:
    codes = g711.alaw_encode(ALL_INT16)
    seg = ((codes.astype(np.int64) ^ 0x55) & 0x70) >> 4
    np.testing.assert_array_equal(seg, _alaw_segment(ALL_INT16))
    err = np.abs(g711.alaw_decode(codes).astype(np.int64) - ALL_INT16)
    assert np.all(err <= 8 << np.maximum(seg - 1, 0))  # half a step


@needs_audioop
def test_bit_exact_with_audioop_over_all_values() -> None:
    assert AUDIOOP is not None
    pcm = ALL_INT16.tobytes()
    codes = ALL_CODES.tobytes()
    assert g711.pcm16_to_ulaw(pcm) == AUDIOOP.lin2ulaw(pcm, 2)
    assert g711.pcm16_to_alaw(pcm) == AUDIOOP.lin2alaw(pcm, 2)
    assert g711.ulaw_to_pcm16(codes) == AUDIOOP.ulaw2lin(codes, 2)
    assert g711.alaw_to_pcm16(codes) == AUDIOOP.alaw2lin(codes, 2)


def test_bytes_helpers_round_trip_lengths() -> None:
    pcm = np.array([100, -100, 5000], np.int16).tobytes()
    assert len(g711.pcm16_to_ulaw(pcm)) == 3 and len(g711.ulaw_to_pcm16(b"\xff" * 3)) == 6
    assert g711.alaw_to_pcm16(g711.pcm16_to_alaw(b"")) == b""


def test_decode_accepts_arrays_and_bytes_alike() -> None:
    np.testing.assert_array_equal(g711.ulaw_decode(bytes(range(256))), g711.ulaw_table())
    np.testing.assert_array_equal(g711.alaw_decode(bytearray(range(256))), g711.alaw_table())


def test_tables_are_read_only() -> None:
    with pytest.raises(ValueError):
        g711.ulaw_table()[0] = 1


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        g711.pcm16_to_ulaw(b"\x00\x00\x00")
    with pytest.raises(ValueError, match="dtype int16"):
        g711.alaw_encode(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="dtype uint8"):
        g711.ulaw_decode(np.zeros(4, np.int16))
