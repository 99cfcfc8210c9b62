"""The OpenAI Responses API (``POST /v1/responses``) over the chat completions service.

A Responses request is read into the chat request it amounts to (:func:`parse_responses_request`)
and served by :class:`~llm_engine.chat_api.ChatService`, so it shares everything that path
does: the resident conversations and their KV cache, sampling, JSON replies and tool calls. What
this module adds is the Responses wire (:class:`ResponseWriter`: the response object and its
stream of typed events) and server-side state: a stored response (``store``, the default) is
what a later request names as ``previous_response_id`` to go on from, sending only its new
input. Its conversation continues the resident one, so the history is not computed again.

Supported: ``input`` (a string, or message items with text content, ``function_call`` and
``function_call_output`` items), ``instructions`` (not carried over from a previous response, as
OpenAI's are not), ``previous_response_id``, ``store``, ``max_output_tokens``, ``temperature``,
``top_p``, ``text.format`` (``text``, ``json_object``, ``json_schema``), function ``tools`` with
``tool_choice`` and ``parallel_tool_calls``, ``stream``, and bookkeeping (``metadata``, ``user``,
...). Anything else that would change the output is refused with a 400 naming it.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from llm_engine.api_request import ChatRequest, RequestError, parse_chat_request, request_body
from llm_engine.chat_api import Piece, Usage

MAX_STORED = 4096  # stored responses (least recently used dropped first): their messages only

_KNOWN = {
    "model", "input", "instructions", "previous_response_id", "store", "max_output_tokens",
    "temperature", "top_p", "text", "tools", "tool_choice", "parallel_tool_calls", "stream",
    "metadata", "user", "service_tier", "prompt_cache_key", "safety_identifier", "truncation",
    "reasoning", "include", "background", "top_logprobs", "seed",
}  # fmt: skip
_AT_DEFAULT = {"truncation": "disabled", "background": False, "top_logprobs": 0, "include": []}
_PARAMS = {"messages": "input", "max_tokens": "max_output_tokens", "response_format": "text"}


@dataclass(slots=True)
class StoredResponse:
    messages: list[dict[str, Any]]  # the conversation through its output, chat-shaped
    response: dict[str, Any]  # the response object


class ResponseStore:
    """Stored responses by id, the least recently used dropped past ``limit``."""

    def __init__(self, limit: int = MAX_STORED) -> None:
        self.limit = limit
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def get(self, response_id: str) -> StoredResponse | None:
        found = self._items.get(response_id)
        if found is not None:
            self._items.move_to_end(response_id)
        return found

    def put(self, response_id: str, stored: StoredResponse) -> None:
        self._items[response_id] = stored
        self._items.move_to_end(response_id)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def delete(self, response_id: str) -> bool:
        return self._items.pop(response_id, None) is not None


@dataclass(slots=True)
class ResponsesRequest:
    chat: ChatRequest  # what the chat completions service serves
    conversation: list[dict[str, Any]]  # the previous response's messages, then this input
    echoed: dict[str, Any]  # the request's settings, as the response object repeats them
    store: bool = True

    @property
    def stream(self) -> bool:
        return self.chat.stream


def parse_responses_request(
    body: Any, store: ResponseStore, default_max_tokens: int = 512
) -> ResponsesRequest:
    """Validate a ``/v1/responses`` body into the chat request it amounts to; raise
    :class:`RequestError` naming the parameter (in the Responses API's terms)."""
    body = request_body(body, _KNOWN, _AT_DEFAULT)
    if body.get("reasoning") not in (None, {}):
        raise RequestError("'reasoning' is not supported: the model does not reason", "reasoning")
    previous: list[dict[str, Any]] = []
    if (prev_id := body.get("previous_response_id")) is not None:
        found = store.get(prev_id) if isinstance(prev_id, str) else None
        if found is None:
            raise RequestError(
                f"previous response '{prev_id}' not found (not stored, or dropped)",
                "previous_response_id",
            )
        previous = found.messages
    conversation = previous + _input_messages(body.get("input"))
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise RequestError("'instructions' must be a string", "instructions")
    system = [{"role": "system", "content": instructions}] if instructions else []
    chat = {
        "model": body.get("model"),
        "messages": system + conversation,
        "max_tokens": body.get("max_output_tokens"),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "seed": body.get("seed"),
        "stream": body.get("stream"),
        "response_format": None if "text" not in body else _response_format(body["text"]),
        "tools": _tools(body.get("tools")),
        "tool_choice": _tool_choice(body.get("tool_choice")),
        "parallel_tool_calls": body.get("parallel_tool_calls"),
    }
    try:
        parsed = parse_chat_request({k: v for k, v in chat.items() if v is not None},
                                    default_max_tokens)  # fmt: skip
    except RequestError as err:  # named as this API names it
        param = err.param or ""
        head, _, rest = param.partition(".")
        raise RequestError(
            str(err), _PARAMS.get(head, head) + (f".{rest}" if rest else "")
        ) from None
    store_it = body.get("store", True)  # a boolean: request_body checks bookkeeping
    echoed = {
        "instructions": instructions,
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": bool(body.get("parallel_tool_calls", False)),  # Parley's default
        "previous_response_id": prev_id,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": body.get("text", {}).get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "store": store_it,
        "user": body.get("user"),
    }
    return ResponsesRequest(parsed, conversation, echoed, store_it)


def _input_messages(value: Any) -> list[dict[str, Any]]:
    """``input`` as chat messages: a string is one user message; message items keep their
    role and text; a ``function_call`` joins the assistant message before it as a tool call,
    and its ``function_call_output`` is a tool message."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise RequestError("'input' must be a string or a non-empty array of items", "input")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input.{i}"
        if not isinstance(item, dict):
            raise RequestError(f"{where} must be an object", where)
        kind = item.get("type", "message")
        if kind == "message":
            out.append({"role": item.get("role"), "content": _text(item.get("content"), where)})
        elif kind == "function_call":
            name, arguments, call_id = item.get("name"), item.get("arguments"), item.get("call_id")
            if not all(isinstance(v, str) for v in (name, arguments, call_id)):
                raise RequestError(f"{where} needs string call_id, name and arguments", where)
            call = {"id": call_id, "type": "function",
                    "function": {"name": name, "arguments": arguments}}  # fmt: skip
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
                last["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(item.get("call_id"), str) or not isinstance(output, str):
                raise RequestError(f"{where} needs a string call_id and output", where)
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        else:
            raise RequestError(f"{where}: input items of type '{kind}' are not supported", where)
    return out


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or text parts (``input_text``, ``output_text``)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(f"{where}.content must be a string or an array of parts", where)
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text"):
            raise RequestError(f"{where}.content: only text parts are supported", where)
        if not isinstance(part.get("text"), str):
            raise RequestError(f"{where}.content: a text part needs its 'text'", where)
        texts.append(part["text"])
    return "".join(texts)


def _response_format(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, dict):
        raise RequestError("'text' must be an object", "text")
    if unknown := sorted(set(text) - {"format", "verbosity"}):  # verbosity: a hint, unheeded
        raise RequestError(f"unsupported parameter(s): text.{unknown[0]}", f"text.{unknown[0]}")
    fmt = text.get("format")
    if fmt is None:  # e.g. only a verbosity hint: plain text
        return None
    if not isinstance(fmt, dict):
        raise RequestError("'text.format' must be an object", "text.format")
    if fmt.get("type") != "json_schema":
        return fmt  # text, json_object (anything else is refused as the chat API refuses it)
    schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
    return {"type": "json_schema", "json_schema": schema}


def _tools(tools: Any) -> list[dict[str, Any]] | None:
    """Function tools, flat in this API, as the chat API nests them."""
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise RequestError("'tools' must be an array", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise RequestError(f"tools.{i}: only function tools are supported", f"tools.{i}")
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(slots=True)
class ResponseWriter:
    """Turns the chat service's pieces of one request into the Responses wire: the stream's
    typed events (each numbered) and the response object; stores the response when done."""

    request: ResponsesRequest
    model: str
    store: ResponseStore
    id: str = field(default_factory=lambda: _new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    text: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)  # chat-shaped tool calls
    finish: str | None = None
    _message_id: str = field(default_factory=lambda: _new_id("msg"))
    _opened: bool = False  # the message item was announced
    _seq: int = 0

    def opening(self) -> list[dict[str, Any]]:
        response = self.response("in_progress", None)
        return [self._event("response.created", response=response),
                self._event("response.in_progress", response=response)]  # fmt: skip

    def piece(self, p: Piece) -> list[dict[str, Any]]:
        """A piece's events: the message's text as it grows (announced with its first)."""
        events = []
        if p.text:
            events += self._open_message()
            self.text += p.text
            events.append(self._event("response.output_text.delta", item_id=self._message_id,
                                      output_index=0, content_index=0, delta=p.text,
                                      logprobs=[]))  # fmt: skip
        self.calls += p.tool_calls or []
        self.finish = p.finish_reason or self.finish
        return events

    def closing(self, usage: Usage) -> list[dict[str, Any]]:
        """The items' final events, the response's last one, and the response stored."""
        events = []
        if self._with_message:
            events += self._open_message()
            part = self._part()
            events += [
                self._event("response.output_text.done", item_id=self._message_id,
                            output_index=0, content_index=0, text=self.text, logprobs=[]),
                self._event("response.content_part.done", item_id=self._message_id,
                            output_index=0, content_index=0, part=part),
                self._event("response.output_item.done", output_index=0,
                            item=self._message(self.status)),
            ]  # fmt: skip
        for i, item in enumerate(self._call_items(), start=int(self._with_message)):
            arguments = item["arguments"]
            events += [
                self._event("response.output_item.added", output_index=i,
                            item={**item, "arguments": "", "status": "in_progress"}),
                self._event("response.function_call_arguments.delta", item_id=item["id"],
                            output_index=i, delta=arguments),
                self._event("response.function_call_arguments.done", item_id=item["id"],
                            output_index=i, name=item["name"], arguments=arguments),
                self._event("response.output_item.done", output_index=i, item=item),
            ]  # fmt: skip
        response = self.finished(usage)
        kind = "response.completed" if self.done else "response.incomplete"
        return [*events, self._event(kind, response=response)]

    def finished(self, usage: Usage) -> dict[str, Any]:
        """The whole response object; stored (unless the request said not to)."""
        response = self.response(self.status, usage)
        if self.request.store:
            if self.calls:
                output = {"role": "assistant", "content": None, "tool_calls": self.calls}
            else:
                output = {"role": "assistant", "content": self.text}
            messages = [*self.request.conversation, output]
            self.store.put(self.id, StoredResponse(messages, response))
        return response

    @property
    def done(self) -> bool:
        """Whether the reply ended by itself (not cut by ``max_output_tokens``)."""
        return self.finish != "length"

    @property
    def status(self) -> str:
        """The finished response's status, and its message item's."""
        return "completed" if self.done else "incomplete"

    @property
    def _with_message(self) -> bool:
        """Whether the output has a message item: any text, or no calls (a reply with no text
        and no calls says "")."""
        return self._opened or not self.calls

    def response(self, status: str, usage: Usage | None) -> dict[str, Any]:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "error": None, "incomplete_details": incomplete,
            "model": self.model, "output": self._items() if usage is not None else [],
            **self.request.echoed, "usage": _usage(usage),
        }  # fmt: skip

    def _items(self) -> list[dict[str, Any]]:
        message = [self._message(self.status)] if self._with_message else []
        return message + self._call_items()

    def _message(self, status: str) -> dict[str, Any]:
        return {"type": "message", "id": self._message_id, "status": status,
                "role": "assistant", "content": [self._part()]}  # fmt: skip

    def _part(self) -> dict[str, Any]:
        return {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}

    def _call_items(self) -> list[dict[str, Any]]:
        return [{"type": "function_call", "id": "fc_" + c["id"].removeprefix("call_"),
                 "call_id": c["id"], "name": c["function"]["name"],
                 "arguments": c["function"]["arguments"], "status": "completed"}
                for c in self.calls]  # fmt: skip

    def _open_message(self) -> list[dict[str, Any]]:
        if self._opened:
            return []
        self._opened = True
        item = {"type": "message", "id": self._message_id, "status": "in_progress",
                "role": "assistant", "content": []}  # fmt: skip
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [self._event("response.output_item.added", output_index=0, item=item),
                self._event("response.content_part.added", item_id=self._message_id,
                            output_index=0, content_index=0, part=part)]  # fmt: skip

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def error_event(self, message: str) -> dict[str, Any]:
        return self._event("error", code="server_error", message=message, param=None)


def _usage(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def deleted(response_id: str) -> dict[str, Any]:
    return {"id": response_id, "object": "response", "deleted": True}


__all__ = [
    "ResponseStore", "ResponseWriter", "ResponsesRequest", "StoredResponse", "deleted",
    "parse_responses_request",
]  # fmt: skip
