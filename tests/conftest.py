"""Models shared by the whole test run: each is loaded once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.llm_engine.helpers import checked_engine
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
def speech(model_dir, tmp_path_factory):
    """(sentence, voice, 16 kHz float32 audio) for every corpus sentence in both voices.

    Piper speaks without its noise here, so every run hears the same audio: the accuracy tests
    then fail for a real change, not for one unlucky synthesis (with noise, the whole-set WER
    measured 7.2-9.4 % across runs; without, 8.3 %).
    """
    from tests.corpus import SENTENCES, espeak
    from voice.tts import TtsConfig

    synthesizer = Synthesizer(
        model_dir("piper-joe-medium"), TtsConfig(noise_scale=0, noise_w_scale=0)
    )
    tmp = tmp_path_factory.mktemp("speech")
    items = []
    for i, text in enumerate(SENTENCES):
        items.append((text, "piper", synthesizer.synthesize(text, SAMPLE_RATE)))
        items.append((text, "espeak", espeak(text, tmp / f"{i}.wav")))
    return items


@pytest.fixture(scope="session")
def recorded(cache_dir):
    """People's recordings by name (``tests.corpus.recordings``), fetched once into the cache."""
    from tests.corpus import recordings

    return {r.name: r for r in recordings(cache_dir)}


@pytest.fixture(scope="session")
def smol_gguf(registry) -> Path:
    spec = registry["smollm2-135m-instruct"]
    return assets.locate(spec.files[0].parts[0], spec)


@pytest.fixture(scope="session")
def smol_dir(model_dir) -> Path:
    """SmolLM2-135M-Instruct as the engine loads it: prepared (converted) from its package."""
    return model_dir("smollm2-135m-instruct")


def _engine(model_dir: Path, **kw: object) -> Iterator[object]:
    from llm_engine import Engine, EngineConfig

    engine = Engine(EngineConfig(model_dir=model_dir, dtype="float32", quant="none", **kw))  # type: ignore[arg-type]
    engine.start()
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def smol_engine_session(smol_dir: Path) -> Iterator[object]:
    yield from _engine(smol_dir, num_blocks=256, block_size=16, max_batch=8)


@pytest.fixture
def smol_engine(smol_engine_session: object) -> Iterator[object]:
    yield from checked_engine(smol_engine_session)


@pytest.fixture(scope="session")
def voice_app(model_dir) -> Iterator[tuple[str, object]]:
    """(base URL, aiohttp app) of a real Parley server on the default models and config, as
    ``parley serve`` runs it, shared by the end-to-end tests of the whole run."""
    from voice.config import load_config
    from voice.server import ModelDirs, serve_in_thread

    config = load_config()
    config.session.max_reply_tokens = 48  # ~10 s of speech: the tests need no more
    with serve_in_thread(config, ModelDirs.for_config(config, model_dir)) as (url, app):
        yield url, app


@pytest.fixture(scope="session")
def voice_server(voice_app) -> str:
    """Base URL (``http://127.0.0.1:PORT``) of the shared real server: page, /v1/realtime."""
    return voice_app[0]
