"""JSON mode: which tokens may come next so that a reply is one JSON object.

No torch. :class:`JsonMatcher` follows a reply byte by byte through JSON's grammar (RFC 8259)
with a pushdown automaton whose state is an immutable tuple, so trying a token is computing a
new tuple, and each ``(state, token)`` is worked out once. The sampler asks
:meth:`JsonMatcher.allows` of candidates in order of likelihood (the most likely for greedy,
rejection for sampling), never of the whole vocabulary: a reply costs a few checks a token.

The reply is an object at the top level (OpenAI's ``json_object``); once it closes, only the
end-of-turn token may follow. Runs that would only spend tokens are cut short: whitespace
between tokens (16 bytes in a row), a number's length (32 bytes) and nesting (32 levels).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import cast

# modes
_START, _VALUE, _ARRAY_FIRST, _OBJECT_FIRST, _KEY, _COLON, _AFTER, _STRING, _NUMBER, _LITERAL = (
    range(10)
)
_DONE = 10
_BETWEEN = frozenset((_START, _VALUE, _ARRAY_FIRST, _OBJECT_FIRST, _KEY, _COLON, _AFTER))
MAX_WHITESPACE = 16
MAX_NUMBER = 32
MAX_DEPTH = 32

_WS = frozenset(b" \t\n\r")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = frozenset(b'"\\/bfnrt')
# number sub-states: 0 after '-', 1 a leading 0, 2 integer digits, 3 after '.', 4 fraction
# digits, 5 after 'e', 6 after the exponent's sign, 7 exponent digits
_NUMBER_END = frozenset((1, 2, 4, 7))
_LITERALS = {ord("t"): b"rue", ord("f"): b"alse", ord("n"): b"ull"}
# string sub-states: 0 plain, 1 after '\\', 11-14 hex digits of \\uXXXX left (+10),
# 21-23 UTF-8 continuation bytes left (+20)

# (stack of open containers "o"/"a", mode, sub-state, run length)
State = tuple[str, int, object, int]
START: State = ("", _START, 0, 0)
_END: State = ("", _DONE, 0, 0)


def _number_step(sub: int, b: int) -> int | None:
    digit = b in _DIGITS
    if sub == 0:
        return 1 if b == 0x30 else 2 if digit else None
    if sub in (1, 2, 4):
        if digit and sub != 1:
            return sub
        if b == 0x2E and sub != 4:  # '.'
            return 3
        return 5 if b in (0x65, 0x45) else None  # 'e', 'E'
    if sub == 3:
        return 4 if digit else None
    if sub == 5:
        return 6 if b in (0x2B, 0x2D) else 7 if digit else None
    return 7 if digit else None  # 6, 7


def _close(stack: str) -> State:
    stack = stack[:-1]
    return (stack, _AFTER, 0, 0) if stack else _END


def _value(stack: str, b: int) -> State | None:
    """A value starting with byte ``b``."""
    if b in (0x7B, 0x5B):  # '{', '['
        if len(stack) >= MAX_DEPTH:
            return None
        return (
            (stack + "o", _OBJECT_FIRST, 0, 0) if b == 0x7B else (stack + "a", _ARRAY_FIRST, 0, 0)
        )
    if b == 0x22:
        return (stack, _STRING, (False, 0), 0)
    if b == 0x2D or b in _DIGITS:
        return (stack, _NUMBER, 0 if b == 0x2D else 1 if b == 0x30 else 2, 1)
    if b in _LITERALS:
        return (stack, _LITERAL, _LITERALS[b], 0)
    return None


def _string(state: State, b: int) -> State | None:
    stack, _, sub, _ = state
    key, inner = cast(tuple[bool, int], sub)
    if inner == 0:
        if b == 0x22:  # the string ends
            return (stack, _COLON, 0, 0) if key else (stack, _AFTER, 0, 0)
        if b == 0x5C:
            return (stack, _STRING, (key, 1), 0)
        if b < 0x20:
            return None  # control characters must be escaped
        if b < 0x80:
            return state
        n = 1 if 0xC2 <= b <= 0xDF else 2 if 0xE0 <= b <= 0xEF else 3 if 0xF0 <= b <= 0xF4 else 0
        return (stack, _STRING, (key, 20 + n), 0) if n else None
    if inner == 1:
        if b == 0x75:  # 'u'
            return (stack, _STRING, (key, 14), 0)
        return (stack, _STRING, (key, 0), 0) if b in _ESCAPES else None
    if inner > 20:  # a UTF-8 continuation byte
        ok, left = 0x80 <= b <= 0xBF, inner - 1 if inner > 21 else 0
    else:  # a hex digit of \uXXXX
        ok, left = b in _HEX, inner - 1 if inner > 11 else 0
    return (stack, _STRING, (key, left), 0) if ok else None


def step(state: State, b: int) -> State | None:
    """The state after byte ``b``, or None where JSON (or a limit above) does not allow it."""
    stack, mode, sub, run = state
    if mode == _STRING:
        return _string(state, b)
    if mode == _NUMBER:
        nxt = _number_step(cast(int, sub), b)
        if nxt is not None:
            return (stack, _NUMBER, nxt, run + 1) if run < MAX_NUMBER else None
        return step((stack, _AFTER, 0, 0), b) if sub in _NUMBER_END else None
    if mode == _LITERAL:
        rest = sub
        assert isinstance(rest, bytes)
        if b != rest[0]:
            return None
        return (stack, _LITERAL, rest[1:], 0) if len(rest) > 1 else (stack, _AFTER, 0, 0)
    if b in _WS:
        return (stack, mode, sub, run + 1) if mode in _BETWEEN and run < MAX_WHITESPACE else None
    if mode == _START:
        return ("o", _OBJECT_FIRST, 0, 0) if b == 0x7B else None
    if mode in (_VALUE, _ARRAY_FIRST):
        if b == 0x5D and mode == _ARRAY_FIRST:  # ']': an empty array
            return _close(stack)
        return _value(stack, b)
    if mode in (_OBJECT_FIRST, _KEY):
        if b == 0x7D and mode == _OBJECT_FIRST:  # '}': an empty object
            return _close(stack)
        return (stack, _STRING, (True, 0), 0) if b == 0x22 else None
    if mode == _COLON:
        return (stack, _VALUE, 0, 0) if b == 0x3A else None
    if mode == _AFTER:
        top = stack[-1]
        if b == 0x2C:  # ','
            return (stack, _KEY if top == "o" else _VALUE, 0, 0)
        if (b == 0x7D and top == "o") or (b == 0x5D and top == "a"):
            return _close(stack)
    return None  # _DONE: nothing but the end-of-turn token


def is_complete(state: State | None) -> bool:
    """Whether ``state`` closed the top-level object."""
    return state is not None and state[1] == _DONE


def feed(state: State, data: bytes) -> State | None:
    """The state after ``data``, or None where it leaves JSON."""
    for b in data:
        nxt = step(state, b)
        if nxt is None:
            return None
        state = nxt
    return state


class JsonMatcher:
    """One reply's progress through JSON: which tokens may come next (:meth:`allows`), and
    taking one (:meth:`advance`). ``token_bytes`` gives a token's bytes; ``end_ids`` are the
    end-of-turn tokens, allowed once the object is closed, and only then; ``never`` are
    tokens never allowed (the template's special tokens, whatever their text)."""

    _CACHE_LIMIT = 1 << 16

    def __init__(
        self,
        token_bytes: Callable[[int], bytes],
        end_ids: Collection[int],
        never: Collection[int] = (),
    ) -> None:
        self._token_bytes = token_bytes
        self._end_ids = frozenset(end_ids)
        self._never = frozenset(never) - self._end_ids
        self.state = START
        self._next: dict[tuple[State, int], State | None] = {}

    @property
    def complete(self) -> bool:
        """Whether the reply so far is a whole JSON object."""
        return is_complete(self.state)

    def _after(self, token: int) -> State | None:
        key = (self.state, token)
        if key not in self._next:
            if len(self._next) >= self._CACHE_LIMIT:
                self._next.clear()
            data = self._token_bytes(token)
            self._next[key] = feed(self.state, data) if data else None
        return self._next[key]

    def allows(self, token: int) -> bool:
        if token in self._end_ids:
            return self.complete
        return token not in self._never and self._after(token) is not None

    def advance(self, token: int) -> bool:
        """Take ``token``, one :meth:`allows` accepted. Any other (a caller's bug) is taken as
        the end: only the end-of-turn token is allowed after it, and False is returned."""
        if token in self._end_ids:
            return True
        nxt = self._after(token)
        self.state = nxt if nxt is not None else _END
        return nxt is not None
