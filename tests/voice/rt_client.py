"""A small Realtime-API client for the end-to-end tests: raw JSON over a real WebSocket."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np

from audio.pcm import float32_to_pcm16
from audio.resample import resample

RATE = 24_000
CHUNK_S = 0.04


def pcm24k(audio_16k: np.ndarray) -> bytes:
    """16 kHz float32 test speech -> the API's default input: PCM16 at 24 kHz."""
    return float32_to_pcm16(resample(audio_16k, 16_000, RATE))


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[RealtimeClient]:
    """A RealtimeClient on ``url``'s ``/v1/realtime``, once the session is created."""
    async with aiohttp.ClientSession() as http:
        rt = RealtimeClient(await http.ws_connect(url + "/v1/realtime"))
        await rt.wait_for("session.created")
        try:
            yield rt
        finally:
            await rt.close()


class RealtimeClient:
    """Sends events, records every received event with its arrival time."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                event = json.loads(msg.data)
                event["_t"] = time.monotonic()
                self.events.append(event)
                self._new.set()

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(event))

    async def append(self, pcm: bytes) -> None:
        await self.send(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}
        )

    async def stream(self, pcm: bytes, realtime: bool = True) -> None:
        """Send ``pcm`` (24 kHz PCM16) in 40 ms appends, paced at real time."""
        step = int(CHUNK_S * RATE) * 2
        start = time.monotonic()
        for i in range(0, len(pcm), step):
            await self.append(pcm[i : i + step])
            if realtime:
                due = start + (i + step) / 2 / RATE
                await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def silence(self, seconds: float) -> None:
        await self.stream(bytes(int(seconds * RATE) * 2))

    # -- a live microphone: silence streams whenever nothing is said, as from a real client --
    def start_mic(self) -> None:
        self._speech: asyncio.Queue[tuple[bytes, asyncio.Future[None]]] = asyncio.Queue()
        self._mic = asyncio.create_task(self._mic_loop())

    async def say(self, pcm: bytes) -> None:
        """Speak ``pcm`` into the live microphone; returns when the last of it was sent."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._speech.put_nowait((pcm, done))
        await done

    async def _mic_loop(self) -> None:
        step = int(CHUNK_S * RATE) * 2
        quiet = bytes(step)
        pending = b""
        done: asyncio.Future[None] | None = None
        start, sent = time.monotonic(), 0
        while True:
            if not pending and not self._speech.empty():
                pending, done = self._speech.get_nowait()
            chunk, pending = (pending[:step], pending[step:]) if pending else (quiet, b"")
            await self.append(chunk)
            sent += len(chunk) // 2
            if done is not None and not pending:
                done.set_result(None)
                done = None
            await asyncio.sleep(max(0.0, start + sent / RATE - time.monotonic()))

    async def wait_for(self, kind: str, timeout: float = 60.0, after: int = 0) -> dict[str, Any]:
        """The first event of type ``kind`` at index >= ``after``."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events[after:]:
                if e["type"] == kind:
                    return e
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                kinds = [e["type"] for e in self.events]
                raise AssertionError(f"no {kind} within {timeout} s; got {kinds}")
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), min(remaining, 0.5))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def audio(self, response_id: str | None = None) -> bytes:
        return b"".join(
            base64.b64decode(e["delta"])
            for e in self.of("response.output_audio.delta")
            if response_id is None or e["response_id"] == response_id
        )

    async def close(self) -> None:
        if hasattr(self, "_mic"):
            self._mic.cancel()
        await self.ws.close()
        self._reader.cancel()


def user_text(text: str) -> dict[str, Any]:
    """A ``conversation.item.create`` event carrying a user's typed message."""
    content = [{"type": "input_text", "text": text}]
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": content},
    }
