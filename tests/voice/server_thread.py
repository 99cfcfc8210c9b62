"""A real Parley server (``voice.server.running``, the code ``parley serve`` runs) on a free port,
in a thread with its own event loop, so sync and async tests and a browser can all reach it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from voice.config import ParleyConfig
from voice.server import ModelDirs, running


@contextmanager
def server_thread(config: ParleyConfig, dirs: ModelDirs) -> Iterator[tuple[str, web.Application]]:
    """Yield (base URL, app) of a server running until the context exits."""
    loop = asyncio.new_event_loop()
    ready: list[tuple[str, web.Application]] = []
    failed: list[BaseException] = []
    started = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with running(config, dirs) as app:
                runner = web.AppRunner(app, handle_signals=False)
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                host, port = runner.addresses[0][:2]
                ready.append((f"http://{host}:{port}", app))
                started.set()
                try:
                    await stop.wait()
                finally:
                    await runner.cleanup()
        except BaseException as err:
            failed.append(err)
            started.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    started.wait(300)
    if failed:
        raise failed[0]
    assert ready, "the server did not start within 300 s"
    try:
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        loop.close()
