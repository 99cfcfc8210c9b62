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
the choices fork the prompt's KV and are generated together, the i-th with ``seed + i``),
``response_format`` ``json_object`` (:mod:`llm_engine.grammar`), and the common extensions
``top_k``, ``repetition_penalty`` and ``ignore_eos``.
``usage.prompt_tokens_details.cached_tokens`` reports how many prompt tokens were reused.
Anything else that would change the output (tools, non-text content or output) is refused with
a clear ``InvalidRequest`` rather than silently ignored; such parameters sent at their defaults
(as some clients always send them) are accepted, ``null`` stands for a parameter's default,
and bookkeeping that changes no output (``user``, ``store``, ``metadata``, ...) is accepted and
ignored.

The legacy text completions (:func:`parse_text_request`, :meth:`ChatService.complete_text`)
continue raw prompts with the same sampling parameters; each prompt forks the resident
conversation sharing the most leading tokens with it.
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
from llm_engine.errors import ContextLengthExceeded, InvalidRequest
from llm_engine.history import common_prefix_len

if TYPE_CHECKING:
    from llm_engine.conversation import Conversation, Delta
    from llm_engine.engine import Engine

_IGNORED_IF_DEFAULT = {"modalities": ["text"]}
_FORMATS = ("text", "json_object")  # response_format types (json_schema is not served)
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
# parameters both endpoints take
_SAMPLING = {
    "model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "seed", "stop",
    "n", "top_k", "repetition_penalty", "frequency_penalty", "presence_penalty", "logit_bias",
    "logprobs", "ignore_eos", *_BOOKKEEPING,
}  # fmt: skip
_KNOWN = {
    *_SAMPLING, "messages", "max_completion_tokens", "response_format", "tools", "tool_choice",
    "parallel_tool_calls", "top_logprobs", *_IGNORED_IF_DEFAULT,
}  # fmt: skip
_KNOWN_TEXT = {*_SAMPLING, "prompt", "echo", "suffix", "best_of"}  # /v1/completions
MAX_PROMPTS = 64  # prompts of one /v1/completions request
MAX_TEXT_CHOICES = 128  # prompts x n of one /v1/completions request


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


@dataclass(slots=True)
class TextRequest:
    """A legacy text completion (``/v1/completions``): each prompt continued as it is, no chat
    template; choice ``p * n + i`` is prompt ``p``'s ``i``-th, sampled with ``seed + i``."""

    prompts: list[str | list[int]]  # text, or token ids
    params: SamplingParams
    model: str
    stream: bool = False
    include_usage: bool = False
    n: int = 1  # choices per prompt
    echo: bool = False  # each choice's text starts with its prompt

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n


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


def _check_unsupported(body: dict[str, Any], known: set[str]) -> None:
    if unknown := sorted(set(body) - known):
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
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") not in _FORMATS):
        raise RequestError(
            "response_format must be {'type': 'text'} or {'type': 'json_object'}",
            "response_format",
        )


def _body(body: Any, known: set[str]) -> dict[str, Any]:
    """The request's JSON object, ``null`` values dropped (they mean "the default"), refused
    if it holds a parameter outside ``known`` or one that would change the output."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    body = {k: v for k, v in body.items() if v is not None}
    _check_unsupported(body, known)
    return body


def _sampling(
    body: dict[str, Any],
    max_tokens: Any,
    default_max_tokens: int,
    logprobs: int | None,
    json_object: bool = False,
) -> SamplingParams:
    """The sampling parameters both endpoints share."""
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    penalty = _number(body, "repetition_penalty", 0.01, 10)
    return SamplingParams(
        max_tokens=_integer(max_tokens, "max_tokens", 1, math.inf, default_max_tokens),
        temperature=1.0 if temperature is None else temperature,  # the API's default
        top_p=1.0 if top_p is None or top_p == 0 else top_p,
        top_k=_integer(body.get("top_k"), "top_k", 0, math.inf, 0),
        repetition_penalty=1.0 if penalty is None else penalty,
        frequency_penalty=_number(body, "frequency_penalty", -2, 2) or 0.0,
        presence_penalty=_number(body, "presence_penalty", -2, 2) or 0.0,
        # a 64-bit seed, so that the choices' seed + i still fits the generator's 64 bits
        seed=_integer(body.get("seed"), "seed", -(2**63), 2**63 - 1, None),
        stop=_stop(body.get("stop")),
        logit_bias=_logit_bias(body.get("logit_bias")),
        logprobs=logprobs,
        ignore_eos=_flag(body, "ignore_eos"),  # vLLM's, for benchmarks of a fixed length
        json_object=json_object,
    )


def _include_usage(body: dict[str, Any]) -> bool:
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise RequestError("'stream_options' must be an object", "stream_options")
    return _flag(stream_options, "include_usage", "stream_options.include_usage")


def parse_chat_request(body: Any, default_max_tokens: int = 512) -> ChatRequest:
    """Validate a decoded JSON body; raise :class:`RequestError` naming the bad parameter."""
    body = _body(body, _KNOWN)
    messages = _messages(body.get("messages"))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    json_object = body.get("response_format", {}).get("type") == "json_object"
    if json_object and _flag(body, "ignore_eos"):
        raise RequestError("'ignore_eos' cannot be set with a JSON response_format", "ignore_eos")
    return ChatRequest(
        messages=messages,
        params=_sampling(body, max_tokens, default_max_tokens, _logprobs(body), json_object),
        model=str(body.get("model") or ""),
        stream=_flag(body, "stream"),
        include_usage=_include_usage(body),
        n=_integer(body.get("n"), "n", 1, MAX_CHOICES, 1),
    )


def _prompts(value: Any) -> list[str | list[int]]:
    """``prompt``: a string, token ids, or a list of either (a batch)."""

    def token_ids(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(_within(t, int, 0, math.inf) for t in v)

    if isinstance(value, str) or token_ids(value):
        value = [value]
    if not isinstance(value, list) or not value or len(value) > MAX_PROMPTS:
        raise RequestError(
            f"'prompt' must be a string, token ids, or a list of 1 to {MAX_PROMPTS} of either",
            "prompt",
        )
    for i, p in enumerate(value):
        if not ((isinstance(p, str) and p) or token_ids(p)):
            raise RequestError(
                f"prompt[{i}] must be a non-empty string or non-empty token ids", "prompt"
            )
    return value


def parse_text_request(body: Any, default_max_tokens: int = 16) -> TextRequest:
    """Validate a ``/v1/completions`` body (the legacy API: ``max_tokens`` defaults to 16,
    ``logprobs`` is how many alternatives to list); raise :class:`RequestError`."""
    body = _body(body, _KNOWN_TEXT)
    prompts = _prompts(body.get("prompt"))
    n = _integer(body.get("n"), "n", 1, MAX_CHOICES, 1)
    if len(prompts) * n > MAX_TEXT_CHOICES:
        raise RequestError(f"prompts x n must be at most {MAX_TEXT_CHOICES}", "n")
    if _integer(body.get("best_of"), "best_of", 1, MAX_CHOICES, n) != n:
        raise RequestError("'best_of' other than 'n' is not supported", "best_of")
    if body.get("suffix", "") != "":
        raise RequestError("'suffix' is not supported", "suffix")
    logprobs = _integer(body.get("logprobs"), "logprobs", 0, MAX_TOP_LOGPROBS, None)
    echo = _flag(body, "echo")
    if echo and logprobs is not None:
        raise RequestError(
            "'echo' with 'logprobs' (the prompt's logprobs) is not supported", "echo"
        )
    return TextRequest(
        prompts=prompts,
        params=_sampling(body, body.get("max_tokens"), default_max_tokens, logprobs),
        model=str(body.get("model") or ""),
        stream=_flag(body, "stream"),
        include_usage=_include_usage(body),
        n=n,
        echo=echo,
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
    """One running completion: iterate :meth:`ChatService.complete` (or, with ``text``,
    :meth:`ChatService.complete_text`), then read ``usage``."""

    text: bool = False  # a legacy text completion, not a chat one
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    usage: Usage = field(default_factory=Usage)

    def __post_init__(self) -> None:
        self.id = self.id or f"{'cmpl' if self.text else 'chatcmpl'}-{uuid.uuid4().hex[:24]}"

    @property
    def object(self) -> str:
        return "text_completion" if self.text else "chat.completion"


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


def _text_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The legacy completions' logprobs: parallel lists, the alternatives as token -> logprob."""
    if entries is None:
        return None
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{a["token"]: a["logprob"] for a in e["top_logprobs"]} for e in entries],
        "text_offset": [e["text_offset"] for e in entries],
    }


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

    async def complete(
        self, request: ChatRequest, completion: Completion
    ) -> AsyncGenerator[Piece, None]:
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

    async def complete_text(
        self, request: TextRequest, completion: Completion
    ) -> AsyncGenerator[Piece, None]:
        """Yield the pieces of a text completion: each prompt continued as it is, with no chat
        template, its choices interleaved with every other prompt's. A prompt starts from the
        resident conversation that shares the most leading tokens with it (forked, so that
        one is left as it is), and stays resident after. Fills ``completion.usage``; closing
        the iterator aborts the generations within one engine step."""
        tokenizer, params = self.engine.tokenizer, request.params
        prompts = [self._prompt_ids(p) for p in request.prompts]
        async with contextlib.AsyncExitStack() as held:
            streams = []
            for ids in prompts:
                convs, reused = await self._text_conversations(ids, request.n, held)
                completion.usage.prompt_tokens += len(ids)
                completion.usage.cached_tokens += reused
                seed = params.seed
                streams += [
                    conv.generate(
                        dataclasses.replace(params, seed=None if seed is None else seed + i),
                        add_generation_prompt=False,
                    )
                    for i, conv in enumerate(convs)
                ]
            merged = await held.enter_async_context(_Merged(streams))  # see complete()
            offsets = [0] * len(streams)  # each choice's text so far, in characters
            if request.echo:
                for j in range(len(streams)):
                    echoed = tokenizer.decode(prompts[j // request.n])
                    offsets[j] = len(echoed)
                    yield Piece(echoed, None, j)
            async for j, delta in merged:
                completion.usage.completion_tokens += len(delta.token_ids)
                logprobs = self._logprobs(delta, params)
                for entry in logprobs or ():  # where each token starts in the choice's text
                    entry["text_offset"] = offsets[j]
                    offsets[j] += len(entry["token"])
                if delta.text or logprobs or delta.finish_reason:
                    yield Piece(delta.text, logprobs, j, delta.finish_reason)

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        engine = self.engine
        if isinstance(prompt, str):
            ids = engine.tokenizer.encode(prompt)  # invalid UTF-8 raises InvalidRequest
        elif any(t >= engine.model_config.vocab_size for t in prompt):
            vocab = engine.model_config.vocab_size
            raise InvalidRequest(f"prompt token ids must be within [0, {vocab})", "prompt")
        else:
            ids = prompt
        if len(ids) + 1 > engine.max_context:
            raise ContextLengthExceeded(len(ids) + 1, engine.max_context)
        return ids

    async def _text_conversations(
        self, ids: list[int], n: int, held: contextlib.AsyncExitStack
    ) -> tuple[list[Conversation], int]:
        """``n`` conversations holding ``ids``, listed as slots and locked in ``held``, and
        how many of those tokens were already resident."""
        source, reused = self.engine.longest_prefix(ids)
        conv = None
        if source is not None:
            with contextlib.suppress(InvalidRequest):  # it changed or closed since: start anew
                conv = await source.fork(reused)
        if conv is None:
            conv, reused = self.engine.open_conversation(), 0
        await self._trim(room=1)
        slot = _Slot(conv)
        await held.enter_async_context(slot.lock)
        self._slots.append(slot)
        if reused < len(ids):  # n == 1: prefilled by generate, together with other prompts
            await conv.append_tokens(ids[reused:], wait=n > 1)
        return [conv, *await self._forks(slot, n - 1, held)], reused

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

    def _envelope(self, c: Completion, chunk: bool) -> dict[str, Any]:
        kind = c.object if c.text or not chunk else "chat.completion.chunk"
        return {"id": c.id, "object": kind, "created": c.created, "model": self.model_name}

    def opening_chunks(self, c: Completion, choices: int) -> list[dict[str, Any]]:
        """What a stream sends before any piece: each chat choice's role."""
        if c.text:
            return []
        return [self._chat_chunk(c, {"role": "assistant", "content": ""}, None, None, i)
                for i in range(choices)]  # fmt: skip

    def piece_chunks(self, c: Completion, p: Piece) -> list[dict[str, Any]]:
        """The stream chunks of one piece: a chat choice's end comes in a chunk of its own."""
        if c.text:
            choice = {"text": p.text, "index": p.index, "logprobs": _text_logprobs(p.logprobs),
                      "finish_reason": p.finish_reason}  # fmt: skip
            return [{**self._envelope(c, True), "choices": [choice]}]
        chunks = []
        if p.text or p.logprobs:
            chunks.append(self._chat_chunk(c, {"content": p.text}, None, p.logprobs, p.index))
        if p.finish_reason:  # each choice's end as it comes (every choice's last piece has it)
            chunks.append(self._chat_chunk(c, {}, p.finish_reason, None, p.index))
        return chunks

    def _chat_chunk(
        self,
        c: Completion,
        delta: dict[str, Any],
        finish: str | None,
        logprobs: list[dict[str, Any]] | None,
        index: int,
    ) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "finish_reason": finish,
                  "logprobs": _wire_logprobs(logprobs)}  # fmt: skip
        return {**self._envelope(c, True), "choices": [choice]}

    def usage_chunk(self, c: Completion) -> dict[str, Any]:
        return {**self._envelope(c, True), "choices": [], "usage": c.usage.as_dict()}

    def response(
        self, c: Completion, request: ChatRequest | TextRequest, pieces: list[Piece]
    ) -> dict[str, Any]:
        """The whole reply, from every piece the service yielded for ``request``."""
        n = request.choices if isinstance(request, TextRequest) else request.n
        texts = [""] * n
        finishes: list[str | None] = [None] * n
        logprobs: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        for p in pieces:
            texts[p.index] += p.text
            logprobs[p.index] += p.logprobs or ()
            finishes[p.index] = p.finish_reason or finishes[p.index]
        wanted = request.params.logprobs is not None
        choices: list[dict[str, Any]] = []
        for i in range(n):
            finish = finishes[i] or "stop"
            if c.text:
                lp = _text_logprobs(logprobs[i] if wanted else None)
                choices.append(
                    {"text": texts[i], "index": i, "logprobs": lp, "finish_reason": finish}
                )
            else:
                lp = _wire_logprobs(logprobs[i] if wanted else None)
                message = {"role": "assistant", "content": texts[i]}
                choices.append(
                    {"index": i, "message": message, "finish_reason": finish, "logprobs": lp}
                )
        return {**self._envelope(c, False), "choices": choices, "usage": c.usage.as_dict()}

    def model(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": 0, "owned_by": "parley"}

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model()]}
