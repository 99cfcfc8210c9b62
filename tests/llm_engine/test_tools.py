"""Tool calls (llm_engine.tools and the chat request parser): the grammar each tool_choice
allows, the history written in the model's shape, replies read back as OpenAI's tool calls.
Pure: no engine."""

from __future__ import annotations

import json

import pytest

from llm_engine.api_request import parse_chat_request
from llm_engine.errors import InvalidRequest
from llm_engine.grammar import START, feed, is_complete
from llm_engine.tools import begun_content, parse_tools

ORDER = {
    "type": "function",
    "function": {
        "name": "get_order",
        "description": "Look up an order",
        "parameters": {
            "type": "object",
            "properties": {
                "order_id": {"type": "string"},
                "days": {"type": "integer", "minimum": 0},
            },
            "required": ["order_id"],
        },
    },
}
WEATHER = {"type": "function", "function": {"name": "weather"}}  # no parameters
CALL = '{"tool_calls": [{"name": "get_order", "arguments": {"order_id": "7"}}]}'
TWO_CALLS = (
    '{"tool_calls": [{"name": "get_order", "arguments": {"order_id": "7", "days": 2}},'
    ' {"name": "weather", "arguments": {}}]}'
)
WEATHER_CALL = '{"tool_calls": [{"name": "weather", "arguments": {}}]}'
CONTENT = '{"content": "Hello!"}'


def _accepts(choice, parallel, text) -> bool:
    tools = parse_tools([ORDER, WEATHER], choice, parallel)
    assert tools is not None
    return is_complete(feed(tools.grammar, [START], text.encode()))


@pytest.mark.parametrize(
    ("choice", "parallel", "allowed"),
    [
        ("auto", None, {CALL, WEATHER_CALL, CONTENT}),
        ("auto", True, {CALL, WEATHER_CALL, TWO_CALLS, CONTENT}),
        ("required", None, {CALL, WEATHER_CALL}),
        ({"type": "function", "function": {"name": "weather"}}, None, {WEATHER_CALL}),
        ("none", None, {CONTENT}),
    ],
)
def test_each_tool_choice_allows_its_replies_only(choice, parallel, allowed):
    for text in (CALL, WEATHER_CALL, TWO_CALLS, CONTENT):
        assert _accepts(choice, parallel, text) == (text in allowed), text
    # arguments follow the function's parameters (minimum kept as a note)
    assert not _accepts("auto", None, '{"tool_calls": [{"name": "get_order", "arguments": {}}]}')
    assert not _accepts(
        "auto", None, '{"tool_calls": [{"name": "weather", "arguments": {"a": 1}}]}'
    )
    assert not _accepts("auto", None, '{"tool_calls": [{"name": "nope", "arguments": {}}]}')


def test_replies_read_back_as_openai_tool_calls():
    tools = parse_tools([ORDER, WEATHER], "auto", True)
    assert tools is not None
    content, calls = tools.reply(TWO_CALLS)
    assert content is None and [c["function"]["name"] for c in calls] == ["get_order", "weather"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"order_id": "7", "days": 2}
    assert calls[0]["type"] == "function" and calls[0]["id"] != calls[1]["id"]
    assert tools.reply(CONTENT) == ("Hello!", None)
    # cut short by max_tokens: the content or the calls begun, else the text as it stands
    for early in ('{"tool_calls": [{"na', "{"):  # nothing begun yet
        assert tools.reply(early) == (early, None)
    content, calls = tools.reply(TWO_CALLS[:-4])  # cut inside the second call's arguments
    assert content is None and [c["function"]["name"] for c in calls] == ["get_order", "weather"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"order_id": "7", "days": 2}
    assert calls[1]["function"]["arguments"] == "{"
    assert tools.reply('\n{ "content": "Hi \\"you\\" \\u00e9 \\u00') == ('Hi "you" é ', None)


def test_the_history_is_written_in_the_models_shape():
    body = {
        "tools": [ORDER],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Where is order 7?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "get_order", "arguments": '{"order_id": "7"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "shipped"},
            {"role": "assistant", "content": "It has shipped."},
        ],
    }  # fmt: skip
    request = parse_chat_request(body)
    system, user, call, result, reply = request.messages
    assert system["content"].startswith("Be brief.\n\n") and "get_order" in system["content"]
    assert user == {"role": "user", "content": "Where is order 7?"}
    assert json.loads(call["content"]) == json.loads(CALL)
    assert result["role"] == "user"
    assert json.loads(result["content"]) == {
        "tool_result": {"name": "get_order", "content": "shipped"}
    }
    assert json.loads(reply["content"]) == {"content": "It has shipped."}
    assert request.params.json_schema is request.tools.grammar  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "function"}]}, "tools.0.function"),
        ({"tools": [{"type": "retrieval"}]}, "tools.0"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools.0"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [ORDER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
         "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [ORDER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"tools": [ORDER], "logprobs": True}, "logprobs"),
        ({"tools": [ORDER], "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]},
         "messages.0.tool_calls"),
        ({"tools": [ORDER], "messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]},
         "messages.0.tool_calls"),
    ],
)  # fmt: skip
def test_bad_tool_requests_name_their_parameter(body, param):
    body = {"messages": [{"role": "user", "content": "hi"}], **body}
    with pytest.raises(InvalidRequest) as raised:
        parse_chat_request(body)
    assert raised.value.param == param


def test_begun_content_only_grows():
    """Streamed as the reply is written: each prefix's content is a prefix of the next one's,
    and the whole reply's is json.loads' reading of it."""
    reply = json.dumps({"content": 'Hi "you" \\ é 😀\nbye\t!'}, ensure_ascii=True)
    seen = ""
    for end in range(len(reply) + 1):
        begun = begun_content(reply[:end])
        assert begun is None or begun.startswith(seen), (reply[:end], begun, seen)
        seen = begun or seen
    assert seen == json.loads(reply)["content"]
    assert begun_content('{"tool_calls": [') is None and begun_content("{") is None


def test_parameters_with_their_own_defs():
    """Pydantic writes nested models as $defs; each function's are kept apart."""
    address = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    ship = {
        "type": "function",
        "function": {
            "name": "ship",
            "parameters": {
                "type": "object",
                "properties": {"to": {"$ref": "#/$defs/Place"}},
                "required": ["to"],
                "$defs": {"Place": address},
            },
        },
    }
    bill = {"type": "function", "function": {"name": "bill", "parameters": {
        "type": "object", "properties": {"to": {"$ref": "#/$defs/Place"}}, "required": ["to"],
        "$defs": {"Place": {"type": "integer"}}}}}  # fmt: skip
    tools = parse_tools([ship, bill], "auto", None)
    assert tools is not None

    def ok(text: str) -> bool:
        return is_complete(feed(tools.grammar, [START], text.encode()))

    assert ok('{"tool_calls": [{"name": "ship", "arguments": {"to": {"city": "Oslo"}}}]}')
    assert ok('{"tool_calls": [{"name": "bill", "arguments": {"to": 7}}]}')
    assert not ok('{"tool_calls": [{"name": "bill", "arguments": {"to": {"city": "Oslo"}}}]}')
