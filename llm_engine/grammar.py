"""Structured output: which tokens may come next so that a reply is JSON, either any object
(OpenAI's ``json_object``) or a value a JSON schema describes (``json_schema``).

No torch. A schema compiles (:meth:`JsonSchema.compile`) to a few node kinds: any value, an
object (its properties in the schema's order, required ones never skipped, no others), an
array, a string, a number, an integer, a set of literals (``enum``, ``const``, booleans,
null, as JSON text) and a union (``anyOf``, a list of types). :class:`JsonMatcher` follows a
reply byte by byte through that grammar with a pushdown automaton. A state is an immutable
tuple (open containers, the token being lexed, a whitespace count); where a union or a literal
leaves two readings open, the matcher holds the set of them. So trying a token is computing a
new set, and each ``(states, token)`` is worked out once. The sampler asks
:meth:`JsonMatcher.allows` of candidates in order of likelihood (the most likely for greedy,
rejection for sampling), never of the whole vocabulary: a reply costs a few checks a token.

Once the value is complete, only the end-of-turn token may follow. Runs that would only spend
tokens are cut short: whitespace between tokens (16 bytes in a row), a number's length (32
bytes) and nesting (32 levels). Schema keywords that constrain what this cannot enforce
(``pattern``, ``minimum``, ``format`` ...) are refused when the schema compiles.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

MAX_WHITESPACE = 16
MAX_NUMBER = 32
MAX_DEPTH = 32

_WS = frozenset(b" \t\n\r")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = frozenset(b'"\\/bfnrt')
_QUOTE, _COMMA, _COLON_BYTE = 0x22, 0x2C, 0x3A
_OPEN_OBJECT, _CLOSE_OBJECT, _OPEN_ARRAY, _CLOSE_ARRAY = 0x7B, 0x7D, 0x5B, 0x5D

# node kinds
ANY, OBJECT, ARRAY, STRING, NUMBER, INTEGER, LITERALS, UNION = range(8)
# the node ids every grammar starts with: any value, any object, any array
_ANY_VALUE, _ANY_OBJECT, _ANY_ARRAY = range(3)
# object frame phases: after '{', after ',', inside a key, after a key, before a value, after one
_FIRST_KEY, _NEXT_KEY, _IN_KEY, _AFTER_KEY, _BEFORE_VALUE, _AFTER_VALUE = range(6)
# array frame phases: after '[', after ',', after a value
_FIRST_ITEM, _NEXT_ITEM, _AFTER_ITEM = range(3)
# number sub-states: 0 after '-', 1 a leading 0, 2 integer digits, 3 after '.', 4 fraction
# digits, 5 after 'e', 6 after the exponent's sign, 7 exponent digits
_NUMBER_END = frozenset((1, 2, 4, 7))
# string sub-states: 0 plain, 1 after '\\', 11-14 hex digits of \\uXXXX left (+10),
# 21-23 UTF-8 continuation bytes left (+20)

# (open containers, outermost first; the token being lexed, "start", "done" or None between
# tokens; whitespace bytes in a row)
Frames = tuple[tuple[Any, ...], ...]
State = tuple[Frames, Any, int]
START: State = ((), "start", 0)
DONE: State = ((), "done", 0)
# annotations that constrain nothing, and the keywords this grammar follows
_NOTES = {"title", "description", "default", "examples", "$schema", "$id", "$comment",
          "deprecated", "readOnly", "writeOnly", "strict", "nullable"}  # fmt: skip
_FOLLOWED = {"type", "properties", "required", "additionalProperties", "items", "enum", "const",
             "anyOf", "oneOf", "$ref", "$defs", "definitions", "minItems", "maxItems"}  # fmt: skip


class SchemaError(ValueError):
    """A JSON schema this grammar cannot follow, or not a schema at all."""


@dataclass(frozen=True, slots=True)
class Node:
    kind: int
    # OBJECT: (key as JSON string bytes without quotes, value node, required) in order
    props: tuple[tuple[bytes, int, bool], ...] = ()
    free: int | None = None  # OBJECT: any key allowed, with values of this node
    items: int = 0  # ARRAY
    lo: int = 0  # ARRAY: fewest items
    hi: int | None = None  # ARRAY: most items
    options: tuple[Any, ...] = ()  # LITERALS: JSON texts (bytes); UNION: node ids


def _key_bytes(key: str) -> bytes:
    return json.dumps(key, ensure_ascii=False)[1:-1].encode()


class JsonSchema:
    """A compiled grammar: ``nodes[root]`` is the reply's value. Immutable once built; one
    serves every reply that asks for it."""

    def __init__(self) -> None:
        # the nodes every grammar has: any value, any object, any array
        self.nodes = [Node(ANY), Node(OBJECT, free=_ANY_VALUE), Node(ARRAY, items=_ANY_VALUE)]
        self.root = _ANY_OBJECT
        self._refs: dict[str, int] = {}
        self._defs: dict[str, Any] = {}
        self._lenient = False

    @classmethod
    def any_object(cls) -> JsonSchema:
        """OpenAI's ``json_object``: any JSON object."""
        return cls()

    @classmethod
    def compile(cls, schema: Any, lenient: bool = False) -> JsonSchema:
        """The grammar of ``schema`` (a decoded JSON schema); raises :class:`SchemaError`.
        ``lenient``: keywords it cannot enforce are read as notes instead."""
        g = cls()
        g._lenient = lenient
        if not isinstance(schema, dict):
            raise SchemaError("a JSON schema must be an object")
        g._defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
        g.root = g._node(schema)
        return g

    def _add(self, node: Node) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    def _node(self, s: Any) -> int:
        if s is True or s == {}:
            return _ANY_VALUE
        if not isinstance(s, dict):
            raise SchemaError(f"a schema must be an object or true, got {s!r}")
        if (unknown := sorted(set(s) - _NOTES - _FOLLOWED)) and not self._lenient:
            raise SchemaError(f"unsupported JSON schema keyword(s): {', '.join(unknown)}")
        if "$ref" in s:
            return self._ref(s["$ref"])
        if "const" in s:
            return self._add(Node(LITERALS, options=(_literal(s["const"]),)))
        if "enum" in s:
            if not isinstance(s["enum"], list) or not s["enum"]:
                raise SchemaError("'enum' must be a non-empty array")
            return self._add(Node(LITERALS, options=tuple(_literal(v) for v in s["enum"])))
        for key in ("anyOf", "oneOf"):
            if key in s:
                if not isinstance(s[key], list) or not s[key]:
                    raise SchemaError(f"'{key}' must be a non-empty array")
                return self._add(Node(UNION, options=tuple(self._node(o) for o in s[key])))
        kind = s.get("type", "object" if "properties" in s else None)
        if kind is None:
            return _ANY_VALUE
        if isinstance(kind, list):
            return self._add(Node(UNION, options=tuple(self._node({**s, "type": t}) for t in kind)))
        return self._typed(kind, s)

    def _typed(self, kind: Any, s: dict[str, Any]) -> int:
        if kind == "object":
            return self._object(s)
        if kind == "array":
            lo, hi = s.get("minItems", 0), s.get("maxItems")
            if not isinstance(lo, int) or (hi is not None and (not isinstance(hi, int) or hi < lo)):
                raise SchemaError("'minItems' and 'maxItems' must be integers, min <= max")
            return self._add(Node(ARRAY, items=self._node(s.get("items", True)), lo=lo, hi=hi))
        simple = {"string": Node(STRING), "number": Node(NUMBER), "integer": Node(INTEGER),
                  "boolean": Node(LITERALS, options=(b"true", b"false")),
                  "null": Node(LITERALS, options=(b"null",))}  # fmt: skip
        if kind not in simple:
            raise SchemaError(f"unknown JSON schema type {kind!r}")
        return self._add(simple[kind])

    def _object(self, s: dict[str, Any]) -> int:
        props, required = s.get("properties", {}), s.get("required", [])
        if not isinstance(props, dict) or not isinstance(required, list):
            raise SchemaError("'properties' must be an object and 'required' an array")
        missing = [r for r in required if r not in props]
        if missing and not self._lenient:  # else read as a note, as the other keywords
            raise SchemaError(f"required propert(ies) not in 'properties': {missing}")
        if not props:  # keys of any name, unless no others are allowed
            extra = s.get("additionalProperties", True)
            if extra is False:
                return self._add(Node(OBJECT))
            if extra is True:
                return _ANY_OBJECT
            return self._add(Node(OBJECT, free=self._node(extra)))
        fields = tuple((_key_bytes(k), self._node(v), k in required) for k, v in props.items())
        return self._add(Node(OBJECT, props=fields))

    def _ref(self, ref: Any) -> int:
        if ref in self._refs:
            return self._refs[ref]
        prefix = next((p for p in ("#/$defs/", "#/definitions/") if str(ref).startswith(p)), None)
        if prefix is None or ref[len(prefix) :] not in self._defs:
            raise SchemaError(f"unresolved $ref {ref!r} (only #/$defs/... is followed)")
        node = self._refs[ref] = self._add(Node(ANY))  # placeholder: refs may recurse
        self.nodes[node] = self.nodes[self._node(self._defs[ref[len(prefix) :]])]
        return node

    # --- the automaton ---------------------------------------------------------------------

    def step(self, state: State, b: int) -> list[State]:
        """The states after byte ``b`` (none where the grammar, or a limit above, refuses it)."""
        frames, lex, ws = state
        if lex is None or lex == "start":
            if b in _WS:
                return [(frames, lex, ws + 1)] if ws < MAX_WHITESPACE else []
            if lex == "start":
                return self._begin(self.root, b, ())
            return self._between(frames, b)
        if lex == "done":
            return []
        kind = lex[0]
        if kind == "s":
            return self._string(frames, lex[1], b)
        if kind == "k":
            return self._key(frames, lex[1], b)
        if kind == "l":
            return self._literal(frames, lex[1], lex[2] + bytes((b,)))
        return self._number(frames, lex, b)

    def _between(self, frames: Frames, b: int) -> list[State]:
        top, outer = frames[-1], frames[:-1]
        if top[0] == "a":
            _, node_id, count, phase = top
            n = self.nodes[node_id]
            if phase == _AFTER_ITEM:
                if b == _COMMA and (n.hi is None or count < n.hi):
                    return [((*outer, ("a", node_id, count, _NEXT_ITEM)), None, 0)]
                return [_close(outer)] if b == _CLOSE_ARRAY and count >= n.lo else []
            if b == _CLOSE_ARRAY and phase == _FIRST_ITEM and n.lo == 0:
                return [_close(outer)]
            if n.hi is not None and count >= n.hi:
                return []
            return self._begin(n.items, b, (*outer, ("a", node_id, count + 1, _AFTER_ITEM)))
        _, node_id, done, phase, pending = top
        n = self.nodes[node_id]
        if phase in (_FIRST_KEY, _NEXT_KEY):
            if b == _CLOSE_OBJECT and phase == _FIRST_KEY and _can_end(n, done):
                return [_close(outer)]
            if b != _QUOTE or not (n.free is not None or _candidates(n, done)):
                return []
            lex = ("s", 0) if n.free is not None else ("k", b"")
            return [((*outer, ("o", node_id, done, _IN_KEY, -1)), lex, 0)]
        if phase == _AFTER_KEY:
            if b != _COLON_BYTE:
                return []
            return [((*outer, ("o", node_id, done, _BEFORE_VALUE, pending)), None, 0)]
        if phase == _BEFORE_VALUE:
            return self._begin(pending, b, (*outer, ("o", node_id, done, _AFTER_VALUE, -1)))
        if b == _COMMA and (n.free is not None or done < len(n.props)):
            return [((*outer, ("o", node_id, done, _NEXT_KEY, -1)), None, 0)]
        return [_close(outer)] if b == _CLOSE_OBJECT and _can_end(n, done) else []

    def _begin(self, node_id: int, b: int, frames: Frames) -> list[State]:
        """A value of node ``node_id`` starting with byte ``b``, inside ``frames``."""
        n = self.nodes[node_id]
        if n.kind == UNION:
            return [s for option in n.options for s in self._begin(option, b, frames)]
        if n.kind == ANY:  # an object, an array, or a scalar of any kind
            containers = [
                s for any_id in (_ANY_OBJECT, _ANY_ARRAY) for s in self._begin(any_id, b, frames)
            ]
            literals = (b"true", b"false", b"null")
            return containers + [
                s
                for kind in (STRING, NUMBER, LITERALS)
                for s in self._scalar(kind, b, frames, literals)
            ]
        if n.kind in (OBJECT, ARRAY):
            opening = _OPEN_OBJECT if n.kind == OBJECT else _OPEN_ARRAY
            if b != opening or len(frames) >= MAX_DEPTH:
                return []
            first = ("o", node_id, 0, _FIRST_KEY, -1) if n.kind == OBJECT else ("a", node_id, 0, 0)
            return [((*frames, first), None, 0)]
        return self._scalar(n.kind, b, frames, n.options)

    def _scalar(self, kind: int, b: int, frames: Frames, literals: tuple[Any, ...]) -> list[State]:
        if kind == STRING:
            return [(frames, ("s", 0), 0)] if b == _QUOTE else []
        if kind in (NUMBER, INTEGER):
            if b != 0x2D and b not in _DIGITS:
                return []
            sub = 0 if b == 0x2D else 1 if b == 0x30 else 2
            return [(frames, ("n", sub, 1, kind == INTEGER), 0)]
        return self._literal(frames, tuple(literals), bytes((b,)))

    def _literal(self, frames: Frames, options: tuple[bytes, ...], typed: bytes) -> list[State]:
        """``typed`` so far of one of ``options``: lexing on, or the value complete (or both,
        where one option extends another)."""
        options = tuple(o for o in options if o.startswith(typed))
        out: list[State] = []
        if any(len(o) > len(typed) for o in options):
            out.append((frames, ("l", options, typed), 0))
        if typed in options:
            out.append(_value_done(frames))
        return out

    def _string(self, frames: Frames, sub: int, b: int) -> list[State]:
        if sub == 0:
            if b == _QUOTE:  # a free object's key, or a string value, ends
                top = frames[-1] if frames else None
                if top is not None and top[0] == "o" and top[3] == _IN_KEY:
                    n = self.nodes[top[1]]
                    return [((*frames[:-1], ("o", top[1], top[2], _AFTER_KEY, n.free)), None, 0)]
                return [_value_done(frames)]
            if b == 0x5C:
                return [(frames, ("s", 1), 0)]
            if b < 0x20:
                return []  # control characters must be escaped
            if b < 0x80:
                return [(frames, ("s", 0), 0)]
            follow = _utf8_continuations(b)
            return [(frames, ("s", 20 + follow), 0)] if follow else []
        if sub == 1:
            if b == 0x75:  # 'u'
                return [(frames, ("s", 14), 0)]
            return [(frames, ("s", 0), 0)] if b in _ESCAPES else []
        if sub > 20:  # a UTF-8 continuation byte
            ok, left = 0x80 <= b <= 0xBF, sub - 1 if sub > 21 else 0
        else:  # a hex digit of \\uXXXX
            ok, left = b in _HEX, sub - 1 if sub > 11 else 0
        return [(frames, ("s", left), 0)] if ok else []

    def _key(self, frames: Frames, typed: bytes, b: int) -> list[State]:
        _, node_id, done, _, _ = frames[-1]
        n = self.nodes[node_id]
        options = _candidates(n, done)
        if b == _QUOTE and (len(typed) - len(typed.rstrip(b"\\"))) % 2 == 0:  # not escaped
            for i, (key, value, _) in options:
                if key == typed:
                    frame = ("o", node_id, i + 1, _AFTER_KEY, value)
                    return [((*frames[:-1], frame), None, 0)]
            return []
        typed += bytes((b,))
        return (
            [(frames, ("k", typed), 0)]
            if any(k.startswith(typed) for _, (k, _, _) in options)
            else []
        )

    def _number(self, frames: Frames, lex: tuple[Any, ...], b: int) -> list[State]:
        _, sub, length, integer = lex
        nxt = _number_step(sub, b, integer)
        if nxt is not None:
            return [(frames, ("n", nxt, length + 1, integer), 0)] if length < MAX_NUMBER else []
        if sub not in _NUMBER_END:
            return []
        return self.step(_value_done(frames), b)  # the number ended: ``b`` is what follows


def _number_step(sub: int, b: int, integer: bool) -> int | None:
    digit = b in _DIGITS
    if sub == 0:
        return 1 if b == 0x30 else 2 if digit else None
    if sub in (1, 2, 4):
        if digit and sub != 1:
            return sub
        if integer:
            return None
        if b == 0x2E and sub != 4:  # '.'
            return 3
        return 5 if b in (0x65, 0x45) else None  # 'e', 'E'
    if sub == 3:
        return 4 if digit else None
    if sub == 5:
        return 6 if b in (0x2B, 0x2D) else 7 if digit else None
    return 7 if digit else None  # 6, 7


def _utf8_continuations(lead: int) -> int:
    """How many continuation bytes follow a UTF-8 lead byte (0: not a lead byte)."""
    if 0xC2 <= lead <= 0xDF:
        return 1
    if 0xE0 <= lead <= 0xEF:
        return 2
    return 3 if 0xF0 <= lead <= 0xF4 else 0


def _literal(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _candidates(n: Node, done: int) -> list[tuple[int, tuple[bytes, int, bool]]]:
    """The properties that may come next: in order from ``done``, up to the first required."""
    out = []
    for i in range(done, len(n.props)):
        out.append((i, n.props[i]))
        if n.props[i][2]:
            break
    return out


def _can_end(n: Node, done: int) -> bool:
    return n.free is not None or not any(required for _, _, required in n.props[done:])


def _close(outer: Frames) -> State:
    return (outer, None, 0) if outer else DONE


def _value_done(frames: Frames) -> State:
    return (frames, None, 0) if frames else DONE


States = frozenset[State]


def feed(grammar: JsonSchema, states: Iterable[State], data: bytes) -> States | None:
    """The states after ``data``, or None where it leaves the grammar."""
    current = frozenset(states)
    for b in data:
        current = frozenset(s for state in current for s in grammar.step(state, b))
        if not current:
            return None
    return current


def is_complete(states: States | None) -> bool:
    """Whether ``states`` hold a whole value."""
    return states is not None and DONE in states


class JsonMatcher:
    """One reply's progress through ``grammar`` (any object by default): which tokens may
    come next (:meth:`allows`), and taking one (:meth:`advance`). ``token_bytes`` gives a
    token's bytes; ``end_ids`` are the end-of-turn tokens, allowed once the value is complete,
    and only then; ``never`` are tokens never allowed (the template's special tokens, whatever
    their text)."""

    _CACHE_LIMIT = 1 << 16

    def __init__(
        self,
        token_bytes: Callable[[int], bytes],
        end_ids: Collection[int],
        never: Collection[int] = (),
        grammar: JsonSchema | None = None,
    ) -> None:
        self.grammar = grammar or JsonSchema.any_object()
        self._token_bytes = token_bytes
        self._end_ids = frozenset(end_ids)
        self._never = frozenset(never) - self._end_ids
        self.states: States = frozenset((START,))
        self._next: dict[tuple[States, int], States | None] = {}

    @property
    def complete(self) -> bool:
        """Whether the reply so far is a whole value (then only the end may follow)."""
        return is_complete(self.states)

    def _after(self, token: int) -> States | None:
        key = (self.states, token)
        if key not in self._next:
            if len(self._next) >= self._CACHE_LIMIT:
                self._next.clear()
            data = self._token_bytes(token)
            self._next[key] = feed(self.grammar, self.states, data) if data else None
        return self._next[key]

    def allows(self, token: int) -> bool:
        if token in self._end_ids or self.complete:
            return token in self._end_ids and self.complete
        return token not in self._never and self._after(token) is not None

    def advance(self, token: int) -> bool:
        """Take ``token``, one :meth:`allows` accepted. Any other (a caller's bug) is taken as
        the end: only the end-of-turn token is allowed after it, and False is returned."""
        if token in self._end_ids:
            return True
        nxt = self._after(token)
        self.states = nxt if nxt is not None else frozenset((DONE,))
        return nxt is not None
