"""Structured outputs' grammar (llm_engine.grammar) against references: Python's JSON parser
(and a seeded fuzz of it), Pydantic's validation of a schema's instances, SmolLM2's real tokens;
and the restricted sampler that asks it."""

from __future__ import annotations

import contextlib
import enum
import json
import random

import pydantic
import pytest
import torch

from llm_engine.config import SamplingParams
from llm_engine.errors import InvalidRequest
from llm_engine.grammar import (
    MAX_DEPTH,
    MAX_WHITESPACE,
    START,
    JsonMatcher,
    JsonSchema,
    SchemaError,
    feed,
    is_complete,
)
from llm_engine.sampling import make_generator, sample_allowed_row

OBJECT = JsonSchema.any_object()
OBJECTS = [
    "{}",
    ' {"a": 1}',
    '{"a": [1, -0, 2.5e-3, 1E+2, true, false, null, [], {}], "b": {"c": "d"}}',
    '{"esc": "quote \\" backslash \\\\ slash \\/ \\b\\f\\n\\r\\t \\u00e9\\uD83D\\uDE00"}',
    '{"unicode": "héllo wörld ✓ 😀", "emoji key 🎉": 0.5}',
    '{\n    "pretty": [\n        1,\n        2\n    ]\n}',
]
NOT_OBJECTS = [
    "",
    "[1, 2]",
    '"text"',
    "{'single': 1}",
    '{"a" 1}',
    '{"a": 01}',
    '{"a": 1.}',
    '{"a": .5}',
    '{"a": 1,}',
    '{"a": tru}',
    '{"a": "tab\tinside"}',
    '{"a": "\\x"}',
    '{"a": "\\u12G4"}',
    "{} {}",
    '{"a": 1}}',
]


def _complete(data: bytes, grammar: JsonSchema = OBJECT) -> bool:
    return is_complete(feed(grammar, [START], data))


@pytest.mark.parametrize("text", OBJECTS)
def test_json_objects_are_followed_to_their_end(text):
    assert isinstance(json.loads(text), dict)  # the reference agrees
    data = text.encode()
    assert _complete(data)
    for i in range(1, len(data)):  # every prefix may go on, and none is a whole object yet
        state = feed(OBJECT, [START], data[:i])
        assert state is not None and not _complete(data[:i])


@pytest.mark.parametrize("text", NOT_OBJECTS)
def test_anything_else_is_refused(text):
    with contextlib.suppress(ValueError):  # the reference agrees: not JSON, or not an object
        assert not isinstance(json.loads(text), dict)
    assert not _complete(text.encode())


def test_runs_that_only_spend_tokens_are_cut_short():
    def goes_on(data: bytes) -> bool:
        return feed(OBJECT, [START], data) is not None

    assert goes_on(b"{" + b" " * MAX_WHITESPACE)
    assert not goes_on(b"{" + b" " * (MAX_WHITESPACE + 1))
    assert goes_on(b'{"a": ' + b"[" * (MAX_DEPTH - 1))
    assert not goes_on(b'{"a": ' + b"[" * MAX_DEPTH)
    assert not goes_on(b'{"a": 1' + b"1" * 40)
    assert not goes_on(b"\xff") and goes_on(b'{"\xc3')
    assert not goes_on(b'{"\xc3"')  # a UTF-8 sequence cut by the quote


def test_matcher_over_real_tokens(smol_engine):
    """A JSON reply as SmolLM2 tokenizes it: every token allowed in turn, the end-of-turn
    token only after the object closes, special tokens never (even inside a string)."""
    tok = smol_engine.tokenizer
    end = min(tok.eos_ids)
    text = '{"name": "Ada Lovelace", "born": 1815, "notes": ["math", "code"], "ok": true}'
    matcher = JsonMatcher(tok.token_bytes, tok.eos_ids, tok.special_ids)
    special = sorted(tok.special_ids - tok.eos_ids)
    assert special  # SmolLM2 has <|im_start|> and friends
    for t in tok.encode(text):
        assert not matcher.allows(end) and not any(matcher.allows(s) for s in special)
        assert matcher.allows(t)
        matcher.advance(t)
    assert matcher.complete and matcher.allows(end)
    assert not any(matcher.allows(t) for t in tok.encode(' {"x": 1}'))
    stray = JsonMatcher(tok.token_bytes, tok.eos_ids)  # a token never allowed: the reply ends
    assert not stray.advance(tok.encode("hello")[0]) and stray.allows(end)


def test_the_restricted_sampler_draws_only_allowed_tokens_in_their_proportions():
    logits = torch.zeros(8)
    logits[0] = 5.0  # the model's favourite, not allowed
    allowed = {2, 5, 6}.__contains__
    greedy = SamplingParams(temperature=0)
    assert sample_allowed_row(logits.clone(), greedy, [], None, 0, allowed) in {2, 5, 6}
    logits[5] = 1.0
    assert sample_allowed_row(logits.clone(), greedy, [], None, 0, allowed) == 5
    params = SamplingParams(temperature=1.0, seed=3)
    gen = make_generator(params)
    counts = torch.zeros(8)
    for _ in range(3000):
        counts[sample_allowed_row(logits.clone(), params, [], gen, 0, allowed)] += 1
    assert counts[[0, 1, 3, 4, 7]].sum() == 0
    # among the allowed, softmax's proportions: e^1 : 1 : 1
    share = counts[5] / counts.sum()
    expected = torch.e / (torch.e + 2)
    assert abs(float(share) - expected) < 0.03


def test_json_and_ignore_eos_do_not_mix():
    with pytest.raises(InvalidRequest, match="ignore_eos"):
        SamplingParams(json_schema=OBJECT, ignore_eos=True)
    assert not SamplingParams(temperature=0, json_schema=OBJECT).plain_greedy


class _Kind(enum.StrEnum):
    CAT = "cat"
    DOG = "dog"


class _Owner(pydantic.BaseModel):
    name: str
    phones: list[str] = pydantic.Field(max_length=2)


class _Pet(pydantic.BaseModel):
    name: str
    age: int
    weight: float | None
    kind: _Kind
    vaccinated: bool
    owner: _Owner | None = None
    tags: dict[str, int] = {}


PET = JsonSchema.compile(_Pet.model_json_schema())  # $defs, anyOf, enum, optional fields


@pytest.mark.parametrize(
    "pet",
    [
        _Pet(name="Tom", age=3, weight=4.5, kind=_Kind.CAT, vaccinated=True),
        _Pet(
            name='Rex "the" 🐕',
            age=-1,
            weight=None,
            kind=_Kind.DOG,
            vaccinated=False,
            owner=_Owner(name="Ann", phones=["1", "2"]),
            tags={"a": 1, 'b"': 2},
        ),
    ],
)
def test_a_schemas_instances_are_followed_to_their_end(pet):
    for data in (pet.model_dump_json(), json.dumps(pet.model_dump(mode="json"), indent=2)):
        assert _complete(data.encode(), PET), data
        _Pet.model_validate_json(data, strict=True)  # the reference agrees


@pytest.mark.parametrize(
    ("data", "stricter"),
    [
        ('{"name": "Tom"}', False),  # required fields missing
        ('{"name": "Tom", "age": 3.5, "weight": null, "kind": "cat", "vaccinated": true}', False),
        ('{"name": "Tom", "age": 3, "weight": "4", "kind": "cat", "vaccinated": true}', False),
        ('{"name": "Tom", "age": 3, "weight": null, "kind": "cow", "vaccinated": true}', False),
        ('{"name": "Tom", "age": 3, "weight": null, "kind": "cat", "vaccinated": 1}', False),
        ('{"name": "Tom", "age": 3, "weight": null, "kind": "cat", "vaccinated": true,'
         ' "owner": {"name": "Ann", "phones": ["1", "2", "3"]}}', False),  # maxItems
        # what Parley never writes, though the schema allows it: properties out of the
        # schema's order, and ones it does not name
        ('{"age": 3, "name": "Tom", "weight": null, "kind": "cat", "vaccinated": true}', True),
        ('{"name": "Tom", "age": 3, "weight": null, "kind": "cat", "vaccinated": true, "x": 1}',
         True),
    ],
)  # fmt: skip
def test_what_a_schema_does_not_describe_is_refused(data, stricter):
    if stricter:
        _Pet.model_validate_json(data, strict=True)
    else:
        with pytest.raises(pydantic.ValidationError):  # the reference agrees
            _Pet.model_validate_json(data, strict=True)
    assert not _complete(data.encode(), PET)


def test_recursive_and_literal_schemas():
    tree = JsonSchema.compile({
        "$defs": {"Node": {"type": "object", "properties": {
            "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
            "required": ["v", "kids"]}},
        "$ref": "#/$defs/Node",
    })  # fmt: skip
    assert _complete(b'{"v": 1, "kids": [{"v": 2, "kids": []}, {"v": 3, "kids": []}]}', tree)
    assert not _complete(b'{"v": 1, "kids": [{"v": 2}]}', tree)
    # one option extends another: both readings stay open until a byte decides
    pick = JsonSchema.compile({"type": "object", "properties": {"n": {"enum": [1, 12, "1"]}}})
    for ok in (b'{"n": 1}', b'{"n": 12}', b'{"n": "1"}', b"{}"):
        assert _complete(ok, pick), ok
    assert not _complete(b'{"n": 123}', pick) and not _complete(b'{"n": 2}', pick)


@pytest.mark.parametrize(
    ("schema", "word"),
    [
        ({"type": "string", "pattern": "^a"}, "pattern"),
        ({"type": "integer", "minimum": 0}, "minimum"),
        ({"type": "object", "properties": {"a": {"format": "email"}}}, "format"),
        ({"$ref": "#/$defs/Missing"}, "Missing"),
        ({"type": "tuple"}, "tuple"),
        ({"type": "object", "properties": {}, "required": ["a"]}, "required"),
        ([], "object"),
    ],
)
def test_schemas_it_cannot_follow_are_refused_by_name(schema, word):
    with pytest.raises(SchemaError, match=word):
        JsonSchema.compile(schema)


def _random_value(rng: random.Random, depth: int) -> object:
    kind = rng.choice(["obj", "arr", "str", "int", "float", "lit"] if depth < 4 else ["str", "int"])
    if kind == "obj":
        return {_random_text(rng): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    if kind == "arr":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "str":
        return _random_text(rng)
    if kind == "int":
        return rng.randint(-(10**9), 10**9)
    if kind == "float":
        return rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-8, 8)
    return rng.choice([True, False, None])


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice('ab "\\/\n\té😀\x01') for _ in range(rng.randint(0, 6)))


def _is_object(text: str) -> bool:
    def refuse(name: str) -> None:
        raise ValueError(name)  # NaN and Infinity: Python's extension, not JSON

    try:
        return isinstance(json.loads(text, parse_constant=refuse), dict)
    except ValueError:
        return False


def test_random_documents_and_their_mutations_agree_with_pythons_parser():
    """Seeded fuzz: objects as json.dumps writes them (compact, spaced, indented, escaped or
    not) are whole objects to the grammar; ASCII mutations of them are exactly when Python's
    parser says they are still objects."""
    rng = random.Random(7)
    for _ in range(150):
        value = {_random_text(rng): _random_value(rng, 1) for _ in range(rng.randint(0, 4))}
        style = rng.choice([{}, {"indent": 2}, {"separators": (",", ":")}])
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5, **style)
        assert _complete(text.encode()), text
        ascii_at = [i for i, ch in enumerate(text) if ord(ch) < 128]
        for _ in range(6):
            i = rng.choice(ascii_at)
            mutated = text[:i] + rng.choice('{}[]":,0-.eE+ atfn\\u') + text[i + 1 :]
            assert _complete(mutated.encode()) == _is_object(mutated), mutated
