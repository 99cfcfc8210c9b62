"""Shared fixtures for the audio tests: real speech from espeak-ng and the Silero VAD model."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from audio.pcm import Float32Array, pcm16_to_float32
from audio.resample import resample
from audio.vad import SileroVad

SR = 16000
UTTERANCES = ("The quick brown fox jumps over the lazy dog.", "Please call me back tomorrow.")
NOISE_DBFS = -60.0


@dataclass(slots=True, frozen=True)
class SpeechSignal:
    """Silence + speech + silence + speech + silence at 16 kHz, with the true speech regions."""

    samples: Float32Array
    regions: list[tuple[int, int]]  # [start, end) sample offsets of each utterance


def trim_silence(x: Float32Array, win: int = 160, rel_db: float = -40.0) -> Float32Array:
    """Cut leading/trailing windows whose RMS is more than ``rel_db`` below the loudest window."""
    n = len(x) // win
    rms = np.sqrt((x[: n * win].reshape(n, win).astype(np.float64) ** 2).mean(axis=1) + 1e-20)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > rel_db)
    return x[loud[0] * win : (loud[-1] + 1) * win]


def _espeak(text: str, path: Path) -> Float32Array:
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    return resample(pcm16_to_float32(pcm), rate, SR)


@pytest.fixture(scope="session")
def speech_clips(tmp_path_factory: pytest.TempPathFactory) -> list[Float32Array]:
    """Each utterance spoken by espeak-ng, 16 kHz float32, leading/trailing silence trimmed."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng)")
    out = tmp_path_factory.mktemp("espeak")
    return [trim_silence(_espeak(t, out / f"u{i}.wav")) for i, t in enumerate(UTTERANCES)]


@pytest.fixture(scope="session")
def speech_signal(speech_clips: list[Float32Array]) -> SpeechSignal:
    """0.7 s silence, utterance 1, 1.0 s silence, utterance 2, 0.7 s silence, -60 dBFS noise."""
    gaps = [np.zeros(int(s * SR), dtype=np.float32) for s in (0.7, 1.0, 0.7)]
    parts = [gaps[0], speech_clips[0], gaps[1], speech_clips[1], gaps[2]]
    offsets = np.cumsum([0] + [len(p) for p in parts])
    regions = [(int(offsets[1]), int(offsets[2])), (int(offsets[3]), int(offsets[4]))]
    x = np.concatenate(parts)
    noise = np.random.default_rng(0).standard_normal(len(x)) * 10 ** (NOISE_DBFS / 20)
    return SpeechSignal(samples=(x + noise).astype(np.float32), regions=regions)


@pytest.fixture(scope="session")
def silero_model_path() -> Path:
    """silero_vad_v6.onnx inside the installed faster-whisper, located without importing it."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("faster-whisper is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "silero_vad_v6.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="session")
def _shared_silero(silero_model_path: Path) -> SileroVad:
    return SileroVad(silero_model_path)


@pytest.fixture
def silero_vad(_shared_silero: SileroVad) -> SileroVad:
    """The session's SileroVad (one ONNX session for all tests), reset for this test."""
    _shared_silero.reset()
    return _shared_silero
