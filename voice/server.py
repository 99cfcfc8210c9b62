"""Parley's HTTP server: one port, one engine shared by every client.

Routes: ``GET /healthz``, ``GET /v1/models``, ``POST /v1/chat/completions`` (OpenAI-compatible,
streaming SSE or not). Each request's errors become an OpenAI-style error body at this one
boundary; a failing request never affects another.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Any

from aiohttp import web

from llm_engine.chat_api import ChatService, Completion, RequestError, parse_chat_request
from llm_engine.errors import ContextLengthExceeded, EngineClosed, EngineError, InvalidRequest
from voice.config import ServerConfig

log = logging.getLogger("parley.server")
SERVICE_KEY = web.AppKey("chat", ChatService)
MAX_TOKENS_KEY = web.AppKey("default_max_tokens", int)
MAX_BODY = 4 << 20


def _error(
    status: int, message: str, kind: str, param: str | None = None, code: str | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


def _request_error(err: EngineError) -> web.Response:
    if isinstance(err, ContextLengthExceeded):
        return _error(400, str(err), "invalid_request_error", "messages", "context_length_exceeded")
    if isinstance(err, InvalidRequest):
        return _error(400, str(err), "invalid_request_error", getattr(err, "param", None))
    if isinstance(err, EngineClosed):
        return _error(503, str(err), "server_error")
    return _error(500, str(err), "server_error")


async def healthz(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    ok = service.engine.running
    return web.json_response({"status": "ok" if ok else "engine down"}, status=200 if ok else 503)


async def models(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE_KEY].models())


async def chat_completions(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return _error(400, f"the body is not valid JSON: {err}", "invalid_request_error")
    try:
        chat = parse_chat_request(body, request.app[MAX_TOKENS_KEY])
    except RequestError as err:
        return _error(400, str(err), "invalid_request_error", err.param)
    completion = Completion()
    stream = service.complete(chat, completion)
    try:
        if not chat.stream:
            text = "".join([piece async for piece in stream])
            return web.json_response(service.response(completion, text))
        first = await anext(stream, None)  # errors before the first byte are still HTTP errors
    except EngineError as err:
        return _request_error(err)
    return await _sse(request, service, chat.include_usage, completion, stream, first)


async def _sse(
    request: web.Request,
    service: ChatService,
    include_usage: bool,
    completion: Completion,
    stream: Any,
    first: str | None,
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)

    async def send(obj: dict[str, Any] | str) -> None:
        data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
        await response.write(f"data: {data}\n\n".encode())

    try:
        await send(service.chunk(completion, {"role": "assistant", "content": ""}, None))
        if first is not None:
            await send(service.chunk(completion, {"content": first}, None))
            async for piece in stream:
                await send(service.chunk(completion, {"content": piece}, None))
        await send(service.chunk(completion, {}, completion.finish_reason or "stop"))
        if include_usage:
            await send(service.usage_chunk(completion))
        await send("[DONE]")
    except EngineError as err:  # mid-stream: the status is sent, so report in-band
        await send({"error": {"message": str(err), "type": "server_error"}})
    except (ConnectionResetError, asyncio.CancelledError):
        log.info("client left mid-stream; generation aborted")
        raise
    finally:
        await stream.aclose()  # aborts the generation if the client left
    return response


def build_app(service: ChatService, config: ServerConfig) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[SERVICE_KEY] = service
    app[MAX_TOKENS_KEY] = config.default_max_tokens
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


async def serve(
    model_dir: Path,
    model_name: str,
    engine_options: dict[str, Any],
    config: ServerConfig,
    ready: asyncio.Event | None = None,
) -> None:
    """Start the engine and serve until SIGINT/SIGTERM (or cancellation)."""
    from llm_engine import Engine, EngineConfig

    engine = Engine(EngineConfig(model_dir=model_dir, **engine_options))
    engine.start()
    service = ChatService(engine, model_name, config.max_conversations)
    runner = web.AppRunner(build_app(service, config), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.warning("Parley serving %s on http://%s:%d", model_name, config.host, config.port)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        engine.close()
