"""The language model as a voice session sees it: a ``Dialogue`` it speaks into.

A session holds one ``Dialogue``. Two kinds serve it:

- ``LocalDialogue``: a conversation resident in Parley's own engine. The caller's words are
  prefilled while they speak (``set_user(text, final=False)``), a reply streams token by token,
  and after a barge-in the KV cache is rolled back to the last token the caller heard.
- ``RemoteDialogue`` (``voice.remote_llm``): any OpenAI-compatible streaming chat-completions
  endpoint; the history is a message list re-sent each turn, truncated to the heard words the
  same way.

Calling contract (one session's asyncio task calls these, one at a time):

- ``await set_user(text, final=...)``: the caller's current turn is ``text``; it replaces the
  open user message (a partial transcript may be revised). ``final=True`` closes it.
- ``await add(role, text)``: a whole message (a typed text turn, an injected item).
- ``async for piece in reply(params)``: the assistant's reply as text pieces. Leaving the loop or
  cancelling the task stops generation; the reply so far stays in the history, open.
- ``await keep_reply(n_chars) -> str``: the caller heard only the first ``n_chars`` characters
  of the last reply: keep those (rounded down to what the model can keep: a token boundary
  locally, exactly remotely) and return the kept text.
- ``mark()`` / ``await restore(mark)``: a checkpoint and a rollback to it (a preemptive reply
  that the caller talked over before any audio went out).
- ``history``: the messages as the model will see them next; ``await close()``.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Literal

from llm_engine.config import SamplingParams
from llm_engine.conversation import Conversation
from llm_engine.engine import Engine
from voice.errors import ParleyError

Role = Literal["user", "assistant", "system"]
Message = dict[str, str]

__all__ = [
    "Dialogue", "LlmError", "LocalDialogue", "Message", "ReplyParams", "ReplyUsage", "Role",
    "local_dialogue",
]  # fmt: skip


class LlmError(ParleyError):
    """The language model failed a request (unreachable, refused, broke off mid-reply).

    Engine errors (``llm_engine.errors.EngineError``) are raised as they are."""


@dataclass(slots=True, frozen=True)
class ReplyUsage:
    """Token counts of a reply: the context it answered (``input_tokens``), of which
    ``cached_tokens`` were not computed for it (resident KV: earlier turns, the caller's words
    prefilled while they spoke), and the tokens generated so far."""

    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0


@dataclass(slots=True, frozen=True)
class ReplyParams:
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = None


class Dialogue(abc.ABC):
    """One session's conversation with a language model; see the module docstring.

    ``finish_reason`` is why the latest :meth:`reply` ended: ``"stop"`` (the model's end of
    turn), ``"length"`` (``max_tokens``), or None while it runs or if it was cut off.
    ``usage`` counts the latest reply's tokens as far as it went: None from the call of
    :meth:`reply` to its first token, and where the backend does not say."""

    finish_reason: str | None = None
    usage: ReplyUsage | None = None

    @property
    @abc.abstractmethod
    def history(self) -> list[Message]: ...

    @abc.abstractmethod
    async def set_user(self, text: str, *, final: bool) -> None: ...

    @abc.abstractmethod
    async def add(self, role: Role, text: str) -> None: ...

    @abc.abstractmethod
    def reply(self, params: ReplyParams) -> AsyncGenerator[str, None]: ...

    @abc.abstractmethod
    async def keep_reply(self, n_chars: int) -> str: ...

    @abc.abstractmethod
    def mark(self) -> Any: ...

    @abc.abstractmethod
    async def restore(self, mark: Any) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


class LocalDialogue(Dialogue):
    """A conversation resident in Parley's engine; the token list is the history.

    A final user turn is held back until the next call: the reply that normally follows
    prefills it together with the assistant header in one engine pass (``generate(messages=)``),
    which saves a forward pass (~45 ms on one CPU thread) before the first token. Any other
    call applies it first.
    """

    def __init__(self, conversation: Conversation) -> None:
        self._conv = conversation
        self._user_open = False  # the last message is the caller's unfinished turn
        self._final: str | None = None  # the caller's finished turn, not yet in the engine
        self._reply_start: int | None = None  # token index where the last reply begins
        self._reply_ends: list[int] = []  # character end of the reply text after each token

    @property
    def conversation(self) -> Conversation:
        return self._conv

    @property
    def history(self) -> list[Message]:
        messages = self._conv.messages
        if self._final is None:
            return messages
        if self._user_open:
            messages = messages[:-1]
        return [*messages, {"role": "user", "content": self._final}]

    async def set_user(self, text: str, *, final: bool) -> None:
        self._reply_start = None
        if final:
            self._final = text
            return
        await self._flush()
        if not text:
            return  # nothing to prefill yet
        # not waiting for the prefill: a newer partial or the reply supersedes a queued one
        await self._conv.append({"role": "user", "content": text}, partial=True, wait=False)
        self._user_open = True

    async def add(self, role: Role, text: str) -> None:
        await self._flush()
        await self._conv.append({"role": role, "content": text})
        self._user_open = False
        self._reply_start = None

    async def _flush(self) -> None:
        """Apply a held-back final user turn."""
        if self._final is not None:
            text, self._final = self._final, None
            await self._conv.append({"role": "user", "content": text})
            self._user_open = False

    def reply(self, params: ReplyParams) -> AsyncGenerator[str, None]:
        self.usage = None  # now, not at the first iteration: this reply's, or none
        return self._reply(params)

    async def _reply(self, params: ReplyParams) -> AsyncGenerator[str, None]:
        turn = None
        if self._final is not None:
            turn = {"role": "user", "content": self._final}
        elif self._user_open:  # an open user message is closed before the assistant speaks
            turn = self._conv.messages[-1]
        sampling = SamplingParams(
            max_tokens=params.max_tokens, temperature=params.temperature, seed=params.seed
        )
        self._reply_start = None
        self._reply_ends = []
        self.finish_reason = None
        length = generated = cached = 0
        computed = self._conv.computed  # what this reply's context computes counts from here
        deltas = self._conv.generate(sampling, messages=turn)
        self._final, self._user_open = None, False
        # closing this reply closes the engine's stream at once: its abort is queued before
        # the truncate or next turn that follows a barge-in
        async with contextlib.aclosing(deltas):
            async for delta in deltas:
                if self._reply_start is None:
                    self._reply_start = delta.position  # the engine may be a step ahead
                    cached = delta.cached(computed)
                generated += len(delta.token_ids)
                self.usage = ReplyUsage(self._reply_start, generated, cached)
                length += len(delta.text)
                # a token completing a character carries it; tokens holding a partial one ""
                self._reply_ends.extend([length] * len(delta.token_ids))
                self.finish_reason = delta.finish_reason
                if delta.text:
                    yield delta.text

    async def keep_reply(self, n_chars: int) -> str:
        if self._reply_start is None:
            return ""
        keep = 0
        while keep < len(self._reply_ends) and self._reply_ends[keep] <= n_chars:
            keep += 1
        await self._conv.truncate(self._reply_start + keep)
        self._reply_ends = self._reply_ends[:keep]
        kept = self._reply_ends[-1] if keep else 0
        msg = self._conv.messages[-1] if self._conv.messages else None
        if msg is None or msg["role"] != "assistant":
            return ""
        return msg["content"][:kept]

    def mark(self) -> tuple[int, bool, str | None]:
        return len(self._conv.tokens), self._user_open, self._final

    async def restore(self, mark: Any) -> None:
        n_tokens, user_open, final = mark
        await self._conv.truncate(n_tokens)
        self._user_open, self._final = user_open, final
        self._reply_start = None
        self._reply_ends = []

    async def close(self) -> None:
        await self._conv.close()


def local_dialogue(engine: Engine, instructions: str) -> LocalDialogue:
    """Open a conversation in ``engine`` with ``instructions`` as its system prompt."""
    return LocalDialogue(engine.open_conversation(instructions or None))
