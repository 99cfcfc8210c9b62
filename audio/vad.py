"""Frame-level voice activity detection at 16 kHz: one streaming interface, two models.

A detector takes consecutive float32 frames of exactly ``frame_samples`` samples (use
``audio.frames.FrameBuffer`` to cut them) and answers per frame; it keeps state between frames
of one stream, and ``reset()`` starts a new stream. Turning frame decisions into speech regions
is ``audio.segmenter.SpeechSegmenter``'s job (re-exported here).

- ``WebRtcVad``: the WebRTC GMM detector; binary decisions (probability 0.0 or 1.0).
- ``SileroVad``: the Silero VAD v6 ONNX model; 512-sample frames, a speech probability.

``SpeechTail`` reads where the voice stopped inside the frames a detector still calls speech.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import webrtcvad

from audio.pcm import Float32Array, check_mono, float32_to_pcm16
from audio.segmenter import SegmenterConfig, SpeechEnd, SpeechSegmenter, SpeechStart

if TYPE_CHECKING:
    import onnxruntime

__all__ = [
    "VAD_SAMPLE_RATE",
    "SegmenterConfig",
    "SileroVad",
    "SpeechEnd",
    "SpeechSegmenter",
    "SpeechStart",
    "SpeechTail",
    "VadResult",
    "VoiceActivityDetector",
    "WebRtcVad",
]

VAD_SAMPLE_RATE: Final = 16000


@dataclass(slots=True, frozen=True)
class VadResult:
    """One frame's verdict: ``probability`` of speech in [0, 1] and the thresholded decision."""

    probability: float
    is_speech: bool


@runtime_checkable
class VoiceActivityDetector(Protocol):
    """Streaming VAD over consecutive 16 kHz float32 frames of ``frame_samples`` samples."""

    @property
    def frame_samples(self) -> int:
        """The exact frame length ``process`` accepts, in samples at 16 kHz."""
        ...

    def process(self, frame: Float32Array) -> VadResult:
        """Classify the next frame of the stream; ValueError if its shape or dtype is wrong."""
        ...

    def reset(self) -> None:
        """Forget the stream so far; the next frame starts a new stream."""
        ...


def _check_frame(frame: Float32Array, frame_samples: int) -> None:
    check_mono(frame, np.float32, "frame")
    if len(frame) != frame_samples:
        raise ValueError(f"frame must have {frame_samples} samples at 16 kHz, got {len(frame)}")


class WebRtcVad:
    """The WebRTC VAD. ``aggressiveness`` 0 (least) .. 3 (most eager to call audio non-speech).

    Its decisions carry a built-in hangover: they stay "speech" for about 80-160 ms after speech
    stops (longer at low aggressiveness), and it tends to flag the first ~100 ms of a stream as
    speech while it adapts. Both are properties of the library, not of this wrapper.
    """

    FRAME_MS: Final = (10, 20, 30)

    __slots__ = ("_aggressiveness", "_frame_samples", "_vad")

    def __init__(self, aggressiveness: int = 2, frame_ms: int = 30) -> None:
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, got {aggressiveness!r}")
        if frame_ms not in self.FRAME_MS:
            raise ValueError(f"frame_ms must be one of {self.FRAME_MS}, got {frame_ms!r}")
        self._aggressiveness = aggressiveness
        self._frame_samples = VAD_SAMPLE_RATE * frame_ms // 1000
        self._vad = webrtcvad.Vad(aggressiveness)

    @property
    def frame_samples(self) -> int:
        return self._frame_samples

    def process(self, frame: Float32Array) -> VadResult:
        _check_frame(frame, self._frame_samples)
        speech = bool(self._vad.is_speech(float32_to_pcm16(frame), VAD_SAMPLE_RATE))
        return VadResult(probability=1.0 if speech else 0.0, is_speech=speech)

    def reset(self) -> None:
        # webrtcvad exposes no reset; a fresh instance drops its adaptive noise/hangover state.
        self._vad = webrtcvad.Vad(self._aggressiveness)


class SileroVad:
    """Silero VAD v6 (the ONNX file shipped in faster-whisper) run frame by frame.

    Contract of that ONNX graph: input ``input`` float32 ``(seq, 64 + 512)``: each row is a
    512-sample frame preceded by the last 64 samples of the previous frame (zeros at stream
    start); ``h``, ``c`` float32 ``(1, 1, 128)`` LSTM state in, ``hn``, ``cn`` out; output
    ``speech_probs`` ``(seq,)``. Rows are consumed in order, so one row per call with the state
    carried over equals one batched call over the whole signal.

    ``model_path`` is located by the caller. The session uses one thread, sequential execution.
    """

    FRAME_SAMPLES: Final = 512
    CONTEXT_SAMPLES: Final = 64
    STATE_SHAPE: Final = (1, 1, 128)
    _INPUTS: Final = frozenset({"input", "h", "c"})

    __slots__ = ("_c", "_context", "_h", "_session", "_threshold")

    def __init__(self, model_path: str | Path, threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"Silero VAD model not found: {path}")
        self._threshold = threshold
        self._session = _load_session(path)
        names = {i.name for i in self._session.get_inputs()}
        if names != self._INPUTS:
            raise ValueError(
                f"{path} is not the Silero VAD v6 graph: inputs {sorted(names)}, "
                f"expected {sorted(self._INPUTS)}"
            )
        self._h: npt.NDArray[np.float32] = np.zeros(self.STATE_SHAPE, dtype=np.float32)
        self._c: npt.NDArray[np.float32] = np.zeros(self.STATE_SHAPE, dtype=np.float32)
        self._context: npt.NDArray[np.float32] = np.zeros(self.CONTEXT_SAMPLES, dtype=np.float32)

    @property
    def frame_samples(self) -> int:
        return self.FRAME_SAMPLES

    @property
    def threshold(self) -> float:
        return self._threshold

    def process(self, frame: Float32Array) -> VadResult:
        _check_frame(frame, self.FRAME_SAMPLES)
        x = np.concatenate([self._context, frame])[None, :]  # (1, 576)
        probs, self._h, self._c = self._session.run(None, {"input": x, "h": self._h, "c": self._c})
        self._context = frame[-self.CONTEXT_SAMPLES :].copy()
        p = float(np.asarray(probs).reshape(-1)[0])
        return VadResult(probability=p, is_speech=p >= self._threshold)

    def reset(self) -> None:
        self._h = np.zeros(self.STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(self.STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(self.CONTEXT_SAMPLES, dtype=np.float32)


class SpeechTail:
    """How much of the audio up to each frame's end is already quiet, from the signal level.

    A VAD keeps saying "speech" for a while after the voice stops: Silero v6 by 32 ms on average
    (6-50 ms over Piper's speech, clean and with noise at -60 and -50 dBFS), as its probability
    decays over the next frames. Silence timers that start at the VAD's last speech frame run
    late by that much. This tracker finds the last block of ``block_samples`` whose RMS is
    above both ``below_peak_db`` under the talker's recent peak and ``above_noise_db`` over the
    background (the median block of the non-speech frames), and reports the time since, capped
    at ``max_tail_s``; zero while the speech run had no such block (noise as loud as the voice).
    The cap bounds the error where the level misleads (a soft ending, loud noise): with one
    Silero frame, the same speech ended 0-4 ms after the true end on average
    (worst 28 ms before it), against the VAD's 32 ms after.
    """

    __slots__ = (
        "_above_noise", "_below_peak", "_block", "_decay_per_s", "_max_tail", "_noise", "_peak",
        "_rate", "_run_loud", "_since_loud",
    )  # fmt: skip

    FLOOR: Final = 1e-4  # -80 dBFS: quieter blocks are never voice

    def __init__(
        self,
        sample_rate: int = VAD_SAMPLE_RATE,
        block_samples: int = 128,
        below_peak_db: float = 40.0,
        above_noise_db: float = 10.0,
        max_tail_s: float = 0.032,
        peak_decay_db_per_s: float = 15.0,
    ) -> None:
        if block_samples < 1 or sample_rate < 1 or max_tail_s < 0:
            raise ValueError("SpeechTail needs block_samples, sample_rate >= 1, max_tail_s >= 0")
        self._rate = sample_rate
        self._block = block_samples
        self._below_peak = 10 ** (-below_peak_db / 20)
        self._above_noise = 10 ** (above_noise_db / 20)
        self._max_tail = max_tail_s
        self._decay_per_s = peak_decay_db_per_s
        self._peak = 0.0
        self._noise: float | None = None
        self._since_loud = 0  # samples since the last loud block
        self._run_loud = False  # the speech run so far had a loud block (else: no reading)

    def update(self, frame: Float32Array, is_speech: bool) -> float:
        """Seconds of quiet at the end of ``frame`` (at most ``max_tail_s``), given the VAD's
        decision for it; frames must come in order."""
        check_mono(frame, np.float32, "frame")
        n = len(frame) // self._block
        rms = np.sqrt(np.mean(np.square(frame[: n * self._block].reshape(n, self._block)), axis=1))
        duration = len(frame) / self._rate
        if is_speech:
            decay = 10 ** (-self._decay_per_s * duration / 20)
            self._peak = max(self._peak * decay, float(rms.max(initial=0.0)))
        else:
            self._run_loud = False
            if n:
                level = float(np.median(rms))
                self._noise = level if self._noise is None else 0.9 * self._noise + 0.1 * level
        threshold = max(
            self._peak * self._below_peak, (self._noise or 0.0) * self._above_noise, self.FLOOR
        )
        loud = np.flatnonzero(rms > threshold)
        if len(loud):
            self._since_loud = len(frame) - (int(loud[-1]) + 1) * self._block
            self._run_loud |= is_speech
        else:
            self._since_loud += len(frame)
        if not self._run_loud:
            return 0.0  # speech no louder than the noise: the level tells nothing
        return min(self._since_loud / self._rate, self._max_tail)

    def reset(self) -> None:
        self._peak, self._noise, self._since_loud, self._run_loud = 0.0, None, 0, False


def _load_session(path: Path) -> onnxruntime.InferenceSession:
    # Imported here, not at module top: onnxruntime takes a noticeable time to import and
    # WebRtcVad users should not pay for it.
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # onnxruntime raises its own pybind exception types
        raise ValueError(f"cannot load ONNX model {path}: {err}") from err
