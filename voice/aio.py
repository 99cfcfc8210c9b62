"""Small asyncio helpers shared by the single-thread workers (ASR, TTS)."""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


def settle_like(target: asyncio.Future[T], source: asyncio.Future[T]) -> None:
    """Settle ``target`` the way the finished ``source`` was; nothing if ``target`` is done.

    A done ``target`` is one whose awaiter was cancelled (or another request settled it).
    """
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())
