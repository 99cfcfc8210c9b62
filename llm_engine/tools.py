"""Tool calls for any model: the functions are described in the system prompt, and the reply is
constrained (:mod:`llm_engine.grammar`) to one JSON object, either
``{"tool_calls": [{"name": ..., "arguments": {...}}]}`` (each call's arguments a value of that
function's ``parameters`` schema) or ``{"content": "..."}`` (a reply to the user). The history
is written in the same shape, so the model sees its earlier calls as it made them and their
results as ``{"tool_result": ...}`` user turns. No engine, no I/O.

``tool_choice`` narrows the grammar: ``"auto"`` either shape, ``"required"`` calls only, a
named function only calls of it, ``"none"`` a reply only. A reply makes one call unless the
client sets ``parallel_tool_calls: true`` (OpenAI's default is true, but a small model offered a
list repeats its calls until ``max_tokens``: SmolLM2 did for 3 of 4 greedy requests). A
``parameters`` schema is followed where :mod:`llm_engine.grammar` can; keywords it cannot
enforce (``minimum``, ``format`` ...) are kept as notes for the model, since a client's tool
schemas routinely carry them.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from llm_engine.errors import InvalidRequest
from llm_engine.grammar import JsonSchema, SchemaError

MAX_TOOLS = 128
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True, slots=True)
class Tools:
    """The functions a request offers, and how it lets the model use them."""

    functions: tuple[dict[str, Any], ...]  # {"name", "description", "parameters"} each
    choice: str  # "auto", "required", "none", or the one function's name
    parallel: bool
    grammar: JsonSchema

    def system_text(self) -> str:
        """What the system prompt gains: the functions, and the reply's two shapes. The same
        whatever ``tool_choice`` is (the grammar enforces that), so that a conversation's
        requests share its KV cache."""
        listed = "\n".join(json.dumps(f, ensure_ascii=False) for f in self.functions)
        call = '{"tool_calls": [{"name": "<function name>", "arguments": {<its parameters>}}]}'
        return (
            f"You can call these functions:\n{listed}\n\nTo call a function, answer with "
            f'{call}. To reply to the user, answer with {{"content": "<your reply>"}}.'
        )

    def reply(self, text: str) -> tuple[str | None, list[dict[str, Any]] | None]:
        """(content, tool calls) of a whole reply in the grammar's shape. A reply cut short
        is the content it had begun, or the calls it had begun (the last one's arguments as
        far as they got, as OpenAI's are when cut by ``max_tokens``), else its text."""
        try:
            obj = json.loads(text)
        except ValueError:
            begun = begun_content(text)
            if begun is not None:
                return begun, None
            calls = _begun_calls(text)
            return (None, calls) if calls else (text, None)
        if not isinstance(obj, dict):
            return text, None
        if "content" in obj:
            return str(obj["content"]), None
        return None, [_wire_call(c["name"], c["arguments"]) for c in obj.get("tool_calls", ())]


def _wire_call(name: str, arguments: Any) -> dict[str, Any]:
    """A call as OpenAI's ``tool_calls`` entries are; ``arguments`` as JSON text (a string
    is taken as that text)."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": text},
    }


_CALLS = re.compile(r'\s*\{\s*"tool_calls"\s*:\s*\[')
_CALL = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


def _begun_calls(text: str) -> list[dict[str, Any]]:
    """The calls a reply cut short had begun: each whole one, and the last one's arguments
    as far as they got."""
    if not _CALLS.match(text):
        return []
    calls = []
    for match in _CALL.finditer(text):
        try:
            arguments: Any = json.JSONDecoder().raw_decode(text, match.end())[0]
        except ValueError:
            arguments = text[match.end() :]  # cut short
        calls.append(_wire_call(json.loads(f'"{match.group(1)}"'), arguments))
    return calls


_CONTENT = re.compile(r'\s*\{\s*"content"\s*:\s*"')
_SIMPLE_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def begun_content(text: str) -> str | None:
    """The content a reply's text so far has begun (what it can say already, an escape cut
    short left out), or None while it is not a reply to the user (a call, or too early to
    tell). It only grows as the text does, so it can be streamed."""
    start = _CONTENT.match(text)
    if start is None:
        return None
    out, i, body = [], start.end(), text
    while i < len(body) and body[i] != '"':
        if body[i] != "\\":
            out.append(body[i])
            i += 1
            continue
        escape = body[i + 1 : i + 2]
        if escape == "u":
            digits = body[i + 2 : i + 6]
            if len(digits) < 4:
                break
            out.append(chr(int(digits, 16)))  # a surrogate pair's halves, as json.loads does
            i += 6
        elif escape:
            out.append(_SIMPLE_ESCAPES.get(escape, escape))  # \\ \/ \"
            i += 2
        else:
            break
    if out and 0xD800 <= ord(out[-1]) <= 0xDBFF:
        out.pop()  # half a surrogate pair: the other half comes next
    return "".join(out).encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def assistant_text(content: str, calls: Any, param: str) -> str:
    """An assistant message of the history, in the shape the model writes."""
    if not calls:
        return json.dumps({"content": content}, ensure_ascii=False)
    if not isinstance(calls, list):
        raise InvalidRequest("'tool_calls' must be an array", param)
    written = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest("each tool call needs a function with a name", param)
        arguments = function.get("arguments", "{}")
        with contextlib.suppress(ValueError):  # not JSON: kept as the text the client sent
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        written.append({"name": function["name"], "arguments": arguments})
    return json.dumps({"tool_calls": written}, ensure_ascii=False)


def result_text(content: str, name: str | None) -> str:
    """A tool message of the history (a function's result), as the user turn the model sees."""
    result = {"content": content} if name is None else {"name": name, "content": content}
    return json.dumps({"tool_result": result}, ensure_ascii=False)


def parse_tools(tools: Any, choice: Any, parallel: Any) -> Tools | None:
    """The request's ``tools``, ``tool_choice`` and ``parallel_tool_calls``; None without
    tools (then ``tool_choice`` may only be "none" or "auto"). Raises ``InvalidRequest``."""
    if not tools:
        if choice not in (None, "none", "auto"):
            raise InvalidRequest(
                "'tool_choice' names a tool, but no 'tools' are given", "tool_choice"
            )
        return None
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise InvalidRequest(f"'tools' must be an array of at most {MAX_TOOLS}", "tools")
    functions = tuple(_function(t, i) for i, t in enumerate(tools))
    names = [f["name"] for f in functions]
    if len(set(names)) < len(names):
        raise InvalidRequest("tool names must be unique", "tools")
    picked = _choice(choice, names)
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequest("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    allowed = [f for f in functions if picked in ("auto", "required", f["name"])]
    return Tools(functions, picked, parallel is True, _grammar(allowed, picked, parallel is True))


def _function(tool: Any, i: int) -> dict[str, Any]:
    param = f"tools.{i}"
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise InvalidRequest("each tool must be {'type': 'function', 'function': {...}}", param)
    f = tool.get("function")
    if not isinstance(f, dict) or not isinstance(f.get("name"), str):
        raise InvalidRequest("a tool's function needs a 'name'", f"{param}.function")
    if not _NAME.fullmatch(f["name"]):
        raise InvalidRequest("a function name is 1-64 letters, digits, '_' or '-'", param)
    parameters = f.get("parameters") or _NO_PARAMETERS
    if not isinstance(parameters, dict):
        raise InvalidRequest("a function's 'parameters' must be a JSON schema object", param)
    out = {"name": f["name"], "parameters": parameters}
    if isinstance(f.get("description"), str):
        out["description"] = f["description"]
    return out


def _choice(choice: Any, names: list[str]) -> str:
    if choice is None:
        return "auto"
    if choice in ("auto", "required", "none"):
        return str(choice)
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(function, dict) and function.get("name") in names:
        return str(function["name"])
    raise InvalidRequest(
        "'tool_choice' must be 'none', 'auto', 'required' or one of the tools", "tool_choice"
    )


def _hoisted(schema: Any, prefix: str, defs: dict[str, Any]) -> Any:
    """``schema`` with its ``$defs`` moved into ``defs`` under ``prefix`` and its refs to them
    renamed, so that every function's parameters fit in one schema."""
    if isinstance(schema, list):
        return [_hoisted(v, prefix, defs) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("$defs", "definitions") and isinstance(value, dict):
            defs.update({prefix + k: _hoisted(v, prefix, defs) for k, v in value.items()})
        elif key == "$ref" and isinstance(value, str):
            name = value.removeprefix("#/$defs/").removeprefix("#/definitions/")
            out[key] = f"#/$defs/{prefix}{name}" if name != value else value
        else:
            out[key] = _hoisted(value, prefix, defs)
    return out


def _grammar(functions: list[dict[str, Any]], choice: str, parallel: bool) -> JsonSchema:
    content = {"type": "object", "properties": {"content": {"type": "string"}},
               "required": ["content"]}  # fmt: skip
    defs: dict[str, Any] = {}
    call = [
        {"type": "object", "required": ["name", "arguments"],
         "properties": {"name": {"const": f["name"]},
                        "arguments": _hoisted(f["parameters"], f"{f['name']}.", defs)}}
        for f in functions
    ]  # fmt: skip
    calls = {"type": "array", "items": {"anyOf": call}, "minItems": 1}
    if not parallel:
        calls["maxItems"] = 1
    called = {"type": "object", "properties": {"tool_calls": calls}, "required": ["tool_calls"]}
    schema: dict[str, Any] = content if choice == "none" else {"anyOf": [called, content]}
    if choice not in ("auto", "none"):
        schema = called
    schema = {**schema, "$defs": defs}
    try:
        return JsonSchema.compile(schema, lenient=True)
    except SchemaError as err:
        raise InvalidRequest(f"a tool's parameters: {err}", "tools") from err
