"""The `parley` command line, run as a user runs it: a subprocess, real files, real models."""

from __future__ import annotations

import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from tests.corpus import word_errors


def parley(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voice.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("parley: error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def write_wav(path: Path, channels: int = 1, width: int = 2, rate: int = 16_000, n: int = 1600):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(b"\x00" * (n * channels * width))
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_say_then_transcribe_round_trip(tmp_path):
    wav = tmp_path / "a.wav"
    said = parley("say", "Hello there", "-o", str(wav))
    assert said.returncode == 0, said.stderr
    heard = parley("transcribe", str(wav))
    assert heard.returncode == 0, heard.stderr
    assert word_errors("hello there", heard.stdout) == (0, 2)


def test_say_at_a_telephone_rate(tmp_path):
    wav = tmp_path / "phone.wav"
    assert (
        parley("say", "Your call is important to us.", "-o", str(wav), "--rate", "8000").returncode
        == 0
    )
    with wave.open(str(wav)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
    errors, words = word_errors(
        "your call is important to us", parley("transcribe", str(wav)).stdout
    )
    assert errors / words <= 0.2


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: _write(p, b"this is not audio"), "not a PCM WAV file"),
        (lambda p: _write(p, b""), "not a PCM WAV file"),
        (lambda p: write_wav(p, n=0), "contains no audio"),
        (lambda p: write_wav(p, channels=2), "2 channels, expected mono"),
        (lambda p: write_wav(p, width=1), "8-bit samples, expected 16-bit"),
        (lambda p: write_wav(p, rate=11_025), "11025 Hz is not supported"),
    ],
    ids=["text", "empty-file", "no-frames", "stereo", "8-bit", "rate"],
)
def test_bad_audio_gets_one_clear_error(tmp_path, make, needle):
    path = make(tmp_path / "in.wav")
    assert_one_line_error(parley("transcribe", str(path)), needle)


def test_missing_file_and_directory(tmp_path):
    assert_one_line_error(parley("transcribe", str(tmp_path / "nope.wav")), "no such file")
    assert_one_line_error(parley("transcribe", str(tmp_path)), "is a directory")


def test_say_rejects_bad_requests(tmp_path):
    assert_one_line_error(parley("say", "  ", "-o", str(tmp_path / "x.wav")), "empty")
    out = tmp_path / "x.wav"
    assert_one_line_error(parley("say", "Hi.", "-o", str(out), "--rate", "11025"), "supported")
    assert_one_line_error(
        parley("say", "Hi.", "-o", str(tmp_path / "no" / "x.wav")), "cannot write"
    )


def _profile(tmp_path: Path, part: str, sha: str = "0" * 64) -> Path:
    (tmp_path / "models.toml").write_text(
        '[models."custom"]\nset = "optional"\nkind = "asr"\nformat = "ctranslate2"\n'
        'license = "MIT"\nsource = "t"\npurpose = "t"\n[[models."custom".files]]\n'
        f'name = "model.bin"\nsha256 = "{sha}"\nparts = ["{part}"]\n'
    )
    profile = tmp_path / "profile.toml"
    profile.write_text(f'registry = "{tmp_path / "models.toml"}"\ncache_dir = "{tmp_path}"\n')
    return profile


def test_missing_model_package_names_the_install_command(tmp_path):
    profile = _profile(tmp_path, "parley-no-such-model==1.0:model.bin")
    wav = write_wav(tmp_path / "in.wav")
    result = parley("--config", str(profile), "transcribe", "--model", "custom", str(wav))
    assert_one_line_error(result, "parley-no-such-model==1.0", "parley models install custom")


def test_wrong_hash_fails_verify_and_prepare(tmp_path):
    profile = _profile(tmp_path, "faster-whisper==1.2.1:faster_whisper/assets/silero_vad_v6.onnx")
    verify = parley("--config", str(profile), "models", "verify", "custom")
    assert verify.returncode == 1 and "FAIL" in verify.stdout and "sha256" in verify.stdout
    assert "Traceback" not in verify.stderr
    assert_one_line_error(parley("--config", str(profile), "models", "prepare", "custom"), "sha256")


def test_corrupt_cache_is_detected_and_rebuilt(tmp_path):
    env = {"PARLEY_CACHE_DIR": str(tmp_path)}
    assert parley("models", "prepare", "silero-vad", env=env).returncode == 0
    model = tmp_path / "models" / "silero-vad" / "silero_vad.onnx"
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    verify = parley("models", "verify", "silero-vad", env=env)
    assert verify.returncode == 1 and "corrupt" in verify.stdout
    assert parley("models", "prepare", "silero-vad", env=env).returncode == 0
    assert parley("models", "verify", "silero-vad", env=env).returncode == 0


def test_models_verify_passes_on_the_default_set():
    result = parley("models", "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 4


def test_unknown_model_and_bad_profile(tmp_path):
    assert_one_line_error(parley("models", "prepare", "nonexistent"), "unknown model")
    bad = tmp_path / "bad.toml"
    bad.write_text("[asr]\nbeam_size = 0\n")
    assert_one_line_error(parley("--config", str(bad), "models", "list"), "beam_size")
    bad.write_text("[asr]\nbeem_size = 2\n")
    assert_one_line_error(parley("--config", str(bad), "models", "list"), "beem_size")
    bad.write_text("not toml [")
    assert_one_line_error(parley("--config", str(bad), "models", "list"), "not valid TOML")


def test_the_api_key_comes_from_the_profile_or_the_environment(tmp_path, monkeypatch):
    from voice.config import load_config

    profile = tmp_path / "keyed.toml"
    profile.write_text('[server]\napi_key = "from-profile"\n')
    monkeypatch.delenv("PARLEY_API_KEY", raising=False)
    assert load_config().server.api_key == ""  # the default: no key
    assert load_config(profile).server.api_key == "from-profile"
    monkeypatch.setenv("PARLEY_API_KEY", "from-env")
    assert load_config(profile).server.api_key == "from-env"
