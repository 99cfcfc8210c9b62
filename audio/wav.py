"""WAV files: read 16-bit mono PCM at a supported rate, write float32 audio as 16-bit PCM.

Parley is strict about what it reads so that a wrong file gives one clear message instead of
noise in, garbage out: anything but 16-bit mono PCM at one of ``SUPPORTED_RATES`` raises
:class:`AudioFormatError`, which says what was found and how to convert it with sox.
"""

from __future__ import annotations

import wave
from pathlib import Path

from audio.pcm import Float32Array, float32_to_pcm16, pcm16_to_float32
from audio.resample import SUPPORTED_RATES, resample


class AudioFormatError(ValueError):
    """A file that is not audio Parley can read (its message says why and what to do)."""


def _convert_hint(path: Path) -> str:
    return f"convert it with: sox {path} -c 1 -b 16 -r 16000 {path.stem}-16k.wav"


def read_wav(path: Path) -> tuple[Float32Array, int]:
    """Read a 16-bit mono PCM WAV file; return (float32 samples, sample rate)."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except FileNotFoundError:
        raise AudioFormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise AudioFormatError(f"{path}: is a directory, not a WAV file") from None
    except (wave.Error, EOFError) as err:
        hint = _convert_hint(path)
        raise AudioFormatError(f"{path}: not a PCM WAV file ({err}); {hint}") from None
    if channels != 1:
        hint = _convert_hint(path)
        raise AudioFormatError(f"{path}: has {channels} channels, expected mono; {hint}")
    if width != 2:
        raise AudioFormatError(
            f"{path}: has {8 * width}-bit samples, expected 16-bit; {_convert_hint(path)}"
        )
    if rate not in SUPPORTED_RATES:
        supported = ", ".join(str(r) for r in SUPPORTED_RATES)
        raise AudioFormatError(
            f"{path}: sample rate {rate} Hz is not supported ({supported} Hz are); "
            f"{_convert_hint(path)}"
        )
    if len(frames) < 2:
        raise AudioFormatError(f"{path}: contains no audio")
    return pcm16_to_float32(frames[: len(frames) // 2 * 2]), rate


def read_wav_at(path: Path, rate: int) -> Float32Array:
    """Read a WAV file (as :func:`read_wav`) and resample it to ``rate``."""
    audio, src = read_wav(path)
    return resample(audio, src, rate)


def write_wav(path: Path, audio: Float32Array, rate: int) -> None:
    """Write float32 mono ``audio`` as a 16-bit PCM WAV file."""
    with open(path, "wb") as f, wave.open(f, "wb") as w:  # open() first: its OSError is clean
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(float32_to_pcm16(audio))
