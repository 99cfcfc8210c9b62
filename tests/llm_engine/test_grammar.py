"""JSON mode's grammar (llm_engine.grammar) against Python's own JSON parser, through bytes
and through SmolLM2's real tokens, and the restricted sampler that asks it."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from llm_engine.config import SamplingParams
from llm_engine.errors import InvalidRequest
from llm_engine.grammar import (
    MAX_DEPTH,
    MAX_WHITESPACE,
    START,
    JsonMatcher,
    feed,
    is_complete,
)
from llm_engine.sampling import make_generator, sample_allowed_row

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


def _complete(data: bytes) -> bool:
    return is_complete(feed(START, data))


@pytest.mark.parametrize("text", OBJECTS)
def test_json_objects_are_followed_to_their_end(text):
    assert isinstance(json.loads(text), dict)  # the reference agrees
    data = text.encode()
    assert _complete(data)
    for i in range(1, len(data)):  # every prefix may go on, and none is a whole object yet
        state = feed(START, data[:i])
        assert state is not None and not _complete(data[:i])


@pytest.mark.parametrize("text", NOT_OBJECTS)
def test_anything_else_is_refused(text):
    with contextlib.suppress(ValueError):  # the reference agrees: not JSON, or not an object
        assert not isinstance(json.loads(text), dict)
    assert not _complete(text.encode())


def test_runs_that_only_spend_tokens_are_cut_short():
    assert feed(START, b"{" + b" " * MAX_WHITESPACE) is not None
    assert feed(START, b"{" + b" " * (MAX_WHITESPACE + 1)) is None
    assert feed(START, b'{"a": ' + b"[" * (MAX_DEPTH - 1)) is not None
    assert feed(START, b'{"a": ' + b"[" * MAX_DEPTH) is None
    assert feed(START, b'{"a": 1' + b"1" * 40) is None
    assert feed(START, b"\xff") is None and feed(START, b'{"\xc3') is not None
    assert feed(START, b'{"\xc3"') is None  # a UTF-8 sequence cut by the quote


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
        SamplingParams(json_object=True, ignore_eos=True)
    assert not SamplingParams(temperature=0, json_object=True).plain_greedy
