"""A conversation's transcript: tokens (the source of truth), their bytes, and the messages.

No torch, no asyncio. The chat template renders the *messages*; the token list is never
re-tokenized. To append, the whole message list is rendered and compared byte-wise with the
bytes the tokens already stand for: only the bytes past the common prefix are tokenized. If the
template is not prefix-stable at some point (it closes an open message, trims content ...) the
tokens past the divergence are rolled back first, which keeps tokens and template in step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llm_engine.tokenizer import Message


@dataclass(slots=True)
class _Entry:
    message: Message
    content_start: int  # byte offset of the content in the transcript
    end: int  # byte offset just past the message (or past its content while open)
    closed: bool


@dataclass(slots=True)
class AppendPlan:
    """Keep the first ``keep`` tokens, then append the tokens of ``text``."""

    keep: int
    text: str


class History:
    """Tokens, byte offsets and rendered messages of one conversation.

    ``render(messages, add_generation_prompt, open_last) -> str`` is the chat template.
    """

    def __init__(self, render: Callable[..., str]) -> None:
        self._template = render
        self._last: tuple[Any, str] | None = None  # the latest render: (its key, its text)
        self.tokens: list[int] = []
        self._ends: list[int] = []  # byte offset after each token
        self._bytes = bytearray()
        self._entries: list[_Entry] = []

    def _render(self, messages: list[Message], **flags: Any) -> str:
        """The template's rendering, remembered once: appending a message renders the same
        list to plan it and to record where it ends."""
        # the template's flags (add_generation_prompt, open_last) are off unless set
        key = (
            [(m["role"], m["content"]) for m in messages],
            sorted(k for k, v in flags.items() if v),
        )
        if self._last is None or self._last[0] != key:
            self._last = (key, self._template(messages, **flags))
        return self._last[1]

    @property
    def messages(self) -> list[Message]:
        return [e.message for e in self._entries]

    @property
    def open_reply(self) -> bool:
        """True when the last message is an unfinished assistant reply (continued by generate)."""
        return (
            bool(self._entries)
            and not self._entries[-1].closed
            and (self._entries[-1].message["role"] == "assistant")
        )

    @property
    def num_bytes(self) -> int:
        return len(self._bytes)

    def text(self) -> str:
        return self._bytes.decode("utf-8", errors="replace")

    # --- planning (pure) -----------------------------------------------------------------

    def plan_messages(self, new: list[Message], open_last: bool) -> AppendPlan:
        """Plan appending ``new`` messages (the last one left open if ``open_last``).

        An open last message (a partial transcript, an interrupted reply) is superseded by a
        first new message of the same role; otherwise the template closes it.
        """
        full = self._render(self._base(new) + new, open_last=open_last)
        return self._plan(full.encode())

    def _base(self, new: list[Message]) -> list[Message]:
        msgs = [e.message for e in self._entries]
        last = self._entries[-1] if self._entries else None
        if last is not None and not last.closed and new and new[0]["role"] == last.message["role"]:
            msgs.pop()
        return msgs

    def plan_replace(self, messages: list[Message]) -> AppendPlan:
        """Plan making the transcript exactly ``messages`` (keeping the common token prefix)."""
        return self._plan(self._render(messages).encode())

    def replace_messages(self, messages: list[Message]) -> None:
        """Record ``messages`` as the whole message list after a :meth:`plan_replace` plan.

        The plan's truncation left only entries that end within the kept bytes; the leading
        ones that equal ``messages`` stay as they are, and only the rest are located by
        rendering. (Locating all of them again took 2 renders of a growing prefix per
        message: 72 ms on the engine thread for a 200-message history re-sent by an API
        client, against ~1 ms now.)"""
        kept = 0
        for e, m in zip(self._entries, messages, strict=False):
            if (
                not e.closed
                or e.message["role"] != m["role"]
                or e.message["content"] != m["content"]
            ):
                break
            kept += 1
        del self._entries[kept:]
        self.add_messages(messages[kept:], open_last=False)

    def plan_generation_prompt(self) -> AppendPlan:
        """Plan appending the template's assistant header before generating."""
        full = self._render(self._closed_messages(), add_generation_prompt=True)
        return self._plan(full.encode())

    def _closed_messages(self) -> list[Message]:
        return [e.message for e in self._entries]

    def _plan(self, full: bytes) -> AppendPlan:
        common = common_prefix_len(full, self._bytes)
        keep = len(self.tokens)
        while keep:
            end = self._ends[keep - 1]
            if end <= common and _utf8_boundary(full, end):
                break
            keep -= 1
        start = self._ends[keep - 1] if keep else 0
        return AppendPlan(keep, full[start:].decode("utf-8"))

    def copy(self) -> History:
        """An independent copy (same template)."""
        other = History(self._template)
        other.tokens, other._ends = list(self.tokens), list(self._ends)
        other._bytes = bytearray(self._bytes)
        other._entries = [
            _Entry(dict(e.message), e.content_start, e.end, e.closed) for e in self._entries
        ]
        return other

    # --- mutation ------------------------------------------------------------------------

    def add_tokens(self, ids: list[int], token_bytes: Callable[[int], bytes]) -> None:
        """Append tokens (prefilled or generated); the open message, if any, grows with them."""
        for t in ids:
            self.tokens.append(t)
            self._bytes += token_bytes(t)
            self._ends.append(len(self._bytes))

    def add_messages(self, new: list[Message], open_last: bool) -> None:
        """Record messages whose tokens were just added by a :meth:`plan_messages` plan."""
        base = self._base(new)
        if len(base) < len(self._entries):
            self._entries.pop()  # superseded open message
        self._drop_open()
        for i, m in enumerate(new):
            last_open = open_last and i == len(new) - 1
            content_end = len(self._render([*base, *new[:i], m], open_last=True).encode())
            start = content_end - len(m["content"].encode())
            end = content_end if last_open else len(self._render([*base, *new[: i + 1]]).encode())
            self._entries.append(_Entry(dict(m), start, end, closed=not last_open))

    def begin_reply(self, role: str = "assistant") -> None:
        """The generation prompt was added: an open reply message starts here."""
        self._drop_open()
        n = len(self._bytes)
        self._entries.append(_Entry({"role": role, "content": ""}, n, n, closed=False))

    def update_reply(self, closed: bool, end_token_bytes: int = 0) -> None:
        """Refresh the open reply's content from its bytes (``end_token_bytes`` of end-of-turn
        token excluded); ``closed`` marks it finished by the model's end-of-turn token."""
        if not self._entries or self._entries[-1].closed:
            return
        e = self._entries[-1]
        end = len(self._bytes) - end_token_bytes
        e.message["content"] = bytes(self._bytes[e.content_start : end]).decode("utf-8", "ignore")
        e.end = len(self._bytes)
        e.closed = closed

    def truncate(self, n_tokens: int) -> None:
        """Keep the first ``n_tokens`` tokens; a message cut inside its content stays open."""
        assert 0 <= n_tokens <= len(self.tokens)
        del self.tokens[n_tokens:]
        del self._ends[n_tokens:]
        b = self._ends[-1] if self._ends else 0
        del self._bytes[b:]
        kept: list[_Entry] = []
        for e in self._entries:
            if e.end <= b and (e.closed or e.end == b):
                kept.append(e)
            elif e.content_start <= b:
                content = bytes(self._bytes[e.content_start : b]).decode("utf-8", "ignore")
                kept.append(_Entry({**e.message, "content": content}, e.content_start, b, False))
                break
            else:
                break
        self._entries = kept

    def _drop_open(self) -> None:
        # an open message followed by new ones is closed by the template at render time
        if self._entries and not self._entries[-1].closed:
            self._entries[-1].closed = True


def common_prefix_len(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading items (tokens, bytes) ``a`` and ``b`` share; slices compare in C."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n - 1  # binary search on prefix equality
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _utf8_boundary(data: bytes, i: int) -> bool:
    return i >= len(data) or (data[i] & 0xC0) != 0x80
