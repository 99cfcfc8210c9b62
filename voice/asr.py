"""Speech recognition: faster-whisper's CTranslate2 Whisper over a prepared model directory.

faster-whisper pads every call to a 30 s encoder window; on this CPU that costs ~340 ms of
encoding for any utterance. Whisper's encoder accepts shorter feature windows, so Parley encodes
the audio plus a margin of trailing silence instead (a 3.5 s utterance in a 6 s window: ~37 ms).
The silence matters: with no trailing silence in the window the decoder does not see the speech
end and repeats itself. A cap on decoded tokens per second of audio and a repetition check
guard against the remaining loops.

Short windows read clear speech exactly as the 30 s window does, but lose accuracy on hard
audio (measured on a robotic espeak voice: errors cluster in low-confidence results). So a
result whose mean token log-probability is below ``retry_below_logprob`` is decoded again in the
full window, and the more confident text is kept: clear speech pays for a short window only.
``bench/speech.py`` prints word error and encode cost against the margin and with the retry.

Audio longer than ``max_window_s`` falls back to faster-whisper's long-form transcription.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
FRAMES_PER_SECOND = 100  # Whisper's mel hop is 10 ms
SILENCE_PEAK = 10 ** (-60 / 20)  # below -60 dBFS everywhere: nothing to recognise
MAX_CONTEXT_TOKENS = 448 // 2 - 1  # a previous-text prompt takes at most half the text context


@dataclass(slots=True)
class AsrConfig:
    """How Parley runs Whisper.

    window_margin_s: trailing silence added to the encoder window, beyond the audio itself.
    window_step_s:   windows are rounded up to a multiple of this (fewer distinct shapes).
    max_window_s:    the model's own window (30 s); longer audio is transcribed long-form.
    """

    language: str = "en"
    beam_size: int = 1
    window_margin_s: float = 2.0
    # Silence put before the audio: speech starting at the window's first frame is misheard
    # ("Hello there" read as "Below there" in 4 of 20 syntheses; 0 of 20 with 0.4 s).
    lead_silence_s: float = 0.4
    window_step_s: float = 1.0
    max_window_s: float = 30.0
    max_tokens_per_second: float = 8.0
    no_speech_threshold: float = 0.6
    # A short-window result less confident than this (mean token log-probability) is decoded
    # again in the full window and the more confident result kept; None disables the retry.
    retry_below_logprob: float | None = -0.5
    # A live session's finals, which a caller waits for, retry only below this: on one thread
    # the 30 s window costs ~700 ms. On the 24 corpus utterances (Piper with noise, espeak)
    # -0.5 retried 4 and took word error from 7.78 to 7.22 %; -1.0 retries 1 of them (the
    # one whose errors the retry removes), and clipped one-word turns ("Stop." read as
    # "Start. Start. Start.") are the results it is for. 8 s and 15 s windows gained nothing.
    live_retry_below_logprob: float | None = -1.0
    cpu_threads: int = 2
    # Transcriptions that may run at once (CTranslate2 workers, cpu_threads each); the live
    # AsrWorker runs one partial at a time and a final beside it, so that a final never waits
    # behind a partial.
    workers: int = 2
    # int8 weights: measured on this CPU (24 corpus utterances, 1 thread), encode p50 47 vs
    # 68 ms and decode 6.4 vs 11.1 ms per token against float32, same word error (2 threads:
    # 131 vs 192 ms per utterance). fp16 is not native here.
    compute_type: str = "int8"

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError("asr.beam_size must be at least 1")
        if not 1 <= self.workers <= 8:
            raise ValueError("asr.workers must be within [1, 8]")
        if not 0 <= self.lead_silence_s <= 2:
            raise ValueError("asr.lead_silence_s must be within [0, 2]")
        if not 0 <= self.window_margin_s < self.max_window_s:
            raise ValueError("asr.window_margin_s must be in [0, max_window_s)")
        if not 0 < self.window_step_s <= self.max_window_s <= 30:
            raise ValueError("asr windows must satisfy 0 < window_step_s <= max_window_s <= 30")

    def window_for(self, duration_s: float) -> float:
        """The encoder window (seconds) for an utterance of ``duration_s`` seconds."""
        steps = math.ceil((duration_s + self.window_margin_s) / self.window_step_s)
        return min(self.max_window_s, steps * self.window_step_s)


@dataclass(slots=True)
class Transcript:
    text: str
    window_s: float
    encode_s: float = 0.0
    decode_s: float = 0.0
    avg_logprob: float = 0.0  # the decoder's mean token log-probability: its confidence
    no_speech_prob: float = 0.0
    tokens: list[int] = field(default_factory=list)
    retried: bool = False  # decoded a second time in the full window (low confidence)
    no_speech: bool = False  # judged silence: Whisper's no-speech rule, or no signal at all


class Transcriber:
    """Transcribes 16 kHz mono float32 audio, from up to ``config.workers`` threads at once
    (CTranslate2 runs each call on its own worker; the Python side keeps no per-call state)."""

    def __init__(self, model_dir: Path, config: AsrConfig | None = None) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.config = config or AsrConfig()
        self._whisper = WhisperModel(
            str(model_dir),
            device="cpu",
            compute_type=self.config.compute_type,
            cpu_threads=self.config.cpu_threads,
            num_workers=self.config.workers,
            local_files_only=True,
        )
        multilingual = self._whisper.model.is_multilingual
        language = self.config.language if multilingual else "en"
        self._tokenizer = Tokenizer(
            self._whisper.hf_tokenizer, multilingual, "transcribe", language
        )
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]) or [])
        self._context_prompts: dict[str, list[int]] = {}

    def transcribe(
        self,
        audio: np.ndarray,
        window_s: float | None = None,
        *,
        live: bool = False,
        context: str = "",
    ) -> Transcript:
        """Transcribe ``audio`` (float32, 16 kHz, mono); ``window_s`` overrides the window;
        ``live``: a caller waits (``live_retry_below_logprob`` decides the retry); ``context``:
        text the decoder takes as having come just before (Whisper's previous-text prompt), which
        steers how it spells what it is unsure of ("Mm-hmm." rather than "in a mom"); audio
        longer than one window is transcribed without it."""
        if audio.ndim != 1:
            raise ValueError(f"expected mono audio (1-D), got shape {audio.shape}")
        audio = np.asarray(audio, dtype=np.float32)
        duration = len(audio) / SAMPLE_RATE
        if not len(audio) or float(np.max(np.abs(audio))) < SILENCE_PEAK:
            return Transcript("", 0.0, no_speech=True)  # Whisper hallucinates on digital silence
        if duration + self.config.lead_silence_s > self.config.max_window_s:
            return self._long_form(audio)
        prompt = self._prompt_for(context)
        if window_s is not None:
            return self._transcribe_window(audio, window_s, prompt)
        result = self._transcribe_window(
            audio, self.config.window_for(duration + self.config.lead_silence_s), prompt
        )
        floor = self.config.live_retry_below_logprob if live else self.config.retry_below_logprob
        if (
            floor is None
            or result.avg_logprob >= floor
            or result.window_s >= self.config.max_window_s
        ):
            return result
        full = self._transcribe_window(audio, self.config.max_window_s, prompt)
        best = full if full.avg_logprob > result.avg_logprob else result
        best.encode_s, best.decode_s = (
            result.encode_s + full.encode_s,
            result.decode_s + full.decode_s,
        )
        best.retried = True
        return best

    def _prompt_for(self, context: str) -> list[int]:
        if not context.strip():
            return self._prompt
        cached = self._context_prompts.get(context)
        if cached is None:
            previous = self._tokenizer.encode(" " + context.strip())[-MAX_CONTEXT_TOKENS:]
            cached = [self._tokenizer.sot_prev, *previous, *self._prompt]
            if len(self._context_prompts) >= 16:
                self._context_prompts.clear()
            self._context_prompts[context] = cached
        return cached

    def _transcribe_window(
        self, audio: np.ndarray, window_s: float, prompt: list[int]
    ) -> Transcript:
        import ctranslate2

        lead = np.zeros(round(self.config.lead_silence_s * SAMPLE_RATE), np.float32)
        audio = np.concatenate([lead, audio])
        n_samples = round(window_s * SAMPLE_RATE)
        frames = round(window_s * FRAMES_PER_SECOND)
        padded = np.pad(audio[:n_samples], (0, max(0, n_samples - len(audio))))
        features = self._whisper.feature_extractor(padded)[:, :frames]  # [n_mels, frames]
        t0 = time.perf_counter()
        encoded = self._whisper.model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])), to_cpu=False
        )
        t1 = time.perf_counter()
        budget = int((len(audio) - len(lead)) / SAMPLE_RATE * self.config.max_tokens_per_second) + 8
        result = self._whisper.model.generate(
            encoded,
            [prompt],
            beam_size=self.config.beam_size,
            max_length=len(prompt) + budget,
            suppress_blank=True,
            suppress_tokens=self._suppress,
            return_scores=True,
            return_no_speech_prob=True,
        )[0]
        t2 = time.perf_counter()
        tokens = [t for t in result.sequences_ids[0] if t < self._tokenizer.eot]
        no_speech = result.no_speech_prob > self.config.no_speech_threshold and (
            result.scores[0] < -1.0  # Whisper's own rule: likely silence, not confidently words
        )
        if no_speech:
            tokens = []
        text = self._tokenizer.decode(tokens).strip()
        if len(result.sequences_ids[0]) >= budget:  # stopped by the budget, not by the model
            text = _drop_cut_word(text)
        text = drop_repeats(text)
        return Transcript(
            text,
            window_s,
            t1 - t0,
            t2 - t1,
            result.scores[0],
            result.no_speech_prob,
            tokens,
            no_speech=no_speech,
        )

    def _long_form(self, audio: np.ndarray) -> Transcript:
        t0 = time.perf_counter()
        segments, _ = self._whisper.transcribe(
            audio,
            language=self._tokenizer.language_code,
            beam_size=self.config.beam_size,
            condition_on_previous_text=False,  # one misheard window must not steer the next
        )
        text = " ".join(s.text.strip() for s in segments)
        return Transcript(text, self.config.max_window_s, decode_s=time.perf_counter() - t0)


def _drop_cut_word(text: str) -> str:
    """``text`` without its last word unless that ends a sentence or clause: the decoder was
    stopped mid-loop ("Uh-huh. Uh-huh. Uh-h"), so the last word is likely cut off."""
    head, _, last = text.rpartition(" ")
    return text if last.endswith((".", ",", "!", "?", ";", ":")) else head


def drop_repeats(text: str, min_period: int = 3) -> str:
    """Cut Whisper's loops down to one copy, comparing words without case or punctuation.

    Whisper loops when it loses the end of the audio, in two shapes: the whole transcript starts
    over (``A B C D A B``), or its tail repeats a span at least twice (``X A B C A B C A``).
    Either is cut to its first period. A restart of fewer than ``min_period`` words counts only
    past two copies, and one-word repeats never: people do say "no, no, no".
    """
    words = text.split()
    keys = [w.strip(".,!?;:\"'").lower() for w in words]
    n = len(keys)
    for period in range(2, n - 1):  # the whole transcript restarts
        long_enough = n - period >= (2 if period >= min_period else period + 1)
        if long_enough and keys[period:] == keys[: n - period]:
            return " ".join(words[:period])
    for period in range(min_period, n // 2 + 1):
        start = n - period  # grow the periodic suffix backwards while it matches
        while start > 0 and keys[start - 1] == keys[start - 1 + period]:
            start -= 1
        if n - start >= 2 * period:
            return " ".join(words[: start + period])
    return text
