"""The audio package's dependency rule (DESIGN.md): it never imports asyncio, voice, llm_engine."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import audio

FORBIDDEN = ("asyncio", "voice", "llm_engine", "onnxruntime")  # onnxruntime: only on first use


def test_importing_every_audio_module_pulls_in_nothing_forbidden() -> None:
    modules = [f"audio.{m.name}" for m in pkgutil.iter_modules(audio.__path__)]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    root = Path(audio.__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
