"""A ``Dialogue`` over any OpenAI-compatible streaming ``/v1/chat/completions`` endpoint.

vLLM, SGLang, llama.cpp server, ``parley serve`` and hosted APIs all speak it. The history is a
message list (the session's instructions first, as the system message), re-sent whole with
``stream: true`` on every turn; the reply arrives as server-sent events whose
``choices[0].delta.content`` pieces are yielded as they come.

Use: one :class:`RemoteLlm` per process (it owns the one ``aiohttp.ClientSession`` every
dialogue shares, made on first use on the running loop), ``llm.open(instructions)`` per voice
session, ``await llm.close()`` at shutdown. All of it runs on one event loop.

Differences from ``LocalDialogue``, forced by the API:

- ``set_user(text, final=False)`` only records the open user message: a remote server cannot
  prefill ahead of the request.
- ``keep_reply(n_chars)`` keeps exactly ``n_chars`` characters (no token boundary is known).
- The history never holds an empty assistant message: a reply that produced no text (it failed,
  or was cancelled, before its first piece), or one cut to zero characters, is dropped.

Every failure (unreachable, timed out, HTTP 4xx/5xx, a stream that is malformed, breaks off or
carries an in-band ``{"error": ...}``) raises :class:`RemoteLlmError`, a ``voice.llm.LlmError``
naming the URL and the server's status and message. Nothing is retried: a second attempt would
double the caller's wait, so the session decides. ``delta.reasoning_content`` (reasoning models)
is not spoken and is ignored.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from voice.llm import Dialogue, LlmError, Message, ReplyParams, Role

__all__ = [
    "RemoteDialogue", "RemoteLlm", "RemoteLlmConfig", "RemoteLlmError", "SseDecoder",
    "StreamEvent", "StreamFormatError", "parse_event",
]  # fmt: skip

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_LINE = 1 << 20  # one SSE line; a chat chunk is a few hundred bytes
MAX_ERROR_BODY = 64 << 10  # how much of an error response is read for its message
DRAIN_S = 0.05  # wait for the body's end after [DONE], to keep the connection for reuse
_ROLES = ("user", "assistant", "system")


@dataclass(slots=True)
class RemoteLlmConfig:
    """Where the remote model is and how to talk to it: a profile's ``[llm.remote]`` table.

    ``api_key_env`` is the *name* of an environment variable holding the API key (sent as
    ``Authorization: Bearer``); empty sends no key. A profile never holds the key itself.
    ``read_timeout_s`` bounds the wait for the first byte of the answer (the server's prefill
    included) and then between streamed chunks. ``max_tokens``, when set, caps every reply's
    ``ReplyParams.max_tokens``; ``temperature``, when set, replaces every reply's temperature
    (e.g. a hosted model tuned for a given temperature). ``max_connections`` bounds the open
    connections of the shared client (one per reply in flight).
    """

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "smollm2-135m-instruct"
    api_key_env: str = ""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_tokens: int | None = None
    temperature: float | None = None
    max_connections: int = 100

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        url = urlsplit(self.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"base_url must be an http(s) URL like http://host:8000/v1, got {self.base_url!r}"
            )
        if self.base_url.endswith("/chat/completions"):
            raise ValueError("base_url is the API root (…/v1), without /chat/completions")
        if not self.model:
            raise ValueError("model must name the served model (see GET <base_url>/models)")
        if self.api_key_env and not _ENV_NAME.fullmatch(self.api_key_env):
            raise ValueError(
                "api_key_env is the NAME of an environment variable holding the key "
                "(e.g. OPENAI_API_KEY), not the key itself"
            )
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("connect_timeout_s and read_timeout_s must be positive")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError("max_tokens must be a positive integer (or left out)")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise ValueError("temperature must be within 0..2 (or left out)")
        if self.max_connections < 1:
            raise ValueError("max_connections must be positive")

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/chat/completions"


class RemoteLlmError(LlmError):
    """A remote request failed; ``status`` is the HTTP status when the server answered one."""

    def __init__(self, message: str, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class StreamFormatError(ValueError):
    """The event stream broke the protocol, or carried an in-band error (no I/O: no URL)."""


# --- the stream, as a pure protocol core ----------------------------------------------------


class SseDecoder:
    """Server-sent events from bytes: ``feed(chunk)`` returns the data of each complete event.

    Follows the SSE rules the chat APIs use: ``data:`` lines of one event are joined by newlines
    and an empty line ends the event; comments (``:``) and other fields are ignored; CR LF and
    LF both end a line. Raises :class:`StreamFormatError` for invalid UTF-8 or an over-long line.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._max_line = max_line
        self._buf = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        *lines, self._buf = (self._buf + chunk).split(b"\n")
        if len(self._buf) > self._max_line:
            raise StreamFormatError(f"an event-stream line is over {self._max_line} bytes")
        return [data for line in lines if (data := self._line(line)) is not None]

    def end(self) -> list[str]:
        """The stream ended: an event whose lines were all complete is still delivered."""
        data, self._data = self._data, []
        return ["\n".join(data)] if data else []

    def _line(self, raw: bytes) -> str | None:
        try:
            line = raw.removesuffix(b"\r").decode()
        except UnicodeDecodeError as err:
            raise StreamFormatError(f"the event stream is not UTF-8: {err}") from None
        if not line:
            return self.end()[0] if self._data else None
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value.removeprefix(" "))
        return None


@dataclass(slots=True, frozen=True)
class StreamEvent:
    """One chat-completion chunk: ``text`` to speak, ``finish_reason``, or the ``[DONE]`` end."""

    text: str = ""
    finish_reason: str | None = None
    done: bool = False


def parse_event(data: str) -> StreamEvent:
    """Read one event's data; raise :class:`StreamFormatError` if malformed or an error."""
    if data.strip() == "[DONE]":
        return StreamEvent(done=True)
    try:
        obj = json.loads(data)
    except json.JSONDecodeError:
        raise StreamFormatError(f"malformed stream: not JSON: {data[:120]!r}") from None
    if not isinstance(obj, dict):
        raise StreamFormatError(f"malformed stream: not a JSON object: {data[:120]!r}")
    if obj.get("error") or obj.get("object") == "error":
        raise StreamFormatError(f"the server reported an error mid-reply: {_message_of(obj)}")
    return _choice_event(obj.get("choices"), data)


def _choice_event(choices: Any, data: str) -> StreamEvent:
    if not choices:
        return StreamEvent()  # e.g. the usage chunk
    choice = choices[0] if isinstance(choices, list) else None
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or not isinstance(delta, dict | None):
        raise StreamFormatError(f"malformed stream: no choices[0].delta in {data[:120]!r}")
    text = (delta or {}).get("content") or ""
    finish = choice.get("finish_reason")
    if not isinstance(text, str) or not isinstance(finish, str | None):
        raise StreamFormatError(f"malformed stream: bad delta in {data[:120]!r}")
    return StreamEvent(text=text, finish_reason=finish)


def _message_of(obj: Any) -> str:
    """The human message in an error body, in the shapes servers use."""
    if isinstance(obj, dict):
        for key in ("error", "message", "detail"):
            value = obj.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, dict | list) and value:
                return _message_of(value)
    if isinstance(obj, list) and obj:
        return _message_of(obj[0])
    return json.dumps(obj)[:300]


def _error_message(body: bytes) -> str:
    """The server's message from an error response body (JSON or text), kept short."""
    text = body.decode(errors="replace")
    try:
        return _message_of(json.loads(text))
    except json.JSONDecodeError:
        return " ".join(text.split())[:300] or "(empty body)"


# --- HTTP -----------------------------------------------------------------------------------


def _auth_headers(config: RemoteLlmConfig, environ: Mapping[str, str]) -> dict[str, str]:
    if not config.api_key_env:
        return {}
    key = environ.get(config.api_key_env, "")
    if not key:
        raise LlmError(
            f"[llm.remote] api_key_env names ${config.api_key_env}, which is not set: "
            "export the API key in it (or leave api_key_env empty for a server without keys)"
        )
    return {"Authorization": f"Bearer {key}"}


async def _read_some(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    body = b""
    while len(body) < limit and (chunk := await resp.content.read(limit - len(body))):
        body += chunk
    return body


async def _check_response(resp: aiohttp.ClientResponse, url: str) -> None:
    """Raise unless ``resp`` is a 2xx event stream."""
    if resp.status >= 400:
        message = _error_message(await _read_some(resp, MAX_ERROR_BODY))
        raise RemoteLlmError(f"{url} answered HTTP {resp.status}: {message}", url, resp.status)
    if resp.content_type != "text/event-stream":
        message = _error_message(await _read_some(resp, MAX_ERROR_BODY))
        raise RemoteLlmError(
            f"{url} answered {resp.content_type!r}, not an event stream: {message}",
            url,
            resp.status,
        )


async def _events(resp: aiohttp.ClientResponse) -> AsyncIterator[StreamEvent]:
    """The events of a streaming response up to ``[DONE]`` (or a finish, then the end)."""
    decoder, finished = SseDecoder(), False
    async for chunk in resp.content.iter_any():
        for data in decoder.feed(chunk):
            event = parse_event(data)
            finished = finished or event.finish_reason is not None
            if event.done:
                return
            yield event
    for data in decoder.end():
        if parse_event(data).done:
            return
    if not finished:  # a server ending without [DONE] is fine once the reply has finished
        raise StreamFormatError("the stream ended before the reply finished (no [DONE])")


async def _drain(resp: aiohttp.ClientResponse) -> bool:
    """After ``[DONE]``, wait (briefly) for the body's end: only then can the connection go
    back to the pool for the next turn. The end normally follows ``[DONE]`` at once."""
    try:
        async with asyncio.timeout(DRAIN_S):
            await resp.content.read()
    except (TimeoutError, aiohttp.ClientError):
        return False
    return True


def _os_reason(err: OSError) -> str:
    if err.errno and err.errno > 0:  # "Connection refused" rather than asyncio's wording
        return os.strerror(err.errno)
    return err.strerror or str(err)  # resolver errors have their own text


def _client_error(err: Exception, url: str, config: RemoteLlmConfig) -> RemoteLlmError:
    """A transport failure as the error a session reports."""
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        text = f"cannot connect to {url}: no answer within {config.connect_timeout_s} s"
    elif isinstance(err, TimeoutError):
        text = f"{url} sent nothing for {config.read_timeout_s} s (read_timeout_s)"
    elif isinstance(err, aiohttp.ClientConnectorError):
        text = f"cannot connect to {url}: {_os_reason(err.os_error)}"
    elif isinstance(err, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        text = f"{url} closed the connection mid-reply ({err})"
    elif isinstance(err, aiohttp.ClientResponseError):
        text = f"bad HTTP response from {url}: {' '.join(str(err.message).split())[:200]}"
    elif isinstance(err, StreamFormatError):
        text = f"{url}: {err}"
    else:
        text = f"{url}: {type(err).__name__}: {err}"
    return RemoteLlmError(text, url)


class RemoteLlm:
    """Opens :class:`RemoteDialogue` s that share one HTTP client session.

    Construct at start-up (it reads the API key from the environment variable named in the
    config, and raises ``LlmError`` if that is unset); the client session is created on first
    use, on the running loop. ``await close()`` closes it; a closed ``RemoteLlm`` fails every
    later reply with ``LlmError``.
    """

    def __init__(self, config: RemoteLlmConfig, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self._headers = _auth_headers(config, os.environ if environ is None else environ)
        self._http: aiohttp.ClientSession | None = None
        self._closed = False

    def open(self, instructions: str) -> RemoteDialogue:
        """A new dialogue whose system prompt is ``instructions`` (none if empty)."""
        return RemoteDialogue(self, instructions)

    async def close(self) -> None:
        self._closed = True
        if self._http is not None:
            await self._http.close()

    def request_body(self, messages: list[Message], params: ReplyParams) -> dict[str, Any]:
        """The chat-completions request for one reply."""
        cfg = self.config
        max_tokens = min(params.max_tokens, cfg.max_tokens or params.max_tokens)
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": messages,
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": params.temperature if cfg.temperature is None else cfg.temperature,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    async def stream(self, body: dict[str, Any]) -> AsyncGenerator[StreamEvent, None]:
        """POST ``body`` and yield its events; raise :class:`RemoteLlmError` on any failure.

        Closing this iterator early (or cancelling its task) closes the connection rather than
        returning it to the pool, so the server sees the client leave and stops generating.
        """
        url = self.config.chat_url
        try:
            async with self._session().post(url, json=body) as resp:
                complete = False
                try:
                    await _check_response(resp, url)
                    async for event in _events(resp):
                        yield event
                    complete = await _drain(resp)
                finally:
                    if not complete:  # drop the connection (not back to the pool): the server
                        resp.close()  # sees the client leave and aborts the generation
        except (aiohttp.ClientError, TimeoutError, StreamFormatError) as err:
            raise _client_error(err, url, self.config) from err

    def _session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise LlmError(f"the remote LLM client for {self.config.base_url} is closed")
        if self._http is None:
            timeout = aiohttp.ClientTimeout(
                total=None, connect=self.config.connect_timeout_s,
                sock_read=self.config.read_timeout_s,
            )  # fmt: skip
            self._http = aiohttp.ClientSession(
                timeout=timeout,
                headers=self._headers,
                connector=aiohttp.TCPConnector(limit=self.config.max_connections),
            )
        return self._http


# --- the dialogue ---------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class _Mark:
    messages: tuple[tuple[str, str], ...]
    user_open: bool


class RemoteDialogue(Dialogue):
    """One session's conversation as a message list, re-sent each turn (see the module doc).

    Calls come from one task, one at a time (``voice.llm``'s contract). ``reply`` is an async
    generator: leaving its loop closes the HTTP stream when the generator is closed, which
    CPython does as soon as the loop drops it; wrap it in ``contextlib.aclosing`` to close it
    at a known point. The history is current at every yielded piece either way.
    """

    def __init__(self, llm: RemoteLlm, instructions: str) -> None:
        self._llm = llm
        self._messages: list[Message] = []
        if instructions:
            self._messages.append({"role": "system", "content": instructions})
        self._user_open = False
        self._reply: Message | None = None  # the last reply's message while it can be cut
        self._closed = False

    @property
    def history(self) -> list[Message]:
        """A copy of the messages the next request will send."""
        return [dict(m) for m in self._messages]

    async def set_user(self, text: str, *, final: bool) -> None:
        if not text and not final:
            return
        if self._user_open:
            self._messages[-1] = {"role": "user", "content": text}
        else:
            self._messages.append({"role": "user", "content": text})
        self._user_open = not final
        self._reply = None

    async def add(self, role: Role, text: str) -> None:
        if role not in _ROLES:
            raise ValueError(f"role must be one of {_ROLES}, got {role!r}")
        self._messages.append({"role": role, "content": text})
        self._user_open = False
        self._reply = None

    async def reply(self, params: ReplyParams) -> AsyncGenerator[str, None]:
        """Stream the assistant's reply; raises ``RemoteLlmError`` (the text so far is kept)."""
        if self._closed:
            raise LlmError("reply() on a closed dialogue")
        self._user_open = False
        body = self._llm.request_body(self.history, params)
        msg: Message = {"role": "assistant", "content": ""}
        self._messages.append(msg)
        self._reply = msg
        self.finish_reason = None
        try:
            async with aclosing(self._llm.stream(body)) as events:  # closed with this generator
                async for event in events:
                    self.finish_reason = event.finish_reason or self.finish_reason
                    if event.text:
                        msg["content"] += event.text
                        yield event.text
        finally:
            if not msg["content"]:
                self._drop(msg)

    async def keep_reply(self, n_chars: int) -> str:
        msg = self._reply
        if msg is None or not any(m is msg for m in self._messages):
            return ""
        kept = msg["content"][: max(n_chars, 0)]
        msg["content"] = kept
        if not kept:
            self._drop(msg)
        return kept

    def mark(self) -> _Mark:
        return _Mark(tuple((m["role"], m["content"]) for m in self._messages), self._user_open)

    async def restore(self, mark: Any) -> None:
        if not isinstance(mark, _Mark):
            raise TypeError(f"not a RemoteDialogue mark: {mark!r}")
        self._messages = [{"role": role, "content": text} for role, text in mark.messages]
        self._user_open = mark.user_open
        self._reply = None

    async def close(self) -> None:
        """Nothing is resident remotely; later replies raise ``LlmError``."""
        self._closed = True

    def _drop(self, msg: Message) -> None:
        # by identity: an equal message elsewhere in the history must stay
        self._messages = [m for m in self._messages if m is not msg]
        if self._reply is msg:
            self._reply = None
