"""Models shared by the whole test run: each is loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from voice import assets
from voice.asr import SAMPLE_RATE, Transcriber
from voice.tts import Synthesizer


@pytest.fixture(scope="session")
def registry() -> dict[str, assets.ModelSpec]:
    return assets.load_registry()


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The real model cache (``make test`` prepares it); models missing there are prepared."""
    return assets.default_cache_dir()


@pytest.fixture(scope="session")
def model_dir(registry, cache_dir):
    def get(name: str) -> Path:
        return assets.ensure(registry[name], cache_dir)

    return get


@pytest.fixture(scope="session")
def transcriber(model_dir) -> Transcriber:
    return Transcriber(model_dir("whisper-tiny-en"))


@pytest.fixture(scope="session")
def synthesizer(model_dir) -> Synthesizer:
    return Synthesizer(model_dir("piper-joe-medium"))


@pytest.fixture(scope="session")
def speech(synthesizer, tmp_path_factory):
    """(sentence, voice, 16 kHz float32 audio) for every corpus sentence in both voices."""
    from tests.corpus import SENTENCES, espeak

    tmp = tmp_path_factory.mktemp("speech")
    items = []
    for i, text in enumerate(SENTENCES):
        items.append((text, "piper", synthesizer.synthesize(text, SAMPLE_RATE)))
        items.append((text, "espeak", espeak(text, tmp / f"{i}.wav")))
    return items
