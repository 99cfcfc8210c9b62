"""OpenAI-compatible chat (and legacy text) completions over the engine, free of any HTTP
library; the requests are parsed by :mod:`llm_engine.api_request`.

That API re-sends the whole history on every turn. Re-tokenizing it would lose the KV cache of
the engine's own replies (their generated tokens rarely equal a fresh tokenization of their
text), so each request is matched against the resident conversations instead: the one sharing
the most leading messages is reused (or, when the request branches off it, forked: see
:meth:`ChatService._slot_for`), and :meth:`Conversation.set_messages` keeps every token whose
bytes the new rendering still contains (the engine's replies are recognised by their text) and
prefills only what is new. A client replaying a conversation turn by turn therefore gets the
flat time to first token of a native conversation.
``usage.prompt_tokens_details.cached_tokens`` reports how many prompt tokens the engine did not
compute (its own count): their KV was resident, in the conversation, a fork's shared blocks or
the pool's prefix cache. A prompt found whole still computes its last token.

The legacy text completions (:meth:`ChatService.complete_text`) continue raw prompts; each
prompt forks the resident conversation sharing the most leading tokens with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llm_engine.api_request import ChatRequest, TextRequest, TokenizeRequest
from llm_engine.config import SamplingParams
from llm_engine.errors import ContextLengthExceeded, InvalidRequest
from llm_engine.tokenizer import validate_messages
from llm_engine.tools import Tools, assistant_text, begun_content

if TYPE_CHECKING:
    from llm_engine.conversation import Conversation, Delta, TokenLogprob
    from llm_engine.engine import Engine

MIN_LOGPROB = -9999.0  # what OpenAI reports for a token of (near) zero probability
MAX_WRITTEN = 4096  # replies with tools whose own spelling is kept (see ChatService._remember)


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
    OpenAI's), and on the choice's last piece why it ended. With tools, a choice is one piece:
    its content or its ``tool_calls`` (the wire's objects)."""

    text: str
    logprobs: list[dict[str, Any]] | None = None
    index: int = 0
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


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


@dataclass(slots=True)
class _ToolReply:
    """One choice of a request with tools: its JSON so far, and how much of its content (a
    reply to the user) has been sent. Content streams as it is begun; calls come whole."""

    text: str = ""
    sent: int = 0

    def feed(self, tools: Tools, delta: Delta, index: int) -> Piece | None:
        self.text += delta.text
        if delta.finish_reason is None:
            begun = begun_content(self.text) or ""
            new, self.sent = begun[self.sent :], max(self.sent, len(begun))
            return Piece(new, None, index) if new else None
        content, calls = tools.reply(self.text)
        if calls:  # cut short by max_tokens, the finish says so
            finish = "tool_calls" if delta.finish_reason == "stop" else delta.finish_reason
            return Piece("", None, index, finish, calls)
        return Piece((content or "")[self.sent :], None, index, delta.finish_reason)


def _choice_params(params: SamplingParams, i: int) -> SamplingParams:
    """The i-th choice of a request samples with ``seed + i``."""
    return dataclasses.replace(params, seed=None if params.seed is None else params.seed + i)


def _wire_logprobs(content: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return None if content is None else {"content": content, "refusal": None}


def _place(entries: list[dict[str, Any]], offset: int) -> int:
    """Give each legacy logprobs entry its ``text_offset``, where its token starts in the
    choice's text, from ``offset`` on; return the offset after the last."""
    for entry in entries:
        entry["text_offset"] = offset
        offset += len(entry["token"])
    return offset


def _text_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The legacy completions' logprobs: parallel lists, the alternatives as token -> logprob."""
    if entries is None:
        return None
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [
            None
            if e["top_logprobs"] is None
            else {a["token"]: a["logprob"] for a in e["top_logprobs"]}
            for e in entries
        ],
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
        # with tools, a reply as the history writes it back -> as the model wrote it
        self._written: OrderedDict[str, str] = OrderedDict()

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
        if request.tools is not None:
            request = dataclasses.replace(request, messages=self._as_written(request.messages))
        slot = await self._slot_for(request.messages)
        async with contextlib.AsyncExitStack() as held:
            await held.enter_async_context(slot.lock)
            slot.used = time.monotonic()
            computed = slot.conv.computed  # what the prompt computes is counted from here
            if request.n == 1:  # the transcript and the assistant header in one pass
                streams = [
                    slot.conv.generate(request.params, messages=request.messages, replace=True)
                ]
            else:  # the transcript once; each choice forks its KV
                await slot.conv.set_messages(request.messages)
                convs = [slot.conv, *await self._forks(slot.conv, request.n - 1, held)]
                streams = [
                    conv.generate(_choice_params(request.params, i)) for i, conv in enumerate(convs)
                ]
            # entered last, so closed first: the generations' aborts are queued before the
            # locks are released, ahead of any command of the next request for these slots
            # (left to the garbage collector, an abort could land after that request's
            # generate and fail it with "the conversation is generating")
            merged = await held.enter_async_context(_Merged(streams))
            replies = [_ToolReply() for _ in range(request.n)]  # with tools
            async for i, delta in merged:
                if i == 0 and not completion.usage.prompt_tokens:  # the prompt is known now
                    completion.usage.prompt_tokens = delta.position
                    completion.usage.cached_tokens = delta.cached(computed)
                completion.usage.completion_tokens += len(delta.token_ids)
                if request.tools is not None:
                    if piece := replies[i].feed(request.tools, delta, i):
                        yield piece
                    if delta.finish_reason == "stop":
                        self._remember(request.tools, replies[i].text)
                    continue
                logprobs = self._logprobs(delta, request.params)
                if delta.text or logprobs or delta.finish_reason:
                    yield Piece(delta.text, logprobs, i, delta.finish_reason)
            slot.used = time.monotonic()

    def _remember(self, tools: Tools, reply: str) -> None:
        """Keep how the model wrote a finished reply with tools. The client sends it back as
        content or calls, which the history writes in one canonical JSON form; the model's own
        spacing differs, and only its own text matches the conversation's tokens."""
        content, calls = tools.reply(reply)
        written = assistant_text(content or "", calls, "tool_calls")
        if written != reply:
            self._written[written] = reply
            self._written.move_to_end(written)
            while len(self._written) > MAX_WRITTEN:
                self._written.popitem(last=False)

    def _as_written(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """``messages`` with the assistant's replies as the model wrote them, where known."""
        return [
            {**m, "content": self._written.get(m["content"], m["content"])}
            if m["role"] == "assistant"
            else m
            for m in messages
        ]

    async def _forks(
        self, conv: Conversation, n: int, held: contextlib.AsyncExitStack
    ) -> list[Conversation]:
        """``n`` forks of ``conv``, held as slots (see :meth:`_hold`)."""
        forks = [await conv.fork() for _ in range(n)]
        await self._hold(forks, held)
        return forks

    async def _hold(self, convs: list[Conversation], held: contextlib.AsyncExitStack) -> None:
        """List ``convs`` as slots (a client may continue any of them), locked in ``held``."""
        await self._trim(room=len(convs))
        for conv in convs:
            slot = _Slot(conv)
            await held.enter_async_context(slot.lock)  # free: taken without a wait
            self._slots.append(slot)

    async def complete_text(
        self, request: TextRequest, completion: Completion
    ) -> AsyncGenerator[Piece, None]:
        """Yield the pieces of a text completion: each prompt continued as it is, with no chat
        template, its choices interleaved with every other prompt's. A prompt starts from the
        resident conversation that shares the most leading tokens with it (forked, so that
        one is left as it is), and stays resident after; a prompt whose tokens are scored
        (``echo`` with ``logprobs``) is computed whole. Fills ``completion.usage``; closing
        the iterator aborts the generations within one engine step."""
        tokenizer, params = self.engine.tokenizer, request.params
        prompts = [self._prompt_ids(p) for p in request.prompts]
        async with contextlib.AsyncExitStack() as held:
            streams, scores = [], []
            for ids in prompts:
                if request.scored:
                    convs, score = await self._scored_conversations(ids, request, held)
                    scores.append(self._prompt_logprobs(ids, score))
                    rest: list[int] = []
                elif request.generate:
                    convs, rest = await self._text_conversations(ids, request.n, held)
                else:
                    convs, rest = [], []
                completion.usage.prompt_tokens += len(ids)
                streams += [  # rest: only ever a single choice's
                    conv.generate(
                        _choice_params(params, i), add_generation_prompt=False, tokens=rest or None
                    )
                    for i, conv in enumerate(convs if request.generate else ())
                ]
            merged = await held.enter_async_context(_Merged(streams))  # see complete()
            offsets = [0] * request.choices  # each choice's text so far, in characters
            if request.echo:
                end = None if request.generate else "length"
                for j in range(request.choices):
                    echoed = tokenizer.decode(prompts[j // request.n])
                    offsets[j] = len(echoed)
                    prompt_logprobs = scores[j // request.n] if scores else None
                    yield Piece(echoed, prompt_logprobs, j, end)
            async for j, delta in merged:
                if j % request.n == 0 and delta.position == len(prompts[j // request.n]):
                    # a prompt's first choice, first token: its conversation is new (a fork
                    # or not), so all it computed was for this prompt (see Delta.cached)
                    completion.usage.cached_tokens += delta.cached(0)
                completion.usage.completion_tokens += len(delta.token_ids)
                logprobs = self._logprobs(delta, params, with_end=True)
                offsets[j] = _place(logprobs or [], offsets[j])
                if delta.text or logprobs or delta.finish_reason:
                    yield Piece(delta.text, logprobs, j, delta.finish_reason)

    async def _scored_conversations(
        self, ids: list[int], request: TextRequest, held: contextlib.AsyncExitStack
    ) -> tuple[list[Conversation], list[TokenLogprob | None]]:
        """A new conversation of ``ids`` computed whole, with each token's logprob (the first
        has none), and a fork of it for each further choice: listed as slots, locked in
        ``held``."""
        conv = self.engine.open_conversation()
        await self._hold([conv], held)
        score = await conv.score(ids, request.params.logprobs or 0)
        forks = await self._forks(conv, request.n - 1, held) if request.generate else []
        return [conv, *forks], score

    def _prompt_logprobs(
        self, ids: list[int], score: list[TokenLogprob | None]
    ) -> list[dict[str, Any]]:
        """The legacy logprobs entries of a prompt's tokens, ``text_offset`` from 0; the first
        token's logprob and alternatives are ``None``, as OpenAI's are."""
        entries = [
            {**self._entry(tok, None), "top_logprobs": None}
            if found is None
            else self._logprobs_entry(found)
            for tok, found in zip(ids, score, strict=True)
        ]
        _place(entries, 0)
        return entries

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
    ) -> tuple[list[Conversation], list[int]]:
        """``n`` conversations holding ``ids``, new ones (forks of the longest resident prefix
        where there is one), listed as slots and locked in ``held``; and the ids the first
        is still to take, with its generation (n == 1; the forks of n > 1 need them now)."""
        source, reused = self.engine.longest_prefix(ids)
        conv = None
        if source is not None:
            with contextlib.suppress(InvalidRequest):  # it changed or closed since: start anew
                conv = await source.fork(reused)
        if conv is None:
            conv, reused = self.engine.open_conversation(), 0
        await self._hold([conv], held)
        if n == 1:  # appended by generate, in its command: one pass, with other prompts
            return [conv], ids[reused:]
        if reused < len(ids):
            await conv.append_tokens(ids[reused:])
        return [conv, *await self._forks(conv, n - 1, held)], []

    def _logprobs(
        self, delta: Delta, params: SamplingParams, with_end: bool = False
    ) -> list[dict[str, Any]] | None:
        """The wire's logprobs entries of a delta's tokens. A chat reply's end-of-turn token is
        left out (it is not in the message); ``with_end`` keeps it, as the legacy API lists
        every token it generated (evaluation harnesses count on that)."""
        if delta.logprobs is None:
            return None
        end = () if params.ignore_eos or with_end else self.engine.tokenizer.eos_ids
        return [self._logprobs_entry(t) for t in delta.logprobs if t.token_id not in end]

    def _logprobs_entry(self, t: TokenLogprob) -> dict[str, Any]:
        return {
            **self._entry(t.token_id, t.logprob),
            "top_logprobs": [self._entry(*alt) for alt in t.top],
        }

    def _entry(self, token_id: int, logprob: float | None) -> dict[str, Any]:
        raw = self.engine.tokenizer.token_bytes(token_id)
        # a token may hold part of a character: ``bytes`` has it whole
        text = raw.decode("utf-8", errors="backslashreplace")
        value = None if logprob is None else max(logprob, MIN_LOGPROB)
        return {"token": text, "logprob": value, "bytes": list(raw)}

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
        if p.tool_calls:
            calls = [{"index": k, **call} for k, call in enumerate(p.tool_calls)]
            chunks.append(self._chat_chunk(c, {"tool_calls": calls}, None, None, p.index))
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
        n = request.choices
        texts = [""] * n
        finishes: list[str | None] = [None] * n
        logprobs: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        calls: list[list[dict[str, Any]] | None] = [None] * n
        for p in pieces:
            texts[p.index] += p.text
            logprobs[p.index] += p.logprobs or ()
            finishes[p.index] = p.finish_reason or finishes[p.index]
            calls[p.index] = p.tool_calls or calls[p.index]
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
                message: dict[str, Any] = {"role": "assistant", "content": texts[i]}
                if calls[i]:
                    message = {"role": "assistant", "content": None, "tool_calls": calls[i]}
                choices.append(
                    {"index": i, "message": message, "finish_reason": finish, "logprobs": lp}
                )
        return {**self._envelope(c, False), "choices": choices, "usage": c.usage.as_dict()}

    # --- the tokenizer (vLLM's endpoints, which evaluation harnesses use) ----------------

    def tokenize(self, request: TokenizeRequest) -> dict[str, Any]:
        """The tokens of a prompt, or of chat messages as a chat request would prefill them."""
        tok = self.engine.tokenizer
        text = request.prompt
        if request.messages is not None:
            messages = validate_messages(request.messages)
            text = tok.render(messages, add_generation_prompt=request.add_generation_prompt)
        assert text is not None
        ids = tok.encode(text, request.add_special_tokens)
        strs = [tok.token_str(t) for t in ids] if request.token_strs else None
        return {"count": len(ids), "max_model_len": self.engine.max_context, "tokens": ids,
                "token_strs": strs}  # fmt: skip

    def detokenize(self, ids: list[int]) -> dict[str, Any]:
        vocab = self.engine.model_config.vocab_size
        if any(t >= vocab for t in ids):
            raise InvalidRequest(f"token ids must be within [0, {vocab})", "tokens")
        return {"prompt": self.engine.tokenizer.decode(ids)}

    def tokenizer_info(self) -> dict[str, Any]:
        """The model's ``tokenizer_config.json`` (special tokens as their text) and the chat
        template the engine renders with, as vLLM's ``/tokenizer_info`` gives them."""
        tok = self.engine.tokenizer
        info = {k: v for k, v in tok.config.items() if not k.endswith("_file")}
        for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
            if isinstance(info.get(key), dict):  # {"content": "<|im_end|>", ...}
                info[key] = info[key].get("content")
        info.setdefault("eos_token", tok.eos_token)
        info.setdefault("model_max_length", self.engine.max_context)
        return {**info, "tokenizer_class": info.get("tokenizer_class") or "PreTrainedTokenizerFast"}

    def model(self) -> dict[str, Any]:
        # max_model_len: the context a request may fill, as vLLM's model cards give it
        return {"id": self.model_name, "object": "model", "created": 0, "owned_by": "parley",
                "max_model_len": self.engine.max_context}  # fmt: skip

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model()]}
