"""``GET /v1/realtime``: the OpenAI-Realtime-compatible WebSocket, one Session per connection.

The dialect follows the upgrade request: ``OpenAI-Beta: realtime=v1`` (or, from a browser,
the subprotocol ``openai-beta.realtime-v1``) gets the beta event names, anything else GA; the
subprotocol ``realtime`` is accepted when offered, as browsers require. A reader task parses
text frames into client events and queues them on the session (waiting while it is behind:
backpressure on a client that sends too fast); a writer task serializes the session's outbox.
This is the one place where a connection's errors become ``error`` events; a frame Parley
cannot read never closes the connection, a client that stops reading does (code 1008), and
nothing here can affect another connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import WSMsgType, web

from voice.realtime.events import ServerEvent
from voice.realtime.protocol import (
    ProtocolError,
    RealtimeProtocol,
    dialect_from_headers,
    error_event,
)
from voice.session import Outbox, OutboxFull, Session, VoiceServices

log = logging.getLogger("parley.realtime")

VOICE_KEY = web.AppKey("voice", VoiceServices)
SESSIONS_KEY = web.AppKey("sessions", dict)  # live sessions by id: /healthz counts, tests look
MAX_FRAME = 2 << 20  # one text frame; an append over Limits.max_append_bytes is refused anyway


async def realtime(request: web.Request) -> web.StreamResponse:
    services = request.app[VOICE_KEY]
    protocol = RealtimeProtocol(dialect_from_headers(request.headers))
    # a browser offers "realtime" (with its key and dialect as further subprotocols) and fails
    # the handshake unless the server picks one of those it offered
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, heartbeat=30.0, protocols=("realtime",))
    await ws.prepare(request)
    outbox = Outbox(services.voice.max_outbox_events)
    session = Session(services, outbox, model=request.query.get("model"))
    writer = asyncio.create_task(_write(ws, outbox, protocol, session))
    sessions = request.app[SESSIONS_KEY]
    sessions[session.config.id] = session
    try:
        await session.start()
        await _read(ws, protocol, session, outbox)
    except OutboxFull:
        log.warning("client not reading; closing its connection")
    except Exception:
        log.exception("realtime session failed")
        with contextlib.suppress(OutboxFull):
            outbox.put(error_event(ProtocolError("invalid_value", "internal error")))
    finally:
        sessions.pop(session.config.id, None)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await session.close()
        await ws.close()
    return ws


async def _read(
    ws: web.WebSocketResponse, protocol: RealtimeProtocol, session: Session, outbox: Outbox
) -> None:
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            try:
                event = protocol.parse(msg.data)
            except ProtocolError as err:
                outbox.put(error_event(err))
                continue
            await session.submit(event)
        elif msg.type == WSMsgType.BINARY:
            outbox.put(
                error_event(
                    ProtocolError("invalid_json", "binary frames are not supported: send JSON text")
                )
            )
        if session.closed.is_set():
            return


async def _write(
    ws: web.WebSocketResponse, outbox: Outbox, protocol: RealtimeProtocol, session: Session
) -> None:
    closed = asyncio.create_task(session.closed.wait())
    get: asyncio.Task[ServerEvent] | None = None
    try:
        while True:
            get = asyncio.create_task(outbox.get())
            done, _ = await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                await ws.close(code=1008, message=b"client not reading")
                return
            event = get.result()
            try:
                await ws.send_str(protocol.serialize(event))
            except ConnectionError:
                return
    finally:
        closed.cancel()
        if get is not None:
            get.cancel()
