"""Frame-level voice activity detection at 16 kHz: one streaming interface, two models.

A detector takes consecutive float32 frames of exactly ``frame_samples`` samples (use
``audio.frames.FrameBuffer`` to cut them) and answers per frame; it keeps state between frames
of one stream, and ``reset()`` starts a new stream. Turning frame decisions into speech regions
is ``audio.segmenter.SpeechSegmenter``'s job (re-exported here).

- ``WebRtcVad``: the WebRTC GMM detector; binary decisions (probability 0.0 or 1.0).
- ``SileroVad``: the Silero VAD v6 ONNX model; 512-sample frames, a speech probability.
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
