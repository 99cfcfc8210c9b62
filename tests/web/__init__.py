"""The browser page's tests (headless Chromium and Firefox against the real server)."""

from __future__ import annotations

import os
import shutil


def find_browser(env: str, names: tuple[str, ...]) -> str | None:
    """``$env``, else the first of ``names`` on ``PATH``."""
    if path := os.environ.get(env):
        return path
    return next(filter(None, map(shutil.which, names)), None)
