"""Parley's HTTP server: one port, one engine and one set of speech models shared by every client.

Routes: ``GET /`` (the browser page) and ``/web/*``, ``GET /v1/realtime`` (the
Realtime-compatible WebSocket, ``voice.realtime.handler``), ``GET /healthz`` (or ``/health``),
``GET /metrics`` (Prometheus), and with the built-in engine ``GET /v1/models``,
``POST /v1/chat/completions`` and the legacy ``POST /v1/completions`` (OpenAI-compatible,
streaming SSE or not) and vLLM's tokenizer routes. Each request's errors become an
OpenAI-style error body at this one boundary; a failing request never affects another. With
``[server] api_key`` set, the API routes need it (:func:`require_api_key`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware

from llm_engine.api_request import (
    ChatRequest,
    TextRequest,
    parse_chat_request,
    parse_detokenize_request,
    parse_text_request,
    parse_tokenize_request,
)
from llm_engine.chat_api import ChatService, Completion, Piece
from llm_engine.errors import ContextLengthExceeded, EngineClosed, EngineError, InvalidRequest
from llm_engine.responses_api import (
    ResponseStore,
    ResponseWriter,
    deleted,
    parse_responses_request,
)
from voice.asr import Transcriber
from voice.config import ParleyConfig, ServerConfig
from voice.llm import Dialogue, local_dialogue
from voice.metrics import ApiMetrics, Row, api_rows, engine_rows, render, voice_rows
from voice.realtime.handler import SESSIONS_KEY, VOICE_KEY, realtime
from voice.realtime.protocol import subprotocols
from voice.remote_llm import RemoteLlm
from voice.responder import TtsWorker
from voice.session import VoiceServices
from voice.streaming_asr import AsrWorker
from voice.tts import Synthesizer

log = logging.getLogger("parley.server")
T = TypeVar("T")
SERVICE_KEY = web.AppKey("chat", ChatService)
MAX_TOKENS_KEY = web.AppKey("default_max_tokens", int)
API_METRICS_KEY = web.AppKey("api_metrics", ApiMetrics)
RESPONSES_KEY = web.AppKey("responses", ResponseStore)
MAX_BODY = 4 << 20
TOKENIZER_PATHS = ("/tokenize", "/detokenize", "/tokenizer_info")  # vLLM's, at the root
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# How long a thread may keep the GIL while another waits (CPython's default: 5 ms). The event
# loop takes it back after every call that releases it (a VAD frame, a socket read), each time
# waiting for the engine, ASR or TTS thread's Python to yield. Recorded callers, 4 sessions, 8
# turns each: loop lag max 362 ms (p99 31), onset -> paused p95 406 ms, first audio p95 992 ms
# at 5 ms; max 23 ms (p99 7), 80 ms and 652 ms at 1 ms.
GIL_SWITCH_S = 0.001


def _error(
    status: int, message: str, kind: str, param: str | None = None, code: str | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


def _request_error(err: EngineError) -> web.Response:
    if isinstance(err, ContextLengthExceeded):
        return _error(400, str(err), "invalid_request_error", "messages", "context_length_exceeded")
    if isinstance(err, InvalidRequest):
        return _error(400, str(err), "invalid_request_error", err.param)
    if isinstance(err, EngineClosed):
        return _error(503, str(err), "server_error")
    return _error(500, str(err), "server_error")


_ERROR_KINDS = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


@web.middleware
async def api_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error under ``/v1/`` as the OpenAI-style JSON body its clients parse: aiohttp's own
    (an unknown path, a wrong method, a body over the size limit) and any a handler did not
    expect, which is logged with its traceback and answered with a 500. Nothing here can reach
    another request. A WebSocket reports its own errors in-band, once upgraded."""
    if not _api_path(request) or _upgrading(request):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        kind = _ERROR_KINDS.get(err.status, "server_error" if err.status >= 500 else "")
        message = f"{err.reason}: {request.method} {request.path}"
        if err.status == 413:
            message = f"the request body is over the limit of {MAX_BODY} bytes"
        response = _error(err.status, message, kind or "invalid_request_error")
        if allow := err.headers.get("Allow"):
            response.headers["Allow"] = allow
        return response
    except Exception:  # a bug: answer as JSON, log it, and keep serving every other request
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return _error(500, "the server failed to handle the request", "server_error")


def _upgrading(request: web.Request) -> bool:
    """Whether the request asks to become a WebSocket."""
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _api_path(request: web.Request) -> bool:
    """Whether the path is one of the API's: the OpenAI routes, Realtime's socket included, and
    vLLM's tokenizer routes (the page, its files, health and metrics are not)."""
    return request.path.startswith("/v1/") or request.path in TOKENIZER_PATHS


def require_api_key(key: str) -> Middleware:
    """A middleware that answers an API request without ``key`` with OpenAI's 401. The key
    comes as ``Authorization: Bearer <key>``, or, on a WebSocket upgrade (a browser cannot set
    headers there), as the subprotocol ``openai-insecure-api-key.<key>``, as OpenAI's own
    browser clients send it."""
    expected = key.encode()

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not _api_path(request):
            return await handler(request)
        offered = [request.headers.get("Authorization", "").removeprefix("Bearer ").strip()]
        if _upgrading(request):
            protocols = subprotocols(request.headers.get("Sec-WebSocket-Protocol", ""))
            offered += [p.removeprefix(_KEY_PROTOCOL) for p in protocols
                        if p.startswith(_KEY_PROTOCOL)]  # fmt: skip
        if any(hmac.compare_digest(k.encode(), expected) for k in offered if k):
            return await handler(request)
        message = "a valid API key is required: send 'Authorization: Bearer <key>'"
        response = _error(401, message, "invalid_request_error", None, "invalid_api_key")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    return check


_KEY_PROTOCOL = "openai-insecure-api-key."


async def healthz(request: web.Request) -> web.Response:
    service = request.app.get(SERVICE_KEY)
    ok = service is None or service.engine.running
    body: dict[str, Any] = {"status": "ok" if ok else "engine down"}
    if SESSIONS_KEY in request.app:
        body["sessions"] = len(request.app[SESSIONS_KEY])
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus' text format: the engine's counters and gauges, the API's requests and
    latencies, and the voice sessions and their replies' latencies."""
    rows: list[Row] = []
    service = request.app.get(SERVICE_KEY)
    if service is not None:
        rows += engine_rows(service.engine.stats())
    rows += api_rows(request.app[API_METRICS_KEY])
    if SESSIONS_KEY in request.app:
        sessions = len(request.app[SESSIONS_KEY])
        rows.append(("sessions", "gauge", "Realtime voice sessions.", [("", sessions)]))
        rows += voice_rows(request.app[VOICE_KEY].metrics)
    return web.Response(text=render(rows), content_type="text/plain", charset="utf-8")


@web.middleware
async def count_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Count API requests by route (its pattern: no label per model name or unknown path)
    and status."""
    if not _api_path(request):
        return await handler(request)
    info = request.match_info
    route = info.route.resource.canonical if info.route.resource is not None else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as err:
        status = err.status
        raise
    finally:
        request.app[API_METRICS_KEY].requests[(route, status)] += 1


async def models(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE_KEY].models())


async def model(request: web.Request) -> web.Response:
    service, name = request.app[SERVICE_KEY], request.match_info["model"]
    if name != service.model_name:
        message = f"the model '{name}' does not exist (served: '{service.model_name}')"
        return _error(404, message, "invalid_request_error", "model", "model_not_found")
    return web.json_response(service.model())


async def _json_body(request: web.Request) -> Any:
    """The request's decoded JSON; raises :class:`InvalidRequest` saying what is wrong."""
    try:
        return await request.json()
    except RecursionError:
        raise InvalidRequest("the body's JSON is nested too deeply") from None
    except ValueError as err:  # malformed, or not UTF-8
        raise InvalidRequest(f"the body is not valid JSON: {err}") from None


async def _answer(
    request: web.Request, parse: Callable[[Any], T], serve: Callable[[ChatService, T], Any]
) -> web.Response:
    """The JSON answer to a request the service serves at once: its body parsed, or a 400."""
    try:
        parsed = parse(await _json_body(request))
        return web.json_response(serve(request.app[SERVICE_KEY], parsed))
    except InvalidRequest as err:
        return _request_error(err)


async def tokenize(request: web.Request) -> web.Response:
    """vLLM's ``POST /tokenize``: a prompt's or chat messages' tokens, by the served model's
    own tokenizer (evaluation harnesses ask it rather than loading one from a model hub)."""
    return await _answer(request, parse_tokenize_request, ChatService.tokenize)


async def detokenize(request: web.Request) -> web.Response:
    return await _answer(request, parse_detokenize_request, ChatService.detokenize)


async def tokenizer_info(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE_KEY].tokenizer_info())


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _completions(request, text=False)


async def text_completions(request: web.Request) -> web.StreamResponse:
    """The legacy ``/v1/completions``: prompts continued as they are, no chat template."""
    return await _completions(request, text=True)


async def _completions(request: web.Request, text: bool) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    parsed: ChatRequest | TextRequest
    try:
        body = await _json_body(request)
        if text:
            parsed = parse_text_request(body)
        else:
            parsed = parse_chat_request(body, request.app[MAX_TOKENS_KEY])
    except InvalidRequest as err:  # a RequestError, or params the sampler refuses
        return _request_error(err)
    completion = Completion(text=text)
    if isinstance(parsed, TextRequest):
        stream = service.complete_text(parsed, completion)
    else:
        stream = service.complete(parsed, completion)
    stream = _timed(stream, completion, request.app[API_METRICS_KEY])
    try:
        if not parsed.stream:
            pieces = [piece async for piece in stream]
            return web.json_response(service.response(completion, parsed, pieces))
        first = await anext(stream, None)  # errors before the first byte are still HTTP errors
    except EngineError as err:
        return _request_error(err)
    wire = _ChatWire(service, completion, parsed.choices, parsed.include_usage)
    return await _sse(request, wire, stream, first)


class _Wire(Protocol):
    """How one API streams: the events before, for and after the pieces, and a failure's."""

    named: bool  # each event's "type" also goes as its SSE event name
    done: bool  # the stream ends with "data: [DONE]"

    def opening(self) -> list[dict[str, Any]]: ...
    def piece(self, p: Piece) -> list[dict[str, Any]]: ...
    def closing(self) -> list[dict[str, Any]]: ...
    def error(self, message: str) -> dict[str, Any]: ...


@dataclass(slots=True)
class _ChatWire:
    """Chat and legacy completions: chunks, an optional usage chunk, then [DONE]."""

    service: ChatService
    completion: Completion
    choices: int
    include_usage: bool
    named: bool = False
    done: bool = True

    def opening(self) -> list[dict[str, Any]]:
        return self.service.opening_chunks(self.completion, self.choices)

    def piece(self, p: Piece) -> list[dict[str, Any]]:
        return self.service.piece_chunks(self.completion, p)

    def closing(self) -> list[dict[str, Any]]:
        return [self.service.usage_chunk(self.completion)] if self.include_usage else []

    def error(self, message: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": "server_error"}}


@dataclass(slots=True)
class _ResponsesWire:
    """The Responses API: typed events, named; the last one carries the whole response."""

    writer: ResponseWriter
    completion: Completion
    named: bool = True
    done: bool = False

    def opening(self) -> list[dict[str, Any]]:
        return self.writer.opening()

    def piece(self, p: Piece) -> list[dict[str, Any]]:
        return self.writer.piece(p)

    def closing(self) -> list[dict[str, Any]]:
        return self.writer.closing(self.completion.usage)

    def error(self, message: str) -> dict[str, Any]:
        return self.writer.error_event(message)


async def responses(request: web.Request) -> web.StreamResponse:
    """The Responses API (``llm_engine.responses_api``), served as the chat request it
    amounts to; a stored response is what a later ``previous_response_id`` goes on from."""
    service, store = request.app[SERVICE_KEY], request.app[RESPONSES_KEY]
    try:
        parsed = parse_responses_request(
            await _json_body(request), store, request.app[MAX_TOKENS_KEY]
        )
    except InvalidRequest as err:
        return _request_error(err)
    completion = Completion()
    writer = ResponseWriter(parsed, service.model_name, store)
    stream = _timed(service.complete(parsed.chat, completion), completion,
                    request.app[API_METRICS_KEY])  # fmt: skip
    try:
        if not parsed.stream:
            async for piece in stream:
                writer.piece(piece)
            return web.json_response(writer.finished(completion.usage))
        first = await anext(stream, None)
    except EngineError as err:
        return _request_error(err)
    return await _sse(request, _ResponsesWire(writer, completion), stream, first)


async def stored_response(request: web.Request) -> web.Response:
    """``GET`` a stored response, or ``DELETE`` it."""
    store, response_id = request.app[RESPONSES_KEY], request.match_info["response_id"]
    found = store.get(response_id)
    if found is None:
        message = f"no stored response with id '{response_id}'"
        return _error(404, message, "invalid_request_error", "response_id", "not_found")
    if request.method == "DELETE":
        store.delete(response_id)
        return web.json_response(deleted(response_id))
    return web.json_response(found.response)


async def _timed(
    stream: AsyncGenerator[Piece, None], completion: Completion, metrics: ApiMetrics
) -> AsyncGenerator[Piece, None]:
    """``stream``, its first piece's and its end's time since now and its tokens recorded in
    ``metrics`` (a stream the client left is not a finished one)."""
    started, first = time.monotonic(), True
    try:
        async for piece in stream:
            if first:
                metrics.first_token_s.observe(time.monotonic() - started)
                first = False
            yield piece
    finally:
        await stream.aclose()
    metrics.duration_s.observe(time.monotonic() - started)
    metrics.prompt_tokens += completion.usage.prompt_tokens
    metrics.cached_tokens += completion.usage.cached_tokens
    metrics.completion_tokens += completion.usage.completion_tokens


async def _sse(
    request: web.Request,
    wire: _Wire,
    stream: AsyncGenerator[Piece, None],
    first: Piece | None,
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)

    async def send(obj: dict[str, Any] | str) -> None:
        data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
        name = f"event: {obj['type']}\n" if wire.named and isinstance(obj, dict) else ""
        await response.write(f"{name}data: {data}\n\n".encode())

    try:
        for event in wire.opening():
            await send(event)
        if first is not None:
            for event in wire.piece(first):
                await send(event)
            async for piece in stream:
                for event in wire.piece(piece):
                    await send(event)
        for event in wire.closing():
            await send(event)
        if wire.done:
            await send("[DONE]")
    except ConnectionResetError:  # the client left (a barge-in closes the stream): routine
        log.info("client left mid-stream; generation aborted")
    except Exception as err:  # mid-stream: the status is sent, so report in-band
        message = str(err)
        if not isinstance(err, EngineError):  # a bug: logged, and no internals to the client
            log.exception("unexpected error streaming %s", request.path)
            message = "the server failed to finish the reply"
        with contextlib.suppress(ConnectionResetError):
            await send(wire.error(message))
    except asyncio.CancelledError:
        log.info("request cancelled mid-stream; generation aborted")
        raise
    finally:
        await stream.aclose()  # aborts the generation if the client left
    return response


def build_app(
    service: ChatService | None, config: ServerConfig, voice: VoiceServices | None = None
) -> web.Application:
    """The app: chat completions when the engine is local, the realtime API and the page when
    ``voice`` is given, and ``/healthz`` always."""
    middlewares: list[Middleware] = [count_requests, api_errors]
    if config.api_key:
        middlewares.append(require_api_key(config.api_key))
    app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares)
    app[API_METRICS_KEY] = ApiMetrics()
    app[MAX_TOKENS_KEY] = config.default_max_tokens
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/health", healthz)  # the name vLLM, SGLang and llama.cpp's server use
    app.router.add_get("/metrics", metrics)
    if service is not None:
        app[SERVICE_KEY] = service
        app.router.add_get("/v1/models", models)
        app.router.add_get("/v1/models/{model:.+}", model)  # ids may hold a slash
        app.router.add_post("/v1/chat/completions", chat_completions)
        app.router.add_post("/v1/completions", text_completions)
        app.router.add_post("/v1/responses", responses)
        app.router.add_get("/v1/responses/{response_id}", stored_response)
        app.router.add_delete("/v1/responses/{response_id}", stored_response)
        app[RESPONSES_KEY] = ResponseStore()
        app.router.add_post("/tokenize", tokenize)
        app.router.add_post("/detokenize", detokenize)
        app.router.add_get("/tokenizer_info", tokenizer_info)
    if voice is not None:
        app[VOICE_KEY] = voice
        app[SESSIONS_KEY] = {}
        app.router.add_get("/v1/realtime", realtime)
        app.router.add_get("/", index)
        app.router.add_static("/web/", WEB_DIR, append_version=False)
    return app


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(WEB_DIR / "index.html")


@dataclass(slots=True)
class ModelDirs:
    """Where each prepared model lives (``llm`` is None with a remote LLM)."""

    asr: Path
    tts: Path
    vad: Path
    llm: Path | None
    llm_name: str

    @classmethod
    def for_config(
        cls,
        config: ParleyConfig,
        prepared: Callable[[str], Path],
        llm: tuple[Path, str] | None = None,
    ) -> ModelDirs:
        """Each role's model named in ``config.models``, located by ``prepared(name)``.

        ``llm`` (a directory or file and its name) overrides ``[models].llm``; with
        ``[llm] backend = "remote"`` there is no local LLM, only the remote model's name."""
        m = config.models
        if config.llm.backend == "remote":
            assert config.llm.remote is not None  # checked when the config was read
            llm_dir, name = None, config.llm.remote.model
        else:
            llm_dir, name = llm if llm is not None else (prepared(m.llm), m.llm)
        return cls(
            asr=prepared(m.asr),
            tts=prepared(m.tts),
            vad=prepared(m.vad) / "silero_vad.onnx",
            llm=llm_dir,
            llm_name=name,
        )


@contextlib.asynccontextmanager
async def running(config: ParleyConfig, dirs: ModelDirs) -> AsyncIterator[web.Application]:
    """Load the models and the engine, yield the app, release everything on exit. The GIL's
    switch interval is ``GIL_SWITCH_S`` meanwhile (it is the process's)."""
    from llm_engine import Engine, EngineConfig

    engine = None
    service = None
    remote = None
    if dirs.llm is not None:
        engine = Engine(EngineConfig(model_dir=dirs.llm, **config.engine))
        engine.start()
        service = ChatService(engine, dirs.llm_name, config.server.max_conversations)
    asr = AsrWorker(Transcriber(dirs.asr, config.asr))
    first = None
    if config.tts.first_chunk_threads > config.tts.threads:
        first = Synthesizer(dirs.tts, config.tts, threads=config.tts.first_chunk_threads)
    pause = engine.paused if engine is not None else None
    tts = TtsWorker(Synthesizer(dirs.tts, config.tts), first, pause)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_S)
    try:
        open_dialogue: Callable[[str], Awaitable[Dialogue]]
        if engine is not None:
            eng = engine

            async def open_dialogue(instructions: str) -> Dialogue:
                return local_dialogue(eng, instructions)

        else:
            assert config.llm.remote is not None  # checked when the config was read
            remote = RemoteLlm(config.llm.remote)
            client = remote

            async def open_dialogue(instructions: str) -> Dialogue:
                return client.open(instructions)

        voice = VoiceServices(
            asr=asr,
            tts=tts,
            vad_model=dirs.vad,
            open_dialogue=open_dialogue,
            model_name=dirs.llm_name,
            voice=config.session,
            turns=config.turns,
            chunker=config.chunker,
            streaming=config.streaming_asr,
        )
        yield build_app(service, config.server, voice)
    finally:
        if remote is not None:
            await remote.close()
        await asr.close()
        tts.close()
        if engine is not None:
            engine.close()
        sys.setswitchinterval(switch)


@contextlib.asynccontextmanager
async def listening(app: web.Application, host: str, port: int) -> AsyncIterator[str]:
    """Serve ``app`` on ``host:port`` (0: a free port) and yield its base URL."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()


async def serve(config: ParleyConfig, dirs: ModelDirs, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or cancellation)."""
    host, port = config.server.host, config.server.port
    async with running(config, dirs) as app, listening(app, host, port) as url:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.warning("Parley serving %s on %s/", dirs.llm_name, url)
        if ready is not None:
            ready.set()
        await stop.wait()


@contextlib.contextmanager
def serve_in_thread(config: ParleyConfig, dirs: ModelDirs) -> Iterator[tuple[str, web.Application]]:
    """The real server on a free local port, in a thread with its own event loop, so that
    synchronous code, other event loops and browsers can all reach it (tests, benchmarks).
    Yields (base URL, app) and stops the server when the block exits."""
    loop = asyncio.new_event_loop()
    ready: list[tuple[str, web.Application]] = []
    failed: list[BaseException] = []
    started = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with running(config, dirs) as app, listening(app, "127.0.0.1", 0) as url:
                ready.append((url, app))
                started.set()
                await stop.wait()
        except BaseException as err:
            failed.append(err)
            started.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    started.wait()
    if failed:
        raise failed[0]
    try:
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        loop.close()
