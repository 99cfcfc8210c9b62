"""The OpenAI-compatible requests Parley serves, parsed and checked: no engine, no I/O.

:func:`parse_chat_request` reads a ``/v1/chat/completions`` body, :func:`parse_text_request` a
legacy ``/v1/completions`` one, into a :class:`ChatRequest` or :class:`TextRequest` whose
:class:`SamplingParams` the engine takes as they are. Anything wrong raises a
:class:`RequestError` naming the parameter, as OpenAI's 400s do.

Supported subset (documented in the README): ``model``, ``messages`` (string content or text
parts), ``stream``, ``stream_options.include_usage``, ``max_tokens`` /
``max_completion_tokens``, ``temperature``, ``top_p``, ``frequency_penalty``,
``presence_penalty``, ``logit_bias``, ``logprobs`` / ``top_logprobs`` (the model's own
distribution, before penalties, bias and temperature), ``seed``, ``stop``, ``n`` (up to 16:
the choices fork the prompt's KV and are generated together, the i-th with ``seed + i``),
``response_format`` ``json_object`` or ``json_schema`` (:mod:`llm_engine.grammar`), ``tools``
with ``tool_choice`` and ``parallel_tool_calls`` (:mod:`llm_engine.tools`), and the common
extensions ``top_k``, ``repetition_penalty``, ``ignore_eos`` and ``min_tokens``. Anything else
that would change the output (non-text content or output) is refused rather than silently
ignored; such parameters sent at their defaults (as some clients always send them) are
accepted, ``null`` stands for a parameter's default, and bookkeeping that changes no output
(``user``, ``store``, ``metadata``, ...) is accepted and ignored. The legacy text completions
take the same sampling parameters, a ``prompt`` (text, token ids, or a batch) and ``echo``;
``echo`` with ``logprobs`` scores the prompt too (each of its tokens' logprobs), and with
``max_tokens`` 0 only that: how evaluation harnesses score text. :func:`parse_tokenize_request`
and :func:`parse_detokenize_request` read vLLM's ``/tokenize`` and ``/detokenize`` bodies, with
which such clients use the served model's own tokenizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeVar

from llm_engine.config import MAX_TOP_LOGPROBS, SamplingParams
from llm_engine.errors import InvalidRequest
from llm_engine.grammar import JsonSchema, SchemaError
from llm_engine.tools import Tools, assistant_text, parse_tools, result_text

_IGNORED_IF_DEFAULT = {"modalities": ["text"]}
_FORMATS = ("text", "json_object", "json_schema")  # response_format types
_T = TypeVar("_T")
MAX_CHOICES = 16  # n: each choice is a conversation of its own while it generates
# bookkeeping for the caller that changes nothing in the output: accepted with any value of its
# type and ignored (clients such as chat front ends send ``user`` with every request)
_BOOKKEEPING: dict[str, type] = {
    "user": str,
    "store": bool,
    "metadata": dict,
    "service_tier": str,
    "prompt_cache_key": str,
    "safety_identifier": str,
}
_KIND_NAMES = {str: "string", bool: "boolean", dict: "JSON object"}
# parameters both endpoints take
_SAMPLING = {
    "model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "seed", "stop",
    "n", "top_k", "repetition_penalty", "frequency_penalty", "presence_penalty", "logit_bias",
    "logprobs", "ignore_eos", "min_tokens", *_BOOKKEEPING,
}  # fmt: skip
_KNOWN = {
    *_SAMPLING, "messages", "max_completion_tokens", "response_format", "tools", "tool_choice",
    "parallel_tool_calls", "top_logprobs", *_IGNORED_IF_DEFAULT,
}  # fmt: skip
_KNOWN_TEXT = {*_SAMPLING, "prompt", "echo", "suffix", "best_of"}  # /v1/completions
MAX_PROMPTS = 64  # prompts of one /v1/completions request
MAX_TEXT_CHOICES = 128  # prompts x n of one /v1/completions request


class RequestError(InvalidRequest):
    """A chat completions request that does not parse, with the ``param`` it concerns."""


@dataclass(slots=True)
class ChatRequest:
    messages: list[dict[str, str]]
    params: SamplingParams
    model: str
    stream: bool = False
    include_usage: bool = False
    n: int = 1  # choices
    tools: Tools | None = None  # the reply is a tool call or content (llm_engine.tools)

    @property
    def choices(self) -> int:
        return self.n


@dataclass(slots=True)
class TextRequest:
    """A legacy text completion (``/v1/completions``): each prompt continued as it is, no chat
    template; choice ``p * n + i`` is prompt ``p``'s ``i``-th, sampled with ``seed + i``."""

    prompts: list[str | list[int]]  # text, or token ids
    params: SamplingParams
    model: str
    stream: bool = False
    include_usage: bool = False
    n: int = 1  # choices per prompt
    echo: bool = False  # each choice's text starts with its prompt
    generate: bool = True  # False: max_tokens 0 with echo, the prompt alone (params unused)

    @property
    def scored(self) -> bool:
        """Whether the prompts' own tokens get logprobs (``echo`` with ``logprobs``)."""
        return self.echo and self.params.logprobs is not None

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n


def _within(value: Any, kind: Any, lo: float, hi: float) -> bool:
    """Whether ``value`` is of ``kind`` (JSON's true and false are not numbers) in [lo, hi]."""
    return not isinstance(value, bool) and isinstance(value, kind) and lo <= value <= hi


def _number(body: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not _within(value, int | float, lo, hi):
        raise RequestError(f"'{key}' must be a number in [{lo}, {hi}]", key)
    return float(value)


def _integer(value: Any, param: str, lo: int, hi: float, default: _T) -> int | _T:
    """``value`` checked to be an integer in [lo, hi], or ``default`` when it is absent."""
    if value is None:
        return default
    if not _within(value, int, lo, hi):
        bounds = f">= {lo}" if hi == math.inf else f"in [{lo}, {hi}]"
        raise RequestError(f"'{param}' must be an integer {bounds}", param)
    return int(value)


def _flag(body: dict[str, Any], key: str, param: str | None = None) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"'{param or key}' must be a boolean", param or key)
    return value


def _content(message: Any, i: int) -> str:
    content = message.get("content")
    if content is None and message.get("role") == "assistant":
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise RequestError(
                    f"messages[{i}]: only text content parts are supported", f"messages.{i}.content"
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise RequestError(
        f"messages[{i}].content must be a string or a list of text parts", f"messages.{i}.content"
    )


def _messages(value: Any, tools: Tools | None = None) -> list[dict[str, str]]:
    """The transcript as role and text. With ``tools``, the assistant's messages and the
    tools' results are written in the shape of :mod:`llm_engine.tools`, and the system prompt
    describes the functions."""
    if not isinstance(value, list) or not value:
        raise RequestError("'messages' must be a non-empty array", "messages")
    out, names = [], {}  # names: the function of each tool call id
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object", f"messages.{i}")
        role = m.get("role")
        if role == "developer":
            role = "system"  # the newer name of the system role
        roles = ("system", "user", "assistant") + (("tool",) if tools else ())
        if role not in roles:
            raise RequestError(
                f"messages[{i}].role must be one of {', '.join(roles)}", f"messages.{i}.role"
            )
        content, calls = _content(m, i), m.get("tool_calls")
        if tools is None:
            if calls:
                raise RequestError("tool calls need 'tools'", f"messages.{i}.tool_calls")
        elif role == "assistant":
            content = assistant_text(content, calls, f"messages.{i}.tool_calls")
            for call in calls or ():
                names[call.get("id")] = call["function"]["name"]
        elif role == "tool":
            role, content = "user", result_text(content, names.get(m.get("tool_call_id")))
        out.append({"role": role, "content": content})
    if tools is not None:
        if out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{tools.system_text()}"}
        else:
            out.insert(0, {"role": "system", "content": tools.system_text()})
    return out


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or len(value) > 4
        or not all(isinstance(s, str) and s for s in value)
    ):
        raise RequestError("'stop' must be a non-empty string or up to 4 of them", "stop")
    return tuple(value)


def _logit_bias(value: Any) -> dict[int, float]:
    if value is None:
        return {}
    if not (
        isinstance(value, dict)
        and all(isinstance(k, str) and k.isascii() and k.isdigit() for k in value)
        and all(_within(b, int | float, -100, 100) for b in value.values())
    ):
        raise RequestError(
            "'logit_bias' must map token ids to numbers in [-100, 100]", "logit_bias"
        )
    return {int(k): float(b) for k, b in value.items()}


def _logprobs(body: dict[str, Any]) -> int | None:
    """How many alternatives each token's logprobs list, or None for no logprobs."""
    wanted = _flag(body, "logprobs")
    top = _integer(body.get("top_logprobs"), "top_logprobs", 0, MAX_TOP_LOGPROBS, 0)
    if top and not wanted:
        raise RequestError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return top if wanted else None


def _check_unsupported(body: dict[str, Any], known: set[str], at_default: dict[str, Any]) -> None:
    if unknown := sorted(set(body) - known):
        raise RequestError(f"unsupported parameter(s): {', '.join(unknown)}", unknown[0])
    for key, default in at_default.items():
        if body.get(key, default) != default:
            raise RequestError(f"'{key}' is not supported (only its default)", key)
    for key, kind in _BOOKKEEPING.items():
        if key in body and not isinstance(body[key], kind):
            raise RequestError(f"'{key}' must be a {_KIND_NAMES[kind]}", key)
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") not in _FORMATS):
        raise RequestError(
            "response_format's type must be 'text', 'json_object' or 'json_schema'",
            "response_format",
        )


def request_body(
    body: Any, known: set[str], at_default: dict[str, Any] = _IGNORED_IF_DEFAULT
) -> dict[str, Any]:
    """The request's JSON object, ``null`` values dropped (they mean "the default"), refused
    if it holds a parameter outside ``known``, one of ``at_default`` at another value than
    its default, or bookkeeping of the wrong type."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    body = {k: v for k, v in body.items() if v is not None}
    _check_unsupported(body, known, at_default)
    return body


def _sampling(
    body: dict[str, Any],
    max_tokens: Any,
    default_max_tokens: int,
    logprobs: int | None,
    json_schema: JsonSchema | None = None,
) -> SamplingParams:
    """The sampling parameters both endpoints share."""
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    penalty = _number(body, "repetition_penalty", 0.01, 10)
    most = _integer(max_tokens, "max_tokens", 1, math.inf, default_max_tokens)
    least = _integer(body.get("min_tokens"), "min_tokens", 0, most, 0)  # vLLM's
    if least and json_schema is not None:
        raise RequestError("'min_tokens' cannot be set with JSON replies or tools", "min_tokens")
    return SamplingParams(
        max_tokens=most,
        min_tokens=least,
        temperature=1.0 if temperature is None else temperature,  # the API's default
        top_p=1.0 if top_p is None or top_p == 0 else top_p,
        top_k=_integer(body.get("top_k"), "top_k", 0, math.inf, 0),
        repetition_penalty=1.0 if penalty is None else penalty,
        frequency_penalty=_number(body, "frequency_penalty", -2, 2) or 0.0,
        presence_penalty=_number(body, "presence_penalty", -2, 2) or 0.0,
        # a 64-bit seed, so that the choices' seed + i still fits the generator's 64 bits
        seed=_integer(body.get("seed"), "seed", -(2**63), 2**63 - 1, None),
        stop=_stop(body.get("stop")),
        logit_bias=_logit_bias(body.get("logit_bias")),
        logprobs=logprobs,
        ignore_eos=_flag(body, "ignore_eos"),  # vLLM's, for benchmarks of a fixed length
        json_schema=json_schema,
    )


def _include_usage(body: dict[str, Any]) -> bool:
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise RequestError("'stream_options' must be an object", "stream_options")
    return _flag(stream_options, "include_usage", "stream_options.include_usage")


def parse_chat_request(body: Any, default_max_tokens: int = 512) -> ChatRequest:
    """Validate a decoded JSON body; raise :class:`RequestError` naming the bad parameter."""
    body = request_body(body, _KNOWN)
    tools = parse_tools(body.get("tools"), body.get("tool_choice"), body.get("parallel_tool_calls"))
    messages = _messages(body.get("messages"), tools)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    json_schema = _response_format(body.get("response_format") or {})
    logprobs = _logprobs(body)
    if tools is not None:
        if json_schema is not None or logprobs is not None:
            param = "response_format" if json_schema is not None else "logprobs"
            raise RequestError(f"'{param}' cannot be set with 'tools'", param)
        json_schema = tools.grammar
    if json_schema is not None and _flag(body, "ignore_eos"):
        raise RequestError("'ignore_eos' cannot be set with JSON replies or tools", "ignore_eos")
    return ChatRequest(
        messages=messages,
        params=_sampling(body, max_tokens, default_max_tokens, logprobs, json_schema),
        model=str(body.get("model") or ""),
        stream=_flag(body, "stream"),
        include_usage=_include_usage(body),
        n=_integer(body.get("n"), "n", 1, MAX_CHOICES, 1),
        tools=tools,
    )


def _response_format(fmt: dict[str, Any]) -> JsonSchema | None:
    """The grammar a ``response_format`` asks for (its type is checked), or None for text."""
    kind = fmt.get("type")
    if kind == "json_object":
        return JsonSchema.any_object()
    if kind != "json_schema":
        return None
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise RequestError(
            "'response_format.json_schema' must be an object with a 'schema' object",
            "response_format.json_schema",
        )
    try:
        return JsonSchema.compile(spec.get("schema", {}))
    except SchemaError as err:
        raise RequestError(f"response_format: {err}", "response_format.json_schema") from err


def _prompts(value: Any) -> list[str | list[int]]:
    """``prompt``: a string, token ids, or a list of either (a batch)."""

    if isinstance(value, str) or _token_ids(value):
        value = [value]
    if not isinstance(value, list) or not value or len(value) > MAX_PROMPTS:
        raise RequestError(
            f"'prompt' must be a string, token ids, or a list of 1 to {MAX_PROMPTS} of either",
            "prompt",
        )
    for i, p in enumerate(value):
        if not ((isinstance(p, str) and p) or _token_ids(p)):
            raise RequestError(
                f"prompt[{i}] must be a non-empty string or non-empty token ids", "prompt"
            )
    return value


def parse_text_request(body: Any, default_max_tokens: int = 16) -> TextRequest:
    """Validate a ``/v1/completions`` body (the legacy API: ``max_tokens`` defaults to 16,
    ``logprobs`` is how many alternatives to list); raise :class:`RequestError`."""
    body = request_body(body, _KNOWN_TEXT)
    prompts = _prompts(body.get("prompt"))
    n = _integer(body.get("n"), "n", 1, MAX_CHOICES, 1)
    if len(prompts) * n > MAX_TEXT_CHOICES:
        raise RequestError(f"prompts x n must be at most {MAX_TEXT_CHOICES}", "n")
    if _integer(body.get("best_of"), "best_of", 1, MAX_CHOICES, n) != n:
        raise RequestError("'best_of' other than 'n' is not supported", "best_of")
    if body.get("suffix", "") != "":
        raise RequestError("'suffix' is not supported", "suffix")
    logprobs = _integer(body.get("logprobs"), "logprobs", 0, MAX_TOP_LOGPROBS, None)
    echo = _flag(body, "echo")
    max_tokens = body.get("max_tokens")
    # max_tokens 0 asks for the prompt alone: its echo, and with logprobs its scores
    generate = not (echo and _within(max_tokens, int, 0, 0))
    return TextRequest(
        prompts=prompts,
        params=_sampling(body, max_tokens if generate else 1, default_max_tokens, logprobs),
        model=str(body.get("model") or ""),
        stream=_flag(body, "stream"),
        include_usage=_include_usage(body),
        n=n,
        echo=echo,
        generate=generate,
    )


def _token_ids(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(_within(t, int, 0, math.inf) for t in v)


@dataclass(slots=True)
class TokenizeRequest:
    """vLLM's ``POST /tokenize``: a ``prompt`` as it is, or chat ``messages`` (and ``tools``)
    as the chat endpoint renders them, so the count is what that request would prefill."""

    prompt: str | None
    messages: list[dict[str, str]] | None
    add_special_tokens: bool  # what the tokenizer's post-processor adds (a BOS, for some)
    add_generation_prompt: bool  # chat: the assistant header after the messages
    token_strs: bool  # also each token as the vocabulary spells it


_KNOWN_TOKENIZE = {"model", "prompt", "messages", "tools", "add_special_tokens",
                   "add_generation_prompt", "return_token_strs"}  # fmt: skip


def parse_tokenize_request(body: Any) -> TokenizeRequest:
    body = request_body(body, _KNOWN_TOKENIZE)
    if ("prompt" in body) == ("messages" in body):
        raise RequestError("give either 'prompt' or 'messages'", "prompt")
    prompt, messages = body.get("prompt"), None
    if prompt is not None and not isinstance(prompt, str):
        raise RequestError("'prompt' must be a string", "prompt")
    if prompt is None:
        messages = _messages(body["messages"], parse_tools(body.get("tools"), None, None))
    elif "tools" in body:
        raise RequestError("'tools' go with 'messages'", "tools")
    chat = messages is not None
    special = body.get("add_special_tokens", not chat)  # vLLM's defaults
    generation_prompt = body.get("add_generation_prompt", True)
    for key, value in (
        ("add_special_tokens", special),
        ("add_generation_prompt", generation_prompt),
    ):
        if not isinstance(value, bool):
            raise RequestError(f"'{key}' must be a boolean", key)
    return TokenizeRequest(prompt, messages, special, generation_prompt and chat,
                           _flag(body, "return_token_strs"))  # fmt: skip


def parse_detokenize_request(body: Any) -> list[int]:
    """vLLM's ``POST /detokenize``: the ``tokens`` to turn back into text."""
    body = request_body(body, {"model", "tokens"})
    tokens = body.get("tokens")
    if not (tokens == [] or _token_ids(tokens)):
        raise RequestError("'tokens' must be an array of token ids", "tokens")
    return list(tokens)
