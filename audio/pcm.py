"""PCM16 sample formats: little-endian bytes, int16 arrays and float32 arrays in [-1, 1).

The scaling is symmetric: ``float = int16 / 32768`` and ``int16 = round(float * 32768)`` clipped
to [-32768, 32767], so int16 -> float32 -> int16 is exact and a full-scale float (1.0) clips to
32767 instead of wrapping. Every array this module returns is a fresh, writeable, 1-D array.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]
UInt8Array = npt.NDArray[np.uint8]
BytesLike = bytes | bytearray | memoryview

PCM16_SCALE = 32768.0
PCM16_SAMPLE_BYTES = 2
_PCM16_LE = np.dtype("<i2")


def check_pcm16_bytes(data: BytesLike) -> int:
    """Validate a PCM16 buffer and return its number of samples.

    Raises ValueError if ``data`` is not bytes-like or its length is odd (a torn sample).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"PCM16 data must be bytes-like, got {type(data).__name__}")
    n_bytes = memoryview(data).nbytes
    if n_bytes % PCM16_SAMPLE_BYTES:
        raise ValueError(
            f"PCM16 data must have an even number of bytes (2 per sample), got {n_bytes}"
        )
    return n_bytes // PCM16_SAMPLE_BYTES


def check_mono(x: Any, dtype: type[np.generic], name: str = "audio") -> None:
    """Raise ValueError unless ``x`` is a 1-D numpy array of exactly ``dtype``."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.ndim != 1:
        raise ValueError(f"{name} must be mono (1-D), got shape {x.shape}")
    if x.dtype != dtype:
        raise ValueError(f"{name} must have dtype {np.dtype(dtype).name}, got {x.dtype.name}")


def pcm16_to_int16(data: BytesLike) -> Int16Array:
    """Decode little-endian PCM16 bytes into a native int16 array (a copy)."""
    check_pcm16_bytes(data)
    return np.frombuffer(data, dtype=_PCM16_LE).astype(np.int16)


def int16_to_pcm16(x: Int16Array) -> bytes:
    """Encode an int16 array as little-endian PCM16 bytes."""
    check_mono(x, np.int16)
    return x.astype(_PCM16_LE, copy=False).tobytes()


def int16_to_float32(x: Int16Array) -> Float32Array:
    """Map int16 samples to float32 in [-1, 1): ``x / 32768``."""
    check_mono(x, np.int16)
    return x.astype(np.float32) * np.float32(1.0 / PCM16_SCALE)


def float32_to_int16(x: Float32Array) -> Int16Array:
    """Map float32 samples to int16: ``round(x * 32768)`` clipped to the int16 range.

    Raises ValueError on NaN (there is no sample value to give it); +-inf clip like any overload.
    """
    check_mono(x, np.float32)
    if np.isnan(x).any():
        raise ValueError("audio contains NaN samples")
    # Multiplying by a power of two is exact in float32, so no wider intermediate is needed.
    scaled: Float32Array = np.rint(x * np.float32(PCM16_SCALE))
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def pcm16_to_float32(data: BytesLike) -> Float32Array:
    """Decode PCM16 bytes straight to float32 in [-1, 1)."""
    return int16_to_float32(pcm16_to_int16(data))


def float32_to_pcm16(x: Float32Array) -> bytes:
    """Encode float32 samples as PCM16 bytes (rounded, clipped)."""
    return int16_to_pcm16(float32_to_int16(x))
