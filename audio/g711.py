"""ITU-T G.711 mu-law and A-law companding, vectorised numpy, bit-exact with the reference.

The algorithms are those of the ITU-T reference (as in Sun's g711.c and CPython's removed
``audioop``), applied to 16-bit linear samples:

- mu-law keeps the top 14 bits (``x >> 2``), takes the magnitude, clips it to 8159, adds the bias
  33, and codes segment ``s`` (first ``s`` with ``v <= (0x40 << s) - 1``) and 4 mantissa bits
  ``(v >> (s + 1)) & 0xF``, or 0x7F past the last segment; the code byte is XOR-ed with ``0xFF``
  (positive) or ``0x7F`` (negative).
- A-law keeps the top 13 bits (``x >> 3``), uses ``-v - 1`` for negatives, codes segment ``s``
  (first ``s`` with ``v <= (0x20 << s) - 1``) and mantissa ``(v >> max(s, 1)) & 0xF``; the code
  byte is XOR-ed with ``0xD5`` (positive) or ``0x55`` (negative).

Decoding goes through a 256-entry table built once, on first use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from audio.pcm import BytesLike, Int16Array, UInt8Array, check_mono, int16_to_pcm16, pcm16_to_int16

_SEGMENTS: Final = 8
_ULAW_BIAS: Final = 0x84  # 132, in 16-bit units; 33 in 14-bit units
_ULAW_CLIP: Final = 8159  # largest 14-bit magnitude before the bias
# Largest value of each segment: 0x3F, 0x7F, ..., 0x1FFF (mu-law); 0x1F, 0x3F, ..., 0xFFF (A-law).
_ULAW_SEG_END: Final = np.array([(0x40 << s) - 1 for s in range(_SEGMENTS)], dtype=np.int32)
_ALAW_SEG_END: Final = np.array([(0x20 << s) - 1 for s in range(_SEGMENTS)], dtype=np.int32)


def _codes(codes: UInt8Array | BytesLike) -> UInt8Array:
    if isinstance(codes, bytes | bytearray | memoryview):
        return np.frombuffer(codes, dtype=np.uint8)
    check_mono(codes, np.uint8, "G.711 codes")
    return codes


# ---------------------------------------------------------------------------------------------
# mu-law


def ulaw_encode(x: Int16Array) -> UInt8Array:
    """Encode int16 samples to mu-law code bytes (one uint8 per sample)."""
    check_mono(x, np.int16)
    v = x.astype(np.int32) >> 2  # 14-bit, arithmetic shift
    mask = np.where(v < 0, 0x7F, 0xFF)
    v = np.minimum(np.abs(v), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, v, side="left")
    # Clipped magnitudes become 8159 + 33 = 0x2000, past the last segment: code 0x7F (full scale).
    code = np.where(seg < _SEGMENTS, (seg << 4) | ((v >> (seg + 1)) & 0xF), 0x7F)
    return (code ^ mask).astype(np.uint8)


def _ulaw_decode_codes(codes: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    u = ~codes & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS)


def _decode_table(decode: Callable[[npt.NDArray[np.int32]], npt.NDArray[np.int32]]) -> Int16Array:
    """The read-only 256-entry table (code -> int16) of a per-code decode function."""
    table = decode(np.arange(256, dtype=np.int32)).astype(np.int16)
    table.setflags(write=False)
    return table


@functools.cache
def ulaw_table() -> Int16Array:
    """The 256-entry mu-law decode table (code -> int16). Built once; do not mutate."""
    return _decode_table(_ulaw_decode_codes)


def ulaw_decode(codes: UInt8Array | BytesLike) -> Int16Array:
    """Decode mu-law code bytes (uint8 array or bytes) to int16 samples."""
    return ulaw_table()[_codes(codes)]


# ---------------------------------------------------------------------------------------------
# A-law


def alaw_encode(x: Int16Array) -> UInt8Array:
    """Encode int16 samples to A-law code bytes (one uint8 per sample)."""
    check_mono(x, np.int16)
    v = x.astype(np.int32) >> 3  # 13-bit, arithmetic shift
    negative = v < 0
    mask = np.where(negative, 0x55, 0xD5)
    v = np.where(negative, -v - 1, v)  # 0 .. 4095
    seg = np.searchsorted(_ALAW_SEG_END, v, side="left")  # < 8: 13-bit magnitudes end at 0xFFF
    code = (seg << 4) | ((v >> np.maximum(seg, 1)) & 0xF)
    return (code ^ mask).astype(np.uint8)


def _alaw_decode_codes(codes: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    a = codes ^ 0x55
    seg = (a & 0x70) >> 4
    t = ((a & 0x0F) << 4) + np.where(seg == 0, 8, 0x108)
    t = t << np.maximum(seg - 1, 0)
    linear: npt.NDArray[np.int32] = np.where(a & 0x80, t, -t)
    return linear


@functools.cache
def alaw_table() -> Int16Array:
    """The 256-entry A-law decode table (code -> int16). Built once; do not mutate."""
    return _decode_table(_alaw_decode_codes)


def alaw_decode(codes: UInt8Array | BytesLike) -> Int16Array:
    """Decode A-law code bytes (uint8 array or bytes) to int16 samples."""
    return alaw_table()[_codes(codes)]


# ---------------------------------------------------------------------------------------------
# bytes in, bytes out (telephony payloads)


def pcm16_to_ulaw(data: BytesLike) -> bytes:
    """PCM16 little-endian bytes -> mu-law bytes (half the length)."""
    return ulaw_encode(pcm16_to_int16(data)).tobytes()


def ulaw_to_pcm16(data: BytesLike) -> bytes:
    """mu-law bytes -> PCM16 little-endian bytes (twice the length)."""
    return int16_to_pcm16(ulaw_decode(data))


def pcm16_to_alaw(data: BytesLike) -> bytes:
    """PCM16 little-endian bytes -> A-law bytes (half the length)."""
    return alaw_encode(pcm16_to_int16(data)).tobytes()


def alaw_to_pcm16(data: BytesLike) -> bytes:
    """A-law bytes -> PCM16 little-endian bytes (twice the length)."""
    return int16_to_pcm16(alaw_decode(data))
