"""OpenAI-Realtime-compatible WebSocket API: the pure protocol core (no I/O).

``RealtimeProtocol(dialect).parse(text)`` turns a client text frame into a typed client event
(or raises ``ProtocolError``); ``serialize(event)`` turns a typed server event into a text frame
in the connection's dialect. The events live in ``voice.realtime.events``.
"""

from voice.realtime.events import AudioFormat, ClientEvent, ServerEvent, SessionConfig
from voice.realtime.protocol import (
    Dialect,
    Limits,
    ProtocolError,
    RealtimeProtocol,
    dialect_from_headers,
    error_event,
    new_id,
)

__all__ = [
    "AudioFormat",
    "ClientEvent",
    "Dialect",
    "Limits",
    "ProtocolError",
    "RealtimeProtocol",
    "ServerEvent",
    "SessionConfig",
    "dialect_from_headers",
    "error_event",
    "new_id",
]
