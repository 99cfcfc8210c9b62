"""Typed events of the OpenAI-Realtime-compatible WebSocket API, free of any wire dialect.

Client events are what ``RealtimeProtocol.parse`` returns; server events are what
``RealtimeProtocol.serialize`` accepts. Neither carries an ``event_id`` of the server's own:
``serialize`` stamps a fresh one on every server event. Client events keep the client's
``event_id`` (or ``None``) so an error can echo it.

Everything here is data: frozen dataclasses, tuples instead of lists, audio as ``bytes`` (the
protocol does base64 at the edge). The one piece of logic is ``SessionUpdate.apply``, which
merges a ``session.update`` into the session's effective configuration.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Final, Literal, TypeAlias

__all__ = [
    "ALAW_8K",
    "PCM16_24K",
    "ULAW_8K",
    "UNSET",
    "AudioDelta",
    "AudioDone",
    "AudioEncoding",
    "AudioFormat",
    "CancelReason",
    "ClientEvent",
    "ContentPart",
    "ContentPartAdded",
    "ContentPartDone",
    "ErrorEvent",
    "InputAudioAppend",
    "InputAudioClear",
    "InputAudioCleared",
    "InputAudioCommit",
    "InputAudioCommitted",
    "ItemAdded",
    "ItemCreate",
    "ItemStatus",
    "ItemTruncate",
    "ItemTruncated",
    "MessageItem",
    "Modality",
    "OutputAudioPaused",
    "OutputAudioResumed",
    "OutputItemAdded",
    "OutputItemDone",
    "Response",
    "ResponseCancel",
    "ResponseCreate",
    "ResponseCreated",
    "ResponseDone",
    "ResponseStatus",
    "Role",
    "ServerEvent",
    "SessionConfig",
    "SessionCreated",
    "SessionUpdate",
    "SessionUpdated",
    "SpeechStarted",
    "SpeechStopped",
    "TextDelta",
    "TextDone",
    "TranscriptDelta",
    "TranscriptDone",
    "TranscriptionCompleted",
    "TranscriptionConfig",
    "TranscriptionDelta",
    "TurnDetection",
    "TurnMetrics",
    "Unset",
    "Usage",
]

AudioEncoding: TypeAlias = Literal["pcm16", "ulaw", "alaw"]
Modality: TypeAlias = Literal["text", "audio"]
Role: TypeAlias = Literal["user", "assistant", "system"]
ItemStatus: TypeAlias = Literal["completed", "incomplete", "in_progress"]
ResponseStatus: TypeAlias = Literal["in_progress", "completed", "cancelled", "incomplete", "failed"]
CancelReason: TypeAlias = Literal["turn_detected", "client_cancelled", "max_output_tokens"]


class Unset(enum.Enum):
    """Marks a ``session.update`` field the client did not send (``None`` may mean "off")."""

    UNSET = "UNSET"


UNSET: Final = Unset.UNSET


# -- configuration values ---------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class AudioFormat:
    """Mono audio as it crosses the socket: PCM16 little-endian, or G.711 at 8 kHz."""

    encoding: AudioEncoding
    sample_rate: int

    def __post_init__(self) -> None:
        if self.encoding not in ("pcm16", "ulaw", "alaw"):
            raise ValueError(f"unknown audio encoding {self.encoding!r}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {self.sample_rate}")
        if self.encoding != "pcm16" and self.sample_rate != 8000:
            raise ValueError(f"G.711 ({self.encoding}) is 8000 Hz, not {self.sample_rate}")

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "pcm16" else 1

    def duration_ms(self, n_bytes: int) -> float:
        """How long ``n_bytes`` of this audio plays, in milliseconds."""
        return 1000.0 * n_bytes / (self.bytes_per_sample * self.sample_rate)


PCM16_24K: Final = AudioFormat("pcm16", 24000)
ULAW_8K: Final = AudioFormat("ulaw", 8000)
ALAW_8K: Final = AudioFormat("alaw", 8000)


@dataclass(slots=True, frozen=True)
class TurnDetection:
    """Server-side turn detection as the client asked for it (OpenAI's defaults).

    ``semantic_vad`` is accepted and reported back as asked; Parley's turn-taker serves both
    (``eagerness`` is a hint only).
    """

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.prefix_padding_ms < 0 or self.silence_duration_ms < 0:
            raise ValueError("padding and silence durations must be >= 0")


@dataclass(slots=True, frozen=True)
class TranscriptionConfig:
    """Input transcription as asked; Parley always uses its own ASR, ``model`` is echoed."""

    model: str | None = None
    language: str | None = None
    prompt: str | None = None


@dataclass(slots=True, frozen=True)
class SessionConfig:
    """The effective session, sent in ``session.created`` / ``session.updated``.

    ``output_modalities`` is ``("audio",)`` (audio with its transcript) or ``("text",)``.
    ``pause_playback`` (Parley's ``session.parley.pause_playback``): the client pauses its
    player on ``OutputAudioPaused`` and goes on at ``OutputAudioResumed``; only such a client
    is sent them.
    """

    id: str
    model: str
    instructions: str = ""
    voice: str = "default"
    input_format: AudioFormat = PCM16_24K
    output_format: AudioFormat = PCM16_24K
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    transcription: TranscriptionConfig | None = None
    output_modalities: tuple[Modality, ...] = ("audio",)
    pause_playback: bool = False
    max_output_tokens: int | None = None  # a reply's tokens; None: "inf" (the server's cap)


# -- conversation items -----------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class ContentPart:
    """One part of a message: text, or audio with its transcript (``None``: not known yet).

    The wire type follows from the role and dialect (``input_text``, ``output_audio``, ...).
    """

    kind: Modality
    text: str | None = None


@dataclass(slots=True, frozen=True)
class MessageItem:
    """A conversation message (``item_...`` id). Only message items are supported."""

    id: str
    role: Role
    content: tuple[ContentPart, ...]
    status: ItemStatus = "completed"

    @property
    def text(self) -> str:
        """The message's words: its text parts and audio transcripts, joined."""
        return "".join(part.text or "" for part in self.content)


# -- client events ----------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class SessionUpdate:
    """``session.update``: only the fields the client sent; the rest are ``UNSET``.

    ``turn_detection=None`` turns detection off (the client commits and asks for responses);
    ``transcription=None`` turns input transcription off.
    """

    instructions: str | Unset = UNSET
    voice: str | Unset = UNSET
    input_format: AudioFormat | Unset = UNSET
    output_format: AudioFormat | Unset = UNSET
    turn_detection: TurnDetection | Unset | None = UNSET
    transcription: TranscriptionConfig | Unset | None = UNSET
    output_modalities: tuple[Modality, ...] | Unset = UNSET
    pause_playback: bool | Unset = UNSET
    max_output_tokens: int | Unset | None = UNSET  # None: "inf"
    event_id: str | None = None

    def apply(self, config: SessionConfig) -> SessionConfig:
        """``config`` with every field this update sent replaced."""
        changes = {
            name: value
            for name in (
                "instructions",
                "voice",
                "input_format",
                "output_format",
                "turn_detection",
                "transcription",
                "output_modalities",
                "pause_playback",
                "max_output_tokens",
            )
            if not isinstance(value := getattr(self, name), Unset)
        }
        return replace(config, **changes)


@dataclass(slots=True, frozen=True)
class InputAudioAppend:
    """``input_audio_buffer.append``: audio already base64-decoded, in the session's format."""

    audio: bytes
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class InputAudioCommit:
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class InputAudioClear:
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class ItemCreate:
    """``conversation.item.create`` of a text message; ``item.id`` is generated if absent."""

    item: MessageItem
    previous_item_id: str | None = None
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class ItemTruncate:
    """``conversation.item.truncate``: the client played ``audio_end_ms`` of the item's audio."""

    item_id: str
    content_index: int
    audio_end_ms: int
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class ResponseCreate:
    """``response.create``; ``None`` fields mean "as the session says"."""

    instructions: str | None = None
    output_modalities: tuple[Modality, ...] | None = None
    event_id: str | None = None
    max_output_tokens: int | Literal["inf"] | None = None


@dataclass(slots=True, frozen=True)
class ResponseCancel:
    response_id: str | None = None
    event_id: str | None = None


ClientEvent: TypeAlias = (
    SessionUpdate
    | InputAudioAppend
    | InputAudioCommit
    | InputAudioClear
    | ItemCreate
    | ItemTruncate
    | ResponseCreate
    | ResponseCancel
)


# -- responses --------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Usage:
    """Token counts of one response; ``cached_tokens`` are input tokens whose KV was reused."""

    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0


@dataclass(slots=True, frozen=True)
class TurnMetrics:
    """Parley's per-turn latency metrics, milliseconds after the caller's end of speech.

    Sent as ``response.parley.metrics`` in ``response.done`` (an extension field: SDKs keep it
    as an extra attribute). ``None`` where a stage did not happen (a text turn has no end of
    speech). An interrupted reply has, from the caller's onset (as the VAD found it):
    ``barge_in_stop_ms``, to the moment its audio stopped going out (held while the speech
    might be a backchannel, or cancelled); ``barge_in_decision_ms``, to the barge-in decision
    (the reply cancelled, the client told to drop what it buffered).
    """

    end_of_turn_ms: float | None = None
    asr_final_ms: float | None = None
    first_token_ms: float | None = None
    first_chunk_ms: float | None = None
    first_audio_ms: float | None = None
    barge_in_stop_ms: float | None = None
    barge_in_decision_ms: float | None = None


@dataclass(slots=True, frozen=True)
class Response:
    """A model response (``resp_...`` id) as in ``response.created`` / ``response.done``.

    ``status_reason`` explains a ``cancelled`` or ``incomplete`` status; ``error`` a ``failed``.
    """

    id: str
    status: ResponseStatus = "in_progress"
    output: tuple[MessageItem, ...] = ()
    output_modalities: tuple[Modality, ...] = ("audio",)
    output_format: AudioFormat = PCM16_24K
    voice: str | None = None
    status_reason: CancelReason | None = None
    error: str | None = None
    usage: Usage | None = None
    metrics: TurnMetrics | None = None


# -- server events ----------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class SessionCreated:
    session: SessionConfig


@dataclass(slots=True, frozen=True)
class SessionUpdated:
    session: SessionConfig


@dataclass(slots=True, frozen=True)
class SpeechStarted:
    """Server VAD heard speech begin ``audio_start_ms`` into the session's input audio."""

    audio_start_ms: int
    item_id: str


@dataclass(slots=True, frozen=True)
class SpeechStopped:
    audio_end_ms: int
    item_id: str


@dataclass(slots=True, frozen=True)
class InputAudioCommitted:
    item_id: str
    previous_item_id: str | None = None


@dataclass(slots=True, frozen=True)
class InputAudioCleared:
    pass


@dataclass(slots=True, frozen=True)
class ItemAdded:
    """An item joined the conversation (GA ``conversation.item.added``, beta ``...created``)."""

    item: MessageItem
    previous_item_id: str | None = None


@dataclass(slots=True, frozen=True)
class TranscriptionDelta:
    item_id: str
    delta: str
    content_index: int = 0


@dataclass(slots=True, frozen=True)
class TranscriptionCompleted:
    """The final transcript of a user audio item; ``audio_seconds`` is reported as usage."""

    item_id: str
    transcript: str
    audio_seconds: float
    content_index: int = 0


@dataclass(slots=True, frozen=True)
class ItemTruncated:
    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(slots=True, frozen=True)
class ResponseCreated:
    response: Response


@dataclass(slots=True, frozen=True)
class ResponseDone:
    response: Response


@dataclass(slots=True, frozen=True)
class OutputItemAdded:
    response_id: str
    output_index: int
    item: MessageItem


@dataclass(slots=True, frozen=True)
class OutputItemDone:
    response_id: str
    output_index: int
    item: MessageItem


@dataclass(slots=True, frozen=True)
class ContentPartAdded:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    part: ContentPart


@dataclass(slots=True, frozen=True)
class ContentPartDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    part: ContentPart


@dataclass(slots=True, frozen=True)
class AudioDelta:
    """A chunk of reply audio, raw bytes in the session's output format."""

    response_id: str
    item_id: str
    output_index: int
    content_index: int
    audio: bytes


@dataclass(slots=True, frozen=True)
class AudioDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int


@dataclass(slots=True, frozen=True)
class TranscriptDelta:
    """Text of the reply audio, sent alongside the audio that speaks it."""

    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str


@dataclass(slots=True, frozen=True)
class TranscriptDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    transcript: str


@dataclass(slots=True, frozen=True)
class TextDelta:
    """Reply text of a text-only response."""

    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str


@dataclass(slots=True, frozen=True)
class TextDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    text: str


@dataclass(slots=True, frozen=True)
class OutputAudioPaused:
    """Parley's ``parley.output_audio.paused``: the caller is talking over the reply and it is
    not yet known whether that is an interruption; the server sends no more of its audio, and
    the client pauses playback, keeping its buffer. ``OutputAudioResumed`` (it was an
    acknowledgement), ``input_audio_buffer.speech_started`` (a barge-in: drop the buffer) or
    the response's ``response.done`` (cancelled or failed meanwhile) follows.
    ``audio_end_ms``: the item's audio the server estimates was played by then."""

    response_id: str
    item_id: str
    audio_end_ms: int


@dataclass(slots=True, frozen=True)
class OutputAudioResumed:
    """Parley's ``parley.output_audio.resumed``: play on from where the pause stopped."""

    response_id: str
    item_id: str


@dataclass(slots=True, frozen=True)
class ErrorEvent:
    """``error``; ``event_id`` is the offending client event's id, if it had one.

    ``type`` is ``invalid_request_error`` for a bad client event, ``server_error`` otherwise.
    """

    code: str
    message: str
    param: str | None = None
    event_id: str | None = None
    type: str = "invalid_request_error"


ServerEvent: TypeAlias = (
    SessionCreated
    | SessionUpdated
    | SpeechStarted
    | SpeechStopped
    | InputAudioCommitted
    | InputAudioCleared
    | ItemAdded
    | TranscriptionDelta
    | TranscriptionCompleted
    | ItemTruncated
    | ResponseCreated
    | ResponseDone
    | OutputItemAdded
    | OutputItemDone
    | ContentPartAdded
    | ContentPartDone
    | AudioDelta
    | AudioDone
    | TranscriptDelta
    | TranscriptDone
    | TextDelta
    | TextDone
    | OutputAudioPaused
    | OutputAudioResumed
    | ErrorEvent
)
