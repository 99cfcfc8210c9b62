"""Streaming detokenization, stop strings, chat template rendering, transcript bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_engine.errors import InvalidRequest
from llm_engine.history import History
from llm_engine.tokenizer import Message, StreamDecoder, Tokenizer, validate_messages


@pytest.fixture(scope="module")
def tok(smol_dir: Path) -> Tokenizer:
    return Tokenizer(
        (smol_dir / "tokenizer.json").read_text(),
        json.loads((smol_dir / "tokenizer_config.json").read_text()),
    )


def test_stream_decoder_never_splits_utf8() -> None:
    data = "a🤖é".encode()
    dec = StreamDecoder()
    out = [dec.feed(data[i : i + 1]) for i in range(len(data))]
    assert out == ["a", "", "", "", "🤖", "", "é"]
    assert dec.flush() == ""


def test_stream_decoder_drops_incomplete_tail_at_end() -> None:
    dec = StreamDecoder()
    assert dec.feed(b"ok\xf0\x9f") == "ok"
    assert dec.flush() == ""


def test_stream_decoder_invalid_bytes_become_replacement() -> None:
    dec = StreamDecoder()
    assert dec.feed(b"a\xffb") == "a\ufffdb"


def test_stop_string_across_tokens_is_held_back_and_cut() -> None:
    dec = StreamDecoder(stop=("END",))
    assert dec.feed(b"hello E") == "hello "
    assert dec.feed(b"N") == ""
    assert dec.feed(b"D more") == ""
    assert dec.stopped


def test_held_text_released_when_not_a_stop() -> None:
    dec = StreamDecoder(stop=("END",))
    assert dec.feed(b"so E") == "so "
    assert dec.feed(b"at") == "Eat"
    assert dec.flush() == ""


def test_token_bytes_roundtrip_multibyte(tok: Tokenizer) -> None:
    text = "naïve 日本語 🤖 <|im_end|>"
    ids = tok.encode(text)
    assert tok.decode_bytes(ids) == text.encode()
    dec = StreamDecoder()
    assert "".join(dec.feed(tok.token_bytes(i)) for i in ids) + dec.flush() == text


def test_validate_messages_errors() -> None:
    with pytest.raises(InvalidRequest, match="non-empty"):
        validate_messages([])
    with pytest.raises(InvalidRequest, match="role"):
        validate_messages([{"content": "x"}])
    with pytest.raises(InvalidRequest, match="UTF-8"):
        validate_messages([{"role": "user", "content": b"\xff\xfe"}])
    with pytest.raises(InvalidRequest, match="UTF-8"):
        validate_messages([{"role": "user", "content": "bad \udc80 surrogate"}])
    assert validate_messages({"role": "user", "content": b"caf\xc3\xa9"})[0]["content"] == "café"


def _history(tok: Tokenizer) -> History:
    return History(tok.render)


def _apply(h: History, tok: Tokenizer, plan_text: str, keep: int) -> None:
    h.truncate(keep)
    h.add_tokens(tok.encode(plan_text), tok.token_bytes)


def test_history_appends_only_new_text(tok: Tokenizer) -> None:
    h = _history(tok)
    m1 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    plan = h.plan_messages(m1, open_last=False)
    assert plan.keep == 0
    _apply(h, tok, plan.text, plan.keep)
    h.add_messages(m1, open_last=False)
    n = len(h.tokens)
    plan = h.plan_generation_prompt()
    assert plan.keep == n and plan.text == "<|im_start|>assistant\n"
    _apply(h, tok, plan.text, plan.keep)
    h.begin_reply()
    h.add_tokens(tok.encode("Hello!") + tok.encode("<|im_end|>"), tok.token_bytes)
    h.update_reply(closed=True, end_token_bytes=len(b"<|im_end|>"))
    assert h.messages[-1] == {"role": "assistant", "content": "Hello!"}
    before = list(h.tokens)
    plan = h.plan_messages([{"role": "user", "content": "Again"}], open_last=False)
    assert plan.keep == len(before)  # nothing re-tokenized
    assert plan.text == "\n<|im_start|>user\nAgain<|im_end|>\n"


def test_history_truncate_inside_reply_keeps_heard_words(tok: Tokenizer) -> None:
    h = _history(tok)
    m = [{"role": "user", "content": "Hi"}]
    plan = h.plan_messages(m, open_last=False)
    _apply(h, tok, plan.text, plan.keep)
    h.add_messages(m, open_last=False)
    _apply(h, tok, h.plan_generation_prompt().text, len(h.tokens))
    h.begin_reply()
    start = len(h.tokens)
    h.add_tokens(tok.encode("One two three four"), tok.token_bytes)
    h.update_reply(closed=False)
    h.truncate(start + 2)  # the caller heard "One two"
    assert h.messages[-1] == {"role": "assistant", "content": "One two"}
    assert h.open_reply
    plan = h.plan_messages([{"role": "user", "content": "Stop"}], open_last=False)
    assert plan.keep == start + 2
    assert plan.text.startswith("<|im_end|>\n<|im_start|>user\nStop")


def test_history_partial_message_then_final(tok: Tokenizer) -> None:
    h = _history(tok)
    partial = [{"role": "user", "content": "What is the"}]
    plan = h.plan_messages(partial, open_last=True)
    assert plan.text.endswith("user\nWhat is the")
    _apply(h, tok, plan.text, plan.keep)
    h.add_messages(partial, open_last=True)
    mark = len(h.tokens) - len(tok.encode("What is the"))
    h.truncate(mark)  # the transcript changed: roll the partial words back
    final = [{"role": "user", "content": "What is the time?"}]
    plan = h.plan_messages(final, open_last=False)
    assert plan.keep == mark and plan.text == "What is the time?<|im_end|>\n"


def test_history_partial_superseded_without_truncate(tok: Tokenizer) -> None:
    h = _history(tok)
    partial = [{"role": "user", "content": "What is the"}]
    plan = h.plan_messages(partial, open_last=True)
    _apply(h, tok, plan.text, plan.keep)
    h.add_messages(partial, open_last=True)
    n = len(h.tokens)
    final = [{"role": "user", "content": "What is the time?"}]
    plan = h.plan_messages(final, open_last=False)
    assert plan.keep == n and plan.text == " time?<|im_end|>\n"
    _apply(h, tok, plan.text, plan.keep)
    h.add_messages(final, open_last=False)
    assert h.messages == final


def _replace(h: History, tok: Tokenizer, messages: list[dict[str, str]]) -> None:
    plan = h.plan_replace(messages)
    _apply(h, tok, plan.text, plan.keep)
    h.replace_messages(messages)


def _located(h: History) -> list[tuple[str, str, int, int, bool]]:
    return [
        (e.message["role"], e.message["content"], e.content_start, e.end, e.closed)
        for e in h._entries
    ]


def test_history_replace_locates_every_message_as_from_scratch(tok: Tokenizer) -> None:
    """An API client re-sends the history each turn: the messages kept from the previous
    request keep their offsets, the rest are located anew, and the result equals locating
    them all in a fresh history, also when an earlier message was edited."""
    turns = [{"role": "system", "content": "Be brief."}]
    h = _history(tok)
    for i, words in enumerate(["Hi", "Hello there.", "Name a color.", "Blue.", "Why?"]):
        turns.append({"role": "user" if i % 2 == 0 else "assistant", "content": words})
        _replace(h, tok, turns)
        fresh = _history(tok)
        _replace(fresh, tok, turns)
        assert _located(h) == _located(fresh) and h.tokens == fresh.tokens
    turns[2] = {"role": "assistant", "content": "Hey."}  # the client edited a reply
    _replace(h, tok, turns)
    fresh = _history(tok)
    _replace(fresh, tok, turns)
    assert _located(h) == _located(fresh) and h.tokens == fresh.tokens


def test_history_replace_takes_the_new_wording_where_the_template_hides_it() -> None:
    """Templates that trim content (Llama 3's) render "Hi " and "Hi" alike: the bytes stay,
    and the message list must still read as the client sent it."""

    def render(
        messages: list[Message], add_generation_prompt: bool = False, open_last: bool = False
    ) -> str:
        last = len(messages) - 1
        return "".join(
            f"<{m['role']}>{m['content'].strip()}" + ("" if open_last and i == last else "</>")
            for i, m in enumerate(messages)
        ) + ("<assistant>" if add_generation_prompt else "")

    h = History(render)
    for messages in ([{"role": "user", "content": "Hi "}], [{"role": "user", "content": "Hi"}]):
        plan = h.plan_replace(messages)
        h.truncate(plan.keep)
        h.add_tokens(list(plan.text.encode()), lambda t: bytes([t]))
        h.replace_messages(messages)
        assert h.messages == messages
