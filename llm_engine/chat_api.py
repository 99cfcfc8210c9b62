"""OpenAI-compatible chat completions over the engine, free of any HTTP library.

That API re-sends the whole history on every turn. Re-tokenizing it would lose the KV cache of
the engine's own replies (their generated tokens rarely equal a fresh tokenization of their
text), so each request is matched against the resident conversations instead: the one sharing
the most leading messages is reused (or, when the request branches off it, forked: see
:meth:`ChatService._slot_for`), and :meth:`Conversation.set_messages` keeps every token whose
bytes the new rendering still contains (the engine's replies are recognised by their text) and
prefills only what is new. A client replaying a conversation turn by turn therefore gets the
flat time to first token of a native conversation.

Supported subset (documented in the README): ``model``, ``messages`` (string content or text
parts), ``stream``, ``stream_options.include_usage``, ``max_tokens`` /
``max_completion_tokens``, ``temperature``, ``top_p``, ``frequency_penalty``,
``presence_penalty``, ``logit_bias``, ``logprobs`` / ``top_logprobs`` (the model's own
distribution, before penalties, bias and temperature), ``seed``, ``stop``, ``n`` (up to 16:
the choices fork the prompt's KV and are generated together, the i-th with ``seed + i``), and
the common extensions ``top_k`` and ``repetition_penalty``.
``usage.prompt_tokens_details.cached_tokens`` reports how many prompt tokens were reused.
Anything else that would change the output (tools, non-text content or output) is refused with
a clear ``InvalidRequest`` rather than silently ignored; such parameters sent at their defaults
(as some clients always send them) are accepted, ``null`` stands for a parameter's default,
and bookkeeping that changes no output (``user``, ``store``, ``metadata``, ...) is accepted and
ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from llm_engine.config import MAX_TOP_LOGPROBS, SamplingParams
from llm_engine.errors import InvalidRequest
from llm_engine.history import common_prefix_len

if TYPE_CHECKING:
    from llm_engine.conversation import Conversation, Delta
    from llm_engine.engine import Engine

_IGNORED_IF_DEFAULT = {"modalities": ["text"]}
_T = TypeVar("_T")
MAX_CHOICES = 16  # n: each choice is a conversation of its own while it generates
MIN_LOGPROB = -9999.0  # what OpenAI reports for a token of (near) zero probability
# bookkeeping for the caller that changes nothing in the output: accepted with any value of its
# type and ignored (clients such as chat front ends send ``user`` with every request)
_BOOKKEEPING: dict[str, type] = {
    "user": str,
    "store": bool,
    "metadata": dict,
    "service_tier": str,
    "prompt_cache_key": str,
    "safety_identifier": str,
}
_KIND_NAMES = {str: "string", bool: "boolean", dict: "JSON object"}
_KNOWN = {
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "seed", "stop", "n", "top_k", "repetition_penalty",
    "frequency_penalty", "presence_penalty", "response_format", "tools", "tool_choice",
    "parallel_tool_calls", "logit_bias", "logprobs", "top_logprobs",
    *_IGNORED_IF_DEFAULT, *_BOOKKEEPING,
}  # fmt: skip


class RequestError(InvalidRequest):
    """A chat completions request that does not parse, with the ``param`` it concerns."""


@dataclass(slots=True)
class ChatRequest:
    messages: list[dict[str, str]]
    params: SamplingParams
    model: str
    stream: bool = False
    include_usage: bool = False
    n: int = 1  # choices


def _within(value: Any, kind: Any, lo: float, hi: float) -> bool:
    """Whether ``value`` is of ``kind`` (JSON's true and false are not numbers) in [lo, hi]."""
    return not isinstance(value, bool) and isinstance(value, kind) and lo <= value <= hi


def _number(body: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not _within(value, int | float, lo, hi):
        raise RequestError(f"'{key}' must be a number in [{lo}, {hi}]", key)
    return float(value)


def _integer(value: Any, param: str, lo: int, hi: float, default: _T) -> int | _T:
    """``value`` checked to be an integer in [lo, hi], or ``default`` when it is absent."""
    if value is None:
        return default
    if not _within(value, int, lo, hi):
        bounds = f">= {lo}" if hi == math.inf else f"in [{lo}, {hi}]"
        raise RequestError(f"'{param}' must be an integer {bounds}", param)
    return int(value)


def _flag(body: dict[str, Any], key: str, param: str | None = None) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"'{param or key}' must be a boolean", param or key)
    return value


def _content(message: Any, i: int) -> str:
    content = message.get("content")
    if content is None and message.get("role") == "assistant":
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise RequestError(
                    f"messages[{i}]: only text content parts are supported", f"messages.{i}.content"
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise RequestError(
        f"messages[{i}].content must be a string or a list of text parts", f"messages.{i}.content"
    )


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RequestError("'messages' must be a non-empty array", "messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object", f"messages.{i}")
        role = m.get("role")
        if role == "developer":
            role = "system"  # the newer name of the system role
        if role not in ("system", "user", "assistant"):
            raise RequestError(
                f"messages[{i}].role must be system, user or assistant", f"messages.{i}.role"
            )
        if m.get("tool_calls"):
            raise RequestError("tool calls are not supported", f"messages.{i}.tool_calls")
        out.append({"role": role, "content": _content(m, i)})
    return out


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or len(value) > 4
        or not all(isinstance(s, str) and s for s in value)
    ):
        raise RequestError("'stop' must be a non-empty string or up to 4 of them", "stop")
    return tuple(value)


def _logit_bias(value: Any) -> dict[int, float]:
    if value is None:
        return {}
    if not (
        isinstance(value, dict)
        and all(isinstance(k, str) and k.isascii() and k.isdigit() for k in value)
        and all(_within(b, int | float, -100, 100) for b in value.values())
    ):
        raise RequestError(
            "'logit_bias' must map token ids to numbers in [-100, 100]", "logit_bias"
        )
    return {int(k): float(b) for k, b in value.items()}


def _logprobs(body: dict[str, Any]) -> int | None:
    """How many alternatives each token's logprobs list, or None for no logprobs."""
    wanted = _flag(body, "logprobs")
    top = _integer(body.get("top_logprobs"), "top_logprobs", 0, MAX_TOP_LOGPROBS, 0)
    if top and not wanted:
        raise RequestError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return top if wanted else None


def _check_unsupported(body: dict[str, Any]) -> None:
    if unknown := sorted(set(body) - _KNOWN):
        raise RequestError(f"unsupported parameter(s): {', '.join(unknown)}", unknown[0])
    for key, default in _IGNORED_IF_DEFAULT.items():
        if body.get(key, default) != default:
            raise RequestError(f"'{key}' is not supported (only its default)", key)
    for key, kind in _BOOKKEEPING.items():
        if key in body and not isinstance(body[key], kind):
            raise RequestError(f"'{key}' must be a {_KIND_NAMES[kind]}", key)
    if body.get("tools"):
        raise RequestError("tools are not supported", "tools")
    # without tools, "auto" and "none" both mean a plain reply; forcing a tool cannot be served
    if body.get("tool_choice", "none") not in ("none", "auto"):
        raise RequestError(
            "tool_choice must be 'none' or 'auto': tools are not supported", "tool_choice"
        )
    if not isinstance(body.get("parallel_tool_calls", False), bool):
        raise RequestError("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise RequestError("only response_format {'type': 'text'} is supported", "response_format")


def parse_chat_request(body: Any, default_max_tokens: int = 512) -> ChatRequest:
    """Validate a decoded JSON body; raise :class:`RequestError` naming the bad parameter."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    body = {k: v for k, v in body.items() if v is not None}  # null means "the default"
    _check_unsupported(body)
    messages = _messages(body.get("messages"))
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    top_k = _integer(body.get("top_k"), "top_k", 0, math.inf, 0)
    # a 64-bit seed, so that the choices' seed + i still fits the generator's 64 bits
    seed = _integer(body.get("seed"), "seed", -(2**63), 2**63 - 1, None)
    penalty = _number(body, "repetition_penalty", 0.01, 10)
    frequency = _number(body, "frequency_penalty", -2, 2)
    presence = _number(body, "presence_penalty", -2, 2)
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise RequestError("'stream_options' must be an object", "stream_options")
    params = SamplingParams(
        max_tokens=_integer(
            body.get("max_completion_tokens", body.get("max_tokens")),
            "max_tokens",
            1,
            math.inf,
            default_max_tokens,
        ),
        temperature=1.0 if temperature is None else temperature,  # the API's default
        top_p=1.0 if top_p is None or top_p == 0 else top_p,
        top_k=top_k,
        repetition_penalty=1.0 if penalty is None else penalty,
        frequency_penalty=frequency or 0.0,
        presence_penalty=presence or 0.0,
        seed=seed,
        stop=_stop(body.get("stop")),
        logit_bias=_logit_bias(body.get("logit_bias")),
        logprobs=_logprobs(body),
    )
    return ChatRequest(
        messages=messages,
        params=params,
        model=str(body.get("model") or ""),
        stream=_flag(body, "stream"),
        include_usage=_flag(stream_options, "include_usage", "stream_options.include_usage"),
        n=_integer(body.get("n"), "n", 1, MAX_CHOICES, 1),
    )


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


@dataclass(slots=True)
class Completion:
    """One running completion: iterate :meth:`ChatService.complete`, then read ``usage``."""

    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))
    usage: Usage = field(default_factory=Usage)


@dataclass(slots=True)
class Piece:
    """A step of choice ``index``'s reply: its text, the wire's ``logprobs.content`` entries
    of its tokens when the request asked for them (the end-of-turn token has none, as in
    OpenAI's), and on the choice's last piece why it ended."""

    text: str
    logprobs: list[dict[str, Any]] | None = None
    index: int = 0
    finish_reason: str | None = None


@dataclass(slots=True)
class _Slot:
    conv: Conversation
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    used: float = field(default_factory=time.monotonic)


def _shared_messages(a: list[dict[str, Any]], b: list[dict[str, str]]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x.get("role") != y["role"] or x.get("content") != y["content"]:
            break
        n += 1
    return n


def _continues(held: list[dict[str, Any]], request: list[dict[str, str]], shared: int) -> bool:
    """Whether ``request`` continues the conversation that holds ``held``: it repeats all of
    it, or all but the last reply, which it carries in its own wording (clients may trim it)."""
    if shared == len(held):
        return True
    edited_reply = shared + 1 == len(held) and held[-1]["role"] == "assistant"
    return edited_reply and len(request) > shared and request[shared]["role"] == "assistant"


class _Merged:
    """The deltas of several generations as ``(index, delta)`` in arrival order, each stream
    drained by a task of its own. Leaving the ``async with`` block cancels and awaits those
    tasks, so every unfinished generation's abort is queued by then."""

    def __init__(self, streams: list[AsyncGenerator[Delta, None]]) -> None:
        self._queue: asyncio.Queue[tuple[int, Delta | Exception | None]] = asyncio.Queue()
        self._streams = streams
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> _Merged:
        self._tasks = [asyncio.create_task(self._pump(i, s)) for i, s in enumerate(self._streams)]
        return self

    async def _pump(self, i: int, stream: AsyncGenerator[Delta, None]) -> None:
        try:
            async with contextlib.aclosing(stream):
                async for delta in stream:
                    self._queue.put_nowait((i, delta))
        except Exception as err:  # raised to the consumer
            self._queue.put_nowait((i, err))
        else:
            self._queue.put_nowait((i, None))

    async def __aiter__(self) -> AsyncIterator[tuple[int, Delta]]:
        running = len(self._tasks)
        while running:
            i, item = await self._queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _wire_logprobs(content: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return None if content is None else {"content": content, "refusal": None}


class ChatService:
    """Serves chat completions from one engine, keeping API conversations resident.

    At most ``max_conversations`` are kept; the least recently used idle one is closed past
    that (the engine also evicts idle KV on its own when the pool runs short).
    """

    def __init__(self, engine: Engine, model_name: str, max_conversations: int = 64) -> None:
        self.engine = engine
        self.model_name = model_name
        self.max_conversations = max_conversations
        self._slots: list[_Slot] = []

    def _pick(self, messages: list[dict[str, str]]) -> tuple[_Slot | None, int]:
        """The slot sharing the most leading messages with ``messages`` (ties: an idle one,
        then the latest used), and how many."""
        best, best_key = None, (0, False, 0.0)
        for slot in self._slots:
            if slot.conv.closed:
                continue
            n = _shared_messages(slot.conv.messages, messages)
            key = (n, not slot.lock.locked(), slot.used)
            if n > 0 and key > best_key:
                best, best_key = slot, key
        return best, best_key[0]

    async def _slot_for(self, messages: list[dict[str, str]]) -> _Slot:
        """A resident conversation to answer ``messages`` from. One the request continues is
        reused. One it branches off (another caller on the same system prompt or script,
        another reply to the same turn) is forked: the copy shares its KV and takes the
        request, and the original stays for whoever it serves, instead of being rewritten
        and recomputed when that client comes back. So is one still answering an earlier
        request: a caller who interrupts sends the history with what it heard while the old
        reply may still stream, and must not wait for it or prefill the history again."""
        best, shared = self._pick(messages)
        if best is None:
            conv = self.engine.open_conversation()
        elif not best.lock.locked() and _continues(best.conv.messages, messages, shared):
            return best
        else:
            conv = await best.conv.fork()
        await self._trim(room=1)
        slot = _Slot(conv)  # listed only now: nothing awaited before complete() locks it
        self._slots.append(slot)
        return slot

    async def close(self) -> None:
        """Close every resident API conversation (frees their KV)."""
        slots, self._slots = self._slots, []
        for slot in slots:
            await slot.conv.close()

    async def _trim(self, room: int = 0) -> None:
        """Close the least recently used idle slots until ``room`` more fit."""
        idle = sorted((s for s in self._slots if not s.lock.locked()), key=lambda s: s.used)
        while len(self._slots) + room > self.max_conversations and idle:
            slot = idle.pop(0)
            if slot.lock.locked() or slot not in self._slots:
                continue  # taken by a request, or trimmed by another, while we awaited
            self._slots.remove(slot)
            await slot.conv.close()

    async def complete(self, request: ChatRequest, completion: Completion) -> AsyncIterator[Piece]:
        """Yield the reply's pieces, the choices' interleaved; fills ``completion.usage``.

        Closing the iterator (client gone) aborts the generations within one engine step.
        """
        slot = await self._slot_for(request.messages)
        async with contextlib.AsyncExitStack() as held:
            await held.enter_async_context(slot.lock)
            slot.used = time.monotonic()
            before = slot.conv.tokens
            if request.n == 1:  # the transcript and the assistant header in one pass
                streams = [
                    slot.conv.generate(request.params, messages=request.messages, replace=True)
                ]
            else:  # the transcript once; each choice forks its KV
                await slot.conv.set_messages(request.messages)
                convs = [slot.conv, *await self._forks(slot, request.n - 1, held)]
                seed = request.params.seed
                streams = [
                    conv.generate(
                        dataclasses.replace(request.params, seed=None if seed is None else seed + i)
                    )
                    for i, conv in enumerate(convs)
                ]
            # entered last, so closed first: the generations' aborts are queued before the
            # locks are released, ahead of any command of the next request for these slots
            # (left to the garbage collector, an abort could land after that request's
            # generate and fail it with "the conversation is generating")
            merged = await held.enter_async_context(_Merged(streams))
            async for i, delta in merged:
                if not completion.usage.prompt_tokens:  # the prompt is known now
                    reused = common_prefix_len(before, slot.conv.tokens[: delta.position])
                    completion.usage = Usage(prompt_tokens=delta.position, cached_tokens=reused)
                completion.usage.completion_tokens += len(delta.token_ids)
                logprobs = self._logprobs(delta, request.params)
                if delta.text or logprobs or delta.finish_reason:
                    yield Piece(delta.text, logprobs, i, delta.finish_reason)
            slot.used = time.monotonic()

    async def _forks(
        self, slot: _Slot, n: int, held: contextlib.AsyncExitStack
    ) -> list[Conversation]:
        """``n`` forks of ``slot``'s conversation, listed as slots (a client may continue any
        choice) and locked in ``held``."""
        forks = [await slot.conv.fork() for _ in range(n)]
        await self._trim(room=n)
        for conv in forks:
            fork = _Slot(conv)
            await held.enter_async_context(fork.lock)  # free: taken without a wait
            self._slots.append(fork)
        return forks

    def _logprobs(self, delta: Delta, params: SamplingParams) -> list[dict[str, Any]] | None:
        if delta.logprobs is None:
            return None
        tokenizer = self.engine.tokenizer
        end = () if params.ignore_eos else tokenizer.eos_ids

        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            raw = tokenizer.token_bytes(token_id)
            # a token may hold part of a character: ``bytes`` has it whole
            text = raw.decode("utf-8", errors="backslashreplace")
            return {"token": text, "logprob": max(logprob, MIN_LOGPROB), "bytes": list(raw)}

        return [
            {**entry(t.token_id, t.logprob), "top_logprobs": [entry(*alt) for alt in t.top]}
            for t in delta.logprobs
            if t.token_id not in end
        ]

    # --- OpenAI wire objects -------------------------------------------------------------

    def chunk(
        self,
        c: Completion,
        delta: dict[str, Any],
        finish: str | None,
        logprobs: list[dict[str, Any]] | None = None,
        index: int = 0,
    ) -> dict[str, Any]:
        return {
            "id": c.id,
            "object": "chat.completion.chunk",
            "created": c.created,
            "model": self.model_name,
            "choices": [
                {
                    "index": index,
                    "delta": delta,
                    "finish_reason": finish,
                    "logprobs": _wire_logprobs(logprobs),
                }
            ],
        }

    def usage_chunk(self, c: Completion) -> dict[str, Any]:
        return {
            "id": c.id,
            "object": "chat.completion.chunk",
            "created": c.created,
            "model": self.model_name,
            "choices": [],
            "usage": c.usage.as_dict(),
        }

    def response(self, c: Completion, request: ChatRequest, pieces: list[Piece]) -> dict[str, Any]:
        """The whole reply, from every piece :meth:`complete` yielded for ``request``."""
        texts = [""] * request.n
        finishes: list[str | None] = [None] * request.n
        logprobs: list[list[dict[str, Any]]] = [[] for _ in range(request.n)]
        for p in pieces:
            texts[p.index] += p.text
            logprobs[p.index] += p.logprobs or ()
            finishes[p.index] = p.finish_reason or finishes[p.index]
        wanted = request.params.logprobs is not None
        return {
            "id": c.id,
            "object": "chat.completion",
            "created": c.created,
            "model": self.model_name,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": texts[i]},
                    "finish_reason": finishes[i] or "stop",
                    "logprobs": _wire_logprobs(logprobs[i] if wanted else None),
                }
                for i in range(request.n)
            ],
            "usage": c.usage.as_dict(),
        }

    def model(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": 0, "owned_by": "parley"}

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model()]}
