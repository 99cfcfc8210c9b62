"""VAD models on real (espeak-ng) speech, and the streaming contract of each detector."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from audio.pcm import Float32Array
from audio.segmenter import SegmenterConfig, SpeechEnd, SpeechSegmenter
from audio.vad import SileroVad, SpeechTail, VadResult, VoiceActivityDetector, WebRtcVad
from tests.audio.conftest import SR, SpeechSignal

TOLERANCE = SR // 10  # 100 ms
# Padding widens regions on purpose; boundary accuracy is measured without it.
UNPADDED = SegmenterConfig(pad_start_ms=0, pad_end_ms=0)


def run_vad(vad: VoiceActivityDetector, x: Float32Array) -> list[VadResult]:
    n = vad.frame_samples
    return [vad.process(x[i : i + n]) for i in range(0, len(x) - n + 1, n)]


def find_regions(
    vad: VoiceActivityDetector, x: Float32Array, config: SegmenterConfig | None = None
) -> list[tuple[int, int]]:
    seg = SpeechSegmenter(config)
    events = [e for r in run_vad(vad, x) for e in seg.push(r.is_speech, vad.frame_samples)]
    events += seg.finish()
    return [(e.start, e.end) for e in events if isinstance(e, SpeechEnd)]


def boundary_errors_ms(
    found: list[tuple[int, int]], truth: list[tuple[int, int]]
) -> list[tuple[float, float]]:
    assert len(found) == len(truth), f"found {found}, expected regions near {truth}"
    pairs = zip(found, truth, strict=True)
    return [((s - ts) * 1000 / SR, (e - te) * 1000 / SR) for (s, e), (ts, te) in pairs]


# --- WebRTC ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("frame_ms", "samples"), [(10, 160), (20, 320), (30, 480)])
def test_webrtc_frame_sizes(frame_ms: int, samples: int) -> None:
    vad = WebRtcVad(frame_ms=frame_ms)
    assert vad.frame_samples == samples and isinstance(vad, VoiceActivityDetector)


def test_webrtc_finds_both_utterances_within_100ms(speech_signal: SpeechSignal) -> None:
    found = find_regions(WebRtcVad(aggressiveness=3, frame_ms=10), speech_signal.samples, UNPADDED)
    for start_err, end_err in boundary_errors_ms(found, speech_signal.regions):
        assert abs(start_err) <= 100 and abs(end_err) <= 100


@pytest.mark.parametrize(("aggressiveness", "frame_ms"), [(0, 30), (1, 20), (2, 30), (3, 20)])
def test_webrtc_starts_are_accurate_and_ends_lag_by_its_hangover(
    speech_signal: SpeechSignal, aggressiveness: int, frame_ms: int
) -> None:
    vad = WebRtcVad(aggressiveness=aggressiveness, frame_ms=frame_ms)
    for start_err, end_err in boundary_errors_ms(
        find_regions(vad, speech_signal.samples, UNPADDED), speech_signal.regions
    ):
        assert abs(start_err) <= 100
        assert -100 <= end_err <= 200  # the library keeps saying "speech" for 80-160 ms


def test_webrtc_decisions_are_binary_and_reset_restarts_the_stream(
    speech_signal: SpeechSignal,
) -> None:
    vad = WebRtcVad(aggressiveness=2, frame_ms=20)
    first = run_vad(vad, speech_signal.samples[: SR * 2])
    assert {r.probability for r in first} == {0.0, 1.0}
    assert all(r.is_speech == (r.probability == 1.0) for r in first)
    vad.reset()
    assert run_vad(vad, speech_signal.samples[: SR * 2]) == first


def test_webrtc_rejects_bad_settings_and_frames() -> None:
    with pytest.raises(ValueError, match="aggressiveness"):
        WebRtcVad(aggressiveness=4)
    with pytest.raises(ValueError, match="frame_ms"):
        WebRtcVad(frame_ms=25)
    with pytest.raises(ValueError, match="480 samples"):
        WebRtcVad(frame_ms=30).process(np.zeros(512, np.float32))
    with pytest.raises(ValueError, match="float32"):
        WebRtcVad(frame_ms=10).process(np.zeros(160, np.int16))


# --- Silero ---------------------------------------------------------------------------------


def test_silero_finds_both_utterances_within_100ms(
    silero_vad: SileroVad, speech_signal: SpeechSignal
) -> None:
    assert isinstance(silero_vad, VoiceActivityDetector) and silero_vad.frame_samples == 512
    for config in (UNPADDED, SegmenterConfig()):
        silero_vad.reset()
        found = find_regions(silero_vad, speech_signal.samples, config)
        for start_err, end_err in boundary_errors_ms(found, speech_signal.regions):
            assert abs(start_err) <= 100 and abs(end_err) <= 100


def test_silero_probabilities_separate_speech_from_noise(
    silero_vad: SileroVad, speech_signal: SpeechSignal
) -> None:
    probs = np.array([r.probability for r in run_vad(silero_vad, speech_signal.samples)])
    centres = np.arange(len(probs)) * 512 + 256
    (s1, e1), (s2, e2) = speech_signal.regions
    in_speech = ((centres >= s1) & (centres < e1)) | ((centres >= s2) & (centres < e2))
    assert np.all((probs >= 0) & (probs <= 1))
    assert np.median(probs[in_speech]) > 0.9
    assert np.max(probs[centres < s1 - SR // 10]) < 0.1  # leading noise, 100 ms clear of speech


def test_silero_streaming_matches_faster_whisper_batched_model(
    silero_vad: SileroVad, silero_model_path: Path, speech_signal: SpeechSignal
) -> None:
    """Frame-by-frame with carried state == faster-whisper's one batched call (its oracle)."""
    fw_vad = importlib.import_module("faster_whisper.vad")
    x = speech_signal.samples[: (len(speech_signal.samples) // 512) * 512]
    expected = np.asarray(fw_vad.SileroVADModel(str(silero_model_path))(x)).reshape(-1)
    got = np.array([r.probability for r in run_vad(silero_vad, x)])
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) < 1e-4


def test_silero_reset_restarts_the_stream(
    silero_vad: SileroVad, speech_signal: SpeechSignal
) -> None:
    x = speech_signal.samples[SR : SR * 2]
    first = run_vad(silero_vad, x)
    again = run_vad(silero_vad, x)  # carried state: the same audio scores differently
    assert again != first
    silero_vad.reset()
    assert [r.probability for r in run_vad(silero_vad, x)] == pytest.approx(
        [r.probability for r in first], abs=1e-6
    )


def test_silero_threshold_decides(silero_model_path: Path, speech_signal: SpeechSignal) -> None:
    strict = SileroVad(silero_model_path, threshold=0.99)
    results = run_vad(strict, speech_signal.samples[: SR * 2])
    assert all(r.is_speech == (r.probability >= 0.99) for r in results)


def test_silero_rejects_bad_arguments(silero_vad: SileroVad, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="threshold"):
        SileroVad(tmp_path / "x.onnx", threshold=1.5)
    with pytest.raises(FileNotFoundError, match="not found"):
        SileroVad(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    with pytest.raises(ValueError, match="cannot load ONNX model"):
        SileroVad(junk)
    with pytest.raises(ValueError, match="512 samples"):
        silero_vad.process(np.zeros(480, np.float32))


# --- SpeechTail -----------------------------------------------------------------------------


def _tone(n: int, dbfs: float) -> Float32Array:
    t = np.arange(n) / SR
    return (np.sin(2 * np.pi * 220 * t) * np.sqrt(2) * 10 ** (dbfs / 20)).astype(np.float32)


def _noise(n: int, dbfs: float, seed: int = 0) -> Float32Array:
    return (np.random.default_rng(seed).standard_normal(n) * 10 ** (dbfs / 20)).astype(np.float32)


def test_speech_tail_finds_where_the_voice_stopped_inside_a_frame() -> None:
    tail = SpeechTail()
    assert tail.update(_noise(512, -60), is_speech=False) == 0.0  # no voice yet: no reading
    assert tail.update(_noise(512, -60, 1) + _tone(512, -20), is_speech=True) == 0.0
    half = np.concatenate([_tone(256, -20), np.zeros(256, np.float32)]) + _noise(512, -60, 2)
    assert tail.update(half, is_speech=True) == pytest.approx(256 / SR)  # the VAD's hangover
    assert tail.update(_noise(512, -60, 3), is_speech=True) == 0.032  # at most one frame back
    tail.reset()  # forgets the voice: the same frame is no longer a tail
    assert tail.update(_noise(512, -60, 3), is_speech=True) == 0.0


def test_speech_tail_reads_nothing_when_the_voice_is_no_louder_than_the_noise() -> None:
    tail = SpeechTail()
    for seed in range(5):
        tail.update(_noise(512, -30, seed), is_speech=False)
    voice = _noise(512, -30, 9) + _tone(512, -32)  # under the background's +10 dB
    assert tail.update(voice, is_speech=True) == 0.0
    assert tail.update(_noise(512, -30, 10), is_speech=True) == 0.0


def test_speech_tail_moves_silero_ends_toward_the_true_ends(
    silero_vad: SileroVad, speech_signal: SpeechSignal
) -> None:
    """On real speech: each region's end moves back by at most one frame, and the mean error
    against the true end shrinks."""
    x, n = speech_signal.samples, 512
    tail = SpeechTail()
    vad_ends, refined = [], []
    for i in range(0, len(x) - n + 1, n):
        r = silero_vad.process(x[i : i + n])
        quiet = tail.update(x[i : i + n], r.is_speech)
        if r.is_speech:
            end = i + n
            if vad_ends and end - vad_ends[-1] <= SR // 4:  # the same region goes on
                vad_ends[-1], refined[-1] = end, end - quiet * SR
            else:
                vad_ends.append(end)
                refined.append(end - quiet * SR)
    truth = [e for _, e in speech_signal.regions]
    assert len(vad_ends) == len(truth)
    assert all(v - n <= r <= v for v, r in zip(vad_ends, refined, strict=True))
    vad_error = np.mean([abs(v - t) for v, t in zip(vad_ends, truth, strict=True)])
    refined_error = np.mean([abs(r - t) for r, t in zip(refined, truth, strict=True)])
    assert refined_error < vad_error


def test_speech_tail_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="SpeechTail"):
        SpeechTail(block_samples=0)
    with pytest.raises(ValueError, match="frame"):
        SpeechTail().update(np.zeros((2, 256), np.float32), is_speech=False)
