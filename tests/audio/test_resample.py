"""Resampler: passband gain, stopband rejection, streaming == one-shot, clear errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from audio.pcm import Float32Array, float32_to_pcm16
from audio.resample import SUPPORTED_RATES, StreamResampler, check_rate, resample, resample_pcm16

PAIRS = list(itertools.permutations(SUPPORTED_RATES, 2))
DOWN_PAIRS = [(s, d) for s, d in PAIRS if d < s]


def tone(freq: float, rate: int, seconds: float = 0.25, amp: float = 0.5) -> Float32Array:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def middle(y: Float32Array) -> Float32Array:
    """Drop the first and last 20 %, where the filter's edge transients live."""
    k = len(y) // 5
    return y[k : len(y) - k]


def tone_amplitude(y: Float32Array, freq: float, rate: int) -> float:
    """Least-squares amplitude of a ``freq`` sinusoid in ``y`` (phase-free)."""
    t = np.arange(len(y)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y.astype(np.float64), rcond=None)
    return float(np.hypot(*coef))


def rms(y: Float32Array) -> float:
    return float(np.sqrt(np.mean(y.astype(np.float64) ** 2)))


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_1khz_tone_passes_within_half_a_db(src: int, dst: int) -> None:
    y = resample(tone(1000, src), src, dst)
    assert y.dtype == np.float32
    assert abs(len(y) - len(tone(1000, src)) * dst / src) <= 0.5
    gain_db = 20 * np.log10(tone_amplitude(middle(y), 1000, dst) / 0.5)
    assert abs(gain_db) < 0.5


@pytest.mark.parametrize(("src", "dst", "freq"), [(48000, 8000, 6000), (24000, 16000, 10000)])
def test_tone_above_target_nyquist_is_rejected(src: int, dst: int, freq: float) -> None:
    x = tone(freq, src)
    y = resample(x, src, dst)
    assert 20 * np.log10(rms(middle(y)) / rms(x)) <= -40


@pytest.mark.parametrize(("src", "dst"), DOWN_PAIRS)
def test_every_downsampling_pair_rejects_a_tone_between_the_nyquists(src: int, dst: int) -> None:
    freq = (src / 2 + dst / 2) / 2
    x = tone(freq, src)
    assert 20 * np.log10(rms(middle(resample(x, src, dst))) / rms(x)) <= -40


def stream_in_chunks(
    rs: StreamResampler, x: Float32Array, rng: np.random.Generator
) -> Float32Array:
    out, i = [], 0
    while i < len(x):
        n = int(rng.integers(0, 900))  # 0-sized chunks included on purpose
        out.append(rs.process(x[i : i + n]))
        i += n
    out.append(rs.flush())
    return np.concatenate(out)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (48000, 16000),
        (16000, 48000),
        (22050, 16000),
        (8000, 16000),
        (16000, 16000),
        (44100, 24000),
        (24000, 8000),
    ],
)
def test_chunked_stream_equals_one_shot(src: int, dst: int) -> None:
    rng = np.random.default_rng(src + dst)
    x = (0.3 * rng.standard_normal(src // 2)).astype(np.float32)
    expected = resample(x, src, dst)
    rs = StreamResampler(src, dst)
    for _ in range(2):  # flush restarts the stream, so a second signal comes out the same
        y = stream_in_chunks(rs, x, rng)
        assert len(y) == len(expected)
        assert np.max(np.abs(y - expected)) < 1e-4


def test_last_chunk_flag_is_the_same_as_flush() -> None:
    x = tone(440, 24000)
    rs = StreamResampler(24000, 16000)
    y = np.concatenate([rs.process(x[:1000]), rs.process(x[1000:], last=True)])
    assert np.max(np.abs(y - resample(x, 24000, 16000))) < 1e-4


def test_reset_discards_buffered_input() -> None:
    x = tone(440, 48000)
    rs = StreamResampler(48000, 16000)
    rs.process(np.ones(5000, np.float32))
    rs.reset()
    y = np.concatenate([rs.process(x), rs.flush()])
    assert np.max(np.abs(y - resample(x, 48000, 16000))) < 1e-4


def test_pcm16_stream_equals_pcm16_one_shot() -> None:
    data = float32_to_pcm16(tone(300, 8000))
    rs = StreamResampler(8000, 24000)
    y = rs.process_pcm16(data[:1000]) + rs.process_pcm16(data[1000:], last=True)
    assert y == resample_pcm16(data, 8000, 24000)


@pytest.mark.parametrize("rate", [11025, 32000, 0, -16000, 16000.0, True, "16000"])
def test_unsupported_rates_name_the_supported_ones(rate: object) -> None:
    with pytest.raises(ValueError, match="8000, 16000, 22050, 24000, 44100, 48000"):
        check_rate(rate)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="supported rates"):
        resample(np.zeros(10, np.float32), rate, 16000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="supported rates"):
        StreamResampler(16000, rate)  # type: ignore[arg-type]


def test_bad_audio_and_quality_are_rejected() -> None:
    with pytest.raises(ValueError, match="float32"):
        resample(np.zeros(10, np.int16), 16000, 8000)
    with pytest.raises(ValueError, match="mono"):
        StreamResampler(16000, 8000).process(np.zeros((10, 2), np.float32))
    with pytest.raises(ValueError, match="quality"):
        StreamResampler(16000, 8000, quality="best")
    with pytest.raises(ValueError, match="even number of bytes"):
        resample_pcm16(b"\x00\x00\x00", 16000, 8000)
