"""Speech synthesis: a Piper voice from a prepared model directory, streamed chunk by chunk.

Piper synthesizes one sentence at a time; :meth:`Synthesizer.stream` yields each sentence's
audio as soon as it exists, resampled to the caller's rate with one streaming resampler so there
are no clicks at chunk edges. Per-sentence loudness normalisation is off: it would make each
chunk of one reply a different loudness.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audio.pcm import Float32Array
from audio.resample import StreamResampler, check_rate


@dataclass(slots=True)
class TtsConfig:
    """Voice settings; ``None`` keeps the voice's own value from its config file."""

    length_scale: float | None = None  # < 1 speaks faster
    noise_scale: float | None = None
    noise_w_scale: float | None = None
    volume: float = 1.0
    threads: int = 1  # onnxruntime intra-op threads; see configs/default.toml [tts]
    first_chunk_threads: int = 2  # threads for a reply's first chunk; see the same place

    def __post_init__(self) -> None:
        if self.threads < 1 or self.first_chunk_threads < 1:
            raise ValueError("tts.threads and tts.first_chunk_threads must be >= 1")
        if self.length_scale is not None and not 0.25 <= self.length_scale <= 4:
            raise ValueError("tts.length_scale must be within [0.25, 4]")
        if not 0 < self.volume <= 4:
            raise ValueError("tts.volume must be within (0, 4]")


class Synthesizer:
    """Text to float32 mono audio. Not thread-safe: one caller at a time."""

    def __init__(
        self, model_dir: Path, config: TtsConfig | None = None, threads: int | None = None
    ) -> None:
        """``threads`` overrides ``config.threads`` and makes the thread pool sleep when idle:
        a second Synthesizer of the voice for the first chunks must not spin between them."""
        import onnxruntime
        from piper.config import PiperConfig, SynthesisConfig
        from piper.voice import PiperVoice

        self.config = config or TtsConfig()
        # built here rather than by PiperVoice.load, which gives onnxruntime its default
        # thread count: a spinning thread pool on cores the LLM and ASR also use
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or self.config.threads
        options.inter_op_num_threads = 1
        if threads is not None:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(
            str(model_dir / "voice.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        voice_config = json.loads((model_dir / "voice.onnx.json").read_text(encoding="utf-8"))
        self._voice = PiperVoice(config=PiperConfig.from_dict(voice_config), session=session)
        self._syn = SynthesisConfig(
            length_scale=self.config.length_scale,
            noise_scale=self.config.noise_scale,
            noise_w_scale=self.config.noise_w_scale,
            normalize_audio=False,
            volume=self.config.volume,
        )

    @property
    def sample_rate(self) -> int:
        """The voice's native sample rate."""
        return int(self._voice.config.sample_rate)

    def stream(self, text: str, sample_rate: int | None = None) -> Iterator[Float32Array]:
        """Yield ``text``'s audio a sentence at a time, at ``sample_rate`` (default: native).

        Raises ValueError for an unsupported rate. Empty or unpronounceable text yields nothing.
        """
        rate = check_rate(sample_rate or self.sample_rate, "output rate")
        resampler = StreamResampler(self.sample_rate, rate)
        for chunk in self._voice.synthesize(text, self._syn):
            audio = np.clip(chunk.audio_float_array, -1.0, 1.0).astype(np.float32)
            out = resampler.process(audio)
            if len(out):
                yield out
        tail = resampler.flush()
        if len(tail):
            yield tail

    def synthesize(self, text: str, sample_rate: int | None = None) -> Float32Array:
        """All of ``text``'s audio at once (see :meth:`stream`)."""
        chunks = list(self.stream(text, sample_rate))
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
