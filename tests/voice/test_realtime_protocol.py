"""The Realtime protocol core, exactly: client frames in, typed events out, server frames out.

No event loop and no socket. Server frames are compared byte for byte in both dialects, and
every kind of server event is checked against the official ``openai`` SDK's own pydantic
models (strict validation, the SDK's own lenient parser, and no field the SDK does not declare
except Parley's documented extras).
"""

from __future__ import annotations

import base64
import functools
import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any, get_args

import pydantic
import pytest
from openai._models import construct_type_unchecked
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.beta.realtime import SessionUpdateEvent as BetaSessionUpdateEvent
from openai.types.realtime import RealtimeServerEvent as GaServerEvent
from openai.types.realtime import SessionUpdateEvent as GaSessionUpdateEvent

from voice.errors import ParleyError
from voice.realtime import events as ev
from voice.realtime.protocol import (
    Dialect,
    Limits,
    ProtocolError,
    RealtimeProtocol,
    dialect_from_headers,
    error_event,
    new_id,
)

DIALECTS: tuple[Dialect, ...] = ("ga", "beta")


def _counter() -> Callable[[str], str]:
    """Deterministic ids: ``event_1``, ``event_2``, ``item_1`` ... per prefix."""
    counts: dict[str, int] = defaultdict(int)

    def make(prefix: str) -> str:
        counts[prefix] += 1
        return f"{prefix}_{counts[prefix]}"

    return make


def proto(dialect: Dialect = "ga", max_append_bytes: int = 1 << 20) -> RealtimeProtocol:
    return RealtimeProtocol(dialect, limits=Limits(max_append_bytes), ids=_counter())


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def compact(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# -- parsing client events --------------------------------------------------------------------

GA_SESSION = {
    "type": "realtime",
    "instructions": "Be brief.",
    "output_modalities": ["audio"],
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.6,
                "prefix_padding_ms": 200,
                "silence_duration_ms": 700,
                "create_response": True,
                "interrupt_response": False,
            },
        },
        "output": {"format": {"type": "audio/pcmu"}, "voice": "joe"},
    },
}

BETA_SESSION = {
    "modalities": ["text", "audio"],
    "instructions": "Be brief.",
    "voice": "joe",
    "input_audio_format": "pcm16",
    "output_audio_format": "g711_ulaw",
    "input_audio_transcription": {"model": "whisper-1", "language": "en"},
    "turn_detection": {
        "type": "server_vad",
        "threshold": 0.6,
        "prefix_padding_ms": 200,
        "silence_duration_ms": 700,
        "create_response": True,
        "interrupt_response": False,
    },
}

FULL_UPDATE = ev.SessionUpdate(
    instructions="Be brief.",
    voice="joe",
    input_format=ev.PCM16_24K,
    output_format=ev.ULAW_8K,
    turn_detection=ev.TurnDetection("server_vad", 0.6, 200, 700, True, False),
    transcription=ev.TranscriptionConfig("whisper-1", "en"),
    output_modalities=("audio",),
    event_id="evt_1",
)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("session", [GA_SESSION, BETA_SESSION], ids=["ga-shape", "beta-shape"])
def test_session_update_either_shape_on_either_dialect(dialect, session):
    event = proto(dialect).parse(frame(type="session.update", event_id="evt_1", session=session))
    assert event == FULL_UPDATE


def test_session_update_from_the_sdks_own_models():
    ga = GaSessionUpdateEvent.model_validate(
        {"type": "session.update", "event_id": "evt_1", "session": GA_SESSION}
    )
    beta = BetaSessionUpdateEvent.model_validate(
        {"type": "session.update", "event_id": "evt_1", "session": BETA_SESSION}
    )
    assert proto("ga").parse(ga.model_dump_json(exclude_none=True)) == FULL_UPDATE
    assert proto("beta").parse(beta.model_dump_json(exclude_none=True)) == FULL_UPDATE


def test_session_update_sends_only_what_was_given():
    event = proto().parse(frame(type="session.update", session={"type": "realtime"}))
    assert event == ev.SessionUpdate()
    assert all(
        isinstance(getattr(event, f), ev.Unset)
        for f in (
            "instructions",
            "voice",
            "input_format",
            "output_format",
            "turn_detection",
            "transcription",
            "output_modalities",
        )
    )


@pytest.mark.parametrize(
    "session",
    [
        {"audio": {"input": {"turn_detection": None, "transcription": None}}},
        {"turn_detection": None, "input_audio_transcription": None},
    ],
    ids=["ga", "beta"],
)
def test_null_turns_detection_and_transcription_off(session):
    event = proto().parse(frame(type="session.update", session=session))
    assert event == ev.SessionUpdate(turn_detection=None, transcription=None)


def test_partial_turn_detection_takes_defaults_and_semantic_vad_is_kept():
    p = proto()
    event = p.parse(
        frame(type="session.update", session={"turn_detection": {"silence_duration_ms": 900}})
    )
    assert event == ev.SessionUpdate(turn_detection=ev.TurnDetection(silence_duration_ms=900))
    event = p.parse(
        frame(
            type="session.update",
            session={
                "audio": {
                    "input": {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}
                }
            },
        )
    )
    assert event == ev.SessionUpdate(
        turn_detection=ev.TurnDetection(type="semantic_vad", eagerness="high")
    )


def test_ga_custom_voice_object_and_formats():
    event = proto().parse(
        frame(
            type="session.update",
            session={
                "audio": {
                    "input": {"format": {"type": "audio/pcma"}},
                    "output": {"format": {"type": "audio/pcm"}, "voice": {"id": "voice_joe"}},
                }
            },
        )
    )
    assert event == ev.SessionUpdate(
        voice="voice_joe", input_format=ev.ALAW_8K, output_format=ev.PCM16_24K
    )


def test_modalities_normalize_to_one():
    p = proto()
    for given, wanted in (
        (["text"], ("text",)),
        (["audio", "text"], ("audio",)),
        (["audio"], ("audio",)),
    ):
        event = p.parse(frame(type="session.update", session={"modalities": given}))
        assert event == ev.SessionUpdate(output_modalities=wanted)


def test_apply_replaces_only_sent_fields():
    config = ev.SessionConfig(
        id="sess_1",
        model="m",
        instructions="old",
        voice="joe",
        transcription=ev.TranscriptionConfig("whisper-1"),
    )
    update = ev.SessionUpdate(instructions="new", turn_detection=None, output_format=ev.ALAW_8K)
    assert update.apply(config) == ev.SessionConfig(
        id="sess_1",
        model="m",
        instructions="new",
        voice="joe",
        output_format=ev.ALAW_8K,
        turn_detection=None,
        transcription=ev.TranscriptionConfig("whisper-1"),
    )
    assert ev.SessionUpdate().apply(config) == config


@pytest.mark.parametrize("dialect", DIALECTS)
def test_pause_playback_is_parleys_opt_in(dialect):
    p = proto(dialect)
    on = p.parse(frame(type="session.update", session={"parley": {"pause_playback": True}}))
    assert on == ev.SessionUpdate(pause_playback=True)
    config = ev.SessionConfig(id="sess_1", model="m")
    assert "parley" not in json.loads(p.serialize(ev.SessionUpdated(config)))["session"]
    sent = json.loads(p.serialize(ev.SessionUpdated(on.apply(config))))["session"]
    assert sent["parley"] == {"pause_playback": True}
    # a later update that leaves it out keeps it; an update of another field too
    assert ev.SessionUpdate(instructions="x").apply(on.apply(config)).pause_playback
    with pytest.raises(ProtocolError) as caught:
        p.parse(frame(type="session.update", session={"parley": {"pause_playback": "yes"}}))
    assert caught.value.code == "invalid_type"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_simple_client_events(dialect):
    p = proto(dialect)
    audio = bytes(range(10))
    b64 = base64.b64encode(audio).decode()
    assert p.parse(frame(type="input_audio_buffer.append", audio=b64, event_id="a")) == (
        ev.InputAudioAppend(audio, event_id="a")
    )
    assert p.parse(frame(type="input_audio_buffer.append", audio="")) == ev.InputAudioAppend(b"")
    assert p.parse(frame(type="input_audio_buffer.commit")) == ev.InputAudioCommit()
    assert p.parse(frame(type="input_audio_buffer.clear", event_id="c")) == (
        ev.InputAudioClear(event_id="c")
    )
    assert p.parse(
        frame(
            type="conversation.item.truncate",
            event_id="t",
            item_id="item_9",
            content_index=0,
            audio_end_ms=1500,
        )
    ) == (ev.ItemTruncate("item_9", 0, 1500, event_id="t"))
    assert p.parse(frame(type="response.cancel")) == ev.ResponseCancel()
    assert p.parse(frame(type="response.cancel", response_id="resp_3", event_id="x")) == (
        ev.ResponseCancel("resp_3", event_id="x")
    )


def test_truncate_accepts_an_integral_float():
    event = proto().parse(
        frame(type="conversation.item.truncate", item_id="i", content_index=0, audio_end_ms=1500.0)
    )
    assert event == ev.ItemTruncate("i", 0, 1500)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_response_create(dialect):
    p = proto(dialect)
    assert p.parse(frame(type="response.create")) == ev.ResponseCreate()
    assert p.parse(
        frame(
            type="response.create",
            event_id="r",
            response={
                "instructions": "Shout.",
                "output_modalities": ["text"],
                "conversation": "auto",
                "metadata": {"k": "v"},
            },
        )
    ) == ev.ResponseCreate("Shout.", ("text",), event_id="r")
    assert p.parse(frame(type="response.create", response={"modalities": ["audio", "text"]})) == (
        ev.ResponseCreate(output_modalities=("audio",))
    )


@pytest.mark.parametrize("dialect", DIALECTS)
def test_max_output_tokens_either_name_and_its_bounds(dialect):
    p = proto(dialect)

    def update(**session: Any) -> Any:
        return p.parse(frame(type="session.update", session=session)).max_output_tokens

    assert update() is ev.UNSET
    assert update(max_output_tokens=50) == 50 and update(max_response_output_tokens=7) == 7
    assert update(max_output_tokens="inf") is None  # no limit beyond the server's cap
    for bad, code in ((0, "invalid_value"), (4097, "invalid_value"), ("lots", "invalid_type"),
                      (True, "invalid_type")):  # fmt: skip
        with pytest.raises(ProtocolError) as raised:
            update(max_output_tokens=bad)
        assert raised.value.code == code and raised.value.param == "session.max_output_tokens"
    response = p.parse(frame(type="response.create", response={"max_output_tokens": "inf"}))
    assert response == ev.ResponseCreate(max_output_tokens="inf")
    # sent back only once set, under the dialect's name
    config = ev.SessionConfig("sess_1", "m", max_output_tokens=50)
    body = json.loads(p.serialize(ev.SessionUpdated(config)))["session"]
    key = "max_output_tokens" if dialect == "ga" else "max_response_output_tokens"
    assert body[key] == 50
    plain = json.loads(p.serialize(ev.SessionUpdated(ev.SessionConfig("sess_1", "m"))))["session"]
    assert key not in plain


def _message(role: str, *parts: Any, **extra: Any) -> str:
    item = {"type": "message", "role": role, "content": list(parts), **extra}
    return frame(type="conversation.item.create", event_id="e", item=item)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_item_create_text_messages(dialect):
    p = proto(dialect)
    hi = {"type": "input_text", "text": "Hi"}
    there = {"type": "input_text", "text": " there"}
    assert p.parse(_message("user", hi, there)) == ev.ItemCreate(
        ev.MessageItem(
            "item_1", "user", (ev.ContentPart("text", "Hi"), ev.ContentPart("text", " there"))
        ),
        event_id="e",
    )
    event = p.parse(_message("system", hi, id="item_mine"))
    assert event == ev.ItemCreate(
        ev.MessageItem("item_mine", "system", (ev.ContentPart("text", "Hi"),)), event_id="e"
    )
    for kind in ("output_text", "text"):  # GA, beta
        event = p.parse(_message("assistant", {"type": kind, "text": "Hello."}))
        assert isinstance(event, ev.ItemCreate)
        assert event.item.role == "assistant" and event.item.text == "Hello."
    event = p.parse(
        frame(
            type="conversation.item.create",
            previous_item_id="item_0",
            item={"role": "user", "content": [hi]},
        )
    )  # type defaults to message
    assert event == ev.ItemCreate(
        ev.MessageItem("item_4", "user", (ev.ContentPart("text", "Hi"),)), previous_item_id="item_0"
    )


# -- errors -----------------------------------------------------------------------------------

B64_17 = base64.b64encode(bytes(17)).decode()  # 24 characters: passes the pre-check for 16
ITEM = "conversation.item.create"
SU = "session.update"
TR = "conversation.item.truncate"


def _su(session: Any) -> str:
    return frame(type=SU, event_id="e", session=session)


def _ga_input(**fields: Any) -> str:
    return _su({"type": "realtime", "audio": {"input": fields}})


def _td(**fields: Any) -> str:
    return _su({"turn_detection": fields})


ERRORS = [
    # (frame, code, param, echoed event_id)
    ("not json", "invalid_json", None, None),
    ('{"type": "response.create"', "invalid_json", None, None),
    ("[1, 2]", "invalid_json", None, None),
    ("[" * 100_000, "invalid_json", None, None),
    (frame(type="response.create", event_id=5), "invalid_type", "event_id", None),
    (frame(event_id="e"), "missing_required_parameter", "type", "e"),
    (frame(type=None, event_id="e"), "missing_required_parameter", "type", "e"),
    (frame(type=7, event_id="e"), "invalid_type", "type", "e"),
    (frame(type="foo.bar", event_id="e"), "unknown_event", "type", "e"),
    (frame(type="response.audio.delta", event_id="e"), "unknown_event", "type", "e"),
    (
        frame(type="conversation.item.delete", event_id="e", item_id="i"),
        "unsupported_event",
        "type",
        "e",
    ),
    (frame(type="output_audio_buffer.clear", event_id="e"), "unsupported_event", "type", "e"),
    # input_audio_buffer.append
    (
        frame(type="input_audio_buffer.append", event_id="e"),
        "missing_required_parameter",
        "audio",
        "e",
    ),
    (frame(type="input_audio_buffer.append", event_id="e", audio=5), "invalid_type", "audio", "e"),
    (
        frame(type="input_audio_buffer.append", event_id="e", audio="!!!!"),
        "invalid_base64",
        "audio",
        "e",
    ),
    (
        frame(type="input_audio_buffer.append", event_id="e", audio="AAE"),
        "invalid_base64",
        "audio",
        "e",
    ),
    (
        frame(type="input_audio_buffer.append", event_id="e", audio=B64_17),
        "audio_too_large",
        "audio",
        "e",
    ),
    (
        frame(type="input_audio_buffer.append", event_id="e", audio="A" * 4000),
        "audio_too_large",
        "audio",
        "e",
    ),
    # session.update
    (frame(type=SU, event_id="e"), "missing_required_parameter", "session", "e"),
    (_su("pcm16"), "invalid_type", "session", "e"),
    (_su({"type": "transcription"}), "unsupported_feature", "session.type", "e"),
    (_su({"instructions": 5}), "invalid_type", "session.instructions", "e"),
    (_su({"voice": ["a"]}), "invalid_type", "session.voice", "e"),
    (_su({"audio": []}), "invalid_type", "session.audio", "e"),
    (
        _ga_input(format={"type": "audio/pcm", "rate": 16000}),
        "unsupported_audio_format",
        "session.audio.input.format.rate",
        "e",
    ),
    (
        _su({"audio": {"output": {"format": {"type": "audio/opus"}}}}),
        "unsupported_audio_format",
        "session.audio.output.format.type",
        "e",
    ),
    (
        _ga_input(format={"rate": 24000}),
        "missing_required_parameter",
        "session.audio.input.format.type",
        "e",
    ),
    (_ga_input(format="pcm24"), "unsupported_audio_format", "session.audio.input.format", "e"),
    (
        _su({"input_audio_format": "pcm24"}),
        "unsupported_audio_format",
        "session.input_audio_format",
        "e",
    ),
    (
        _su({"output_audio_format": "opus"}),
        "unsupported_audio_format",
        "session.output_audio_format",
        "e",
    ),
    (
        _ga_input(turn_detection={"type": "server_vad", "threshold": 1.5}),
        "invalid_value",
        "session.audio.input.turn_detection.threshold",
        "e",
    ),
    (
        _ga_input(turn_detection="server_vad"),
        "invalid_type",
        "session.audio.input.turn_detection",
        "e",
    ),
    (_td(type="push_to_talk"), "invalid_value", "session.turn_detection.type", "e"),
    (
        _td(silence_duration_ms=-1),
        "invalid_value",
        "session.turn_detection.silence_duration_ms",
        "e",
    ),
    (
        _td(silence_duration_ms="500"),
        "invalid_type",
        "session.turn_detection.silence_duration_ms",
        "e",
    ),
    (_td(prefix_padding_ms=True), "invalid_type", "session.turn_detection.prefix_padding_ms", "e"),
    (_td(threshold="high"), "invalid_type", "session.turn_detection.threshold", "e"),
    (_td(create_response="yes"), "invalid_type", "session.turn_detection.create_response", "e"),
    (_td(eagerness="very"), "invalid_value", "session.turn_detection.eagerness", "e"),
    (
        _su({"input_audio_transcription": {"model": 1}}),
        "invalid_type",
        "session.input_audio_transcription.model",
        "e",
    ),
    (_su({"modalities": []}), "invalid_value", "session.modalities", "e"),
    (_su({"output_modalities": ["video"]}), "invalid_value", "session.output_modalities", "e"),
    # conversation.item.create
    (frame(type=ITEM, event_id="e"), "missing_required_parameter", "item", "e"),
    (
        frame(type=ITEM, event_id="e", item={"type": "function_call", "name": "f"}),
        "unsupported_feature",
        "item.type",
        "e",
    ),
    (_message("tool", {"type": "input_text", "text": "x"}), "invalid_value", "item.role", "e"),
    (
        frame(type=ITEM, event_id="e", item={"type": "message", "content": []}),
        "missing_required_parameter",
        "item.role",
        "e",
    ),
    (_message("user"), "invalid_value", "item.content", "e"),
    (
        frame(type=ITEM, event_id="e", item={"role": "user", "content": "hi"}),
        "invalid_type",
        "item.content",
        "e",
    ),
    (_message("user", "hi"), "invalid_type", "item.content[0]", "e"),
    (
        _message("user", {"type": "input_audio", "audio": "AAAA"}),
        "unsupported_feature",
        "item.content[0].type",
        "e",
    ),
    (
        _message("user", {"type": "output_text", "text": "x"}),
        "invalid_value",
        "item.content[0].type",
        "e",
    ),
    (
        _message("assistant", {"type": "input_text", "text": "x"}),
        "invalid_value",
        "item.content[0].type",
        "e",
    ),
    (
        _message("user", {"type": "input_text", "text": "a"}, {"type": "input_text"}),
        "missing_required_parameter",
        "item.content[1].text",
        "e",
    ),
    (_message("user", {"type": "input_text", "text": "a"}, id=3), "invalid_type", "item.id", "e"),
    # conversation.item.truncate
    (
        frame(type=TR, event_id="e", content_index=0, audio_end_ms=1),
        "missing_required_parameter",
        "item_id",
        "e",
    ),
    (
        frame(type=TR, event_id="e", item_id="i", audio_end_ms=1),
        "missing_required_parameter",
        "content_index",
        "e",
    ),
    (
        frame(type=TR, event_id="e", item_id="i", content_index=0, audio_end_ms=-5),
        "invalid_value",
        "audio_end_ms",
        "e",
    ),
    (
        frame(type=TR, event_id="e", item_id="i", content_index=0, audio_end_ms=True),
        "invalid_type",
        "audio_end_ms",
        "e",
    ),
    (
        frame(type=TR, event_id="e", item_id="i", content_index=1.5, audio_end_ms=1),
        "invalid_type",
        "content_index",
        "e",
    ),
    # response.create / response.cancel
    (
        frame(type="response.create", event_id="e", response={"conversation": "none"}),
        "unsupported_feature",
        "response.conversation",
        "e",
    ),
    (
        frame(type="response.create", event_id="e", response={"input": []}),
        "unsupported_feature",
        "response.input",
        "e",
    ),
    (frame(type="response.create", event_id="e", response=[]), "invalid_type", "response", "e"),
    (
        frame(type="response.cancel", event_id="e", response_id=3),
        "invalid_type",
        "response_id",
        "e",
    ),
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("text", "code", "param", "event_id"), ERRORS)
def test_bad_client_events_raise_protocol_errors(dialect, text, code, param, event_id):
    p = proto(dialect, max_append_bytes=16)
    with pytest.raises(ProtocolError) as caught:
        p.parse(text)
    err = caught.value
    assert (err.code, err.param, err.event_id) == (code, param, event_id)
    assert err.message and str(err) == err.message
    assert isinstance(err, ParleyError)
    # ... and it reaches the client as an SDK-valid error event echoing the event_id
    sent = json.loads(p.serialize(error_event(err)))
    assert sent == {
        "event_id": "event_1",
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "code": code,
            "message": err.message,
            "param": param,
            "event_id": event_id,
        },
    }
    assert sdk_events(dialect).validate_python(sent).error.code == code


def test_append_size_limit_is_inclusive():
    p = proto(max_append_bytes=16)
    assert p.parse(
        frame(type="input_audio_buffer.append", audio=base64.b64encode(bytes(16)).decode())
    ) == (ev.InputAudioAppend(bytes(16)))


def test_decoding_errors_chain_their_cause():
    with pytest.raises(ProtocolError) as caught:
        proto().parse("{")
    assert isinstance(caught.value.__cause__, json.JSONDecodeError)


# -- serializing server events ----------------------------------------------------------------

SESSION = ev.SessionConfig(
    id="sess_1",
    model="smollm2-135m",
    instructions="Be brief.",
    voice="joe",
    transcription=ev.TranscriptionConfig("whisper-tiny.en"),
)
USER_AUDIO = ev.MessageItem("item_1", "user", (ev.ContentPart("audio", None),))
USER_TEXT = ev.MessageItem("item_2", "user", (ev.ContentPart("text", "Hi"),))
SYSTEM = ev.MessageItem("item_s", "system", (ev.ContentPart("text", "Rules."),))
REPLY = ev.MessageItem("item_3", "assistant", (ev.ContentPart("audio", "Hello there."),))
REPLY_TEXT = ev.MessageItem("item_4", "assistant", (ev.ContentPart("text", "Hello."),))
LIVE_REPLY = ev.MessageItem("item_3", "assistant", (), status="in_progress")
METRICS = ev.TurnMetrics(
    end_of_turn_ms=310.0,
    asr_final_ms=180.5,
    first_token_ms=240.0,
    first_chunk_ms=290.0,
    first_audio_ms=362.0,
)
AT: dict[str, Any] = dict(response_id="resp_1", item_id="item_3", output_index=0, content_index=0)

GA_TD = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
}
GA_PCM = {"type": "audio/pcm", "rate": 24000}
GA_SESSION_JSON = {
    "id": "sess_1",
    "object": "realtime.session",
    "type": "realtime",
    "model": "smollm2-135m",
    "output_modalities": ["audio"],
    "instructions": "Be brief.",
    "audio": {
        "input": {
            "format": GA_PCM,
            "transcription": {"model": "whisper-tiny.en"},
            "turn_detection": GA_TD,
        },
        "output": {"format": GA_PCM, "voice": "joe"},
    },
}
BETA_SESSION_JSON = {
    "id": "sess_1",
    "object": "realtime.session",
    "modalities": ["text", "audio"],
    "instructions": "Be brief.",
    "voice": "joe",
    "input_audio_format": "pcm16",
    "output_audio_format": "pcm16",
    "input_audio_transcription": {"model": "whisper-tiny.en"},
    "turn_detection": GA_TD,
}


def _item(item_id: str, role: str, status: str, *content: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": status,
        "role": role,
        "content": list(content),
    }


def _response(dialect: Dialect, status: str, output: list[Any], **tail: Any) -> dict[str, Any]:
    head = {
        "id": "resp_1",
        "object": "realtime.response",
        "status": status,
        "status_details": tail.pop("status_details", None),
        "output": output,
        "usage": tail.pop("usage", None),
    }
    if dialect == "ga":
        mid = {
            "output_modalities": ["audio"],
            "audio": {"output": {"format": GA_PCM, "voice": "joe"}},
        }
    else:
        mid = {"modalities": ["text", "audio"], "output_audio_format": "pcm16", "voice": "joe"}
    return {**head, **mid, **tail}


METRICS_JSON = {
    "metrics": {
        "end_of_turn_ms": 310.0,
        "asr_final_ms": 180.5,
        "first_token_ms": 240.0,
        "first_chunk_ms": 290.0,
        "first_audio_ms": 362.0,
        "barge_in_stop_ms": None,
        "barge_in_decision_ms": None,
    }
}
USAGE_JSON = {
    "total_tokens": 57,
    "input_tokens": 50,
    "output_tokens": 7,
    "input_token_details": {"text_tokens": 50, "audio_tokens": 0, "cached_tokens": 42},
    "output_token_details": {"text_tokens": 7, "audio_tokens": 0},
}


def _cases() -> list[tuple[str, ev.ServerEvent, str, dict[str, Any], dict[str, Any]]]:
    """(id, event, SDK class name, GA frame, beta frame); frames without event_id."""
    done = ev.Response(
        "resp_1",
        "completed",
        (REPLY,),
        voice="joe",
        usage=ev.Usage(50, 7, cached_tokens=42),
        metrics=METRICS,
    )
    cut = ev.Response("resp_1", "cancelled", (REPLY,), voice="joe", status_reason="turn_detected")
    failed = ev.Response("resp_1", "failed", (), voice="joe", error="LLM backend unreachable")
    ga_reply = _item(
        "item_3", "assistant", "completed", {"type": "output_audio", "transcript": "Hello there."}
    )
    beta_reply = _item(
        "item_3", "assistant", "completed", {"type": "audio", "transcript": "Hello there."}
    )
    cancelled = {"type": "cancelled", "reason": "turn_detected"}
    failure = {
        "type": "failed",
        "error": {"type": "server_error", "message": "LLM backend unreachable"},
    }

    # a case id is the GA event name, with "/variant" where one name has several cases
    def same(kind: str, cls: str, event: ev.ServerEvent, **body: Any):
        wire = kind.split("/")[0]
        return (kind, event, cls, {"type": wire, **body}, {"type": wire, **body})

    def split(ga: str, beta: str, cls: str, event: ev.ServerEvent, **body: Any):
        return (ga, event, cls, {"type": ga.split("/")[0], **body}, {"type": beta, **body})

    return [
        (
            "session.created",
            ev.SessionCreated(SESSION),
            "SessionCreatedEvent",
            {"type": "session.created", "session": GA_SESSION_JSON},
            {"type": "session.created", "session": BETA_SESSION_JSON},
        ),
        (
            "session.updated",
            ev.SessionUpdated(
                ev.SessionConfig(
                    "sess_1",
                    "m",
                    voice="joe",
                    input_format=ev.ULAW_8K,
                    output_format=ev.ALAW_8K,
                    turn_detection=None,
                    output_modalities=("text",),
                )
            ),
            "SessionUpdatedEvent",
            {
                "type": "session.updated",
                "session": {
                    "id": "sess_1",
                    "object": "realtime.session",
                    "type": "realtime",
                    "model": "m",
                    "output_modalities": ["text"],
                    "instructions": "",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcmu"},
                            "transcription": None,
                            "turn_detection": None,
                        },
                        "output": {"format": {"type": "audio/pcma"}, "voice": "joe"},
                    },
                },
            },
            {
                "type": "session.updated",
                "session": {
                    "id": "sess_1",
                    "object": "realtime.session",
                    "modalities": ["text"],
                    "instructions": "",
                    "voice": "joe",
                    "input_audio_format": "g711_ulaw",
                    "output_audio_format": "g711_alaw",
                    "input_audio_transcription": None,
                    "turn_detection": None,
                },
            },
        ),
        (
            "session.updated/semantic_vad",
            ev.SessionUpdated(
                ev.SessionConfig(
                    "sess_1", "m", turn_detection=ev.TurnDetection("semantic_vad", eagerness="low")
                )
            ),
            "SessionUpdatedEvent",
            {
                "type": "session.updated",
                "session": {
                    "id": "sess_1",
                    "object": "realtime.session",
                    "type": "realtime",
                    "model": "m",
                    "output_modalities": ["audio"],
                    "instructions": "",
                    "audio": {
                        "input": {
                            "format": GA_PCM,
                            "transcription": None,
                            "turn_detection": {
                                "type": "semantic_vad",
                                "eagerness": "low",
                                "create_response": True,
                                "interrupt_response": True,
                            },
                        },
                        "output": {"format": GA_PCM, "voice": "default"},
                    },
                },
            },
            {
                "type": "session.updated",
                "session": {
                    "id": "sess_1",
                    "object": "realtime.session",
                    "modalities": ["text", "audio"],
                    "instructions": "",
                    "voice": "default",
                    "input_audio_format": "pcm16",
                    "output_audio_format": "pcm16",
                    "input_audio_transcription": None,
                    "turn_detection": {
                        "type": "semantic_vad",
                        "eagerness": "low",
                        "create_response": True,
                        "interrupt_response": True,
                    },
                },
            },
        ),
        same(
            "input_audio_buffer.speech_started",
            "InputAudioBufferSpeechStartedEvent",
            ev.SpeechStarted(1200, "item_1"),
            audio_start_ms=1200,
            item_id="item_1",
        ),
        same(
            "input_audio_buffer.speech_stopped",
            "InputAudioBufferSpeechStoppedEvent",
            ev.SpeechStopped(2400, "item_1"),
            audio_end_ms=2400,
            item_id="item_1",
        ),
        same(
            "input_audio_buffer.committed",
            "InputAudioBufferCommittedEvent",
            ev.InputAudioCommitted("item_1", "item_0"),
            item_id="item_1",
            previous_item_id="item_0",
        ),
        same("input_audio_buffer.cleared", "InputAudioBufferClearedEvent", ev.InputAudioCleared()),
        split(
            "conversation.item.added",
            "conversation.item.created",
            "ConversationItemAdded",
            ev.ItemAdded(USER_AUDIO),
            previous_item_id=None,
            item=_item("item_1", "user", "completed", {"type": "input_audio", "transcript": None}),
        ),
        split(
            "conversation.item.added/text",
            "conversation.item.created",
            "ConversationItemAdded",
            ev.ItemAdded(USER_TEXT, "item_1"),
            previous_item_id="item_1",
            item=_item("item_2", "user", "completed", {"type": "input_text", "text": "Hi"}),
        ),
        split(
            "conversation.item.added/system",
            "conversation.item.created",
            "ConversationItemAdded",
            ev.ItemAdded(SYSTEM),
            previous_item_id=None,
            item=_item("item_s", "system", "completed", {"type": "input_text", "text": "Rules."}),
        ),
        (
            "conversation.item.added/assistant",
            ev.ItemAdded(REPLY_TEXT, "item_2"),
            "ConversationItemAdded",
            {
                "type": "conversation.item.added",
                "previous_item_id": "item_2",
                "item": _item(
                    "item_4", "assistant", "completed", {"type": "output_text", "text": "Hello."}
                ),
            },
            {
                "type": "conversation.item.created",
                "previous_item_id": "item_2",
                "item": _item(
                    "item_4", "assistant", "completed", {"type": "text", "text": "Hello."}
                ),
            },
        ),
        same(
            "conversation.item.input_audio_transcription.delta",
            "ConversationItemInputAudioTranscriptionDeltaEvent",
            ev.TranscriptionDelta("item_1", "what's the"),
            item_id="item_1",
            delta="what's the",
            content_index=0,
        ),
        same(
            "conversation.item.input_audio_transcription.completed",
            "ConversationItemInputAudioTranscriptionCompletedEvent",
            ev.TranscriptionCompleted("item_1", "What's the time?", 1.25),
            item_id="item_1",
            content_index=0,
            transcript="What's the time?",
            usage={"type": "duration", "seconds": 1.25},
        ),
        same(
            "conversation.item.truncated",
            "ConversationItemTruncatedEvent",
            ev.ItemTruncated("item_3", 0, 850),
            item_id="item_3",
            content_index=0,
            audio_end_ms=850,
        ),
        (
            "response.created",
            ev.ResponseCreated(ev.Response("resp_1", voice="joe")),
            "ResponseCreatedEvent",
            {"type": "response.created", "response": _response("ga", "in_progress", [])},
            {"type": "response.created", "response": _response("beta", "in_progress", [])},
        ),
        split(
            "response.output_item.added",
            "response.output_item.added",
            "ResponseOutputItemAddedEvent",
            ev.OutputItemAdded("resp_1", 0, LIVE_REPLY),
            response_id="resp_1",
            output_index=0,
            item=_item("item_3", "assistant", "in_progress"),
        ),
        (
            "response.output_item.done",
            ev.OutputItemDone("resp_1", 0, REPLY),
            "ResponseOutputItemDoneEvent",
            {
                "type": "response.output_item.done",
                "response_id": "resp_1",
                "output_index": 0,
                "item": ga_reply,
            },
            {
                "type": "response.output_item.done",
                "response_id": "resp_1",
                "output_index": 0,
                "item": beta_reply,
            },
        ),
        same(
            "response.content_part.added",
            "ResponseContentPartAddedEvent",
            ev.ContentPartAdded(**AT, part=ev.ContentPart("audio")),
            **AT,
            part={"type": "audio", "transcript": ""},
        ),
        same(
            "response.content_part.done",
            "ResponseContentPartDoneEvent",
            ev.ContentPartDone(**AT, part=ev.ContentPart("audio", "Hello there.")),
            **AT,
            part={"type": "audio", "transcript": "Hello there."},
        ),
        same(
            "response.content_part.added/text",
            "ResponseContentPartAddedEvent",
            ev.ContentPartAdded(**AT, part=ev.ContentPart("text")),
            **AT,
            part={"type": "text", "text": ""},
        ),
        split(
            "response.output_audio.delta",
            "response.audio.delta",
            "ResponseAudioDeltaEvent",
            ev.AudioDelta(**AT, audio=b"\x01\x00\xff\x7f"),
            **AT,
            delta="AQD/fw==",
        ),
        split(
            "response.output_audio.done",
            "response.audio.done",
            "ResponseAudioDoneEvent",
            ev.AudioDone(**AT),
            **AT,
        ),
        split(
            "response.output_audio_transcript.delta",
            "response.audio_transcript.delta",
            "ResponseAudioTranscriptDeltaEvent",
            ev.TranscriptDelta(**AT, delta="Hello "),
            **AT,
            delta="Hello ",
        ),
        split(
            "response.output_audio_transcript.done",
            "response.audio_transcript.done",
            "ResponseAudioTranscriptDoneEvent",
            ev.TranscriptDone(**AT, transcript="Hello there."),
            **AT,
            transcript="Hello there.",
        ),
        split(
            "response.output_text.delta",
            "response.text.delta",
            "ResponseTextDeltaEvent",
            ev.TextDelta(**AT, delta="Héllo "),
            **AT,
            delta="Héllo ",
        ),
        split(
            "response.output_text.done",
            "response.text.done",
            "ResponseTextDoneEvent",
            ev.TextDone(**AT, text="Héllo."),
            **AT,
            text="Héllo.",
        ),
        (
            "response.done",
            ev.ResponseDone(done),
            "ResponseDoneEvent",
            {
                "type": "response.done",
                "response": _response(
                    "ga", "completed", [ga_reply], usage=USAGE_JSON, parley=METRICS_JSON
                ),
            },
            {
                "type": "response.done",
                "response": _response(
                    "beta", "completed", [beta_reply], usage=USAGE_JSON, parley=METRICS_JSON
                ),
            },
        ),
        (
            "response.done/cancelled",
            ev.ResponseDone(cut),
            "ResponseDoneEvent",
            {
                "type": "response.done",
                "response": _response("ga", "cancelled", [ga_reply], status_details=cancelled),
            },
            {
                "type": "response.done",
                "response": _response("beta", "cancelled", [beta_reply], status_details=cancelled),
            },
        ),
        (
            "response.done/failed",
            ev.ResponseDone(failed),
            "ResponseDoneEvent",
            {
                "type": "response.done",
                "response": _response("ga", "failed", [], status_details=failure),
            },
            {
                "type": "response.done",
                "response": _response("beta", "failed", [], status_details=failure),
            },
        ),
        (  # Parley's own, sent only to a client that set session.parley.pause_playback
            "parley.output_audio.paused",
            ev.OutputAudioPaused("resp_1", "item_2", 1240),
            None,
            paused := {
                "type": "parley.output_audio.paused",
                "response_id": "resp_1",
                "item_id": "item_2",
                "audio_end_ms": 1240,
            },
            paused,
        ),
        (
            "parley.output_audio.resumed",
            ev.OutputAudioResumed("resp_1", "item_2"),
            None,
            resumed := {
                "type": "parley.output_audio.resumed",
                "response_id": "resp_1",
                "item_id": "item_2",
            },
            resumed,
        ),
        (
            "error",
            ev.ErrorEvent("server_error", "ASR crashed", type="server_error"),
            "RealtimeErrorEvent",
            {
                "type": "error",
                "error": {
                    "type": "server_error",
                    "code": "server_error",
                    "message": "ASR crashed",
                    "param": None,
                    "event_id": None,
                },
            },
            {
                "type": "error",
                "error": {
                    "type": "server_error",
                    "code": "server_error",
                    "message": "ASR crashed",
                    "param": None,
                    "event_id": None,
                },
            },
        ),
    ]


CASES = _cases()
CASE_IDS = [case[0] for case in CASES]
SDK_CASES = [case for case in CASES if case[2] is not None]  # OpenAI's events


def _expected(case: tuple[Any, ...], dialect: Dialect) -> dict[str, Any]:
    body = case[3] if dialect == "ga" else case[4]
    return {"event_id": "event_1", **body}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_server_event_exact_frame(dialect, case):
    text = proto(dialect).serialize(case[1])
    assert text == compact(_expected(case, dialect))


def test_every_server_event_type_is_covered():
    assert {type(case[1]) for case in CASES} == set(get_args(ev.ServerEvent))


@functools.cache
def sdk_events(dialect: Dialect) -> pydantic.TypeAdapter[Any]:
    """The SDK's server-event union for ``dialect`` (built once: it is large)."""
    return pydantic.TypeAdapter(GaServerEvent if dialect == "ga" else BetaServerEvent)


def _extras(value: Any, path: str = "") -> set[str]:
    """Dotted paths of every field the SDK model kept as an undeclared extra."""
    found: set[str] = set()
    if isinstance(value, pydantic.BaseModel):
        found |= {f"{path}{key}" for key in value.model_extra or {}}
        for name in type(value).model_fields:
            found |= _extras(getattr(value, name), f"{path}{name}.")
    elif isinstance(value, list):
        for element in value:
            found |= _extras(element, f"{path}[].")
    return found


# What Parley sends that the SDK's models do not declare: the OpenAI server sends a session's
# id and object too; ``response.parley`` is Parley's metrics extension.
ALLOWED_EXTRAS = {
    "ga": {"session.id", "session.object", "response.parley"},
    "beta": {"session.object", "response.parley"},
}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("case", SDK_CASES, ids=[case[0] for case in SDK_CASES])
def test_the_official_sdk_accepts_every_server_event(dialect, case):
    text = proto(dialect).serialize(case[1])
    union = GaServerEvent if dialect == "ga" else BetaServerEvent
    strict = sdk_events(dialect).validate_json(text, strict=True)
    # beta has no conversation.item.added: it is the SDK's ConversationItemCreatedEvent there
    wanted = case[2]
    if dialect == "beta":
        wanted = {
            "ConversationItemAdded": "ConversationItemCreatedEvent",
            "RealtimeErrorEvent": "ErrorEvent",
        }.get(wanted, wanted)
    assert type(strict).__name__ == wanted
    assert type(strict).__module__.startswith(
        "openai.types.realtime" if dialect == "ga" else "openai.types.beta.realtime"
    )
    assert _extras(strict) <= ALLOWED_EXTRAS[dialect]
    # the SDK's own receive path (connection.parse_event) picks the same class
    assert type(construct_type_unchecked(value=json.loads(text), type_=union)) is type(strict)


def test_metrics_extension_reaches_sdk_users():
    done = ev.ResponseDone(ev.Response("resp_1", "completed", metrics=METRICS))
    parsed = sdk_events("ga").validate_json(proto().serialize(done))
    assert parsed.response.model_extra == {"parley": METRICS_JSON}


@pytest.mark.parametrize(
    ("event", "ga", "beta"),
    [
        (ev.AudioDelta(**AT, audio=b""), "response.output_audio.delta", "response.audio.delta"),
        (
            ev.TranscriptDelta(**AT, delta=""),
            "response.output_audio_transcript.delta",
            "response.audio_transcript.delta",
        ),
        (ev.ItemAdded(USER_TEXT), "conversation.item.added", "conversation.item.created"),
        (ev.TextDone(**AT, text=""), "response.output_text.done", "response.text.done"),
    ],
)
def test_dialects_differ_in_event_names(event, ga, beta):
    assert json.loads(proto("ga").serialize(event))["type"] == ga
    assert json.loads(proto("beta").serialize(event))["type"] == beta


def test_each_frame_gets_a_fresh_event_id():
    p = RealtimeProtocol()
    ids = {json.loads(p.serialize(ev.InputAudioCleared()))["event_id"] for _ in range(200)}
    assert len(ids) == 200
    assert all(i.startswith("event_") for i in ids)


def test_generated_item_ids_use_the_protocols_factory():
    p = RealtimeProtocol()
    event = p.parse(_message("user", {"type": "input_text", "text": "x"}))
    assert isinstance(event, ev.ItemCreate)
    assert event.item.id.startswith("item_") and len(event.item.id) > len("item_") + 16


def test_new_id():
    ids = {new_id("resp") for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("resp_") for i in ids)


# -- dialect, formats, settings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "dialect"),
    [
        ({}, "ga"),
        ({"OpenAI-Beta": "realtime=v1"}, "beta"),
        ({"openai-beta": "assistants=v2, realtime=v1"}, "beta"),
        ({"OpenAI-Beta": "assistants=v2"}, "ga"),
        ({"Authorization": "Bearer x"}, "ga"),
        ({"Sec-WebSocket-Protocol": "realtime, openai-beta.realtime-v1"}, "beta"),
        ({"Sec-WebSocket-Protocol": "realtime, openai-insecure-api-key.k"}, "ga"),
    ],
)
def test_dialect_from_headers(headers, dialect):
    assert dialect_from_headers(headers) == dialect


def test_audio_format():
    assert ev.PCM16_24K.duration_ms(48_000) == 1000.0
    assert ev.ULAW_8K.duration_ms(160) == 20.0
    assert (ev.ALAW_8K.bytes_per_sample, ev.PCM16_24K.bytes_per_sample) == (1, 2)
    with pytest.raises(ValueError):
        ev.AudioFormat("ulaw", 16000)
    with pytest.raises(ValueError):
        ev.AudioFormat("pcm16", 0)
    with pytest.raises(ValueError):
        ev.AudioFormat("opus", 48000)  # type: ignore[arg-type]


def test_settings_are_checked():
    with pytest.raises(ValueError):
        Limits(max_append_bytes=0)
    with pytest.raises(ValueError):
        RealtimeProtocol("v2")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ev.TurnDetection(threshold=2.0)
