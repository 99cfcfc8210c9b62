"""Wire audio encodings to and from float32: PCM16 little-endian, G.711 mu-law and A-law.

``decode(data, encoding)`` checks that ``data`` is whole samples (ValueError otherwise);
``encode`` clips to [-1, 1].
"""

from __future__ import annotations

from typing import Literal

from audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from audio.pcm import (
    BytesLike,
    Float32Array,
    float32_to_int16,
    int16_to_float32,
    int16_to_pcm16,
    pcm16_to_float32,
)

Encoding = Literal["pcm16", "ulaw", "alaw"]

__all__ = ["Encoding", "decode", "encode"]


def decode(data: BytesLike, encoding: Encoding) -> Float32Array:
    """Wire bytes in ``encoding`` -> float32 samples."""
    if encoding == "pcm16":
        if len(data) % 2:
            raise ValueError(f"PCM16 audio must be whole 2-byte samples, got {len(data)} bytes")
        return pcm16_to_float32(data)
    if encoding == "ulaw":
        return int16_to_float32(ulaw_decode(data))
    if encoding == "alaw":
        return int16_to_float32(alaw_decode(data))
    raise ValueError(f"unknown audio encoding {encoding!r}")


def encode(x: Float32Array, encoding: Encoding) -> bytes:
    """float32 samples -> wire bytes in ``encoding``."""
    pcm = float32_to_int16(x)
    if encoding == "pcm16":
        return int16_to_pcm16(pcm)
    if encoding == "ulaw":
        return ulaw_encode(pcm).tobytes()
    if encoding == "alaw":
        return alaw_encode(pcm).tobytes()
    raise ValueError(f"unknown audio encoding {encoding!r}")
