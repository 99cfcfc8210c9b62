"""The async handle of a conversation: a resident token sequence in the engine.

Calling contract (methods are called on an asyncio loop; the engine applies a conversation's
operations in call order):

- ``await conv.append(messages)`` renders the messages with the chat template, tokenizes only
  what is new and returns once it is prefilled (``wait=False``: once the tokens are queued
  for prefill). ``partial=True`` leaves the last message open (a live transcript): a later
  message of the same role supersedes it (only the differing tail is re-tokenized),
  ``truncate`` rolls it back. Cancelling an awaiting ``append`` does not undo it: the tokens
  stay and their prefill finishes in the background.
- ``async for delta in conv.generate(params)`` streams the reply. Cancelling the consuming task
  (or leaving the loop) aborts within one engine step; the conversation keeps exactly the
  tokens generated so far (``conv.tokens``) and their KV. ``generate(params, messages=turn)``
  appends the turn first, prefilled with the assistant header in one forward pass.
- ``await conv.prefilled()`` returns once the queued tokens are prefilled.
- ``await conv.truncate(n)`` rolls back to the first ``n`` tokens without recomputing.
- ``await conv.score(ids)`` appends token ids and returns each one's logprob given all before.
- ``conv.tokens`` is the token list, the source of truth; history is never re-tokenized.
- ``await conv.close()`` frees its KV blocks. Closed conversations raise ``InvalidRequest``.

- Only one ``generate`` or ``score`` at a time; ``append``/``truncate`` during either raise
  ``InvalidRequest`` (cancel the generation first).

Errors: ``InvalidRequest`` (bad input, busy), ``ContextLengthExceeded``, ``EngineClosed``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llm_engine.config import MAX_TOP_LOGPROBS, SamplingParams
from llm_engine.errors import InvalidRequest
from llm_engine.tokenizer import Message, check_utf8, validate_messages

if TYPE_CHECKING:
    from llm_engine.engine import ConvState, Engine


@dataclass(slots=True)
class TokenLogprob:
    """A generated token's log-probability and the most likely alternatives at its step
    (``(token id, logprob)``, descending), under the model's own distribution."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass(slots=True)
class Delta:
    """One step of a generation: the new token ids and the text they complete.

    ``text`` never holds half a UTF-8 character (bytes wait for the rest), so it may be empty.
    ``finish_reason`` is set on the last delta: ``"stop"`` (end-of-turn token or stop string)
    or ``"length"`` (max_tokens or context full). ``position`` places the delta in
    ``conv.tokens`` (which may have grown further by the time the delta is read): the first
    delta's is where the reply begins, the prompt's length. ``logprobs`` (when the params ask
    for them) has one entry per token id. ``computed`` is :attr:`Conversation.computed` as
    the token was sampled: less its value before a request, the request's prompt tokens that
    were computed rather than found resident.
    """

    token_ids: list[int]
    text: str
    finish_reason: str | None = None
    position: int = 0  # index of token_ids[0] in the conversation's token list
    logprobs: list[TokenLogprob] | None = None
    computed: int = 0

    def cached(self, computed_before: int) -> int:
        """For a reply's first delta: its prompt tokens whose KV was reused, those the engine
        did not compute since its conversation's ``computed`` was ``computed_before``. A
        prompt found whole still computes its last token (its logits start the reply); one
        whose KV was evicted since computes it again."""
        return max(0, self.position - (self.computed - computed_before))


def post(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(*args)`` on ``loop`` from the engine thread. A closed loop has nobody left to
    tell (its caller went away), which must not take the engine thread down."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


class Conversation:
    """Handle to one conversation; create with :meth:`Engine.open_conversation`."""

    def __init__(self, engine: Engine, state: ConvState) -> None:
        self._engine = engine
        self._state = state

    @property
    def id(self) -> int:
        return self._state.seq.seq_id

    @property
    def tokens(self) -> list[int]:
        """A copy of the token list as the engine holds it now."""
        with self._engine._lock:
            return list(self._state.seq.tokens)

    @property
    def messages(self) -> list[Message]:
        """The messages the transcript renders (an unfinished reply is an open last message)."""
        with self._engine._lock:
            return [dict(m) for m in self._state.history.messages]

    @property
    def num_cached(self) -> int:
        """Leading tokens whose KV is resident (less than ``len(tokens)`` after eviction)."""
        with self._engine._lock:
            return self._state.seq.num_cached

    @property
    def computed(self) -> int:
        """Tokens whose KV this conversation has computed, recomputations (after eviction, or
        of a last token whose logits start a reply) included; not those it found resident
        (its own KV, a fork's shared blocks, the pool's prefix cache)."""
        with self._engine._lock:
            return self._state.seq.computed

    @property
    def closed(self) -> bool:
        return self._state.closed

    async def append(
        self, messages: list[Message] | Message, *, partial: bool = False, wait: bool = True
    ) -> int:
        """Append chat messages and prefill them. Returns the new token count.

        ``wait=False`` returns once the tokens are in the conversation (bad input raises as
        before) and leaves their prefill queued: a ``generate`` called next prefills them
        together with the assistant header in one forward pass instead of two.
        """
        msgs = validate_messages(messages)
        eng = self._engine
        return int(
            await eng._call(
                lambda st: eng._apply_messages(st, msgs, partial, False, wait), self._state
            )
        )

    async def prefilled(self) -> int:
        """Return once the tokens queued so far are in the KV cache (the system prompt that
        :meth:`Engine.open_conversation` prefills in the background, an ``append`` made with
        ``wait=False``): the token count they reach."""
        eng = self._engine
        return int(await eng._call(eng._await_prefill, self._state))

    async def set_messages(self, messages: list[Message]) -> int:
        """Make the transcript exactly ``messages`` (as an OpenAI-style client re-sends it):
        the longest token prefix whose bytes match the rendering is kept, the rest prefilled."""
        msgs = validate_messages(messages)
        eng = self._engine
        return int(
            await eng._call(lambda st: eng._apply_messages(st, msgs, False, True), self._state)
        )

    async def append_text(self, text: str) -> int:
        """Append raw text (no chat template), tokenized on its own, and prefill it."""
        check_utf8(text)
        if not text:
            raise InvalidRequest("text to append is empty")
        ids = self._engine.tokenizer.encode(text)
        return await self.append_tokens(ids)

    async def append_tokens(self, token_ids: list[int], *, wait: bool = True) -> int:
        """Append token ids verbatim and prefill them (``wait=False``: as :meth:`append`)."""
        ids = self._checked_ids(token_ids)
        eng = self._engine
        return int(await eng._call(lambda st: eng._apply_tokens(st, ids, wait), self._state))

    async def score(self, token_ids: list[int], top: int = 0) -> list[TokenLogprob | None]:
        """Append token ids verbatim and return each one's logprob given everything before it,
        with the ``top`` most likely tokens at its place (``None`` for a conversation's very
        first token, which nothing predicts). For evaluating a model on given text and for the
        legacy API's ``echo`` with ``logprobs``.

        The position before the tokens is computed again to get its logits, and the tokens
        themselves are computed even where the pool's shared-prefix cache holds them.
        Cancelling the awaiting task stops the scoring; the tokens stay, as an ``append``'s.
        """
        ids = self._checked_ids(token_ids)
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"top must be in [0, {MAX_TOP_LOGPROBS}]")
        eng = self._engine
        try:
            found = await eng._call(lambda st: eng._apply_score(st, ids, top), self._state)
        except asyncio.CancelledError:  # the tokens stay, prefilled as by append, not scored
            eng._commands.put(lambda: eng._stop_scoring(self._state))
            raise
        return list(found)

    def _checked_ids(self, token_ids: list[int]) -> list[int]:
        vocab = self._engine.model_config.vocab_size
        if not token_ids or any(not 0 <= int(t) < vocab for t in token_ids):
            raise InvalidRequest(f"token ids must be a non-empty list within [0, {vocab})")
        return [int(t) for t in token_ids]

    async def truncate(self, n_tokens: int) -> None:
        """Roll back to the first ``n_tokens`` tokens (KV kept, nothing recomputed)."""
        eng = self._engine
        await eng._call(lambda st: eng._truncate(st, n_tokens), self._state)

    async def fork(self, n_tokens: int | None = None) -> Conversation:
        """A new conversation holding this one's first ``n_tokens`` tokens (all by default) and
        their messages, sharing their KV blocks: nothing is recomputed, and either one writing
        into a shared block copies it first, so neither sees the other's later tokens. For
        branching a conversation (another reply to the same history, another caller on the
        same script) without giving up this one's cache. A generating conversation forks as it
        stands when the engine applies the fork; its generation goes on undisturbed."""
        eng = self._engine
        forked = await eng._call(lambda st: eng._fork(st, n_tokens), self._state)
        assert isinstance(forked, Conversation)
        return forked

    async def close(self) -> None:
        """Abort any generation and free the conversation's KV. Idempotent."""
        if self._state.closed:
            return
        eng = self._engine
        await eng._call(eng._close, self._state)

    async def generate(
        self,
        params: SamplingParams | None = None,
        *,
        add_generation_prompt: bool | None = None,
        messages: list[Message] | Message | None = None,
        replace: bool = False,
        tokens: list[int] | None = None,
    ) -> AsyncGenerator[Delta, None]:
        """Stream the model's continuation of the transcript.

        ``messages``: appended first, as by :meth:`append` (``replace=True``: made the whole
        transcript, as by :meth:`set_messages`), in the same engine command: their tokens and
        the assistant header are prefilled in one forward pass (answering a turn with
        ``append`` then ``generate`` takes two). ``tokens``: token ids appended first, as by
        :meth:`append_tokens`, likewise (not with ``messages``).
        ``add_generation_prompt``: append the chat template's assistant header first. By default
        it is added when the transcript holds messages, unless the last one is an open
        assistant reply (which is then continued); raw-token transcripts are continued as is.
        Cancelling the consuming task or closing the iterator aborts within one step.
        """
        p = params or SamplingParams()
        msgs = None if messages is None else validate_messages(messages)
        if msgs is not None and tokens is not None:
            raise InvalidRequest("generate takes messages or tokens, not both")
        ids = None if tokens is None else self._checked_ids(tokens)
        eng = self._engine
        deltas: asyncio.Queue[Delta | BaseException] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def sink(item: Delta | BaseException) -> None:
            post(loop, deltas.put_nowait, item)

        start = eng._call(
            lambda st: eng._start_generation(
                st, p, sink, add_generation_prompt, msgs, replace, ids
            ),
            self._state,
        )
        try:
            await start
        except asyncio.CancelledError:
            eng._post_abort(self._state)  # queued after the start: it cannot outlive us
            raise
        finished = False
        try:
            while True:
                item = await deltas.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finish_reason is not None
                yield item
                if finished:
                    return
        finally:
            if not finished:
                # abort within one step; not awaited so a cancelled task is not held up
                eng._post_abort(self._state)

    async def __aenter__(self) -> Conversation:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
