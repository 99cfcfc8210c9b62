"""The OpenAI-Realtime-compatible WebSocket protocol core: text frames in, typed events out.

No I/O and no asyncio. The connection handler picks the dialect from the upgrade request
(``dialect_from_headers``), then per text frame calls ``parse`` and hands the event to the
Session; whatever the Session emits goes through ``serialize`` to the socket. A
``ProtocolError`` from ``parse`` becomes ``serialize(error_event(err))`` and the connection
stays open.

Two dialects share client event names but differ on the server side: ``"ga"`` (the default;
``/v1/realtime?model=NAME``) and ``"beta"`` (clients that send ``OpenAI-Beta: realtime=v1``).
``parse`` accepts either dialect's shape of ``session.update`` / ``response.create`` on both,
so a beta payload on a GA connection works; ``serialize`` writes strictly the connection's
dialect, because the official SDK mis-parses the other one's event names.

Unknown fields are ignored (as are known ones Parley does not implement, e.g. ``tools``);
unknown or unsupported event types, wrong types and unsupported values are errors.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Literal, NoReturn, TypeAlias, TypeVar

from voice.errors import ParleyError
from voice.realtime import events as ev

__all__ = [
    "Dialect",
    "ErrorCode",
    "Limits",
    "ProtocolError",
    "RealtimeProtocol",
    "dialect_from_headers",
    "error_event",
    "new_id",
    "subprotocols",
]

Dialect: TypeAlias = Literal["ga", "beta"]

_T = TypeVar("_T")
_S = TypeVar("_S", bound=str)

ErrorCode: TypeAlias = Literal[
    "invalid_json",  # not JSON, or not a JSON object
    "missing_required_parameter",
    "invalid_type",  # a field of the wrong JSON type
    "invalid_value",  # the right type, a value out of range or not allowed
    "unknown_event",  # ``type`` is not a Realtime client event
    "unsupported_event",  # a Realtime client event Parley does not implement
    "unsupported_feature",  # e.g. function-call items, out-of-band responses
    "unsupported_audio_format",
    "invalid_base64",
    "audio_too_large",  # one append carries more than ``Limits.max_append_bytes``
]

_UNSUPPORTED_EVENTS = frozenset(
    {
        "conversation.item.delete",
        "conversation.item.retrieve",
        "output_audio_buffer.clear",
        "transcription_session.update",
        "session.close",
    }
)

_BETA_FORMATS: Mapping[str, ev.AudioFormat] = {
    "pcm16": ev.PCM16_24K,
    "g711_ulaw": ev.ULAW_8K,
    "g711_alaw": ev.ALAW_8K,
}
_GA_FORMATS: Mapping[str, ev.AudioFormat] = {
    "audio/pcm": ev.PCM16_24K,
    "audio/pcmu": ev.ULAW_8K,
    "audio/pcma": ev.ALAW_8K,
}
_EAGERNESS: tuple[Literal["low", "medium", "high", "auto"], ...] = ("low", "medium", "high", "auto")
_ROLES: tuple[ev.Role, ...] = ("user", "assistant", "system")
_VAD_TYPES: tuple[Literal["server_vad", "semantic_vad"], ...] = ("server_vad", "semantic_vad")


class ProtocolError(ParleyError):
    """A client event Parley cannot accept; the connection stays usable.

    ``param`` is the dotted path of the offending field (``session.audio.input.format``);
    ``event_id`` echoes the client's ``event_id`` when the event had a readable one.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        param: str | None = None,
        event_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.param = param
        self.event_id = event_id


def error_event(err: ProtocolError) -> ev.ErrorEvent:
    """The ``error`` server event that reports ``err`` to the client."""
    return ev.ErrorEvent(code=err.code, message=err.message, param=err.param, event_id=err.event_id)


def new_id(prefix: str) -> str:
    """A fresh unique id in OpenAI's style: ``event_...``, ``item_...``, ``resp_...``."""
    return f"{prefix}_{secrets.token_hex(12)}"


def dialect_from_headers(headers: Mapping[str, str]) -> Dialect:
    """``"beta"`` if the upgrade request carries ``OpenAI-Beta: realtime=v1``, or offers the
    subprotocol ``openai-beta.realtime-v1`` (how a browser, which cannot set headers, says it),
    else ``"ga"``."""
    for name, value in headers.items():
        if name.lower() == "openai-beta":
            betas = {b.strip().lower() for b in value.split(",")}
            if "realtime=v1" in betas:
                return "beta"
        offered = subprotocols(value) if name.lower() == "sec-websocket-protocol" else []
        if "openai-beta.realtime-v1" in offered:
            return "beta"
    return "ga"


def subprotocols(header: str) -> list[str]:
    """The subprotocols a ``Sec-WebSocket-Protocol`` header offers, in order."""
    return [p.strip() for p in header.split(",") if p.strip()]


@dataclass(slots=True)
class Limits:
    """Bounds on what one client event may carry.

    ``max_append_bytes`` caps one ``input_audio_buffer.append`` after base64 decoding; the
    default, 1 MiB, is about 22 s of 24 kHz PCM16 (OpenAI's own cap is 15 MiB).
    """

    max_append_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.max_append_bytes <= 0:
            raise ValueError(f"max_append_bytes must be positive, got {self.max_append_bytes}")


class RealtimeProtocol:
    """Parses client text frames and serializes server events for one dialect.

    ``ids`` makes every generated id (``prefix`` -> unique string); tests pass a counter.
    The object holds no per-connection state beyond its settings, so it is cheap to create
    one per connection.
    """

    def __init__(
        self,
        dialect: Dialect = "ga",
        *,
        limits: Limits | None = None,
        ids: Callable[[str], str] = new_id,
    ) -> None:
        if dialect not in ("ga", "beta"):
            raise ValueError(f"dialect must be 'ga' or 'beta', got {dialect!r}")
        self.dialect: Dialect = dialect
        self.limits = limits if limits is not None else Limits()
        self.new_id = ids

    # -- client -> server ---------------------------------------------------------------------

    def parse(self, text: str) -> ev.ClientEvent:
        """One client text frame as a typed event; raises ``ProtocolError`` if it is bad."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise ProtocolError("invalid_json", f"the frame is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ProtocolError("invalid_json", "a client event must be a JSON object")
        event_id = data.get("event_id")
        if event_id is not None and not isinstance(event_id, str):
            raise ProtocolError("invalid_type", "event_id must be a string", "event_id")
        obj = _Obj(data, "", event_id)
        kind = obj.req_str("type")
        return self._parse_event(kind, obj)

    def _parse_event(self, kind: str, obj: _Obj) -> ev.ClientEvent:
        eid = obj.event_id
        match kind:
            case "session.update":
                return _session_update(obj)
            case "input_audio_buffer.append":
                return ev.InputAudioAppend(self._audio(obj), event_id=eid)
            case "input_audio_buffer.commit":
                return ev.InputAudioCommit(event_id=eid)
            case "input_audio_buffer.clear":
                return ev.InputAudioClear(event_id=eid)
            case "conversation.item.create":
                return self._item_create(obj)
            case "conversation.item.truncate":
                return ev.ItemTruncate(
                    item_id=obj.req_str("item_id"),
                    content_index=obj.req_int("content_index"),
                    audio_end_ms=obj.req_int("audio_end_ms"),
                    event_id=eid,
                )
            case "response.create":
                return _response_create(obj)
            case "response.cancel":
                return ev.ResponseCancel(obj.str_("response_id"), event_id=eid)
        if kind in _UNSUPPORTED_EVENTS:
            obj.fail("unsupported_event", f"Parley does not implement {kind!r}", "type")
        obj.fail("unknown_event", f"unknown client event type {kind!r}", "type")

    def _audio(self, obj: _Obj) -> bytes:
        """The decoded ``audio`` of an append, size-checked before and after decoding."""
        b64 = obj.req_str("audio")
        limit = self.limits.max_append_bytes
        if len(b64) > 4 * (-(-limit // 3)):  # cannot decode to <= limit bytes
            obj.fail("audio_too_large", f"one append may carry at most {limit} bytes", "audio")
        try:
            audio = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as err:
            obj.fail("invalid_base64", f"audio is not valid base64: {err}", "audio")
        if len(audio) > limit:
            obj.fail("audio_too_large", f"one append may carry at most {limit} bytes", "audio")
        return audio

    def _item_create(self, obj: _Obj) -> ev.ItemCreate:
        item = obj.req_obj("item")
        kind = item.str_("type") or "message"
        if kind != "message":
            why = f"only message items are supported, not {kind!r}"
            item.fail("unsupported_feature", why, "type")
        role = item.req_choice("role", _ROLES)
        content = item.req_list("content")
        if not content:
            item.fail("invalid_value", "a message needs at least one content part", "content")
        parts = tuple(
            _text_part(item.child(part, f"content[{i}]"), role) for i, part in enumerate(content)
        )
        item_id = item.str_("id") or self.new_id("item")
        message = ev.MessageItem(id=item_id, role=role, content=parts)
        return ev.ItemCreate(message, obj.str_("previous_item_id"), event_id=obj.event_id)

    # -- server -> client ---------------------------------------------------------------------

    def serialize(self, event: ev.ServerEvent) -> str:
        """``event`` as one text frame in this dialect, stamped with a fresh ``event_id``."""
        name = _NAMES[type(event)][0 if self.dialect == "ga" else 1]
        frame = {"event_id": self.new_id("event"), "type": name, **_body(event, self.dialect)}
        return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


# -- reading JSON objects ---------------------------------------------------------------------


@dataclass(slots=True)
class _Obj:
    """A JSON object inside a client event, read field by field with typed errors."""

    data: dict[str, object]
    path: str  # dotted path of this object from the event root, "" at the root
    event_id: str | None

    def param(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, code: ErrorCode, message: str, key: str | None = None) -> NoReturn:
        param = self.param(key) if key is not None else (self.path or None)
        raise ProtocolError(code, message, param, self.event_id)

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str, required: bool) -> object:
        value = self.data.get(key)
        if value is None and required:
            self.fail("missing_required_parameter", f"missing {self.param(key)!r}", key)
        return value

    def _typed(self, key: str, kind: type[_T], what: str, required: bool) -> _T | None:
        value = self._get(key, required)
        if value is None:
            return None
        # bool is an int in Python but not a number in JSON
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            self.fail("invalid_type", f"{self.param(key)!r} must be {what}", key)
        return value

    def str_(self, key: str) -> str | None:
        return self._typed(key, str, "a string", False)

    def req_str(self, key: str) -> str:
        value = self._typed(key, str, "a string", True)
        assert value is not None
        return value

    def bool_(self, key: str) -> bool | None:
        return self._typed(key, bool, "a boolean", False)

    def int_(self, key: str) -> int | None:
        """A non-negative integer; ``1500.0`` counts (JavaScript clients compute with floats)."""
        value = self._get(key, False)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail("invalid_type", f"{self.param(key)!r} must be an integer", key)
        if value < 0:
            self.fail("invalid_value", f"{self.param(key)!r} must be >= 0", key)
        return value

    def req_int(self, key: str) -> int:
        self._get(key, True)
        value = self.int_(key)
        assert value is not None
        return value

    def number(self, key: str, lo: float, hi: float) -> float | None:
        value = self._get(key, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail("invalid_type", f"{self.param(key)!r} must be a number", key)
        if not lo <= value <= hi:
            self.fail("invalid_value", f"{self.param(key)!r} must be in [{lo}, {hi}]", key)
        return float(value)

    def choice(self, key: str, allowed: tuple[_S, ...]) -> _S | None:
        value = self.str_(key)
        if value is None:
            return None
        for option in allowed:
            if value == option:
                return option
        self.fail("invalid_value", f"{self.param(key)!r} must be one of {list(allowed)}", key)

    def req_choice(self, key: str, allowed: tuple[_S, ...]) -> _S:
        self._get(key, True)
        value = self.choice(key, allowed)
        assert value is not None
        return value

    def child(self, value: object, key: str) -> _Obj:
        if not isinstance(value, dict):
            self.fail("invalid_type", f"{self.param(key)!r} must be an object", key)
        return _Obj(value, self.param(key), self.event_id)

    def obj(self, key: str) -> _Obj | None:
        value = self._get(key, False)
        return None if value is None else self.child(value, key)

    def req_obj(self, key: str) -> _Obj:
        return self.child(self._get(key, True), key)

    def list_(self, key: str) -> list[object] | None:
        return self._typed(key, list, "an array", False)

    def req_list(self, key: str) -> list[object]:
        value = self._typed(key, list, "an array", True)
        assert value is not None
        return value


# -- client event bodies ----------------------------------------------------------------------


def _session_update(obj: _Obj) -> ev.SessionUpdate:
    """Both shapes: GA nests audio under ``session.audio``, beta keeps flat fields."""
    s = obj.req_obj("session")
    if s.str_("type") not in (None, "realtime"):
        s.fail("unsupported_feature", "only 'realtime' sessions are supported", "type")
    audio = s.obj("audio")
    inp = (audio.obj("input") if audio else None) or _Obj({}, "", obj.event_id)
    out = (audio.obj("output") if audio else None) or _Obj({}, "", obj.event_id)
    parley = s.obj("parley")  # Parley's own session fields
    return ev.SessionUpdate(
        instructions=_unset(s.str_("instructions")),
        voice=_unset(_voice(out) if out.has("voice") else _voice(s)),
        input_format=_unset(
            _format(inp, "format") if inp.has("format") else _format(s, "input_audio_format")
        ),
        output_format=_unset(
            _format(out, "format") if out.has("format") else _format(s, "output_audio_format")
        ),
        turn_detection=(
            _turn_detection(inp, "turn_detection")
            if inp.has("turn_detection")
            else _turn_detection(s, "turn_detection")
        ),
        transcription=(
            _transcription(inp, "transcription")
            if inp.has("transcription")
            else _transcription(s, "input_audio_transcription")
        ),
        output_modalities=_unset(_modalities(s)),
        pause_playback=_unset(parley.bool_("pause_playback") if parley else None),
        max_output_tokens=_session_limit(_max_output_tokens(s)),
        event_id=obj.event_id,
    )


MAX_OUTPUT_TOKENS = 4096  # the API's bound on a response's tokens


def _max_output_tokens(obj: _Obj) -> int | Literal["inf"] | None:
    """``max_output_tokens`` (GA) or ``max_response_output_tokens`` (beta): 1 to 4096 or
    ``"inf"``; None when absent."""
    key = "max_output_tokens" if obj.has("max_output_tokens") else "max_response_output_tokens"
    value = obj.data.get(key)
    if value is None:
        return None
    if value == "inf":
        return "inf"
    n = obj.int_(key)
    if n is None or not 1 <= n <= MAX_OUTPUT_TOKENS:
        bounds = f"1 to {MAX_OUTPUT_TOKENS} or 'inf'"
        obj.fail("invalid_value", f"{obj.param(key)!r} must be {bounds}", key)
    return n


def _session_limit(value: int | Literal["inf"] | None) -> int | ev.Unset | None:
    """A session's limit: absent is not sent, ``"inf"`` is no limit (None)."""
    if value is None:
        return ev.UNSET
    return None if value == "inf" else value


def _unset(value: _T | None) -> _T | ev.Unset:
    """``None`` (absent or JSON null) as "not sent", for fields that cannot be turned off."""
    return ev.UNSET if value is None else value


def _voice(obj: _Obj) -> str | None:
    value = obj.data.get("voice")
    if isinstance(value, dict):  # GA custom voice: {"id": "..."}
        return obj.child(value, "voice").req_str("id")
    return obj.str_("voice")


def _modalities(obj: _Obj) -> tuple[ev.Modality, ...] | None:
    """``output_modalities`` (GA) or ``modalities`` (beta), normalized to one modality."""
    key = "output_modalities" if obj.has("output_modalities") else "modalities"
    values = obj.list_(key)
    if values is None:
        return None
    if not values or any(v not in ("text", "audio") for v in values):
        obj.fail("invalid_value", f"{obj.param(key)!r} must list 'text' and/or 'audio'", key)
    return ("audio",) if "audio" in values else ("text",)


def _format(obj: _Obj, key: str) -> ev.AudioFormat | None:
    """A GA format object (``{"type": "audio/pcm", "rate": 24000}``) or a beta name."""
    value = obj.data.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        fmt = _BETA_FORMATS.get(value)
        if fmt is None:
            obj.fail(
                "unsupported_audio_format",
                f"audio format {value!r} is not one of {list(_BETA_FORMATS)}",
                key,
            )
        return fmt
    f = obj.child(value, key)
    kind = f.req_str("type")
    fmt = _GA_FORMATS.get(kind)
    if fmt is None:
        f.fail(
            "unsupported_audio_format",
            f"audio format {kind!r} is not one of {list(_GA_FORMATS)}",
            "type",
        )
    rate = f.int_("rate")
    if rate is not None and rate != fmt.sample_rate:
        f.fail(
            "unsupported_audio_format",
            f"{kind} is supported at {fmt.sample_rate} Hz only, not {rate}",
            "rate",
        )
    return fmt


def _turn_detection(obj: _Obj, key: str) -> ev.TurnDetection | ev.Unset | None:
    if not obj.has(key):
        return ev.UNSET
    if obj.data[key] is None:
        return None
    t = obj.req_obj(key)
    d = ev.TurnDetection()
    return ev.TurnDetection(
        type=t.choice("type", _VAD_TYPES) or d.type,
        threshold=_default(t.number("threshold", 0.0, 1.0), d.threshold),
        prefix_padding_ms=_default(t.int_("prefix_padding_ms"), d.prefix_padding_ms),
        silence_duration_ms=_default(t.int_("silence_duration_ms"), d.silence_duration_ms),
        create_response=_default(t.bool_("create_response"), d.create_response),
        interrupt_response=_default(t.bool_("interrupt_response"), d.interrupt_response),
        eagerness=t.choice("eagerness", _EAGERNESS) or d.eagerness,
    )


def _default(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _transcription(obj: _Obj, key: str) -> ev.TranscriptionConfig | ev.Unset | None:
    if not obj.has(key):
        return ev.UNSET
    if obj.data[key] is None:
        return None
    t = obj.req_obj(key)
    return ev.TranscriptionConfig(t.str_("model"), t.str_("language"), t.str_("prompt"))


def _response_create(obj: _Obj) -> ev.ResponseCreate:
    r = obj.obj("response")
    if r is None:
        return ev.ResponseCreate(event_id=obj.event_id)
    if r.str_("conversation") not in (None, "auto"):
        r.fail("unsupported_feature", "out-of-band responses are not supported", "conversation")
    if r.list_("input") is not None:
        r.fail("unsupported_feature", "responses with custom input are not supported", "input")
    return ev.ResponseCreate(
        r.str_("instructions"), _modalities(r), obj.event_id, _max_output_tokens(r)
    )


_TEXT_TYPES: Mapping[str, tuple[str, ...]] = {
    "user": ("input_text",),
    "system": ("input_text",),
    "assistant": ("output_text", "text"),  # GA, beta
}


def _text_part(part: _Obj, role: ev.Role) -> ev.ContentPart:
    kind = part.req_str("type")
    if kind in _TEXT_TYPES[role]:
        return ev.ContentPart("text", part.req_str("text"))
    if kind in ("input_audio", "input_image", "output_audio", "audio", "item_reference"):
        part.fail("unsupported_feature", f"{kind!r} content is not supported; send text", "type")
    part.fail("invalid_value", f"{kind!r} is not a content type of a {role} message", "type")


# -- server event bodies ----------------------------------------------------------------------

_NAMES: Mapping[type, tuple[str, str]] = {  # event class -> (GA name, beta name)
    ev.SessionCreated: ("session.created", "session.created"),
    ev.SessionUpdated: ("session.updated", "session.updated"),
    ev.SpeechStarted: ("input_audio_buffer.speech_started",) * 2,
    ev.SpeechStopped: ("input_audio_buffer.speech_stopped",) * 2,
    ev.InputAudioCommitted: ("input_audio_buffer.committed",) * 2,
    ev.InputAudioCleared: ("input_audio_buffer.cleared",) * 2,
    ev.ItemAdded: ("conversation.item.added", "conversation.item.created"),
    ev.TranscriptionDelta: ("conversation.item.input_audio_transcription.delta",) * 2,
    ev.TranscriptionCompleted: ("conversation.item.input_audio_transcription.completed",) * 2,
    ev.ItemTruncated: ("conversation.item.truncated",) * 2,
    ev.ResponseCreated: ("response.created",) * 2,
    ev.ResponseDone: ("response.done",) * 2,
    ev.OutputItemAdded: ("response.output_item.added",) * 2,
    ev.OutputItemDone: ("response.output_item.done",) * 2,
    ev.ContentPartAdded: ("response.content_part.added",) * 2,
    ev.ContentPartDone: ("response.content_part.done",) * 2,
    ev.AudioDelta: ("response.output_audio.delta", "response.audio.delta"),
    ev.AudioDone: ("response.output_audio.done", "response.audio.done"),
    ev.TranscriptDelta: (
        "response.output_audio_transcript.delta",
        "response.audio_transcript.delta",
    ),
    ev.TranscriptDone: (
        "response.output_audio_transcript.done",
        "response.audio_transcript.done",
    ),
    ev.TextDelta: ("response.output_text.delta", "response.text.delta"),
    ev.TextDone: ("response.output_text.done", "response.text.done"),
    ev.OutputAudioPaused: ("parley.output_audio.paused",) * 2,
    ev.OutputAudioResumed: ("parley.output_audio.resumed",) * 2,
    ev.ErrorEvent: ("error", "error"),
}

_Json: TypeAlias = dict[str, object]


def _body(event: ev.ServerEvent, dialect: Dialect) -> _Json:
    """The fields of ``event`` after ``event_id`` and ``type``."""
    match event:
        case ev.SessionCreated(session) | ev.SessionUpdated(session):
            return {"session": _session_json(session, dialect)}
        case ev.ItemAdded(item, previous):
            return {"previous_item_id": previous, "item": _item_json(item, dialect)}
        case ev.OutputItemAdded(rid, index, item) | ev.OutputItemDone(rid, index, item):
            return {"response_id": rid, "output_index": index, "item": _item_json(item, dialect)}
        case ev.ContentPartAdded() | ev.ContentPartDone():
            return {**_at(event), "part": _response_part_json(event.part)}
        case ev.AudioDelta():
            return {**_at(event), "delta": base64.b64encode(event.audio).decode("ascii")}
        case ev.TranscriptDelta() | ev.TextDelta():
            return {**_at(event), "delta": event.delta}
        case ev.AudioDone():
            return _at(event)
        case ev.TranscriptDone():
            return {**_at(event), "transcript": event.transcript}
        case ev.TextDone():
            return {**_at(event), "text": event.text}
        case ev.ResponseCreated(response) | ev.ResponseDone(response):
            return {"response": _response_json(response, dialect)}
        case ev.TranscriptionCompleted():
            return {
                "item_id": event.item_id,
                "content_index": event.content_index,
                "transcript": event.transcript,
                "usage": {"type": "duration", "seconds": event.audio_seconds},
            }
        case ev.ErrorEvent():
            error = {
                "type": event.type,
                "code": event.code,
                "message": event.message,
                "param": event.param,
                "event_id": event.event_id,
            }
            return {"error": error}
        case _:  # flat events: their fields are the wire fields, in order
            return _flat(event)


def _flat(event: ev.ServerEvent) -> _Json:
    return {f.name: getattr(event, f.name) for f in fields(event)}


def _at(
    event: ev.AudioDone
    | ev.ContentPartAdded
    | ev.ContentPartDone
    | ev.AudioDelta
    | ev.TranscriptDelta
    | ev.TranscriptDone
    | ev.TextDelta
    | ev.TextDone,
) -> _Json:
    """Where in a response a content event belongs."""
    return {
        "response_id": event.response_id,
        "item_id": event.item_id,
        "output_index": event.output_index,
        "content_index": event.content_index,
    }


def _format_json(fmt: ev.AudioFormat, dialect: Dialect) -> object:
    if dialect == "beta":
        return {"pcm16": "pcm16", "ulaw": "g711_ulaw", "alaw": "g711_alaw"}[fmt.encoding]
    if fmt.encoding == "pcm16":
        return {"type": "audio/pcm", "rate": fmt.sample_rate}
    return {"type": "audio/pcmu" if fmt.encoding == "ulaw" else "audio/pcma"}


def _modalities_json(modalities: tuple[ev.Modality, ...], dialect: Dialect) -> list[str]:
    if dialect == "beta" and "audio" in modalities:
        return ["text", "audio"]  # beta audio responses always carry text too
    return list(modalities)


def _turn_detection_json(td: ev.TurnDetection | None) -> _Json | None:
    if td is None:
        return None
    if td.type == "semantic_vad":
        return {
            "type": td.type,
            "eagerness": td.eagerness,
            "create_response": td.create_response,
            "interrupt_response": td.interrupt_response,
        }
    return {
        "type": td.type,
        "threshold": td.threshold,
        "prefix_padding_ms": td.prefix_padding_ms,
        "silence_duration_ms": td.silence_duration_ms,
        "create_response": td.create_response,
        "interrupt_response": td.interrupt_response,
    }


def _transcription_json(tc: ev.TranscriptionConfig | None) -> _Json | None:
    if tc is None:
        return None
    fields = {"model": tc.model, "language": tc.language, "prompt": tc.prompt}
    return {k: v for k, v in fields.items() if v is not None}


def _session_json(s: ev.SessionConfig, dialect: Dialect) -> _Json:
    head: _Json = {"id": s.id, "object": "realtime.session"}
    if dialect == "beta":  # beta's session.model is a closed list of OpenAI names: omit it
        body: _Json = {
            **head,
            "modalities": _modalities_json(s.output_modalities, dialect),
            "instructions": s.instructions,
            "voice": s.voice,
            "input_audio_format": _format_json(s.input_format, dialect),
            "output_audio_format": _format_json(s.output_format, dialect),
            "input_audio_transcription": _transcription_json(s.transcription),
            "turn_detection": _turn_detection_json(s.turn_detection),
        }
    else:
        body = {
            **head,
            "type": "realtime",
            "model": s.model,
            "output_modalities": _modalities_json(s.output_modalities, dialect),
            "instructions": s.instructions,
            "audio": {
                "input": {
                    "format": _format_json(s.input_format, dialect),
                    "transcription": _transcription_json(s.transcription),
                    "turn_detection": _turn_detection_json(s.turn_detection),
                },
                "output": {"format": _format_json(s.output_format, dialect), "voice": s.voice},
            },
        }
    if s.pause_playback:  # only for a client that asked: the session looks like OpenAI's
        body["parley"] = {"pause_playback": True}
    if s.max_output_tokens is not None:  # "inf" is the default, left out as before it existed
        key = "max_output_tokens" if dialect == "ga" else "max_response_output_tokens"
        body[key] = s.max_output_tokens
    return body


def _item_part_json(part: ev.ContentPart, role: ev.Role, dialect: Dialect) -> _Json:
    key = "text" if part.kind == "text" else "transcript"
    if role != "assistant":
        kind = "input_text" if part.kind == "text" else "input_audio"
    elif dialect == "ga":
        kind = "output_text" if part.kind == "text" else "output_audio"
    else:
        kind = part.kind
    return {"type": kind, key: part.text}


def _item_json(item: ev.MessageItem, dialect: Dialect) -> _Json:
    return {
        "id": item.id,
        "object": "realtime.item",
        "type": "message",
        "status": item.status,
        "role": item.role,
        "content": [_item_part_json(p, item.role, dialect) for p in item.content],
    }


def _response_part_json(part: ev.ContentPart) -> _Json:
    return {"type": part.kind, "text" if part.kind == "text" else "transcript": part.text or ""}


def _usage_json(u: ev.Usage | None) -> _Json | None:
    if u is None:
        return None
    return {
        "total_tokens": u.input_tokens + u.output_tokens,
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "input_token_details": {
            "text_tokens": u.input_tokens,
            "audio_tokens": 0,
            "cached_tokens": u.cached_tokens,
        },
        "output_token_details": {"text_tokens": u.output_tokens, "audio_tokens": 0},
    }


def _status_details_json(r: ev.Response) -> _Json | None:
    if r.status in ("in_progress", "completed"):
        return None
    details: _Json = {"type": r.status}
    if r.status_reason is not None:
        details["reason"] = r.status_reason
    if r.error is not None:
        details["error"] = {"type": "server_error", "message": r.error}
    return details


def _response_json(r: ev.Response, dialect: Dialect) -> _Json:
    body: _Json = {
        "id": r.id,
        "object": "realtime.response",
        "status": r.status,
        "status_details": _status_details_json(r),
        "output": [_item_json(item, dialect) for item in r.output],
        "usage": _usage_json(r.usage),
    }
    if dialect == "ga":
        body["output_modalities"] = _modalities_json(r.output_modalities, dialect)
        output: _Json = {"format": _format_json(r.output_format, dialect)}
        if r.voice is not None:
            output["voice"] = r.voice
        body["audio"] = {"output": output}
    else:
        body["modalities"] = _modalities_json(r.output_modalities, dialect)
        body["output_audio_format"] = _format_json(r.output_format, dialect)
        if r.voice is not None:
            body["voice"] = r.voice
    if r.metrics is not None:
        m = r.metrics
        body["parley"] = {"metrics": {f.name: getattr(m, f.name) for f in fields(m)}}
    return body
